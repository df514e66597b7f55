"""Each cell's size and shape from its outline: area, equivalent diameter, perimeter, circularity, eccentricity.

An outline is a closed polygon, (K, 2) float (x, y) vertices in the image's pixels (:func:`outlines_of` gives
one per cell found, from the finder's ``CellCrops.outlines``). The measures are the polygon's own (Green's
theorem: area and second moments exactly, no rasterising): area (µm²), the diameter of the circle of that
area (µm), perimeter (µm), circularity 4πA/P² (1 for a circle, lower for ragged or elongated outlines) and
eccentricity of the ellipse of the same second moments (0 for a circle, towards 1 for an elongated cell), as
scikit-image's ``regionprops`` defines them. Sizes are in micrometres at the pixel size the cells were found
at; where that was only the model's default (nobody stated the microscope's), a size is unknown
(:func:`sizes_known`), never a number in a wrong unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lsm_core.imaging.calibration import CalibrationSource

if TYPE_CHECKING:
    from lsm_core.imaging.cells import CellCrops

SHAPE_FIELDS = ("area_um2", "diameter_um", "perimeter_um", "circularity", "eccentricity")
SIZE_FIELDS = SHAPE_FIELDS[:3]  # in micrometres: unknown without a stated pixel size
UNKNOWN_SIZE = (
    "unknown: the pixel size was the model's default, not one stated by you or the file (re-run the batch at your "
    "microscope's pixel size to measure sizes)"
)


@dataclass(frozen=True)
class CellShape:
    area_um2: float
    diameter_um: float
    perimeter_um: float
    circularity: float
    eccentricity: float

    def values(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in SHAPE_FIELDS}


def shape_of(outline: np.ndarray, um_per_px: float) -> CellShape | None:
    """The measures of a closed polygon (K, 2) (x, y) in pixels of ``um_per_px`` micrometres; None for fewer than
    three vertices or no area."""
    p = np.asarray(outline, np.float64)
    if p.ndim != 2 or p.shape[0] < 3 or p.shape[1] != 2 or not um_per_px > 0:
        return None
    x, y = p[:, 0], p[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    signed = cross.sum() / 2
    area = abs(signed)
    if area <= 0:
        return None
    perimeter = float(np.hypot(xn - x, yn - y).sum())
    cx = ((x + xn) * cross).sum() / (6 * signed)
    cy = ((y + yn) * cross).sum() / (6 * signed)
    mxx = ((x * x + x * xn + xn * xn) * cross).sum() / (12 * signed) - cx * cx
    myy = ((y * y + y * yn + yn * yn) * cross).sum() / (12 * signed) - cy * cy
    mxy = ((x * yn + 2 * x * y + 2 * xn * yn + xn * y) * cross).sum() / (24 * signed) - cx * cy
    half_trace, root = (mxx + myy) / 2, math.sqrt(max(((mxx - myy) / 2) ** 2 + mxy * mxy, 0.0))
    major, minor = half_trace + root, max(half_trace - root, 0.0)
    eccentricity = math.sqrt(max(0.0, 1 - minor / major)) if major > 0 else 0.0
    diameter = math.sqrt(4 * area / math.pi)
    return CellShape(
        area_um2=area * um_per_px**2,
        diameter_um=diameter * um_per_px,
        perimeter_um=perimeter * um_per_px,
        circularity=min(1.0, 4 * math.pi * area / perimeter**2) if perimeter > 0 else 0.0,
        eccentricity=eccentricity,
    )


def sizes_known(source: CalibrationSource | str | None) -> bool:
    """Whether sizes in micrometres may be given for cells found at a pixel size from ``source``: not when it
    was only the model's default."""
    return bool(source) and str(getattr(source, "value", source)) != CalibrationSource.MODEL_DEFAULT.value


def outline_list(outline: np.ndarray | None) -> list[float] | None:
    """An outline as it is stored (``cells.outline``): x0, y0, x1, y1, ... to a tenth of a pixel."""
    if outline is None:
        return None
    return [round(float(v), 1) for v in np.asarray(outline, np.float64).ravel()]


def outline_array(stored: list[float] | None) -> np.ndarray | None:
    """A stored outline back as (K, 2) float32 (x, y), or None."""
    if not stored or len(stored) < 6 or len(stored) % 2:
        return None
    return np.asarray(stored, np.float32).reshape(-1, 2)


def outlines_of(found: CellCrops) -> list[np.ndarray | None]:
    """One outline per cell found, at the image's resolution (``CellCrops.outlines``); None for a single-cell crop
    (its box, or a cell traced inside a resized crop, is no outline in the image) and for cells found without
    masks."""
    given = found.outlines
    if len(given) != len(found):
        return [None] * len(found)
    return [None if flag == "single" else o for o, flag in zip(given, found.flags)]


def measured(found: CellCrops, um_per_px: float) -> list[tuple[list[float] | None, CellShape | None]]:
    """Each cell's outline as stored (:func:`outline_list`) and its measures at ``um_per_px``."""
    return [(outline_list(o), shape_of(o, um_per_px) if o is not None else None) for o in outlines_of(found)]


def stored_shape(row: object) -> CellShape | None:
    """The measures a stored cell row (anything with the SHAPE_FIELDS attributes) holds, or None."""
    values = [getattr(row, name, None) for name in SHAPE_FIELDS]
    numbers = [float(v) for v in values if v is not None]
    return CellShape(*numbers) if len(numbers) == len(SHAPE_FIELDS) else None


def size_words(diameter_um: float | None, circularity: float | None) -> str:
    """A cell's size and roundness in a few words, for the review queue."""
    if circularity is None:
        return "size: no outline (a single-cell crop, or classified before outlines were measured)"
    size = f"{diameter_um:.1f} µm across" if diameter_um is not None else "size unknown (no pixel size stated)"
    return f"size: {size} · circularity {circularity:.2f}"


def mask_in_crop(outline: np.ndarray, box: tuple[int, int, int, int], crop_px: int, size: int) -> np.ndarray:
    """A cell's outline (image pixels) as a mask (size, size) bool of the crop cut around its box's centre
    (:func:`lsm_core.imaging.cells.cut_crops`: ``crop_px`` image pixels a side, resized to ``size``): what lies
    inside the cell in that crop, for saliency's "mass inside the cell"."""
    from skimage.draw import polygon2mask

    x, y, w, h = box
    cx, cy = x + w / 2 - 0.5, y + h / 2 - 0.5
    top, left = int(round(cy - crop_px / 2 + 0.5)), int(round(cx - crop_px / 2 + 0.5))
    scale = size / crop_px
    p = np.asarray(outline, np.float64)
    rows = (p[:, 1] - top + 0.5) * scale - 0.5
    cols = (p[:, 0] - left + 0.5) * scale - 0.5
    return polygon2mask((size, size), np.stack([rows, cols], axis=1))
