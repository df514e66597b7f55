"""Is a batch like the cells the model learnt from? Its cells' penultimate-layer features against the model's own.

At training (:func:`lsm_core.ml.train.train_and_register`) the features the network computes just before its
last linear layer are summarised for the model over its training cells, and, over the held-out validation
cells, how far from that summary a cell of the model's own kind lies (the 99th percentile of their distances:
the *threshold*). Classification measures each cell's distance the same way
(:class:`lsm_core.ml.predict.Predictor`), and a batch's *shift score* is the share of its cells beyond the
threshold (:mod:`lsm_core.reports.shift` gives the verdict): about 1% for cells like the held-out ones, most
cells for cells from another microscope, stain, magnification or cell type.

The distance is a Mahalanobis distance in the features' principal components: the training cells' features are
centred, their first :data:`COMPONENTS` principal components whitened (each divided by its spread); the distance
is the root mean square of these coordinates, or the length of what the components leave (the residual) over
its typical length on the training cells, whichever is larger. Features that move together are judged together
(a per-feature z-score missed most of the real cells a synthetic model was given: 23% beyond its threshold,
against 87% here), and it stays small to store: (COMPONENTS + 1) x F numbers. It is a plain summary, not a
density: it notices cells that activate the network unlike anything it saw, which is what makes its
probabilities, and every composition counted or corrected from them, untrustworthy. NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SHIFT_KEY = "shift_reference"  # where a model's training summary (Manifest.training, Model.training) keeps it
QUANTILE = 0.99  # the threshold: this quantile of the held-out cells' distances
COMPONENTS = 32  # principal components of the training cells' features kept (fewer where there are fewer features)
_FLOOR = 1e-3  # a component's spread is floored at this times the first one's


@dataclass(frozen=True)
class FeatureReference:
    """What a model's own cells look like to it: the mean of its training cells' features (F,), their principal
    axes (K, F) with each one's spread (K,), the typical size of what those axes leave (0: nothing left), and
    the distance (:meth:`distances`) that :data:`QUANTILE` of its held-out cells stay within."""

    mean: np.ndarray  # (F,) float64
    axes: np.ndarray  # (K, F) float64, orthonormal rows
    spread: np.ndarray  # (K,) float64, > 0
    residual: float  # root mean square length of the training cells' residual (0: the axes span every feature)
    threshold: float
    fit_cells: int  # training cells the mean and axes come from
    calibration_cells: int  # held-out cells the threshold comes from

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N,) float32: each cell's root mean square whitened coordinate, or its residual's length over the
        training cells' typical one, whichever is larger."""
        centred = np.asarray(features, np.float64) - self.mean
        coords = centred @ self.axes.T
        distance = np.sqrt(np.mean((coords / self.spread) ** 2, axis=1))
        if self.residual > 0:  # the larger of the two: either alone can tell a cell unlike the training cells
            rest = centred - coords @ self.axes
            distance = np.maximum(distance, np.sqrt(np.sum(rest * rest, axis=1)) / self.residual)
        return distance.astype(np.float32)

    @classmethod
    def build(cls, fit: np.ndarray, calibration: np.ndarray) -> FeatureReference:
        """From the features (N, F) of the training cells (``fit``) and of held-out cells (``calibration``)."""
        fit = np.asarray(fit, np.float64)
        mean = fit.mean(axis=0)
        centred = fit - mean
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        k = min(COMPONENTS, len(singular))
        spread = singular[:k] / np.sqrt(max(len(fit), 1))
        spread = np.maximum(spread, _FLOOR * (spread[0] if len(spread) and spread[0] > 0 else 1.0))
        axes = vt[:k]
        residual = 0.0
        if k < fit.shape[1]:
            rest = centred - (centred @ axes.T) @ axes
            residual = float(np.sqrt(np.mean(np.sum(rest * rest, axis=1))))
        ref = cls(mean, axes, spread, residual, 0.0, len(fit), len(calibration))
        held_out = ref.distances(calibration)
        threshold = float(np.quantile(held_out, QUANTILE, method="higher")) if len(held_out) else math.inf
        return cls(mean, axes, spread, residual, threshold, len(fit), len(calibration))

    def to_dict(self) -> dict[str, Any]:
        """JSON for the model's training summary (6 significant digits: (K + 1) x F numbers, ~170 kB for the
        512 features of resnet50_paper, ~45 kB for small_cnn's 128)."""

        def numbers(a: np.ndarray) -> list:
            return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(a).tolist()

        return {
            "method": f"Mahalanobis distance in the first {len(self.spread)} principal components of the "
            "penultimate-layer features, or their residual's length, the larger; threshold: "
            f"{QUANTILE:.0%} quantile of the held-out cells' distances",
            "mean": numbers(self.mean),
            "axes": numbers(self.axes),
            "spread": numbers(self.spread),
            "residual": float(f"{self.residual:.6g}"),
            "threshold": float(f"{self.threshold:.6g}"),
            "fit_cells": self.fit_cells,
            "calibration_cells": self.calibration_cells,
        }

    @classmethod
    def from_dict(cls, data: Any) -> FeatureReference | None:
        """The reference a training summary holds, or None (none recorded, or not a usable one)."""
        if not isinstance(data, dict):
            return None
        try:
            mean = np.asarray(data["mean"], np.float64)
            axes = np.asarray(data["axes"], np.float64)
            spread = np.asarray(data["spread"], np.float64)
            residual, threshold = float(data["residual"]), float(data["threshold"])
            fit_cells, calibration_cells = int(data["fit_cells"]), int(data["calibration_cells"])
        except (KeyError, TypeError, ValueError):
            return None
        if mean.ndim != 1 or not len(mean) or axes.ndim != 2 or axes.shape[1] != len(mean):
            return None
        if spread.shape != (len(axes),) or not np.all(spread > 0) or residual < 0 or not threshold > 0:
            return None
        if not all(np.all(np.isfinite(a)) for a in (mean, axes, spread)):
            return None
        return cls(mean, axes, spread, residual, threshold, fit_cells, calibration_cells)


def summary(training: dict[str, Any] | None) -> dict[str, Any]:
    """A training summary with its feature reference reduced to what a person reads (method, threshold, cells):
    for the workbook's model sheet and the model card, where thousands of numbers say nothing."""
    out = dict(training or {})
    ref = out.get(SHIFT_KEY)
    if isinstance(ref, dict):
        out[SHIFT_KEY] = {k: ref[k] for k in ("method", "threshold", "fit_cells", "calibration_cells") if k in ref}
    return out
