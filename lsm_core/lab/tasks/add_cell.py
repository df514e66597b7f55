"""Add a cell the finder missed (issue #17 item 3): a reviewer clicks where it is on a field of view, and a
small job cuts its crop there (a square of a typical cell's size, the crop as every cell's: the model's
micrometres at the pixel size the image was classified at, from the channel and z plane the batch read) and
classifies it with the batch's model. The new cell is flagged ``added``, numbered after the image's last
cell, counted like any other, and who added it is in the audit trail (removing a false one is labelling it
not a cell: lsm_core.lab.review)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db import audit
from db.schema import Batch, Cell, Image, Job, Model
from lsm_core.errors import LsmError
from lsm_core.lab import accounts, jobs
from lsm_core.lab.history import Lab
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.tasks import task
from lsm_core.lab.tasks.context import Context

CELL_UM = 9.0  # the side of an added cell's box: a blood stem cell is 6-9 µm across
ADDED = "added"  # the flag of a cell added by a person


def _inside(cell: Cell, x: float, y: float) -> bool:
    return cell.x <= x < cell.x + cell.w and cell.y <= y < cell.y + cell.h


def _target(s: Session, image_id: int, x: float, y: float) -> tuple[Image, Batch]:
    """The image and batch a point is added to; LsmError when it cannot be."""
    image = s.get(Image, image_id)
    if image is None:
        raise LsmError(f"image #{image_id} no longer exists: its batch was deleted")
    batch = s.get(Batch, image.batch_id)
    assert batch is not None  # an image's batch goes with it
    if image.kind != "field" or not image.done or image.error or not image.sha256:
        raise LsmError(f"{image.file}: cells can be added to classified fields of view only")
    if not (0 <= x < (image.width or 0) and 0 <= y < (image.height or 0)):
        raise LsmError(f"({x:g}, {y:g}) is outside {image.file} ({image.width} x {image.height} pixels)")
    for cell in s.scalars(select(Cell).where(Cell.image_id == image_id)):
        if _inside(cell, x, y):
            raise LsmError(f"cell {cell.idx} of {image.file} is there already: review it instead")
    return image, batch


def submit(lab: Lab, image_id: int, x: float, y: float, user: str) -> int:
    """Queue the job that adds a cell centred on (x, y) (the image's pixels) to a classified field of view;
    returns its id. Members add cells to their own batches, administrators to anyone's. LsmError: the image
    is gone or no classified field, the point is outside it or inside a cell's box."""
    with lab.begin() as s:
        image, batch = _target(s, image_id, x, y)
        if not accounts.may_change(s, user, batch.owner):
            raise LsmError(
                f"batch {batch.name!r} belongs to {batch.owner}; only they or an administrator can add cells to it"
            )
        job = jobs.new_job(JobKind.ADD_CELL, {"image_id": image_id, "x": x, "y": y}, user, total=1, batch_id=batch.id)
        s.add(job)
        s.flush()
        audit.record(s, user, "add cell", f"batch {batch.id}", job=job.id, image=image.file, x=round(x), y=round(y))
        return job.id


@task(JobKind.ADD_CELL)
def run(ctx: Context, payload: dict[str, Any]) -> None:
    from lsm_core.imaging.cells import FindParams, crops_at
    from lsm_core.imaging.images import ReadOptions, decode_page

    image_id, x, y = int(payload["image_id"]), float(payload["x"]), float(payload["y"])

    def read(s: Session):
        image, batch = _target(s, image_id, x, y)
        model = s.get(Model, batch.model_id)
        if model is None or model.deleted:
            raise LsmError("the batch's model was deleted; re-run the batch with another model")
        s.expunge_all()
        return image, batch, model

    image, batch, model = ctx.read("reading the image", read)
    assert image.sha256 is not None  # _target refuses images whose bytes were not stored
    pixel_size = float(image.pixel_size_um or model.pixel_size_um)
    params = FindParams.for_model(model, pixel_size)
    side = max(4, round(CELL_UM / pixel_size))
    box = (int(round(x - side / 2)), int(round(y - side / 2)), side, side)
    pixels = decode_page(
        image.file, ctx.lab.blobs.file(image.sha256), image.page, ctx.lab.limits, ReadOptions(batch.channel, batch.z)
    )
    predictor = ctx.models.predictor(model)
    pred = predictor(crops_at(pixels, [box], params))
    probs = [float(p) for p in pred.probs[0]]
    predicted, score = predictor.classes[int(pred.predicted[0])], float(pred.score[0])

    def write(s: Session) -> None:
        _target(s, image_id, x, y)  # still there, and nobody added a cell at this point meanwhile
        idx = (s.scalar(select(func.max(Cell.idx)).where(Cell.image_id == image_id)) or 0) + 1
        cell = Cell(batch_id=batch.id, image_id=image_id, idx=idx, x=box[0], y=box[1], w=side, h=side)
        cell.predicted, cell.score, cell.probs, cell.flags = predicted, score, probs, ADDED
        s.add(cell)
        s.execute(update(Image).where(Image.id == image_id).values(n_cells=Image.n_cells + 1))
        s.flush()
        s.execute(update(Job).where(Job.id == ctx.job.id).values(progress_done=1))
        result.update(cell_id=cell.id, cell=idx, predicted=predicted, score=score)

    result: dict[str, Any] = {}
    ctx.finish(result, before=write)
