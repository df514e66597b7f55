"""Cell finding on a 2048 x 2048 16-bit field of view (target: well under a second on two CPU cores).

Prints the median time of ``find_cells`` over several synthetic fields, and the same as a ratio to a
baseline measured in this process: one Gaussian blur (sigma 2) of the same full-size image with scipy
(goal: at most 60 ms per field on one core). Recall and precision on those fields at IoU >= 0.5: a true
cell's box and a reported box match when their intersection over union reaches 0.5, each at most once
(greedy, best IoU first).

Then the same synthetic cells in positive phase contrast, found with ``modality="phase"`` and with auto.

Then real cells: the brightfield Jurkat montage of ``../shared/data/brightfield`` (a 30 x 30 grid of 40 x 40
px tiles, one round cell near the centre of each, about 0.5 um per pixel; see its README). A tile counts as
found when exactly one reported cell has its centre within 10 px of the tile's centre; precision is the share
of reported cells that are such a tile's one cell. The truth gives centres, not outlines: this is not IoU.
Measured at the stated 0.5 um/px and at 0.4 and 0.6 (a calibration 20 % off).

Then packed real cells (tests/packed_cells.py): the montage's cells cut along their own outlines, 1.3x the
area, turned at random angles, placed touching in colonies of 2 to 6 on the montage's background, written at
0.33, 0.5 and 0.65 um/px. Truth: one outline per placed cell; a cell is found when a kept cell's mask (the
full-resolution labels) has IoU >= 0.5 with its outline. With the time of find_cells against a Gaussian blur
(sigma 2) of the same field.

Usage: python bench/cells.py [--fields K] [--only packed]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from lsm_core.imaging import synthetic  # noqa: E402
from lsm_core.imaging.cells import find_cells, matched_boxes  # noqa: E402
from lsm_core.imaging.images import decode_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fields", type=int, default=5)
    parser.add_argument("--only", choices=["packed", "jurkat"])
    args = parser.parse_args()
    if args.only == "packed":
        return packed(args.fields)
    if args.only == "jurkat":
        return jurkat()
    find_times, read_times, blur_times, counts = [], [], [], []
    matched = reported = true = 0
    for k in range(args.fields):
        field, truth = synthetic.make_field("lsm", seed=100 + k)
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.round(field * 4095).astype(np.uint16))
        data = buf.getvalue()
        t0 = time.perf_counter()
        (record,) = decode_bytes("field.tif", data)
        t1 = time.perf_counter()
        found = find_cells(record.pixels)
        t2 = time.perf_counter()
        ndi.gaussian_filter(record.pixels, 2.0)
        t3 = time.perf_counter()
        read_times.append(t1 - t0)
        find_times.append(t2 - t1)
        blur_times.append(t3 - t2)
        counts.append((len(found), len(truth)))
        matched += matched_boxes([(c.x, c.y, c.w, c.h) for c in truth], found.boxes.tolist())
        reported += len(found)
        true += len(truth)
    find_s, read_s, blur_s = (float(np.median(v)) for v in (find_times, read_times, blur_times))
    print(f"{args.fields} fields 2048x2048 16-bit, cells found/true: {counts}")
    print(f"decode TIFF: {read_s * 1000:.0f} ms")
    print(f"gaussian blur sigma 2 (baseline): {blur_s * 1000:.0f} ms")
    print(f"find_cells: {find_s * 1000:.0f} ms")
    print(f"ratio find_cells/blur: {find_s / blur_s:.2f}")
    print(f"at IoU >= 0.5: recall {matched / true:.3f}, precision {matched / max(1, reported):.3f}")
    phase(args.fields)
    jurkat()
    packed(args.fields)


def phase(n_fields: int) -> None:
    """Synthetic positive phase-contrast fields (the same generator's cells, dark in bright halos), found with
    --modality phase and with auto (the relief detector, which takes the halo with each cell)."""
    from lsm_core.imaging.cells import FindParams

    for modality in ("phase", "auto"):
        hit = true = reported = 0
        times = []
        for k in range(n_fields):
            field, truth = synthetic.make_field("lsm", seed=100 + k, modality="phase")
            pixels = (np.round(field * 4095) / 4095).astype(np.float32)
            t0 = time.perf_counter()
            found = find_cells(pixels, FindParams(modality=modality))
            times.append(time.perf_counter() - t0)
            hit += matched_boxes([(c.x, c.y, c.w, c.h) for c in truth], found.boxes.tolist())
            true += len(truth)
            reported += len(found)
        print(
            f"phase contrast, modality {modality}: recall {hit / true:.3f}, precision {hit / max(1, reported):.3f} "
            f"at IoU >= 0.5; {np.median(times) * 1000:.0f} ms per field"
        )


JURKAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "brightfield" / "jurkat_G1_montage.tif"


def jurkat() -> None:
    from lsm_core.imaging.cells import FindParams
    from lsm_core.imaging.images import read_path

    if not JURKAT.is_file():
        print(f"real cells: {JURKAT} is missing; skipped")
        return
    (record,) = read_path(JURKAT)
    pixels = record.pixels
    for um in (0.4, 0.5, 0.6):
        t0 = time.perf_counter()
        found = find_cells(pixels, FindParams(pixel_size_um=um))
        seconds = time.perf_counter() - t0
        per_tile: dict[tuple[int, int], int] = {}
        for x, y in found.centres:
            i, j = int(x // 40), int(y // 40)
            if abs(x - (40 * i + 19.5)) <= 10 and abs(y - (40 * j + 19.5)) <= 10:
                per_tile[(i, j)] = per_tile.get((i, j), 0) + 1
        hits = sum(1 for n in per_tile.values() if n == 1)
        print(
            f"Jurkat montage (900 cells) at {um} um/px: {len(found)} reported, recall {hits / 900:.3f}, precision "
            f"{hits / max(1, len(found)):.3f}, dropped {found.dropped}; {seconds * 1000:.0f} ms for 1200x1200"
        )


def packed(n_fields: int) -> None:
    from lsm_core.imaging.cells import FindParams
    from tests.packed_cells import mask_matches, packed_field

    if not JURKAT.is_file():
        print(f"packed real cells: {JURKAT} is missing; skipped")
        return
    for um in (0.33, 0.5, 0.65):
        hit = true = reported = clumps = 0
        ratios, times, outline_times = [], [], []
        for k in range(n_fields):
            field, truth = packed_field(200 + k, um, size_um=600.0)
            t0 = time.perf_counter()
            found = find_cells(field, FindParams(pixel_size_um=um))
            t1 = time.perf_counter()
            ndi.gaussian_filter(field, 2.0)
            t2 = time.perf_counter()
            ratios.append((t1 - t0) / (t2 - t1))
            times.append(t1 - t0)
            t3 = time.perf_counter()
            labels = found.labels  # drawn from the outlines, traced now
            outline_times.append(time.perf_counter() - t3)
            assert labels is not None or len(found) == 0
            hit += mask_matches(truth, labels) if labels is not None else 0
            true += int(truth.max())
            reported += len(found)
            clumps += found.dropped.get("clump", 0)
        print(
            f"packed real cells at {um} um/px ({n_fields} fields of {field.shape[0]}x{field.shape[1]}, {true} cells): "
            f"recall {hit / true:.3f}, precision {hit / max(1, reported):.3f} at mask IoU >= 0.5, {clumps} clumps "
            f"dropped; find_cells {np.median(times) * 1000:.0f} ms, {np.median(ratios):.2f} of a blur; outlines and "
            f"labels {np.median(outline_times) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
