"""Saliency maps for a batch's cells (all, or the top-k of each class by score), stored as one 8-bit npz blob."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.schema import Batch, Cell, Image, Job, Model, SaliencyRun
from lsm_core.errors import LsmError
from lsm_core.imaging.cells import FindParams
from lsm_core.lab import accounts, jobs
from lsm_core.lab.history import Lab
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.labels import stored_crops
from lsm_core.lab.tasks import task
from lsm_core.lab.tasks.context import Context

CHUNK = 256  # cells per step: progress is written and a stop is honoured between steps


def submit(lab: Lab, batch_id: int, method: str, top: int | None = None, owner: str | None = None) -> int:
    """Queue saliency maps for a batch: every cell, or the ``top`` highest-scoring cells of each class."""
    from lsm_core.ml.saliency import METHODS

    if method not in METHODS:
        raise LsmError(f"unknown saliency method {method!r}; choose {', '.join(METHODS)}")
    with lab() as s:
        if s.get(Batch, batch_id) is None:
            raise LsmError(f"batch {batch_id} does not exist")
    return jobs.submit(
        lab, JobKind.SALIENCY, {"batch_id": batch_id, "method": method, "top": top}, owner or accounts.current_user()
    )


@task(JobKind.SALIENCY)
def run(ctx: Context, payload: dict[str, Any]) -> None:
    from lsm_core.ml.saliency import saliency_maps, to_uint8

    batch_id, method, top = int(payload["batch_id"]), payload.get("method", "scorecam"), payload.get("top")

    def read(s: Session):
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise LsmError(f"batch {batch_id} was deleted")
        model = s.get(Model, batch.model_id)
        if model is None or model.deleted:
            raise LsmError("the batch's model was deleted; re-run the batch with another model")
        s.expunge(model)
        cells = s.execute(
            select(Cell.id, Cell.image_id, Cell.x, Cell.y, Cell.w, Cell.h, Cell.predicted, Cell.score)
            .where(Cell.batch_id == batch_id)
            .order_by(Cell.image_id, Cell.idx)
        ).all()
        if top:
            keep: set[int] = set()
            for cls in model.classes:
                ranked = sorted((c for c in cells if c.predicted == cls), key=lambda c: -c.score)[: int(top)]
                keep |= {c.id for c in ranked}
            cells = [c for c in cells if c.id in keep]
        images = {im.id: im for im in s.scalars(select(Image).where(Image.id.in_({c.image_id for c in cells})))}
        for im in images.values():
            s.expunge(im)
        return model, batch.pixel_size_um, cells, images

    model, pixel_size, cells, images = ctx.read("reading a batch", read)
    if not cells:
        raise LsmError("this batch has no classified cells")
    params = FindParams.for_model(model, pixel_size)
    net = ctx.models.package(model).load(ctx.device)  # a private copy: the predictor's is fused
    index = {c: i for i, c in enumerate(model.classes)}
    ids: list[int] = []
    maps = []
    for start in range(0, len(cells), CHUNK):
        part = cells[start : start + CHUNK]
        crops = []
        for image_id in dict.fromkeys(c.image_id for c in part):
            mine = [c for c in part if c.image_id == image_id]
            crops.append(stored_crops(ctx.lab.blobs, images[image_id], [(c.x, c.y, c.w, c.h) for c in mine], params))
            ids += [c.id for c in mine]
        targets = np.array([index[c.predicted] for c in part])
        maps.append(
            to_uint8(saliency_maps(net, model.architecture, np.concatenate(crops), method, targets, device=ctx.device))
        )
        ctx.progress(min(len(cells), start + CHUNK), len(cells))
        ctx.should_stop()
    buf = io.BytesIO()
    np.savez_compressed(buf, cell_ids=np.array(ids, np.int64), maps=np.concatenate(maps))
    blob = ctx.lab.blobs.put(buf.getvalue())

    def record(s: Session) -> None:
        run = SaliencyRun(
            batch_id=batch_id, method=method, scope=f"top {top} per class" if top else "all", cells=len(ids), blob=blob
        )
        s.add(run)
        s.flush()
        s.execute(update(Job).where(Job.id == ctx.job.id).values(result={"saliency_run": run.id}))

    ctx.finish(before=record)
