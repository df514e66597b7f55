"""Cells of the history as labelled data: crops cut again from stored images, batches named with the class
their population was sorted as ("12: LT-HSC")."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from db.schema import Batch, Cell, Image
from lsm_core.classes import task_classes
from lsm_core.errors import LsmError
from lsm_core.imaging.cells import FindParams, crops_at
from lsm_core.imaging.images import decode_page
from lsm_core.lab.blobs import BlobStore
from lsm_core.lab.history import Lab
from lsm_core.ml.datasets import LabelledData, check_classes


def stored_crops(blobs: BlobStore, image: Image, boxes, params: FindParams) -> np.ndarray:
    """The crops of an Image row's cells (boxes x, y, w, h), cut again from its stored bytes: (N, S, S)."""
    if not image.sha256:
        raise LsmError(f"{image.file}: its bytes were not stored")
    pixels = decode_page(image.file, blobs.get(image.sha256), image.page)
    return crops_at(pixels, boxes, params, single=image.kind == "single")


def parse_labelled_batches(text: str) -> dict[int, str]:
    """``{batch id: class}`` from lines ``12: LT-HSC`` (blank lines ignored); LsmError names a line it cannot read."""
    labelled: dict[int, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(":")
        if not left.strip().isdigit() or not right.strip():
            raise LsmError(f"cannot read {line.strip()!r}: write `batch id: class`, e.g. `12: LT-HSC`")
        labelled[int(left)] = right.strip()
    return labelled


def from_batches(
    lab: Lab, labels_by_batch: dict[int, str], task: str, params: FindParams | None = None
) -> LabelledData:
    """Labelled crops from classified batches: every cell of batch B gets class labels_by_batch[B].

    Crops are cut again from the stored images at the cells' boxes. The source of a crop is its mouse
    (the batch's mouse id, else the batch), so that no mouse is on both sides of the split.
    """
    classes = list(task_classes(task))
    params = params or FindParams()
    crops: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[int] = []
    sources: list[str] = []
    errors: list[tuple[str, str]] = []
    mouse_groups: dict[str, int] = {}
    with lab() as s:
        for batch_id, cls in labels_by_batch.items():
            if cls not in classes:
                raise LsmError(f"class {cls!r} is not one of the {task} classes ({', '.join(classes)})")
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise LsmError(f"batch {batch_id} does not exist")
            mouse = f"mouse {batch.mouse_id}" if batch.mouse_id else f"batch {batch.id}"
            group = mouse_groups.setdefault(mouse, len(mouse_groups))
            if group == len(sources):
                sources.append(mouse)
            for image in s.scalars(select(Image).where(Image.batch_id == batch_id, Image.n_cells > 0)):
                boxes = s.execute(
                    select(Cell.x, Cell.y, Cell.w, Cell.h).where(Cell.image_id == image.id).order_by(Cell.idx)
                ).all()
                try:
                    cut = stored_crops(lab.blobs, image, boxes, params)
                except LsmError as exc:
                    errors.append((image.file, str(exc)))
                    continue
                crops.append(cut)
                labels += [classes.index(cls)] * len(cut)
                groups += [group] * len(cut)
    if not crops:
        raise LsmError("the chosen batches have no classified cells")
    data = LabelledData(
        classes, np.concatenate(crops), np.asarray(labels, np.int64), np.asarray(groups, np.int64), sources, errors
    )
    check_classes(data)
    return data
