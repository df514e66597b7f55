"""Reading images: every accepted format, the one grey representation, bounds and bad input.

All inputs are real files written by PIL, tifffile and zipfile into ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lsm_core.errors import LsmError
from lsm_core.imaging.images import decode_bytes, decode_raw, read_inputs, read_path
from lsm_core.imaging.planes import to_grey_float
from lsm_core.imaging.readers.archives import iter_zip_members
from lsm_core.imaging.readers.base import Limits

LIMITS = Limits()  # the defaults, passed explicitly so that LSM_* variables of the environment do not matter
EPS = 1e-6


# ---------------------------------------------------------------------------------------------- helpers


def _ramp(h: int = 24, w: int = 32, top: int = 255, dtype=np.uint8) -> np.ndarray:
    """A deterministic non-constant image that uses the whole range 0..top."""
    y, x = np.mgrid[0:h, 0:w]
    values = (x * 7 + y * 13) % (top + 1)
    values[0, 0], values[-1, -1] = 0, top
    return values.astype(dtype)


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _good_png(tmp_path: Path, name: str = "good.png") -> Path:
    return _write(tmp_path / name, _png_bytes(_ramp()))


def _read(*paths, limits: Limits = LIMITS) -> list:
    return list(read_inputs([str(p) for p in paths], limits))


def _by_source(records) -> dict:
    return {r.source: r for r in records}


def _assert_good(record, shape=None) -> None:
    """The one grey representation: 2-D float32 in [0, 1], size and sha256 set."""
    assert record.ok, record.error
    px = record.pixels
    assert isinstance(px, np.ndarray)
    assert px.dtype == np.float32
    assert px.ndim == 2
    assert float(px.min()) >= 0.0 and float(px.max()) <= 1.0
    assert (record.height, record.width) == px.shape
    assert isinstance(record.sha256, str) and len(record.sha256) == 64
    int(record.sha256, 16)
    if shape is not None:
        assert px.shape == shape


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` 8-bit grey pixels, followed by a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _zip_bytes(members, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """``members``: (name or ZipInfo, bytes) pairs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- formats


def test_png_8bit_grey(tmp_path):
    arr = _ramp()
    path = _write(tmp_path / "grey8.png", _png_bytes(arr))
    (rec,) = _read(path)
    _assert_good(rec, arr.shape)
    assert rec.bit_depth == 8
    np.testing.assert_allclose(rec.pixels, arr / 255.0, atol=EPS)
    assert rec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec.source == str(path) and rec.page == 0


def test_png_16bit_grey(tmp_path):
    arr = _ramp(top=65535, dtype=np.uint16)
    data = _png_bytes(arr)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit PNG
    (rec,) = _read(_write(tmp_path / "grey16.png", data))
    _assert_good(rec, arr.shape)
    assert rec.bit_depth == 16
    np.testing.assert_allclose(rec.pixels, arr / 65535.0, atol=EPS)
    assert rec.pixels.max() == pytest.approx(1.0) and rec.pixels.min() == 0.0


def _colour(h=20, w=30, channels=3) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255.0


def test_png_rgb_becomes_luminance(tmp_path):
    rgb = _colour()
    (rec,) = _read(_write(tmp_path / "rgb.png", _png_bytes(rgb)))
    _assert_good(rec, rgb.shape[:2])
    np.testing.assert_allclose(rec.pixels, _luma(rgb), atol=0.5 / 255 + EPS)
    # pure primaries give the BT.601 weights
    prim = np.zeros((3, 4, 3), np.uint8)
    for i in range(3):
        prim[i, :, i] = 255
    (rec,) = _read(_write(tmp_path / "primaries.png", _png_bytes(prim)))
    np.testing.assert_allclose(rec.pixels[:, 0], [0.299, 0.587, 0.114], atol=0.5 / 255 + EPS)


def test_png_rgba_alpha_dropped(tmp_path):
    rgba = _colour(channels=4)
    (rec,) = _read(_write(tmp_path / "rgba.png", _png_bytes(rgba, "RGBA")))
    _assert_good(rec, rgba.shape[:2])
    np.testing.assert_allclose(rec.pixels, _luma(rgba), atol=0.5 / 255 + EPS)
    # the same colours with a different alpha give the same grey
    other = rgba.copy()
    other[..., 3] = 255 - other[..., 3]
    (rec2,) = _read(_write(tmp_path / "rgba2.png", _png_bytes(other, "RGBA")))
    np.testing.assert_array_equal(rec.pixels, rec2.pixels)


def test_jpeg_exif_orientation_applied(tmp_path):
    # stored image: 40 wide, 20 high, bright square in the stored top-left corner
    stored = np.zeros((20, 40), np.uint8)
    stored[0:8, 0:8] = 255
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # orientation 6: shown rotated 90 degrees clockwise
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    path = _write(tmp_path / "camera.jpg", buf.getvalue())
    assert Image.open(path).getexif()[0x0112] == 6

    (rec,) = _read(path)
    _assert_good(rec)
    px = rec.pixels
    assert px.shape == (40, 20)  # transposed
    # rotating 90 degrees clockwise moves the stored top-left corner to the top-right
    assert px[0:8, 12:20].mean() > 0.8
    assert px[0:8, 0:8].mean() < 0.2
    assert px[32:40, 0:8].mean() < 0.2 and px[32:40, 12:20].mean() < 0.2


def test_tiff_8bit(tmp_path):
    arr = _ramp()
    path = tmp_path / "a8.tif"
    tifffile.imwrite(path, arr)
    (rec,) = _read(path)
    _assert_good(rec, arr.shape)
    assert rec.bit_depth == 8
    np.testing.assert_allclose(rec.pixels, arr / 255.0, atol=EPS)


def test_tiff_16bit_scaled_by_65535(tmp_path):
    arr = np.array([[0, 1, 4095, 32768], [65535, 1000, 12, 65534]], dtype=np.uint16)
    path = tmp_path / "a16.tif"
    tifffile.imwrite(path, arr)
    (rec,) = _read(path)
    _assert_good(rec, arr.shape)
    assert rec.bit_depth == 16
    np.testing.assert_allclose(rec.pixels, arr.astype(np.float64) / 65535.0, rtol=1e-6, atol=1e-9)
    # a 12-bit camera image in 16 bits uses the lower part of the range (not stretched)
    assert rec.pixels[0, 2] == pytest.approx(4095 / 65535, rel=1e-6)


def test_tiff_float_inside_unit_range_kept(tmp_path):
    arr = np.linspace(0.1, 0.7, 48, dtype=np.float32).reshape(6, 8)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, arr)
    (rec,) = _read(path)
    _assert_good(rec, arr.shape)
    np.testing.assert_array_equal(rec.pixels, arr)  # not stretched to 0..1


def test_tiff_float_outside_unit_range_rescaled(tmp_path):
    arr = np.linspace(-2.0, 6.0, 48, dtype=np.float32).reshape(6, 8)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, arr)
    (rec,) = _read(path)
    _assert_good(rec, arr.shape)
    np.testing.assert_allclose(rec.pixels, (arr + 2.0) / 8.0, atol=1e-6)
    assert rec.pixels.min() == 0.0 and rec.pixels.max() == pytest.approx(1.0)


def test_tiff_multipage_one_record_per_page(tmp_path):
    pages = [np.full((10, 12), 40 * (k + 1), np.uint8) for k in range(3)]
    for k, page in enumerate(pages):
        page[k, k] = 255  # each page also has its own marker
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tw:
        for page in pages:
            tw.write(page)
    records = _read(path)
    assert [r.page for r in records] == [0, 1, 2]
    assert all(r.source == str(path) for r in records)
    for rec, page in zip(records, pages):
        _assert_good(rec, page.shape)
        np.testing.assert_allclose(rec.pixels, page / 255.0, atol=EPS)
    assert len({r.pixels.tobytes() for r in records}) == 3  # distinct content


def test_tiff_rgb_contiguous_and_planar(tmp_path):
    rgb = _colour(12, 16)
    contig = tmp_path / "rgb.tif"
    planar = tmp_path / "rgb_planar.tif"
    tifffile.imwrite(contig, rgb, photometric="rgb")
    tifffile.imwrite(planar, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    records = _read(contig, planar)
    assert len(records) == 2
    for rec in records:
        _assert_good(rec, (12, 16))
        np.testing.assert_allclose(rec.pixels, _luma(rgb), atol=0.5 / 255 + EPS)


def test_zip_keeps_folder_names_and_skips_junk(tmp_path):
    a = _ramp(10, 10)
    b = _ramp(12, 14)
    data = _zip_bytes(
        [
            ("LT-HSC/a.png", _png_bytes(a)),
            ("MPP/deep/b.png", _png_bytes(b)),
            ("__MACOSX/LT-HSC/._a.png", b"\x00\x05\x16\x07 resource fork, not an image"),
            ("__MACOSX/stray.png", b"junk"),
            ("LT-HSC/._a.png", b"\x00\x05\x16\x07"),
            ("LT-HSC/.DS_Store", b"\x00\x00\x00\x01Bud1"),
            ("readme.txt", b"not an image, skipped like in a folder"),
        ]
    )
    path = _write(tmp_path / "archive.zip", data)

    records = _read(path)
    assert sorted(r.source for r in records) == [f"{path}/LT-HSC/a.png", f"{path}/MPP/deep/b.png"]
    for rec in records:
        _assert_good(rec)
    got = _by_source(records)
    np.testing.assert_allclose(got[f"{path}/LT-HSC/a.png"].pixels, a / 255.0, atol=EPS)
    np.testing.assert_allclose(got[f"{path}/MPP/deep/b.png"].pixels, b / 255.0, atol=EPS)
    assert got[f"{path}/LT-HSC/a.png"].sha256 == hashlib.sha256(_png_bytes(a)).hexdigest()

    # the same through the other entry points
    assert sorted(r.source for r in decode_bytes("archive.zip", data, LIMITS)) == [
        "archive.zip/LT-HSC/a.png",
        "archive.zip/MPP/deep/b.png",
    ]
    assert sorted(r.source for r in read_path(path, LIMITS, display="archive.zip")) == [
        "archive.zip/LT-HSC/a.png",
        "archive.zip/MPP/deep/b.png",
    ]
    with open(path, "rb") as fh:
        assert [r.ok for m in iter_zip_members("x.zip", fh, LIMITS) for r in decode_raw(m, LIMITS)] == [True, True]


def test_folder_read_recursively(tmp_path):
    root = tmp_path / "plate"
    _write(root / "a.png", _png_bytes(_ramp()))
    tifffile.imwrite(_write(root / "sub" / "deeper" / "b.tif", b""), _ramp(8, 8))
    _write(root / "sub" / "c.zip", _zip_bytes([("LT-HSC/c.png", _png_bytes(_ramp(6, 6)))]))
    _write(root / "sub" / "notes.txt", b"not an image")
    _write(root / ".hidden.png", b"hidden: skipped")
    _write(root / ".git" / "x.png", b"hidden folder: skipped")

    records = _read(root)
    assert sorted(r.source for r in records) == sorted(
        [
            str(root / "a.png"),
            str(root / "sub" / "deeper" / "b.tif"),
            f"{root / 'sub' / 'c.zip'}/LT-HSC/c.png",
        ]
    )
    for rec in records:
        _assert_good(rec)


def test_every_ok_record_has_the_one_representation(tmp_path):
    """All formats in one call: float32, 2-D, within [0, 1], size and sha256 set."""
    paths = [
        _write(tmp_path / "g8.png", _png_bytes(_ramp())),
        _write(tmp_path / "g16.png", _png_bytes(_ramp(top=65535, dtype=np.uint16))),
        _write(tmp_path / "rgb.png", _png_bytes(_colour())),
        _write(tmp_path / "rgba.png", _png_bytes(_colour(channels=4), "RGBA")),
        _write(tmp_path / "la.png", _png_bytes(np.dstack([_ramp(), _ramp()[::-1]]), "LA")),
    ]
    buf = io.BytesIO()
    Image.fromarray(_colour()).save(buf, format="JPEG")
    paths.append(_write(tmp_path / "c.jpg", buf.getvalue()))
    for name, arr in [
        ("t8.tif", _ramp()),
        ("t16.tif", _ramp(top=65535, dtype=np.uint16)),
        ("tf.tif", np.linspace(-5, 500, 96, dtype=np.float32).reshape(8, 12)),
        ("ti32.tif", _ramp(dtype=np.int32) - 100),
    ]:
        tifffile.imwrite(tmp_path / name, arr)
        paths.append(tmp_path / name)
    records = _read(*paths)
    assert len(records) == len(paths)
    for rec in records:
        _assert_good(rec)
        assert rec.pixels.max() > rec.pixels.min()  # the content survived


# ---------------------------------------------------------------------------------------------- to_grey_float


def test_to_grey_float_conversions():
    out = to_grey_float(np.array([[0, 255]], np.uint8))
    assert out.dtype == np.float32 and out.tolist() == [[0.0, 1.0]]
    # significant bits of a 12-bit image stored in 16 bits
    np.testing.assert_allclose(to_grey_float(np.array([[0, 4095]], np.uint16), 12), [[0.0, 1.0]])
    np.testing.assert_allclose(to_grey_float(np.array([[-32768, 32767]], np.int16)), [[0.0, 1.0]])
    np.testing.assert_array_equal(to_grey_float(np.array([[True, False]])), [[1.0, 0.0]])
    grey_alpha = np.dstack([np.array([[10, 200]], np.uint8), np.array([[255, 0]], np.uint8)])
    np.testing.assert_allclose(to_grey_float(grey_alpha), [[10 / 255, 200 / 255]], atol=EPS)
    np.testing.assert_array_equal(to_grey_float(np.full((3, 3), 7.5, np.float32)), np.zeros((3, 3)))
    rgb_float = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)
    np.testing.assert_allclose(to_grey_float(rgb_float), [[0.299, 0.114]], atol=EPS)


@pytest.mark.parametrize(
    "arr, words",
    [
        (np.array([[0.5, np.nan]], np.float32), "NaN"),
        (np.array([[0.5, np.inf]], np.float64), "infinite"),
        (np.full((2, 2, 3), np.nan, np.float32), "NaN"),
        (np.zeros((2, 2, 5), np.uint8), "channels"),
        (np.zeros((2, 2, 2, 2), np.uint8), "dimensions"),
        (np.zeros(5, np.uint8), "dimensions"),
    ],
)
def test_to_grey_float_refuses(arr, words):
    with pytest.raises(LsmError, match=words):
        to_grey_float(arr)


# ---------------------------------------------------------------------------------------------- bad input


def _check_bad(tmp_path, bad_path, *words, limits: Limits = LIMITS):
    """Read a bad file between two good ones: the bad one has an error naming ``words``, the others decode."""
    first = _good_png(tmp_path, "first_good.png")
    last = _write(tmp_path / "last_good.tif", b"")
    tifffile.imwrite(last, _ramp(9, 11))
    records = _read(first, bad_path, last, limits=limits)
    got = _by_source(records)
    _assert_good(got[str(first)])
    _assert_good(got[str(last)], (9, 11))
    bad = [r for r in records if r.source.startswith(str(bad_path))]
    assert bad, "the bad file gave no record"
    errors = [r.error for r in bad if not r.ok]
    assert errors, "the bad file was accepted"
    for rec in bad:
        assert rec.pixels is None or rec.ok
    text = " ".join(errors).lower()
    for word in words:
        assert word.lower() in text, f"{word!r} not in {errors!r}"
    return bad


def test_zero_byte_file(tmp_path):
    _check_bad(tmp_path, _write(tmp_path / "empty.png", b""), "empty", "0 bytes")


def test_zero_byte_bytes():
    (rec,) = decode_bytes("empty.tif", b"", LIMITS)
    assert not rec.ok and "empty" in rec.error


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    data = _png_bytes(rng.integers(0, 256, (64, 64), dtype=np.uint8))  # noise: does not compress away
    path = _write(tmp_path / "cut.png", data[: len(data) // 2])
    _check_bad(tmp_path, path, "damaged", "incomplete")


def test_text_file_named_tif(tmp_path):
    path = _write(tmp_path / "results.tif", b"cell,class\n1,LT-HSC\n2,MPP\n")
    _check_bad(tmp_path, path, "text file", "not an image")


def test_binary_garbage_is_not_an_image(tmp_path):
    path = _write(tmp_path / "garbage.png", bytes(range(256)) * 4)
    _check_bad(tmp_path, path, "not a supported image format")


def test_png_claiming_huge_size_refused_before_decoding(tmp_path):
    path = _write(tmp_path / "huge.png", _png_claiming(30000, 30000))
    (bad,) = _check_bad(tmp_path, path, "limit")
    # refused for its size, not because the (tiny) pixel data failed to decode
    assert "damaged" not in bad.error and "truncated" not in bad.error
    assert "900" in bad.error  # 900 megapixels / 900000000 pixels


def test_png_over_configured_limit_names_the_setting(tmp_path):
    path = _write(tmp_path / "big.png", _png_claiming(5000, 5000))
    (bad,) = _check_bad(
        tmp_path, path, "limit", "LSM_MAX_IMAGE_PIXELS", "5000 x 5000", limits=Limits(max_image_pixels=1_000_000)
    )
    assert "damaged" not in bad.error


def test_png_under_a_raised_limit_is_not_refused_for_its_size(tmp_path):
    """LSM_MAX_IMAGE_PIXELS (and LSM_MAX_IMAGE_BYTES) bound what is decoded: raising them must let bigger images in.

    15000 x 15000 = 225 megapixels is under the configured 1000 megapixels, so the file must get past the
    size check and fail only because its pixel data (a 16-byte IDAT) is missing.
    """
    data = _png_claiming(15000, 15000)
    (rec,) = decode_bytes("big.png", data, Limits(max_image_pixels=1_000_000_000, max_image_bytes=2_000_000_000))
    assert not rec.ok
    assert "damaged" in rec.error or "incomplete" in rec.error, rec.error
    assert "too large" not in rec.error and "limit" not in rec.error, rec.error


def test_tiff_over_pixel_limit(tmp_path):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, _ramp(40, 50))
    (rec,) = _read(path, limits=Limits(max_image_pixels=1000))
    assert not rec.ok and rec.pixels is None
    assert "limit" in rec.error and "50 x 40" in rec.error


def test_limits_from_the_settings_or_explicit(tmp_path, monkeypatch):
    from lsm_core.lab import settings

    path = _good_png(tmp_path)  # 32 x 24 = 768 pixels
    monkeypatch.setenv("LSM_MAX_IMAGE_PIXELS", "100")
    limits = settings.current().limits  # the settings read the environment; imaging never does
    assert limits.max_image_pixels == 100
    (rec,) = list(read_inputs([path], limits))
    assert not rec.ok and "limit" in rec.error
    (rec,) = list(read_inputs([path]))  # no limits given: the documented defaults
    _assert_good(rec)
    monkeypatch.setenv("LSM_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(LsmError, match="LSM_MAX_IMAGE_PIXELS"):
        settings.current()


def test_float_tiff_with_nan(tmp_path):
    arr = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    arr[1, 2] = np.nan
    path = tmp_path / "masked.tif"
    tifffile.imwrite(path, arr)
    _check_bad(tmp_path, path, "NaN")


def test_multipage_tiff_bad_page_does_not_stop_the_others(tmp_path):
    good = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    bad = good.copy()
    bad[0, 0] = np.nan
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(good)
        tw.write(bad)
        tw.write(good[::-1].copy())
    records = _read(path)
    assert [r.page for r in records] == [0, 1, 2]
    assert [r.ok for r in records] == [True, False, True]
    assert "page 2" in records[1].error and "NaN" in records[1].error


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nowhere" / "cell.png"
    _check_bad(tmp_path, missing, "no such file")


def test_zip_member_paths_outside_archive_refused(tmp_path):
    png = _png_bytes(_ramp())
    data = _zip_bytes(
        [
            (zipfile.ZipInfo("../x.png"), png),
            (zipfile.ZipInfo("/etc/x.png"), png),
            (zipfile.ZipInfo("LT-HSC/../../y.png"), png),
            ("LT-HSC/ok.png", png),
        ]
    )
    path = _write(tmp_path / "evil.zip", data)
    assert sorted(zipfile.ZipFile(path).namelist()) == sorted(
        ["../x.png", "/etc/x.png", "LT-HSC/../../y.png", "LT-HSC/ok.png"]
    )
    bad = _check_bad(tmp_path, path, "refused")
    got = _by_source(bad)
    _assert_good(got[f"{path}/LT-HSC/ok.png"])
    assert "refused" in got[f"{path}/../x.png"].error and ".." in got[f"{path}/../x.png"].error
    assert "absolute path" in got[f"{path}//etc/x.png"].error
    assert "refused" in got[f"{path}/LT-HSC/../../y.png"].error
    assert all(got[s].pixels is None for s in got if not s.endswith("ok.png"))
    assert not (tmp_path.parent / "x.png").exists()


def test_zip_symlink_member_refused(tmp_path):
    link = zipfile.ZipInfo("LT-HSC/link.png")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    data = _zip_bytes([(link, b"/etc/passwd"), ("LT-HSC/ok.png", _png_bytes(_ramp()))])
    path = _write(tmp_path / "links.zip", data)
    bad = _check_bad(tmp_path, path, "symbolic link", "refused")
    got = _by_source(bad)
    _assert_good(got[f"{path}/LT-HSC/ok.png"])
    assert not got[f"{path}/LT-HSC/link.png"].ok


def test_zip_bomb_refused(tmp_path):
    zeros = bytes(50_000_000)
    data = _zip_bytes([("bomb.png", zeros)])
    assert len(data) < 1_000_000  # really a bomb: 50 MB from well under 1 MB
    path = _write(tmp_path / "bomb.zip", data)
    (bad,) = _check_bad(tmp_path, path, "limit", "LSM_MAX_ARCHIVE_BYTES", limits=Limits(max_archive_bytes=10_000_000))
    assert bad.pixels is None


def test_zip_declared_sizes_over_limit(tmp_path):
    png = _png_bytes(_ramp())
    members = [(f"LT-HSC/{i}.png", png + bytes(4_000_000)) for i in range(3)]  # 3 x 4 MB declared
    path = _write(tmp_path / "big.zip", _zip_bytes(members))
    assert sum(i.file_size for i in zipfile.ZipFile(path).infolist()) > 10_000_000
    assert all(i.file_size < 10_000_000 for i in zipfile.ZipFile(path).infolist())
    (bad,) = _check_bad(tmp_path, path, "limit", "unpack", limits=Limits(max_archive_bytes=10_000_000))
    assert bad.source == str(path)


def _set_declared_size(data: bytes, member: str, size: int) -> bytes:
    """Rewrite a member's uncompressed size in its local header and central directory entry."""
    out = bytearray(data)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(member)
    struct.pack_into("<I", out, info.header_offset + 22, size)
    central = out.find(b"PK\x01\x02")
    while central != -1:
        name_len = struct.unpack_from("<H", out, central + 28)[0]
        if bytes(out[central + 46 : central + 46 + name_len]).decode() == member:
            struct.pack_into("<I", out, central + 24, size)
            break
        central = out.find(b"PK\x01\x02", central + 4)
    assert zipfile.ZipFile(io.BytesIO(bytes(out))).getinfo(member).file_size == size
    return bytes(out)


def test_zip_member_lying_about_its_size(tmp_path):
    """A bomb that declares 1000 bytes: never unpacked past that; reported, not decoded."""
    data = _set_declared_size(
        _zip_bytes([("bomb.png", bytes(50_000_000)), ("ok.png", _png_bytes(_ramp()))]), "bomb.png", 1000
    )
    path = _write(tmp_path / "liar.zip", data)
    bad = _check_bad(tmp_path, path, "damaged", limits=Limits(max_archive_bytes=10_000_000))
    got = _by_source(bad)
    _assert_good(got[f"{path}/ok.png"])
    assert not got[f"{path}/bomb.png"].ok


def test_zip_too_many_members(tmp_path):
    png = _png_bytes(_ramp())
    path = _write(tmp_path / "many.zip", _zip_bytes([(f"c{i}.png", png) for i in range(5)]))
    (bad,) = _check_bad(
        tmp_path, path, "5 files", "limit is 3", "LSM_MAX_ARCHIVE_MEMBERS", limits=Limits(max_archive_members=3)
    )
    assert bad.source == str(path)
    # junk does not count towards the limit
    junk = [(f"__MACOSX/._c{i}.png", b"x") for i in range(5)]
    path2 = _write(tmp_path / "few.zip", _zip_bytes([(f"c{i}.png", png) for i in range(3)] + junk))
    records = _read(path2, limits=Limits(max_archive_members=3))
    assert len(records) == 3 and all(r.ok for r in records)


def test_nested_zip_not_read(tmp_path):
    inner = _zip_bytes([("cell.png", _png_bytes(_ramp()))])
    outer = _zip_bytes([("inner.zip", inner), ("disguised.png", inner), ("ok.png", _png_bytes(_ramp()))])
    path = _write(tmp_path / "outer.zip", outer)
    bad = _check_bad(tmp_path, path, "zip inside a zip")
    got = _by_source(bad)
    assert set(got) == {f"{path}/inner.zip", f"{path}/disguised.png", f"{path}/ok.png"}
    assert not got[f"{path}/inner.zip"].ok and not got[f"{path}/disguised.png"].ok
    _assert_good(got[f"{path}/ok.png"])


def test_damaged_zip(tmp_path):
    data = _zip_bytes([("ok.png", _png_bytes(_ramp()))])
    path = _write(tmp_path / "cut.zip", data[: len(data) // 2])
    _check_bad(tmp_path, path, "zip", "damaged")


def test_zip_member_with_corrupt_compressed_data(tmp_path):
    """A member whose deflate stream is broken is one bad record; the rest of the batch goes on."""
    data = bytearray(_zip_bytes([("bad.png", _png_bytes(_ramp())), ("ok.png", _png_bytes(_ramp(8, 8)))]))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("bad.png")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start : start + info.compress_size] = b"\xff" * info.compress_size  # reserved block type: invalid
    path = _write(tmp_path / "corrupt.zip", bytes(data))
    bad = _check_bad(tmp_path, path, "damaged")
    got = _by_source(bad)
    assert not got[f"{path}/bad.png"].ok
    _assert_good(got[f"{path}/ok.png"], (8, 8))
