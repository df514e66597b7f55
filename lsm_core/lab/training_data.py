"""Cells of the history as labelled data: crops cut again from stored images, labelled either by the class
their batch's population was sorted as ("12: LT-HSC", :func:`from_batches`) or by a reporter gate on each
cell's measured channel signal ("GFP high -> LT-HSC", :func:`from_gate`, rule in :mod:`lsm_core.lab.gating`).

Crops are cut again exactly as the batch was classified: from the channel and z plane the batch chose
(:func:`read_options`) and at the pixel size each image was classified at."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.schema import Batch, Cell, Image
from lsm_core.classes import task_classes
from lsm_core.errors import LsmError
from lsm_core.imaging.cells import FindParams, crops_at
from lsm_core.imaging.images import decode_page
from lsm_core.imaging.readers.base import Limits, ReadOptions
from lsm_core.imaging.reporters import otsu_threshold
from lsm_core.lab.blobs import BlobStore
from lsm_core.lab.gating import Gate, parse_gate
from lsm_core.lab.lab import Lab
from lsm_core.ml.datasets import LabelledData, check_classes


def read_options(batch: Batch) -> ReadOptions:
    """What a batch's images were read with when it was classified: its channel and z plane."""
    return ReadOptions(batch.channel, batch.z)


def stored_crops(
    blobs: BlobStore,
    image: Image,
    boxes,
    params: FindParams,
    options: ReadOptions | None = None,
    limits: Limits | None = None,
) -> np.ndarray:
    """The crops of an Image row's cells (boxes x, y, w, h), cut again from its stored bytes: (N, S, S).

    ``options`` are the batch's (:func:`read_options`): the plane the cells were found on. The crops are cut
    at the pixel size the image was classified at (``image.pixel_size_um``, when recorded), whatever
    ``params`` says, so that they cover the same micrometres as the crops the model saw. ``limits``: the lab's
    (:attr:`Lab.limits`), as when the image was classified."""
    if not image.sha256:
        raise LsmError(f"{image.file}: its bytes were not stored")
    if image.pixel_size_um:
        params = replace(params, pixel_size_um=float(image.pixel_size_um))
    pixels = decode_page(image.file, blobs.file(image.sha256), image.page, limits, options)
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


class _Builder:
    """Crops, labels and sources gathered batch by batch; the source of a crop is its mouse (the batch's mouse
    id, else the batch), so that no mouse is on both sides of the split."""

    def __init__(self, lab: Lab, task: str, params: FindParams | None) -> None:
        self.lab = lab
        self.classes = list(task_classes(task))
        self.params = params or FindParams()
        self.crops: list[np.ndarray] = []
        self.labels: list[int] = []
        self.groups: list[int] = []
        self.sources: list[str] = []
        self.errors: list[tuple[str, str]] = []
        self.mice: dict[str, int] = {}

    def group(self, batch: Batch) -> int:
        mouse = f"mouse {batch.mouse_id}" if batch.mouse_id else f"batch {batch.id}"
        if mouse not in self.mice:
            self.mice[mouse] = len(self.sources)
            self.sources.append(mouse)
        return self.mice[mouse]

    def add(self, batch: Batch, image: Image, boxes: list, labels: list[int]) -> int:
        """Cut ``boxes`` of ``image`` again and add them with ``labels``; the number added (0: unusable)."""
        try:
            cut = stored_crops(self.lab.blobs, image, boxes, self.params, read_options(batch), self.lab.limits)
        except LsmError as exc:
            self.errors.append((image.file, str(exc)))
            return 0
        if len(cut) != len(boxes):  # a single-cell image whose cell is not found again as it was
            self.errors.append((image.file, f"{len(boxes)} cell(s) classified, {len(cut)} cut again; not used"))
            return 0
        self.crops.append(cut)
        self.labels += labels
        self.groups += [self.group(batch)] * len(cut)
        return len(cut)

    def add_cells(self, s: Session, batch: Batch, cells) -> tuple[Counter[str], int]:
        """Cut again and add ``cells`` of ``batch`` (each with ``image_id``, ``box`` and its class ``cls``),
        image by image: the crops cut per class, and the cells left out because their image was unusable."""
        by_image: dict[int, list] = {}
        for cell in cells:
            by_image.setdefault(cell.image_id, []).append(cell)
        cut: Counter[str] = Counter()
        unusable = 0
        for image_id, group in by_image.items():
            image = s.get(Image, image_id)
            assert image is not None  # read in this session with its cells
            if self.add(batch, image, [c.box for c in group], [self.classes.index(c.cls) for c in group]):
                cut.update(c.cls for c in group)
            else:
                unusable += len(group)
        return cut, unusable

    def data(self, provenance: dict[str, Any]) -> LabelledData:
        if not self.crops:
            raise LsmError("the chosen batches have no classified cells")
        data = LabelledData(
            self.classes,
            np.concatenate(self.crops),
            np.asarray(self.labels, np.int64),
            np.asarray(self.groups, np.int64),
            self.sources,
            self.errors,
            [provenance],
        )
        check_classes(data)
        return data


def from_batches(
    s: Session, lab: Lab, labels_by_batch: dict[int, str], task: str, params: FindParams | None = None
) -> LabelledData:
    """Within ``s`` (a session of ``lab``, whose blob store holds the images): labelled crops from classified
    batches, every cell of batch B with class labels_by_batch[B]."""
    build = _Builder(lab, task, params)
    counts: dict[str, int] = {}
    for batch_id, cls in labels_by_batch.items():
        if cls not in build.classes:
            raise LsmError(f"class {cls!r} is not one of the {task} classes ({', '.join(build.classes)})")
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise LsmError(f"batch {batch_id} does not exist")
        n = 0
        for image in s.scalars(
            select(Image).where(Image.batch_id == batch_id, Image.n_cells > 0).order_by(Image.position)
        ):
            boxes = s.execute(
                select(Cell.x, Cell.y, Cell.w, Cell.h).where(Cell.image_id == image.id).order_by(Cell.idx)
            ).all()
            n += build.add(batch, image, list(boxes), [build.classes.index(cls)] * len(boxes))
        counts[str(batch_id)] = n
    provenance = {"kind": "batches", "batches": {str(k): v for k, v in labels_by_batch.items()}, "cells": counts}
    return build.data(provenance)


# --- reporter gates -----------------------------------------------------------------------------------
@dataclass
class GatedCell:
    cell_id: int
    image_id: int
    box: tuple[int, int, int, int]
    value: float | None  # the gate's measure of its channel; None: the cell has no value for it
    cls: str | None  # None: left out (no value, or no clause covers the value)


@dataclass
class GatedBatch:
    """What a gate gives one batch's cells (in image order, then cell order)."""

    batch_id: int
    channel: str  # the channel as the batch's files name it
    threshold: float | None  # Otsu's threshold of the batch's values, when the gate uses it
    cells: list[GatedCell] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        labelled = Counter(c.cls for c in self.cells if c.cls is not None)
        return {
            "labelled": dict(labelled),
            "between": sum(1 for c in self.cells if c.cls is None and c.value is not None),
            "no_value": sum(1 for c in self.cells if c.value is None),
        }


def _channel_of(s: Session, batch: Batch, gate: Gate) -> str:
    """The batch's name for the gate's channel (matched ignoring case); LsmError naming the channels it has."""
    names: dict[str, None] = {}
    for reporters in s.scalars(select(Image.reporters).where(Image.batch_id == batch.id, Image.n_cells > 0)):
        names.update(dict.fromkeys(reporters or {}))
    if gate.channel in names:
        return gate.channel
    matches = [n for n in names if n.casefold() == gate.channel.casefold()]
    if len(matches) == 1:
        return matches[0]
    if not names:
        classified = s.scalar(select(Image.id).where(Image.batch_id == batch.id, Image.n_cells > 0).limit(1))
        why = (
            "its files have one channel only (no reporter was measured)"
            if classified
            else "it has no classified cells yet"
        )
        raise LsmError(f"batch {batch.id} has no channel {gate.channel!r}: {why}")
    raise LsmError(f"batch {batch.id} has no channel {gate.channel!r}; its channels: {', '.join(sorted(names))}")


def gate_batches(s: Session, batch_ids: list[int], gate: Gate) -> list[GatedBatch]:
    """Which class ``gate`` gives every cell of the batches, without cutting any crop (cheap: what submitting
    a training job checks). LsmError for a missing batch, a batch without the channel, a batch whose Otsu
    threshold cannot be found or with which a number and Otsu's threshold overlap."""
    if not batch_ids:
        raise LsmError("choose the batches whose cells the gate labels")
    out = []
    for batch_id in dict.fromkeys(batch_ids):
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise LsmError(f"batch {batch_id} does not exist")
        channel = _channel_of(s, batch, gate)
        rows = s.execute(
            select(Cell.id, Cell.image_id, Cell.x, Cell.y, Cell.w, Cell.h, Cell.signal)
            .join(Image, Image.id == Cell.image_id)
            .where(Cell.batch_id == batch_id)
            .order_by(Image.position, Cell.idx)
        ).all()
        values = []
        for r in rows:
            pair = (r.signal or {}).get(channel)
            v = pair[gate.index] if isinstance(pair, (list, tuple)) and len(pair) == 2 else None
            values.append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan)
        threshold = None
        if gate.uses_otsu:
            threshold = otsu_threshold(np.asarray(values))
            if threshold is None:
                raise LsmError(
                    f"batch {batch_id}: Otsu's threshold of {channel} cannot be found (fewer than two different "
                    "values); write numbers instead of high and low"
                )
            gate.check(threshold, f"batch {batch_id}")
        classes = gate.assign(np.asarray(values, np.float64), threshold)
        gated = GatedBatch(batch_id, channel, threshold)
        for r, v, cls in zip(rows, values, classes):
            gated.cells.append(GatedCell(r.id, r.image_id, (r.x, r.y, r.w, r.h), None if math.isnan(v) else v, cls))
        out.append(gated)
    return out


def gate_summary(gate: Gate, gated: list[GatedBatch]) -> dict[str, Any]:
    """What a model records of a gate: the rule, the batches, Otsu's thresholds and the counts."""
    labelled: Counter[str] = Counter()
    for g in gated:
        labelled.update(g.counts()["labelled"])
    return {
        "kind": "gate",
        **gate.to_dict(),
        "batches": [g.batch_id for g in gated],
        "thresholds": {str(g.batch_id): g.threshold for g in gated if g.threshold is not None},
        "counts": {
            "labelled": {c: labelled.get(c, 0) for c in gate.classes},
            "between": sum(g.counts()["between"] for g in gated),
            "no_value": sum(g.counts()["no_value"] for g in gated),
            "unusable": 0,
        },
        "per_batch": {str(g.batch_id): g.counts() for g in gated},
    }


def _labels_nothing(gate: Gate, summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    return (
        f"the gate `{gate.text}` labels no cell of batch(es) {', '.join(map(str, summary['batches']))}: "
        f"{counts['between']} cell(s) are between its thresholds, {counts['no_value']} have no {gate.channel} value"
    )


def check_gate(s: Session, batch_ids: list[int], gate: Gate) -> dict[str, Any]:
    """:func:`gate_summary` of the gate on the batches, cutting no crop; LsmError when it cannot be applied to
    them (:func:`gate_batches`) or labels no cell."""
    summary = gate_summary(gate, gate_batches(s, batch_ids, gate))
    if not any(summary["counts"]["labelled"].values()):
        raise LsmError(_labels_nothing(gate, summary))
    return summary


def from_gate(
    s: Session, lab: Lab, batch_ids: list[int], gate: Gate | str, task: str, params: FindParams | None = None
) -> LabelledData:
    """Within ``s`` (a session of ``lab``): labelled crops from classified multi-channel batches, each cell
    labelled by ``gate`` (a :class:`lsm_core.lab.gating.Gate` or its text) on its measured channel signal. Cells
    no clause covers and cells with no value for the channel are left out; the data's provenance records the
    rule and the counts (:func:`gate_summary`; ``counts.labelled`` counts the crops actually cut, ``unusable``
    the cells of images whose stored bytes could not be read again)."""
    gate = parse_gate(gate, task) if isinstance(gate, str) else gate
    build = _Builder(lab, task, params)
    gated = gate_batches(s, batch_ids, gate)
    summary = gate_summary(gate, gated)
    cut: Counter[str] = Counter()
    unusable = 0
    for g in gated:
        batch = s.get(Batch, g.batch_id)
        assert batch is not None  # gate_batches found it in this session
        got, lost = build.add_cells(s, batch, [c for c in g.cells if c.cls is not None])
        cut.update(got)
        unusable += lost
    if not any(summary["counts"]["labelled"].values()):
        raise LsmError(_labels_nothing(gate, summary))
    summary["counts"]["labelled"] = {c: cut.get(c, 0) for c in gate.classes}
    summary["counts"]["unusable"] = unusable
    return build.data(summary)


# --- reviewers' labels (lsm_core.lab.cell_labels) ----------------------------------------------------------
@dataclass
class ReviewedCell:
    cell_id: int
    batch_id: int
    image_id: int
    box: tuple[int, int, int, int]
    cls: str  # the class it counts as (its reviewers' consensus)
    by: str  # whose label counts


def reviewed_cells(s: Session, batch_ids: list[int], task: str) -> tuple[list[ReviewedCell], dict[str, Any]]:
    """The cells of the batches that reviewers gave a class (their consensus,
    :func:`lsm_core.lab.cell_labels.consensus`; cells marked as not a cell and unlabelled ones left out), in image
    and cell order, and the label set's record: batches, counts per class, who labelled, how many were disputed, the
    sha256 of the set (batch, image bytes, page, cell, class) and the parent models (those that classified the
    batches). Cheap: no crop is cut. LsmError for a missing batch, one classified for another task, or no labelled
    cell."""
    from lsm_core.lab.cell_labels import consensus_of

    if not batch_ids:
        raise LsmError("choose the batches whose labelled cells to train on")
    classes = list(task_classes(task))
    parents: dict[int, dict[str, Any]] = {}
    for batch_id in dict.fromkeys(batch_ids):
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise LsmError(f"batch {batch_id} does not exist")
        if batch.model.task != task:
            raise LsmError(f"batch {batch_id} was classified by a {batch.model.task} model, not a {task} one")
        m = batch.model
        parents[m.id] = {"name": m.name, "version": m.version, "sha256": m.weights_sha256}
    ids = list(dict.fromkeys(batch_ids))
    agreed = consensus_of(s, ids)
    rows = s.execute(  # the batches' cells (not an IN list of labelled ids: that may pass a driver's limit)
        select(Cell.id, Cell.batch_id, Cell.image_id, Cell.idx, Cell.x, Cell.y, Cell.w, Cell.h, Image.sha256)
        .add_columns(Image.page)
        .join(Image, Image.id == Cell.image_id)
        .where(Cell.batch_id.in_(ids))
        .order_by(Cell.batch_id, Image.position, Cell.idx)
    ).all()
    cells, digest, by, disputed = [], hashlib.sha256(), Counter[str](), 0
    for r in rows:
        said = agreed.get(r.id)
        if said is None or said.label is None:
            continue
        if said.label not in classes:
            continue  # a class of another model's task cannot be (batches are checked above)
        cells.append(ReviewedCell(r.id, r.batch_id, r.image_id, (r.x, r.y, r.w, r.h), said.label, said.last_by))
        digest.update(f"{r.batch_id}\t{r.sha256}\t{r.page}\t{r.idx}\t{said.label}\n".encode())
        by[said.last_by] += 1
        disputed += said.disputed
    if not cells:
        raise LsmError(
            f"no cell of batch(es) {', '.join(map(str, ids))} has been given a class yet: label some on their "
            "results pages (Review) or with `lsm label`"
        )
    counts = Counter(c.cls for c in cells)
    summary = {
        "kind": "reviews",
        "batches": ids,
        "cells": {c: counts.get(c, 0) for c in classes},
        "labelled_by": dict(sorted(by.items())),
        "disputed": disputed,
        "not_a_cell": sum(1 for x in agreed.values() if x.excluded),
        "sha256": digest.hexdigest(),
        "parents": list(parents.values()),
    }
    return cells, summary


def from_reviews(
    s: Session, lab: Lab, batch_ids: list[int], task: str, params: FindParams | None = None
) -> LabelledData:
    """Within ``s`` (a session of ``lab``): labelled crops from the cells of classified batches that reviewers
    gave a class (:func:`reviewed_cells`), cut again as the batches were classified; the data's provenance is the
    label set's record, its ``cells`` the crops actually cut and ``unusable`` the cells of images that could not
    be read again."""
    build = _Builder(lab, task, params)
    cells, summary = reviewed_cells(s, batch_ids, task)
    cut: Counter[str] = Counter()
    unusable = 0
    for batch_id in summary["batches"]:
        batch = s.get(Batch, batch_id)
        assert batch is not None  # reviewed_cells found it in this session
        got, lost = build.add_cells(s, batch, [c for c in cells if c.batch_id == batch_id])
        cut.update(got)
        unusable += lost
    summary["cells"] = {c: cut.get(c, 0) for c in build.classes}
    summary["unusable"] = unusable
    return build.data(summary)
