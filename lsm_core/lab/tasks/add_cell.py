"""Add a cell the finder missed (issue #17 item 3): a reviewer clicks where it is on a field of view, and a
small job cuts its crop there (a square of a typical cell's size, the crop as every cell's: the model's
micrometres at the pixel size the image was classified at, from the channel and z plane the batch read) and
classifies it with the batch's model. The new cell is flagged ``added``, numbered after the image's last
cell, counted like any other, and who added it is in the audit trail (removing a false one is labelling it
not a cell: lsm_core.lab.cell_labels). Before it is queued, :func:`looks_like_a_cell` says whether that crop holds
anything cell-like at the point, so that a click on background can be questioned first.

An added cell is its own small thing: its job never changes the batch's status (lsm_core.lab.jobs), and a point
where a cell is already, or is being added, is refused when it is clicked (:func:`submit`), not by a failed
job. Both the refusal and the new cell's number are decided under a lock of the image's row (PostgreSQL; SQLite
serialises every write), so clicks and workers at the same time can neither add one cell twice nor give two
cells one number."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db import audit
from db.schema import Batch, Cell, Image, Job, Model
from lsm_core.errors import LsmError
from lsm_core.imaging.calibration import recorded
from lsm_core.lab import accounts, jobs
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.lab import Lab
from lsm_core.lab.tasks import task
from lsm_core.lab.tasks.context import Context, model_of

if TYPE_CHECKING:
    import numpy as np

    from lsm_core.imaging.cells import FindParams

CELL_UM = 9.0  # the side of an added cell's box: a blood stem cell is 6-9 µm across
ADDED = "added"  # the flag of a cell added by a person


def _inside(cell: Cell, x: float, y: float) -> bool:
    return cell.x <= x < cell.x + cell.w and cell.y <= y < cell.y + cell.h


def _side(image: Image, model: Model | None) -> int:
    """The side, in the image's pixels, of an added cell's box: CELL_UM at the pixel size it was classified at."""
    pixel_size = float(image.pixel_size_um or (model.pixel_size_um if model is not None else 0) or 0)
    return max(4, round(CELL_UM / pixel_size)) if pixel_size > 0 else 4


def _near(x0: float, y0: float, x: float, y: float, radius: float) -> bool:
    return (x - x0) ** 2 + (y - y0) ** 2 <= radius**2


def _target(
    s: Session, image_id: int, x: float, y: float, lock: bool = False, pending: bool = True
) -> tuple[Image, Batch]:
    """The image and batch a point is added to; LsmError when it cannot be: the image is gone or no classified
    field, the point is outside it, or a cell is there already (the point is inside a cell's box or within an
    added cell's radius of a cell's centre) or, with ``pending``, is being added there (a queued or running
    add-cell job for a point that close).

    ``lock``: the image's row is locked first (PostgreSQL; SQLite serialises every write transaction), so that
    nobody else adds a cell to the image until ``s`` ends: what is found there then stays true."""
    image = s.get(Image, image_id, with_for_update=lock and s.get_bind().dialect.name == "postgresql")
    if image is None:
        raise LsmError(f"image #{image_id} no longer exists: its batch was deleted")
    batch = s.get(Batch, image.batch_id)
    assert batch is not None  # an image's batch goes with it
    if image.kind != "field" or not image.done or image.error or not image.sha256:
        raise LsmError(f"{image.file}: cells can be added to classified fields of view only")
    if not (0 <= x < (image.width or 0) and 0 <= y < (image.height or 0)):
        raise LsmError(f"({x:g}, {y:g}) is outside {image.file} ({image.width} x {image.height} pixels)")
    radius = _side(image, s.get(Model, batch.model_id)) / 2
    for cell in s.scalars(select(Cell).where(Cell.image_id == image_id).order_by(Cell.idx)):
        if _inside(cell, x, y) or _near(cell.x + cell.w / 2, cell.y + cell.h / 2, x, y, radius):
            raise LsmError(f"cell {cell.idx} of {image.file} is there already: review it instead")
    if pending:
        for job_id, payload in s.execute(
            select(Job.id, Job.payload)
            .where(Job.kind == JobKind.ADD_CELL, Job.batch_id == batch.id, Job.status.in_(jobs.ACTIVE))
            .order_by(Job.id)
        ):
            p = payload or {}
            if p.get("image_id") == image_id and _near(float(p["x"]), float(p["y"]), x, y, radius):
                raise LsmError(
                    f"a cell is being added to {image.file} at ({float(p['x']):.0f}, {float(p['y']):.0f}) already "
                    f"(job {job_id}): review it once it is there"
                )
    return image, batch


def _crop_geometry(model: Model, image: Image, x: float, y: float) -> tuple[FindParams, tuple[int, int, int, int]]:
    """How the cell added at (x, y) is cut: the crop settings, and its box (a CELL_UM square centred there)."""
    from lsm_core.imaging.cells import FindParams

    calibration = recorded(image.pixel_size_um, image.pixel_size_source, model_default=model.pixel_size_um)
    side = _side(image, model)
    return FindParams.for_model(model, calibration), (int(round(x - side / 2)), int(round(y - side / 2)), side, side)


def looks_like_a_cell(lab: Lab, image_id: int, x: float, y: float, pixels: np.ndarray | None = None) -> bool:
    """Whether the crop that a cell added at (x, y) would be classified on holds a cell-like object at the point:
    an outline that :func:`lsm_core.imaging.cells.cell_mask` traces within 4 µm of the crop's centre (as the
    saliency gallery traces each cell's). False for a click on empty background (on synthetic DIC and phase
    fields at 0.1-0.3 µm per pixel: every cell's centre traced, no point 12 µm or more from a cell).

    ``pixels``: the image's plane (H, W) as the batch read it, when the caller has it (the page's cache); else it
    is read from the stored file. LsmError: as :func:`submit` (the point cannot take a cell), or the batch's model
    was deleted."""
    from lsm_core.imaging.cells import cell_mask, crops_at
    from lsm_core.imaging.images import decode_page
    from lsm_core.imaging.readers.base import ReadOptions

    with lab() as s:
        image, batch = _target(s, image_id, x, y)
        params, box = _crop_geometry(model_of(s, batch), image, x, y)
        file, sha256, page, options = image.file, image.sha256, image.page, ReadOptions(batch.channel, batch.z)
    if pixels is None:
        assert sha256 is not None  # _target refuses images whose bytes were not stored
        pixels = decode_page(file, lab.blobs.file(sha256), page, lab.limits, options)
    crop = crops_at(pixels, [box], params)[0]
    return cell_mask(crop, params.crop_um / params.output_size) is not None


def submit(lab: Lab, image_id: int, x: float, y: float, user: str) -> int:
    """Queue the job that adds a cell centred on (x, y) (the image's pixels) to a classified field of view;
    returns its id. Members add cells to their own batches, administrators to anyone's. LsmError: the image
    is gone or no classified field, the point is outside it, or a cell is there or being added there already
    (two clicks at once: the image's row is locked, so the second sees the first's job)."""
    with lab.begin() as s:
        image, batch = _target(s, image_id, x, y, lock=True)
        if not accounts.may_change(lab, s, user, batch.owner):
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
    from lsm_core.imaging.cells import crops_at
    from lsm_core.imaging.images import decode_page
    from lsm_core.imaging.readers.base import ReadOptions

    image_id, x, y = int(payload["image_id"]), float(payload["x"]), float(payload["y"])

    def read(s: Session):
        image, batch = _target(s, image_id, x, y, pending=False)
        model = model_of(s, batch)
        s.expunge_all()
        return image, batch, model

    image, batch, model = ctx.read("reading the image", read)
    assert image.sha256 is not None  # _target refuses images whose bytes were not stored
    params, box = _crop_geometry(model, image, x, y)
    pixels = decode_page(
        image.file, ctx.lab.blobs.file(image.sha256), image.page, ctx.lab.limits, ReadOptions(batch.channel, batch.z)
    )
    predictor = ctx.models.predictor(model)
    pred = predictor(crops_at(pixels, [box], params))
    probs = [float(p) for p in pred.probs[0]]
    predicted, score = predictor.classes[int(pred.predicted[0])], float(pred.score[0])
    distance = float(pred.distance[0]) if pred.distance is not None else None

    def write(s: Session) -> None:
        # the image's row locked first: still there, nobody added a cell at this point meanwhile, and nobody
        # numbers a cell of this image until this transaction ends (two workers cannot both take max + 1)
        _target(s, image_id, x, y, lock=True, pending=False)
        idx = (s.scalar(select(func.max(Cell.idx)).where(Cell.image_id == image_id)) or 0) + 1
        cell = Cell(batch_id=batch.id, image_id=image_id, idx=idx, x=box[0], y=box[1], w=box[2], h=box[3])
        cell.predicted, cell.score, cell.probs, cell.flags = predicted, score, probs, ADDED
        cell.feature_distance = distance
        s.add(cell)
        s.execute(update(Image).where(Image.id == image_id).values(n_cells=Image.n_cells + 1))
        s.flush()
        s.execute(update(Job).where(Job.id == ctx.job.id).values(progress_done=1))
        result.update(cell_id=cell.id, cell=idx, predicted=predicted, score=score)

    result: dict[str, Any] = {}
    ctx.finish(result, before=write)
