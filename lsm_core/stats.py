"""Per-batch composition with confidence intervals (numpy/scipy only; no UI)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

PAPER_THRESHOLDS = (0.34, 0.5, 0.7, 0.9)


def wilson_interval(k: int | np.ndarray, n: int | np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion k/n; (0, 0) where n is 0.

    >>> lo, hi = wilson_interval(5, 10)
    >>> round(float(lo), 3), round(float(hi), 3)
    (0.237, 0.763)
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    z = sps.norm.ppf(0.5 + confidence / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / n, 0.0)
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    lo = np.where((n > 0) & (k > 0), np.clip(centre - half, 0, 1), 0.0)  # exact 0 at k = 0
    hi = np.where(n > 0, np.where(k >= n, 1.0, np.clip(centre + half, 0, 1)), 0.0)  # exact 1 at k = n
    return lo, hi


@dataclass
class ClassShare:
    cls: str
    count: int
    fraction: float
    low: float
    high: float


def composition(counts: Mapping[str, int], classes: Sequence[str]) -> list[ClassShare]:
    """Per class: count, fraction of the cells counted and its 95% Wilson interval."""
    n = sum(int(counts.get(c, 0)) for c in classes)
    out = []
    for c in classes:
        k = int(counts.get(c, 0))
        lo, hi = wilson_interval(k, n)
        out.append(ClassShare(c, k, k / n if n else 0.0, float(lo), float(hi)))
    return out
