"""Cell finding on a 2048 x 2048 16-bit field of view (target: well under a second on two CPU cores).

Prints the median time of ``find_cells`` over several synthetic fields, and the same as a ratio to a
baseline measured in this process: one Gaussian blur (sigma 2) of the same full-size image with scipy.

Usage: python bench/cells.py [--fields K]
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
from lsm_core.imaging.cells import find_cells  # noqa: E402
from lsm_core.imaging.images import decode_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fields", type=int, default=5)
    args = parser.parse_args()
    find_times, read_times, blur_times, counts = [], [], [], []
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
    find_s, read_s, blur_s = (float(np.median(v)) for v in (find_times, read_times, blur_times))
    print(f"{args.fields} fields 2048x2048 16-bit, cells found/true: {counts}")
    print(f"decode TIFF: {read_s * 1000:.0f} ms")
    print(f"gaussian blur sigma 2 (baseline): {blur_s * 1000:.0f} ms")
    print(f"find_cells: {find_s * 1000:.0f} ms")
    print(f"ratio find_cells/blur: {find_s / blur_s:.2f}")


if __name__ == "__main__":
    main()
