"""Compiled per-pixel loops of cell finding (:mod:`lsm_core.imaging.cells`), by numba.

Splitting touching cells visits each pixel of the cells' mask once per step: to give it to a seed, to find
where two pieces touch, to measure each piece. As whole-array numpy passes these took some thirty passes over
a field's mask, more than the rest of the finding together; as loops they are one pass each.

Each function is compiled on its first call and cached on disk (numba's ``cache=True``: in ``NUMBA_CACHE_DIR``
when set, beside this file, or in the user's cache directory), so a fresh process loads them in a quarter of a
second instead of compiling them in one or two. Where none of those can be written (a read-only install run by
a user without a home), each process compiles them instead of failing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numba import njit


def can_cache() -> bool:
    """Whether numba can write its cache somewhere: ``NUMBA_CACHE_DIR``, this package's ``__pycache__``, or the
    user's ``~/.cache/numba`` (the places it tries, in that order), or the nearest existing folder above one."""
    places = [Path(os.environ["NUMBA_CACHE_DIR"])] if os.environ.get("NUMBA_CACHE_DIR") else []
    places += [Path(__file__).parent / "__pycache__", Path.home() / ".cache" / "numba"]
    for place in places:
        while not place.exists() and place != place.parent:
            place = place.parent
        if os.access(place, os.W_OK):
            return True
    return False


CACHE = can_cache()

STATS = 12
"""Columns of :func:`label_stats`: area, sum of rows, sum of columns, first and last row, first and last column,
lowest and highest row + column, lowest and highest row - column, highest distance."""
AREA, SUM_R, SUM_C, R0, R1, C0, C1, S0, S1, D0, D1, TOP = range(STATS)


@njit(cache=CACHE, nogil=True)
def label_stats(labels: np.ndarray, n: int, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For labels 1..n of a label image, the columns of ``STATS`` (float64; row 0, the background, and an empty
    label's row hold area 0 and extremes at +-inf) and the flat index of each label's first pixel in raster
    order (-1: none)."""
    h, w = labels.shape
    out = np.zeros((n + 1, STATS))
    for k in range(n + 1):
        out[k, R0] = out[k, C0] = out[k, S0] = out[k, D0] = np.inf
        out[k, R1] = out[k, C1] = out[k, S1] = out[k, D1] = out[k, TOP] = -np.inf
    first = np.full(n + 1, -1, np.int64)
    for r in range(h):
        for c in range(w):
            k = labels[r, c]
            if k == 0:  # the background: left empty
                continue
            if out[k, AREA] == 0:
                first[k] = r * w + c
            out[k, AREA] += 1
            out[k, SUM_R] += r
            out[k, SUM_C] += c
            out[k, R0] = min(out[k, R0], r)
            out[k, R1] = max(out[k, R1], r)
            out[k, C0] = min(out[k, C0], c)
            out[k, C1] = max(out[k, C1], c)
            out[k, S0] = min(out[k, S0], r + c)
            out[k, S1] = max(out[k, S1], r + c)
            out[k, D0] = min(out[k, D0], r - c)
            out[k, D1] = max(out[k, D1], r - c)
            out[k, TOP] = max(out[k, TOP], distance[r, c])
    return out, first


@njit(cache=CACHE, nogil=True)
def nearest_seeds(
    regions: np.ndarray,
    first: np.ndarray,
    count: np.ndarray,
    seeds: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
) -> np.ndarray:
    """Each pixel's seed (label; 0: background, or a region without seeds): of its region's seeds
    (``seeds[first[r]:first[r] + count[r]]``, in order) the one with the least ``a y + b x + c`` (float32, as
    written: the power distance less the pixel's own squared length), the first of equals."""
    h, w = regions.shape
    out = np.zeros((h, w), np.int32)
    for r in range(h):
        y = np.float32(r)
        for col in range(w):
            reg = regions[r, col]
            n = count[reg]
            if reg == 0 or n == 0:
                continue
            start = first[reg]
            pick = seeds[start]
            if n > 1:
                x = np.float32(col)
                best = a[pick] * y + b[pick] * x + c[pick]
                for k in range(start + 1, start + n):
                    s = seeds[k]
                    power = a[s] * y + b[s] * x + c[s]
                    if power < best:
                        best = power
                        pick = s
            out[r, col] = pick
    return out


@njit(cache=CACHE, nogil=True)
def contacts(pieces: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where two pieces touch (4-neighbours, both labelled, unequal): the lower and higher label and the lower
    distance of the two pixels, for each such pair of pixels (right neighbours, then those below, each in raster
    order)."""
    h, w = pieces.shape
    lo = np.empty(2 * h * w, np.int64)
    hi = np.empty(2 * h * w, np.int64)
    contact = np.empty(2 * h * w, distance.dtype)
    n = 0
    for dr, dc in ((0, 1), (1, 0)):
        for r in range(h - dr):
            for c in range(w - dc):
                p, q = pieces[r, c], pieces[r + dr, c + dc]
                if p > 0 and q > 0 and p != q:
                    lo[n], hi[n] = min(p, q), max(p, q)
                    contact[n] = min(distance[r, c], distance[r + dr, c + dc])
                    n += 1
    return lo[:n], hi[:n], contact[:n]
