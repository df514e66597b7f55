"""Zeiss CZI through czifile (:class:`CziReader`): only the subblocks of a plane are read (tiles of a mosaic
are pasted into the plane). czifile parses the file; the subblocks are decoded here with imagecodecs (the
czifile release on our mirror knows no zstd, ZEN 3's compression, and its LZW path fails on NumPy 2)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsm_core.errors import LsmError
from lsm_core.imaging.readers.base import Limits, Scene, StackReader, check_declared, pieces, yx_um


def _zstd_decode(data: bytes, compression: int, nbytes: int) -> bytes:
    """ZEN's zstd subblocks: 5 = plain zstd; 6 = a small header (size byte 1, or 3 with chunk type 1 whose
    lowest bit says the 16-bit pixels were stored as all low bytes, then all high bytes) then zstd. Never
    more than ``nbytes`` (the subblock's size from its header) is decompressed."""
    import imagecodecs

    if compression == 5:
        return bytes(imagecodecs.zstd_decode(data, out=nbytes))
    size = data[0]
    hilo = False
    if size == 3 and len(data) >= 3 and data[1] == 1:
        hilo = bool(data[2] & 1)
    elif size != 1:
        raise ValueError(f"unknown zstd1 header of {size} bytes")
    out = bytes(imagecodecs.zstd_decode(data[size:], out=nbytes))
    if hilo:
        half = len(out) // 2
        packed = np.frombuffer(out, np.uint8)
        out = np.stack([packed[:half], packed[half:]], axis=1).tobytes()
    return out


# A subblock's dimensions are among X Y C Z T R S I H V B M (and a few reserved): an entry listing more is damaged
_CZI_MAX_DIMENSIONS = 16
_CZI_TEXT_CHARS = 1000  # of one metadata value (a name, a number) kept: the rest of a longer one is dropped


def _czi_segment(fh: Any, position: int, sid: bytes, n: int) -> bytes | None:
    """The first ``n`` bytes of the segment at ``position`` (its 32-byte header included), or None when that
    is not a segment ``sid``."""
    if position <= 0:
        return None
    fh.seek(position)
    head = bytes(fh.read(n))
    return head if len(head) == n and head[:16].rstrip(b"\0") == sid else None


def _czi_check_directory(fh: Any, position: int, limits: Limits, what: str) -> None:
    """The subblock directory from its own bytes, before czifile builds an object per entry and per
    dimension: its declared number of entries against LSM_MAX_PLANES (a subblock, one tile of one plane,
    counts as a plane), then each entry's number of dimensions."""
    head = _czi_segment(fh, position, b"ZISRAWDIRECTORY", 36)
    if head is None:
        raise ValueError("no subblock directory where the file header says")
    count = struct.unpack_from("<i", head, 32)[0]
    check_declared(limits, what, subblocks=count)
    fh.seek(position + 32 + 128)
    for i in range(count):
        entry = fh.read(32)
        if len(entry) < 32:
            raise ValueError(f"the subblock directory ends after {i:,} of its {count:,} entries")
        dims = struct.unpack_from("<i", entry, 28)[0]
        if not 0 <= dims <= _CZI_MAX_DIMENSIONS:
            raise ValueError(f"a subblock directory entry declares {dims:,} dimensions")
        fh.seek(20 * dims, 1)


class _CziMetadata:
    """What the CZI reader takes from the file's XML metadata: channel names, the pixel size, scene names.

    A target of ET.XMLParser fed the metadata segment a piece at a time: nothing else of the document is
    kept, so metadata of any size costs its nesting depth, not its size (ElementTree would hold every element,
    some 90 bytes each: 10 MB of empty elements took 225 MB). Channels and scenes beyond ``keep`` are counted,
    not kept.
    """

    CHANNELS = ("Metadata/Information/Image/Dimensions/Channels/Channel", "Metadata/DisplaySetting/Channels/Channel")
    SCENE = "Metadata/Information/Image/Dimensions/S/Scenes/Scene"
    DISTANCE = "Metadata/Scaling/Items/Distance"
    TEXTS = (f"{DISTANCE}/Value", *(f"{c}/ShortName" for c in CHANNELS))  # values read from an element's text
    # every path leading to one of the above: an element elsewhere costs a push and a pop
    WANTED = {"/".join(p.split("/")[:i]) for p in (SCENE, *TEXTS) for i in range(1, p.count("/") + 2)}

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.counts = dict.fromkeys((*self.CHANNELS, self.SCENE), 0)
        self.channels: dict[str, list[str]] = {p: [] for p in self.CHANNELS}
        self.scenes: list[str | None] = []
        self.distances: dict[str, float] = {}
        self._path: list[str | None] = []  # per open element, its path below the root; None: nothing wanted
        self._distance = ""
        self._text: list[str] | None = None
        self._chars = 0

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        path = self._path
        if not path:
            path.append("")  # the root
            return
        parent = path[-1]
        where = None if parent is None else f"{parent}/{tag}" if parent else tag
        if where not in self.WANTED:
            path.append(None)
            return
        path.append(where)
        if where in self.counts:
            self.counts[where] += 1
            if self.counts[where] <= self.keep:
                if where == self.SCENE:
                    self.scenes.append(attrib.get("Name"))
                else:
                    self.channels[where].append(attrib.get("Name") or "")
        elif where == self.DISTANCE:
            self._distance = attrib.get("Id", "")
        elif where in self.TEXTS:
            self._text, self._chars = [], 0

    def data(self, text: str) -> None:
        if self._text is not None and self._chars < _CZI_TEXT_CHARS:
            self._text.append(text[: _CZI_TEXT_CHARS - self._chars])
            self._chars += len(text)

    def end(self, tag: str) -> None:
        where = self._path.pop()
        if self._text is not None and where in self.TEXTS:
            text = "".join(self._text).strip()
            self._text = None
            parent = where.rpartition("/")[0]
            if parent == self.DISTANCE:
                try:
                    self.distances[self._distance] = float(text or "nan") * 1e6  # metres
                except ValueError:
                    pass
            else:
                names = self.channels[parent]
                if names and not names[-1] and self.counts[parent] <= self.keep:
                    names[-1] = text

    def close(self) -> None:
        return None

    def channel_names(self) -> list[str]:
        for p in self.CHANNELS:
            if self.counts[p]:
                return self.channels[p]
        return []


def _czi_metadata(fh: Any, position: int, limits: Limits, what: str) -> _CziMetadata:
    """The CZI's XML metadata streamed from its segment (1 MB at a time) through :class:`_CziMetadata`; the
    channels and scenes it names checked against LSM_MAX_PLANES. Damaged XML gives no names and no pixel
    size, as a file without metadata; metadata missing where the file header says is a damaged file."""
    meta = _CziMetadata(limits.max_planes)
    if position <= 0:
        return meta
    head = _czi_segment(fh, position, b"ZISRAWMETADATA", 40)
    if head is None:
        raise ValueError("no metadata where the file header says")
    left = max(0, struct.unpack_from("<i", head, 32)[0])
    fh.seek(position + 32 + 256)
    parser = ET.XMLParser(target=meta)
    try:
        for piece in pieces(fh, left):
            parser.feed(piece)
        parser.close()
    except ET.ParseError:
        return _CziMetadata(limits.max_planes)
    check_declared(
        limits,
        what,
        channels=max(meta.counts[p] for p in meta.CHANNELS),
        scenes=meta.counts[meta.SCENE],
    )
    return meta


@dataclass(frozen=True)
class _CziBlock:
    entry: Any
    t: int
    c: int
    z: int
    y: int
    x: int
    h: int
    w: int


class CziReader(StackReader):
    """Zeiss CZI through czifile: each S index is a scene; one plane is the subblocks of that (T, C, Z),
    tiles pasted at their positions. Pyramid levels (downscaled subblocks) are skipped; of the rarer axes
    (phase H, rotation R, illumination I, view V, block B) the first index is read.

    Bounded from the file's own bytes before czifile parses them: the directory's number of subblocks, the
    scenes, time points, channels and z planes they make and the channels and scenes the metadata names
    (LSM_MAX_PLANES); the metadata is streamed, never held; each subblock's header is read before its data,
    and its data is decompressed into a buffer the size of its tile, never more."""

    format = "CZI"
    library = "czifile"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        import czifile

        super().__init__(path, name, limits)
        self._fh = path.open("rb")  # the headers this layer checks before czifile reads them
        try:
            self._czi = czifile.CziFile(str(path), multifile=False)
        except Exception:
            self._fh.close()
            raise
        self._set_up()

    def _setup(self) -> None:
        _czi_check_directory(self._fh, int(self._czi.header.directory_position or 0), self.limits, self.name)
        entries = list(self._czi.subblock_directory)
        if not entries:
            raise LsmError("the CZI holds no image subblocks")
        rows = []
        for e in entries:
            dims = {d.dimension: d for d in e.dimension_entries}
            if "X" not in dims or "Y" not in dims:
                continue
            if dims["X"].stored_size != dims["X"].size or dims["Y"].stored_size != dims["Y"].size:
                continue  # a pyramid level
            rows.append((e, {k: int(v.start) for k, v in dims.items()}, dims))
        if not rows:
            raise LsmError("the CZI holds no full-resolution subblocks")
        others = {k for _, starts, _ in rows for k in starts} - set("STCZYXM0B")
        first = {k: min(starts.get(k, 0) for _, starts, _ in rows) for k in others}
        rows = [r for r in rows if all(r[1].get(k, 0) == v for k, v in first.items())]

        meta = _czi_metadata(self._fh, int(self._czi.header.metadata_position or 0), self.limits, self.name)
        names = meta.channel_names()
        size = yx_um(meta.distances.get("Y"), meta.distances.get("X"))
        scene_names = meta.scenes

        by_scene: dict[int, list[tuple[Any, dict[str, int], dict[str, Any]]]] = {}
        for row in rows:
            by_scene.setdefault(row[1].get("S", 0), []).append(row)
        most = [max(len({r[1].get(k, 0) for r in srows}) for srows in by_scene.values()) for k in "TCZ"]
        check_declared(
            self.limits, self.name, scenes=len(by_scene), time_points=most[0], channels=most[1], z_planes=most[2]
        )
        self._blocks: list[list[_CziBlock]] = []
        for s in sorted(by_scene):
            srows = by_scene[s]
            ts = sorted({r[1].get("T", 0) for r in srows})
            cs = sorted({r[1].get("C", 0) for r in srows})
            zs = sorted({r[1].get("Z", 0) for r in srows})
            y0 = min(r[1]["Y"] for r in srows)
            x0 = min(r[1]["X"] for r in srows)
            y1 = max(r[1]["Y"] + int(r[2]["Y"].size) for r in srows)
            x1 = max(r[1]["X"] + int(r[2]["X"].size) for r in srows)
            blocks = [
                _CziBlock(
                    r[0],
                    ts.index(r[1].get("T", 0)),
                    cs.index(r[1].get("C", 0)),
                    zs.index(r[1].get("Z", 0)),
                    r[1]["Y"] - y0,
                    r[1]["X"] - x0,
                    int(r[2]["Y"].size),
                    int(r[2]["X"].size),
                )
                for r in srows
            ]
            blocks.sort(key=lambda b: b.entry.mosaic_index if b.entry.mosaic_index is not None else -1)
            self._blocks.append(blocks)
            dtype = np.dtype(srows[0][0].dtype)
            samples = int(dtype.shape[0]) if dtype.shape else 1
            base = np.dtype(dtype.base).newbyteorder("=")
            channel_names = [names[i] if i < len(names) else "" for i in cs]
            self._add_scene(
                scene_names[s] if s < len(scene_names) else None,
                (len(ts), len(cs), len(zs), y1 - y0, x1 - x0),
                base,
                channel_names,
                size,
                "CZI metadata (Scaling/Items/Distance)",
                rgb=samples in (3, 4),
                samples=samples,
            )

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        blocks = [b for b in self._blocks[scene.index] if (b.t, b.c, b.z) == (t, c, z)]
        shape: tuple[int, ...] = (scene.sizes["Y"], scene.sizes["X"])
        if scene.samples > 1:
            shape = (*shape, scene.samples)
        out = np.zeros(shape, scene.dtype)
        for b in blocks:
            tile = self._decode(b, scene)
            out[b.y : b.y + b.h, b.x : b.x + b.w] = tile
        return out

    def _decode(self, block: _CziBlock, scene: Scene) -> np.ndarray:
        """One subblock (tile) as (h, w) or (h, w, samples) RGB. Decoded here rather than by czifile, whose
        release on our mirror knows no zstd and decodes LZW with a NumPy call that NumPy 2 removed. Every codec
        decodes into a buffer of the tile's size from the directory (LZW stops there, zstd, JPEG and JPEG XR
        refuse a stream that declares more before decoding it), so a subblock never expands beyond its tile."""
        import imagecodecs

        entry = block.entry
        base = np.dtype(np.dtype(entry.dtype).base)
        nbytes = block.h * block.w * scene.samples * base.itemsize
        self._check_subblock(entry, nbytes)
        segment = entry.data_segment()
        compression = int(entry.compression)
        raw = segment.data(raw=True)
        tile = (block.h, block.w) if scene.samples == 1 else (block.h, block.w, scene.samples)
        if compression == 0:
            arr = np.frombuffer(raw, base, count=block.h * block.w * scene.samples)
        elif compression == 2:
            arr = np.frombuffer(imagecodecs.lzw_decode(raw, out=nbytes), base)
        elif compression in (5, 6):
            arr = np.frombuffer(_zstd_decode(raw, compression, nbytes), base)
        elif compression == 1:
            arr = np.asarray(imagecodecs.jpeg8_decode(raw, out=np.empty(tile, base)))
        elif compression == 4:
            arr = np.asarray(imagecodecs.jpegxr_decode(raw, out=np.empty(tile, base)))
        else:
            raise ValueError(f"subblock compression {compression} is not supported (camera-specific raw data?)")
        arr = arr[: block.h * block.w * scene.samples].reshape(block.h, block.w, scene.samples)
        if scene.samples in (3, 4) and compression != 4:
            arr = arr[..., [2, 1, 0, 3][: scene.samples]]  # BGR(A) -> RGB(A), as czifile does
        return arr if scene.samples > 1 else arr[..., 0]

    def _check_subblock(self, entry: Any, nbytes: int) -> None:
        """The subblock's own header, read before czifile parses it: its number of dimensions, and its data
        size, at most twice its tile's decoded size and 64 KB (no codec makes data larger)."""
        head = _czi_segment(self._fh, int(entry.file_position), b"ZISRAWSUBBLOCK", 32 + 16 + 32)
        if head is None:
            raise ValueError("no subblock where the directory says")
        data_size = struct.unpack_from("<q", head, 40)[0]
        dims = struct.unpack_from("<i", head, 48 + 28)[0]
        if not 0 <= dims <= _CZI_MAX_DIMENSIONS:
            raise ValueError(f"a subblock declares {dims:,} dimensions")
        if not 0 <= data_size <= 2 * nbytes + 65536:
            raise ValueError(f"a subblock declares {data_size:,} bytes for a tile of {nbytes:,}")

    def _close(self) -> None:
        self._czi.close()
        self._fh.close()
