"""A corpus of hostile and broken uploads, generated here, submitted through the function the Classify page
calls: each gets a clear message, nothing is written outside the data dir, nothing crashes, and the good
file of the same batch is classified."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.imaging.readers.base import Limits
from lsm_core.lab import batches


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def _tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def _empty_tiff(w: int, h: int) -> bytes:
    """A TIFF whose header claims w x h pixels but holds none (tifffile writes no data for shape-only pages)."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, shape=(h, w), dtype=np.uint8)
    return buf.getvalue()


def _zip(members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.external_attr = 0o120777 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _many_samples_tiff() -> bytes:
    """512 x 512 pixels of 1,600 samples each: 420 MB decoded (over LSM_MAX_IMAGE_BYTES), 1 MB on disk."""
    shape, tile = (512, 512, 1600), (16, 16)
    block = np.zeros(tile + shape[2:], np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        (block for _ in range((shape[0] // tile[0]) * (shape[1] // tile[1]))),
        shape=shape,
        dtype=np.uint8,
        tile=tile,
        compression="zlib",
        photometric="minisblack",
        planarconfig="contig",
    )
    return buf.getvalue()


def corpus() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, words the error must contain; None: accepted as an image)."""
    good = (synthetic.make_crops("lsm", 1, seed=0)[0][0] * 255).astype(np.uint8)
    good_png = _png(good)

    def another_good_png(i: int) -> bytes:  # the same cell, other bytes: a file seen twice in a batch counts once
        arr = good.copy()
        arr[0, 0] = (int(arr[0, 0]) + i) % 256
        return _png(arr)

    gif = io.BytesIO()
    PILImage.fromarray(good).save(gif, format="GIF")
    bmp = io.BytesIO()
    PILImage.fromarray(good).save(bmp, format="BMP")
    nan = np.full((64, 64), 0.5, np.float32)
    nan[3, 3] = np.nan
    inf = np.full((64, 64), 0.5, np.float32)
    inf[1, 1] = np.inf
    big_text = PILImage.fromarray(good)
    meta = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "x" * 2_000_000)
    big_text.save(meta, format="PNG", pnginfo=info)
    return {
        "bomb_header.png": (_png_claiming(30000, 30000), "megapixels"),
        "bomb_wide.png": (_png_claiming(1_000_000, 200), "megapixels"),
        "bomb_tiff.tif": (_empty_tiff(40000, 40000), "megapixels"),
        "zip_bomb.zip": (_zip({"a.png": b"\x00" * 30_000_000}), "would unpack"),
        "dotdot.zip": (_zip({"../x.png": good_png}), "'..'"),
        "absolute.zip": (_zip({"/etc/x.png": good_png}), "absolute path"),
        "drive.zip": (_zip({"C:/x.png": good_png}), "absolute path"),
        "symlink.zip": (_zip({"link.png": b"/etc/passwd"}, symlinks=("link.png",)), "symbolic link"),
        "nested.zip": (_zip({"inner.zip": _zip({"x.png": good_png})}), "ZIP inside a ZIP"),
        "damaged.zip": (b"PK\x03\x04" + os.urandom(200), "damaged"),
        "truncated.png": (good_png[: len(good_png) // 2], "damaged or incomplete"),
        "truncated.tif": (_tiff(good)[:100], "damaged"),
        "truncated.jpg": (b"\xff\xd8\xff\xe0" + b"\x00" * 30, "damaged"),
        "text.tif": (b"hello, this is a text file\n", "text file"),
        "text.png": (b"just words", "text file"),
        "page.jpg": (b"<html><script>alert(1)</script></html>", "text file"),
        "empty.png": (b"", "empty"),
        "binary.png": (os.urandom(300).replace(b"\x89PNG", b"xxxx"), "not a supported"),
        "image.gif": (gif.getvalue(), "not a supported"),
        "image.bmp": (bmp.getvalue(), "not a supported"),
        "nan.tif": (_tiff(nan), "NaN"),
        "inf.tif": (_tiff(inf), "infinite"),
        "black.png": (_png(np.zeros((300, 300), np.uint8)), "blank"),
        "one_pixel.png": (_png(np.zeros((1, 1), np.uint8)), "blank"),
        "<script>alert('x')</script>.png": (another_good_png(1), None),
        "name with \u00e9\u00e8 and \u6f22\u5b57.png": (another_good_png(2), None),
        "=cmd|' /C calc'!A0.png": (another_good_png(3), None),
        "huge_metadata.png": (meta.getvalue(), None),
        "cp437_names.zip": (_zip({"caf\u00e9/\u00fcber.png": another_good_png(4)}), None),
        "no_pages.tif": (b"II*\x00\x00\x00\x00\x00", "no readable image"),
        "many_samples.tif": (_many_samples_tiff(), "LSM_MAX_IMAGE_BYTES"),
        "text_inside.zip": (_zip({"readme.txt": b"not an image at all\n"}), "holds no image files"),
        "good.png": (good_png, None),
    }


@pytest.mark.slow
def test_hostile_uploads_get_clear_errors_and_the_rest_is_kept(history, data_dir, tmp_path, monkeypatch):
    from sqlalchemy import select

    from db.schema import Cell, Image
    from lsm_core.lab.worker import Worker

    lab, _, model_id = history
    cases = corpus()
    assert len(cases) >= 30
    outside_before = sorted(os.listdir(tmp_path.parent))
    files = [RawFile(name, data) for name, (data, _) in cases.items()]
    sub = batches.submit_batch(
        lab,
        files,
        model_id,
        "hostile",
        owner="mallory",
        limits=Limits(max_archive_bytes=20_000_000),
        meta=batches.BatchMeta(notes="<img src=x onerror=alert(1)> " * 100),
    )
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        images = s.scalars(select(Image).where(Image.batch_id == sub.batch_id)).all()
        by_top = {name: [im for im in images if im.file == name or im.file.startswith(name + "/")] for name in cases}
        for name, (_, words) in cases.items():
            rows = by_top.get(name)
            assert rows, f"{name}: no record at all"
            errors = " | ".join(r.error or "" for r in rows)
            if words is None:
                assert all(r.error is None for r in rows), f"{name}: {errors}"
            else:
                assert words in errors, f"{name}: expected {words!r} in {errors!r}"
                assert len(rows) == 1 and rows[0].error, f"{name}: one error row expected, got {len(rows)}"
                if rows[0].width is None:  # refused from its headers: its bytes are not kept
                    assert rows[0].sha256 is None or not lab.blobs.has(rows[0].sha256), f"{name}: bytes stored"
        good = by_top["good.png"][0]
        assert good.n_cells == 1
        assert s.scalar(select(Cell.predicted).where(Cell.image_id == good.id)) in ("LT-HSC", "ST-HSC", "MPP")
        script = by_top["<script>alert('x')</script>.png"][0]
        assert script.file == "<script>alert('x')</script>.png" and script.n_cells == 1  # kept verbatim, as text
    assert sorted(os.listdir(tmp_path.parent)) == outside_before  # nothing written beside the data dir
    assert not any(p.name == "x.png" for p in data_dir.rglob("x.png"))


def test_huge_metadata_is_refused_plainly(history):
    lab, _, model_id = history
    good = RawFile("a.png", _png((synthetic.make_crops("lsm", 1, seed=1)[0][0] * 255).astype(np.uint8)))
    with pytest.raises(LsmError, match="longer than 20,000"):
        batches.submit_batch(lab, [good], model_id, "x", "ana", meta=batches.BatchMeta(notes="n" * 1_000_000))
    with pytest.raises(LsmError, match="longer than 200"):
        batches.submit_batch(lab, [good], model_id, "b" * 10_000, "ana")
    with pytest.raises(LsmError, match="not a number"):
        batches.submit_batch(lab, [good], model_id, "x", "ana", meta=batches.BatchMeta(age_days="1e999999x"))
