"""Reporter signal per cell: the other channels of a multi-channel file measured inside each cell's mask.

A stem-cell lab images reporter mice (Evi1-GFP, alpha-catulin-GFP, ...) with a fluorescence channel beside the
DIC channel the network reads. For every cell and every other channel, :func:`measure` gives

- ``mean``: the mean intensity inside the cell's mask minus the background, and
- ``integrated``: that difference summed over the mask (mean x area in pixels),

in the channel's own units (the file's grey values). **Background**: the median of the channel's pixels that
lie outside every cell's mask grown by :data:`BACKGROUND_MARGIN_UM` (so a cell's halo and out-of-focus glow
do not count as background), one value per channel and image; when fewer than :data:`MIN_BACKGROUND_PIXELS`
such pixels remain (an image filled with cells, a single-cell crop), the channel's 5th percentile is used
instead. Values below the background are kept negative (a dim cell on a bright background reads below zero,
as it should).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

BACKGROUND_MARGIN_UM = 2.0
MIN_BACKGROUND_PIXELS = 500


@dataclass(frozen=True)
class ChannelSignal:
    """One channel's signal in each cell of one image (arrays of length N, cell i at index i)."""

    name: str
    mean: np.ndarray
    integrated: np.ndarray
    background: float
    background_method: str  # "median outside the cells" or "5th percentile"


def column_name(channel: str) -> str:
    """A channel's name as it appears in column names: ``ch_<name>_mean``; letters, digits and _ only."""
    cleaned = re.sub(r"[^0-9A-Za-z]+", "_", channel).strip("_")
    return cleaned or "channel"


def background_of(plane: np.ndarray, labels: np.ndarray, pixel_size_um: float) -> tuple[float, str]:
    """The background level of ``plane`` (see the module docstring) and how it was found."""
    grow = max(1, int(round(BACKGROUND_MARGIN_UM / max(pixel_size_um, 1e-6))))
    cells = labels > 0
    if cells.any():
        cells = ndi.binary_dilation(cells, iterations=grow)
    outside = plane[~cells]
    if outside.size >= MIN_BACKGROUND_PIXELS:
        return float(np.median(outside)), "median outside the cells"
    return float(np.percentile(plane, 5)), "5th percentile"


def measure(
    labels: np.ndarray, n_cells: int, channels: dict[str, np.ndarray], pixel_size_um: float
) -> list[ChannelSignal]:
    """The signal of each channel in cells 1..``n_cells`` of ``labels`` (an (H, W) label image); ``channels``
    maps names to (H, W) planes of the same image."""
    out = []
    index = np.arange(1, n_cells + 1)
    area = ndi.sum(np.ones_like(labels, dtype=np.float64), labels, index) if n_cells else np.zeros(0)
    for name, plane in channels.items():
        plane = np.asarray(plane, dtype=np.float64)
        if plane.shape != labels.shape:
            raise ValueError(f"channel {name!r} is {plane.shape}, the cells' image {labels.shape}")
        background, how = background_of(plane, labels, pixel_size_um)
        if n_cells:
            total = np.asarray(ndi.sum(plane, labels, index), dtype=np.float64)
            integrated = total - background * np.asarray(area, dtype=np.float64)
            mean = np.divide(integrated, area, out=np.zeros(n_cells), where=np.asarray(area) > 0)
        else:
            integrated = mean = np.zeros(0)
        out.append(ChannelSignal(name, mean.astype(np.float64), integrated.astype(np.float64), background, how))
    return out


def otsu_threshold(values: np.ndarray) -> float | None:
    """Otsu's threshold of a batch's per-cell means (the default reporter-positive threshold), or None when
    there are too few distinct values to split."""
    from skimage.filters import threshold_otsu

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2 or np.ptp(values) == 0:
        return None
    return float(threshold_otsu(values))
