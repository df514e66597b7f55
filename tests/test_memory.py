"""Memory is bounded before anything is decoded (hardening issue, items 1, 2 and 8).

Each hostile file is small on disk and huge once decoded: 1,500 samples per pixel, twelve 25-megapixel
pages, a 100-megapixel RGB PNG, a ZIP of zero-filled members; and (issue 27) OME-Zarr, OME-TIFF and ImageJ files
declaring millions of planes, Zarr chunks and a TIFF tile that unpack to a gigabyte, a ZIP of three 386 MB
members of zeros. Each goes through the command line's
``submit`` and ``classify`` in a child process whose peak resident memory is measured (the kernel's own
count, wait4) and compared with the same command on one small valid image: the difference must stay under
400 MB. The children are forked from one process that has imported torch once (``Setting``). A page of a
2,000-page TIFF costs one page, not the file.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests import test_bombs_tiff_zarr as bombs
from tests.helpers import ROOT, png_bytes

BOUND_MB = 400

# A process that imports, once, what every ``python -m lsm_core`` command imports before it opens any file (the
# command line and the model store, with torch and torchvision: 12 of the 13 s a fresh process took), then
# forks a child per command it reads on stdin and answers with the child's exit status and peak resident
# memory (the kernel's own count, wait4). A child counts from what it has of its parent's memory when forked:
# the same for the small image and the hostile file, and what they import beyond it (a format's reader) each
# child pays for, as a fresh process would. Its peak is lower than a fresh process's (some 440 MB: the pages
# of torch's libraries it never touches are not counted, nor what importing held for a moment); the
# differences measured are the same (within 2 MB on three of the files, both ways).
SERVER = """
import json, os, sys, traceback
import lsm_core.cli, lsm_core.ml.models
for line in sys.stdin:
    args, out = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
            os.dup2(1, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            sys.argv = ["lsm_core", *args]
            code = lsm_core.cli.main(args) or 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss]), flush=True)
"""


class Setting:
    """A data dir with a registered tiny model, its environment, a small valid image as the baseline, and the
    process that runs and measures the commands (``peak_mb``)."""

    def __init__(self, data: Path) -> None:
        from tests.helpers import add_tiny_demo_models

        self.data = data
        add_tiny_demo_models(data / "models")
        self.env = dict(os.environ, LSM_DATA_DIR=str(data), PYTHONPATH=str(ROOT), LSM_USER="ana", LSM_DEVICE="cpu")
        self.env.pop("LSM_DATABASE_URL", None)
        self.small = data / "small.png"
        self.small.write_bytes(png_bytes(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)))
        self.baselines: dict[str, tuple[int, float, str]] = {}
        self._built: dict[str, Path] = {}
        self._runs = 0
        self._log = open(data / "server.log", "w+")  # noqa: SIM115 (closed with the server)
        self._server = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        code, _, out = self.peak_mb(["db", "upgrade"])  # the database made first: no baseline pays for that
        assert code == 0, out

    def peak_mb(self, args: list[str]) -> tuple[int, float, str]:
        """(exit status, peak RSS in MB, output) of ``python -m lsm_core ARGS`` in a child process."""
        assert self._server.stdin and self._server.stdout
        self._runs += 1
        out = self.data / f"run-{self._runs}.out"
        self._server.stdin.write(json.dumps([args, str(out)]) + "\n")
        self._server.stdin.flush()
        if not select.select([self._server.stdout], [], [], 600)[0]:
            self._server.kill()
            pytest.fail(f"python -m lsm_core {' '.join(args)} did not end within 600 s")
        line = self._server.stdout.readline()
        if not line:
            self._log.seek(0)
            pytest.fail(f"the measuring process ended: {self._log.read()[-4000:]}")
        code, kb = json.loads(line)
        return code, kb / 1024, out.read_text(errors="replace")[-6000:]

    def baseline(self, command: str, args: list[str]) -> tuple[int, float, str]:
        """The small image's (exit status, peak, output) through ``command``, measured once."""
        if command not in self.baselines:
            self.baselines[command] = self.peak_mb(args)
        return self.baselines[command]

    def built(self, name: str, write: Callable[[Path], object]) -> Path:
        """The hostile file ``name`` written by ``write``, once (both commands read the same file)."""
        if name not in self._built:
            folder = self.data / f"hostile-{len(self._built)}"
            folder.mkdir()
            write(folder / name)
            self._built[name] = folder / name
        return self._built[name]

    def close(self) -> None:
        assert self._server.stdin
        self._server.stdin.close()
        self._server.wait(timeout=60)
        self._log.close()


@contextmanager
def measuring(data: Path) -> Iterator[Setting]:
    setting = Setting(data)
    try:
        yield setting
    finally:
        setting.close()


def tiles(shape: tuple[int, ...], tile: tuple[int, int], pages: int = 1, dtype=np.uint8):
    """The zero tiles of ``pages`` images of ``shape``, one at a time (never a whole page in this process),
    as tifffile's writer takes them from an iterator."""
    block = np.zeros(tile + shape[2:], dtype)
    per_page = -(-shape[0] // tile[0]) * -(-shape[1] // tile[1])
    for _ in range(per_page * pages):
        yield block


def many_samples_tiff(path: Path) -> None:
    """1024 x 1024 pixels with 1,500 samples each: 1.5 GB decoded, about 1.5 MB on disk."""
    shape = (1024, 1024, 1500)
    tifffile.imwrite(
        path,
        tiles(shape, (16, 16)),
        shape=shape,
        dtype=np.uint8,
        compression="zlib",
        tile=(16, 16),
        photometric="minisblack",
        planarconfig="contig",
    )


def twelve_pages_tiff(path: Path) -> None:
    """Twelve 5000 x 5000 pages (25 megapixels each): 300 MB decoded at once, a few hundred KB on disk."""
    with tifffile.TiffWriter(path) as tif:
        for _ in range(12):
            tif.write(
                tiles((5000, 5000), (256, 256)), shape=(5000, 5000), dtype=np.uint8, compression="zlib", tile=(256, 256)
            )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_rgb_png(path: Path, side: int = 10_000) -> None:
    """A real, complete 10000 x 10000 RGB PNG (100 megapixels, 300 MB decoded) written row by row."""
    z = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * (3 * side)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def zip_of_zeros(path: Path, members: int = 30, size: int = 30_000_000) -> None:
    """About 900 KB on disk, 900 MB unpacked: zero-filled members named like images."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            with zf.open(f"plate/cell{i:02d}.png", "w", force_zip64=True) as fh:
                for _ in range(size // 1_000_000):
                    fh.write(b"\x00" * 1_000_000)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    with measuring(tmp_path_factory.mktemp("memory")) as measured:
        yield measured


def zip_of_one_huge_member(path: Path) -> None:
    """About 1 MB on disk, one member of 1 GB of zeros named like an image (under LSM_MAX_FILE_BYTES)."""
    zip_of_zeros(path, members=1, size=1_000_000_000)


HOSTILE = {
    "many_samples.tif": many_samples_tiff,
    "twelve_pages.tif": twelve_pages_tiff,
    "huge_rgb.png": huge_rgb_png,
    "zeros.zip": zip_of_zeros,
    "one_huge_member.zip": zip_of_one_huge_member,
    # issue 27 (tests/test_bombs_tiff_zarr.py builds them): counts declared by the headers, chunks, tiles and
    # archive members that unpack far beyond their declared size
    "zarr_channels.zip": bombs.zarr_channels,  # 639 bytes, 20,000,000 channels (7.5 GB in the app before)
    "zarr_time_points.zip": bombs.zarr_time_points,  # 636 bytes, 1,000,000 time points (3.5 GB before)
    "ome_time_points.ome.tif": bombs.ome_time_points,  # 5 KB OME-TIFF, SizeT=1,000,000
    "imagej_frames.tif": bombs.imagej_frames,  # 1 MB ImageJ hyperstack of 1,000,000 frames of 1 pixel
    "zarr_chunk_bomb.zip": bombs.zarr_chunk_bomb,  # 2.5 KB, a 64 x 64 chunk unpacking to 1 GB (3.1 GB before)
    "zarr_inflating_chunk.zip": bombs.zarr_inflating_chunk,  # a 1 MB chunk stored in 1 MB, unpacking to 1 GB
    "png_tile.tif": bombs.png_tile,  # a 64 x 64 tile holding a 20,000 x 20,000 16-bit PNG (800 MB)
    "three_zero_members.zip": bombs.three_zero_members,  # 1.1 MB, 3 x 386 MB of zeros (0.94 GB before)
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("command", ["submit", "classify"])
def test_a_small_file_that_decodes_huge_stays_within_the_memory_bound(setting, tmp_path, name, command):
    hostile = setting.built(name, HOSTILE[name])
    assert hostile.stat().st_size < 5_000_000

    def args(path: Path, batch: str) -> list[str]:
        if command == "submit":
            return ["submit", str(path), "--model", "demo-lsm", "--batch", batch]
        return ["classify", str(path), "--model", "demo-lsm", "--out", str(tmp_path / f"{batch}.csv")]

    code, base, out = setting.baseline(command, args(setting.small, "baseline"))
    assert code == 0, out
    code, peak, out = setting.peak_mb(args(hostile, "hostile"))
    assert peak - base < BOUND_MB, f"{name} through {command}: {peak:.0f} MB peak vs {base:.0f} MB for a small image"
    if command == "classify":  # nothing classified, but every part of the file said why
        rows = (tmp_path / "hostile.csv").read_text().splitlines()
        assert len(rows) >= 2 and all(name in r.split(",")[0] for r in rows[1:]), rows[:3]


def test_a_page_of_a_long_tiff_costs_one_page(tmp_path, monkeypatch):
    from lsm_core.imaging import images

    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for i in range(2000):
            tif.write(np.full((64, 64), i % 250, np.uint8))
    data = path.read_bytes()
    decoded = []
    original = tifffile.TiffPage.asarray

    def counting(page, *a, **k):
        decoded.append(page.index)
        return original(page, *a, **k)

    monkeypatch.setattr(tifffile.TiffPage, "asarray", counting)
    pixels = images.decode_page("pages.tif", data, 2000)
    assert decoded == [1999] and pixels.shape == (64, 64)
    assert abs(float(pixels.mean()) - 1999 % 250 / 255) < 1e-6


def test_every_page_of_a_multi_page_file_is_not_held_at_once(tmp_path):
    """Pages come one at a time: the records of a 12-page file are a stream, not a list of 12 decoded arrays."""
    from lsm_core.imaging.images import decode_raw
    from lsm_core.imaging.readers.archives import RawFile

    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:
        for i in range(12):
            tif.write(np.full((32, 32), i, np.uint8))
    records = decode_raw(RawFile("twelve.tif", buf.getvalue()))
    first = next(records)
    assert first.ok and first.pixels is not None
    assert not isinstance(records, list)
