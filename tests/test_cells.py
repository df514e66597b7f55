import os

import numpy as np
import pytest

from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.imaging.cells import FindParams, find_cells


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def _match(truth, found):
    """Greedy one-to-one matching at IoU >= 0.5; returns (matches, centre distances)."""
    used, distances = set(), []
    for cell in truth:
        scores = [
            (_iou((cell.x, cell.y, cell.w, cell.h), box), j) for j, box in enumerate(found.boxes) if j not in used
        ]
        if not scores:
            continue
        best, j = max(scores)
        if best >= 0.5:
            used.add(j)
            cx, cy = found.centres[j]
            distances.append(float(np.hypot(cx - cell.cx, cy - cell.cy)))
    return len(used), distances


@pytest.mark.parametrize("task,seed", [("lsm", 0), ("lsm", 7), ("aging", 3)])
def test_finds_synthetic_cells_with_high_recall_and_precision(task, seed):
    field, truth = synthetic.make_field(task, seed=seed)
    # as a 12-bit camera stores it in a 16-bit TIFF
    field16 = np.round(field * 4095).astype(np.uint16).astype(np.float32) / 65535
    found = find_cells(field16)
    matched, distances = _match(truth, found)
    assert matched / len(truth) >= 0.95, "recall"
    assert matched / len(found) >= 0.95, "precision"
    assert max(distances) <= 3.0
    assert found.dropped["debris"] > 0  # the field has debris and it was dropped, not kept
    assert found.crops.shape == (len(found), 64, 64) and found.crops.dtype == np.float32


def test_grey_scale_does_not_change_what_is_found():
    field, _ = synthetic.make_field("lsm", seed=1, shape=(768, 768), n_cells=10)
    a = find_cells(field)
    b = find_cells(field * 0.05 + 0.3)
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_pixel_size_scales_the_size_limits():
    field, truth = synthetic.make_field("lsm", seed=2, shape=(1024, 1024), n_cells=12, n_debris=0)
    assert len(find_cells(field)) == len(truth)
    # told that pixels are 4x larger, every cell looks ~32 um across: all are dropped as clumps
    big = find_cells(field, FindParams(pixel_size_um=0.8, crop_um=51.2))
    assert len(big) == 0 and big.dropped["clump"] >= len(truth) * 0.9


def test_cells_cut_by_the_edge_are_flagged():
    field, truth = synthetic.make_field("lsm", seed=4, shape=(1024, 1024), n_cells=12, n_debris=0)
    cell = truth[0]
    cut = field[:, cell.x + cell.w // 2 :]  # the first cell is cut in half by the left edge
    found = find_cells(cut)
    edge = [i for i, f in enumerate(found.flags) if "edge" in f]
    assert edge, "a cell cut by the edge must be flagged"
    assert all(found.boxes[i][0] <= 8 for i in edge)
    assert len(edge) < len(found)
    assert found.crops.shape[1:] == (64, 64)


def test_single_cell_crop_passes_through():
    crops, _ = synthetic.make_crops("lsm", 2, seed=0)
    found = find_cells(crops[0])
    assert len(found) == 1 and found.flags == ["single"]
    np.testing.assert_array_equal(found.boxes[0], [0, 0, 64, 64])
    np.testing.assert_allclose(found.crops[0], crops[0], atol=1e-6)
    # a 96x80 crop is padded to a square and resized to the model input
    found = find_cells(np.pad(crops[1], ((8, 24), (16, 16)), mode="edge"))
    assert len(found) == 1 and found.crops.shape == (1, 64, 64)


def test_image_without_cells_gives_zero_cells():
    rng = np.random.default_rng(0)
    empty = (0.4 + 0.005 * rng.standard_normal((600, 600))).astype(np.float32)
    found = find_cells(empty)
    assert len(found) == 0 and found.crops.shape == (0, 64, 64)


def test_blank_image_is_a_clear_error():
    with pytest.raises(LsmError, match="blank"):
        find_cells(np.zeros((512, 512), np.float32))


def test_bad_pixel_size_is_refused():
    with pytest.raises(LsmError, match="pixel size"):
        FindParams(pixel_size_um=0)


def test_holes_are_filled_as_scipy_fills_them():
    from scipy import ndimage as ndi

    from lsm_core.imaging.cells import _fill_holes

    rng = np.random.default_rng(0)
    for _ in range(10):
        rings = ndi.binary_dilation(rng.random((256, 192)) > 0.995, iterations=3) ^ (rng.random((256, 192)) > 0.97)
        assert np.array_equal(_fill_holes(rings), ndi.binary_fill_holes(rings))
    assert not _fill_holes(np.zeros((8, 8), bool)).any() and _fill_holes(np.ones((8, 8), bool)).all()


def test_cell_mask_traces_synthetic_cells():
    """cell_mask (the outline saliency's inside/outside share is measured against) on synthetic DIC crops."""
    from lsm_core.imaging import synthetic
    from lsm_core.imaging.cells import cell_mask

    crops, labels, truth = synthetic.make_crops("lsm", 90, seed=9, return_masks=True)
    ious = []
    for crop, mask in zip(crops, truth):
        found = cell_mask(crop, 0.2)
        ious.append(0.0 if found is None else (found & mask).sum() / (found | mask).sum())
    ious = np.array(ious)
    assert ious.mean() >= 0.7 and np.percentile(ious, 10) >= 0.6, np.percentile(ious, [0, 10, 50])
    for k in range(3):  # small LT-HSC cells as well as large MPPs
        assert ious[labels == k].mean() >= 0.65
    assert cell_mask(np.full((64, 64), 0.5, np.float32), 0.2) is None  # nothing there: no outline


def test_cell_mask_holds_the_nucleus_of_real_brightfield_cells():
    """The 900 Jurkat cells of ../shared/data: each cell's DNA stain (Otsu) lies inside its traced outline,
    and the outline is a cell, not the whole tile."""
    import tifffile
    from skimage import filters

    from lsm_core.imaging.cells import cell_mask
    from tests.test_readers_shared_data import DATA, JURKAT, need

    dna_file = DATA / "brightfield" / "jurkat_G1_dna_montage.tif"
    need(JURKAT, dna_file)
    bright = tifffile.imread(JURKAT).astype(np.float32)
    dna = tifffile.imread(dna_file).astype(np.float32)
    inside, areas, missed = [], [], 0
    for i in range(30):
        for j in range(30):
            tile = bright[40 * i : 40 * i + 40, 40 * j : 40 * j + 40]
            stain = dna[40 * i : 40 * i + 40, 40 * j : 40 * j + 40]
            mask = cell_mask((tile - tile.min()) / (np.ptp(tile) + 1e-9), 0.33)
            if mask is None:
                missed += 1
                continue
            nucleus = stain > filters.threshold_otsu(stain)
            inside.append((mask & nucleus).sum() / max(nucleus.sum(), 1))
            areas.append(mask.sum())
    assert missed <= 9  # at most 1%
    assert np.mean(inside) >= 0.97 and np.percentile(inside, 5) >= 0.9
    assert 300 < np.median(areas) < 1000 and max(areas) < 1600  # a cell ~28 px across, never the whole tile


@pytest.fixture(scope="module")
def montage_cells_ready():
    from tests.packed_cells import JURKAT
    from tests.test_readers_shared_data import need

    need(JURKAT)


@pytest.mark.parametrize("um", [0.33, 0.5, 0.65])
def test_touching_real_cells_are_told_apart(montage_cells_ready, um):
    """Real Jurkat cells 1.3x the area, packed touching in colonies of 2 to 6 (tests/packed_cells.py), at three
    pixel sizes: found one by one (mask IoU >= 0.5 with each placed cell's outline), not dropped as clumps.
    Measured on these fields: recall 0.98 to 1.0, precision 1.0 (bench/cells.py: 0.99 on larger ones)."""
    from tests.packed_cells import mask_matches, packed_field

    hit = true = reported = 0
    for seed in (0, 1):
        field, truth = packed_field(seed, um, size_um=240.0)
        found = find_cells(field, FindParams(pixel_size_um=um))
        assert found.labels is not None and found.labels.shape == field.shape
        hit += mask_matches(truth, found.labels)
        true += int(truth.max())
        reported += len(found)
    assert true >= 150
    assert hit / true >= 0.97, f"recall {hit / true:.3f}"
    assert hit / reported >= 0.97, f"precision {hit / reported:.3f}"


def test_two_cells_within_the_largest_size_are_split_and_one_large_cell_is_not():
    """Two small round cells touching (together smaller than the largest cell) are two cells; one large round
    cell is one clump, not cut in two."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :300]
    pair = (0.5 + 0.01 * rng.standard_normal((300, 300))).astype(np.float32)
    for cx in (132, 168):  # 7 um cells (35 px at 0.2 um/px), their rings touching at x = 150
        ring = np.abs(np.hypot(xx - cx, yy - 150) - 15) < 2.5
        pair[ring] = 0.2
    found = find_cells(pair, FindParams())
    assert len(found) == 2 and sorted(found.centres[:, 0].round(-1).tolist()) == [130, 170]
    yy, xx = np.mgrid[:400, :400]
    big = (0.5 + 0.01 * rng.standard_normal((400, 400))).astype(np.float32)
    big[np.abs(np.hypot(xx - 200, yy - 200) - 55) < 3] = 0.2  # 22 um across
    found = find_cells(big, FindParams())
    assert len(found) == 0 and found.dropped == {"debris": 0, "clump": 1}


def test_touching_cells_of_unequal_size_part_where_they_touch():
    """A 12 um cell with an 8 um and a 10 um one touching it: three cells, each with its own box."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:300, :300]
    image = (0.5 + 0.01 * rng.standard_normal((300, 300))).astype(np.float32)
    cells = [(110, 150, 30), (166, 150, 20), (110, 211, 25)]  # (x, y, radius) at 0.2 um/px, rings 1 px apart
    for cx, cy, r in cells:
        image[np.abs(np.hypot(xx - cx, yy - cy) - r) < 2.5] = 0.2
    found = find_cells(image, FindParams())
    assert len(found) == 3
    for cx, cy, r in cells:
        truth = (cx - r - 2.5, cy - r - 2.5, 2 * r + 5, 2 * r + 5)
        assert max(_iou(truth, box) for box in found.boxes) >= 0.75, (cx, cy, r, found.boxes)


def test_the_working_scale_is_coarser_where_cells_are_large(montage_cells_ready):
    """At 0.6 um/px real Jurkat cells (12 um) are found on a working grid of 1.2 um (twice the image's pixel);
    two touching 7 um cells at the same pixel size are found at 0.6 um, and apart."""
    import tifffile

    from lsm_core.imaging.cells import _bin
    from tests.packed_cells import JURKAT

    image = tifffile.imread(JURKAT).astype(np.float32)[:400, :400]
    found = find_cells(image, FindParams(pixel_size_um=0.6))
    assert len(found) >= 98 and found.masks is not None and found.masks.factor == 2
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:600, :600]
    pair = (0.5 + 0.01 * rng.standard_normal((600, 600))).astype(np.float32)
    for cx in (282, 318):  # drawn at 0.2 um/px, binned to 0.6
        pair[np.abs(np.hypot(xx - cx, yy - 300) - 15) < 2.5] = 0.2
    found = find_cells(_bin(pair, 3), FindParams(pixel_size_um=0.6))
    assert len(found) == 2 and found.masks is not None and found.masks.factor == 1


def test_outlines_are_traced_at_full_resolution_on_real_cells(montage_cells_ready):
    """The montage's first 10 x 10 tiles at 0.5 um/px: one closed outline per kept cell, in the order of the
    boxes, inside the image and its box, its area within 25 % of the tile's own outline (tests/packed_cells.py),
    its vertices off the working scale's 0.8 um grid; the labels are the outlines filled."""
    import tifffile
    from skimage.draw import polygon

    from tests.packed_cells import JURKAT, tile_outline

    image = tifffile.imread(JURKAT).astype(np.float32)[:400, :400]
    found = find_cells(image, FindParams(pixel_size_um=0.5))
    assert len(found) >= 98 and len(found.outlines) == len(found)
    errors, on_grid = [], 0
    for k, (outline, box) in enumerate(zip(found.outlines, found.boxes), start=1):
        assert outline.dtype == np.float32 and outline.ndim == 2 and outline.shape[1] == 2
        assert 8 <= len(outline) <= 120 and np.array_equal(outline[0], outline[-1])  # closed, compact
        x, y, w, h = box
        assert outline[:, 0].min() >= -0.5 and outline[:, 1].max() <= 399.5
        assert outline[:, 0].min() >= x - 8 and outline[:, 0].max() <= x + w + 8  # near its own box
        cx, cy = outline[:, 0].mean(), outline[:, 1].mean()
        i, j = int(cy // 40), int(cx // 40)
        truth = tile_outline(image[40 * i : 40 * i + 40, 40 * j : 40 * j + 40])
        if truth is not None:
            rr, cc = polygon(outline[:, 1], outline[:, 0])
            errors.append(abs(len(rr) - truth.sum()) / truth.sum())
        on_grid += bool(np.all(np.isclose((outline + 0.5) % 2, 0) | np.isclose((outline + 0.5) % 2, 2)))
        np.testing.assert_array_equal(found.labels[int(round(cy)), int(round(cx))], k)
    assert np.median(errors) <= 0.15 and np.percentile(errors, 90) <= 0.25, np.percentile(errors, [50, 90])
    assert on_grid <= 0.1 * len(found)  # traced at full resolution, not around 2 x 2 pixel blocks
    assert found.labels.shape == image.shape and found.labels.max() == len(found)


def test_a_single_cell_crop_is_outlined_or_boxed():
    crops, _ = synthetic.make_crops("lsm", 2, seed=0)
    found = find_cells(crops[0])
    (outline,) = found.outlines
    assert np.array_equal(outline[0], outline[-1]) and len(outline) >= 5
    assert found.labels is not None and 0 < (found.labels > 0).sum() < 64 * 64  # the cell, not the whole crop
    blank = find_cells((0.5 + 0.001 * np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32))
    np.testing.assert_allclose(blank.outlines[0][:4], [[-0.5, -0.5], [63.5, -0.5], [63.5, 63.5], [-0.5, 63.5]])


@pytest.mark.parametrize("crop_um,size", [(12.8, 64), (32.0, 16), (16.0, 32)])
def test_crops_are_what_pil_resizes_each_to(crop_um, size):
    """cut_crops resizes every crop at once (PIL's weights as a matrix): the same as PIL resizing each crop, on
    bilinear up-sizing (26 px to 64), box down-sizing (64 px to 16) and no resizing (32 px), edge crops too."""
    from lsm_core.imaging.cells import _resize, background_level, cut_crops

    rng = np.random.default_rng(0)
    image = rng.normal(1000.0, 50.0, (150, 170)).astype(np.float32)
    params = FindParams(pixel_size_um=0.5, crop_um=crop_um, output_size=size)
    centres = np.array([[80.0, 70.0], [3.2, 5.7], [168.0, 20.4], [100.5, 148.5], [60.0, 90.0]], np.float32)
    crops = cut_crops(image, centres, params)
    p = params.crop_px
    padded = np.pad(image, p, constant_values=background_level(image))  # outside the image: its background
    for (cx, cy), crop in zip(centres, crops):
        top, left = int(round(cy - p / 2 + 0.5)), int(round(cx - p / 2 + 0.5))
        patch = padded[p + top : 2 * p + top, p + left : 2 * p + left]
        np.testing.assert_allclose(crop, _resize(patch, size), rtol=0, atol=1e-3)  # float32 rounding of ~1000
    assert crops.shape == (5, size, size) and crops.dtype == np.float32


def test_the_octagon_around_a_piece_holds_its_convex_hull():
    """_split_cells skips drawing the convex hull of a piece solid enough against the octagon around it: the
    octagon's pixel count is never below the hull's (scikit-image's ``convex_hull_image``)."""
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image

    from lsm_core.imaging.cell_loops import label_stats
    from lsm_core.imaging.cells import _octagon_pixels

    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(100):
        blobs = ndi.binary_dilation(rng.random((25, 31)) > 0.97, iterations=int(rng.integers(1, 4)))
        labels, n = ndi.label(blobs, structure=np.ones((3, 3), bool))
        octagon = _octagon_pixels(label_stats(labels, n, np.zeros(labels.shape, np.float32))[0][1:])
        ratios += [octagon[i - 1] / convex_hull_image(labels == i).sum() for i in range(1, n + 1)]
    assert len(ratios) > 200 and min(ratios) >= 1 and np.median(ratios) < 1.1


def test_opencv_morphology_is_scipys():
    """Cell finding's morphology, chamfer distances and labelling by OpenCV give what scipy.ndimage gives,
    borders included, and the regions' numbers too (the order of the cells found depends on them)."""
    from scipy import ndimage as ndi

    from lsm_core.imaging.cells import _bin, _chamfers, _close, _disk, _label, _max_disk, _open, _smooth

    rng = np.random.default_rng(0)
    for k in range(20):
        shape = tuple(int(v) for v in rng.integers(5, 70, 2))
        mask = ndi.binary_dilation(rng.random(shape) > 0.97, iterations=int(rng.integers(1, 5)))
        mask ^= rng.random(shape) > 0.95
        if k == 0:
            mask[:] = True
        for radius in (0.4, 1.5, 2.6, 3.3):
            disk = _disk(radius)
            assert np.array_equal(_close(mask, radius), ndi.binary_closing(mask, disk, border_value=0))
            assert np.array_equal(_open(mask, radius), ndi.binary_opening(mask, disk))
            values = rng.random(shape).astype(np.float32)
            assert np.array_equal(_max_disk(values, radius), ndi.maximum_filter(values, footprint=disk))
            quarters = np.round(values * 40).astype(np.int16)
            assert np.array_equal(_max_disk(quarters, radius), ndi.maximum_filter(quarters, footprint=disk))
        chamfer = sum(ndi.distance_transform_cdt(mask, metric=metric) for metric in ("chessboard", "taxicab"))
        assert np.array_equal(_chamfers(mask), chamfer)
        inner = mask & (rng.random(shape) > 0.2)
        both = chamfer + sum(ndi.distance_transform_cdt(inner, metric=m) for m in ("chessboard", "taxicab"))
        assert np.array_equal(_chamfers(mask, inner), both)
        labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
        assert _label(mask)[1] == n and np.array_equal(_label(mask)[0], labels)
        labels, n = ndi.label(mask)
        assert _label(mask, 4)[1] == n and np.array_equal(_label(mask, 4)[0], labels)
        grey = (rng.random(shape) * 4095).astype(np.float32)
        for sigma in (0.2, 0.3, 0.6, 1.5):  # to float32 rounding of values up to 4095
            np.testing.assert_allclose(_smooth(grey, sigma), ndi.gaussian_filter(grey, sigma), rtol=0, atol=2e-3)
        for factor in (2, 3):
            h, w = shape[0] // factor * factor, shape[1] // factor * factor
            means = grey[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
            np.testing.assert_allclose(_bin(grey, factor), means, rtol=0, atol=2e-3)


def test_the_compiled_loops_give_what_whole_array_numpy_gives():
    """cell_loops' per-pixel passes against numpy written out: each label's measures, each pixel's seed of least
    power distance among its region's seeds (first of equals), the pairs of touching pieces, and the seeds
    labelled and measured from the peaks."""
    from scipy import ndimage as ndi

    from lsm_core.imaging import cell_loops as loops

    rng = np.random.default_rng(1)
    for _ in range(20):
        shape = tuple(int(v) for v in rng.integers(3, 60, 2))
        mask = ndi.binary_dilation(rng.random(shape) > 0.95, iterations=int(rng.integers(1, 4)))
        labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
        distance = rng.random(shape).astype(np.float32)
        stats, first = loops.label_stats(labels, n, distance)
        rows, cols = np.indices(shape)
        for k in range(1, n + 1):
            r, c = rows[labels == k], cols[labels == k]
            expected = [r.size, r.sum(), c.sum(), r.min(), r.max(), c.min(), c.max()]
            expected += [(r + c).min(), (r + c).max(), (r - c).min(), (r - c).max(), distance[labels == k].max()]
            assert np.allclose(stats[k], expected) and first[k] == np.flatnonzero(labels == k)[0]
        assert stats[0, loops.AREA] == 0 and first[0] == -1
        # seeds: a few labelled points in some regions; each region's seeds listed in order
        n_seeds = int(rng.integers(0, 3 * n + 1))
        seed_region = np.r_[0, rng.integers(1, n + 1, n_seeds)] if n else np.zeros(1, np.int64)
        count = np.bincount(seed_region[1:], minlength=n + 1)
        seeds = (np.argsort(seed_region[1:], kind="stable") + 1).astype(np.int32)
        start = np.r_[0, np.cumsum(count)[:-1]].astype(np.int64)
        a, b, c = (rng.normal(size=n_seeds + 1).astype(np.float32) for _ in range(3))
        got, got_stats, lo, hi, contact = loops.nearest_seeds(labels, start, count, seeds, a, b, c, distance)
        assert np.array_equal(got_stats[1:], loops.label_stats(got, n_seeds, distance)[0][1:])
        merged = rng.integers(1, 4, n_seeds + 1)
        merged[0] = 0
        expected = loops.label_stats(np.take(merged, got), 3, distance)[0]
        assert np.array_equal(loops.merged_stats(got_stats, merged, 3)[1:], expected[1:])
        y, x = rows.astype(np.float32), cols.astype(np.float32)
        for (r, col), reg in np.ndenumerate(labels):
            own = seeds[start[reg] : start[reg] + count[reg]]
            if reg == 0 or not len(own):
                assert got[r, col] == 0
                continue
            power = a[own] * y[r, col] + b[own] * x[r, col] + c[own]
            assert got[r, col] == own[int(np.argmin(power))]
        pairs = []
        for p, q, dp, dq in (
            (got[:, :-1], got[:, 1:], distance[:, :-1], distance[:, 1:]),
            (got[:-1], got[1:], distance[:-1], distance[1:]),
        ):
            touch = (p > 0) & (q > 0) & (p != q)
            pairs += list(zip(np.minimum(p, q)[touch], np.maximum(p, q)[touch], np.minimum(dp, dq)[touch]))
        assert sorted(zip(lo.tolist(), hi.tolist(), contact.tolist())) == sorted(
            (int(p), int(q), float(d)) for p, q, d in pairs
        )
        # the seeds of the peaks outside excluded regions, numbered as ndi.label numbers them
        peaks = mask & (rng.random(shape) > 0.6)
        excluded = rng.random(n + 1) > 0.7
        excluded[0] = False
        wanted = peaks & ~excluded[labels]
        markers, n_markers = ndi.label(wanted, structure=np.ones((3, 3), bool))
        seed_stats, seed_first, n_found = loops.seeds(peaks, labels, excluded, distance)
        assert n_found == n_markers
        expected_stats, expected_first = loops.label_stats(markers, n_markers, distance)
        assert np.array_equal(seed_stats[1:], expected_stats[1:]) and np.array_equal(seed_first, expected_first)


def test_the_compiled_loops_are_cached_where_numba_cache_dir_says(tmp_path):
    """The README's NUMBA_CACHE_DIR: a fresh process finding cells writes numba's cache there, so the next one
    loads the loops instead of compiling them."""
    import subprocess
    import sys

    code = (
        "from lsm_core.imaging.synthetic import make_field; from lsm_core.imaging.cells import find_cells; "
        "field, _ = make_field('lsm', seed=0, shape=(256, 256), n_cells=3, n_debris=0); print(len(find_cells(field)))"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == 3
    assert list((tmp_path / "numba").rglob("*.nbi")), "no numba cache index written"


def test_the_merge_tree_loop_matches_python():
    """cell_loops.merge_tree: the union-find _merge_shallow ran in Python, written out."""
    from lsm_core.imaging import cell_loops as loops

    rng = np.random.default_rng(2)
    for _ in range(30):
        n = int(rng.integers(2, 30))
        m = int(rng.integers(0, 60))
        lo = rng.integers(1, n, m)
        hi = np.minimum(lo + rng.integers(1, 4, m), n - 1)
        keep = lo < hi
        lo, hi = lo[keep].astype(np.int64), hi[keep].astype(np.int64)
        contact = np.round(rng.random(len(lo)) * 4, 1).astype(np.float32)
        height = np.round(rng.random(n) * 5, 1).astype(np.float32)
        parent, top = list(range(n)), height.astype(np.float64).tolist()

        def root(i, parent=parent):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for k in np.argsort(-contact, kind="stable").tolist():
            ra, rb = root(int(lo[k])), root(int(hi[k]))
            if ra != rb and min(top[ra], top[rb]) - float(contact[k]) < 1.0:
                parent[max(ra, rb)] = min(ra, rb)
                top[min(ra, rb)] = max(top[ra], top[rb])
        assert loops.merge_tree(lo, hi, contact, height, 1.0).tolist() == [root(i) for i in range(n)]


def test_outlines_are_simplified_by_douglas_peucker():
    """_simplify (Douglas-Peucker in a compiled loop) keeps the vertices the numpy version it replaced kept (written
    out here), on noisy closed outlines and on the half-pixel grid find_contours gives."""
    from lsm_core.imaging.cells import _simplify

    def reference(points, tolerance):
        keep = np.zeros(len(points), bool)
        keep[0] = keep[-1] = True
        stack = [(0, len(points) - 1)]
        while stack:
            a, b = stack.pop()
            if b - a < 2:
                continue
            seg, rel = points[b] - points[a], points[a + 1 : b] - points[a]
            norm = float(np.hypot(*seg))
            dist = np.abs(rel[:, 0] * seg[1] - rel[:, 1] * seg[0]) / norm if norm > 0 else np.hypot(*rel.T)
            k = int(np.argmax(dist))
            if dist[k] > tolerance:
                keep[a + 1 + k] = True
                stack += [(a, a + 1 + k), (a + 1 + k, b)]
        return points[keep]

    rng = np.random.default_rng(3)
    for k in range(200):
        n = int(rng.integers(3, 150))
        t = np.sort(rng.random(n)) * 2 * np.pi
        points = np.stack([np.sin(t) * 20 + rng.normal(0, 1, n), np.cos(t) * 15 + rng.normal(0, 1, n)], axis=1)
        if k % 2:
            points = np.round(points * 2) / 2
        points = np.vstack([points, points[:1]])
        for tolerance in (0.5, 2.0):
            kept = _simplify(points, tolerance)
            assert np.array_equal(kept, reference(points, tolerance)) and 3 <= len(kept) <= len(points)


def test_outlines_are_filled_as_scikit_image_draws_polygons():
    """cell_loops.fill_polygon gives the pixels skimage.draw.polygon gives (inside, on an edge or on a vertex),
    for noisy outlines partly outside the image and on the half-pixel and whole-pixel grids, and the label
    image of a packed field is the one drawn with scikit-image."""
    from skimage.draw import polygon

    from lsm_core.imaging import cell_loops as loops
    from tests.packed_cells import packed_field

    rng = np.random.default_rng(4)
    for k in range(300):
        n = int(rng.integers(3, 40))
        t = np.sort(rng.random(n)) * 2 * np.pi
        cy, cx = rng.uniform(-5, 40, 2)
        rows = cy + np.sin(t) * rng.uniform(2, 20) + rng.normal(0, 2, n)
        cols = cx + np.cos(t) * rng.uniform(2, 20) + rng.normal(0, 2, n)
        if k % 3 == 1:
            rows, cols = np.round(rows * 2) / 2, np.round(cols * 2) / 2
        if k % 3 == 2:
            rows, cols = np.round(rows), np.round(cols)
        rows, cols = np.r_[rows, rows[:1]], np.r_[cols, cols[:1]]
        expected = np.zeros((37, 41), np.int32)
        rr, cc = polygon(rows, cols, shape=expected.shape)
        expected[rr, cc] = 7
        got = np.zeros_like(expected)
        loops.fill_polygon(got, rows, cols, 7)
        assert np.array_equal(got, expected), k
    field, _ = packed_field(201, 0.65, size_um=200.0)
    found = find_cells(field, FindParams(pixel_size_um=0.65))
    drawn = np.zeros(field.shape, np.int32)
    for i, outline in enumerate(found.outlines, start=1):
        rr, cc = polygon(outline[:, 1], outline[:, 0], shape=field.shape)
        drawn[rr, cc] = i
    assert len(found) > 10 and np.array_equal(found.labels, drawn)


def test_the_longest_contour_is_scikit_image_s():
    """cell_loops.longest_contour: find_contours(mask, 0.5)'s longest contour, point for point and in the same
    order (Douglas-Peucker then keeps the same vertices), on masks with holes, saddles and many pieces."""
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    from lsm_core.imaging import cell_loops as loops

    rng = np.random.default_rng(5)
    for k in range(400):
        shape = tuple(int(v) for v in rng.integers(1, 40, 2))
        if k % 4:
            mask = ndi.binary_dilation(rng.random(shape) > rng.uniform(0.8, 0.99), iterations=int(rng.integers(0, 3)))
        else:
            mask = rng.random(shape) > 0.5  # saddles everywhere
        padded = np.pad(mask.astype(np.uint8), 1)
        contours = find_contours(padded.astype(float), 0.5)
        expected = max(contours, key=len) if contours else np.zeros((0, 2))
        assert np.array_equal(loops.longest_contour(padded), expected), k
