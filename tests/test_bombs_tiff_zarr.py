"""Hostile TIFF, OME-Zarr and ZIP files (hardening issue 27, items 1 and 2, for the TIFF family, OME-Zarr and
archives).

1. Counts a file declares (channels, z planes, time points, scenes, series, pages) are bounded by
   LSM_MAX_PLANES from the headers alone, before a list, a loop or a row is made per plane: a 639-byte OME-Zarr
   ZIP declaring 20,000,000 channels, a 636-byte one declaring 1,000,000 time points, a 5 KB OME-TIFF with
   SizeT=1,000,000 and an ImageJ TIFF declaring a million frames are refused with a message naming the count
   and the setting. The Classify page lists at most a few dozen channels and says how many more there are.
2. Decompression is bounded while it happens: a Zarr chunk is read only when its stored size fits its
   declared size and is unpacked by every codec (blosc, zlib, gzip, zstd, lz4, bz2, lzma; v2 and v3, sharded
   or not) into at most its declared size; a TIFF tile that is a picture (PNG, JPEG) larger than the tile is
   refused from its header; a ZIP member that unpacks to over 100 times its packed size is refused from the
   archive's directory, the others are unpacked a piece at a time and never beyond their declared size.

The corpus is written here (hand-written Zarr JSON and chunk bytes, tifffile, zipfile); the builders are also
used by tests/test_memory.py, which measures the peak memory of ``submit`` and ``classify`` on them.
"""

from __future__ import annotations

import bz2
import functools
import io
import json
import lzma
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lsm_core.errors import LsmError
from lsm_core.imaging.images import SHOWN_CHANNELS, decode_bytes, file_channels, inspect
from lsm_core.imaging.readers import open_microscope_file
from lsm_core.imaging.readers.archives import RawFile, iter_upload
from lsm_core.imaging.readers.base import Limits

MB = 1 << 20
FAST_S = 10.0  # a refusal from the headers takes well under a second; this leaves room for a busy machine


# ------------------------------------------------------------------------------------------- the corpus
def zeros_stream(codec: str, n: int) -> bytes:
    """``n`` zero bytes compressed with ``codec`` (as a Zarr compressor stores a chunk), made a piece at a time
    where the codec allows (no ``n``-byte buffer here)."""
    if codec in ("zlib", "gzip"):
        packer = zlib.compressobj(9, zlib.DEFLATED, 31 if codec == "gzip" else 15)
        return b"".join(packer.compress(bytes(min(MB, n - i))) for i in range(0, n, MB)) + packer.flush()
    if codec == "bz2":
        return bz2.compress(bytes(n), 9)
    if codec == "lzma":
        packer = lzma.LZMACompressor(preset=0)
        return b"".join(packer.compress(bytes(min(MB, n - i))) for i in range(0, n, MB)) + packer.flush()
    if codec == "zstd":
        import imagecodecs

        return bytes(imagecodecs.zstd_encode(bytes(n)))
    import numcodecs

    coder = numcodecs.Blosc() if codec == "blosc" else numcodecs.LZ4()
    return bytes(coder.encode(np.zeros(n, np.uint8)))


@functools.lru_cache(maxsize=2)
def zlib_gigabyte() -> bytes:
    """1 GiB of zeros as one zlib stream (about 1 MB)."""
    return zeros_stream("zlib", 1 << 30)


def _axes(n: int) -> list[dict[str, str]]:
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    return [{"name": a, "type": kinds[a]} for a in "tczyx"[-n:]]


def zarr_zip(
    path: Path,
    shape: list[int],
    chunks: list[int],
    *,
    fmt: int = 2,
    dtype: str = "|u1",
    compressor: dict | None = None,
    codecs: list[dict] | None = None,
    files: dict[str, bytes] | None = None,
    omero: dict | None = None,
) -> Path:
    """A ZIP of an OME-Zarr whose metadata is written by hand: one image, array "0" of ``shape`` (axes t c z y x,
    the last ones), its chunk files ``files`` (key -> stored bytes). zarr v2 (``compressor``) or v3 (``codecs``,
    the bytes codec first; chunk keys c/0/0/...)."""
    multiscales = [
        {
            "version": "0.4" if fmt == 2 else "0.5",
            "name": "hostile",
            "axes": _axes(len(shape)),
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(shape)}]}],
        }
    ]
    attrs: dict = {"multiscales": multiscales, **({"omero": omero} if omero else {})}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if fmt == 2:
            archive.writestr("img.zarr/.zgroup", json.dumps({"zarr_format": 2}))
            archive.writestr("img.zarr/.zattrs", json.dumps(attrs))
            zarray = {
                "zarr_format": 2,
                "shape": shape,
                "chunks": chunks,
                "dtype": dtype,
                "compressor": compressor,
                "fill_value": 0,
                "order": "C",
                "filters": None,
            }
            archive.writestr("img.zarr/0/.zarray", json.dumps(zarray))
        else:
            group = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": "0.5", **attrs}}}
            archive.writestr("img.zarr/zarr.json", json.dumps(group))
            array = {
                "zarr_format": 3,
                "node_type": "array",
                "shape": shape,
                "data_type": "uint8" if dtype == "|u1" else dtype,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": 0,
                "codecs": codecs or [{"name": "bytes", "configuration": {"endian": "little"}}],
            }
            archive.writestr("img.zarr/0/zarr.json", json.dumps(array))
        for key, data in (files or {}).items():
            archive.writestr(f"img.zarr/0/{key}", data)
    return path


def zarr_channels(path: Path) -> None:
    """A 639-byte OME-Zarr ZIP declaring 20,000,000 channels of 64 x 64 pixels (no chunk written)."""
    zarr_zip(path, [1, 20_000_000, 1, 64, 64], [1, 1, 1, 64, 64])


def zarr_time_points(path: Path) -> None:
    """A 636-byte OME-Zarr ZIP declaring 1,000,000 time points of 64 x 64 pixels."""
    zarr_zip(path, [1_000_000, 1, 1, 64, 64], [1, 1, 1, 64, 64])


def zarr_chunk_bomb(path: Path) -> None:
    """About 2.5 KB: one 64 x 64 chunk stored as a zlib stream of 1 GiB of zeros (the ZIP packs it again)."""
    zarr_zip(
        path,
        [1, 1, 1, 64, 64],
        [1, 1, 1, 64, 64],
        compressor={"id": "zlib", "level": 9},
        files={"0.0.0.0.0": zlib_gigabyte()},
    )


def zarr_inflating_chunk(path: Path) -> None:
    """About 5 KB: one 1024 x 1024 chunk (1 MiB) whose zlib stream, stored within the chunk's size, unpacks to
    1 GiB: only unpacking against the declared size stops it."""
    zarr_zip(
        path,
        [1, 1, 1, 1024, 1024],
        [1, 1, 1, 1024, 1024],
        compressor={"id": "zlib", "level": 9},
        files={"0.0.0.0.0": zlib_gigabyte()},
    )


def ome_xml(c: int = 1, z: int = 1, t: int = 1, side: int = 64) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        f'<Image ID="Image:0" Name="hostile"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" '
        f'SizeX="{side}" SizeY="{side}" SizeZ="{z}" SizeC="{c}" SizeT="{t}">'
        '<Channel ID="Channel:0:0" Name="DIC" SamplesPerPixel="1"/><TiffData IFD="0" PlaneCount="1"/>'
        "</Pixels></Image></OME>"
    )


def ome_tiff_declaring(path: Path, c: int = 1, z: int = 1, t: int = 1) -> None:
    """A 5 KB OME-TIFF of one 64 x 64 page whose OME-XML declares SizeC x SizeZ x SizeT planes."""
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), description=ome_xml(c, z, t), metadata=None)


def ome_time_points(path: Path) -> None:
    ome_tiff_declaring(path, t=1_000_000)


def imagej_declaring(path: Path, axis: str, n: int = 1_000_000) -> None:
    """An ImageJ hyperstack whose description declares ``n`` channels, slices or frames of 1 x 1 pixel, stored
    contiguously after its one page (n bytes of zeros, which tifffile accepts as the planes)."""
    description = f"ImageJ=1.11a\nimages={n}\n{axis}={n}\nhyperstack=true\nmode=grayscale\n"
    tifffile.imwrite(path, np.zeros((1, 1), np.uint8), description=description, metadata=None)
    with open(path, "ab") as fh:
        fh.write(bytes(n - 1))


def imagej_frames(path: Path) -> None:
    imagej_declaring(path, "frames")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def zero_png(side: int, bits: int = 8) -> bytes:
    """A complete grey PNG of side x side zero pixels, written row by row."""
    packer = zlib.compressobj(9)
    row = bytes(1 + side * bits // 8)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, bits, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def tiff_with_tile(path: Path, tile: bytes, compression: str, dtype=np.uint8, **kwargs) -> None:
    """A 64 x 64 TIFF of one tile whose stored bytes are ``tile`` (written as already encoded)."""
    tifffile.imwrite(
        path,
        iter([tile]),
        shape=(64, 64),
        dtype=dtype,
        compression=compression,
        tile=(64, 64),
        photometric="minisblack",
        **kwargs,
    )


def png_tile(path: Path) -> None:
    """A 64 x 64 TIFF whose one tile is a PNG of 20,000 x 20,000 16-bit pixels (800 MB decoded), 0.8 MB."""
    tiff_with_tile(path, zero_png(20_000, 16), "png", dtype=np.uint16)


def zip_of_members(path: Path, members: int, size: int) -> None:
    """``members`` zero-filled members of ``size`` bytes named like images, deflated (about 1/1000 of it)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i in range(members):
            with archive.open(f"plate/cell{i:02d}.png", "w", force_zip64=True) as fh:
                for start in range(0, size, 8 * MB):
                    fh.write(bytes(min(8 * MB, size - start)))


def three_zero_members(path: Path) -> None:
    """1.1 MB: three 386 MB members of zeros (each under LSM_MAX_IMAGE_BYTES, where the ratio refusal began)."""
    zip_of_members(path, 3, 386_000_000)


# ---------------------------------------------------------------------------------- 1. declared counts
def _refused(records, *words: str) -> str:
    assert len(records) == 1, f"{len(records):,} records"
    (record,) = records
    assert not record.ok and record.error
    for word in words:
        assert word in record.error, record.error
    return record.error


@pytest.mark.parametrize(
    "build, words",
    [
        (zarr_channels, ("20,000,000 channels", "LSM_MAX_PLANES")),
        (zarr_time_points, ("1,000,000 time points", "LSM_MAX_PLANES")),
    ],
)
def test_an_ome_zarr_declaring_millions_of_planes_is_refused_from_its_headers(tmp_path, build, words):
    path = tmp_path / "hostile.zip"
    build(path)
    assert path.stat().st_size < 1000
    start = time.monotonic()
    with pytest.raises(LsmError, match=words[0]):
        open_microscope_file(path)
    data = path.read_bytes()
    _refused(inspect(RawFile("hostile.zip", data)), *words)  # what `submit` makes its rows of: one
    assert file_channels(RawFile("hostile.zip", data)) is None  # the Classify page's channel list
    assert time.monotonic() - start < FAST_S


def test_submit_writes_one_row_for_an_ome_zarr_declaring_a_million_time_points(history, tmp_path):
    from lsm_core.lab import batches

    lab, _, model_id = history
    zarr_time_points(tmp_path / "t.zip")
    start = time.monotonic()
    sub = batches.submit_batch(lab, [RawFile("t.zip", (tmp_path / "t.zip").read_bytes())], model_id, "t", owner="ana")
    assert sub.images == 1 and "1,000,000 time points" in sub.errors[0][1]
    assert time.monotonic() - start < FAST_S


@pytest.mark.parametrize(
    "sizes, words",
    [
        ({"t": 1_000_000}, "1,000,000 time points"),
        ({"c": 1_000_000}, "1,000,000 channels"),
        ({"z": 1_000_000}, "1,000,000 z planes"),
        ({"c": 200, "z": 200}, "40,000 planes"),
    ],
)
def test_an_ome_tiff_declaring_huge_sizes_is_refused_before_tifffile_lists_them(tmp_path, sizes, words):
    path = tmp_path / "hostile.ome.tif"
    ome_tiff_declaring(path, **sizes)
    assert path.stat().st_size < 10_000
    start = time.monotonic()
    _refused(inspect(RawFile(path.name, path.read_bytes())), words, "LSM_MAX_PLANES")
    assert time.monotonic() - start < FAST_S


def test_an_ome_tiff_declaring_a_hundred_million_time_points_costs_nothing(tmp_path, monkeypatch):
    """tifffile itself lists every plane an OME-XML declares (100,000,000 took it 12 s and 1.5 GB): the
    declared sizes are read first, and tifffile's series are never made."""
    path = tmp_path / "t.ome.tif"
    ome_tiff_declaring(path, t=100_000_000)
    made = []
    monkeypatch.setattr(tifffile.TiffFile, "_series_ome", lambda self: made.append(1))
    with pytest.raises(LsmError, match="100,000,000 time points"):
        open_microscope_file(path)
    assert not made


@pytest.mark.parametrize("axis, words", [("channels", "channels"), ("slices", "z planes"), ("frames", "time points")])
def test_an_imagej_tiff_declaring_a_million_planes_is_refused(tmp_path, axis, words):
    path = tmp_path / "hostile.tif"
    imagej_declaring(path, axis)
    start = time.monotonic()
    _refused(inspect(RawFile(path.name, path.read_bytes())), f"1,000,000 {words}", "LSM_MAX_PLANES")
    assert time.monotonic() - start < FAST_S


def test_the_plane_limit_is_a_setting(tmp_path):
    path = tmp_path / "s.ome.tif"
    ome_tiff_declaring(path, t=50)
    with open_microscope_file(path) as mf:
        assert mf.scenes[0].sizes["T"] == 50
    with pytest.raises(LsmError, match="50 time points; the limit is 10 planes"):
        open_microscope_file(path, limits=Limits(max_planes=10))


def many_channels_ome_tiff(n: int, transmitted: int) -> bytes:
    names = [f"R{c}" for c in range(n)]
    names[transmitted] = "DIC"
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((n, 8, 8), np.uint8), ome=True, metadata={"axes": "CYX", "Channel": {"Name": names}})
    return buf.getvalue()


def test_the_channel_list_keeps_a_few_dozen_names_and_the_count():
    found = file_channels(RawFile("many.ome.tif", many_channels_ome_tiff(100, 70)))
    assert found is not None
    assert len(found.names) == SHOWN_CHANNELS < 100 and found.count == 100 and found.more == 100 - SHOWN_CHANNELS
    assert found.names[:2] == ["R0", "R1"]
    assert found.automatic == 70 and found.automatic_name == "DIC"  # found wherever it is among them


def test_the_classify_page_lists_a_few_dozen_channels_and_says_how_many_more(app_env):
    from tests.helpers import run_page

    at = run_page()
    at.file_uploader[0].set_value([("many.ome.tif", many_channels_ome_tiff(100, 70), "image/tiff")])
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    picker = next(s for s in at.selectbox if s.label == "Channel to classify")
    assert len(picker.options) == 1 + SHOWN_CHANNELS
    assert picker.options[0] == "automatic: 70: DIC"
    more = [t for t in at.text_input if "more channels" in t.label]
    assert more and f"{100 - SHOWN_CHANNELS} more channels (type a channel's number)" in more[0].label


# ----------------------------------------------------------------------------- 2. bounded decompression
CHUNK = [1, 1, 1, 64, 64]  # 4,096 bytes of uint8: every stream below unpacks to thousands of times that
V2_STREAMS = {  # codec: (compressor metadata, bytes it unpacks to)
    "zlib": ({"id": "zlib", "level": 9}, 64 * MB),
    "gzip": ({"id": "gzip", "level": 9}, 64 * MB),
    "bz2": ({"id": "bz2", "level": 9}, 64 * MB),
    "lzma": ({"id": "lzma", "format": 1, "check": -1, "preset": None, "filters": None}, 64 * MB),
    "zstd": ({"id": "zstd", "level": 1}, 64 * MB),
    "blosc": ({"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}, 8 * MB),
    "lz4": ({"id": "lz4", "acceleration": 1}, 8 * MB),
}


@pytest.mark.parametrize("codec", list(V2_STREAMS))
def test_a_v2_chunk_that_unpacks_beyond_its_declared_size_is_refused_while_unpacking(tmp_path, codec):
    compressor, n = V2_STREAMS[codec]
    stream = zeros_stream(codec, n)
    path = zarr_zip(tmp_path / f"{codec}.zip", CHUNK, CHUNK, compressor=compressor, files={"0.0.0.0.0": stream})
    start = time.monotonic()
    with open_microscope_file(path) as mf:
        with pytest.raises(LsmError, match="unpacks to more than its declared 4,096 bytes"):
            mf.plane(0)
    assert time.monotonic() - start < FAST_S


@pytest.mark.parametrize("codec", ["gzip", "zstd", "blosc"])
def test_a_v3_chunk_that_unpacks_beyond_its_declared_size_is_refused_while_unpacking(tmp_path, codec):
    config = {
        "gzip": {"level": 9},
        "zstd": {"level": 1, "checksum": False},
        "blosc": {"cname": "lz4", "clevel": 5, "shuffle": "noshuffle", "typesize": 1, "blocksize": 0},
    }[codec]
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": codec, "configuration": config}]
    stream = zeros_stream(codec, V2_STREAMS[codec][1])
    path = zarr_zip(tmp_path / "v3.zip", CHUNK, CHUNK, fmt=3, codecs=codecs, files={"c/0/0/0/0/0": stream})
    with open_microscope_file(path) as mf:
        with pytest.raises(LsmError, match="unpacks to more than its declared 4,096 bytes"):
            mf.plane(0)


def test_a_sharded_chunk_that_unpacks_beyond_its_declared_size_is_refused(tmp_path):
    """zarr v3 sharding: the shard's index (read alone, bounded) points at a chunk whose zstd stream unpacks
    to 64 MB; the chunk is 1,024 bytes."""
    stream = zeros_stream("zstd", 64 * MB)
    index = np.array([[0, len(stream)]] + [[2**64 - 1, 2**64 - 1]] * 3, "<u8").tobytes()
    sharding = {
        "name": "sharding_indexed",
        "configuration": {
            "chunk_shape": [1, 1, 1, 32, 32],
            "codecs": [
                {"name": "bytes", "configuration": {"endian": "little"}},
                {"name": "zstd", "configuration": {"level": 1, "checksum": False}},
            ],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "index_location": "end",
        },
    }
    path = zarr_zip(tmp_path / "s.zip", CHUNK, CHUNK, fmt=3, codecs=[sharding], files={"c/0/0/0/0/0": stream + index})
    with open_microscope_file(path) as mf:
        with pytest.raises(LsmError, match="unpacks to more than its declared 1,024 bytes"):
            mf.plane(0)


def test_a_chunk_stored_in_more_bytes_than_its_size_allows_is_never_unpacked(tmp_path):
    """The seen case: a 2.5 KB OME-Zarr whose 64 x 64 chunk is a 1 MB zlib stream of 1 GB (3.1 GB before)."""
    path = tmp_path / "bomb.zip"
    zarr_chunk_bomb(path)
    assert path.stat().st_size < 5000
    start = time.monotonic()
    with open_microscope_file(path) as mf:
        with pytest.raises(LsmError, match="is stored in 1,043,6.. bytes, more than"):
            mf.plane(0)
    assert time.monotonic() - start < FAST_S


def test_zarr_metadata_that_would_unpack_huge_is_refused(tmp_path):
    path = zarr_zip(tmp_path / "m.zip", CHUNK, CHUNK)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("img.zarr/0/.zattrs", b" " * (64 * MB))  # whitespace: valid JSON once parsed, if it were
    with pytest.raises(LsmError, match="metadata file img.zarr/0/.zattrs declares 67 MB"):
        open_microscope_file(path)


V2_WRITTEN = {
    "blosc": "Blosc",
    "zlib": "Zlib",
    "gzip": "GZip",
    "zstd": "Zstd",
    "lz4": "LZ4",
    "bz2": "BZ2",
    "lzma": "LZMA",
    "none": None,
}


@pytest.mark.parametrize("codec", list(V2_WRITTEN))
def test_every_codec_zarr_writes_is_read_back_exactly(tmp_path, codec):
    """The chunks read here (not by zarr) give what zarr wrote: v2 with each compressor, edge chunks, a
    dimension separator of "/", Fortran order, big-endian samples, a delta filter."""
    import numcodecs
    import zarr

    data = np.arange(2 * 3 * 50 * 70, dtype=">u2").reshape(1, 2, 3, 50, 70)
    name = V2_WRITTEN[codec]
    compressor = getattr(numcodecs, name)() if name else None
    folder = tmp_path / "w.zarr"
    group = zarr.open_group(str(folder), mode="w", zarr_format=2)
    kwargs = {"compressors": compressor} if compressor else {"compressors": None}
    if codec == "zlib":
        kwargs["filters"] = [numcodecs.Delta(dtype=">u2")]
    array = group.create_array(
        "0",
        shape=data.shape,
        chunks=(1, 1, 2, 16, 32),
        dtype=">u2",
        order="F" if codec == "gzip" else "C",
        chunk_key_encoding={"name": "v2", "separator": "/" if codec == "bz2" else "."},
        **kwargs,
    )
    array[...] = data
    group.attrs["multiscales"] = [{"version": "0.4", "axes": _axes(5), "datasets": [{"path": "0"}]}]
    with open_microscope_file(folder) as mf:
        for c in range(2):
            for z in range(3):
                assert np.array_equal(mf.plane(0, 0, c, z), data[0, c, z])


@pytest.mark.parametrize("layout", ["zstd", "gzip", "blosc", "sharded", "missing chunks"])
def test_zarr_v3_chunks_are_read_back_exactly(tmp_path, layout):
    import zarr
    from zarr.codecs import BloscCodec, GzipCodec

    data = np.arange(2 * 3 * 50 * 70, dtype="<u2").reshape(1, 2, 3, 50, 70)
    folder = tmp_path / "v3.zarr"
    group = zarr.open_group(str(folder), mode="w", zarr_format=3)
    kwargs: dict = {"chunks": (1, 1, 1, 16, 32)}
    if layout == "gzip":
        kwargs["compressors"] = GzipCodec()
    elif layout == "blosc":
        kwargs["compressors"] = BloscCodec()
    elif layout == "sharded":
        kwargs = {"chunks": (1, 1, 1, 8, 16), "shards": (1, 1, 1, 32, 64)}
    array = group.create_array("0", shape=data.shape, dtype="<u2", fill_value=7, **kwargs)
    if layout == "missing chunks":
        array[0, 1, 2, :20, :40] = data[0, 1, 2, :20, :40]
    else:
        array[...] = data
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": _axes(5), "datasets": [{"path": "0"}]}]}
    with open_microscope_file(folder) as mf:
        if layout == "missing chunks":
            plane = mf.plane(0, 0, 1, 2)
            assert np.array_equal(plane[:20, :40], data[0, 1, 2, :20, :40]) and (plane[32:, :] == 7).all()
            assert (mf.plane(0, 0, 0, 0) == 7).all()
            return
        for c in range(2):
            for z in range(3):
                assert np.array_equal(mf.plane(0, 0, c, z), data[0, c, z])


@pytest.mark.parametrize(
    "tile, compression, words",
    [
        (lambda: zero_png(8192), "png", "holds a PNG picture of 8,192 x 8,192 pixels"),
        (
            lambda: __import__("imagecodecs").jpeg8_encode(np.zeros((8192, 8192), np.uint8)),
            "jpeg",
            "holds a JPEG picture of 8,192 x 8,192 pixels",
        ),
        (lambda: b"\xff\x0a" + bytes(4000), "jpegxl", "could not be read from its header"),
    ],
)
@pytest.mark.parametrize("kind", ["plain TIFF", "OME-TIFF"])
def test_a_tile_that_is_a_picture_larger_than_the_tile_is_refused_before_decoding(
    tmp_path, tile, compression, words, kind
):
    """tifffile decodes a PNG or JPEG tile to whatever size its own header states, and checks the shape only
    afterwards (a 64 x 64 tile holding a 20,000 x 20,000 PNG decoded 400 MB)."""
    path = tmp_path / "tile.tif"
    extra = {"description": ome_xml(), "metadata": None} if kind == "OME-TIFF" else {}
    tiff_with_tile(path, tile(), compression, **extra)
    assert path.stat().st_size < 5_000_000
    start = time.monotonic()
    (record,) = decode_bytes(path.name, path.read_bytes())
    assert not record.ok and words in (record.error or ""), record.error
    assert time.monotonic() - start < FAST_S


def test_zip_members_of_zeros_are_refused_from_the_archive_directory(tmp_path):
    """The seen case: 1.1 MB, three 386 MB members (0.94 GB above the baseline when the ratio refusal began at
    LSM_MAX_IMAGE_BYTES): refused by their packing ratio, before any byte of them is unpacked."""
    path = tmp_path / "zeros.zip"
    three_zero_members(path)
    assert path.stat().st_size < 1_500_000
    start = time.monotonic()
    with open(path, "rb") as fh:
        raws = list(iter_upload("zeros.zip", fh.read()))
    assert len(raws) == 3
    assert all(r.error and "over 100 times smaller packed than unpacked" in r.error for r in raws), raws[0].error
    assert time.monotonic() - start < 2.0


def test_a_zip_member_is_unpacked_no_further_than_its_declared_size(tmp_path):
    """A member whose directory says 1 MB but whose stream holds 200 MB: zipfile stops at the declared size (so it
    did before as well) and the member is reported damaged; nothing beyond is unpacked."""
    real = 200 * MB
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("liar.tif", "w", force_zip64=False) as fh:
            fh.write(b"II*\x00")
            for start in range(4, real, 8 * MB):
                fh.write(bytes(min(8 * MB, real - start)))
    data = bytearray(buf.getvalue())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.find(signature)
        assert struct.unpack_from("<I", data, at + offset)[0] == real
        struct.pack_into("<I", data, at + offset, MB)
    start = time.monotonic()
    (raw,) = iter_upload("liar.zip", bytes(data))
    assert raw.error and "damaged" in raw.error and "CRC" in raw.error, raw.error
    assert time.monotonic() - start < 2.0


def test_a_zip_whose_members_claim_more_than_the_archive_holds_is_damaged(tmp_path):
    """Members that overlap (or packed sizes that lie) would make the packing ratio lie too."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.png", bytes(1000))
    data = bytearray(buf.getvalue())
    at = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, at + 20, 10 * MB)  # the compressed size in the central directory
    (raw,) = iter_upload("overlap.zip", bytes(data))
    assert raw.error and "claim 10,485,760 packed bytes in an archive of" in raw.error, raw.error
