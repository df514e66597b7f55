"""The reads the pages and the command line need, aggregated in SQL. No torch, no Streamlit."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import Select, case, func, or_, select
from sqlalchemy.orm import Session

from db.schema import Batch, Cell, CellLabel, Image, Job, Model, SaliencyRun, Worker

ID_CHUNK = 1000  # ids per IN (...) list: well below SQLite's limit on bound parameters


@dataclass
class BatchFilter:
    owner: str | None = None
    task: str | None = None
    model_id: int | None = None
    age_min_days: float | None = None
    age_max_days: float | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    text: str | None = None
    strain: str | None = None
    gate: str | None = None
    batch_ids: list[int] | None = None

    @classmethod
    def chosen(
        cls,
        *,
        owner: str | None = None,
        task: str | None = None,
        model_id: int | None = None,
        text: str | None = None,
        strain: str | None = None,
        gate: str | None = None,
        age_weeks: tuple[float | None, float | None] = (None, None),
        uploaded: tuple[date | None, date | None] = (None, None),
    ) -> BatchFilter:
        """The filter a page's widgets choose: empty text filters nothing, ages are given in weeks (from, to:
        both included), upload dates as whole days (from the start of the first to the end of the last)."""
        low, high = age_weeks
        first, last = uploaded
        return cls(
            owner=owner or None,
            task=task or None,
            model_id=model_id,
            text=text or None,
            strain=strain or None,
            gate=gate or None,
            age_min_days=low * 7 if low is not None else None,
            age_max_days=high * 7 if high is not None else None,
            created_from=datetime.combine(first, time.min) if first else None,
            created_to=datetime.combine(last, time.max) if last else None,
        )


def _filtered(query: Select, f: BatchFilter | None) -> Select:
    if f is None:
        return query
    if f.batch_ids is not None:
        query = query.where(Batch.id.in_(list(f.batch_ids)))
    if f.owner:
        query = query.where(Batch.owner == f.owner)
    if f.task:
        query = query.where(Model.task == f.task)
    if f.model_id:
        query = query.where(Batch.model_id == f.model_id)
    if f.age_min_days is not None:
        query = query.where(Batch.age_days >= f.age_min_days)
    if f.age_max_days is not None:
        query = query.where(Batch.age_days <= f.age_max_days)
    if f.created_from is not None:
        query = query.where(Batch.created >= f.created_from)
    if f.created_to is not None:
        query = query.where(Batch.created <= f.created_to)
    if f.strain:
        query = query.where(Batch.strain == f.strain)
    if f.gate:
        query = query.where(Batch.gate == f.gate)
    if f.text:
        like = f"%{f.text.lower()}%"
        query = query.where(
            or_(
                func.lower(Batch.name).like(like),
                func.lower(func.coalesce(Batch.notes, "")).like(like),
                func.lower(func.coalesce(Batch.mouse_id, "")).like(like),
                func.lower(func.coalesce(Batch.strain, "")).like(like),
            )
        )
    return query


@dataclass(frozen=True)
class BatchRow:
    """A batch as lists show it: its metadata, its model, and how many images, failed files and cells it has."""

    id: int
    name: str
    owner: str
    created: datetime
    status: str
    model: str  # the model's label
    model_id: int
    task: str
    mouse_id: str | None
    age_days: float | None
    sex: str | None
    strain: str | None
    gate: str | None
    imaging_date: str | None
    notes: str | None
    cells: int
    images: int
    errors: int
    revision: int
    pixel_size_um: float | None
    excluded: int = 0  # of ``cells``: found objects that reviewers marked as not cells (:func:`excluded_cells`)

    @property
    def counted(self) -> int:
        """The cells that count (found objects less those reviewers marked as not cells)."""
        return self.cells - self.excluded


def batches(s: Session, f: BatchFilter | None = None, limit: int = 500, offset: int = 0) -> list[BatchRow]:
    """Batches (newest first) with their model and cell and image counts (and how many of the cells reviewers
    marked as not cells).

    Two steps, whatever the filter: the page of batches first, then the cells and images of those batches only,
    counted through their batch_id indexes. (Counted in subqueries joined to every batch, as before, PostgreSQL
    aggregated the whole cells table, and when it misjudged how many batches a filter keeps it did so once per
    batch: 140 s for 500 batches of a 1,000,000-cell history; bench/history_pages.py.)"""
    query = (
        select(Batch, Model)
        .join(Model, Model.id == Batch.model_id)
        .order_by(Batch.created.desc(), Batch.id.desc())
        .limit(limit)
        .offset(offset)
    )
    listed = s.execute(_filtered(query, f)).all()
    cells: dict[int, int] = {}
    images: dict[int, tuple[int, int]] = {}
    ids = [batch.id for batch, _ in listed]
    excluded: dict[int, int] = {}
    for start in range(0, len(ids), ID_CHUNK):
        part = ids[start : start + ID_CHUNK]
        excluded.update(excluded_counts(s, part))
        cells.update(
            (batch_id, n)
            for batch_id, n in s.execute(
                select(Cell.batch_id, func.count()).where(Cell.batch_id.in_(part)).group_by(Cell.batch_id)
            )
        )
        images.update(
            (batch_id, (n, errors))
            for batch_id, n, errors in s.execute(
                select(Image.batch_id, func.count(), func.count(Image.error))
                .where(Image.batch_id.in_(part))
                .group_by(Image.batch_id)
            )
        )
    return [
        BatchRow(
            batch.id,
            batch.name,
            batch.owner,
            batch.created,
            batch.status,
            model.label,
            model.id,
            model.task,
            batch.mouse_id,
            batch.age_days,
            batch.sex,
            batch.strain,
            batch.gate,
            batch.imaging_date,
            batch.notes,
            cells.get(batch.id, 0),
            *images.get(batch.id, (0, 0)),
            batch.revision,
            batch.pixel_size_um,
            excluded.get(batch.id, 0),
        )
        for batch, model in listed
    ]


def count_batches(s: Session, f: BatchFilter | None = None) -> int:
    """How many batches match ``f`` (what :func:`batches` would list without a limit)."""
    query = select(func.count()).select_from(Batch).join(Model, Model.id == Batch.model_id)
    return s.scalar(_filtered(query, f)) or 0


@dataclass(frozen=True)
class CellRow:
    """One cell with its box (x, y, w, h in its image's pixels), prediction, and its image's file and page."""

    id: int
    image_id: int
    file: str
    page: int
    cell: int  # 1-based within its image
    x: int
    y: int
    w: int
    h: int
    predicted: str
    score: float
    probs: list[float]
    flags: str
    outline: list[float] | None = None  # x0, y0, x1, y1, ... in its image's pixels (None: its box is all there is)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


def batch_cells(
    s: Session, batch_id: int, offset: int = 0, limit: int = 100, min_score: float = 0.0, order: str = "position"
) -> list[CellRow]:
    """One page of a batch's cells with their image's file name (order: position, score or class)."""
    query = (
        select(Cell, Image.file, Image.page)
        .join(Image, Image.id == Cell.image_id)
        .where(Cell.batch_id == batch_id, Cell.score >= min_score)
    )
    if order == "score":
        query = query.order_by(Cell.score.desc(), Cell.id)
    elif order == "class":
        query = query.order_by(Cell.predicted, Cell.score.desc(), Cell.id)
    else:
        query = query.order_by(Image.position, Cell.idx)
    rows = s.execute(query.offset(offset).limit(limit)).all()
    return [_cell_row(c, file, page) for c, file, page in rows]


def _cell_row(c: Cell, file: str, page: int) -> CellRow:
    return CellRow(
        c.id, c.image_id, file, page, c.idx, c.x, c.y, c.w, c.h, c.predicted, c.score, list(c.probs), c.flags, c.outline
    )


def count_cells(s: Session, batch_id: int, min_score: float = 0.0) -> int:
    return (
        s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == batch_id, Cell.score >= min_score)) or 0
    )


def batch_images(s: Session, batch_id: int) -> list[Image]:
    return list(s.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.position)))


@dataclass(frozen=True)
class ImageAccount:
    """What one image of a batch gave and what it left out: its cells, those of them cut by the image's edge
    or tiny (smaller than ``tiny_um`` across), and the objects cell finding dropped as clumps or debris (with
    the boxes of the first of them, ``[x, y, w, h, why]``). ``dropped_*`` are None where it was classified
    before they were recorded."""

    id: int
    file: str
    page: int
    kind: str | None
    error: str | None
    done: bool
    note: str | None
    n_cells: int
    cells_edge: int
    cells_tiny: int
    cells_edge_or_tiny: int
    dropped_clumps: int | None
    dropped_debris: int | None
    dropped_boxes: list[list[Any]]
    pixel_size_um: float | None
    pixel_size_source: str | None

    @property
    def name(self) -> str:
        return self.file + (f" (page {self.page})" if self.page > 1 else "")


def image_accounts(s: Session, batch_id: int, tiny_um: float) -> list[ImageAccount]:
    """Per image of a batch, in upload order, what was counted and what was not (:class:`ImageAccount`)."""
    side = case((Cell.w > Cell.h, Cell.w), else_=Cell.h)
    edge, tiny = Cell.flags.like("%edge%"), side * Image.pixel_size_um < tiny_um
    per_cell = (
        select(
            Cell.image_id,
            func.count().label("n"),
            func.sum(case((edge, 1), else_=0)).label("edge"),
            func.sum(case((tiny, 1), else_=0)).label("tiny"),
            func.sum(case((or_(edge, tiny), 1), else_=0)).label("odd"),
        )
        .join(Image, Image.id == Cell.image_id)
        .where(Cell.batch_id == batch_id)
        .group_by(Cell.image_id)
        .subquery()
    )
    rows = s.execute(
        select(Image, per_cell.c.n, per_cell.c.edge, per_cell.c.tiny, per_cell.c.odd)
        .outerjoin(per_cell, per_cell.c.image_id == Image.id)
        .where(Image.batch_id == batch_id)
        .order_by(Image.position)
    ).all()
    out = []
    for im, n, n_edge, n_tiny, n_odd in rows:
        dropped = im.dropped or {}
        out.append(
            ImageAccount(
                im.id,
                im.file,
                im.page,
                im.kind,
                im.error,
                im.done,
                im.note,
                int(n or 0),
                int(n_edge or 0),
                int(n_tiny or 0),
                int(n_odd or 0),
                dropped.get("clump") if im.dropped is not None else None,
                dropped.get("debris") if im.dropped is not None else None,
                list(dropped.get("boxes") or []),
                im.pixel_size_um,
                im.pixel_size_source,
            )
        )
    return out


def cells_by_id(s: Session, ids: Iterable[int]) -> list[CellRow]:
    """The cells with these ids (those that still exist), with their image's file and page."""
    rows = s.execute(
        select(Cell, Image.file, Image.page).join(Image, Image.id == Cell.image_id).where(Cell.id.in_(list(ids)))
    ).all()
    return [_cell_row(c, file, page) for c, file, page in rows]


def image_cells(s: Session, image_id: int) -> list[CellRow]:
    """Every cell of one image, in order."""
    image = s.get(Image, image_id)
    if image is None:
        return []
    return [
        _cell_row(c, image.file, image.page)
        for c in s.scalars(select(Cell).where(Cell.image_id == image_id).order_by(Cell.idx))
    ]


def owners(s: Session) -> list[str]:
    return list(s.scalars(select(Batch.owner).distinct().order_by(Batch.owner)))


def excluded_cells(batch_ids: Iterable[int] | None = None) -> Select:
    """The ids of the cells that count as not cells: those whose newest current label (of any reviewer; a
    label taken back does not count) says so. The same rule as lsm_core.lab.cell_labels.consensus."""
    newest = select(func.max(CellLabel.id)).where(
        CellLabel.current.is_(True), or_(CellLabel.label.is_not(None), CellLabel.excluded.is_not(None))
    )
    query = select(CellLabel.cell_id).where(CellLabel.excluded.is_not(None))
    if batch_ids is not None:
        ids = list(batch_ids)
        newest = newest.where(CellLabel.batch_id.in_(ids))
        query = query.where(CellLabel.batch_id.in_(ids))
    return query.where(CellLabel.id.in_(newest.group_by(CellLabel.cell_id)))


def excluded_counts(s: Session, batch_ids: Iterable[int]) -> dict[int, int]:
    """Per batch, the number of its cells that count as not cells (:func:`excluded_cells`)."""
    ids = list(batch_ids)
    out = dict.fromkeys(ids, 0)
    rows = s.execute(
        select(Cell.batch_id, func.count()).where(Cell.id.in_(excluded_cells(ids))).group_by(Cell.batch_id)
    )
    out.update({batch_id: n for batch_id, n in rows})
    return out


def feature_distances(s: Session, batch_ids: Iterable[int]) -> dict[int, list[float | None]]:
    """Per batch, every counted cell's distance from its model's training cells (None: not measured), read in
    one query; cells that count as not cells (:func:`excluded_cells`) are left out."""
    ids = list(batch_ids)
    out: dict[int, list[float | None]] = {i: [] for i in ids}
    if not ids:
        return out
    rows = s.execute(
        select(Cell.batch_id, Cell.feature_distance).where(Cell.batch_id.in_(ids), Cell.id.not_in(excluded_cells(ids)))
    )
    for batch_id, distance in rows:
        out[batch_id].append(distance)
    return out


def class_counts(s: Session, batch_ids: Iterable[int], threshold: float = 0.0) -> dict[int, dict[str, int]]:
    """Per batch, the number of cells of each predicted class with score >= threshold; cells that count as
    not cells (:func:`excluded_cells`) are left out."""
    ids = list(batch_ids)
    out: dict[int, dict[str, int]] = {i: {} for i in ids}
    if not ids:
        return out
    rows = s.execute(
        select(Cell.batch_id, Cell.predicted, func.count())
        .where(Cell.batch_id.in_(ids), Cell.score >= threshold, Cell.id.not_in(excluded_cells(ids)))
        .group_by(Cell.batch_id, Cell.predicted)
    )
    for batch_id, predicted, n in rows:
        out[batch_id][predicted] = n
    return out


def counts_by_age(s: Session, task: str, threshold: float = 0.0) -> list[tuple[float | None, str, int, int]]:
    """(age in days, predicted class, cells, batches) over every batch of ``task`` with cells >= threshold
    (cells that count as not cells left out)."""
    query = (
        select(Batch.age_days, Cell.predicted, func.count(), func.count(func.distinct(Cell.batch_id)))
        .join(Batch, Batch.id == Cell.batch_id)
        .join(Model, Model.id == Batch.model_id)
        .where(Model.task == task, Cell.score >= threshold, Cell.id.not_in(excluded_cells()))
        .group_by(Batch.age_days, Cell.predicted)
        .order_by(Batch.age_days, Cell.predicted)
    )
    return [(age, predicted, cells, batches) for age, predicted, cells, batches in s.execute(query)]


def export_rows(s: Session, batch_id: int, chunk: int = 5000) -> Iterator[tuple[Image, list[Cell]]]:
    """Images of a batch in upload order, each with its cells, read in chunks."""
    images = s.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.position)).all()
    for start in range(0, len(images), 200):
        part = images[start : start + 200]
        cells: dict[int, list[Cell]] = {im.id: [] for im in part}
        for c in s.scalars(
            select(Cell)
            .where(Cell.image_id.in_(list(cells)))
            .order_by(Cell.image_id, Cell.idx)
            .execution_options(yield_per=chunk)
        ):
            cells[c.image_id].append(c)
        for im in part:
            yield im, cells[im.id]


def jobs_list(s: Session, limit: int = 200, status: str | None = None) -> list[Job]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    return list(s.scalars(query))


def active_jobs(s: Session, kind: str | None = None, owner: str | None = None, limit: int = 200) -> list[Job]:
    """Queued and running jobs (newest first), of ``kind`` and ``owner`` when given."""
    query = select(Job).where(Job.status.in_(("queued", "running"))).order_by(Job.id.desc()).limit(limit)
    if kind:
        query = query.where(Job.kind == kind)
    if owner:
        query = query.where(Job.owner == owner)
    return list(s.scalars(query))


def pending_saliency(s: Session, batch_id: int, method: str) -> Job | None:
    """The queued or running saliency job for ``batch_id`` and ``method``, if any."""
    return next(
        (
            j
            for j in active_jobs(s, "saliency")
            if j.payload.get("batch_id") == batch_id and j.payload.get("method") == method
        ),
        None,
    )


def recent_jobs(s: Session, kind: str, limit: int = 5) -> list[Job]:
    """The newest jobs of ``kind``."""
    return list(s.scalars(select(Job).where(Job.kind == kind).order_by(Job.id.desc()).limit(limit)))


@dataclass(frozen=True)
class Evaluation:
    """A finished evaluation job: which model, which test files, and its metrics."""

    job_id: int
    model_label: str
    files: list[str]
    result: dict[str, Any]
    model_id: int | None = None  # None: the model was deleted


def evaluations(s: Session, limit: int = 5) -> list[Evaluation]:
    """The newest finished evaluations with their model's label (or that it was deleted) and test files."""
    jobs = s.scalars(
        select(Job)
        .where(Job.kind == "evaluate", Job.status == "done", Job.result.is_not(None))
        .order_by(Job.id.desc())
        .limit(limit)
    ).all()
    out = []
    for j in jobs:
        model = s.get(Model, int(j.payload.get("model_id", 0)))
        label = model.label if model is not None else f"model {j.payload.get('model_id')} (deleted)"
        files = [u.get("name", "?") for u in j.payload.get("uploads", [])]
        out.append(Evaluation(j.id, label, files, j.result or {}, model.id if model is not None else None))
    return out


def live_workers(s: Session, seen_within_s: float = 60.0) -> list[Worker]:
    from datetime import timedelta

    from db.schema import utcnow

    since = utcnow() - timedelta(seconds=seen_within_s)
    return list(
        s.scalars(select(Worker).where(Worker.last_seen >= since, Worker.stopped.is_(False)).order_by(Worker.host))
    )


def refused_models(s: Session, worker_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per worker, the models its self-test refused: (model label, the check's message), newest first."""
    from db.schema import ModelCheck

    if not worker_ids:
        return {}
    rows = s.execute(
        select(ModelCheck.worker_id, Model.name, Model.version, Model.demo, Model.metrics, ModelCheck.message)
        .join(Model, Model.id == ModelCheck.model_id)
        .where(ModelCheck.worker_id.in_(worker_ids), ModelCheck.passed.is_(False))
        .order_by(ModelCheck.checked.desc())
    )
    out: dict[str, list[tuple[str, str]]] = {}
    for worker_id, name, version, demo, metrics, message in rows:
        out.setdefault(worker_id, []).append((Model.label_of(name, version, demo, metrics), message))
    return out


def queue_length(s: Session) -> int:
    return s.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0


def models(s: Session, task: str | None = None, include_deleted: bool = False) -> list[Model]:
    query = select(Model).order_by(Model.task, Model.name, Model.version)
    if task:
        query = query.where(Model.task == task)
    if not include_deleted:
        query = query.where(Model.deleted.is_(False))
    return list(s.scalars(query))


def model_by_name(s: Session, name: str) -> Model | None:
    """``name`` (latest live version) or ``name:version``."""
    base, _, version = name.partition(":")
    query = select(Model).where(Model.name == base, Model.deleted.is_(False))
    if version.isdigit():
        query = query.where(Model.version == int(version))
    return s.scalars(query.order_by(Model.version.desc())).first()


def saliency_runs(s: Session, batch_id: int) -> list[SaliencyRun]:
    return list(s.scalars(select(SaliencyRun).where(SaliencyRun.batch_id == batch_id).order_by(SaliencyRun.id.desc())))
