"""Spreadsheets: rows streamed to CSV or XLSX (openpyxl's write-only mode keeps memory flat)."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from openpyxl import Workbook

from lsm_core.errors import LsmError

FORMATS = (".csv", ".xlsx")


# C0 control characters but tab, line feed and carriage return (which a cell may hold), DEL, C1, lone surrogates
# (from file names on disk that are not UTF-8) and the two non-characters: XML, so openpyxl, refuses them
# (IllegalCharacterError), and they garble a CSV in a spreadsheet program or a terminal.
_UNWRITABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# what makes a spreadsheet program read a cell as a formula (OWASP's CSV injection list; the full-width forms
# too, which some locales take for the ASCII ones)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_text(value: Any) -> Any:
    r"""``value`` as a spreadsheet cell can hold it inertly: the one function every CSV and xlsx writer of the
    app passes each cell (and each header) through.

    Text loses its control characters (all but tab, line feed and carriage return), then, when it starts with
    ``= + - @``, a tab or a carriage return (also after leading spaces), gets a leading apostrophe, so that
    Excel, LibreOffice or Google Sheets show it instead of running it as a formula. Anything but text (numbers,
    a negative one included, None, dates) is returned as it is.

    >>> spreadsheet_text('=HYPERLINK("http://x")'), spreadsheet_text("a\x01b"), spreadsheet_text(-2.5)
    ('\'=HYPERLINK("http://x")', 'ab', -2.5)
    """
    if not isinstance(value, str):
        return value
    text = _UNWRITABLE.sub("", value)
    if text.startswith(_FORMULA_START) or text.lstrip(" \n").startswith(_FORMULA_START):
        return "'" + text
    return text


XLSX_CELL_CHARS = 32_767  # the most characters a spreadsheet cell holds (Excel refuses a workbook with more)


def _cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    value = spreadsheet_text(value)
    if isinstance(value, str) and len(value) > XLSX_CELL_CHARS:
        said = f" … (cut: {len(value):,} characters in all)"
        return value[: XLSX_CELL_CHARS - len(said)] + said
    return value


def _cells(row: Iterable[Any]) -> list[Any]:
    """One row as written to an xlsx sheet: text made inert and cut to what a cell holds, NaN left empty."""
    return [_cell(v) for v in row]


def add_sheet(book: Workbook, name: str, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """A sheet ``name`` of a write-only workbook: the header, then ``rows`` (text made inert by
    :func:`spreadsheet_text`, NaN left empty); returns the number of rows. The one loop every xlsx of the app
    is written with."""
    sheet = book.create_sheet(name)
    sheet.append(_cells(columns))
    n = 0
    for row in rows:
        sheet.append(_cells(row))
        n += 1
    return n


def workbook_bytes(book: Workbook) -> bytes:
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def write_csv(fh, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Write ``columns`` and ``rows`` as CSV to an open text file: text made inert by :func:`spreadsheet_text`,
    None an empty field. The one CSV writer of the app (downloads, `export`, `classify`, `saliency`)."""
    writer = csv.writer(fh)
    writer.writerow([spreadsheet_text(v) for v in columns])
    n = 0
    for row in rows:
        writer.writerow(["" if v is None else spreadsheet_text(v) for v in row])
        n += 1
    return n


def write_table(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence], sheet: str = "cells") -> int:
    """Write ``rows`` under ``columns`` to ``path`` (.csv or .xlsx); returns the number of rows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise LsmError(f"{path.name}: the output must end in .csv or .xlsx")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            return write_csv(fh, columns, rows)
    book = Workbook(write_only=True)
    n = add_sheet(book, sheet, columns, rows)
    book.save(path)
    return n


# what reviewers said of each cell (lsm_core.lab.cell_labels: the consensus): its true class, who labelled it,
# and why it is not a cell (then it is counted nowhere)
REVIEW_COLUMNS = ["label", "labelled_by", "excluded"]
# what produced each row, so that a result can be reproduced and a re-run compared: the model (name, version,
# the first 12 hex of its weights' sha256), the app version that classified the image, and the channel and z
# plane (from 0, as --z takes it; empty: no z stack) the cells were found on; the pixel size used and its
# source are the CALIBRATION_COLUMNS (lsm_core.ml.classify)
PROVENANCE_COLUMNS = ["model", "model_version", "weights_sha12", "app_version", "channel", "z_plane"]
BATCH_COLUMNS = [
    "batch",
    "batch_name",
    "owner",
    "mouse_id",
    "age_days",
    "sex",
    "strain",
    "gate",
    "imaging_date",
    "notes",
]


def reporter_channels(s, batch_ids: Sequence[int]) -> list[str]:
    """The reporter channels measured in the cells of these batches, in the order first met."""
    from sqlalchemy import select

    from db.schema import Image

    names: dict[str, None] = {}
    for reporters in s.scalars(
        select(Image.reporters).where(Image.batch_id.in_(list(batch_ids)), Image.reporters.is_not(None))
    ):
        names.update(dict.fromkeys(reporters or {}))
    return list(names)


def signal_columns(channels: Sequence[str]) -> list[str]:
    """``ch_<name>_mean`` and ``ch_<name>_integrated`` per reporter channel (background subtracted: see
    :mod:`lsm_core.imaging.reporters`)."""
    from lsm_core.imaging.reporters import column_name

    return [f"ch_{column_name(c)}_{kind}" for c in channels for kind in ("mean", "integrated")]


def batch_rows(s, batch_ids: Sequence[int]) -> tuple[list[str], Iterable[list]]:
    """Columns and rows of ``batch_ids``' cells: the ``classify`` columns, the reporter channels' signals,
    what reviewers said (REVIEW_COLUMNS), then ``batch`` and its metadata.

    All batches must share one model's classes. ``s`` is an open database session.
    """
    from db.queries import export_rows
    from db.schema import Batch, Model
    from lsm_core.imaging.shape import SHAPE_FIELDS, stored_shape
    from lsm_core.lab.cell_labels import EXCLUSIONS, consensus_of
    from lsm_core.ml.classify import NO_CELLS_NOTE, result_columns, shape_values

    batches = []
    for batch_id in batch_ids:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise LsmError(f"no batch {batch_id}")
        batches.append(batch)
    models = {b.id: s.get(Model, b.model_id) for b in batches}
    class_sets = {tuple(m.classes) for m in models.values()}
    if len(class_sets) != 1:
        raise LsmError("these batches were classified by models with different classes; export them separately")
    classes = list(class_sets.pop())
    channels = reporter_channels(s, batch_ids)
    columns = result_columns(classes) + signal_columns(channels) + REVIEW_COLUMNS + PROVENANCE_COLUMNS + BATCH_COLUMNS
    blank = [None] * (2 * len(channels))
    agreed = consensus_of(s, batch_ids)

    def reviewed(c) -> list:
        said = agreed.get(c.id)
        if said is None:
            return ["", "", ""]
        why = EXCLUSIONS.get(said.excluded, said.excluded) if said.excluded else ""
        return [said.label or "", ", ".join(sorted(set(said.labelled_by))), why]

    def signal(c) -> list:
        values = c.signal or {}
        return [v for name in channels for v in (values.get(name) or [None, None])]

    def made(model: Model, image) -> list:
        return [
            model.name,
            model.version,
            model.weights_sha256[:12],
            image.app_version or "",
            image.channel or "",
            image.z_plane,
        ]

    def rows() -> Iterable[list]:
        for b in batches:
            meta = [b.id, b.name, b.owner, b.mouse_id, b.age_days, b.sex, b.strain, b.gate, b.imaging_date, b.notes]
            model = models[b.id]
            for image, cells in export_rows(s, b.id):
                if image.error or not cells:
                    note = (
                        "" if image.error else (image.note or (NO_CELLS_NOTE if image.done else "not classified yet"))
                    )
                    yield [
                        image.file,
                        image.page,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        *[None] * len(classes),
                        image.error or "",
                        "",
                        note,
                        image.pixel_size_um,
                        image.pixel_size_source or "",
                        None,
                        *[None] * len(SHAPE_FIELDS),
                        *blank,
                        "",
                        "",
                        "",
                        *made(model, image),
                        *meta,
                    ]
                    continue
                for c in cells:
                    yield [
                        image.file,
                        image.page,
                        c.idx,
                        c.x,
                        c.y,
                        c.w,
                        c.h,
                        c.predicted,
                        c.score,
                        *c.probs,
                        "",
                        c.flags,
                        "",
                        image.pixel_size_um,
                        image.pixel_size_source or "",
                        c.feature_distance,
                        *shape_values(stored_shape(c), image.pixel_size_source),
                        *signal(c),
                        *reviewed(c),
                        *made(model, image),
                        *meta,
                    ]

    return columns, rows()
