"""Labelled training data: class folders, a ZIP whose folder names are the classes, or labelled batches.

Every image goes through the same reading and cell finding as classification (:mod:`lsm_core.imaging.images`,
:mod:`lsm_core.imaging.cells`): a single-cell crop passes through as one cell, a field of view of sorted cells
gives all its cells the folder's class. Each crop remembers its *source* (the file it came from, or the
mouse for batches), so that :func:`split` never puts crops of one source on both sides.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from lsm_core.classes import task_classes
from lsm_core.errors import LsmError
from lsm_core.imaging.cells import FindParams, find_cells
from lsm_core.imaging.images import decode_raw
from lsm_core.imaging.readers.archives import RawFile, iter_files, iter_upload

MIN_PER_CLASS = 10
MIN_SIDE = 16


@dataclass
class LabelledData:
    """crops (N, S, S) float32; labels (N,) int64 into ``classes``; groups (N,) int64 source ids.

    ``provenance``: where the labels come from, one JSON-able dict per part (``{"kind": "folders" | "batches" |
    "gate", ...}``), recorded in the model's manifest as ``training["labels"]``."""

    classes: list[str]
    crops: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    sources: list[str]
    errors: list[tuple[str, str]] = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)

    @property
    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def subset(self, index: np.ndarray) -> LabelledData:
        return LabelledData(
            self.classes, self.crops[index], self.labels[index], self.groups[index], self.sources, [], self.provenance
        )

    @classmethod
    def concat(cls, parts: list[LabelledData]) -> LabelledData:
        """One data set of several (same classes); sources are renumbered so that none is shared."""
        first = parts[0]
        crops: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        groups: list[np.ndarray] = []
        sources: list[str] = []
        errors: list[tuple[str, str]] = []
        provenance: list[dict] = []
        for part in parts:
            crops.append(part.crops)
            labels.append(part.labels)
            groups.append(part.groups + len(sources))
            sources += part.sources
            errors += part.errors
            provenance += part.provenance
        return cls(
            first.classes,
            np.concatenate(crops),
            np.concatenate(labels),
            np.concatenate(groups),
            sources,
            errors,
            provenance,
        )

    def digest(self) -> str:
        """sha256 over crops and labels: which data a model was trained on."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.crops).tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()


def class_of(path: str, classes: list[str]) -> str | None:
    """The class named by a folder in ``path`` (case-insensitive, the innermost folder that names one)."""
    lookup = {c.lower(): c for c in classes}
    for part in reversed(PurePosixPath(path.replace("\\", "/")).parts[:-1]):
        if part.lower() in lookup:
            return lookup[part.lower()]
    return None


def from_files(files: Iterable[RawFile], task: str, params: FindParams | None = None) -> LabelledData:
    """Labelled crops from raw files whose paths contain a class folder (``.../LT-HSC/cell.png``)."""
    classes = list(task_classes(task))
    params = params or FindParams()
    crops: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[int] = []
    sources: list[str] = []
    errors: list[tuple[str, str]] = []
    unknown: Counter[str] = Counter()
    expanded = (
        member
        for raw in files
        for member in (iter_upload(raw.source, raw.data) if raw.error is None and raw.data else [raw])
    )
    for raw in expanded:
        cls = class_of(raw.source, classes)
        if cls is None:
            folder = PurePosixPath(raw.source).parent.name or "(top level)"
            unknown[folder] += 1
            continue
        for record in decode_raw(raw):
            if not record.ok or record.pixels is None:
                errors.append((record.source, record.error or ""))
                continue
            if min(record.pixels.shape) < MIN_SIDE:
                errors.append(
                    (record.source, f"the image is {record.width}x{record.height} pixels: too small for a cell")
                )
                continue
            try:
                found = find_cells(record.pixels, params)
            except LsmError as exc:
                errors.append((record.source, str(exc)))
                continue
            if len(found) == 0:
                errors.append((record.source, "no cell found in this image"))
                continue
            group = len(sources)
            sources.append(f"{record.source}#{record.page + 1}")
            crops.append(found.crops)
            labels += [classes.index(cls)] * len(found)
            groups += [group] * len(found)
    for folder, n in unknown.items():
        errors.append(
            (
                folder,
                f"{n} file(s) in a folder that names no {task} class "
                f"(expected folders named {', '.join(classes)}); not used",
            )
        )
    if not crops:
        raise LsmError(f"no labelled images found: put them in folders named {', '.join(classes)}")
    data = LabelledData(
        classes, np.concatenate(crops), np.asarray(labels, np.int64), np.asarray(groups, np.int64), sources, errors
    )
    data.provenance = [{"kind": "folders", "images": len(sources), "cells": data.class_counts}]
    check_classes(data)
    return data


def from_paths(paths: Iterable[str], task: str, params: FindParams | None = None) -> LabelledData:
    """Labelled crops from class folders and ZIP archives on disk."""
    return from_files(iter_files(paths), task, params)


def check_classes(data: LabelledData) -> None:
    counts = data.class_counts
    present = [c for c, n in counts.items() if n]
    if len(present) < 2:
        raise LsmError(
            f"only one class has images ({', '.join(present) or 'none'}); training needs at least two of "
            f"{', '.join(data.classes)}"
        )
    few = {c: n for c, n in counts.items() if 0 < n < MIN_PER_CLASS}
    if few:
        raise LsmError(
            "too few cells to learn from: "
            + ", ".join(f"{c} has {n}" for c, n in few.items())
            + f" (at least {MIN_PER_CLASS} per class)"
        )


def split(data: LabelledData, validation: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train / validation split that keeps each source on one side.

    Sources are assigned whole, class by class (a source's class is its majority class), so that each
    class has about ``validation`` of its crops in the validation set.
    """
    rng = np.random.default_rng(seed)
    val_groups: set[int] = set()
    for c in range(len(data.classes)):
        in_class = data.labels == c
        groups, sizes = np.unique(data.groups[in_class], return_counts=True)
        if len(groups) == 0:
            continue
        target = validation * in_class.sum()
        taken = 0
        for i in rng.permutation(len(groups))[: len(groups) - 1]:  # at least one source stays for training
            if taken >= target:
                break
            val_groups.add(int(groups[i]))
            taken += sizes[i]
    is_val = np.isin(data.groups, list(val_groups))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
