"""Find single cells in a DIC field of view and cut cell-centred square crops.

DIC shows a cell as relief (one flank bright, one dark) on a background of about the same grey level, so
cells are found by local contrast, not by brightness:

1. the image is binned to a working scale of about 0.8 micrometres per pixel (the smallest cell, 4 um, is
   5 pixels across there; finer work costs 4x and finds nothing more), or about 1 um (up to 1.33) where the
   cells turn out large (12 um Jurkat cells: the same recall at a half to a quarter of the work);
2. the illumination is flattened: a smooth background estimated on a coarse grid is subtracted;
3. the absolute relief, smoothed, is thresholded at a number of robust noise deviations above its median;
4. holes are filled, specks opened away, regions labelled;
5. touching cells are split apart, each pixel of a region to the nearest of its seeds (the centres of its
   distance transform) by power distance, where round cells touch; pieces smaller than ``min_diameter_um``
   are debris, larger than ``max_diameter_um`` or less solid than ``min_solidity`` clumps: both are dropped
   and counted;
6. each cell's crop is a square of ``crop_um`` micrometres centred on the cell, cut from the original
   image and resized to the model's input; a cell whose box touches the image edge is flagged ``edge``.

An image no larger than about one crop is taken as a single-cell crop (flag ``single``) and passes through
whole, resized to fill the input; or, for a model trained to see each cell's size (``keep_size``), is cut as one
``crop_um`` square around its centre at the image's calibration, as a field's cells are.

All thresholds are in micrometres and scale with ``pixel_size_um``, the microscope's calibration.
Results do not depend on the image's grey scale (8-bit, 12-bit in 16, float).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage import measure

from lsm_core.errors import LsmError
from lsm_core.imaging import cell_loops as loops
from lsm_core.imaging.calibration import Calibration, CalibrationSource, resolve

# OpenCV's loops on one thread: the preparation runs one process per core already, and a pool's threads woken on
# a busy machine cost more than the few hundred microseconds each call takes (as BLAS's do: _products)
cv2.setNumThreads(1)

WORKING_PIXEL_UM = 0.8  # a cell of 4 um, the smallest, is 5 pixels across there
MAX_REJECTED = 500  # boxes of regions not kept recorded per image (every one is counted)
DEFAULT_PIXEL_SIZE_UM = 0.2  # the calibration the models are trained at unless their manifest says otherwise
MODALITIES = {
    "auto": "DIC or brightfield: a cell's relief of either sign (phase contrast is not detected: choose it)",
    "dic": "DIC: a cell's bright and dark flanks, joined into one outline",
    "brightfield": "brightfield: a cell's ring and what it encloses (the same detector as DIC)",
    "phase": "phase contrast: a cell's dark body, without its bright halo",
}
"""The imaging modalities cell finding knows (``FindParams.modality``), with what it looks for in each."""


@dataclass(frozen=True)
class FindParams:
    """Settings of cell finding; lengths in micrometres."""

    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
    crop_um: float = 64 * DEFAULT_PIXEL_SIZE_UM  # the paper's 64-pixel crop at the default calibration
    output_size: int = 64
    min_diameter_um: float = 4.0
    max_diameter_um: float = 18.0  # a single cell measured with its halo; touching cells are split first
    min_solidity: float = 0.85
    threshold_sigmas: float = 5.0
    single_crop_factor: float = 1.5  # images up to this many crop sides pass through as one cell
    # where pixel_size_um came from (lsm_core.imaging.calibration), said when no cell is found (no_cells_note)
    pixel_size_source: CalibrationSource = CalibrationSource.MODEL_DEFAULT
    modality: str = "auto"  # dic, brightfield, phase, or auto (see MODALITIES)
    # a single-cell crop keeps its cell's size: cut as a ``crop_um`` square around its centre at the image's
    # calibration (padded with its background level), as a field's cells are, instead of resized whole to fill
    # the input (which makes every cell the same size to the network); a model records it (keeps_size)
    keep_size: bool = False

    def __post_init__(self) -> None:
        if not (self.pixel_size_um > 0 and np.isfinite(self.pixel_size_um)):
            raise LsmError(f"pixel size must be a positive number of micrometres per pixel, not {self.pixel_size_um}")
        if self.output_size < 8:
            raise LsmError(f"crop output size {self.output_size} is too small")
        if self.modality not in MODALITIES:
            raise LsmError(f"unknown imaging modality {self.modality!r}; choose {', '.join(MODALITIES)}")

    @classmethod
    def for_model(cls, model, calibration: Calibration | None = None, modality: str | None = None) -> FindParams:
        """Settings for a model (a manifest or a Model row): its crop, in micrometres, sampled at its input size,
        at ``calibration`` (the microscope's, :func:`lsm_core.imaging.calibration.resolve`; None: the pixel size
        the model was trained at); cells found as ``modality`` shows them (None: auto)."""
        return cls(
            crop_um=model.crop_um,
            output_size=model.input_size,
            modality=modality or "auto",
            keep_size=keeps_size(model),
        ).at(calibration or resolve(model_default=model.pixel_size_um))

    @property
    def calibration(self) -> Calibration:
        return Calibration(self.pixel_size_um, self.pixel_size_source)

    def at(self, calibration: Calibration) -> FindParams:
        """These settings at another calibration."""
        return replace(self, pixel_size_um=calibration.um_per_px, pixel_size_source=calibration.source)

    @property
    def crop_px(self) -> int:
        return max(4, int(round(self.crop_um / self.pixel_size_um)))


@dataclass
class CellCrops:
    """Cells of one image.

    crops : (N, S, S) float32, the image's grey values, S = ``FindParams.output_size``
    boxes : (N, 4) int32, each cell's bounding box (x, y, w, h) in the image's pixels
    centres : (N, 2) float32, each cell's centre (x, y) in the image's pixels
    flags : N strings, comma-separated quality flags (``edge``, ``single``) or empty
    dropped : regions not kept, by reason (``debris``, ``clump``)
    rejected : (M, 4) int32, the boxes (x, y, w, h) of the first MAX_REJECTED regions not kept, in the image's
        pixels, with ``rejected_why`` (M strings: ``debris`` or ``clump``); ``dropped`` counts them all
    outlines : N closed polygons, one per cell in the order of ``boxes``: (K, 2) float32 vertices (x, y) in the
        image's pixels at its full resolution (the last vertex repeats the first). Each is traced when first
        asked for (:class:`_Masks`): the cell's mask at the working scale (0.8 um per pixel, or up to 1.33) refined
        at full resolution inside its box. A single-cell crop's is the cell :func:`cell_mask` traces in it, or
        the crop's border (its box) when none is.
    labels : (H, W) int32, cell i+1's mask in the image's pixels (0: no cell), or None: the outlines filled
        (``skimage.draw.polygon``), drawn when first asked for (only the reporter channels need them: a
        2048 x 2048 field's labels are 16 MB)
    """

    crops: np.ndarray
    boxes: np.ndarray
    centres: np.ndarray
    flags: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    masks: _Masks | None = field(default=None, repr=False)
    rejected: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32))
    rejected_why: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.flags)

    @property
    def outlines(self) -> list[np.ndarray]:
        if self.masks is None:
            return []
        return self.masks.outlines()

    @property
    def labels(self) -> np.ndarray | None:
        return None if self.masks is None else self.masks.full()

    @labels.setter
    def labels(self, value: np.ndarray | None) -> None:
        self.masks = None if value is None else _Masks.given(np.asarray(value, np.int32))

    @classmethod
    def empty(
        cls, size: int, dropped: dict[str, int] | None = None, rejected: list[tuple[tuple[int, ...], str]] | None = None
    ) -> CellCrops:
        out = cls(np.zeros((0, size, size), np.float32), np.zeros((0, 4), np.int32), np.zeros((0, 2), np.float32), [])
        out.dropped = dropped or {}
        out.set_rejected(rejected or [])
        return out

    def set_rejected(self, rejected: list[tuple[tuple[int, ...], str]]) -> None:
        self.rejected = np.array([box for box, _ in rejected], np.int32).reshape(-1, 4)
        self.rejected_why = [why for _, why in rejected]

    def dropped_record(self) -> dict[str, object]:
        """What was not kept, as stored with the image (``images.dropped``): the counts by reason and the
        boxes of the first MAX_REJECTED, each ``[x, y, w, h, why]``."""
        return {
            "debris": int(self.dropped.get("debris", 0)),
            "clump": int(self.dropped.get("clump", 0)),
            "boxes": [[*(int(v) for v in box), why] for box, why in zip(self.rejected, self.rejected_why, strict=True)],
        }


@dataclass
class _Masks:
    """Each cell's outline at the image's full resolution, traced when first asked for, and the label image
    drawn from them.

    A cell's mask at the working scale is refined inside its box (grown by 1.5 um) at full resolution: the
    relief energy there (the image less the working scale's background, absolute, smoothed by 0.3 um) above
    a threshold (the median plus ``threshold_sigmas`` robust deviations of the energy in the box outside every
    cell), within the working mask grown by one working pixel and outside every other cell's working mask;
    closed by 1.2 um, holes filled, the largest piece. When that is less than half or more than twice the
    working mask (faint relief, or the threshold in the noise), the working mask scaled up is the cell. The
    outline is its contour (``skimage.measure.find_contours``) simplified to within half a pixel
    (``approximate_polygon``): tens of vertices."""

    image: np.ndarray | None  # (H, W) float32, the image (None: labels given, no outlines to trace)
    small: np.ndarray  # (h, w) int32 cell labels at the working scale
    factor: int  # image pixels per working pixel, each way
    background: np.ndarray | None  # (h, w) float32 background level at the working scale
    um_per_px: float
    threshold_sigmas: float
    shape: tuple[int, int]  # the image's (H, W)
    single: bool = False
    _outlines: list[np.ndarray] | None = field(default=None, repr=False)
    _full: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def given(cls, labels: np.ndarray) -> _Masks:
        out = cls(None, labels, 1, None, 1.0, 5.0, labels.shape)
        out._full = labels
        return out

    def outlines(self) -> list[np.ndarray]:
        if self._outlines is None:
            if self.image is None:
                self._outlines = [_trace(self.small == i) for i in range(1, int(self.small.max()) + 1)]
            elif self.single:
                self._outlines = [self._single()]
            else:
                self._outlines = [self._refine(i) for i in range(1, int(self.small.max()) + 1)]
        return self._outlines

    def full(self) -> np.ndarray:
        """The label image drawn from the outlines: the pixels scikit-image's ``draw.polygon`` gives each (a
        compiled loop, :func:`cell_loops.fill_polygon`: a tenth of its time), later cells over earlier ones."""
        if self._full is None:
            self._full = np.zeros(self.shape, np.int32)
            for i, outline in enumerate(self.outlines(), start=1):
                rows, cols = (np.ascontiguousarray(outline[:, k], np.float64) for k in (1, 0))
                loops.fill_polygon(self._full, rows, cols, i)
        return self._full

    def _single(self) -> np.ndarray:
        h, w = self.shape
        assert self.image is not None
        traced = cell_mask(self.image, self.um_per_px) if self.image.shape[0] == self.image.shape[1] else None
        if traced is not None:
            return _trace(traced)
        return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5], [-0.5, -0.5]], np.float32)

    def _refine(self, label: int) -> np.ndarray:
        assert self.image is not None and self.background is not None
        f, (H, W) = self.factor, self.shape
        grow = max(1, int(np.ceil(1.5 / (self.um_per_px * f))))  # working pixels
        rows, cols = self._pixels(label)
        r0, r1 = max(0, rows.min() - grow), min(self.small.shape[0], rows.max() + 1 + grow)
        c0, c1 = max(0, cols.min() - grow), min(self.small.shape[1], cols.max() + 1 + grow)
        labels = self.small[r0:r1, c0:c1]
        own = labels == label
        working = _up(own, f)
        if f == 1 and not own.sum() >= 16:
            return _trace(working, (r0, c0))
        y0, x0 = r0 * f, c0 * f
        patch = self.image[y0 : min(H, r1 * f), x0 : min(W, c1 * f)]
        ph, pw = patch.shape
        working = working[:ph, :pw]
        allowed = _up(_grown(own) & ((labels == 0) | own), f)[:ph, :pw]
        anyone = _up(_grown(labels > 0), f)[:ph, :pw]
        level = _up(self.background[r0:r1, c0:c1], f)[:ph, :pw]
        energy = _smooth(np.abs(patch - level), max(0.5, 0.3 / self.um_per_px))
        outside = energy[~anyone]
        cell = working
        if outside.size >= 32:
            level_out = float(np.median(outside))
            # the robust spread about that median when it is the sample's own (a box holds fewer than 32,768)
            spread = _robust_sigma(outside, level_out if _sample(outside).size == outside.size else None)
            mask = (energy > level_out + self.threshold_sigmas * spread) & allowed
            mask = _close(mask, 1.2 / self.um_per_px) & allowed
            mask = _fill_holes(mask)
            pieces, n = _label(mask, 4)
            if n:
                sizes = np.bincount(pieces.ravel())[1:]
                mask = pieces == 1 + int(np.argmax(sizes))
                if 0.5 * working.sum() <= mask.sum() <= 2 * working.sum():
                    cell = mask
        return _trace(cell, (y0, x0))

    # each cell's box at the working scale: first row, row after the last, first column, column after the last
    boxes: np.ndarray | None = field(default=None, repr=False)

    def _pixels(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        """A cell's pixel rows and columns at the working scale (searched in its box when the box is known)."""
        if self.boxes is None:
            rows, cols = np.nonzero(self.small == label)
            return rows, cols
        r0, r1, c0, c1 = (int(v) for v in self.boxes[label - 1])
        rows, cols = np.nonzero(self.small[r0:r1, c0:c1] == label)
        return rows + r0, cols + c0


def _grown(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_dilation(mask, np.ones((3, 3)))``, by OpenCV."""
    return cv2.dilate(_u8(mask), np.ones((3, 3), np.uint8)).view(bool)


def _up(mask: np.ndarray, factor: int) -> np.ndarray:
    return mask if factor == 1 else np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker: the vertices of a polyline that keep it within ``tolerance`` (the algorithm of scikit-image's
    ``approximate_polygon``, whose Python loop cost 4 ms a cell), in a compiled loop
    (:func:`cell_loops.simplified`)."""
    points = np.ascontiguousarray(points, np.float64)
    return points[loops.simplified(points, float(tolerance))]


def _trace(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The closed outline (K, 2) float32 (x, y) of a mask's largest piece, simplified to within half a pixel,
    shifted by ``origin`` (row, col)."""
    # scikit-image's find_contours(padded, 0.5), its longest contour, in one compiled pass (its assembly of the
    # segments in Python was a third of the tracing)
    contour = loops.longest_contour(np.pad(np.asarray(mask, bool).view(np.uint8), 1))
    if not len(contour):
        return np.zeros((0, 2), np.float32)
    contour = _simplify(contour, 0.5)
    if len(contour) < 4 or not np.array_equal(contour[0], contour[-1]):
        contour = np.vstack([contour, contour[:1]])
    return np.stack([contour[:, 1] - 1 + origin[1], contour[:, 0] - 1 + origin[0]], axis=1).astype(np.float32)


def no_cells_note(dropped: dict[str, int], params: FindParams) -> str:
    """Why an image gave no cell, in words a biologist can act on: what was dropped, and the pixel size used.

    >>> print(no_cells_note({"clump": 2}, FindParams()))  # doctest: +NORMALIZE_WHITESPACE
    no cells found: 2 objects larger than 18 µm were dropped as clumps. Is the pixel size right?
    It is 0.2 µm/px, the model's default.
    """
    parts = []
    for reason, size in (
        ("clump", f"larger than {params.max_diameter_um:g} µm"),
        ("debris", f"smaller than {params.min_diameter_um:g} µm"),
    ):
        n = dropped.get(reason, 0)
        if n:
            parts.append(
                f"{n} object{'s' if n != 1 else ''} {size} {'were' if n != 1 else 'was'} dropped as "
                + ({"clump": "clumps" if n != 1 else "a clump"}.get(reason, reason))
            )
    found = "; ".join(parts) if parts else "nothing stood out from the background"
    return (
        f"no cells found: {found}. Is the pixel size right? It is {params.pixel_size_um:g} µm/px, "
        f"{params.pixel_size_source.words}."
    )


TINY_CELL_UM = 5.0  # a kept cell whose box is narrower than this is tiny (a blood stem cell is about 8 um across)


def calibration_doubt(kept: int, clumps: int, edge_or_tiny: int, params: FindParams | None = None) -> str | None:
    """Why the cells found suggest a wrong pixel size, or None: more objects dropped as clumps than cells kept
    (real cells look too large), or most cells kept (more than half) cut by the image's edge or tiny (what is
    left is not a cell, or cells look too small). ``kept``: cells kept; ``clumps``: objects dropped as clumps;
    ``edge_or_tiny``: kept cells flagged ``edge`` or smaller than :data:`TINY_CELL_UM`. An image without
    cells says why by :func:`no_cells_note`. On the real Jurkat montage (about 0.5 µm/px): 4 of 900 cells at
    0.5, 692 of 869 at 0.2, 11 of 21 at 0.065; 897 clumps against 28 cells at 1.5.

    >>> print(calibration_doubt(1, 3, 1))  # doctest: +NORMALIZE_WHITESPACE
    3 objects were dropped as clumps (larger than 18 µm) and 1 cell was kept: real cells may look too large
    at this pixel size. Is the pixel size right?
    >>> print(calibration_doubt(869, 0, 700))  # doctest: +NORMALIZE_WHITESPACE
    700 of the 869 cells kept are cut by the image's edge or smaller than 5 µm: what was counted may not be
    cells, or cells look too small at this pixel size. Is the pixel size right?
    """
    params = params or FindParams()
    if kept <= 0:
        return None
    if clumps > kept:
        cells = f"{kept} cell{'s' if kept != 1 else ''} {'were' if kept != 1 else 'was'} kept"
        return (
            f"{clumps} objects were dropped as clumps (larger than {params.max_diameter_um:g} µm) and {cells}: "
            "real cells may look too large at this pixel size. Is the pixel size right?"
        )
    if 2 * edge_or_tiny > kept:
        which = "the only cell kept is" if kept == 1 else f"{edge_or_tiny} of the {kept} cells kept are"
        return (
            f"{which} cut by the image's edge or smaller than {TINY_CELL_UM:g} µm: what was counted may not be "
            "cells, or cells look too small at this pixel size. Is the pixel size right?"
        )
    return None


def _resize(patch: np.ndarray, size: int) -> np.ndarray:
    if patch.shape == (size, size):
        return patch.astype(np.float32, copy=False)
    im = Image.fromarray(np.ascontiguousarray(patch, dtype=np.float32), mode="F")
    method = Image.Resampling.BOX if patch.shape[0] > size else Image.Resampling.BILINEAR
    return np.asarray(im.resize((size, size), method), dtype=np.float32)


def _square(image: np.ndarray) -> np.ndarray:
    """The image padded to a square with its median (its background level), centred."""
    h, w = image.shape
    if h == w:
        return image
    side = max(h, w)
    square = np.full((side, side), float(np.median(image)), np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    square[y0 : y0 + h, x0 : x0 + w] = image
    return square


def keeps_size(model) -> bool:
    """Whether a model (a manifest or a Model row) was trained on single-cell crops that keep the cell's size
    (its recipe's ``keep_size``, :class:`lsm_core.ml.train.TrainConfig`); models trained before it did not."""
    recipe = (getattr(model, "training", None) or {}).get("recipe") or {}
    return bool(recipe.get("keep_size", False)) if isinstance(recipe, dict) else False


def _bin(image: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor`` x ``factor`` block (float32; a partial block at the bottom or right edge is
    left out), by OpenCV's area resize (exact block means at an integer factor: a quarter of numpy's time)."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    if not h or not w:
        return np.zeros((h, w), np.float32)
    block = np.ascontiguousarray(image[: h * factor, : w * factor], dtype=np.float32)
    return np.asarray(cv2.resize(block, (w, h), interpolation=cv2.INTER_AREA), np.float32)


def _interp_matrix(n: int, g: int, tile: int) -> np.ndarray:
    """(n, g) weights that interpolate g tile centres linearly to n pixels, extrapolating at both ends."""
    m = np.zeros((n, g), np.float32)
    if g == 1:
        m[:, 0] = 1.0
        return m
    pos = (np.arange(n) + 0.5) / tile - 0.5
    j0 = np.clip(np.floor(pos).astype(int), 0, g - 2)
    t = (pos - j0).astype(np.float32)
    m[np.arange(n), j0] = 1.0 - t
    m[np.arange(n), j0 + 1] = t
    return m


def flatten_background(image: np.ndarray, scale_px: float) -> np.ndarray:
    """Deviation from a smooth background: ``image - background``.

    The background is a median over tiles of about ``scale_px`` pixels (robust to the cells in them),
    interpolated (and at the borders extrapolated) linearly between tile centres. (H, W) float32 in and out.
    """
    h, w = image.shape
    tile = int(max(8, min(scale_px, h, w)))
    gh, gw = -(-h // tile), -(-w // tile)
    padded = np.pad(image, ((0, gh * tile - h), (0, gw * tile - w)), mode="reflect")
    # each tile's median from every other pixel each way (a quarter of the work; the background is smooth)
    tiles = padded.reshape(gh, tile, gw, tile)[:, ::2, :, ::2]
    grid = np.median(tiles.transpose(0, 2, 1, 3).reshape(gh, gw, -1), axis=2)
    rows = _interp_matrix(h, gh, tile) @ grid.astype(np.float32)
    background = _products(rows, _interp_matrix(w, gw, tile).T)
    return np.subtract(image, background, out=background, dtype=np.float32)


BLAS_ONE_THREAD = 4 * 65536  # OpenBLAS multiplies on one thread up to this many m * n * k


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (float32) in blocks of rows small enough for OpenBLAS to keep to one thread: a product across
    threads costs more than it saves here, and on a busy machine its threads, once woken, made the finding
    several times slower (a 0.65 um/px field's background: 2 ms on one thread, 14 to 30 ms on two)."""
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    step = max(1, BLAS_ONE_THREAD // max(1, a.shape[1] * b.shape[1]))
    for r in range(0, a.shape[0], step):
        np.matmul(a[r : r + step], b, out=out[r : r + step])
    return out


def _disk(radius: float) -> np.ndarray:
    """The disk of a whole radius (at least 1) as a bool footprint (read-only)."""
    return _whole_disk(max(1, int(round(radius))))


@lru_cache(maxsize=64)
def _whole_disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy**2 + xx**2) <= r * r + r
    disk.setflags(write=False)
    return disk


def _kernel(radius: float) -> np.ndarray:
    return _disk(radius).view(np.uint8)


def _u8(mask: np.ndarray) -> np.ndarray:
    """A bool mask as OpenCV's 0/1 bytes (a view where it can)."""
    return np.ascontiguousarray(mask, dtype=bool).view(np.uint8)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """``ndi.binary_dilation(mask, _disk(radius))`` (outside the image: background), by OpenCV."""
    return cv2.dilate(_u8(mask), _kernel(radius)).view(bool)


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """``ndi.binary_erosion(mask, _disk(radius), border_value=0)``, by OpenCV."""
    return cv2.erode(_u8(mask), _kernel(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """``ndi.binary_closing(mask, _disk(radius), border_value=0)``."""
    return _erode(_dilate(mask, radius), radius)


def _open(mask: np.ndarray, radius: float) -> np.ndarray:
    """``ndi.binary_opening(mask, _disk(radius))``."""
    return _dilate(_erode(mask, radius), radius)


def _max_disk(values: np.ndarray, radius: float) -> np.ndarray:
    """``ndi.maximum_filter(values, footprint=_disk(radius))`` (float32 or int16), by OpenCV's dilation: its
    default border is left out of the maximum, and the mirrored values scipy reads there lie inside the
    (symmetric) window already."""
    return cv2.dilate(np.ascontiguousarray(values), _kernel(radius))


def _label(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """``ndi.label`` of a bool mask (8: the 3 x 3 square, 4: the cross) and the number of regions, by OpenCV's
    Wu labelling: the same numbers (each region's by the raster order of its first pixel), in less than half
    the time."""
    n, labels = cv2.connectedComponentsWithAlgorithm(_u8(mask), connectivity, cv2.CV_32S, cv2.CCL_WU)
    return labels, n - 1


def _sample(x: np.ndarray) -> np.ndarray:
    """At most about 16,000 of ``x``'s values, evenly spaced: enough for a median to 1 % of the spread (a
    2048 x 2048 field at the working scale has 170,000 pixels, and each of their medians cost 1.5 ms)."""
    return x.ravel()[:: max(1, x.size // 16_384)]


def _robust_sigma(x: np.ndarray, median: float | None = None) -> float:
    """1.4826 median absolute deviations of (a sample of) ``x`` from its median (``median`` when known)."""
    sample = _sample(x)
    med = np.median(sample) if median is None else median
    return float(1.4826 * np.median(np.abs(sample - med)))


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """``ndi.gaussian_filter(x, sigma)`` (float32, to float32 rounding): scipy's kernel (to four sigmas) and
    border (mirrored), applied by OpenCV's separable filter, a quarter of scipy's time."""
    taps = _gauss_taps(sigma)
    smooth = cv2.sepFilter2D(np.asarray(x, np.float32), cv2.CV_32F, taps, taps, borderType=cv2.BORDER_REFLECT)
    return np.asarray(smooth, np.float32)


@lru_cache(maxsize=16)
def _gauss_taps(sigma: float) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel: weights exp(-x^2 / 2 sigma^2) out to int(4 sigma + 0.5), summing to 1."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def background_level(image: np.ndarray) -> float:
    """The image's background grey level: the median of every 8th pixel each way (a field is mostly
    background; the median of all 4 million pixels of a 2048 x 2048 field cost a third of finding its cells,
    and 65,000 give it to a fraction of the noise)."""
    return float(np.median(image[::8, ::8]))


def cut_crops(image: np.ndarray, centres: np.ndarray, params: FindParams) -> np.ndarray:
    """Square crops of ``params.crop_um`` around each centre (x, y), resized to ``params.output_size``.

    image : (H, W) float32; centres : (N, 2); returns (N, S, S) float32. Parts outside the image are filled
    with the image's median (its background level).

    Every crop is ``crop_px`` pixels a side at whole-pixel offsets, so one resize serves them all: PIL's
    (box filter going smaller, bilinear going larger) as each output sample's few taps, read from PIL itself
    (:func:`_resize_taps`), applied along rows then columns in one compiled loop over the crops
    (:func:`cell_loops.resized_crops`: what PIL gives to float32 rounding, a tenth of a PIL resize per crop)."""
    h, w = image.shape
    crop_px, size = params.crop_px, params.output_size
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if not len(centres):
        return np.zeros((0, size, size), np.float32)
    half = crop_px / 2
    tops = np.round(centres[:, 1] - half + 0.5).astype(np.int64)
    lefts = np.round(centres[:, 0] - half + 0.5).astype(np.int64)
    inside = (tops >= 0).all() and (lefts >= 0).all() and (tops + crop_px <= h).all() and (lefts + crop_px <= w).all()
    fill = 0.0 if inside else background_level(image)
    idx, wts = _resize_taps(crop_px, size)
    return loops.resized_crops(np.ascontiguousarray(image, np.float32), tops, lefts, crop_px, idx, wts, fill)


@lru_cache(maxsize=16)
def _resize_taps(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's resize of n samples to ``size`` (:func:`_resize`'s filters) as each output sample's taps: (size, K)
    input indices and (size, K) float32 weights (K: the most any output sample has; unused taps weigh 0)."""
    eye = Image.fromarray(np.eye(n, dtype=np.float32), mode="F")
    method = Image.Resampling.BOX if n > size else Image.Resampling.BILINEAR
    weights = np.asarray(eye.resize((size, n), method), dtype=np.float32).T  # (size, n): one row per output
    k = max(1, int((weights != 0).sum(axis=1).max()))
    idx, wts = np.zeros((size, k), np.int64), np.zeros((size, k), np.float32)
    for i, row in enumerate(weights):
        taps = np.flatnonzero(row)
        idx[i, : len(taps)], wts[i, : len(taps)] = taps, row[taps]
    idx.setflags(write=False)
    wts.setflags(write=False)
    return idx, wts


def find_cells(image: np.ndarray, params: FindParams | None = None) -> CellCrops:
    """Find the single cells of a field of view and cut one centred crop each.

    Parameters
    ----------
    image : ndarray, shape (H, W), float32
        Grey image in the representation of :mod:`lsm_core.imaging.planes` (any affine grey scale works).
    params : FindParams

    Returns
    -------
    CellCrops

    Raises
    ------
    LsmError
        When the image is blank (every pixel the same value).

    Examples
    --------
    >>> from lsm_core.imaging.synthetic import make_field
    >>> field, truth = make_field("lsm", seed=0, shape=(512, 512), n_cells=4, n_debris=0)
    >>> len(find_cells(field))
    4
    """
    params = params or FindParams()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise LsmError(f"expected a 2-D grey image, got shape {image.shape}")
    h, w = image.shape
    crop_px = params.crop_px
    single = max(h, w) <= params.single_crop_factor * max(crop_px, params.output_size)
    factor = max(1, int(round(WORKING_PIXEL_UM / params.pixel_size_um)))
    # where cells are large, the working pixel nearest LARGE_WORKING_UM will do: tried first where it has at most
    # two thirds as many pixels a side as the usual one (at 0.33 to 0.38 and 0.55 to 0.66 um/px); a field that
    # turns out to have small cells costs a quarter to a half more
    coarse = max(1, int(round(LARGE_WORKING_UM / params.pixel_size_um)))
    if 2 * coarse < 3 * factor:
        coarse = factor
    small = image if single else _bin(image, coarse)
    if small.size == 0 or not small.max() > small.min():  # the binned field says "not blank" at a 16th the cost
        _refuse_blank(image)
        if small.size == 0:  # a strip thinner than one working pixel: no cell fits
            return CellCrops.empty(params.output_size)
    if single:
        centre = np.array([[(w - 1) / 2, (h - 1) / 2]], np.float32)
        if params.keep_size:  # the crop's micrometres around the centre: the cell keeps its size
            crop = cut_crops(image, centre, params)
        else:  # the whole image, padded to a square with its background level, resized to fill the input
            crop = _resize(_square(image), params.output_size)[None]
        return CellCrops(
            crop,
            np.array([[0, 0, w, h]], np.int32),
            centre,
            ["single"],
            masks=_Masks(image, np.ones((1, 1), np.int32), 1, None, params.pixel_size_um, 5.0, (h, w), single=True),
        )

    if coarse != factor:
        found = _detect(small, params, coarse)
        if found is not None and found.typical_um() >= LARGE_CELL_UM:
            return _field_cells(image, small, coarse, found, params)
        small = _bin(image, factor)
    found = _detect(small, params, factor)
    if found is None:
        return CellCrops.empty(params.output_size)
    return _field_cells(image, small, factor, found, params)


LARGE_WORKING_UM = 1.0  # the working pixel for large cells: a 12 um cell is 12 pixels across there
LARGE_CELL_UM = 10.5  # cells are large when three quarters of their centres stand this far across


@dataclass
class _Detection:
    """What stands out from the background at the working scale (``factor`` image pixels a side): the relief
    (the binned image less its background), the mask of cells (closed, holes filled, opened), the distance of
    its pixels to the background that seeds the split, and the seeds' places (:func:`_peaks`)."""

    factor: int
    work_um: float
    relief: np.ndarray
    mask: np.ndarray
    distance: np.ndarray
    peaks: np.ndarray

    def typical_um(self) -> float:
        """How wide the cells are, in micrometres: the first quartile of twice the distance at their centres
        (0: none found). Packed real Jurkat cells (tests/packed_cells.py) and the montage's at 0.6 um/px measure
        12, the synthetic blood stem cells 8, two touching 7 um cells 7 to 9 (at 1 to 1.6 um a working pixel)."""
        heights = self.distance[self.peaks]
        return float(np.percentile(heights, 25)) * 2 * self.work_um if heights.size else 0.0


def _peaks(distance: np.ndarray, min_radius: float, unit: float = 1.0) -> np.ndarray:
    """Where seeds may stand: the maxima of the distance within a smallest cell's radius (``min_radius``
    pixels), at least three quarters of that radius deep (a cell's centre). ``distance``: in 1 / ``unit``
    pixels."""
    return (distance >= _max_disk(distance, min_radius)) & (distance >= 0.75 * min_radius * unit)


def _detect(small: np.ndarray, params: FindParams, factor: int) -> _Detection | None:
    """Cells' mask at the working scale (``small``: the image binned by ``factor``), or None when the relief is
    flat (no noise, nothing to threshold)."""
    work_um = params.pixel_size_um * factor
    relief = flatten_background(small, 2 * params.max_diameter_um / work_um)
    noise = _robust_sigma(relief)
    phase = params.modality == "phase"
    # what marks a cell: relief of either sign (DIC's bright and dark flanks, brightfield's ring), or in
    # positive phase contrast the dark body alone (its bright halo lies outside the cell: taken with it, the
    # cell's box grows by half: IoU with the cell under 0.5)
    energy = _smooth(np.abs(relief), 0.3 / work_um)
    base = float(np.median(_sample(energy)))
    spread = _robust_sigma(energy, base)
    if noise <= 0 and spread <= 0:
        return None
    # the threshold is the relief's either way (the dark part alone is 0 over half the field: its own
    # median and spread would put the threshold in the noise)
    threshold = base + params.threshold_sigmas * max(spread, 0.3 * noise)
    if phase:
        energy = _smooth(np.maximum(-relief, 0), 0.3 / work_um)
    mask = energy > threshold
    unclosed = mask
    if not phase:
        # DIC relief vanishes across the shear direction: close the two crescents into a ring (brightfield
        # cells are found better with it too: Jurkat recall 0.998 against 0.989 without, bench/cells.py)
        mask = _close(mask, 1.2 / work_um)
    mask = _fill_holes(mask)
    mask = _open(mask, 0.8 / work_um)
    # the distance that seeds the split is the mean of the closed mask's and the unclosed one's (holes filled):
    # where three cells touch, closing fills the gap between them, and the closed mask's distance is as high
    # there as at a cell's centre
    inner = _fill_holes(unclosed) & mask if unclosed is not mask else mask
    quarters = _chamfers(mask, inner)  # four times the distance, in integers
    peaks = _peaks(quarters, params.min_diameter_um / 2 / work_um, 4.0)
    distance = np.multiply(quarters, np.float32(0.25), dtype=np.float32)
    return _Detection(factor, work_um, relief, mask, distance, peaks)


def _field_cells(image: np.ndarray, small: np.ndarray, factor: int, found: _Detection, params: FindParams) -> CellCrops:
    """The cells of a field from what stood out at the working scale: touching cells split apart, debris and
    clumps dropped, each cell's box, centre, flags and crop."""
    h, w = image.shape
    work_um = found.work_um
    cells = _split_cells(found.mask, found.distance, found.peaks, params, work_um)
    dropped = {"debris": 0, "clump": 0}
    rejected: list[tuple[tuple[int, ...], str]] = []  # the first MAX_REJECTED, in the image's pixels

    def in_image(box: tuple[slice, slice]) -> tuple[int, int, int, int]:
        x0, y0 = box[1].start * factor, box[0].start * factor
        x1, y1 = min(w, box[1].stop * factor), min(h, box[0].stop * factor)
        return x0, y0, x1 - x0, y1 - y0

    for box, why in cells.rejected:
        dropped[why] += 1
        if len(rejected) < MAX_REJECTED:
            rejected.append((in_image(box), why))
    if not len(cells.boxes):
        return CellCrops.empty(params.output_size, dropped, rejected)

    r0, r1, c0, c1 = cells.boxes.T
    x0, y0 = c0 * factor, r0 * factor
    boxes = np.stack([x0, y0, np.minimum(w, c1 * factor) - x0, np.minimum(h, r1 * factor) - y0], 1).astype(np.int32)
    centres = ((cells.centroids[:, ::-1] + 0.5) * factor - 0.5).astype(np.float32)
    margin = int(np.ceil(1.5 / work_um))  # within 1.5 um of the border: the cell is cut by the edge
    edge = (np.minimum(r0, c0) <= margin) | (r1 >= small.shape[0] - margin) | (c1 >= small.shape[1] - margin)
    flags = ["edge" if e else "" for e in edge.tolist()]
    crops = cut_crops(image, centres, params)
    background = small - found.relief
    masks = _Masks(image, cells.labels, factor, background, params.pixel_size_um, params.threshold_sigmas, (h, w))
    masks.boxes = cells.boxes
    result = CellCrops(crops, boxes, centres, flags, dropped, masks)
    result.set_rejected(rejected)
    return result


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (the same result: background not 4-connected to the border is
    filled), by one OpenCV flood fill of the background from a frame around the image (which joins every
    stretch of background at the border): a third of the time of labelling the background."""
    h, w = mask.shape
    canvas = np.zeros((h + 2, w + 2), np.uint8)
    canvas[1:-1, 1:-1] = mask
    cv2.floodFill(canvas, None, (0, 0), 2, flags=4)
    return canvas[1:-1, 1:-1] != 2


def _refuse_blank(image: np.ndarray) -> None:
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        raise LsmError(f"the image is blank: every pixel has the same value ({lo:g}); nothing to analyse")


@dataclass
class _Split:
    """Cells of a mask at the working scale: their labels (cell i's pixels are i + 1, 0 none), boxes ((N, 4)
    int64: first row, row after the last, first column, column after the last), centroids (row, col), and the
    boxes (row and column slices) of regions not kept with why."""

    labels: np.ndarray
    boxes: np.ndarray
    centroids: np.ndarray
    rejected: list[tuple[tuple[slice, slice], str]]


SEED_DEPTH = 0.4  # two cells' centres stand at least this many smallest-cell radii above their contact
CLUMP_CELLS = 12  # a region larger than this many of the largest cells is no group of cells: a clump


def _chamfers(*masks: np.ndarray) -> np.ndarray:
    """The chessboard and city-block chamfer distances to the background of each mask, all added (int16): scipy's
    ``distance_transform_cdt`` of each (outside the image counts as foreground; -1 everywhere for a mask without
    any background), by compiled raster passes (:func:`cell_loops.add_chamfer`), exact for these two metrics."""
    out = np.zeros(masks[0].shape, np.int16)
    for mask in masks:
        if np.any(~mask):
            loops.add_chamfer(np.ascontiguousarray(mask, bool), out)
        else:
            out -= 2
    return out


def _split_cells(
    mask: np.ndarray, distance: np.ndarray, peaks: np.ndarray, params: FindParams, work_um: float
) -> _Split:
    """The cells of a mask at the working scale, touching cells split apart.

    Seeds are the maxima of the distance within a smallest cell's radius, at least three quarters of that
    radius deep (a cell's centre: ``peaks``, :func:`_peaks`). A region with one seed is one piece; a region
    with several is divided between them by power distance (:func:`_power_tables`: touching round cells part
    where they touch). Two neighbouring pieces are merged again unless both centres stand at least
    ``SEED_DEPTH`` smallest-cell radii above the highest point of their contact (the h-maxima rule: one ragged
    cell has shallow dips between its maxima, two round cells touching a deep neck). Then each piece is
    judged: smaller than ``min_diameter_um``: debris; larger than ``max_diameter_um`` or, when its area is
    large for its inscribed radius, less solid than ``min_solidity``: a clump (a group too dense to split, or
    one large object); both dropped. A region
    larger than ``CLUMP_CELLS`` of the largest cells is no colony of cells: a clump.

    The passes over pixels are compiled loops (:mod:`lsm_core.imaging.cell_loops`: one to label and measure the
    seeds, one to give each pixel its seed and find where pieces touch, one to measure regions and pieces each);
    the pieces are judged by whole-array operations on their measures."""
    min_radius = params.min_diameter_um / 2 / work_um
    min_area = np.pi / 4 * (params.min_diameter_um / work_um) ** 2
    max_area = np.pi / 4 * (params.max_diameter_um / work_um) ** 2
    rejected: list[tuple[tuple[slice, slice], str]] = []
    regions, n_regions = _label(mask)
    if n_regions == 0:
        return _Split(
            np.zeros(mask.shape, np.int32), np.zeros((0, 4), np.int64), np.zeros((0, 2), np.float32), rejected
        )
    region_stats, _ = loops.label_stats(regions, n_regions, distance)
    too_large = region_stats[:, loops.AREA] > CLUMP_CELLS * max_area
    too_large[0] = False
    seed_stats, seed_first, n_seeds = loops.seeds(peaks, regions, too_large, distance)
    seed_region = np.zeros(n_seeds + 1, np.int64)
    seed_region[1:] = np.take(regions, seed_first[1:])
    height = seed_stats[:, loops.TOP].astype(np.float32)  # a seed's plateau has one height
    height[0] = 0
    seeds_in = np.bincount(seed_region[1:], minlength=n_regions + 1)
    # a region with one seed is one piece; those with more are divided between their seeds
    first, seeds, a, b, c = _power_tables(seed_stats, seed_region, seeds_in, height)
    seed_pieces, seed_piece_stats, lo, hi, contact = loops.nearest_seeds(
        regions, first, seeds_in, seeds, a, b, c, distance
    )
    # each seed's piece's label once merged (the pieces are measured by their seeds' parts)
    merged = _merge_shallow(lo, hi, contact, height, SEED_DEPTH * min_radius)
    if merged is None:
        merged = np.arange(n_seeds + 1, dtype=np.int32)
    # regions without any seed: smaller than a smallest cell's inscribed disk (debris), or too large (clumps)
    for label in (np.flatnonzero(seeds_in[1:] == 0) + 1).tolist():
        rejected.append((_box(region_stats[label]), "clump" if too_large[label] else "debris"))
    n_pieces = int(merged.max())
    stats = loops.merged_stats(seed_piece_stats, merged, n_pieces)
    area = stats[:, loops.AREA]
    cy = stats[:, loops.SUM_R] / np.maximum(area, 1)
    cx = stats[:, loops.SUM_C] / np.maximum(area, 1)
    inscribed = np.maximum(stats[:, loops.TOP], 0).astype(np.float32)
    region_of = np.zeros(n_pieces + 1, np.int64)
    region_of[merged] = seed_region  # a piece's seeds lie in one region
    why = np.full(n_pieces + 1, "", dtype=object)  # "": kept; None: no such piece
    why[area < min_area] = "debris"
    why[area > max_area] = "clump"
    why[area == 0] = None
    why[0] = None
    round_enough = area <= 1.6 * np.pi * inscribed.astype(np.float64) ** 2
    doubtful = np.flatnonzero((why == "") & ~round_enough)  # not round: is it solid?
    if len(doubtful):
        from skimage.morphology import convex_hull_image

        # solid enough within the octagon around it (which holds its convex hull): no need to draw the hull
        solid = area[doubtful] >= params.min_solidity * _octagon_pixels(stats[doubtful])
        for label in doubtful[~solid].tolist():
            box = _box(stats[label])
            if area[label] < params.min_solidity * convex_hull_image(np.take(merged, seed_pieces[box]) == label).sum():
                why[label] = "clump"
    kept = np.flatnonzero(why == "")
    keep = np.zeros(n_pieces + 1, np.int32)
    keep[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    boxes = stats[kept][:, [loops.R0, loops.R1, loops.C0, loops.C1]].astype(np.int64) + [0, 1, 0, 1]
    not_kept: dict[int, list[tuple[tuple[slice, slice], str]]] = {}  # by region
    for label in np.flatnonzero((why == "debris") | (why == "clump")).tolist():
        not_kept.setdefault(int(region_of[label]), []).append((_box(stats[label]), str(why[label])))
    kept_regions = set(region_of[kept].tolist())
    for reg, parts in not_kept.items():
        if reg not in kept_regions and any(reason == "clump" for _, reason in parts):
            rejected.append((_box(region_stats[reg]), "clump"))  # nothing of it kept: one clump, however cut
        else:
            rejected.extend(parts)
    centroids = np.stack([cy[kept], cx[kept]], axis=1).astype(np.float32).reshape(-1, 2)
    return _Split(np.take(np.take(keep, merged), seed_pieces), boxes, centroids, rejected)


def _box(row: np.ndarray) -> tuple[slice, slice]:
    """A label's box (row and column slices) from its row of :func:`cell_loops.label_stats`."""
    r0, r1, c0, c1 = (int(row[k]) for k in (loops.R0, loops.R1, loops.C0, loops.C1))
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


def _octagon_pixels(stats: np.ndarray) -> np.ndarray:
    """For labels' rows of :func:`cell_loops.label_stats`, the number of pixel centres in the octagon bounded
    by each label's pixels' extremes along rows, columns and both diagonals. The octagon holds the convex hull
    scikit-image's ``convex_hull_image`` draws (of the pixels' edge midpoints), so this is at least the hull's
    pixel count: a piece as solid as needed against it is solid."""
    r0, r1, c0, c1, s0, s1, d0, d1 = (
        stats[:, k].astype(np.int64)
        for k in (loops.R0, loops.R1, loops.C0, loops.C1, loops.S0, loops.S1, loops.D0, loops.D1)
    )
    n = len(stats)
    rows = r1 - r0 + 1
    which = np.repeat(np.arange(n), rows)
    y = np.arange(rows.sum()) - np.repeat(np.cumsum(rows) - rows, rows) + r0[which]
    left = np.maximum.reduce([c0[which], s0[which] - y, y - d1[which]])
    right = np.minimum.reduce([c1[which], s1[which] - y, y - d0[which]])
    return np.bincount(which, np.maximum(right - left + 1, 0), minlength=n)


def _power_tables(
    seed_stats: np.ndarray, seed_region: np.ndarray, seeds_in: np.ndarray, height: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`cell_loops.nearest_seeds` needs to give each pixel of a region the nearest of the region's
    seeds in power distance, the squared distance to the seed's centre less the square of its height (its
    inscribed radius): each region's first place in the list of seeds by region, that list (seed labels,
    region by region, ascending), and each seed's a, b, c (float32) of the power distance less the pixel's
    own squared length, linear in it: a y + b x + c.

    Two touching disks part exactly where they touch, on the line through their contact points; a larger cell
    keeps its whole body against a smaller neighbour. This stands in for a watershed of the distance flooded
    from the seeds (scikit-image's: the same recall on packed real cells, bench/cells.py, the masks' IoU 0.002
    lower) at a small part of its time."""
    n_seeds = len(height) - 1
    size = np.maximum(seed_stats[:, loops.AREA], 1)
    sy, sx = seed_stats[:, loops.SUM_R] / size, seed_stats[:, loops.SUM_C] / size
    seeds = (np.argsort(seed_region[1:], kind="stable") + 1).astype(np.int32)  # seed labels, region by region
    first = np.zeros(len(seeds_in), np.int64)
    np.cumsum(seeds_in[:-1], out=first[1:])
    a = np.zeros(n_seeds + 1, np.float32)
    b = np.zeros(n_seeds + 1, np.float32)
    c = np.zeros(n_seeds + 1, np.float32)
    a[1:], b[1:] = -2 * sy[1:], -2 * sx[1:]
    c[1:] = sy[1:] ** 2 + sx[1:] ** 2 - height[1:].astype(np.float64) ** 2
    return first, seeds, a, b, c


def _merge_shallow(
    lo: np.ndarray, hi: np.ndarray, contact: np.ndarray, height: np.ndarray, depth: float
) -> np.ndarray | None:
    """Pieces merged where the contact between two is less than ``depth`` below the lower of their seeds'
    heights: the contact's height is the highest distance along their common border. ``lo``, ``hi``,
    ``contact``: each pair of touching pixels' pieces (seed labels) and lower distance
    (:func:`cell_loops.nearest_seeds`). Returns the new label of each seed label (compact, 0 stays 0), or None when
    no two pieces merge."""
    if not len(lo):
        return None
    key = lo * len(height) + hi
    order = np.lexsort((contact, key))  # by pair, the highest contact last
    key, contact = key[order], contact[order]
    last = np.r_[key[1:] != key[:-1], True]
    key, contact = key[last], contact[last]
    lo, hi = key // len(height), key % len(height)
    # a group's height only grows as it merges: a pair deep enough now never merges, and is left out
    shallow = np.minimum(height[lo], height[hi]) - contact < depth
    if not shallow.any():
        return None
    lo, hi, contact = lo[shallow], hi[shallow], contact[shallow]
    # the merge tree, the highest contacts first: a group's height is its highest seed's, so a shallow dip
    # joins its spur to one cell and never, through it, two cells that touch
    roots = loops.merge_tree(lo, hi, contact, height, float(depth))
    _, lut = np.unique(roots, return_inverse=True)  # label 0 stays 0 (its own root, the smallest)
    return lut.astype(np.int32)


def cell_mask(crop: np.ndarray, um_per_px: float) -> np.ndarray | None:
    """The outline of the cell at the centre of a single-cell crop, as a bool mask (None: none is traced).

    As :func:`find_cells` sees a cell, at the crop's own sampling: relief against the crop's border frame
    (its background), smoothed; above the frame's median plus five robust sigmas; closed, holes filled, opened;
    then the convex hull of the pieces whose centre lies within 4 µm of the crop's (a DIC cell shows as two
    crescents, a brightfield one as a ring: round cells, so their hull is the cell). Measured: IoU 0.78 with
    the synthetic cells' true outlines (5th percentile 0.69); on the 900 real Jurkat cells of
    ../shared/data/brightfield every nucleus (the DNA channel's Otsu mask) lies inside (tests/test_cells.py).
    For saliency, where a map's mass lies (inside the cell, or in the background around it)."""
    from skimage.morphology import convex_hull_image

    crop = np.asarray(crop, np.float32)
    if crop.ndim != 2 or min(crop.shape) < 8 or not um_per_px > 0:
        return None
    h, w = crop.shape
    b = max(2, int(round(min(h, w) * 0.08)))
    frame = np.ones((h, w), bool)
    frame[b:-b, b:-b] = False
    energy = ndi.gaussian_filter(np.abs(crop - np.median(crop[frame])), max(0.5, 0.3 / um_per_px))
    spread = _robust_sigma(energy[frame])
    if not spread > 0:
        return None
    mask = energy > float(np.median(energy[frame])) + 5 * spread
    mask = _open(_fill_holes(_close(mask, 1.2 / um_per_px)), 0.8 / um_per_px)
    labels = measure.label(mask)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    near = [
        r.label
        for r in measure.regionprops(labels)
        if np.hypot(r.centroid[0] - cy, r.centroid[1] - cx) <= 4 / um_per_px
    ]
    if not near:
        return None
    hull = convex_hull_image(np.isin(labels, near))
    return hull if hull.sum() >= np.pi / 4 * (4.0 / um_per_px) ** 2 else None


def box_iou(a, b) -> float:
    """Intersection over union of two boxes (x, y, w, h)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter) if inter else 0.0


def matched_boxes(truth, found, at: float = 0.5) -> int:
    """How many true boxes (x, y, w, h) reported boxes match one to one at IoU >= ``at`` (greedy, best pairs
    first): recall is this over the true boxes, precision over the reported ones (bench/cells.py).

    >>> matched_boxes([(0, 0, 10, 10), (50, 50, 10, 10)], [(1, 1, 10, 10), (0, 0, 10, 10), (90, 90, 5, 5)])
    1
    """
    pairs = sorted(((box_iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    used_t: set[int] = set()
    used_f: set[int] = set()
    for value, i, j in pairs:
        if value < at:
            break
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    return len(used_t)


def crops_at(image: np.ndarray, boxes, params: FindParams, single: bool = False) -> np.ndarray:
    """The crops of cells found before (boxes (x, y, w, h) in the image's pixels), cut again from the image:
    (N, S, S) float32. ``single``: the image is a single-cell crop, passed through whole as when it was found."""
    if single:
        return find_cells(image, params).crops
    centres = np.array([(x + w / 2 - 0.5, y + h / 2 - 0.5) for x, y, w, h in boxes], np.float32).reshape(-1, 2)
    return cut_crops(image, centres, params)
