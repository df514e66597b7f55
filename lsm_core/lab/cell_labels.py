"""Review: people say what a cell really is, and the history keeps every word of it.

A label is a cell's true class (one of its batch's model's classes) or **not a cell**, with why
(:data:`EXCLUSIONS`: debris, a doublet, out of focus, cut by the image's edge). Labels go into their own
table (``cell_labels``), never over the prediction, each with who gave it, when, and what the model said
then. A change is a new row: the person's previous label for that cell stops being ``current`` and stays
in the history (:func:`history`).

Several people may label one batch without overwriting each other: each person has their own current
label per cell, and :func:`consensus` says what the cell counts as: the label every current reviewer
gave, or, where they disagree, the newest one (its author shown), flagged ``disputed``. Members label the
cells of their own batches, administrators anyone's; every change is in the audit trail.

:func:`queue` orders a batch's cells (or several batches') for review: most uncertain first (the smallest
margin between the two largest probabilities), by predicted class, by score, or in a random order that a
seed repeats.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db import audit
from db.schema import Batch, Cell, CellLabel, Image, Model
from lsm_core.errors import LsmError
from lsm_core.imaging.shape import sizes_known
from lsm_core.lab import accounts
from lsm_core.lab.lab import Lab

# why a found object is not a cell to classify: key (stored) -> what people read
EXCLUSIONS = {
    "debris": "debris",
    "doublet": "doublet",
    "out_of_focus": "out of focus",
    "edge": "cut by the edge",
}
ORDERS = ("uncertain", "class", "score", "random")


def describe(label: str | None, excluded: str | None) -> str:
    """A label as people read it: ``ST-HSC``, ``not a cell (debris)`` or ``no label``."""
    if excluded:
        return f"not a cell ({EXCLUSIONS.get(excluded, excluded)})"
    return label or "no label"


@dataclass(frozen=True)
class Label:
    """One label row as people read it."""

    cell_id: int
    labelled_by: str
    label: str | None  # the true class
    excluded: str | None  # not a cell: a key of EXCLUSIONS
    predicted: str  # what the model said when the label was given
    score: float
    at: datetime
    current: bool

    @property
    def withdrawn(self) -> bool:
        return self.label is None and self.excluded is None

    @property
    def text(self) -> str:
        return describe(self.label, self.excluded)


@dataclass(frozen=True)
class Consensus:
    """What a cell counts as, from its reviewers' current labels."""

    label: str | None  # the true class, when the cell counts as one
    excluded: str | None  # not a cell, why
    labelled_by: tuple[str, ...]  # the reviewers with a current label, newest first
    disputed: bool  # they do not all say the same: the newest label counts
    last_by: str  # whose label counts

    @property
    def text(self) -> str:
        return describe(self.label, self.excluded)


@dataclass(frozen=True)
class QueueItem:
    cell_id: int
    batch_id: int
    image_id: int
    idx: int
    predicted: str
    score: float
    probs: list[float]
    margin: float  # the two largest probabilities' difference (0: as uncertain as can be)
    mine: Label | None  # the asking person's current label
    consensus: Consensus | None
    box: tuple[int, int, int, int]  # x, y, w, h in its image
    file: str  # its image's file name as uploaded
    page: int  # its image's page in that file (from 1)
    sha256: str | None  # the stored file (None: not kept)
    # its equivalent diameter (µm) and circularity from its outline (lsm_core.imaging.shape); None: no outline,
    # or (the diameter) read at the model's default pixel size, where a size in µm is unknown
    diameter_um: float | None = None
    circularity: float | None = None


def _row(r: CellLabel) -> Label:
    return Label(r.cell_id, r.labelled_by, r.label, r.excluded, r.predicted, r.score, r.at, r.current)


def _write_label(
    s: Session,
    user: str,
    cell: Any,
    batch_id: int,
    label: str | None,
    excluded: str | None,
    was: CellLabel | None,
    **detail: Any,
) -> CellLabel:
    """Adds ``user``'s new current label of ``cell`` (a Cell, or a row of its id, image_id, idx, predicted and
    score) of batch ``batch_id`` (``was``, their previous label, already made not current) and its record in the
    audit trail, with ``detail`` after the label's own."""
    row = CellLabel(
        cell_id=cell.id,
        batch_id=batch_id,
        labelled_by=user,
        label=label,
        excluded=excluded,
        predicted=cell.predicted,
        score=cell.score,
        current=True,
    )
    s.add(row)
    audit.record(
        s,
        user,
        "label",
        f"batch {batch_id}",
        cell=f"image {cell.image_id} cell {cell.idx}",
        label=describe(label, excluded) if (label or excluded) else "taken back",
        was=describe(was.label, was.excluded) if was is not None else None,
        predicted=cell.predicted,
        **detail,
    )
    return row


def margin(probs: Sequence[float]) -> float:
    """The difference of the two largest probabilities (1 for a single class)."""
    top = sorted((float(p) for p in probs), reverse=True)
    return top[0] - top[1] if len(top) > 1 else 1.0


def set_label(
    lab: Lab,
    cell_id: int,
    user: str,
    label: str | None = None,
    excluded: str | None = None,
) -> Label | None:
    """Say what cell ``cell_id`` is: its true class ``label``, or not a cell (``excluded``: a key of
    EXCLUSIONS); neither takes ``user``'s label back. Returns the new current label, or None when it is the
    same as ``user``'s current one (nothing written). LsmError: the cell is gone, the label is not one of
    its model's classes, or ``user`` may not label this batch."""
    if label is not None and excluded is not None:
        raise LsmError("a cell is either a class or not a cell, not both")
    if excluded is not None and excluded not in EXCLUSIONS:
        raise LsmError(f"unknown reason {excluded!r} for 'not a cell'; choose {', '.join(EXCLUSIONS)}")
    with lab.begin() as s:
        postgres = s.get_bind().dialect.name == "postgresql"
        cell = s.get(Cell, cell_id, with_for_update=postgres)  # one person's two tabs wait for each other
        if cell is None:
            raise LsmError(f"cell #{cell_id} no longer exists: its batch was deleted. Nothing was done.")
        batch = s.get(Batch, cell.batch_id)
        assert batch is not None  # a cell's batch goes with it (ON DELETE CASCADE)
        if not accounts.may_change(lab, s, user, batch.owner):
            raise LsmError(
                f"batch {batch.name!r} belongs to {batch.owner}; only they or an administrator can label its cells"
            )
        classes = list(s.scalar(select(Model.classes).where(Model.id == batch.model_id)) or [])
        by_name = {str(c).casefold(): str(c) for c in classes}  # in any case, as a label table's are
        if label is not None:
            if label.casefold() not in by_name:
                raise LsmError(f"{label!r} is not a class of this batch's model ({', '.join(map(str, classes))})")
            label = by_name[label.casefold()]
        previous = s.scalars(
            select(CellLabel).where(
                CellLabel.cell_id == cell_id, CellLabel.labelled_by == user, CellLabel.current.is_(True)
            )
        ).first()
        if previous is None and label is None and excluded is None:
            return None  # nothing to take back
        if previous is not None and (previous.label, previous.excluded) == (label, excluded):
            return None
        if previous is not None:
            s.execute(update(CellLabel).where(CellLabel.id == previous.id).values(current=False))
        row = _write_label(s, user, cell, batch.id, label, excluded, previous)
        s.flush()
        return _row(row)


def history(lab: Lab, cell_id: int) -> list[Label]:
    """Every label ever given to a cell, oldest first."""
    with lab() as s:
        rows = s.scalars(select(CellLabel).where(CellLabel.cell_id == cell_id).order_by(CellLabel.id))
        return [_row(r) for r in rows]


def current_labels(s: Session, batch_ids: Iterable[int]) -> dict[int, list[Label]]:
    """Within ``s``: each labelled cell's current labels (withdrawn ones left out), newest first."""
    out: dict[int, list[Label]] = defaultdict(list)
    rows = s.scalars(
        select(CellLabel)
        .where(CellLabel.batch_id.in_(list(batch_ids)), CellLabel.current.is_(True))
        .order_by(CellLabel.id.desc())
    )
    for r in rows:
        if r.label is not None or r.excluded is not None:
            out[r.cell_id].append(_row(r))
    return dict(out)


def consensus(labels: Sequence[Label]) -> Consensus | None:
    """What a cell counts as from its current labels (newest first); None when nobody labelled it."""
    if not labels:
        return None
    newest = labels[0]
    said = {(x.label, x.excluded) for x in labels}
    return Consensus(
        newest.label,
        newest.excluded,
        tuple(x.labelled_by for x in labels),
        len(said) > 1,
        newest.labelled_by,
    )


def consensus_of(s: Session, batch_ids: Iterable[int]) -> dict[int, Consensus]:
    """Within ``s``: each labelled cell's consensus (cell id -> Consensus)."""
    return {
        cell_id: c for cell_id, labels in current_labels(s, batch_ids).items() if (c := consensus(labels)) is not None
    }


def queue(
    lab: Lab,
    batch_ids: Sequence[int],
    user: str,
    order: str = "uncertain",
    unlabelled_only: bool = False,
    limit: int | None = None,
    seed: int = 0,
) -> list[QueueItem]:
    """The cells of ``batch_ids`` in the order to review them (ORDERS): ``uncertain`` (smallest margin first),
    ``class`` (by predicted class in the model's order, then most uncertain), ``score`` (lowest score
    first), ``random`` (the same order for the same seed). ``unlabelled_only``: leave out the cells
    ``user`` labelled already. At most ``limit`` cells."""
    if order not in ORDERS:
        raise LsmError(f"unknown review order {order!r}; choose {', '.join(ORDERS)}")
    with lab() as s:
        cells = s.execute(
            select(
                Cell.id,
                Cell.batch_id,
                Cell.image_id,
                Cell.idx,
                Cell.predicted,
                Cell.score,
                Cell.probs,
                Cell.x,
                Cell.y,
                Cell.w,
                Cell.h,
                Image.file,
                Image.page,
                Image.sha256,
                Cell.diameter_um,
                Cell.circularity,
                Image.pixel_size_source,
            )
            .join(Image, Image.id == Cell.image_id)
            .where(Cell.batch_id.in_(list(batch_ids)))
        ).all()
        labels = current_labels(s, batch_ids)
        class_order: dict[str, int] = {}
        for classes in s.scalars(
            select(Model.classes).join(Batch, Batch.model_id == Model.id).where(Batch.id.in_(list(batch_ids)))
        ):
            for c in classes or []:
                class_order.setdefault(c, len(class_order))
    items = []
    for c in cells:
        mine = next((x for x in labels.get(c.id, []) if x.labelled_by == user), None)
        if unlabelled_only and mine is not None:
            continue
        probs = [float(p) for p in (c.probs or [])]
        items.append(
            QueueItem(
                c.id,
                c.batch_id,
                c.image_id,
                c.idx,
                c.predicted,
                float(c.score),
                probs,
                margin(probs) if probs else 1.0,
                mine,
                consensus(labels.get(c.id, [])),
                (c.x, c.y, c.w, c.h),
                c.file,
                c.page,
                c.sha256,
                c.diameter_um if sizes_known(c.pixel_size_source) else None,
                c.circularity,
            )
        )
    keys: dict[str, Any] = {
        "uncertain": lambda q: (q.margin, q.cell_id),
        "class": lambda q: (class_order.get(q.predicted, len(class_order)), q.margin, q.cell_id),
        "score": lambda q: (q.score, q.cell_id),
    }
    if order == "random":
        items.sort(key=lambda q: q.cell_id)
        random.Random(seed).shuffle(items)
    else:
        items.sort(key=keys[order])
    return items if limit is None else items[:limit]


CONSENSUS = "(consensus)"  # the reviewer name of the rows that compare the model with the consensus
NOT_A_CELL = "not a cell"


@dataclass(frozen=True)
class Agreement:
    """How often one reviewer (or the consensus, :data:`CONSENSUS`) agreed with the model on a batch."""

    batch_id: int
    reviewer: str
    labelled: int  # cells with a current label (taken-back ones not counted)
    agreed: int  # labelled with the class the model predicted
    not_a_cell: int  # labelled as not a cell (a disagreement: the model called it a cell of some class)
    confusion: dict[tuple[str, str], int]  # (model said, reviewer said) -> cells; reviewer said NOT_A_CELL too

    @property
    def rate(self) -> float | None:
        return self.agreed / self.labelled if self.labelled else None


def agreement(s: Session, batch_ids: Iterable[int]) -> list[Agreement]:
    """Within ``s``: per batch, per reviewer and for the consensus, the model-vs-reviewer agreement and
    confusion counts over the cells they labelled (batches in the given order, reviewers by name)."""
    ids = list(batch_ids)
    labels = current_labels(s, ids)
    cells = s.execute(select(Cell.id, Cell.predicted, Cell.batch_id).where(Cell.id.in_(list(labels)))).all()
    predicted = {c.id: c.predicted for c in cells}
    batch_of = {c.id: c.batch_id for c in cells}
    said: dict[tuple[int, str], list[tuple[str, str]]] = defaultdict(list)
    for cell_id, rows in labels.items():
        model = predicted[cell_id]
        for x in rows:
            said[batch_of[cell_id], x.labelled_by].append((model, x.label or NOT_A_CELL))
        agreed = consensus(rows)
        assert agreed is not None
        said[batch_of[cell_id], CONSENSUS].append((model, agreed.label or NOT_A_CELL))
    out = []
    for batch_id in ids:
        people = sorted({p for b, p in said if b == batch_id and p != CONSENSUS})
        for person in people + ([CONSENSUS] if people else []):
            pairs = said[batch_id, person]
            confusion: dict[tuple[str, str], int] = defaultdict(int)
            for pair in pairs:
                confusion[pair] += 1
            out.append(
                Agreement(
                    batch_id,
                    person,
                    len(pairs),
                    sum(m == r for m, r in pairs),
                    sum(r == NOT_A_CELL for _, r in pairs),
                    dict(confusion),
                )
            )
    return out


def find_cell(lab: Lab, batch_id: int, file: str, idx: int, page: int = 1) -> int:
    """The id of cell ``idx`` (from 1, as the exports number them) of ``file`` (page ``page``) in a batch."""
    with lab() as s:
        cell_id = s.scalar(
            select(Cell.id)
            .join(Image, Image.id == Cell.image_id)
            .where(Image.batch_id == batch_id, Image.file == file, Image.page == page, Cell.idx == idx)
        )
    if cell_id is None:
        raise LsmError(f"batch {batch_id} has no cell {idx} in {file!r} (page {page})")
    return cell_id


def parse_label(text: str) -> tuple[str | None, str | None]:
    """What the command line says a cell is: a class name, ``not-a-cell`` (debris) or ``not-a-cell:REASON``
    (a key of EXCLUSIONS), or ``none`` (take the label back): (label, excluded)."""
    word = text.strip()
    if word.lower() == "none":
        return None, None
    if word.lower().startswith("not-a-cell"):
        reason = word.partition(":")[2].strip().lower().replace(" ", "_").replace("-", "_") or "debris"
        return None, reason
    return word, None


# --- many labels at once: a table from the export, another tool or index sorting ----------------------
LABEL_TABLE_COLUMNS = ("file", "cell", "label")  # required; ``page`` (default 1), ``excluded`` and ``batch`` too


@dataclass(frozen=True)
class LabelRow:
    """One row of a label table as written (text), with its line in the file (from 1, the header's is 1)."""

    line: int
    file: str
    cell: str
    label: str
    page: str = ""
    excluded: str = ""  # the export's column: why not a cell, as people read it (EXCLUSIONS) or its key
    batch: str = ""  # the export's column: rows of another batch are left alone


@dataclass(frozen=True)
class Imported:
    """What :func:`import_labels` did."""

    labelled: int  # new current labels (a class or not a cell)
    taken_back: int
    unchanged: int  # the person's current label said so already
    empty: int  # rows with neither a label nor a reason: they say nothing
    other_batches: int  # rows whose batch column names another batch


def read_label_table(text: str) -> list[LabelRow]:
    """The rows of a CSV label table: columns ``file, cell, label`` and optionally ``page`` (the export's own
    columns, so an exported spreadsheet saved as CSV comes back as it is, its ``excluded`` and ``batch``
    columns read too). Column names are matched ignoring case and spaces. LsmError when a column is missing."""
    import csv

    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    names = [h.strip().lower() for h in header or []]
    missing = [c for c in LABEL_TABLE_COLUMNS if c not in names]
    if missing:
        raise LsmError(
            f"the table needs the columns {', '.join(LABEL_TABLE_COLUMNS)} (and optionally page); it has no "
            + ", ".join(missing)
            + (f" (its header: {', '.join(h for h in names if h)})" if any(names) else " (it is empty)")
        )
    at = {name: names.index(name) for name in ("file", "cell", "label", "page", "excluded", "batch") if name in names}
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue  # a blank line
        got = {name: values[i].strip() if i < len(values) else "" for name, i in at.items()}
        rows.append(LabelRow(reader.line_num, **got))
    return rows


def _number(text: str) -> int | None:
    """A whole number as a table writes it (``3``, or ``3.0`` from a spreadsheet program), else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and value >= 0 else None


def _lines(numbers: list[int]) -> str:
    """``line 4`` or ``lines 4, 9, 12-20``."""
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ("lines " if len(numbers) > 1 else "line ") + ", ".join(parts)


def import_labels(lab: Lab, batch_id: int, user: str, rows: Sequence[LabelRow], source: str = "") -> Imported:
    """Give ``user``'s labels of many cells of one batch at once, in one transaction, by the same rules as
    :func:`set_label` (each label a class of the batch's model, ``not-a-cell[:REASON]`` or ``none``; members
    label their own batches; every change audited). Refused whole when any row names no cell of the batch
    (its file, page or cell number are not there), gives a label that is not one, or gives one cell two
    labels: LsmError with the line numbers of those rows, and nothing is written. Rows with neither a label
    nor a reason say nothing and are left out, as are rows of another batch (the export's ``batch`` column).
    ``source``: the file's name, for the audit trail."""
    reasons = {key: key for key in EXCLUSIONS} | {text: key for key, text in EXCLUSIONS.items()}
    with lab.begin() as s:
        postgres = s.get_bind().dialect.name == "postgresql"
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise LsmError(f"batch {batch_id} does not exist")
        if not accounts.may_change(lab, s, user, batch.owner):
            raise LsmError(
                f"batch {batch.name!r} belongs to {batch.owner}; only they or an administrator can label its cells"
            )
        classes = [str(c) for c in s.scalar(select(Model.classes).where(Model.id == batch.model_id)) or []]
        by_name = {c.casefold(): c for c in classes}
        query = (
            select(Cell.id, Cell.image_id, Cell.idx, Cell.predicted, Cell.score, Image.file, Image.page)
            .join(Image, Image.id == Cell.image_id)
            .where(Cell.batch_id == batch_id)
        )
        # the batch's cells, locked as set_label locks one: another tab's label of one of them waits
        cells = s.execute(query.with_for_update(of=Cell) if postgres else query).all()
        found = {(c.file, c.page, c.idx): c for c in cells}
        files = {(f, p) for f, p in s.execute(select(Image.file, Image.page).where(Image.batch_id == batch_id))}
        problems: dict[str, list[int]] = defaultdict(list)
        wanted: dict[int, tuple[int, Any, str | None, str | None]] = {}  # cell id -> line, cell, label, excluded
        empty = other = 0
        for row in rows:
            if row.batch and _number(row.batch) != batch_id:
                other += 1
                continue
            if not row.label and not row.excluded:
                empty += 1
                continue
            # the label
            label: str | None
            excluded: str | None
            if row.excluded:
                if row.label:
                    problems["a cell is either a class or not a cell, not both"].append(row.line)
                    continue
                said = row.excluded.lower()
                label, excluded = None, reasons.get(said, said.replace(" ", "_").replace("-", "_"))
            else:
                label, excluded = parse_label(row.label)
            if excluded is not None and excluded not in EXCLUSIONS:
                problems[f"unknown reason {excluded!r} for 'not a cell' (choose {', '.join(EXCLUSIONS)})"].append(
                    row.line
                )
                continue
            if label is not None:
                if label.casefold() not in by_name:
                    problems[f"{label!r} is not a class of this batch's model ({', '.join(classes)})"].append(row.line)
                    continue
                label = by_name[label.casefold()]
            # the cell
            idx, page = _number(row.cell), _number(row.page) if row.page else 1
            if idx is None or page is None:
                problems["the cell (and page) must be numbers, as the export writes them"].append(row.line)
                continue
            file = row.file
            if (file, page) not in files and file.startswith("'") and (file[1:], page) in files:
                file = file[1:]  # the apostrophe a spreadsheet export puts before a name that starts like a formula
            cell = found.get((file, page, idx))
            if cell is None:
                why = (
                    f"batch {batch_id} has no cell {idx} in {file!r} (page {page})"
                    if (file, page) in files
                    else f"batch {batch_id} has no file {file!r}" + (f" with a page {page}" if page != 1 else "")
                )
                problems[why].append(row.line)
                continue
            if cell.id in wanted and wanted[cell.id][2:] != (label, excluded):
                problems[f"names a cell that line {wanted[cell.id][0]} labels otherwise"].append(row.line)
                continue
            wanted[cell.id] = (row.line, cell, label, excluded)
        if problems:
            bad = sorted(n for lines in problems.values() for n in lines)
            raise LsmError(
                f"nothing was labelled: {len(bad)} row(s) refused ({_lines(bad)}):\n"
                + "\n".join(f"  {_lines(lines)}: {why}" for why, lines in problems.items())
            )
        previous = {
            r.cell_id: r
            for r in s.scalars(
                select(CellLabel).where(
                    CellLabel.batch_id == batch_id, CellLabel.labelled_by == user, CellLabel.current.is_(True)
                )
            )
        }
        changes = []
        unchanged = 0
        for cell_id, (_, cell, label, excluded) in wanted.items():
            was = previous.get(cell_id)
            if (was is None and label is None and excluded is None) or (
                was is not None and (was.label, was.excluded) == (label, excluded)
            ):
                unchanged += 1
                continue
            if was is not None:
                was.current = False
            changes.append((cell, was, label, excluded))
        s.flush()  # the old current labels are no longer current before the new ones are written
        taken_back = 0
        for cell, was, label, excluded in changes:
            _write_label(s, user, cell, batch_id, label, excluded, was, source=source or None)
            taken_back += label is None and excluded is None
    return Imported(len(changes) - taken_back, taken_back, unchanged, empty, other)
