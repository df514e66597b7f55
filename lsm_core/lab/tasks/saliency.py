"""Saliency maps for a batch's cells (all, or the top-k of each class by score), stored as one 8-bit npz blob."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db import audit
from db.schema import Batch, Cell, Image, Job, Model, SaliencyRun
from lsm_core.errors import LsmError
from lsm_core.imaging.calibration import resolve
from lsm_core.imaging.cells import FindParams
from lsm_core.lab import accounts, jobs
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.lab import Lab
from lsm_core.lab.tasks import task
from lsm_core.lab.tasks.context import Context, batch_and_model
from lsm_core.lab.training_data import read_options, stored_crops

CHUNK = 256  # cells per step: progress is written and a stop is honoured between steps


def scope_of(top: int | None) -> str:
    return f"top {top} per class" if top else "all"


def submit(lab: Lab, batch_id: int, method: str, top: int | None = None, *, owner: str) -> int:
    """Queue saliency maps for a batch: every cell, or the ``top`` highest-scoring cells of each class; returns
    the job's id. The same request (batch, its model, method, scope) queued, running or done already gives
    that job instead of a second one. A member may ask for at most LSM_SALIENCY_MAX_CELLS cells at once
    (administrators for any number): on the paper's network every cell of a large batch holds the GPU for hours.
    """
    from lsm_core.ml.saliency import METHODS

    if method not in METHODS:
        raise LsmError(f"unknown saliency method {method!r}; choose {', '.join(METHODS)}")
    if top is not None and not (isinstance(top, int) and top > 0):
        raise LsmError("top must be a positive number of cells per class")
    with lab.begin() as s:
        # the batch locked (PostgreSQL; SQLite serialises writes): two clicks at once make one job
        batch = s.get(Batch, batch_id, with_for_update=s.get_bind().dialect.name == "postgresql")
        if batch is None:
            raise LsmError(f"batch {batch_id} does not exist")
        same = _same_request(s, batch, method, top)
        if same is not None:
            return same
        model = s.get(Model, batch.model_id)
        classes = len(model.classes) if model is not None else 1
        n_cells = s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == batch_id)) or 0
        asked = n_cells if not top else min(n_cells, top * classes)
        limit = lab.settings.saliency_max_cells
        if asked > limit and not accounts.is_admin(lab, s, owner):
            raise LsmError(
                f"maps of {asked:,} cells were asked for; members may ask for at most {limit:,} at once "
                "(LSM_SALIENCY_MAX_CELLS): ask for the top cells of each class, or ask an administrator"
            )
        job = jobs.new_job(
            JobKind.SALIENCY,
            {"batch_id": batch_id, "model_id": batch.model_id, "method": method, "top": top},
            owner,
            total=asked,
        )
        s.add(job)
        s.flush()
        audit.record(s, owner, "saliency", f"batch {batch_id}", job=job.id, method=method, cells_at_most=asked)
        return job.id


def _same_request(s: Session, batch: Batch, method: str, top: int | None) -> int | None:
    """The id of a queued, running or done saliency job for the same batch, model, method and scope."""
    runs = set(
        s.scalars(
            select(SaliencyRun.id).where(
                SaliencyRun.batch_id == batch.id, SaliencyRun.method == method, SaliencyRun.scope == scope_of(top)
            )
        )
    )
    candidates = s.scalars(
        select(Job)
        .where(Job.kind == JobKind.SALIENCY, Job.status.in_([*jobs.ACTIVE, jobs.JobStatus.DONE]))
        .order_by(Job.id.desc())
        .limit(1000)
    )
    for job in candidates:
        p = job.payload or {}
        if (
            p.get("batch_id") != batch.id
            or p.get("method") != method
            or p.get("top") != top
            or p.get("model_id", batch.model_id) != batch.model_id
        ):
            continue
        if job.status != jobs.JobStatus.DONE or (job.result or {}).get("saliency_run") in runs:
            return job.id
    return None


@task(JobKind.SALIENCY)
def run(ctx: Context, payload: dict[str, Any]) -> None:
    from lsm_core.ml.saliency import saliency_maps, scorecam_k, to_uint8

    batch_id, method, top = int(payload["batch_id"]), payload.get("method", "scorecam"), payload.get("top")

    def read(s: Session):
        batch, model = batch_and_model(s, batch_id)
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
        return model, batch.pixel_size_um, cells, images, read_options(batch)

    model, pixel_size, cells, images, options = ctx.read("reading a batch", read)
    if not cells:
        raise LsmError("this batch has no classified cells")
    params = FindParams.for_model(model, resolve(user=pixel_size, model_default=model.pixel_size_um))
    net = ctx.models.package(model).load(ctx.device)  # a private copy: the predictor's is fused
    index = {c: i for i, c in enumerate(model.classes)}
    k = scorecam_k(ctx.lab.settings.scorecam_channels)
    ids: list[int] = []
    maps = []
    for start in range(0, len(cells), CHUNK):
        part = cells[start : start + CHUNK]
        crops = []
        for image_id in dict.fromkeys(c.image_id for c in part):
            mine = [c for c in part if c.image_id == image_id]
            boxes = [(c.x, c.y, c.w, c.h) for c in mine]
            crops.append(stored_crops(ctx.lab.blobs, images[image_id], boxes, params, options, ctx.lab.limits))
            ids += [c.id for c in mine]
        targets = np.array([index[c.predicted] for c in part])
        maps.append(
            to_uint8(
                saliency_maps(
                    net,
                    model.architecture,
                    np.concatenate(crops),
                    method,
                    targets,
                    device=ctx.device,
                    scorecam_channels=k,
                )
            )
        )
        ctx.progress(min(len(cells), start + CHUNK), len(cells))
        ctx.should_stop()
    buf = io.BytesIO()
    np.savez_compressed(buf, cell_ids=np.array(ids, np.int64), maps=np.concatenate(maps))
    blob = ctx.lab.blobs.put(buf.getvalue())

    def record(s: Session) -> None:
        run = SaliencyRun(batch_id=batch_id, method=method, scope=scope_of(top), cells=len(ids), blob=blob)
        s.add(run)
        s.flush()
        s.execute(update(Job).where(Job.id == ctx.job.id).values(result={"saliency_run": run.id}))

    ctx.finish(before=record)
