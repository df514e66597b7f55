"""A batch's shift from its model's training data: the share of its cells whose penultimate-layer features lie
beyond what 99% of the model's held-out cells reach (:mod:`lsm_core.ml.shift` measures each cell's distance).

The verdict reads the share's 95% lower bound (Wilson), so a handful of cells never cries shift: ``none`` under
10% (ten times the 1% expected of cells like the held-out ones: cells cut from whole fields of view, with
neighbours and debris beside them, run a few per cent above crops like the training ones), ``moderate`` from
10%, ``strong`` from 30%; ``unknown`` where the model carries no reference or no cell was measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsm_core.ml.shift import QUANTILE, SHIFT_KEY
from lsm_core.reports.stats import wilson_interval

MODERATE = 0.10  # the score's 95% lower bound from which a batch reads "moderate"
STRONG = 0.30  # ... and "strong"
LEVELS = ("none", "moderate", "strong")
UNKNOWN = "unknown"

NO_REFERENCE = (
    "Shift from the training data not measured: this model carries no summary of its training cells' features "
    "(models registered before it was measured, and imported weights, have none; retrain it to get one)."
)
NOT_MEASURED = "Shift not measured: these cells were classified before it was (re-run the batch to measure it)."


def threshold_of(training: dict[str, Any] | None) -> tuple[float, int] | None:
    """(threshold, held-out cells behind it) from a model's training summary, without reading the vectors; None
    when it records no usable reference."""
    data = (training or {}).get(SHIFT_KEY)
    if not isinstance(data, dict):
        return None
    try:
        threshold, cells = float(data["threshold"]), int(data["calibration_cells"])
    except (KeyError, TypeError, ValueError):
        return None
    return (threshold, cells) if math.isfinite(threshold) and threshold > 0 else None


@dataclass(frozen=True)
class Shift:
    """A batch's cells against the model's training data: ``level`` (none, moderate, strong, or unknown), the
    ``score`` (share of measured cells beyond the threshold) with its 95% interval, and what it rests on."""

    level: str
    score: float | None
    low: float | None
    high: float | None
    beyond: int
    cells: int  # cells with a distance measured
    note: str

    @property
    def warns(self) -> bool:
        return self.level in ("moderate", "strong")


def assess(distances: Iterable[float | None], training: dict[str, Any] | None) -> Shift:
    """The verdict on cells whose distances (None: not measured) were computed with the model of ``training``."""
    reference = threshold_of(training)
    if reference is None:
        return Shift(UNKNOWN, None, None, None, 0, 0, NO_REFERENCE)
    threshold, held_out = reference
    given = list(distances)
    values = np.array([d for d in given if d is not None], np.float64)
    if not len(values):
        return Shift(UNKNOWN, None, None, None, 0, 0, NOT_MEASURED)
    n = len(values)
    beyond = int(np.count_nonzero(values > threshold))
    lo, hi = wilson_interval(beyond, n)
    low, high = float(lo), float(hi)
    level = "strong" if low >= STRONG else "moderate" if low >= MODERATE else "none"
    said = (
        f"{beyond:,} of {n:,} cells ({beyond / n:.0%}) lie farther from the model's training cells, in the "
        f"features it classifies by, than {QUANTILE:.0%} of its {held_out:,} held-out cells do (expected: about "
        f"{1 - QUANTILE:.0%})."
    )
    if level == "strong":
        said += (
            " These cells do not look like what the model learnt from (another microscope, stain, magnification or "
            "cell type?): its probabilities, and every composition counted or corrected from them, cannot be trusted."
        )
    elif level == "moderate":
        said += (
            " Part of the batch looks unlike the training data: check its images and the calibration before "
            "trusting its compositions."
        )
    unmeasured = len(given) - n
    if unmeasured:
        said += f" {unmeasured:,} cells classified before the shift was measured are not in it."
    return Shift(level, beyond / n, low, high, beyond, n, said)
