"""The classification pipeline: image records in, one result row per cell out.

On a GPU, reading, decoding and cell finding run in a background thread that stays a few images ahead
of the network (:func:`prefetched`; on a CPU they run in turn with it: the network already uses every core,
and a thread beside it only makes its threads wait for each other); crops from many images are gathered
into full batches for :class:`lsm_core.ml.predict.Predictor` (:func:`in_batches`, which the worker's
classify task uses too).
Memory stays bounded (a few images plus one batch of crops) whatever the number of files. Rows come out
in input order. A file that fails gives one row carrying its message; an image without cells gives one
row saying so; neither stops the others.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from lsm_core.errors import LsmError
from lsm_core.imaging.calibration import CalibrationSource, resolve
from lsm_core.imaging.cells import TINY_CELL_UM, CellCrops, FindParams, calibration_doubt, find_cells, no_cells_note
from lsm_core.imaging.images import ImageRecord
from lsm_core.imaging.reporters import measure
from lsm_core.imaging.shape import SHAPE_FIELDS, SIZE_FIELDS, CellShape, measured, sizes_known

if TYPE_CHECKING:  # torch: the export reads the columns here without it
    from lsm_core.ml.predict import Prediction, Predictor

T = TypeVar("T")

LEADING_COLUMNS = ["file", "page", "cell", "x", "y", "w", "h", "predicted", "score"]
NO_CELLS_NOTE = "no cells found in this image (0 cells)"  # the reason is given by cells.no_cells_note


def result_columns(classes: Iterable[str]) -> list[str]:
    """Column names of a result row: the leading columns, ``p_<class>`` per class, ``error``, ``flags``, ``note``,
    and the calibration the cells were found at: ``pixel_size_um``, ``pixel_size_source`` (user, file, setting or
    model default: :class:`lsm_core.imaging.calibration.CalibrationSource`); ``feature_distance``: how far the cell
    lies from the model's training cells in the features it classifies by (:mod:`lsm_core.ml.shift`; empty where
    the model carries no reference); then each cell's size and shape from its outline
    (:mod:`lsm_core.imaging.shape`: area, equivalent diameter and perimeter in micrometres, empty where the pixel
    size was only the model's default; circularity, eccentricity)."""
    columns = LEADING_COLUMNS + [f"p_{c}" for c in classes] + ["error", "flags", "note"] + CALIBRATION_COLUMNS
    return columns + SHIFT + list(SHAPE_FIELDS)


CALIBRATION_COLUMNS = ["pixel_size_um", "pixel_size_source"]
SHIFT = ["feature_distance"]


@dataclass
class ResultRow:
    """One cell, or one file that gave no cell (then ``cell`` is None and ``error`` or ``note`` says why).

    ``page`` and ``cell`` count from 1; ``x, y, w, h`` is the cell's box in the image's pixels.
    """

    file: str
    page: int
    cell: int | None = None
    box: tuple[int, int, int, int] | None = None
    predicted: str | None = None
    score: float | None = None
    probs: list[float] | None = None
    error: str = ""
    flags: str = ""
    note: str = ""
    sha256: str | None = None
    crop: np.ndarray | None = field(default=None, repr=False)
    pixel_size_um: float | None = None
    pixel_size_source: CalibrationSource | None = None
    signal: dict[str, list[float]] | None = None  # reporter channel -> [mean, integrated] in this cell
    feature_distance: float | None = None  # from the model's training cells (lsm_core.ml.shift)
    shape: CellShape | None = None  # its size and shape from its outline (lsm_core.imaging.shape)

    def values(self, n_classes: int, channels: Iterable[str] = ()) -> list:
        box = self.box or (None, None, None, None)
        probs = self.probs if self.probs is not None else [None] * n_classes
        none: list[float | None] = [None, None]
        signal = [v for c in channels for v in ((self.signal or {}).get(c) or none)]
        return [
            self.file,
            self.page,
            self.cell,
            *box,
            self.predicted,
            self.score,
            *probs,
            self.error,
            self.flags,
            self.note,
            self.pixel_size_um,
            self.pixel_size_source.value if self.pixel_size_source else "",
            self.feature_distance,
            *shape_values(self.shape, self.pixel_size_source),
            *signal,
        ]


def shape_values(shape: CellShape | None, source: CalibrationSource | str | None) -> list[float | None]:
    """A cell's SHAPE_FIELDS values for a table: sizes left empty where its pixel size was only the model's default
    (:func:`lsm_core.imaging.shape.sizes_known`)."""
    if shape is None:
        return [None] * len(SHAPE_FIELDS)
    known = sizes_known(source)
    return [None if name in SIZE_FIELDS and not known else getattr(shape, name) for name in SHAPE_FIELDS]


@dataclass
class Summary:
    images: int = 0
    failed: int = 0
    cells: int = 0
    no_cells: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"debris": 0, "clump": 0})
    edge_or_tiny: int = 0  # cells counted that are cut by the image's edge or smaller than TINY_CELL_UM
    distances: list[float | None] = field(default_factory=list)  # each cell's from the training cells (ml.shift)

    def calibration_doubt(self) -> str | None:
        """Why the cells found suggest a wrong pixel size (see :func:`lsm_core.imaging.cells.calibration_doubt`)."""
        return calibration_doubt(self.cells, self.dropped.get("clump", 0), self.edge_or_tiny)


def find_params_for(
    predictor: Predictor, pixel_size_um: float | None, setting_um: float | None = None, modality: str | None = None
) -> FindParams:
    """Cell-finding settings for a model: its crop size in micrometres at the microscope's pixel size.

    The pixel size is ``pixel_size_um`` (given for this run), else ``setting_um`` (LSM_PIXEL_SIZE_UM), else the
    one the model was trained at; the params say which (``pixel_size_source``), and what an image's file
    states comes before the last two (:func:`params_for_record`). ``modality``: how the cells were imaged
    (``lsm_core.imaging.cells.MODALITIES``; None: auto).
    """
    manifest = predictor.manifest
    calibration = resolve(user=pixel_size_um, setting=setting_um, model_default=manifest.pixel_size_um)
    return FindParams.for_model(manifest, calibration, modality)


def in_batches(
    items: Iterable[T], predictor: Predictor, crops_of: Callable[[T], np.ndarray | None]
) -> Iterator[list[tuple[T, Prediction | None]]]:
    """Groups of ``items`` whose crops (``crops_of(item)``: (N, S, S) float32, or None) fill one batch of the
    network, each item with the prediction of its own crops (None when it has none), in input order.

    Memory holds one group: about ``predictor.batch_size`` crops, plus the items themselves.
    """
    group: list[tuple[T, np.ndarray | None]] = []
    n = 0
    for item in items:
        crops = crops_of(item)
        group.append((item, crops if crops is not None and len(crops) else None))
        n += len(crops) if crops is not None else 0
        if n >= predictor.batch_size:
            yield _predicted(group, predictor)
            group, n = [], 0
    if group:
        yield _predicted(group, predictor)


def _predicted(group: list[tuple[T, np.ndarray | None]], predictor: Predictor) -> list[tuple[T, Prediction | None]]:
    stacks = [crops for _, crops in group if crops is not None]
    pred = predictor(np.concatenate(stacks)) if stacks else None
    out: list[tuple[T, Prediction | None]] = []
    k = 0
    for item, crops in group:
        if crops is None or pred is None:
            out.append((item, None))
            continue
        out.append((item, pred[k : k + len(crops)]))
        k += len(crops)
    return out


_DONE = object()


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items``, produced by a background thread that stays up to ``depth`` items ahead (an error in it is
    raised here; leaving the loop early stops it)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # surfaced in the consumer
            q.put(_Raised(exc))
        finally:
            q.put(_DONE)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock the producer so it can finish
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


@dataclass
class _Raised:
    exc: BaseException


def params_for_record(params: FindParams, record: ImageRecord) -> FindParams:
    """The settings for one image: a pixel size given for this run wins, then the one its file states, then
    LSM_PIXEL_SIZE_UM, then the model's (:meth:`lsm_core.imaging.calibration.Calibration.with_file`)."""
    return params.at(params.calibration.with_file(record.pixel_size_um))


Prepared = tuple[ImageRecord, CellCrops | None, FindParams, list[CellShape | None]]


def _prepared(records: Iterable[ImageRecord], params: FindParams) -> Iterator[Prepared]:
    for record in records:
        cells: CellCrops | None = None
        mine = params_for_record(params, record)
        if record.ok and record.pixels is not None:
            try:
                cells = find_cells(record.pixels, mine)
                if record.others and cells.labels is not None:
                    record.signal = measure(cells.labels, len(cells), record.others, mine.pixel_size_um)
            except LsmError as exc:
                record.error = str(exc)
        shapes = [shape for _, shape in measured(cells, mine.pixel_size_um)] if cells is not None else []
        record.pixels = None  # the crops are all that is kept
        record.others = {}
        if cells is not None:
            cells.labels = None
        yield record, cells, mine, shapes


def classify_records(
    records: Iterable[ImageRecord],
    predictor: Predictor,
    params: FindParams | None = None,
    summary: Summary | None = None,
    keep_crops: bool = False,
    prefetch: int | None = None,
) -> Iterator[ResultRow]:
    """Classify every cell of every record; yield rows in input order (see the module docstring)."""
    params = params or find_params_for(predictor, None)
    summary = summary if summary is not None else Summary()
    classes = predictor.classes
    if prefetch is None:
        prefetch = 4 if predictor.device.type == "cuda" else 0
    items = _prepared(records, params)
    if prefetch > 0:
        items = prefetched(items, prefetch)

    def crops_of(item: Prepared) -> np.ndarray | None:
        record, cells, _, _ = item
        return cells.crops if record.ok and cells is not None else None

    for group in in_batches(items, predictor, crops_of):
        for (record, cells, mine, shapes), pred in group:
            for row in _rows(record, cells, pred, classes, mine, summary, keep_crops):
                if row.cell is not None and row.cell <= len(shapes):
                    row.shape = shapes[row.cell - 1]
                if row.cell is not None and record.signal:
                    j = row.cell - 1
                    row.signal = {sig.name: [float(sig.mean[j]), float(sig.integrated[j])] for sig in record.signal}
                if record.ok:
                    row.pixel_size_um = mine.pixel_size_um
                    row.pixel_size_source = mine.pixel_size_source
                if row.cell is not None:
                    summary.distances.append(row.feature_distance)
                yield row


def _rows(
    record: ImageRecord,
    cells: CellCrops | None,
    pred: Prediction | None,
    classes: list[str],
    params: FindParams,
    summary: Summary,
    keep_crops: bool,
) -> Iterator[ResultRow]:
    summary.images += 1
    page = record.page + 1
    if not record.ok or cells is None:
        summary.failed += 1
        yield ResultRow(record.source, page, error=record.error or "could not be read", sha256=record.sha256)
        return
    for reason, count in cells.dropped.items():
        summary.dropped[reason] = summary.dropped.get(reason, 0) + count
    if len(cells) == 0 or pred is None:
        summary.no_cells += 1
        yield ResultRow(record.source, page, note=no_cells_note(cells.dropped, params), sha256=record.sha256)
        return
    summary.cells += len(cells)
    tiny = cells.boxes[:, 2:].max(axis=1) * params.pixel_size_um < TINY_CELL_UM
    summary.edge_or_tiny += sum(1 for i in range(len(cells)) if tiny[i] or "edge" in cells.flags[i].split(","))
    probs, predicted, score = pred.probs.tolist(), pred.predicted.tolist(), pred.score.tolist()
    distance = pred.distance.tolist() if pred.distance is not None else [None] * len(cells)
    for i in range(len(cells)):
        x, y, w, h = (int(v) for v in cells.boxes[i])  # boxes are (N, 4): x, y, w, h
        yield ResultRow(
            record.source,
            page,
            cell=i + 1,
            box=(x, y, w, h),
            predicted=classes[predicted[i]],
            score=score[i],
            probs=probs[i],
            flags=cells.flags[i],
            sha256=record.sha256,
            crop=cells.crops[i] if keep_crops else None,
            feature_distance=distance[i],
        )
