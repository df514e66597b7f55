"""Hostile vendor files: counts declared in headers and data that decompresses beyond its declared size
(issue 27, items 1 and 2, for the CZI, ND2, LIF and OIB/OIF readers).

Every hostile file is written here: CZI files from scratch (segments as the ZISRAW specification lays them
out), LIF and OIB/OIF with the writers of ``test_readers``, and ND2 files by patching a copy of the shared
Nikon file in the test's own folder (its experiment's loop count, its compression, one frame's chunk). Each
is refused quickly with a message that names the count and the setting, or decodes no more than its
declared plane; the slow tests measure the peak memory of ``submit`` and ``classify`` on each, in a child
process, against the same command on one small image (tests/test_memory.py): under 400 MB above it.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lsm_core.errors import LsmError
from lsm_core.imaging.readers import open_microscope_file
from lsm_core.imaging.readers.base import Limits
from tests.helpers import ROOT
from tests.test_memory import BOUND_MB, measuring
from tests.test_readers import settings_text, write_compound_file, write_oif
from tests.test_readers_shared_data import ND2, need

FAST_S = 5.0  # a refusal from the headers takes well under a second; the slowest machine gets some room

# ------------------------------------------------------------------------------------------ CZI, written


def _segment(sid: bytes, body: bytes) -> bytes:
    return struct.pack("<16sqq", sid, len(body), len(body)) + body


def _dv(pixel_type: int, position: int, compression: int, dims: list[tuple[str, int, int]]) -> bytes:
    """A DirectoryEntryDV: 32 bytes, then 20 per dimension (name, start, size, start coordinate, stored size)."""
    out = struct.pack("<2siqiiBB4si", b"DV", pixel_type, position, 0, compression, 0, 0, bytes(4), len(dims))
    return out + b"".join(struct.pack("<4siifi", d.encode(), start, size, 0.0, size) for d, start, size in dims)


def write_czi(
    path: Path,
    tile: tuple[int, int],
    data: bytes,
    compression: int = 0,
    pixel_type: int = 1,
    entries: list[dict[str, int]] | None = None,
    xml: bytes = b"",
) -> None:
    """A CZI of one subblock (a ``tile`` of height x width, pixel type 1 = Gray16, 0 = Gray8, its ``data``
    stored with ``compression``) and a directory whose ``entries`` (default one at the origin) each point at
    it with their own C/T/Z/S starts; ``xml`` its metadata. Layout: file header, subblock, metadata,
    directory."""
    h, w = tile
    entries = entries or [{}]
    header_len = 32 + 80
    sub_at = header_len

    def dims(starts: dict[str, int]) -> list[tuple[str, int, int]]:
        return [*((k, v, 1) for k, v in starts.items()), ("Y", 0, h), ("X", 0, w)]

    own = _dv(pixel_type, sub_at, compression, dims(entries[0]))
    sub_body = struct.pack("<iiq", 0, 0, len(data)) + own + bytes(max(0, 240 - len(own))) + data
    subblock = _segment(b"ZISRAWSUBBLOCK", sub_body)
    meta_at = sub_at + len(subblock)
    metadata = _segment(b"ZISRAWMETADATA", struct.pack("<ii", len(xml), 0) + bytes(248) + xml) if xml else b""
    dir_at = meta_at + len(metadata)
    directory = _segment(
        b"ZISRAWDIRECTORY",
        struct.pack("<i", len(entries))
        + bytes(124)
        + b"".join(_dv(pixel_type, sub_at, compression, dims(e)) for e in entries),
    )
    guid = uuid.uuid4().bytes
    file_header = _segment(
        b"ZISRAWFILE",
        struct.pack("<iiii16s16siqqiq", 1, 0, 0, 0, guid, guid, 0, dir_at, meta_at if xml else 0, 0, 0),
    )
    assert len(file_header) == header_len
    path.write_bytes(file_header + subblock + metadata + directory)


def czi_xml(channels: int = 1, inside: str = "") -> bytes:
    names = "".join(f'<Channel Id="Channel:{i}" Name="Bright"/>' for i in range(channels))
    return (
        "<ImageDocument><Metadata><Information><Image><Dimensions>"
        f"<Channels>{names}</Channels></Dimensions></Image></Information>{inside}"
        '<Scaling><Items><Distance Id="X"><Value>1e-06</Value></Distance><Distance Id="Y"><Value>1e-06</Value>'
        "</Distance></Items></Scaling></Metadata></ImageDocument>"
    ).encode()


def czi_many_subblocks(path: Path, n: int = 500_000) -> None:
    """``n`` directory entries (each a subblock at its own z) pointing at one 8 x 8 subblock: about 72 bytes
    an entry on disk, an object per entry and per dimension in czifile (1 to 2 kB)."""
    entries = [{"Z": i} for i in range(n)]
    write_czi(path, (8, 8), bytes(128), entries=entries, xml=czi_xml())


def czi_huge_metadata(path: Path, elements: int = 8_000_000) -> None:
    """32 MB of empty XML elements in the metadata segment: some 700 MB as an ElementTree."""
    write_czi(path, (64, 64), bytes(64 * 64 * 2), xml=czi_xml(inside="<Junk>" + "<a/>" * elements + "</Junk>"))


_LZW_BOMB: dict[int, bytes] = {}


def czi_lzw_bomb(path: Path, expands_to: int = 700_000_000) -> None:
    """A 2000 x 2000 Gray16 tile (8 MB) whose LZW data (about 0.5 MB) expands to 700 MB of zeros."""
    import imagecodecs

    if expands_to not in _LZW_BOMB:
        _LZW_BOMB[expands_to] = bytes(imagecodecs.lzw_encode(bytes(expands_to)))
    write_czi(path, (2000, 2000), _LZW_BOMB[expands_to], compression=2, xml=czi_xml())


def czi_jpeg_bomb(path: Path, side: int = 30_000) -> None:
    """A 64 x 64 Gray8 tile stored as a JPEG (compression 1) whose frame header says side x side pixels."""
    import imagecodecs

    jpeg = bytearray(imagecodecs.jpeg8_encode(np.zeros((64, 64), np.uint8)))
    at = jpeg.find(b"\xff\xc0")
    struct.pack_into(">HH", jpeg, at + 5, side, side)
    write_czi(path, (64, 64), bytes(jpeg), compression=1, pixel_type=0, xml=czi_xml())


def czi_jpegxr_bomb(path: Path, side: int = 20_000) -> None:
    """A 64 x 64 Gray16 tile stored as JPEG XR (compression 4) whose image header says side x side pixels."""
    import imagecodecs

    jxr = bytearray(imagecodecs.jpegxr_encode(np.zeros((64, 64), np.uint16)))
    at = jxr.find(b"WMPHOTO\x00")
    struct.pack_into(">HH", jxr, at + 12, side - 1, side - 1)  # short header: width - 1, height - 1
    write_czi(path, (64, 64), bytes(jxr), compression=4, xml=czi_xml())


# --------------------------------------------------------------------------------------- ND2, patched

_CHUNKMAP = b"ND2 CHUNK MAP SIGNATURE 0000001!"
_FILEMAP = b"ND2 FILEMAP SIGNATURE NAME 0001!"


def _nd2_value_at(data: bytes, name: str, nth: int = 0) -> int:
    """Where the 32-bit value of the ``nth`` CLX-lite item ``name`` lies (after its UTF-16 name and NUL)."""
    pattern = name.encode("utf-16-le") + b"\x00\x00"
    at = -1
    for _ in range(nth + 1):
        at = data.index(pattern, at + 1)
    return at + len(pattern)


def _nd2_with_chunks(data: bytes, chunks: dict[bytes, bytes]) -> bytes:
    """``data`` with ``chunks`` appended (replacing the chunk map's entries of those names) and a new chunk
    map after them, as the file's last 40 bytes say where it is."""
    (location,) = struct.unpack("<Q", data[-8:])
    _, name_length, data_length = struct.unpack_from("<IIQ", data, location)
    body = data[location + 16 + name_length : location + 16 + name_length + data_length]
    entries: dict[bytes, tuple[int, int]] = {}
    at = 0
    while True:
        end = body.index(b"!", at) + 1
        if body[at:end] == _CHUNKMAP:
            break
        entries[body[at:end]] = struct.unpack_from("<QQ", body, end)
        at = end + 16
    out = bytearray(data[:location])
    for name, payload in chunks.items():
        entries[name] = (len(out), len(payload))
        out += struct.pack("<IIQ", 0x0ABECEDA, len(name), len(payload)) + name + payload
    where = len(out)
    table = b"".join(k + struct.pack("<QQ", *v) for k, v in entries.items()) + _CHUNKMAP + struct.pack("<Q", where)
    out += struct.pack("<IIQ", 0x0ABECEDA, len(_FILEMAP), len(table)) + _FILEMAP + table
    return bytes(out)


def nd2_many_time_points(path: Path, count: int = 500_000) -> None:
    """The shared ND2 (3 time points x 10 z planes x 2 channels) with its time loop declaring ``count``
    time points: nd2 lists a dict per frame (count x 10), this layer a key per frame."""
    need(ND2)
    data = bytearray(ND2.read_bytes())
    struct.pack_into("<I", data, _nd2_value_at(data, "uiCount"), count)
    path.write_bytes(bytes(data))


def nd2_frame_bomb(path: Path, expands_to: int = 1_000_000_000) -> None:
    """The shared ND2 stored 'lossless' (zlib), its first frame (31 rows of 152 bytes: 4.7 kB) a zlib stream
    of about 1 MB that expands to ``expands_to`` bytes."""
    need(ND2)
    data = bytearray(ND2.read_bytes())
    struct.pack_into("<i", data, _nd2_value_at(data, "eCompression"), 0)  # 0: lossless
    squeeze = zlib.compressobj(9)
    block = bytes(10_000_000)
    stream = b"".join(squeeze.compress(block) for _ in range(expands_to // len(block))) + squeeze.flush()
    path.write_bytes(_nd2_with_chunks(bytes(data), {b"ImageDataSeq|0!": bytes(8) + stream}))


# --------------------------------------------------------------------------------------- LIF, written


def write_lif_xml(path: Path, xml: str, blocks: list[int]) -> None:
    """A LIF 2 container: ``xml`` as its header, then a memory block per size in ``blocks`` (zeros)."""
    text = xml.encode("utf-16-le")
    out = bytearray(struct.pack("<II", 0x70, len(text) + 5) + b"\x2a" + struct.pack("<I", len(text) // 2) + text)
    for i, size in enumerate(blocks):
        block_id = f"MemBlock_{i + 1}".encode("utf-16-le")
        out += struct.pack("<II", 0x70, len(block_id) + 14) + b"\x2a" + struct.pack("<Q", size) + b"\x2a"
        out += struct.pack("<I", len(block_id) // 2) + block_id + bytes(size)
    path.write_bytes(bytes(out))


def lif_image_xml(dims: dict[int, int], inside: str = "") -> tuple[str, int]:
    """One 8-bit, one-channel image element with the given DimIDs (1 x, 2 y, 3 z, 4 t, 10 tiles), and the
    bytes of its memory block."""
    w, h = dims.get(1, 1), dims.get(2, 1)
    descriptions = "".join(
        f'<DimensionDescription DimID="{k}" NumberOfElements="{n}" Origin="0" Length="1e-6" Unit="m" BytesInc="1"/>'
        for k, n in dims.items()
    )
    planes = int(np.prod(list(dims.values()), dtype=object))
    return (
        '<LMSDataContainerHeader Version="2"><Element Name="project"><Data><Experiment/></Data>'
        f'<Memory Size="0" MemoryBlockID="MemBlock_0"/><Children>{inside}'
        '<Element Name="Tiles" UniqueID="u1"><Data><Image><ImageDescription><Channels>'
        '<ChannelDescription DataType="0" ChannelTag="0" Resolution="8" BytesInc="0" LUTName="Gray"/>'
        f"</Channels><Dimensions>{descriptions}</Dimensions></ImageDescription></Image></Data>"
        f'<Memory Size="{planes}" MemoryBlockID="MemBlock_1"/><Children/></Element>'
        "</Children></Element></LMSDataContainerHeader>"
    ), planes * w * h


def lif_many_tiles(path: Path, tiles: int = 1_000_000) -> None:
    """A 1 x 1 pixel image of ``tiles`` mosaic tiles (DimID 10), its block holding every tile (1 MB): a
    scene per tile."""
    xml, size = lif_image_xml({1: 1, 2: 1, 10: tiles})
    write_lif_xml(path, xml, [size])


def lif_huge_header(path: Path, elements: int = 8_000_000) -> None:
    """A LIF whose XML header holds ``elements`` empty elements (64 MB of UTF-16): readlif's ElementTree of
    it takes some 700 MB."""
    xml, size = lif_image_xml(
        {1: 8, 2: 8}, inside='<Element Name="junk"><Data>' + "<a/>" * elements + "</Data></Element>"
    )
    write_lif_xml(path, xml, [size])


# ----------------------------------------------------------------------------------- OIB / OIF, written


def write_oib(path: Path, planes: dict[str, bytes], dyes: list[str]) -> None:
    """An OIB: the OIF settings and the TIFF streams ``planes`` (file name -> TIFF bytes), as test_readers
    writes one."""
    settings = Path(tempfile.mkdtemp(prefix=f"{path.stem}-settings-", dir=path.parent))
    main = write_oif(settings, np.zeros((1, 1, 1, 1), np.uint16), (0.2, 0.2), dyes)
    streams = {"Stream00000": main.read_bytes()}
    info = ["[OibSaveInfo]", "Version=2.0.0.0", "MainFileName=Stream00000", "Stream00000=cells.oif"]
    info.append("Storage00001=cells.oif.files")
    for i, (name, tiff) in enumerate(planes.items(), start=1):
        streams[f"Storage00001/Stream{i:05d}"] = tiff
        info.append(f"Stream{i:05d}={name}")
    write_compound_file(path, {"OibInfo.txt": settings_text(info), **streams})


def tiff_bytes(plane: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane)
    return buffer.getvalue()


def zero_tiles(shape: tuple[int, int], tile: tuple[int, int], dtype):
    block = np.zeros(tile, dtype)
    for _ in range(-(-shape[0] // tile[0]) * -(-shape[1] // tile[1])):
        yield block


def oib_plane_bomb(path: Path, side: int = 20_000) -> None:
    """An OIB of two channels: channel 1 a 64 x 64 uint16 plane, channel 2 a zlib TIFF of side x side
    uint16 zeros (about 1 MB; 800 MB decoded)."""
    bomb = io.BytesIO()
    tifffile.imwrite(
        bomb,
        zero_tiles((side, side), (512, 512), np.uint16),
        shape=(side, side),
        dtype=np.uint16,
        compression="zlib",
        tile=(512, 512),
    )
    planes = {"s_C001Z001.tif": tiff_bytes(np.full((64, 64), 7, np.uint16)), "s_C002Z001.tif": bomb.getvalue()}
    write_oib(path, planes, ["TD1", "Alexa Fluor 488"])


def oib_jpeg_plane(path: Path, side: int = 30_000) -> None:
    """An OIB of two uint8 channels: channel 2 a 64 x 64 TIFF whose one strip is a JPEG that says it is side x
    side pixels (900 MB decoded)."""
    plane = io.BytesIO()
    tifffile.imwrite(plane, np.zeros((64, 64), np.uint8), compression="jpeg")
    jpeg = bytearray(plane.getvalue())
    struct.pack_into(">HH", jpeg, jpeg.find(b"\xff\xc0") + 5, side, side)
    planes = {"s_C001Z001.tif": tiff_bytes(np.full((64, 64), 7, np.uint8)), "s_C002Z001.tif": bytes(jpeg)}
    write_oib(path, planes, ["TD1", "Alexa Fluor 488"])


def oib_fat_loop(path: Path) -> None:
    """A 10 kB OIB whose directory's sector chain points back at itself."""
    write_oib(path, {"s_C001Z001.tif": tiff_bytes(np.zeros((8, 8), np.uint16))}, ["TD1"])
    data = bytearray(path.read_bytes())
    dir_start, fat_sector = struct.unpack_from("<I", data, 48)[0], struct.unpack_from("<I", data, 76)[0]
    struct.pack_into("<I", data, 512 + 512 * fat_sector + 4 * dir_start, dir_start)
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ refused, quickly


def refused(path: Path, limits: Limits | None = None, plane: tuple[int, ...] | None = None) -> str:
    """The LsmError's message when ``path`` is opened (and, with ``plane``, that plane read), and that it came
    within FAST_S seconds."""
    start = time.perf_counter()
    with pytest.raises(LsmError) as info:
        with open_microscope_file(path, limits=limits) as mf:
            if plane is not None:
                mf.plane(*plane)
    assert time.perf_counter() - start < FAST_S, f"refused only after {time.perf_counter() - start:.1f} s"
    return str(info.value)


def czi_channels(path: Path, channels: int = 150) -> None:
    """A CZI of one 8 x 8 subblock whose metadata names ``channels`` channels."""
    write_czi(path, (8, 8), bytes(128), xml=czi_xml(channels=channels))


def lif_memory_blocks(path: Path, blocks: int = 150) -> None:
    """A LIF of one 8 x 8 image followed by ``blocks`` more memory blocks of one byte."""
    xml, size = lif_image_xml({1: 8, 2: 8})
    write_lif_xml(path, xml, [size] + [1] * blocks)


@pytest.mark.parametrize(
    ("name", "write", "max_planes", "declared", "limit"),
    [
        ("many.czi", partial(czi_many_subblocks, n=150), 100, "declares 150 subblocks", "100 planes"),
        ("channels.czi", czi_channels, 100, "declares 150 channels", "100 planes"),
        ("long.nd2", partial(nd2_many_time_points, count=30_000), None, "declares 30,000 time points", "20,000 planes"),
        ("tiles.lif", partial(lif_many_tiles, tiles=5_000), 1_000, "declares 5,000 tiles", "1,000 planes"),
        ("blocks.lif", lif_memory_blocks, 100, "more than 100 memory blocks", "100 planes"),
    ],
)
def test_a_file_declaring_more_planes_than_the_limit_is_refused_from_its_headers(
    tmp_path, name, write, max_planes, declared, limit
):
    """Refused from the headers (before nd2 lists its frames), naming the count and the limit (None: the
    default)."""
    path = tmp_path / name
    write(path)
    message = refused(path, Limits(max_planes=max_planes) if max_planes else None)
    assert declared in message and f"{limit} (LSM_MAX_PLANES)" in message, message


def test_a_lif_whose_xml_header_costs_more_than_the_image_limit_is_refused(tmp_path):
    """200,000 empty elements (1.6 MB of UTF-16) cost more than 10 MB as readlif's tree."""
    path = tmp_path / "header.lif"
    lif_huge_header(path, 200_000)
    message = refused(path, Limits(max_image_bytes=10_000_000))
    assert "XML header" in message and "LSM_MAX_IMAGE_BYTES" in message


def test_a_czi_whose_few_subblocks_make_too_many_planes_is_refused(tmp_path):
    """30 subblocks at T, C and Z 0..9 each make 10 x 10 x 10 planes of one scene."""
    path = tmp_path / "sparse.czi"
    entries = [{"T": i, "C": 0, "Z": 0} for i in range(10)] + [{"C": i} for i in range(1, 10)]
    entries += [{"Z": i} for i in range(1, 10)]
    write_czi(path, (8, 8), bytes(128), entries=entries, xml=czi_xml())
    message = refused(path, Limits(max_planes=100))
    assert "LSM_MAX_PLANES" in message and "time points" in message and "z planes" in message


@pytest.mark.parametrize(("bomb", "side"), [(czi_jpeg_bomb, 30_000), (czi_jpegxr_bomb, 20_000)], ids=["jpeg", "jpegxr"])
def test_a_czi_tile_whose_codestream_declares_a_larger_image_is_refused_before_decoding(tmp_path, bomb, side):
    path = tmp_path / "bomb.czi"
    bomb(path, side)
    message = refused(path, plane=(0,))
    assert "(64, 64)" in message and f"({side}, {side})" in message  # the tile's shape and the stream's


def test_an_nd2_frame_that_decompresses_beyond_its_size_is_refused(tmp_path):
    path = tmp_path / "bomb.nd2"
    nd2_frame_bomb(path, 200_000_000)
    message = refused(path, plane=(0, 0, 0, 0))
    assert "expands beyond" in message


def test_an_oif_whose_file_names_declare_too_many_z_planes_is_refused(tmp_path):
    planes = np.zeros((1, 2, 4, 4), np.uint16)
    main = write_oif(tmp_path, planes, (0.2, 0.2), ["TD1"])
    storage = tmp_path / "cells.oif.files"
    (storage / "s_C001Z002.tif").rename(storage / "s_C001Z5000.tif")
    message = refused(main, Limits(max_planes=1_000))
    assert "declares 5,000 z planes" in message and "LSM_MAX_PLANES" in message


def test_an_oib_plane_stored_larger_than_the_first_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.oib"
    oib_plane_bomb(path, 10_000)
    message = refused(path, plane=(0, 0, 1, 0))
    assert "is stored as 10000 x 10000 pixels" in message and "inconsistent" in message


def test_an_oib_plane_stored_as_a_larger_jpeg_is_refused_before_decoding(tmp_path):
    path = tmp_path / "jpeg.oib"
    oib_jpeg_plane(path)
    message = refused(path, plane=(0, 0, 1, 0))
    assert "JPEG picture of 30,000 x 30,000 pixels" in message


def test_a_legacy_nd2_frame_is_measured_by_its_jpeg_2000_header():
    """A legacy ND2 stores each channel of a frame as JPEG 2000 (no legacy file can be written here: its
    header reader is checked on streams imagecodecs writes, one of them patched to claim 20,000 x 30,000)."""
    import imagecodecs

    from lsm_core.imaging.readers.nd2 import _j2k_size

    grey = bytes(imagecodecs.jpeg2k_encode(np.zeros((31, 38), np.uint16)))
    assert _j2k_size(grey) == (38, 31, 1)
    assert _j2k_size(bytes(imagecodecs.jpeg2k_encode(np.zeros((31, 38, 3), np.uint8)))) == (38, 31, 3)
    claims = bytearray(grey)
    siz = claims.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", claims, siz + 8, 30_000, 20_000)
    assert _j2k_size(bytes(claims)) == (30_000, 20_000, 1)
    assert _j2k_size(b"not a picture") is None


def test_an_oib_whose_sector_chain_loops_is_refused_instead_of_read_forever(tmp_path):
    """oiffile follows a chain until its end mark: in a child process (so that a loop cannot take this one's
    memory), under 2 GB of address space and a time limit."""
    path = tmp_path / "loop.oib"
    oib_fat_loop(path)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from lsm_core.errors import LsmError\n"
        "from lsm_core.imaging.readers import open_microscope_file\n"
        "try:\n"
        "    open_microscope_file(sys.argv[1])\n"
        "except LsmError as exc:\n"
        "    print(exc)\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("opening the OIB did not end within 60 s")
    assert "OLE compound document" in out.stdout and "loops" in out.stdout, out.stdout + out.stderr[-2000:]


# ------------------------------------------------------------------------------------ peak memory, slow

# name: (writer, channel to classify, whether reading its headers alone is the bomb). ``submit`` reads headers
# only (the worker decodes), so the files whose bomb is in their pixels go through ``classify`` alone.
HOSTILE = {
    "many_subblocks.czi": (czi_many_subblocks, "0", True),
    "huge_metadata.czi": (czi_huge_metadata, "0", True),
    "lzw_bomb.czi": (czi_lzw_bomb, "0", False),
    "jpeg_bomb.czi": (czi_jpeg_bomb, "0", False),
    "jpegxr_bomb.czi": (czi_jpegxr_bomb, "0", False),
    "many_time_points.nd2": (nd2_many_time_points, "0", True),
    "frame_bomb.nd2": (nd2_frame_bomb, "0", False),
    "many_tiles.lif": (lif_many_tiles, "0", True),
    "huge_header.lif": (lif_huge_header, "0", True),
    "plane_bomb.oib": (oib_plane_bomb, "1", False),
    "jpeg_plane.oib": (oib_jpeg_plane, "1", False),
}
RUNS = [
    (c, n) for n, (_, _, headers) in HOSTILE.items() for c in (("submit", "classify") if headers else ("classify",))
]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    with measuring(tmp_path_factory.mktemp("vendor-memory")) as measured:
        yield measured


@pytest.mark.slow
@pytest.mark.parametrize(("command", "name"), RUNS)
def test_a_hostile_vendor_file_stays_within_the_memory_bound(setting, tmp_path, command, name):
    write, channel, _ = HOSTILE[name]
    hostile = setting.built(name, write)

    def args(path: Path, batch: str) -> list[str]:
        plane = ["--channel", channel, "--z", "0"]
        if command == "submit":
            return ["submit", str(path), "--model", "demo-lsm", "--batch", batch, *plane]
        return ["classify", str(path), "--model", "demo-lsm", "--out", str(tmp_path / f"{batch}.csv"), *plane]

    code, base, out = setting.baseline(command, args(setting.small, "baseline"))
    assert code == 0, out
    code, peak, out = setting.peak_mb(args(hostile, "hostile"))
    assert peak - base < BOUND_MB, f"{name} through {command}: {peak:.0f} MB peak vs {base:.0f} MB for a small image"
    if command == "classify":  # nothing classified from it, and each of its rows says why
        rows = (tmp_path / "hostile.csv").read_text().splitlines()
        assert len(rows) >= 2 and all(name in r.split(",")[0] for r in rows[1:]), rows[:3]
