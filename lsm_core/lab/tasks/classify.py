"""Classify a batch: find the cells of each of its unread images and classify them, chunk by chunk.

Each chunk (images whose crops fill one batch of the network: :func:`lsm_core.ml.classify.in_batches`, as
the command line's pipeline) is written in one transaction with the images' ``done`` marks and the job's
progress, under the unique key (image, cell index): a worker killed mid-chunk leaves nothing of that chunk,
and whoever takes the job over starts after the last committed chunk. Cells computed before for the same
image bytes, the same weights and the same pixel size are copied, not recomputed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.bulk import insert_cells
from db.schema import Batch, Cell, Image, Job, Model
from lsm_core import __version__
from lsm_core.errors import LsmError
from lsm_core.imaging.calibration import Calibration, CalibrationSource, resolve
from lsm_core.imaging.cells import CellCrops, FindParams
from lsm_core.imaging.prepare import Prepared, PrepTask
from lsm_core.imaging.readers.base import ReadOptions
from lsm_core.imaging.reporters import ChannelSignal
from lsm_core.imaging.shape import SHAPE_FIELDS, CellShape
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.tasks import task
from lsm_core.lab.tasks.context import Context, batch_and_model

log = logging.getLogger("lsm_core.worker")


@dataclass
class ImageResult:
    """What one image gave: its cells (found now, or copied from an earlier identical run), or its error."""

    image_id: int
    calibration: Calibration | None = None  # the pixel size its cells are found at, and where it came from
    found: CellCrops | None = None
    error: str | None = None
    kind: str | None = None
    note: str | None = None
    cached: list[dict[str, Any]] | None = None
    reporters: dict[str, Any] | None = None  # {channel: {"background": level, "method": how}}
    z_plane: int | None = None  # the z plane read (from 0; None: no z stack)
    dropped: dict[str, Any] | None = None  # what cell finding did not keep (copied with cached cells)
    signal: list[ChannelSignal] = field(default_factory=list)
    probs: np.ndarray | None = field(default=None, repr=False)
    predicted: np.ndarray | None = field(default=None, repr=False)
    score: np.ndarray | None = field(default=None, repr=False)
    distance: np.ndarray | None = field(default=None, repr=False)  # from the training cells (lsm_core.ml.shift)
    shapes: list[tuple[list[float] | None, CellShape | None]] = field(default_factory=list, repr=False)

    def crops(self) -> np.ndarray | None:
        return self.found.crops if self.found is not None and len(self.found) else None


# what an earlier identical run gave: (kind, cells, note, reporters, z plane read, objects dropped)
Cached = tuple[str | None, list[dict[str, Any]], str | None, dict[str, Any] | None, int | None, Any]


class _MoreImages(Exception):
    """Images joined the batch while its job ran (files added): the job goes on instead of ending."""


@task(JobKind.CLASSIFY)
def run(ctx: Context, payload: dict[str, Any]) -> None:
    batch_id = int(payload["batch_id"])
    while True:
        _classify_unread(ctx, batch_id)
        try:
            ctx.finish(before=lambda s: _none_unread(s, ctx.job.id, batch_id))
            return
        except _MoreImages:
            log.info("job %s: files were added to batch %s; classifying them too", ctx.job.id, batch_id)


def _none_unread(s: Session, job_id: int, batch_id: int) -> None:
    """Within the transaction that ends the job: raise _MoreImages when the batch has unread images. The job's
    row is locked first, as adding files does (lsm_core.lab.batches.add_files), so no image can join unseen."""
    s.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    if s.scalar(select(func.count()).select_from(Image).where(*_unread(batch_id))):
        raise _MoreImages()


def _unread(batch_id: int):
    return Image.batch_id == batch_id, Image.done.is_(False), Image.error.is_(None)


def _classify_unread(ctx: Context, batch_id: int) -> None:
    from lsm_core.ml.classify import in_batches

    def read(s: Session):
        batch, model = batch_and_model(s, batch_id)
        todo = s.execute(
            select(Image.id, Image.sha256, Image.page, Image.pixel_size_um, Image.pixel_size_source)
            .where(*_unread(batch_id))
            .order_by(Image.position)
        ).all()
        total = s.scalar(select(Job.progress_total).where(Job.id == ctx.job.id)) or 0
        return model, batch.pixel_size_um, ReadOptions(batch.channel, batch.z), batch.modality, todo, total

    model, pixel_size, options, modality, todo, total = ctx.read("reading a batch", read)
    total = max(total, len(todo))  # a job made by an older version may count fewer images than are left
    done = total - len(todo)  # never negative, never past the total
    predictor = ctx.models.predictor(model)
    # the cells found before for the same bytes, weights, pixel size and plane are copied; the other images are
    # read and their cells found by the worker's preparation processes, in order, a few images ahead
    setting = ctx.lab.settings.pixel_size_um
    looked_up = (
        (image, _looked_up(ctx, image, model, _calibration(image, pixel_size, setting, model), options, modality))
        for image in todo
    )
    prepared = ctx.prep.pool().ordered(looked_up, lambda item: item[1][1])
    results = ((image, _result(looked[0], done_)) for (image, looked), done_ in prepared)
    for chunk in in_batches(results, predictor, lambda item: item[1].crops()):
        for (_, result), pred in chunk:
            if pred is not None:
                result.probs, result.predicted, result.score = pred.probs, pred.predicted, pred.score
                result.distance = pred.distance
        done += len(chunk)

        def write(s: Session, attempt: int, chunk=chunk, done=done) -> None:
            images = [(image, result) for (image, result), _ in chunk]
            if not (attempt and _written(s, images)):
                _write(s, batch_id, images, predictor.classes)
            job_total = s.scalar(select(Job.progress_total).where(Job.id == ctx.job.id)) or 0
            s.execute(
                update(Job)
                .where(Job.id == ctx.job.id)
                .values(progress_done=min(done, max(job_total, done)), progress_total=max(job_total, done))
            )

        ctx.write("writing cells", write)
        ctx.should_stop()  # asked to stop: this chunk is written, the rest goes back to the queue
    log.info("job %s: %s images classified", ctx.job.id, len(todo))


def _calibration(image, batch_pixel_size: float | None, setting: float | None, model: Model) -> Calibration:
    """The pixel size to find an image's cells at, and where it comes from: what the user set for the batch,
    else what the file states (recorded at upload), else the lab's LSM_PIXEL_SIZE_UM, else the model's default."""
    stated = image.pixel_size_um if image.pixel_size_source == CalibrationSource.FILE else None
    return resolve(user=batch_pixel_size, file=stated, setting=setting, model_default=model.pixel_size_um)


def _looked_up(
    ctx: Context, image, model: Model, calibration: Calibration, options: ReadOptions, modality: str | None
) -> tuple[ImageResult, PrepTask | None]:
    """An image's result as far as the database knows it (cells found before, copied), and the preparation it
    still needs (None: none)."""
    pixel_size = calibration.um_per_px
    result = ImageResult(image.id, calibration=calibration)
    params = FindParams.for_model(model, calibration, modality)
    cached = ctx.read(
        "looking up earlier cells",
        lambda s: _cached(s, image.sha256, image.page, model.weights_sha256, pixel_size, options, modality),
    )
    if cached is not None:
        result.kind, result.cached, result.note, result.reporters, result.z_plane, result.dropped = cached
        return result, None
    try:
        stored = ctx.lab.blobs.file(image.sha256)  # opened where it lies: one plane in memory at a time
    except LsmError as exc:
        result.error = str(exc)
        return result, None
    return result, PrepTask(stored, image.page, options, ctx.lab.limits, params, ctx.lab.settings.max_seconds_per_image)


def _result(result: ImageResult, prepared: Prepared | None) -> ImageResult:
    """The result of an image with what its preparation gave (None: nothing to add)."""
    if prepared is None:
        return result
    if prepared.error is not None or prepared.found is None:
        result.error = prepared.error or "could not be read"
        return result
    result.found, result.signal, result.note = prepared.found, prepared.signal, prepared.note
    result.shapes = prepared.shapes
    result.z_plane = prepared.z
    result.kind = "single" if prepared.found.flags == ["single"] else "field"
    return result


def _cached(
    s: Session,
    sha: str | None,
    page: int,
    weights_sha: str,
    pixel_size: float,
    options: ReadOptions,
    modality: str | None = None,
) -> Cached | None:
    """What was computed before (:data:`Cached`) for these image bytes, these weights, this pixel size, the same
    channel and z plane asked for and the same modality, or None."""
    if not sha:
        return None
    source = s.execute(
        select(Image.id, Image.n_cells, Image.note, Image.kind, Image.reporters, Image.z_plane, Image.dropped)
        .join(Batch, Batch.id == Image.batch_id)
        .join(Model, Model.id == Batch.model_id)
        .where(
            Image.sha256 == sha,
            Image.page == page,
            Image.done.is_(True),
            Image.error.is_(None),
            Model.weights_sha256 == weights_sha,
            Image.n_cells.is_not(None),
            Image.pixel_size_um == pixel_size,
            func.coalesce(Batch.channel, "") == (options.channel or ""),
            func.coalesce(Batch.z, -1) == (-1 if options.z is None else options.z),
            func.coalesce(Batch.modality, "") == (modality or ""),
        )
        .limit(1)
    ).first()
    if source is None:
        return None
    cells = s.scalars(select(Cell).where(Cell.image_id == source.id).order_by(Cell.idx)).all()
    if len(cells) != source.n_cells:
        return None
    return (
        source.kind,
        [
            {
                "idx": c.idx,
                "x": c.x,
                "y": c.y,
                "w": c.w,
                "h": c.h,
                "predicted": c.predicted,
                "score": c.score,
                "probs": c.probs,
                "flags": c.flags,
                "signal": c.signal,
                "feature_distance": c.feature_distance,
                **{name: getattr(c, name) for name in SHAPE_COLUMNS},
            }
            for c in cells
        ],
        source.note,
        source.reporters,
        source.z_plane,
        source.dropped,
    )


SHAPE_COLUMNS = ("outline", *SHAPE_FIELDS)


def shape_row(measured: tuple[list[float] | None, CellShape | None]) -> dict[str, Any]:
    """A cell's outline and measures as its row's columns (all None where it has none)."""
    outline, shape = measured
    return {"outline": outline, **(shape.values() if shape is not None else dict.fromkeys(SHAPE_FIELDS))}


def _written(s: Session, images: list[tuple[Any, ImageResult]]) -> bool:
    """Whether a chunk's images are marked done already (a retried commit that had landed)."""
    ids = [image.id for image, _ in images]
    return s.scalar(select(func.count()).select_from(Image).where(Image.id.in_(ids), Image.done.is_(True))) == len(ids)


def _write(s: Session, batch_id: int, images: list[tuple[Any, ImageResult]], classes: list[str]) -> None:
    rows: list[dict[str, Any]] = []
    for image, r in images:
        values: dict[str, Any] = {"done": True, "app_version": __version__, "z_plane": r.z_plane}
        if r.calibration is not None:
            values.update(pixel_size_um=r.calibration.um_per_px, pixel_size_source=r.calibration.source.value)
        if r.error:
            values.update(error=r.error, n_cells=0)
        elif r.cached is not None:
            rows += [c | {"batch_id": batch_id, "image_id": image.id} for c in r.cached]
            values.update(n_cells=len(r.cached), kind=r.kind, note=r.note, reporters=r.reporters, dropped=r.dropped)
        else:
            found = r.found
            n = len(found) if found is not None else 0
            if found is not None and n:
                # in_batches predicts every image with cells, and run() stored each prediction in its result
                assert r.predicted is not None and r.score is not None and r.probs is not None
                for j in range(n):
                    x, y, w, h = (int(v) for v in found.boxes[j])
                    rows.append(
                        {
                            "batch_id": batch_id,
                            "image_id": image.id,
                            "idx": j + 1,
                            "x": x,
                            "y": y,
                            "w": w,
                            "h": h,
                            "predicted": classes[int(r.predicted[j])],
                            "score": float(r.score[j]),
                            "probs": [float(p) for p in r.probs[j]],
                            "flags": found.flags[j],
                            "signal": {sig.name: [float(sig.mean[j]), float(sig.integrated[j])] for sig in r.signal}
                            or None,
                            "feature_distance": float(r.distance[j]) if r.distance is not None else None,
                            **shape_row(r.shapes[j] if j < len(r.shapes) else (None, None)),
                        }
                    )
            reporters = {sig.name: {"background": sig.background, "method": sig.background_method} for sig in r.signal}
            values.update(
                n_cells=n,
                kind=r.kind,
                note=r.note,
                reporters=reporters or None,
                dropped=found.dropped_record() if found is not None else None,
            )
        s.execute(update(Image).where(Image.id == image.id).values(**values))
    insert_cells(s, rows)
