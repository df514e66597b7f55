"""OME-Zarr through zarr (the metadata; :class:`ZarrReader`), as a folder or a ZIP of one: the chunks that
cross a plane are read and unpacked here (zarr would unpack a chunk whole, whatever it holds): memory is the
plane plus one chunk, bounded."""

from __future__ import annotations

import math
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lsm_core.errors import LsmError
from lsm_core.imaging.readers.archives import read_member
from lsm_core.imaging.readers.base import Limits, Scene, StackReader, check_declared, megabytes, um_per_unit, yx_um

# Zarr files read here, not by zarr: zarr unpacks a chunk whole with whatever its codec makes of it (a 2.5 KB
# OME-Zarr whose one 64 x 64 chunk unpacked to 1 GB took 3 GB). zarr reads the metadata (bounded by
# ZARR_METADATA_BYTES a file); each chunk is read and decoded here (:class:`_ZarrArray`), every codec undone into
# at most the chunk's declared size.
ZARR_METADATA_BYTES = 4 << 20
_ZARR_METADATA = frozenset({".zattrs", ".zarray", ".zgroup", ".zmetadata", "zarr.json"})
_ZARR_CHUNKS_PER_PLANE = 1 << 20  # chunks one plane may cross (a 100 MP plane in chunks of 10 x 10 pixels)
_ZARR_FILTERS = frozenset({"delta", "shuffle", "bitround"})  # v2 filters that keep a chunk's size
_NO_CHUNK = 2**64 - 1  # a shard index entry of a chunk never written


def _stored_cap(nbytes: int) -> int:
    """The most bytes a chunk of ``nbytes`` may take as stored: every compressor's worst case is far below."""
    return nbytes + nbytes // 8 + 65536


def _too_much(what: str, cap: int) -> LsmError:
    return LsmError(
        f"{what} unpacks to more than its declared {cap:,} bytes: the file is damaged or built to exhaust memory; "
        "refused"
    )


def _codec_name(codec: dict[str, Any]) -> str:
    return str(codec.get("id") or codec.get("name") or "?")


def _inflate(codec: dict[str, Any], data: bytes | memoryview, cap: int, what: str) -> bytes | memoryview:
    """One compressor of a Zarr chunk (v2 ``compressor`` or a v3 bytes-to-bytes codec) undone, streaming, into
    never more than ``cap`` bytes (the chunk's declared size): LsmError when the stream holds more (or is no
    stream of this codec)."""
    import bz2
    import lzma
    import zlib

    name = _codec_name(codec)
    config = codec.get("configuration", codec) or {}
    out: bytes | memoryview
    if name in ("zlib", "gzip"):
        parts, left, rest = [], cap + 1, data
        while rest:  # a gzip stream may be several members one after the other
            unpack = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, told from the stream
            part = unpack.decompress(rest, left)
            parts.append(part)
            left -= len(part)
            if left <= 0:
                raise _too_much(what, cap)
            if not unpack.eof:
                raise LsmError(f"{what} is cut short (its {name} stream does not end)")
            rest = unpack.unused_data if name == "gzip" else b""
        out = b"".join(parts)
    elif name in ("bz2", "lzma"):
        if name == "bz2":
            unpacker: Any = bz2.BZ2Decompressor()
        elif int(config.get("format", 1) or 1) == 3:  # raw LZMA: the filters are in the metadata
            filters = [dict(f) for f in (config.get("filters") or [])]
            unpacker = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)
        else:
            unpacker = lzma.LZMADecompressor()
        out = unpacker.decompress(data, cap + 1)
        if len(out) > cap:
            raise _too_much(what, cap)
    elif name == "zstd":
        import imagecodecs

        try:
            out = bytes(imagecodecs.zstd_decode(bytes(data), out=cap))  # into a buffer of cap bytes, at most
        except imagecodecs.ZstdError as exc:
            if "too small" in str(exc):
                raise _too_much(what, cap) from None
            raise
    elif name == "blosc":
        from numcodecs import Blosc

        if len(data) < 16:
            raise LsmError(f"{what} is cut short (no blosc header)")
        nbytes, _, cbytes = struct.unpack("<III", data[4:16])
        if nbytes > cap:
            raise _too_much(what, cap)
        if cbytes > len(data):
            raise LsmError(f"{what} is cut short (its blosc header says {cbytes:,} bytes; {len(data):,} are stored)")
        out = memoryview(Blosc().decode(data, out=np.empty(nbytes, np.uint8)))
    elif name == "lz4":
        from numcodecs import LZ4

        nbytes = int.from_bytes(data[:4], "little") if len(data) >= 4 else 0
        if nbytes > cap:
            raise _too_much(what, cap)
        out = memoryview(LZ4().decode(data, out=np.empty(nbytes, np.uint8)))
    else:
        raise LsmError(
            f"this OME-Zarr is compressed with {name}, which is not read here (blosc, zstd, zlib, gzip, lz4, bz2 "
            "and lzma are); save it again with one of those, or as OME-TIFF"
        )
    return out


class _ZarrSource:
    """The files of an OME-Zarr, a folder or a ZIP of one, read here with bounds: a file is read only when its
    declared size is within what its use allows (a chunk: its stored bound; see :func:`_stored_cap`), and a ZIP
    member is unpacked a piece at a time, never beyond its declared size (:func:`archives.read_member`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, zipfile.ZipInfo] = {}
        if not path.is_dir():
            self._zip = zipfile.ZipFile(path)
            self._members = {m.filename: m for m in self._zip.infolist() if not m.is_dir()}

    def size(self, key: str) -> int | None:
        if self._zip is not None:
            member = self._members.get(key)
            return None if member is None else int(member.file_size)
        file = self.path / key
        return file.stat().st_size if file.is_file() else None

    def read(self, key: str, cap: int, what: str, start: int = 0, length: int | None = None) -> bytes | None:
        """The bytes of ``key`` (from ``start``, ``length`` of them), None when there is no such file;
        LsmError when what would be read is over ``cap`` bytes."""
        size = self.size(key)
        if size is None:
            return None
        length = size - start if length is None else length
        if length > cap:
            raise LsmError(f"{what} is stored in {length:,} bytes, more than {cap:,} for its declared size; refused")
        if start < 0 or start + length > size:
            raise LsmError(f"{what} lies outside its file ({start:,} + {length:,} of {size:,} bytes)")
        if self._zip is not None:
            return read_member(self._zip, self._members[key], cap, start, length)
        with open(self.path / key, "rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


class _ZarrArray:
    """One Zarr array (v2, or v3 with sharding or without) read here from its own metadata: its chunks crossing
    a plane, each decoded into at most its declared size (:func:`_inflate`), whatever its stream holds."""

    def __init__(self, source: _ZarrSource, array: Any) -> None:
        import json

        self.source = source
        self.path = str(array.path).strip("/")
        self.shape = tuple(int(v) for v in array.shape)
        fill = array.fill_value
        v3 = int(array.metadata.zarr_format) == 3
        name = f"{self.path}/zarr.json" if v3 else f"{self.path}/.zarray"
        raw = source.read(name.lstrip("/"), ZARR_METADATA_BYTES, f"the Zarr metadata {name}")
        if raw is None:
            raise LsmError(f"the OME-Zarr has no {name}")
        meta = json.loads(raw)
        self.shard: tuple[int, ...] | None = None  # a shard's shape (v3 sharding), its chunks being self.chunks
        self.index_codecs: list[dict[str, Any]] = []
        self.index_at_end = True
        self.transpose: tuple[int, ...] | None = None
        if not v3:
            self.dtype = np.dtype(meta["dtype"])
            self.chunks = tuple(int(v) for v in meta["chunks"])
            self.order = str(meta.get("order") or "C")
            separator = str(meta.get("dimension_separator") or ".")
            self._prefix, self._separator = "", separator
            self.codecs = [meta["compressor"]] if meta.get("compressor") else []
            filters = [f for f in (meta.get("filters") or [])]
            unknown = [_codec_name(f) for f in filters if _codec_name(f) not in _ZARR_FILTERS]
            if unknown:
                raise LsmError(
                    f"this OME-Zarr uses the filter {unknown[0]}, which is not read here; save it again without "
                    "filters, or as OME-TIFF"
                )
            self.filters = filters
        else:
            grid = meta.get("chunk_grid") or {}
            if grid.get("name") != "regular":
                raise LsmError(f"this OME-Zarr's chunk grid {grid.get('name')!r} is not read here (only 'regular')")
            outer = tuple(int(v) for v in grid["configuration"]["chunk_shape"])
            encoding = meta.get("chunk_key_encoding") or {"name": "default"}
            separator = str((encoding.get("configuration") or {}).get("separator") or "")
            if encoding.get("name") == "v2":
                self._prefix, self._separator = "", separator or "."
            else:
                self._prefix, self._separator = "c", separator or "/"
            self.order, self.filters = "C", []
            codecs = list(meta.get("codecs") or [])
            if codecs and _codec_name(codecs[0]) == "sharding_indexed" and len(codecs) == 1:
                config = codecs[0].get("configuration") or {}
                self.shard = outer
                self.chunks = tuple(int(v) for v in config["chunk_shape"])
                if any(s % c for s, c in zip(self.shard, self.chunks)):
                    raise LsmError("this OME-Zarr's shards are not a whole number of chunks")
                codecs = list(config.get("codecs") or [])
                self.index_codecs = list(config.get("index_codecs") or [])
                self.index_at_end = config.get("index_location", "end") != "start"
                kinds = [_codec_name(c) for c in self.index_codecs]
                if kinds not in (["bytes"], ["bytes", "crc32c"]):
                    raise LsmError(f"this OME-Zarr's shard index is stored with {kinds}, which is not read here")
            else:
                self.chunks = outer
            endian = "little"
            self.codecs = []
            for codec in codecs:
                kind = _codec_name(codec)
                config = codec.get("configuration") or {}
                if kind == "transpose":
                    self.transpose = tuple(int(v) for v in config["order"])
                elif kind == "bytes":
                    endian = str(config.get("endian") or "little")
                elif kind == "sharding_indexed":
                    raise LsmError("this OME-Zarr shards its shards, which is not read here")
                else:
                    self.codecs.append(codec)
            dtype = meta.get("data_type")
            if not isinstance(dtype, str):
                raise LsmError(f"this OME-Zarr's data type {dtype!r} is not read here")
            self.dtype = np.dtype(dtype).newbyteorder("<" if endian == "little" else ">")
        if self.dtype.kind not in "biuf" or len(self.chunks) != len(self.shape) or min(self.chunks, default=1) < 1:
            raise LsmError(f"this OME-Zarr's array ({self.dtype}, chunks {self.chunks}) is not read here")
        self.fill = 0 if fill is None else fill
        self._index: tuple[str, np.ndarray | None] | None = None  # the last shard index read

    @property
    def chunk_bytes(self) -> int:
        return int(np.prod(self.chunks, dtype=np.int64)) * self.dtype.itemsize

    @property
    def index_bytes(self) -> int:
        """The bytes of one shard's index (0 without sharding)."""
        if self.shard is None:
            return 0
        per = int(np.prod([s // c for s, c in zip(self.shard, self.chunks)], dtype=np.float64))
        return 16 * per + (4 if len(self.index_codecs) > 1 else 0)

    def _key(self, coords: tuple[int, ...]) -> str:
        parts = [str(v) for v in coords]
        if self._prefix:
            parts.insert(0, self._prefix)
        return f"{self.path}/{self._separator.join(parts) or '0'}".lstrip("/")

    def _stored(self, coords: tuple[int, ...], what: str) -> bytes | None:
        """The stored bytes of the chunk at ``coords`` (counted in chunks), None when it was never written."""
        cap = _stored_cap(self.chunk_bytes)
        if self.shard is None:
            return self.source.read(self._key(coords), cap, what)
        per = tuple(s // c for s, c in zip(self.shard, self.chunks))
        key = self._key(tuple(c // p for c, p in zip(coords, per)))
        if self._index is None or self._index[0] != key:
            size = self.source.size(key)
            index = None
            if size is not None:
                n = self.index_bytes
                raw = self.source.read(key, n, f"the index of shard {key}", size - n if self.index_at_end else 0, n)
                index = np.frombuffer(raw or b"", "<u8", count=(n // 16) * 2).reshape(-1, 2)
            self._index = (key, index)
        index = self._index[1]
        if index is None:
            return None
        k = int(np.ravel_multi_index(tuple(c % p for c, p in zip(coords, per)), per))
        offset, nbytes = (int(v) for v in index[k])
        if offset == _NO_CHUNK and nbytes == _NO_CHUNK:
            return None
        return self.source.read(key, cap, what, offset, nbytes)

    def chunk(self, coords: tuple[int, ...]) -> np.ndarray | None:
        """The chunk at ``coords`` decoded (its whole shape, in native byte order), None when never written."""
        what = f"the chunk {self._key(coords)} of the OME-Zarr"
        data: bytes | memoryview | None = self._stored(coords, what)
        if data is None:
            return None
        cap = self.chunk_bytes
        for codec in reversed(self.codecs):
            if _codec_name(codec) == "crc32c":
                data = data[:-4]
            else:
                data = _inflate(codec, data, cap, what)
        for spec in reversed(self.filters):
            import numcodecs

            data = numcodecs.get_codec(dict(spec)).decode(data)
            data = np.asarray(data).tobytes() if not isinstance(data, bytes) else data
            if len(data) > cap:
                raise _too_much(what, cap)
        if len(data) != cap:
            raise LsmError(f"{what} holds {len(data):,} bytes where its shape and type take {cap:,}: it is damaged")
        shape = self.chunks if self.transpose is None else tuple(self.chunks[i] for i in self.transpose)
        block = np.frombuffer(data, self.dtype).reshape(shape, order="F" if self.order == "F" else "C")
        if self.transpose is not None:
            block = block.transpose(np.argsort(self.transpose))
        return block.astype(self.dtype.newbyteorder("="), copy=False)

    def plane(self, index: dict[int, int], iy: int, ix: int) -> np.ndarray:
        """The (Y, X) plane at ``index`` (array axis -> position, every axis but ``iy`` and ``ix``), chunk by
        chunk; what no chunk holds is the fill value."""
        ny, nx, cy, cx = self.shape[iy], self.shape[ix], self.chunks[iy], self.chunks[ix]
        rows, cols = -(-ny // cy), -(-nx // cx)
        if rows * cols > _ZARR_CHUNKS_PER_PLANE:
            raise LsmError(
                f"a plane of this OME-Zarr crosses {rows * cols:,} chunks of {cy} x {cx} pixels; at most "
                f"{_ZARR_CHUNKS_PER_PLANE:,} are read: save it with larger chunks"
            )
        native = self.dtype.newbyteorder("=")
        out = np.full((ny, nx), self.fill, native)
        for r in range(rows):
            for q in range(cols):
                coords = tuple(
                    r if a == iy else q if a == ix else index[a] // self.chunks[a] for a in range(len(self.shape))
                )
                block = self.chunk(coords)
                if block is None:
                    continue
                sel = tuple(slice(None) if a in (iy, ix) else index[a] % self.chunks[a] for a in range(len(self.shape)))
                part = block[sel]  # 2-D, in the array's order of Y and X
                if ix < iy:
                    part = part.T
                h, w = min(cy, ny - r * cy), min(cx, nx - q * cx)
                out[r * cy : r * cy + h, q * cx : q * cx + w] = part[:h, :w]
        return out


@dataclass(frozen=True)
class _ZarrImage:
    array: _ZarrArray
    axes: str  # one letter per array axis: T C Z Y X, or "t" for any other axis (folded into T)


class ZarrReader(StackReader):
    """OME-Zarr (NGFF 0.1 to 0.5; zarr v2 or v3) through zarr, as a folder or a ZIP of one: each image is a
    scene (one image; the series of a bioformats2raw layout; the fields of a plate), read at full
    resolution. A plane reads the chunks that cross it: memory is the plane plus one chunk, checked."""

    format = "OME-Zarr"
    library = "zarr"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        import zarr

        super().__init__(path, name, limits)
        self._store: Any = None
        self._source: _ZarrSource | None = None
        if path.is_dir():
            self._check_metadata(
                (str(f.relative_to(path)), f.stat().st_size) for f in path.rglob("*") if f.name in _ZARR_METADATA
            )
            self._store = zarr.storage.LocalStore(str(path), read_only=True)
            self._root = ""
        else:
            self._check_zip(path)
            self._store = zarr.storage.ZipStore(str(path), mode="r")
            self._root = str(detail or "")  # the image's folder inside the ZIP
        self._set_up()

    def _setup(self) -> None:
        import zarr

        assert self.path is not None
        self._source = _ZarrSource(self.path)
        root = zarr.open_group(store=self._store, path=self._root, mode="r")
        self._images: list[_ZarrImage] = []
        self._planes = 0  # declared by the images so far (LSM_MAX_PLANES bounds them all together)
        for label, group in self._image_groups(root):
            self._add(label, group)
        if not self.scenes:
            raise LsmError("the Zarr holds no OME-Zarr image (no 'multiscales' in its attributes)")

    def _check_zip(self, path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
        if len(members) > self.limits.max_archive_members:
            raise LsmError(
                f"the ZIP holds {len(members):,} files; the limit is {self.limits.max_archive_members:,} "
                "(LSM_MAX_ARCHIVE_MEMBERS)"
            )
        declared = sum(m.file_size for m in members)
        if declared > self.limits.max_archive_bytes:
            raise LsmError(
                f"the ZIP would unpack to {declared / 1e9:,.2f} GB; the limit is "
                f"{self.limits.max_archive_bytes / 1e9:,.2f} GB (LSM_MAX_ARCHIVE_BYTES)"
            )
        # zarr unpacks its metadata files whole (bounded: _check_metadata); chunks are read here, each within
        # the bound its declared size gives (_ZarrArray), and no member is unpacked beyond its declared size
        biggest = max((m.file_size for m in members), default=0)
        if biggest > self.limits.max_file_bytes:
            raise LsmError(
                f"a member of the ZIP unpacks to {megabytes(biggest)}; the limit for one file is "
                f"{megabytes(self.limits.max_file_bytes)} (LSM_MAX_FILE_BYTES)"
            )
        self._check_metadata(
            (m.filename, m.file_size) for m in members if PurePosixPath(m.filename).name in _ZARR_METADATA
        )

    @staticmethod
    def _check_metadata(files: Iterable[tuple[str, int]]) -> None:
        """LsmError when a metadata file (.zattrs, .zarray, .zgroup, .zmetadata, zarr.json), which zarr reads
        whole and parses, is over ZARR_METADATA_BYTES."""
        for name, size in files:
            if size > ZARR_METADATA_BYTES:
                raise LsmError(
                    f"the Zarr metadata file {name} declares {megabytes(size)}; at most "
                    f"{megabytes(ZARR_METADATA_BYTES)} are read (an OME-Zarr's metadata takes a few KB)"
                )

    @staticmethod
    def _attrs(group: Any) -> dict[str, Any]:
        attrs = dict(group.attrs)
        if isinstance(attrs.get("ome"), dict):  # NGFF 0.5 (zarr v3) keeps everything under "ome"
            merged = dict(attrs["ome"])
            merged.update({k: v for k, v in attrs.items() if k != "ome"})
            return merged
        return attrs

    def _image_groups(self, root: Any) -> Iterator[tuple[str | None, Any]]:
        attrs = self._attrs(root)
        if "multiscales" in attrs:
            yield (attrs["multiscales"][0].get("name") if attrs["multiscales"] else None), root
            return
        what, found = "the OME-Zarr", 0
        if "plate" in attrs:
            wells = attrs["plate"].get("wells", [])
            check_declared(self.limits, what, wells=len(wells))
            for well in wells:
                well_group = root[well["path"]]
                images = self._attrs(well_group).get("well", {}).get("images", [])
                found += len(images)
                check_declared(self.limits, what, scenes=found)  # before a scene is made of any
                for image in images:
                    yield f"{well['path']}/{image['path']}", well_group[image["path"]]
            return
        if "bioformats2raw.layout" in attrs:
            i = 0
            while str(i) in root:
                check_declared(self.limits, what, series=i + 1)
                group = root[str(i)]
                multiscales = self._attrs(group).get("multiscales") or [{}]
                yield multiscales[0].get("name") or str(i), group
                i += 1

    def _add(self, label: str | None, group: Any) -> None:
        attrs = self._attrs(group)
        multiscale = attrs["multiscales"][0]
        dataset = multiscale["datasets"][0]
        array = group[dataset["path"]]
        shape = tuple(int(v) for v in array.shape)
        axes_meta = multiscale.get("axes")
        if axes_meta is None:  # NGFF 0.1 / 0.2: always t, c, z, y, x
            axes_meta = ["t", "c", "z", "y", "x"][-len(shape) :]
        names = [(a["name"] if isinstance(a, dict) else str(a)).lower() for a in axes_meta]
        units = [(a.get("unit") if isinstance(a, dict) else None) for a in axes_meta]
        if len(names) != len(shape):
            raise LsmError(f"the OME-Zarr names {len(names)} axes for an array of {len(shape)} dimensions")
        letters = "".join({"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(n, "t") for n in names)
        if "Y" not in letters or "X" not in letters:
            raise LsmError(f"the OME-Zarr image has axes {names}, without y and x")
        dims = dict(zip(letters, shape))
        size_t = math.prod(s for a, s in zip(letters, shape) if a in "Tt")
        n_c = int(dims.get("C", 1))
        # before a list, a loop or a row is made per plane (a 934-byte OME-Zarr declaring 20,000,000 channels
        # built a channel list of as many names)
        check_declared(self.limits, "the OME-Zarr", channels=n_c, z_planes=dims.get("Z", 1), time_points=size_t)
        self._planes += n_c * dims.get("Z", 1) * size_t
        check_declared(self.limits, "the OME-Zarr", planes=self._planes)
        scale = [1.0] * len(shape)
        for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
            for tr in transforms or []:
                if tr.get("type") == "scale" and len(tr.get("scale", [])) == len(shape):
                    scale = [a * float(b) for a, b in zip(scale, tr["scale"])]
        iy, ix = letters.index("Y"), letters.index("X")
        fy, fx = um_per_unit(units[iy]), um_per_unit(units[ix])
        size = yx_um(scale[iy] * fy, scale[ix] * fx) if fy and fx else None
        omero = attrs.get("omero") or {}
        channel_names = [ch.get("label", "") for ch in omero.get("channels", [])[:n_c]]
        assert self._source is not None
        self._images.append(_ZarrImage(_ZarrArray(self._source, array), letters))
        self._add_scene(
            label or multiscale.get("name") or None,
            (size_t, n_c, dims.get("Z", 1), dims["Y"], dims["X"]),
            np.dtype(array.dtype),
            channel_names,
            size,
            "OME-Zarr multiscales scale + axes unit",
        )

    def _unit_bytes(self, scene: int) -> tuple[int, str]:
        array = self._images[scene].array
        if array.shard is not None:
            return (
                array.chunk_bytes + array.index_bytes,
                f"one Zarr chunk of shape {array.chunks} and the index of its shard of shape {array.shard}",
            )
        return array.chunk_bytes, f"one Zarr chunk of shape {array.chunks}"

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        image = self._images[scene.index]
        t_shape = tuple(int(s) for a, s in zip(image.axes, image.array.shape) if a in "Tt")
        t_index = iter(int(v) for v in np.unravel_index(t, t_shape)) if t_shape else iter(())
        index = {
            i: c if axis == "C" else z if axis == "Z" else next(t_index)
            for i, axis in enumerate(image.axes)
            if axis not in "YX"
        }
        return image.array.plane(index, image.axes.index("Y"), image.axes.index("X"))

    def _close(self) -> None:
        close = getattr(self._store, "close", None)
        if close is not None:
            close()
        if self._source is not None:
            self._source.close()


def zip_zarr_root(path: Path, limits: Limits) -> str | None:
    """The folder inside a ZIP that holds an OME-Zarr ("" for the top), or None when it holds none."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise LsmError(f"the ZIP archive is damaged ({exc})") from None
    names = [m.filename for m in members]
    markers = (".zattrs", ".zgroup", "zarr.json")
    roots = sorted(
        {str(PurePosixPath(n).parent) for n in names if PurePosixPath(n).name in markers},
        key=lambda p: (p.count("/"), p),
    )
    if not roots:
        return None
    root = roots[0]
    return "" if root == "." else root
