"""The classification pipeline: image records in, one result row per cell out.

On a GPU, reading, decoding and cell finding run in a background thread that stays a few images ahead
of the network (on a CPU they run in turn with it: the network already uses every core, and a thread
beside it only makes its threads wait for each other); crops from many images are gathered into full batches for :class:`lsm_core.predict.Predictor`.
Memory stays bounded (a few images plus one batch of crops) whatever the number of files. Rows come out
in input order. A file that fails gives one row carrying its message; an image without cells gives one
row saying so; neither stops the others.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from lsm_core import config
from lsm_core.cells import CellCrops, FindParams, find_cells, no_cells_note
from lsm_core.errors import LsmError
from lsm_core.images import ImageRecord
from lsm_core.predict import Predictor

LEADING_COLUMNS = ["file", "page", "cell", "x", "y", "w", "h", "predicted", "score"]
NO_CELLS_NOTE = "no cells found in this image (0 cells)"  # the reason is given by cells.no_cells_note


def result_columns(classes: Iterable[str]) -> list[str]:
    """Column names of a result row: the leading columns, ``p_<class>`` per class, ``error``, ``flags``, ``note``."""
    return LEADING_COLUMNS + [f"p_{c}" for c in classes] + ["error", "flags", "note"]


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

    def values(self, n_classes: int) -> list:
        box = self.box or (None, None, None, None)
        probs = self.probs if self.probs is not None else [None] * n_classes
        return [self.file, self.page, self.cell, *box, self.predicted, self.score, *probs, self.error, self.flags, self.note]


@dataclass
class Summary:
    images: int = 0
    failed: int = 0
    cells: int = 0
    no_cells: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"debris": 0, "clump": 0})


def find_params_for(predictor: Predictor, pixel_size_um: float | None) -> FindParams:
    """Cell-finding settings for a model: its crop size in micrometres at the microscope's pixel size.

    The pixel size is ``pixel_size_um``, else LSM_PIXEL_SIZE_UM, else the one the model was trained at.
    """
    params = FindParams.for_model(predictor.manifest, pixel_size_um or config.pixel_size_um())
    if not pixel_size_um and config.pixel_size_um():
        params = dataclasses.replace(params, pixel_size_source="from LSM_PIXEL_SIZE_UM")
    elif pixel_size_um:
        params = dataclasses.replace(params, pixel_size_source="as given")
    return params


_DONE = object()


def _prepared(records: Iterable[ImageRecord], params: FindParams) -> Iterator[tuple[ImageRecord, CellCrops | None]]:
    for record in records:
        cells: CellCrops | None = None
        if record.ok:
            try:
                cells = find_cells(record.pixels, params)
            except LsmError as exc:
                record.error = str(exc)
        record.pixels = None  # the crops are all that is kept
        yield record, cells


def _prepare(records: Iterable[ImageRecord], params: FindParams, out: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in _prepared(records, params):
            if stop.is_set():
                return
            out.put(item)
    except BaseException as exc:  # surfaced in the consumer
        out.put(exc)
    finally:
        out.put(_DONE)


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
    pending: list[ResultRow] = []
    pending_crops: list[np.ndarray] = []
    n_pending = 0

    def flush() -> Iterator[ResultRow]:
        nonlocal n_pending
        if n_pending:
            pred = predictor(np.concatenate(pending_crops))
            i = 0
            probs, predicted, score = pred.probs.tolist(), pred.predicted.tolist(), pred.score.tolist()
            for row in pending:
                if row.cell is not None:
                    row.probs, row.predicted, row.score = probs[i], classes[predicted[i]], score[i]
                    i += 1
        yield from pending
        pending.clear()
        pending_crops.clear()
        n_pending = 0

    if prefetch is None:
        prefetch = 4 if predictor.device.type == "cuda" else 0
    stop = threading.Event()
    worker: threading.Thread | None = None
    if prefetch > 0:
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        worker = threading.Thread(target=_prepare, args=(records, params, q, stop), daemon=True)
        worker.start()
        items: Iterator = iter(q.get, _DONE)
    else:
        items = _prepared(records, params)
    try:
        for item in items:
            if isinstance(item, BaseException):
                raise item
            record, cells = item
            summary.images += 1
            page = record.page + 1
            if not record.ok or cells is None:
                summary.failed += 1
                pending.append(ResultRow(record.source, page, error=record.error or "could not be read", sha256=record.sha256))
                continue
            for reason, count in cells.dropped.items():
                summary.dropped[reason] = summary.dropped.get(reason, 0) + count
            if len(cells) == 0:
                summary.no_cells += 1
                pending.append(ResultRow(record.source, page, note=no_cells_note(cells.dropped, params),
                                         sha256=record.sha256))
                continue
            summary.cells += len(cells)
            for i in range(len(cells)):
                pending.append(
                    ResultRow(
                        record.source, page, cell=i + 1, box=tuple(int(v) for v in cells.boxes[i]),
                        flags=cells.flags[i], sha256=record.sha256, crop=cells.crops[i] if keep_crops else None,
                    )
                )
            pending_crops.append(cells.crops)
            n_pending += len(cells)
            if n_pending >= predictor.batch_size:
                yield from flush()
        yield from flush()
    finally:
        stop.set()
        while worker is not None and worker.is_alive():  # unblock the producer so it can finish
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
