"""Microscope file formats: the cost of reading a field and finding its cells, per format, and the peak memory
of classifying one large OME-TIFF.

Speed. One synthetic 2048 x 2048 uint16 field (60 cells) is written as a plain TIFF (the baseline), OME-TIFF
(uncompressed and zlib), ImageJ TIFF, PNG and OME-Zarr (a folder and a ZIP of it); and as a 2-channel
(GFP reporter, DIC) x 3-plane stack (the middle plane sharp) in OME-TIFF, ImageJ hyperstack and OME-Zarr. Each
file is read through the project's own path (``read_path``, as ``classify`` reads its inputs) and its cells
found (``find_cells``; the reporter channel measured in them, as ``classify`` does). Every round times the
baseline and every format in a rotated order; a format's ratio is the median over rounds of its time over the
baseline's in the same round (the machine is noisy). CZI, ND2 and LIF cannot be written here: the real files
under ``../shared/data/vendor`` are timed instead against a plain TIFF of the same pixels (the planes their
read chose, written once), at the same pixel size.

Memory. A synthetic OME-TIFF of about ``--gb`` GB (default 4; ``--quick``: 0.4) is written in a temporary
folder (removed at the end): scenes x time points of 2 channels (GFP, DIC) x 4 z planes of 2048 x 2048
uint16, 0.2 um per pixel. Each of these runs in a fresh interpreter (started through a small wrapper, so that
the peak RSS, getrusage's ru_maxrss, is that child's own), against the goal of 1.5 GB:

* floor: the imports and one field's cells found and measured, from memory (no file);
* lazy: the library's lazy API (``readers.open_microscope_file``) on every image of the file: the best-focused
  DIC plane, its cells, the GFP plane measured in them; one plane at a time;
* classify: the ``classify`` command (``lsm_core.cli.main``, what ``python -m lsm_core classify`` runs) with
  a tiny random model, LSM_MAX_FILE_BYTES raised above the file's size (the default, 2 GiB, refuses a larger
  file: said when it does);
* worker: what the lab worker does for one image (``lab/tasks/classify.py``), with its imports and the tiny
  model loaded: the stored file opened where it lies (``BlobStore.file``), ``decode_page_channels``,
  ``find_cells``, ``measure``, the prediction, for the first ``--worker-images`` images.

Before these: the RSS of the imports step by step (the command and the worker import torch, pandas, ...), and
the peak of ``images.iter_path`` (how ``classify`` reads a file) on 500 MB of the file, as a multiple of it.
A thread in each child samples its RSS every few milliseconds and keeps the call stack at the highest sample;
for a run over the goal, the stages in which the high-water mark rose are listed.

Usage: python bench/formats.py [--rounds R] [--quick] [--gb G] [--worker-images K] [--no-speed] [--no-memory]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from lsm_core.imaging import planes, readers, synthetic  # noqa: E402
from lsm_core.imaging.calibration import Calibration, CalibrationSource  # noqa: E402
from lsm_core.imaging.cells import DEFAULT_PIXEL_SIZE_UM, FindParams, find_cells  # noqa: E402
from lsm_core.imaging.images import read_path  # noqa: E402
from lsm_core.imaging.planes import to_grey_float  # noqa: E402
from lsm_core.imaging.readers.archives import iter_path  # noqa: E402
from lsm_core.imaging.readers.base import Limits, ReadOptions  # noqa: E402
from lsm_core.imaging.reporters import measure  # noqa: E402

SIDE = 2048
PIXEL_UM = DEFAULT_PIXEL_SIZE_UM  # 0.2: the synthetic fields' calibration, stated by the formats that can
GOAL_MB = 1500
VENDOR = ROOT.parent / "shared" / "data" / "vendor"
MB = 1e6

# ------------------------------------------------------------------------------------------ synthetic data


def field_planes(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(DIC uint16 12-bit in 16, GFP uint16, cells): a synthetic field and a reporter bright in its cells."""
    field, truth = synthetic.make_field("lsm", seed=seed, shape=(SIDE, SIDE))
    dic = np.round(field * 4095).astype(np.uint16)
    gfp = np.full_like(dic, 200)
    for i, cell in enumerate(truth):
        r = int(0.8 * max(cell.w, cell.h)) + 1
        y0, x0 = max(0, int(cell.cy) - r), max(0, int(cell.cx) - r)
        yy, xx = np.ogrid[y0 : int(cell.cy) + r + 1, x0 : int(cell.cx) + r + 1]
        inside = (xx - cell.cx) ** 2 + (yy - cell.cy) ** 2 <= (0.8 * max(cell.w, cell.h)) ** 2
        gfp[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]][inside] = 600 + 20 * (i % 40)
    return dic, gfp, len(truth)


def blurred(plane: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(plane, sigma) if sigma else plane


def ome_metadata(channels: list[str], name: str | None = None) -> dict:
    meta = {
        "axes": "TCZYX",
        "Channel": {"Name": channels},
        "PhysicalSizeX": PIXEL_UM,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": PIXEL_UM,
        "PhysicalSizeYUnit": "µm",
    }
    if name:
        meta["Name"] = name
    return meta


def write_zarr(folder: Path, data: np.ndarray, channels: list[str]) -> None:
    """OME-Zarr NGFF 0.4 (zarr v2), TCZYX, 1024 x 1024 chunks, zarr's default codec (Blosc lz4)."""
    import zarr

    group = zarr.open_group(str(folder), mode="w", zarr_format=2)
    array = group.create_array("0", shape=data.shape, chunks=(1, 1, 1, 1024, 1024), dtype=data.dtype)
    array[...] = data
    axes = [
        {"name": n, "type": k, **({"unit": "micrometer"} if n in "yx" else {})}
        for n, k in zip("tczyx", ["time", "channel", "space", "space", "space"])
    ]
    scale = [1.0, 1.0, 1.0, PIXEL_UM, PIXEL_UM]
    multiscales = [
        {
            "version": "0.4",
            "name": "field",
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]
    group.attrs.update({"multiscales": multiscales, "omero": {"channels": [{"label": c} for c in channels]}})


def zip_of(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, f"{folder.name}/{file.relative_to(folder).as_posix()}")
    return target


def write_speed_files(folder: Path) -> tuple[Path, list[tuple[str, Path, ReadOptions]], int]:
    """The baseline plain TIFF and (label, path, options) of every format of the same field."""
    from PIL import Image

    dic, gfp, n_cells = field_planes(seed=100)
    base = folder / "plain.tif"
    tifffile.imwrite(base, dic)  # as synthetic.write_dataset writes its fields
    one = dic[np.newaxis, np.newaxis, np.newaxis]
    files: list[tuple[str, Path, ReadOptions]] = []
    tifffile.imwrite(folder / "one.ome.tif", one, ome=True, metadata=ome_metadata(["DIC"]))
    files.append(("OME-TIFF", folder / "one.ome.tif", ReadOptions()))
    tifffile.imwrite(folder / "one_z.ome.tif", one, ome=True, compression="zlib", metadata=ome_metadata(["DIC"]))
    files.append(("OME-TIFF, zlib", folder / "one_z.ome.tif", ReadOptions()))
    ij = {"axes": "TZCYX", "unit": "um"}
    tifffile.imwrite(folder / "one_ij.tif", one, imagej=True, resolution=(1 / PIXEL_UM, 1 / PIXEL_UM), metadata=ij)
    files.append(("ImageJ TIFF", folder / "one_ij.tif", ReadOptions()))
    Image.fromarray(dic).save(folder / "one.png")
    files.append(("PNG 16-bit", folder / "one.png", ReadOptions()))
    write_zarr(folder / "one.ome.zarr", one, ["DIC"])
    files.append(("OME-Zarr folder", folder / "one.ome.zarr", ReadOptions()))
    files.append(("OME-Zarr ZIP (stored)", zip_of(folder / "one.ome.zarr", folder / "one.ome.zarr.zip"), ReadOptions()))

    # 2 channels (GFP, DIC) x 3 planes, the middle one sharp: best focus over 3 planes, the GFP plane measured
    planes = [[gfp, blurred(dic, 0 if z == 1 else 6)] for z in range(3)]  # Z C Y X
    stack = np.moveaxis(np.array(planes), 1, 0)[np.newaxis]  # T C Z Y X
    dic_channel = ReadOptions(channel="1")  # the ImageJ writer names no channel: by index for every format
    tifffile.imwrite(folder / "stack.ome.tif", stack, ome=True, metadata=ome_metadata(["GFP", "DIC"]))
    files.append(("OME-TIFF 2 ch x 3 z", folder / "stack.ome.tif", dic_channel))
    files.append(("OME-TIFF 2 ch x 3 z, --z 1 (no focus search)", folder / "stack.ome.tif", replace(dic_channel, z=1)))
    tifffile.imwrite(
        folder / "stack_ij.tif",
        np.ascontiguousarray(stack.transpose(0, 2, 1, 3, 4)),  # ImageJ's order: T Z C Y X
        imagej=True,
        resolution=(1 / PIXEL_UM, 1 / PIXEL_UM),
        metadata=ij,
    )
    files.append(("ImageJ hyperstack 2 ch x 3 z", folder / "stack_ij.tif", dic_channel))
    write_zarr(folder / "stack.ome.zarr", stack, ["GFP", "DIC"])
    files.append(("OME-Zarr folder 2 ch x 3 z", folder / "stack.ome.zarr", dic_channel))
    return base, files, n_cells


# ------------------------------------------------------------------------------------------------- speed


def read_and_find(path: Path, options: ReadOptions, params: FindParams | None = None) -> tuple[float, int, int, str]:
    """Seconds per field to read ``path`` through the project's path and find (and measure) its cells; the
    number of fields, of cells, and the notes of the first record. ``params`` forces the pixel size."""
    from lsm_core.ml.classify import params_for_record

    fields = cells = 0
    notes = ""
    t0 = time.perf_counter()
    for record in read_path(path, options=options):
        if not record.ok or record.pixels is None:
            raise RuntimeError(f"{path.name}: {record.error}")
        mine = params or params_for_record(FindParams(), record)
        found = find_cells(record.pixels, mine)
        if record.others and found.labels is not None:
            measure(found.labels, len(found), record.others, mine.pixel_size_um)
        if not fields:
            notes = "; ".join(record.notes)
        fields += 1
        cells += len(found)
    return (time.perf_counter() - t0) / max(fields, 1), fields, cells, notes


def rounds_of(
    base: tuple[Path, ReadOptions],
    entries: list[tuple[str, Path, ReadOptions]],
    rounds: int,
    params: FindParams | None = None,
) -> tuple[list[float], dict[str, list[float]], dict[str, tuple[int, int, str]]]:
    """Per round: the baseline and every entry in a rotated order. Returns the baseline's times, every entry's
    times and what it found (fields, cells, notes of its first record)."""
    read_and_find(*base, params)  # warm-up: page cache, imports, first-call costs
    for _, path, options in entries:
        read_and_find(path, options, params)
    base_times: list[float] = []
    times: dict[str, list[float]] = {label: [] for label, _, _ in entries}
    found: dict[str, tuple[int, int, str]] = {}
    order: list[tuple[str, Path, ReadOptions] | None] = [None, *entries]
    for r in range(rounds):
        k = r % len(order)
        for item in order[k:] + order[:k]:
            if item is None:
                seconds, n_fields, n_cells, notes = read_and_find(*base, params)
                base_times.append(seconds)
                found[""] = (n_fields, n_cells, notes)
            else:
                label, path, options = item
                seconds, n_fields, n_cells, notes = read_and_find(path, options, params)
                times[label].append(seconds)
                found[label] = (n_fields, n_cells, notes)
    return base_times, times, found


def print_speed_table(title: str, base_label: str, base: list[float], times: dict[str, list[float]], found) -> None:
    print(f"\n{title}")
    print(f"{'format':<46} {'ms/field':>9} {'ratio':>6}  found")
    rows = [(base_label, base, [1.0], found[""])]
    rows += [(label, v, [a / b for a, b in zip(v, base)], found[label]) for label, v in times.items()]
    for label, values, ratios, (n_fields, n_cells, notes) in rows:
        what = f"{n_fields} field{'s' if n_fields != 1 else ''}, {n_cells} cells" + (f" ({notes})" if notes else "")
        print(f"{label:<46} {np.median(values) * 1000:9.1f} {np.median(ratios):6.2f}  {what}")


def speed_synthetic(tmp: Path, rounds: int) -> None:
    folder = tmp / "speed"
    folder.mkdir()
    base, files, n_cells = write_speed_files(folder)
    base_times, times, found = rounds_of((base, ReadOptions()), files, rounds)
    print_speed_table(
        f"speed: one synthetic {SIDE}x{SIDE} uint16 field ({n_cells} cells), read + cells found (+ the reporter "
        f"measured) per field; median of {rounds} rounds, ratio to the plain TIFF in the same round",
        "plain TIFF (baseline)",
        base_times,
        times,
        found,
    )


def speed_vendor(tmp: Path, rounds: int) -> None:
    if not VENDOR.is_dir():
        print(f"\nvendor formats: {VENDOR} is absent: CZI, ND2 and LIF not timed (they cannot be written here)")
        return
    wanted = [
        ("Zeiss CZI", "*.czi", ReadOptions()),
        ("Nikon ND2", "*.nd2", ReadOptions(channel="0")),  # its channels name no transmitted light
        ("Leica LIF", "*.lif", ReadOptions()),
        ("OME-TIFF (real, LZW)", "*.ome.tiff", ReadOptions()),
        ("ImageJ TIFF (real)", "*_imagej.tiff", ReadOptions()),
    ]
    where = VENDOR.relative_to(ROOT.parent)
    print(f"\nvendor formats (real files under ../{where}; CZI, ND2 and LIF cannot be written here)")
    for label, pattern, options in wanted:
        paths = sorted(VENDOR.glob(pattern))
        if not paths:
            print(f"{label}: no {pattern} file there: not timed")
            continue
        path = paths[0]
        records = list(read_path(path, options=options))
        bad = [r.error for r in records if not r.ok]
        if bad or not records:
            print(f"{label} ({path.name}): not read: {bad[0] if bad else 'no image'}")
            continue
        pixel_size = records[0].pixel_size_um or PIXEL_UM
        params = FindParams().at(Calibration(pixel_size, CalibrationSource.USER))
        # the planes its read chose, as a plain TIFF of the same pixels (one page per image)
        base = tmp / f"same_pixels_{path.stem}.tif"
        with tifffile.TiffWriter(base) as tw:
            for r in records:
                assert r.pixels is not None
                bits = r.bit_depth or 16
                dtype = np.uint8 if bits <= 8 else np.uint16
                tw.write(np.round(r.pixels * (2**bits - 1)).astype(dtype), metadata=None)
        shape = "x".join(str(v) for v in records[0].pixels.shape[::-1])
        base_times, times, found = rounds_of((base, ReadOptions()), [(label, path, options)], rounds * 4, params)
        n_fields, n_cells, notes = found[label]
        ratio = float(np.median([v / b for v, b in zip(times[label], base_times)]))
        print(
            f"{label} ({path.name}, {n_fields} image{'s' if n_fields != 1 else ''} of {shape}"
            f"{', ' + notes if notes else ''}): {np.median(times[label]) * 1000:.1f} ms/field against "
            f"{np.median(base_times) * 1000:.1f} ms for the plain TIFF of the same pixels: ratio {ratio:.2f}"
        )


# ------------------------------------------------------------------------------------------------ memory


def big_layout(gb: float) -> tuple[int, int, int, int]:
    """(scenes, time points, channels, z planes) of a file of about ``gb`` GB of 2048 x 2048 uint16 planes."""
    channels, depth = 2, 4
    per_image = channels * depth * SIDE * SIDE * 2
    images = max(1, round(gb * 1e9 / per_image))
    scenes = 4 if images >= 8 else 2 if images >= 2 else 1
    return scenes, math.ceil(images / scenes), channels, depth


def write_big_ome_tiff(path: Path, gb: float) -> tuple[int, int, int, int, int]:
    """The synthetic OME-TIFF of the memory test, written plane by plane (a few fields, each with its own
    sharp plane, repeated); returns (scenes, T, C, Z, cells per field)."""
    scenes, size_t, size_c, size_z = big_layout(gb)
    pool = []
    n_cells = 0
    for k in range(3):
        dic, gfp, n_cells = field_planes(seed=200 + k)
        pool.append(([blurred(dic, 3.0 * d) for d in range(size_z)], gfp))

    def planes(scene: int) -> Iterator[np.ndarray]:
        for t in range(size_t):
            dics, gfp = pool[(scene + t) % len(pool)]
            sharp = (scene + t) % size_z
            for c in range(size_c):
                for z in range(size_z):
                    yield gfp if c == 0 else dics[abs(z - sharp)]

    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        for s in range(scenes):
            tw.write(
                planes(s),
                shape=(size_t, size_c, size_z, SIDE, SIDE),
                dtype=np.uint16,
                metadata=ome_metadata(["GFP", "DIC"], name=f"scene {s + 1}"),
            )
    return scenes, size_t, size_c, size_z, n_cells


MEASURE = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:])\n"
    "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def child_peak(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, float, dict]:
    """(exit status, peak RSS in MB, what the child reported) of ``bench/formats.py --child ARGS`` in a fresh
    interpreter started by a small one that reports its child's ru_maxrss (so this process's memory, which a
    child started from it could inherit in its count, stays out)."""
    result = Path(env["TMPDIR"]) / "child.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", MEASURE, sys.executable, str(Path(__file__).resolve()), "--child", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    try:
        code, kb = out.stdout.strip().splitlines()[-1].split()
    except (IndexError, ValueError):
        raise RuntimeError(f"the child gave no figure: {out.stdout[-2000:]} {out.stderr[-4000:]}") from None
    report = json.loads(result.read_text()) if result.is_file() else {}
    if int(code) != 0:
        report.setdefault("error", out.stderr.strip()[-1500:])
    return int(code), int(kb) * 1024 / MB, report


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler(threading.Thread):
    """Samples this process's RSS every few milliseconds; keeps the main thread's stack at the highest, and
    each time the highest rises by another ``step``, the stage it rose in."""

    def __init__(self, interval: float = 0.004, step: float = 32 * MB) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.step = step
        self.peak = 0
        self.where: list[str] = []
        self.phase = ""
        self.peak_phase = ""
        self.ready = 0  # RSS when the imports and the model are done, before the file is touched
        self.growth: list[tuple[float, str]] = []  # (RSS MB, stage) as the high-water mark rose
        self._logged = 0.0
        self._stop_event = threading.Event()
        self._main = threading.main_thread().ident

    def mark_ready(self) -> None:
        self.ready = _rss()

    def run(self) -> None:
        try:
            _rss()
        except OSError:  # no /proc: only ru_maxrss is reported
            return
        while not self._stop_event.is_set():
            rss = _rss()
            if rss > self.peak:
                self.peak = rss
                self.peak_phase = self.phase
                self.where = _project_frames(self._main_stack())
                if rss > self._logged + self.step:
                    self._logged = rss
                    what = stage(self.where)
                    self.growth.append((rss / MB, what if what != "?" else f"[{self.phase}]"))
            time.sleep(self.interval)

    def _main_stack(self) -> list[tuple[str, int, str]]:
        """The main thread's stack, outermost first, as (file, line, function): taken by walking its frames
        without letting go of the GIL (no source lines read), so that no frame, and no array in one, outlives
        its function because of this thread."""
        frame = sys._current_frames().get(self._main or 0)
        stack = []
        while frame is not None:
            stack.append((frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_name))
            frame = frame.f_back
        return stack[::-1]

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _project_frames(stack: list[tuple[str, int, str]], keep: int = 14) -> list[str]:
    """The innermost frames of a stack in the project or its libraries (not this bench's driver, not the
    standard library), as "path:line function"."""
    out = []
    for filename, lineno, function in stack:
        if "site-packages" in filename:
            short = filename.split("site-packages/")[-1]
        elif filename.startswith(str(ROOT)) and not filename.endswith("bench/formats.py"):
            short = str(Path(filename).relative_to(ROOT))
        else:
            continue
        out.append(f"{short}:{lineno} {function}")
    return out[-keep:]


def stage(frames: list[str]) -> str:
    """What a stack was doing, in a few words: importing a library, or the innermost function of the project."""
    libraries = [f for f in frames if not f.startswith(("lsm_core/", "db/"))]
    imports = [f for f in libraries if f.endswith(" <module>")]
    if imports:
        return "import " + imports[0].split("/")[0].removesuffix(".py")
    project = [f for f in frames if f.startswith(("lsm_core/", "db/"))]
    if not project:
        return frames[-1].split(":")[0] if frames else "?"
    path, _, rest = project[-1].partition(":")
    inner = (
        libraries[-1].split(" ")[-1] if libraries and frames.index(libraries[-1]) > frames.index(project[-1]) else ""
    )
    return f"{path} {rest.split(' ')[-1]}" + (f" ({inner})" if inner else "")


def stages(growth: list[tuple[float, str]], ready_mb: float) -> list[tuple[float, float, str]]:
    """The rise of the high-water mark after ``ready_mb``, as (from MB, to MB, stage), consecutive samples of
    one stage merged."""
    out: list[tuple[float, float, str]] = []
    last = ready_mb
    for mb, what in growth:
        if mb <= ready_mb:
            continue
        if out and out[-1][2] == what:
            out[-1] = (out[-1][0], mb, what)
        else:
            out.append((last, mb, what))
        last = mb
    return out


def available_bytes() -> float:
    """MemAvailable of /proc/meminfo (infinite where there is none): a run that would not fit is not started."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return math.inf


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


def child(mode: str, file: str, model: str, images: int, result: Path) -> int:
    """One measured run (see the module docstring); writes what it saw to ``result`` as JSON."""
    import resource

    sampler = PeakSampler()
    sampler.start()
    report: dict = {"mode": mode}
    n = 0
    code = 0
    params = FindParams()
    t0 = time.perf_counter()
    try:
        if mode == "imports":  # what the command's and the worker's imports cost, step by step
            import importlib

            steps = [("numpy, scipy, scikit-image, tifffile, lsm_core.imaging", _rss())]
            for label, modules in (
                ("+ torch", ["torch"]),
                ("+ torchvision", ["torchvision"]),
                ("+ pandas, pyarrow", ["pandas", "pyarrow"]),
                ("+ the rest of the classify command's imports", ["lsm_core.cli"]),
            ):
                for name in modules:
                    importlib.import_module(name)
                if label.startswith("+ the rest"):
                    from lsm_core import cli

                    cli.build_parser()
                steps.append((label, _rss()))
            report["steps"] = [(label, rss / MB) for label, rss in steps]
            sampler.mark_ready()
        elif mode == "floor":
            sampler.mark_ready()
            t0 = time.perf_counter()
            sampler.phase = "one field from memory"
            dic, gfp, _ = field_planes(seed=200)
            found = find_cells(to_grey_float(dic), params)
            measure(found.labels, len(found), {"GFP": gfp.astype(np.float32)}, PIXEL_UM)
        elif mode == "iter_path":  # how the command reads a file: its bytes, at once
            size = Path(file).stat().st_size
            sampler.mark_ready()
            sampler.phase = "iter_path"
            raw = next(iter_path(file, Limits(max_file_bytes=max(Limits().max_file_bytes, size + 1))))
            report["bytes"] = len(raw.data or b"")
            del raw
        elif mode == "lazy":
            sampler.mark_ready()
            t0 = time.perf_counter()
            with readers.open_microscope_file(file) as mf:
                for scene in mf.scenes:
                    c = planes.transmitted_channel(scene.channels)
                    assert c is not None
                    for t in range(scene.sizes["T"]):
                        sampler.phase = f"scene {scene.index + 1} t {t + 1}: best focus"
                        z = planes.best_focus(mf.z_planes(scene.index, t, c))[0] if scene.sizes["Z"] > 1 else 0
                        sampler.phase = f"scene {scene.index + 1} t {t + 1}: cells"
                        grey = to_grey_float(mf.plane(scene.index, t, c, z))
                        found = find_cells(grey, params)
                        del grey
                        sampler.phase = f"scene {scene.index + 1} t {t + 1}: reporters"
                        others = {
                            name: np.asarray(mf.plane(scene.index, t, k, z), np.float32)
                            for k, name in enumerate(scene.channels)
                            if k != c
                        }
                        if found.labels is not None:
                            measure(found.labels, len(found), others, params.pixel_size_um)
                        del others, found
                        n += 1
        elif mode == "classify":
            from lsm_core import cli

            cli.build_parser()  # what the command imports before it reads anything (torch, pandas, ...)
            import lsm_core.ml.classify  # noqa: F401
            import lsm_core.ml.predict  # noqa: F401
            import lsm_core.reports.export  # noqa: F401

            sampler.mark_ready()
            t0 = time.perf_counter()
            sampler.phase = "classify"
            out = Path(result).with_suffix(".csv")
            code = cli.main(["classify", file, "--model", model, "--out", str(out)])
            with open(out, newline="") as fh:
                n = len({(row[0], row[1]) for row in list(csv.reader(fh))[1:] if row})
        elif mode == "worker":
            from lsm_core.imaging.images import decode_page_channels
            from lsm_core.lab import tasks, worker  # noqa: F401  (what a worker process imports)
            from lsm_core.ml.models import read_package
            from lsm_core.ml.predict import TorchPredictor

            tasks.tasks()
            predictor = TorchPredictor(read_package(Path(model)), device="cpu")
            sampler.mark_ready()
            t0 = time.perf_counter()
            size = Path(file).stat().st_size
            limits = Limits(max_file_bytes=max(Limits().max_file_bytes, size + 1))
            for page in range(1, images + 1):
                sampler.phase = f"image {page}: decode_page_channels"
                # as lab/tasks/classify.py: the stored file opened where it lies (BlobStore.file), one plane read
                decoded = decode_page_channels("stored", Path(file), page, limits, ReadOptions())
                pixels, others = decoded[0], decoded[1]
                del decoded
                sampler.phase = f"image {page}: cells"
                found = find_cells(pixels, params)
                if others and found.labels is not None:
                    measure(found.labels, len(found), others, params.pixel_size_um)
                del pixels, others
                if len(found):
                    predictor(found.crops)
                del found
                n += 1
        else:
            raise SystemExit(f"unknown child mode {mode!r}")
    except Exception as exc:  # said in the report
        report["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    seconds = time.perf_counter() - t0
    sampler.stop()
    report.update(
        images=n,
        seconds=seconds,
        ru_maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
        vm_hwm_mb=_vm_hwm_mb(),
        ready_mb=sampler.ready / MB,
        sampled_peak_mb=sampler.peak / MB,
        peak_phase=sampler.peak_phase,
        where=sampler.where,
        growth=sampler.growth,
    )
    Path(result).write_text(json.dumps(report))
    return code


def tiny_model(folder: Path) -> str:
    from lsm_core.classes import task_classes
    from lsm_core.ml import nets
    from lsm_core.ml.models import Manifest, ModelStore

    classes = list(task_classes("lsm"))
    package = ModelStore(folder).add(
        nets.create("tiny_cnn", len(classes)),
        Manifest(task="lsm", name="bench", classes=classes, architecture="tiny_cnn"),
    )
    return str(package.path)


def memory(tmp: Path, gb: float, worker_images: int) -> None:
    path = tmp / "big.ome.tif"
    t0 = time.perf_counter()
    scenes, size_t, size_c, size_z, n_cells = write_big_ome_tiff(path, gb)
    size = path.stat().st_size
    n_images = scenes * size_t
    print(
        f"\nmemory: synthetic OME-TIFF of {size / 1e9:.2f} GB ({scenes} scenes x T={size_t} x C={size_c} (GFP, DIC) "
        f"x Z={size_z} x {SIDE}x{SIDE} uint16, {n_images} images of {n_cells} cells), written in "
        f"{time.perf_counter() - t0:.0f} s; goal: peak RSS under {GOAL_MB} MB"
    )
    if size > Limits().max_file_bytes:  # refused before it is read: cheap to ask
        refused = next(iter_path(path))
        if refused.error:
            print(f"with the default LSM_MAX_FILE_BYTES, submit (it stores the bytes) refuses it: {refused.error}")
    model = tiny_model(tmp / "models")
    env = dict(
        os.environ,
        TMPDIR=str(tmp),  # the readers' temporary copies land here, removed with it
        LSM_DATA_DIR=str(tmp / "data"),
        LSM_DEVICE="cpu",
        LSM_MAX_FILE_BYTES=str(max(Limits().max_file_bytes, size + 1)),
        PYTHONPATH=str(ROOT),
    )
    env.pop("LSM_DATABASE_URL", None)
    result = str(tmp / "child.json")
    worker_images = max(1, min(worker_images, n_images))
    code, _, report = child_peak(["imports", "--result", result], env, timeout=600)
    if report.get("steps"):
        print("imports (RSS MB): " + "; ".join(f"{label} {mb:.0f}" for label, mb in report["steps"]))
    sample = tmp / "sample.bin"  # iter_path reads bytes, whatever they are: a part of the file will do
    with open(path, "rb") as src, open(sample, "wb") as dst:
        dst.write(src.read(min(size, 500_000_000)))
    code, peak, report = child_peak(["iter_path", "--file", str(sample), "--result", result], env, timeout=600)
    sample.unlink()
    factor = 2.0
    if report.get("bytes"):
        held = report["bytes"] / MB
        rise = peak - report["ready_mb"]
        factor = rise / held
        print(
            f"images.iter_path (how classify reads a file) on {held:.0f} MB of it: peak {rise:.0f} MB above ready, "
            f"{factor:.2f} x the bytes"
        )
    runs = [
        ("floor: one field's cells, from memory", "floor", 0.5e9),
        ("lazy API, every image, one plane at a time", "lazy", 0.5e9),
        ("classify command (tiny model), every image", "classify", 1.6e9),  # files opened where they lie
        (f"worker per image (first {worker_images})", "worker", 1.6e9),
    ]
    print(f"{'run':<44} {'ready MB':>8} {'peak MB':>8} {'goal':>5} {'s/image':>8}  the peak: stage [phase]")
    detail = []
    for label, mode, needs in runs:
        if needs > 0.8 * available_bytes():
            print(f"{label:<44} not run: it needs about {needs / MB:.0f} MB, {available_bytes() / MB:.0f} MB available")
            continue
        code, peak, report = child_peak(
            [mode, "--file", str(path), "--model", model, "--images", str(worker_images), "--result", result],
            env,
            timeout=3600,
        )
        images = (report.get("images") or 0) if mode != "floor" else 0
        per_image = f"{report['seconds'] / images:8.2f}" if images else f"{'-':>8}"
        ready = report.get("ready_mb", 0.0)
        verdict = "ok" if peak < GOAL_MB else "OVER"
        where = stage(report.get("where", []))
        print(
            f"{label:<44} {ready:8.0f} {peak:8.0f} {verdict:>5} {per_image}  {where} [{report.get('peak_phase', '')}]"
        )
        if code != 0 or "error" in report:
            print(f"    exit {code}: {report.get('error', '')}")
        sampled = report.get("sampled_peak_mb", peak)
        if peak - sampled > 64:
            print(
                f"    the highest RSS sampled was {sampled:.0f} MB: the last {peak - sampled:.0f} MB were held too "
                "briefly to be seen (while C code held the GIL)"
                + (
                    "; here: iter_path's second copy of the file, see above"
                    if mode == "classify" and report.get("ready_mb", 0.0) + factor * size / MB > sampled
                    else ""
                )
            )
        if peak >= GOAL_MB:
            detail.append((label, ready, peak, stages([tuple(g) for g in report.get("growth", [])], ready)))
    print(
        "ready: RSS after the imports (and the model), before the file is touched; peak: the child's ru_maxrss "
        "(kernel high-water mark); stage: what the main thread ran at the highest RSS sampled (every 4 ms)"
    )
    for label, ready, peak, rises in detail:
        print(
            f"\nwhere the memory of '{label}' goes: {ready:.0f} MB when ready, peak {peak:.0f} MB; "
            "the high-water mark rose"
        )
        for lo, hi, what in rises:
            if hi - lo >= 30:
                print(f"  {lo:7.0f} -> {hi:7.0f} MB (+{hi - lo:5.0f})  {what}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a 0.4 GB file for the memory test (unless --gb)")
    parser.add_argument("--gb", type=float, default=None, help="size of the memory test's OME-TIFF (default 4)")
    parser.add_argument("--worker-images", type=int, default=2, help="images the worker run reads (default 2)")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--file", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.exit(child(args.child, args.file, args.model, args.images, Path(args.result)))
    gb = args.gb if args.gb is not None else 0.4 if args.quick else 4.0
    with tempfile.TemporaryDirectory(prefix="lsm-bench-formats-") as tmp:
        if not args.no_speed:
            speed_synthetic(Path(tmp), args.rounds)
            speed_vendor(Path(tmp), args.rounds)
        if not args.no_memory:
            memory(Path(tmp), gb, args.worker_images)


if __name__ == "__main__":
    main()
