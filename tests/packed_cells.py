"""Packed fields of REAL cells: the 900 brightfield Jurkat cells of ../shared/data (each 40 x 40 px tile of the
G1 montage holds one round cell, about 0.5 um per pixel), cut out along their own outlines, scaled up 1.3 times
in area (larger, G2-like cells), turned at random angles (and mirrored), and placed touching their neighbours
in small colonies on a background of the montage's own background, then written at another pixel size.

The truth is one outline per placed cell (a label image of the field), so a finder is scored by mask IoU.

How each part is made:

* a tile's cell: the relief against the tile's border frame (its background), smoothed (sigma 1 px), above
  the frame's median plus 5 robust deviations; closed, holes filled, opened; the component nearest the tile's
  centre, holes filled. Tiles whose cell touches the tile's border or is smaller than 6 um across are not used
  (a few percent). This is the cell's outline: the truth.
* a cell is placed as its deviation from the tile's background (the tile minus its frame's median) inside its
  outline grown by 2 px (the faint halo just outside the dark ring comes with it), scaled and turned with
  linear interpolation (outside: 0, the background's own level), its truth outline by the same transform;
  where a placed cell's grown edge would cover a neighbour's outline it gives way to the neighbour.
* the background: 6 x 6 px corners of the montage's tiles, drawn at random and laid edge to edge (corners with
  more spread than twice the median are skipped: a cell reaches into them).
* touching: a colony starts at a free place; each next cell comes in from a random direction towards a random
  cell of its colony and stops at the first position where its outline touches (is 8-adjacent to) another
  cell's outline without overlapping any; colonies stay at least 3 px apart from each other.
* the field is composed at 0.5 um/px and resampled (linear interpolation; an anti-alias blur before going
  coarser), the truth labels by nearest neighbour, to the pixel size asked for.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

JURKAT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brightfield" / "jurkat_G1_montage.tif"
NATIVE_UM = 0.5  # the montage's stated pixel size
AREA_SCALE = 1.3  # G2-like cells: 1.3 times the area of the G1 cells


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= r * r + r


def tile_outline(tile: np.ndarray) -> np.ndarray | None:
    """The cell of one 40 x 40 tile as a bool mask (the truth outline), or None when none is clear."""
    h, w = tile.shape
    frame = np.ones((h, w), bool)
    frame[4:-4, 4:-4] = False
    level = float(np.median(tile[frame]))
    energy = ndi.gaussian_filter(np.abs(tile - level), 1.0)
    e = energy[frame]
    spread = 1.4826 * float(np.median(np.abs(e - np.median(e))))
    mask = energy > float(np.median(e)) + 5 * max(spread, 1e-6)
    mask = ndi.binary_closing(mask, structure=_disk(2), border_value=0)
    mask = ndi.binary_opening(ndi.binary_fill_holes(mask), structure=_disk(1))
    labels, n = ndi.label(mask)
    if n == 0:
        return None
    cy, cx = (h - 1) / 2, (w - 1) / 2
    centres = ndi.center_of_mass(mask, labels, range(1, n + 1))
    nearest = 1 + int(np.argmin([np.hypot(y - cy, x - cx) for y, x in centres]))
    cell = ndi.binary_fill_holes(labels == nearest)
    rows, cols = np.nonzero(cell)
    if rows.min() == 0 or cols.min() == 0 or rows.max() == h - 1 or cols.max() == w - 1:
        return None  # cut by the tile's border: not a whole cell
    if cell.sum() < np.pi / 4 * (6.0 / NATIVE_UM) ** 2:
        return None
    return cell


@lru_cache(maxsize=2)
def montage_cells(path: str = str(JURKAT)) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, float]:
    """The montage's cells as (deviation from background, outline) pairs of 40 x 40 tiles, its background
    corners (K, 6, 6) and its background level."""
    import tifffile

    montage = tifffile.imread(path).astype(np.float32)
    tiles = montage.reshape(30, 40, 30, 40).transpose(0, 2, 1, 3).reshape(900, 40, 40)
    cells = []
    for tile in tiles:
        mask = tile_outline(tile)
        if mask is not None:
            frame = np.ones(tile.shape, bool)
            frame[4:-4, 4:-4] = False
            cells.append((tile - float(np.median(tile[frame])), mask))
    corners = np.concatenate([tiles[:, :6, :6], tiles[:, :6, -6:], tiles[:, -6:, :6], tiles[:, -6:, -6:]])
    spread = corners.reshape(len(corners), -1).std(axis=1)
    corners = corners[spread <= 2 * np.median(spread)]
    return cells, corners, float(np.median(montage))


def _transform(dev: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A cell scaled up 1.3x in area, mirrored or not, turned at a random angle: (deviation, outline, alpha)
    cropped to the grown outline's box."""
    zoom = float(np.sqrt(AREA_SCALE))
    if rng.random() < 0.5:
        dev, mask = dev[:, ::-1], mask[:, ::-1]
    grown = ndi.binary_dilation(mask, structure=_disk(2))
    size = int(np.ceil(40 * zoom * 1.42)) | 1  # room for any angle
    # output pixel p maps to input matrix @ (p - centre_out) + centre_in
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.array([[c, -s], [s, c]]) / zoom
    centre_in = np.array([19.5, 19.5])
    centre_out = np.array([(size - 1) / 2, (size - 1) / 2])
    offset = centre_in - matrix @ centre_out
    kw = dict(matrix=matrix, offset=offset, output_shape=(size, size), order=1, mode="constant", cval=0.0)
    out_dev = ndi.affine_transform(np.ascontiguousarray(dev * grown, np.float32), **kw)
    out_mask = ndi.affine_transform(mask.astype(np.float32), **kw) >= 0.5
    out_alpha = ndi.affine_transform(grown.astype(np.float32), **kw)
    rows, cols = np.nonzero(out_alpha > 0)
    box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    return out_dev[box], out_mask[box], np.clip(out_alpha[box], 0, 1)


def _background(shape: tuple[int, int], corners: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    gh, gw = -(-shape[0] // 6), -(-shape[1] // 6)
    pick = corners[rng.integers(0, len(corners), gh * gw)]
    # each corner turned by a random multiple of 90 degrees (no repeated pattern)
    pick = np.stack([np.rot90(p, int(k)) for p, k in zip(pick, rng.integers(0, 4, len(pick)))])
    field = pick.reshape(gh, gw, 6, 6).transpose(0, 2, 1, 3).reshape(gh * 6, gw * 6)
    return field[: shape[0], : shape[1]].astype(np.float32) - np.float32(np.median(corners) - level)


def packed_field(
    seed: int,
    pixel_size_um: float = NATIVE_UM,
    size_um: float = 300.0,
    colony: tuple[int, int] = (2, 6),
    fill: float = 0.35,
    path: Path = JURKAT,
) -> tuple[np.ndarray, np.ndarray]:
    """A square field of ``size_um`` micrometres of touching real cells at ``pixel_size_um``: (field (H, W)
    float32 in the montage's grey values, truth (H, W) int32: cell k's outline is ``truth == k``, 0 none).

    Colonies of ``colony`` cells (inclusive range) are grown until about ``fill`` of the field is cell."""
    rng = np.random.default_rng(seed)
    cells, corners, level = montage_cells(str(path))
    n = int(round(size_um / NATIVE_UM))
    field = _background((n, n), corners, level, rng)
    truth = np.zeros((n, n), np.int32)
    colony_of = np.zeros((n, n), np.int32)  # which colony each outline pixel belongs to (0: none)
    placed = 0
    colonies = 0
    misses = 0
    while truth.astype(bool).mean() < fill and misses < 200:
        colonies += 1
        want = int(rng.integers(colony[0], colony[1] + 1))
        members: list[tuple[float, float]] = []
        for _ in range(want):
            dev, mask, alpha = _transform(*cells[int(rng.integers(0, len(cells)))], rng)
            spot = _find_spot(mask, truth, colony_of, colonies, members, rng)
            if spot is None:
                misses += 1
                continue
            y0, x0 = spot
            h, w = mask.shape
            region = (slice(y0, y0 + h), slice(x0, x0 + w))
            free = truth[region] == 0
            a = alpha * free  # a grown edge gives way to a neighbour's outline
            field[region] = field[region] * (1 - a) + (level + dev) * a
            placed += 1
            truth[region][mask] = placed
            colony_of[region][mask] = colonies
            members.append((y0 + h / 2, x0 + w / 2))
        if not members:
            colonies -= 1
    if pixel_size_um != NATIVE_UM:
        f = NATIVE_UM / pixel_size_um
        size = int(round(n * f))
        if f < 1:
            field = ndi.gaussian_filter(field, 0.5 * np.sqrt(1 / f**2 - 1))
        coords = (np.arange(size) + 0.5) / f - 0.5
        yy, xx = np.meshgrid(coords, coords, indexing="ij")
        field = ndi.map_coordinates(field, [yy, xx], order=1, mode="nearest").astype(np.float32)
        near = np.clip(np.round(coords).astype(int), 0, n - 1)
        truth = truth[np.ix_(near, near)]
    return field.astype(np.float32), truth


def _find_spot(mask, truth, colony_of, colony, members, rng) -> tuple[int, int] | None:
    """Top-left corner where ``mask`` fits: touching its colony (8-adjacent, no overlap) and at least 3 px from
    every other colony's cells; the first cell of a colony anywhere free. None: no place found."""
    n = truth.shape[0]
    h, w = mask.shape
    ring = ndi.binary_dilation(np.pad(mask, 1), structure=np.ones((3, 3), bool))  # the outline and its 8-neighbours
    apart = ndi.binary_dilation(np.pad(mask, 4), structure=_disk(3))

    def fits(y0: int, x0: int, first: bool) -> bool:
        if y0 < 4 or x0 < 4 or y0 + h > n - 4 or x0 + w > n - 4:
            return False
        if truth[y0 : y0 + h, x0 : x0 + w][mask].any():
            return False
        others = colony_of[y0 - 4 : y0 + h + 4, x0 - 4 : x0 + w + 4]
        near_others = (others != 0) & (others != colony) & apart
        if near_others.any():
            return False
        if first:
            return True
        around = truth[y0 - 1 : y0 + h + 1, x0 - 1 : x0 + w + 1]
        return bool((around[ring] != 0).any())

    if not members:
        for _ in range(50):
            y0, x0 = int(rng.integers(4, n - h - 4)), int(rng.integers(4, n - w - 4))
            if fits(y0, x0, True):
                return y0, x0
        return None
    for _ in range(20):
        cy, cx = members[int(rng.integers(0, len(members)))]
        angle = rng.uniform(0, 2 * np.pi)
        dy, dx = np.sin(angle), np.cos(angle)
        # come in from far away along the direction; stop at the first touching position
        for r in np.arange(2.5 * max(h, w), 0, -1.0):
            y0 = int(round(cy + r * dy - h / 2))
            x0 = int(round(cx + r * dx - w / 2))
            if y0 < 4 or x0 < 4 or y0 + h > n - 4 or x0 + w > n - 4:
                continue
            if truth[y0 : y0 + h, x0 : x0 + w][mask].any():
                break  # overlapping: came in too far without touching at a free place
            if fits(y0, x0, False):
                return y0, x0
    return None


def mask_matches(truth: np.ndarray, found: np.ndarray, at: float = 0.5) -> int:
    """How many true outlines (label image ``truth``) a found label image matches at mask IoU >= ``at`` (at
    0.5 or more a pair is one to one by itself: two disjoint masks cannot both cover more than half of one)."""
    t, f = truth.ravel().astype(np.int64), found.ravel().astype(np.int64)
    both = (t > 0) & (f > 0)
    nt, nf = int(t.max()) + 1, int(f.max()) + 1
    pairs = np.bincount(t[both] * nf + f[both], minlength=nt * nf).reshape(nt, nf)
    area_t = np.bincount(t, minlength=nt)
    area_f = np.bincount(f, minlength=nf)
    ti, fi = np.nonzero(pairs)
    keep = (ti > 0) & (fi > 0)
    ti, fi = ti[keep], fi[keep]
    inter = pairs[ti, fi]
    iou = inter / (area_t[ti] + area_f[fi] - inter)
    return len(set(ti[iou >= at].tolist()))
