"""Microscope files as the microscope writes them: one lazy API over every format.

Every file opens as a :class:`MicroscopeFile`: its scenes (positions, scenes, series, tiles), each with its
sizes along T, C, Z, Y, X, its pixel type, its channel names, whether it is an RGB photograph, and its pixel
size in micrometres with where that number came from. :meth:`MicroscopeFile.plane` decodes one 2-D plane
(Y, X) and nothing else.

Formats and their readers
-------------------------
The format is told from the file's content (magic bytes, then structure), never from its name alone. Each
format is read by the field's maintained single-format reader:

=============  ==================  ================================================================
format         reader              one plane at a time?
=============  ==================  ================================================================
OME-TIFF,      tifffile            yes: one TIFF page (IFD); a contiguous uncompressed series is read
ImageJ TIFF,                       at the plane's byte offset. A series whose pages hold more than one
TIFF, LSM                          plane (a rare volumetric page) is read whole, bounded (see Memory).
CZI            czifile             yes: only the subblocks of that plane (tiles of a mosaic are pasted
                                   into the plane). czifile parses the file; the subblocks are decoded
                                   here with imagecodecs (the czifile release on our mirror knows no
                                   zstd, ZEN 3's compression, and its LZW path fails on NumPy 2).
ND2            nd2                 one frame: a frame holds every channel of one (position, time, z),
                                   so a plane costs C planes of memory, bounded.
LIF            readlif             yes: one plane read at its offset.
OIB, OIF       oiffile             yes: one TIFF file of the compound document / folder.
OME-Zarr       zarr (metadata)     the chunks that cross the plane, read and unpacked here (zarr
                                   would unpack a chunk whole, whatever it holds): memory is the
                                   plane plus one chunk, bounded.
PNG, JPEG      Pillow (images.py)  the whole picture (it is one plane).
=============  ==================  ================================================================

Olympus OIR files are recognised but not read: no OIR reader is installable here (the ``oirfile`` package is
not on our package mirror); the message says to export the file as OME-TIFF.

Axes
----
``sizes`` always has the five keys T, C, Z, Y, X (1 when the file lacks an axis). Axes that are none of
these (tifffile's I and Q for a plain stack of pages, OME-Zarr custom axes, ...) are folded into T, in file
order: each index along them is one more "time point", which is also how :mod:`lsm_core.imaging.images`
treats the pages of a plain multi-page TIFF (every page is its own image). An RGB photograph
(samples per pixel 3 or 4, photometric RGB) is one channel: :meth:`MicroscopeFile.plane` returns its
luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, as in :func:`images.to_grey_float`) in the file's
pixel type; grey + alpha returns the grey. Several grey samples per pixel that are not RGB (a 3-channel
fluorescence TIFF stored "contig") are channels.

Pixel sizes
-----------
``pixel_size_um`` is (y, x) in micrometres, converted from the file's unit (m, cm, mm, um, nm, pm,
angstrom, inch); ``pixel_size_origin`` names the source. Anisotropic pixels are reported as they are (the
caller decides). TIFF resolution tags of 40 um per pixel or more (e.g. the 72 or 96 dpi that image editors
write by default, 353 um) are a print resolution, not a calibration: no pixel size. An OME-Zarr scale without
a unit is ambiguous (um? nm?) and gives no pixel size.

Memory
------
Before any pixel is decoded, :meth:`MicroscopeFile.check` compares what reading one plane decodes, from
the headers, with :class:`images.Limits`: the plane's pixels (``max_image_pixels``) and its bytes, samples
and the float32 grey copy included (``max_image_bytes``, as :class:`images.PageInfo` counts them); and for
readers whose unit is larger than a plane (an ND2 frame, an OME-Zarr chunk, a TIFF series that cannot be
cut into pages) that unit's bytes too. :meth:`MicroscopeFile.plane` calls it first.

Counts are bounded before anything is made of them: every reader checks the channels, z planes, time points,
scenes, series and pages its headers declare, and all their planes together, against ``max_planes``
(LSM_MAX_PLANES, :func:`images.check_declared`) before it makes a list, a loop or a row per plane (for
OME-TIFF, ImageJ and LSM files, from their own metadata, before tifffile makes its series).

Decompression is bounded while it happens. A Zarr chunk is read only when its stored size fits its declared
size, and unpacked by its codec (blosc, zstd, zlib, gzip, lz4, bz2, lzma) into at most its declared size;
a metadata file is at most ``ZARR_METADATA_BYTES``. A TIFF strip or tile is unpacked by tifffile into a
buffer of its size; one that is a picture (JPEG, PNG, WebP, JPEG 2000) has its own header read first
(:func:`check_segments`). A ZIP member is unpacked a piece at a time, never beyond its declared size
(:func:`images.read_member`).

Errors
------
Everything a file can cause raises :class:`lsm_core.errors.LsmError` with a message a biologist can act on:
an unknown format lists the formats read here; a file that looks like a vendor format but that the reader
fails on says which format and which reader (``the file looks like a Nikon ND2 but the nd2 reader failed:
...``).
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage

from lsm_core.errors import LsmError
from lsm_core.imaging.images import LUMA, Limits, PageInfo, PilReader, check_declared

SUPPORTED_FORMATS = (
    "OME-TIFF",
    "ImageJ TIFF",
    "TIFF",
    "LSM",
    "CZI",
    "ND2",
    "LIF",
    "OIB",
    "OIF",
    "OME-Zarr",
    "PNG",
    "JPEG",
)

# What a format is called in messages, and which reader reads it
_LONG_NAME = {
    "OME-TIFF": "an OME-TIFF",
    "ImageJ TIFF": "an ImageJ TIFF",
    "TIFF": "a TIFF",
    "LSM": "a Zeiss LSM",
    "CZI": "a Zeiss CZI",
    "ND2": "a Nikon ND2",
    "LIF": "a Leica LIF",
    "OIB": "an Olympus OIB",
    "OIF": "an Olympus OIF",
    "OME-Zarr": "an OME-Zarr",
    "PNG": "a PNG",
    "JPEG": "a JPEG",
}
_READER = {
    "OME-TIFF": "tifffile",
    "ImageJ TIFF": "tifffile",
    "TIFF": "tifffile",
    "LSM": "tifffile",
    "CZI": "czifile",
    "ND2": "nd2",
    "LIF": "readlif",
    "OIB": "oiffile",
    "OIF": "oiffile",
    "OME-Zarr": "zarr",
    "PNG": "Pillow",
    "JPEG": "Pillow",
}

_SUPPORTED_TEXT = (
    "OME-TIFF, ImageJ TIFF, TIFF, Zeiss CZI and LSM, Nikon ND2, Leica LIF, Olympus OIB and OIF, OME-Zarr "
    "(a folder, or a ZIP of one), PNG and JPEG"
)

# Micrometres per unit, for every spelling the formats use (OME UnitsLength, ImageJ, OME-Zarr / UDUNITS).
_UM_PER_UNIT = {
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "dm": 1e5,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "um": 1.0,
    "µm": 1.0,  # micro sign
    "μm": 1.0,  # greek mu
    "\\u00b5m": 1.0,  # ImageJ's escaped micro sign
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "pm": 1e-6,
    "picometer": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "in": 25400.0,
    "inch": 25400.0,
}

# A TIFF's resolution tags at or above this size per pixel are a print resolution (72 dpi is 353 um)
PRINT_RESOLUTION_UM = 40.0


def _um_per_unit(unit: str | None) -> float | None:
    if unit is None:
        return None
    return _UM_PER_UNIT.get(str(unit).strip().lower())


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _version(package: str) -> str:
    try:
        return f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package


_REASON_CHARS = 200  # of a reader's own message: enough to recognise it, not a dump of bytes


def _failed(fmt: str, exc: BaseException, during: str = "", path: Path | None = None) -> str:
    """The message for a file that looks like ``fmt`` but that its reader fails on: which format, which
    reader, and the reader's reason (its first line, without the file's location on the server, cut short)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if path is not None:
        for form in {str(path), str(path.resolve()) if path.exists() else str(path)}:
            text = text.replace(form, path.name)
    if len(text) > _REASON_CHARS:
        text = text[: _REASON_CHARS - 1] + "…"
    where = f" {during}" if during else ""
    return (
        f"the file looks like {_LONG_NAME[fmt]} but the {_READER[fmt]} reader failed{where}: {text} "
        "(the file may be incomplete or damaged: copy or export it again, or save it as OME-TIFF)"
    )


# ----------------------------------------------------------------------------------------------- the API


@dataclass(frozen=True)
class Scene:
    """One position / scene / series of a file, from its headers (nothing decoded).

    ``sizes`` has the keys T, C, Z, Y, X (1 when absent); ``channels`` has ``sizes["C"]`` names ("" when the
    file names none); ``rgb`` is True for an RGB photograph (its plane is the luminance); ``pixel_size_um``
    is (y, x) in micrometres or None, ``pixel_size_origin`` where it came from.
    """

    index: int
    name: str | None
    sizes: dict[str, int]
    dtype: np.dtype
    channels: list[str]
    rgb: bool = False
    pixel_size_um: tuple[float, float] | None = None
    pixel_size_origin: str | None = None
    samples: int = 1  # samples per pixel of one decoded plane as stored (3 or 4 for RGB)

    @property
    def plane_info(self) -> PageInfo:
        """The plane as :class:`images.PageInfo` counts it (pixels, samples, bytes per sample)."""
        itemsize = int(self.dtype.itemsize)
        bits = itemsize * 8
        return PageInfo(self.index, self.sizes["X"], self.sizes["Y"], self.samples, itemsize, bits)


class MicroscopeFile:
    """An open microscope file: its :attr:`scenes` from the headers, one plane decoded when asked for.

    A context manager; :meth:`close` releases the file. Subclasses implement ``_read`` (and ``_unit_bytes``
    when their reader decodes more than one plane to give one).
    """

    format: str = ""
    reader: str = ""  # the library and version that reads it, e.g. "czifile 2019.7.2.3"

    def __init__(self, path: Path, name: str, limits: Limits) -> None:
        self.path = path
        self.name = name
        self.limits = limits
        self.scenes: list[Scene] = []

    # -- public
    def check(self, scene: int) -> None:
        """LsmError when reading one plane of ``scene`` would exceed the limits (from the headers alone)."""
        info = self._scene(scene).plane_info
        info.check(self.limits)
        unit, what = self._unit_bytes(scene)
        if unit > self.limits.max_image_bytes:
            raise LsmError(
                f"reading one plane of this file decodes {_megabytes(unit)} at once ({what}); the limit is "
                f"{_megabytes(self.limits.max_image_bytes)} (LSM_MAX_IMAGE_BYTES). Save the plane or channel "
                "that matters alone, or as OME-TIFF."
            )

    def plane(self, scene: int, t: int = 0, c: int = 0, z: int = 0) -> np.ndarray:
        """One plane, shape (Y, X), in the scene's dtype (an RGB photograph: its luminance); only that plane
        (or the reader's smallest unit holding it, see the module docstring) is decoded."""
        s = self._scene(scene)
        for axis, value in (("T", t), ("C", c), ("Z", z)):
            if not 0 <= int(value) < s.sizes[axis]:
                raise LsmError(
                    f"{axis.lower()}={value} is outside the scene (it has {s.sizes[axis]} along {axis}, counted from 0)"
                )
        self.check(scene)
        try:
            arr = self._read(s, int(t), int(c), int(z))
        except LsmError:
            raise
        except Exception as exc:  # every reader raises its own types for damaged data
            raise LsmError(_failed(self.format, exc, "reading a plane", self.path)) from None
        return _as_plane(arr, s)

    def z_planes(self, scene: int, t: int = 0, c: int = 0) -> Iterator[np.ndarray]:
        """The planes along Z of one (scene, t, c), one at a time (for :func:`best_focus`)."""
        for z in range(self._scene(scene).sizes["Z"]):
            yield self.plane(scene, t, c, z)

    def close(self) -> None:
        pass

    def __enter__(self) -> MicroscopeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {self.name!r}: {len(self.scenes)} scene(s)>"

    # -- for subclasses
    def _scene(self, scene: int) -> Scene:
        if not 0 <= int(scene) < len(self.scenes):
            raise LsmError(f"scene {scene} is missing (the file has {len(self.scenes)}, counted from 0)")
        return self.scenes[int(scene)]

    def _unit_bytes(self, scene: int) -> tuple[int, str]:
        """Bytes the reader decodes at once to give one plane, and what that unit is."""
        return 0, ""

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        raise NotImplementedError


def _as_plane(arr: np.ndarray, scene: Scene) -> np.ndarray:
    """(Y, X) or (Y, X, S) as decoded -> (Y, X) in the scene's dtype."""
    a = np.asarray(arr)
    if a.ndim == 3:
        a = luminance(a) if scene.rgb else a[..., 0]
    if a.ndim != 2:
        raise LsmError(f"the reader returned a {a.ndim}-D plane {a.shape}; expected 2-D")
    if a.shape != (scene.sizes["Y"], scene.sizes["X"]):
        raise LsmError(
            f"the plane read is {a.shape[0]} x {a.shape[1]} pixels but the header says "
            f"{scene.sizes['Y']} x {scene.sizes['X']}; the file is inconsistent"
        )
    if a.dtype != scene.dtype:
        a = a.astype(scene.dtype)
    return a


_ROWS = 256


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) RGB(A) -> (H, W) luminance ``0.299 R + 0.587 G + 0.114 B`` in the same dtype (integers
    rounded), a few rows at a time; alpha dropped. Grey + alpha (H, W, 2) gives the grey."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (2, 3, 4):
        raise LsmError(f"expected an (H, W, 3) colour picture, got shape {a.shape}")
    if a.shape[2] == 2:
        return a[..., 0].copy()
    out = np.empty(a.shape[:2], a.dtype)
    integer = np.issubdtype(a.dtype, np.integer)
    for r in range(0, a.shape[0], _ROWS):
        block = a[r : r + _ROWS, :, :3].astype(np.float32) @ LUMA
        if integer:
            info = np.iinfo(a.dtype)
            block = np.clip(np.rint(block), info.min, info.max)
        out[r : r + _ROWS] = block
    return out


def _sizes(t: int = 1, c: int = 1, z: int = 1, y: int = 1, x: int = 1) -> dict[str, int]:
    return {"T": int(t), "C": int(c), "Z": int(z), "Y": int(y), "X": int(x)}


def _names(names: list[str], n: int) -> list[str]:
    """Exactly ``n`` channel names: the file's, padded with "" (or cut) when it names more or fewer."""
    clean = [str(v).strip() if v is not None else "" for v in names][:n]
    return clean + [""] * (n - len(clean))


def _pair(y: float | None, x: float | None) -> tuple[float, float] | None:
    if y is None or x is None or not np.isfinite(y) or not np.isfinite(x) or y <= 0 or x <= 0:
        return None
    return (float(y), float(x))


# ------------------------------------------------------------------------------------- recognition


def _head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _zip_zarr_root(path: Path, limits: Limits) -> str | None:
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


def _is_oib(path: Path, limits: Limits) -> bool:
    """Whether an OLE compound document is an Olympus OIB: it holds an OibInfo.txt stream (its directory,
    which may lie anywhere in the file, is read by oiffile's compound-file reader, once
    :func:`_check_compound` has found that reading it ends)."""
    from oiffile import CompoundFile

    try:
        _check_compound(path, limits)
        with CompoundFile(str(path)) as compound:
            names = [str(n).replace("\\", "/") for n in compound.files()]
    except LsmError:
        raise
    except Exception as exc:  # a damaged compound document
        raise LsmError(f"this OLE compound document (an Olympus OIB?) could not be read ({exc})") from None
    return any(n == "OibInfo.txt" or n.endswith("/OibInfo.txt") for n in names)


_OLE_END = 0xFFFFFFFE  # the end of a sector chain; 0xFFFFFFFA and above are marks, not sectors


def _ole_cycles(table: np.ndarray) -> bool:
    """Whether following a FAT (or mini FAT) from some sector never ends: each entry names the next sector,
    or is a mark. By pointer doubling, every chain followed 2**k >= len(table) steps at once, in NumPy."""
    n = len(table)
    jump = np.where(table < n, table, n).astype(np.int64)
    jump = np.append(jump, n)  # n: the end, whatever the mark
    for _ in range(max(1, int(n).bit_length())):
        jump = jump[jump]
    return bool((jump[:n] != n).any())


def _check_compound(path: Path, limits: Limits) -> None:
    """An OLE compound document (an OIB) checked from its own bytes before oiffile reads it, which follows
    each sector chain to its end mark and reads as many FAT, DIFAT and mini FAT sectors as the header says: a
    chain that loops (a 10 KB file whose directory chain pointed at itself grew without end) or counts beyond
    the file would never stop. ValueError unless the FAT and the mini FAT hold no loop and their sizes fit the
    file; LsmError when the directory holds more entries (one per plane and a few more) than LSM_MAX_PLANES
    allows before oiffile makes an object of each."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(512)
        if len(head) < 512:
            raise ValueError("its header is cut short")
        major, _, shift = struct.unpack_from("<HHH", head, 26)
        fat_len, dir_start, _, _, minifat_start, minifat_len, difat_start, difat_len = struct.unpack_from(
            "<8I", head, 44
        )
        if shift not in (9, 12):
            raise ValueError(f"its sectors are 2**{shift} bytes")
        sector_bytes = 1 << shift
        per = sector_bytes // 4
        n = -(-max(0, size - sector_bytes) // sector_bytes)  # sectors in the file
        if fat_len > -(-n // per) + 1 or difat_len > -(-fat_len // (per - 1)) + 1:
            raise ValueError(f"it declares {fat_len:,} FAT and {difat_len:,} DIFAT sectors for {n:,} sectors")

        def sector(i: int) -> bytes:
            if not 0 <= i < n:
                raise ValueError(f"a chain leaves the file (sector {i:,} of {n:,})")
            fh.seek(sector_bytes * (i + 1))
            data = fh.read(sector_bytes)
            return data + bytes(sector_bytes - len(data))

        difat = list(struct.unpack_from("<109I", head, 76))
        following = difat_start
        for _ in range(difat_len):
            words = struct.unpack(f"<{per}I", sector(following))
            difat.extend(words[:-1])
            following = words[-1]
        fat = np.frombuffer(b"".join(sector(i) for i in difat[:fat_len]), "<u4")
        if _ole_cycles(fat):
            raise ValueError("a chain of its FAT loops")

        def chain(start: int, most: int) -> list[int]:
            found: list[int] = []
            while start != _OLE_END and len(found) < most:
                if not 0 <= start < len(fat):
                    raise ValueError(f"a chain leaves the FAT (sector {start:,})")
                found.append(start)
                start = int(fat[start])
            return found

        per_sector = sector_bytes // 128
        allowed = limits.max_planes + 1024  # an entry per plane; the settings, storages and a root besides
        directory = chain(dir_start, -(-allowed // per_sector) + 1)
        if len(directory) * per_sector > allowed:
            raise LsmError(
                f"this compound document holds more than {allowed:,} directory entries (an OIB has one per "
                f"plane, and a few more); the limit is {limits.max_planes:,} planes (LSM_MAX_PLANES)"
            )
        root = sector(directory[0]) if directory else bytes(128)
        mini_size = struct.unpack_from("<I" if major == 3 else "<Q", root, 120)[0]
        if mini_size > size:
            raise ValueError(f"its mini stream declares {mini_size:,} bytes in a file of {size:,}")
        mini_sectors = -(-mini_size // 64)
        if minifat_len > -(-mini_sectors // per) + 1:
            raise ValueError(f"it declares {minifat_len:,} mini FAT sectors for {mini_size:,} bytes of mini stream")
        minifat = np.frombuffer(b"".join(sector(i) for i in chain(minifat_start, minifat_len)), "<u4")
        if _ole_cycles(minifat):
            raise ValueError("a chain of its mini FAT loops")


def _detect(path: Path, limits: Limits) -> tuple[str, Any]:
    """(format, detail) from the content; LsmError for anything not read here."""
    if path.is_dir():
        if any((path / m).exists() for m in (".zattrs", ".zgroup", "zarr.json")):
            return "OME-Zarr", None
        raise LsmError(
            "this folder is not an OME-Zarr (it has no .zattrs, .zgroup or zarr.json at its top); "
            f"the formats read here are {_SUPPORTED_TEXT}"
        )
    if not path.exists():
        raise LsmError("no such file or folder")
    head = _head(path)
    if not head:
        raise LsmError("the file is empty (0 bytes)")
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF", None
    if head.startswith(b"ZISRAWFILE"):
        return "CZI", None
    if head[:4] == b"\xda\xce\xbe\x0a" or head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        return "ND2", None
    if len(head) >= 13 and struct.unpack("<I", head[:4])[0] == 0x70 and head[8] == 0x2A:
        if "LMSDataContainerHeader".encode("utf-16-le") in head or b"L\x00M\x00S\x00" in head:
            return "LIF", None
    if head.startswith(b"OLYMPUSRAWFORMAT"):
        raise LsmError(
            "this is an Olympus/Evident OIR file, which cannot be read here yet (no OIR reader is installed); "
            "export it from FV31S or cellSens as OME-TIFF"
        )
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        if _is_oib(path, limits):
            return "OIB", None
        raise LsmError(
            "this is an OLE compound document (for example a Zeiss ZVI or an Office file) but not an Olympus "
            f"OIB; the formats read here are {_SUPPORTED_TEXT}"
        )
    text = head.decode("utf-16", errors="ignore") if head.startswith(b"\xff\xfe") else head.decode("latin-1")
    if "[ProfileSaveInfo]" in text or "[File Info]" in text or "[FileInformation]" in text:
        return "OIF", None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", None
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG", None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        root = _zip_zarr_root(path, limits)
        if root is not None:
            return "OME-Zarr", root
        raise LsmError(
            "this ZIP archive holds no OME-Zarr (no .zattrs, .zgroup or zarr.json in it); a ZIP of ordinary "
            "images is unpacked by the image upload, not read as one microscope file"
        )
    raise LsmError(f"not a microscope image format this app reads; the formats read here are {_SUPPORTED_TEXT}")


def open_microscope_file(path: str | Path, name: str | None = None, limits: Limits | None = None) -> MicroscopeFile:
    """Open one microscope file (or an OME-Zarr folder, or a ZIP of one): headers only, nothing decoded.

    ``name`` is how the file is shown (default: its file name); ``limits`` bound what one plane may cost.
    The format is told from the content. LsmError for an unknown format, or a file its reader fails on.
    """
    path = Path(path)
    limits = limits or Limits()
    fmt, detail = _detect(path, limits)
    shown = name or path.name
    opener = _OPENERS[fmt]
    try:
        return opener(path, shown, limits, detail)
    except LsmError:
        raise
    except Exception as exc:  # every reader raises its own types for damaged headers
        fmt_named = "OME-TIFF" if fmt == "TIFF" and _looks_ome(path) else fmt
        raise LsmError(_failed(fmt_named, exc, "", path)) from None


def _looks_ome(path: Path) -> bool:
    try:
        return b"<OME" in _head(path, 1 << 16)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ TIFF


def _ome_images(xml: str | None) -> list[ET.Element]:
    if not xml:
        return []
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    return root.findall("{*}Image") or root.findall("Image")


def _ome_scene_metadata(image: ET.Element | None) -> tuple[str | None, list[str], tuple[float, float] | None]:
    if image is None:
        return None, [], None
    pixels = image.find("{*}Pixels")
    if pixels is None:
        pixels = image.find("Pixels")
    if pixels is None:
        return image.get("Name"), [], None
    channels = pixels.findall("{*}Channel") or pixels.findall("Channel")
    names = [ch.get("Name") or "" for ch in channels]
    size = None
    try:
        sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
        fx = _um_per_unit(pixels.get("PhysicalSizeXUnit", "µm"))
        fy = _um_per_unit(pixels.get("PhysicalSizeYUnit", "µm"))
        if sx is not None and sy is not None and fx is not None and fy is not None:
            size = _pair(float(sy) * fy, float(sx) * fx)
    except ValueError:
        size = None
    return image.get("Name"), names, size


def tiff_resolution_um(page: Any, unit_um: float | None = None) -> tuple[float, float] | None:
    """Pixel size from XResolution / YResolution (pixels per unit); the unit from the ResolutionUnit tag
    unless given."""

    def value(tag: str) -> float | None:
        t = page.tags.get(tag)
        if t is None:
            return None
        v = t.value
        num, den = (v if isinstance(v, tuple) else (v, 1))[:2]
        return float(num) / float(den) if den else None

    xr, yr = value("XResolution"), value("YResolution")
    if not xr or not yr:
        return None
    if unit_um is None:
        unit_tag = page.tags.get("ResolutionUnit")
        code = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
        unit_um = {2: 25400.0, 3: 10000.0}.get(code)
    if unit_um is None:
        return None
    return _pair(unit_um / yr, unit_um / xr)


def _count(value: Any) -> int:
    """A count as a header states it (a number, or its text), 1 when it states none or nonsense."""
    try:
        return max(1, int(float(value)))
    except (TypeError, ValueError, OverflowError):
        return 1


def _check_tiff_metadata(tif: Any, fmt: str, ome: list[ET.Element], limits: Limits) -> None:
    """LsmError when a TIFF's own metadata declares more planes than LSM_MAX_PLANES allows (OME-XML: the images
    and each one's SizeC, SizeZ, SizeT; ImageJ: its channels, slices, frames and images; LSM: its dimensions),
    read before tifffile makes its series, which lists every declared plane (a 5 KB OME-TIFF declaring
    SizeT=100,000,000 took tifffile 12 s and 1.5 GB)."""
    what = f"the {fmt}"
    if fmt == "OME-TIFF":
        check_declared(limits, what, images=len(ome))
        total = 0
        for image in ome:
            pixels = image.find("{*}Pixels")
            if pixels is None:
                pixels = image.find("Pixels")
            if pixels is None:
                continue
            c, z, t = (_count(pixels.get(f"Size{axis}")) for axis in "CZT")
            check_declared(limits, what, channels=c, z_planes=z, time_points=t)
            total += c * z * t
        check_declared(limits, what, planes=total)
    elif fmt == "ImageJ TIFF":
        meta = tif.imagej_metadata or {}
        check_declared(
            limits,
            what,
            channels=_count(meta.get("channels")),
            z_planes=_count(meta.get("slices")),
            time_points=_count(meta.get("frames")),
        )
        check_declared(limits, what, images=_count(meta.get("images")))
    elif fmt == "LSM":
        meta = tif.lsm_metadata or {}
        check_declared(
            limits,
            what,
            channels=_count(meta.get("DimensionChannels")),
            z_planes=_count(meta.get("DimensionZ")),
            time_points=_count(meta.get("DimensionTime")),
            positions=_count(meta.get("DimensionP")),
            tiles=_count(meta.get("DimensionM")),
        )


# TIFF compressions whose segments (strips, tiles) are whole pictures (JPEG, PNG, WebP, JPEG 2000, ...): their
# decoders allocate what the picture's own header says, whatever the segment's size in the TIFF (tifffile
# checks the shape only afterwards): a 64 x 64 tile holding a 20,000 x 20,000 PNG decoded 400 MB. Each
# segment's header is read first (:func:`_segment_dims`); segments of the other compressions are decoded into a
# buffer of the segment's size (tifffile passes ``out``), which a longer stream cannot overflow.
_PICTURE_COMPRESSIONS = frozenset(tifffile.TIFF.IMAGE_COMPRESSIONS) - {48124, 65000, 65001, 65002}
_SEGMENT_HEAD = 1 << 16  # bytes of a segment read to find its picture's size


def _segment_dims(data: bytes) -> tuple[int, int] | None:
    """(height, width) a picture's header states: PNG (IHDR), JPEG (its SOF marker), JPEG 2000 (SIZ, as a
    codestream or inside a JP2 file), WebP (VP8, VP8L, VP8X); None when the header is none of these."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                return None
            marker = data[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                pos += 2
                continue
            length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
                if pos + 9 > len(data):
                    return None
                height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return height, width
            pos += 2 + length
        return None
    siz = data.find(b"\xff\x4f\xff\x51")  # a JPEG 2000 codestream (alone, or in a JP2 file's jp2c box)
    if siz >= 0 and (siz == 0 or data[4:12] == b"jP  \r\n\x87\n") and siz + 24 <= len(data):
        x1, y1, x0, y0 = struct.unpack(">IIII", data[siz + 8 : siz + 24])  # Xsiz, Ysiz, XOsiz, YOsiz
        return max(0, y1 - y0), max(0, x1 - x0)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            width, height = struct.unpack("<HH", data[26:30])
            return height & 0x3FFF, width & 0x3FFF
        if kind == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if kind == b"VP8X":
            return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
    return None


def check_segments(page: Any) -> None:
    """LsmError unless every segment (strip or tile) of a TIFF page whose compression stores pictures (JPEG,
    PNG, WebP, JPEG 2000) states, in its own header, a size within the segment's: read before anything of it
    is decoded, so that a small tile cannot decode to a huge picture. Pages of other compressions pass (their
    segments are decoded into a buffer of their declared size)."""
    keyframe = page.keyframe if page.keyframe is not None else page
    compression = int(keyframe.compression)
    if compression not in _PICTURE_COMPRESSIONS:
        return
    try:
        name = tifffile.COMPRESSION(compression).name
    except ValueError:
        name = str(compression)
    if keyframe.is_tiled:
        tall, wide = int(keyframe.tilelength), int(keyframe.tilewidth)
    else:
        tall, wide = min(int(keyframe.rowsperstrip), int(keyframe.imagelength)), int(keyframe.imagewidth)
    fh = page.parent.filehandle
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        if not offset or not count:
            continue
        fh.seek(int(offset))
        dims = _segment_dims(bytes(fh.read(min(int(count), _SEGMENT_HEAD))))
        if dims is None:
            raise LsmError(
                f"a {'tile' if keyframe.is_tiled else 'strip'} of this TIFF is compressed as {name}, whose size "
                "could not be read from its header; save the image without compression, or with LZW, deflate or "
                "zstd"
            )
        if dims[0] > tall or dims[1] > wide:
            raise LsmError(
                f"a {'tile' if keyframe.is_tiled else 'strip'} of {tall} x {wide} pixels in this TIFF holds a "
                f"{name} picture of {dims[0]:,} x {dims[1]:,} pixels: the file is damaged or built to exhaust "
                "memory; refused"
            )


@dataclass(frozen=True)
class _TiffLayout:
    series: int
    outer_axes: str  # the axes of the series above the page, in file order
    outer_shape: tuple[int, ...]
    t_axes: tuple[int, ...]  # positions in outer_axes folded into T
    samples_are_channels: bool
    page_shape: tuple[int, ...]  # the keyframe's (squeezed) shape
    page_axes: str


class TiffMicroscopeFile(MicroscopeFile):
    """TIFF, OME-TIFF, ImageJ TIFF and LSM through tifffile: each series is a scene; one page is one plane."""

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        super().__init__(path, name, limits)
        self.reader = _version("tifffile")
        self._tif = tifffile.TiffFile(str(path))
        try:
            self._setup()
        except Exception:
            self._tif.close()
            raise

    def _setup(self) -> None:
        tif = self._tif
        self.format = "OME-TIFF" if tif.is_ome else "ImageJ TIFF" if tif.is_imagej else "LSM" if tif.is_lsm else "TIFF"
        if len(tif.pages) > self.limits.max_archive_members:
            raise LsmError(f"the TIFF has {len(tif.pages):,} pages; the limit is {self.limits.max_archive_members:,}")
        what = f"the {self.format}"
        check_declared(self.limits, what, pages=len(tif.pages))
        ome = _ome_images(tif.ome_metadata) if tif.is_ome else []
        _check_tiff_metadata(tif, self.format, ome, self.limits)  # before tifffile lists every declared plane
        check_declared(self.limits, what, series=len(tif.series))
        total = 0
        for series in tif.series:  # every scene's counts, and the planes of all together, before anything is built
            if series.keyframe is None:
                continue
            dims = dict(zip(series.get_axes(False), (int(v) for v in series.get_shape(False))))
            rgb = dims.get("S", 1) in (3, 4) and int(getattr(series.keyframe, "photometric", 1)) in (2, 6)
            size_c = dims.get("C", 1) * (dims.get("S", 1) if dims.get("S", 1) > 2 and not rgb else 1)
            size_t = int(np.prod([n for a, n in dims.items() if a not in "CZYXS"], dtype=np.float64))
            check_declared(self.limits, what, channels=size_c, z_planes=dims.get("Z", 1), time_points=size_t)
            total += size_c * dims.get("Z", 1) * size_t
        check_declared(self.limits, what, planes=total)
        self._layouts: list[_TiffLayout] = []
        for number, series in enumerate(tif.series):
            if series.keyframe is None:
                continue
            index = len(self.scenes)
            axes = series.get_axes(False)
            shape = series.get_shape(False)
            dims = dict(zip(axes, shape))
            if "Y" not in dims or "X" not in dims:
                raise LsmError(f"series {number + 1} has axes {axes}, without Y and X")
            keyframe = series.keyframe
            samples = int(dims.get("S", 1))
            photometric = int(getattr(keyframe, "photometric", 1))
            rgb = samples in (3, 4) and photometric in (2, 6)  # RGB, YCbCr
            samples_are_channels = samples > 2 and not rgb
            outer_axes = "".join(a for a in axes if a not in "YXS")
            outer_shape = tuple(int(dims[a]) for a in outer_axes)
            t_axes = tuple(i for i, a in enumerate(outer_axes) if a not in "CZ")
            size_c = int(dims.get("C", 1)) * (samples if samples_are_channels else 1)
            size_t = int(np.prod([outer_shape[i] for i in t_axes])) if t_axes else 1
            layout = _TiffLayout(
                number,
                outer_axes,
                outer_shape,
                t_axes,
                samples_are_channels,
                tuple(int(v) for v in keyframe.shape),
                str(keyframe.axes),
            )
            self._layouts.append(layout)
            scene_name, names, size, origin = self._metadata(number, series, ome, keyframe)
            dtype = np.dtype(series.dtype)
            self.scenes.append(
                Scene(
                    index=index,
                    name=scene_name or (series.name or None),
                    sizes=_sizes(size_t, size_c, dims.get("Z", 1), dims["Y"], dims["X"]),
                    dtype=np.dtype(dtype.newbyteorder("=")),
                    channels=_names(names, size_c),
                    rgb=rgb,
                    pixel_size_um=size,
                    pixel_size_origin=origin if size else None,
                    samples=samples if (rgb or samples_are_channels or samples == 2) else 1,
                )
            )
        if not self.scenes:
            raise LsmError("the TIFF holds no readable image")

    def _metadata(
        self, index: int, series: Any, ome: list[ET.Element], keyframe: Any
    ) -> tuple[str | None, list[str], tuple[float, float] | None, str | None]:
        tif = self._tif
        if self.format == "OME-TIFF":
            name, names, size = _ome_scene_metadata(ome[index] if index < len(ome) else None)
            return name, names, size, "OME-XML PhysicalSizeX/Y"
        if self.format == "ImageJ TIFF":
            meta = tif.imagej_metadata or {}
            unit = meta.get("unit")
            factor = _um_per_unit(unit)
            if factor is not None:
                return None, [], tiff_resolution_um(keyframe, factor), f"ImageJ unit {unit} + resolution tags"
        if self.format == "LSM":
            meta = tif.lsm_metadata or {}
            try:
                size = _pair(float(meta["VoxelSizeY"]) * 1e6, float(meta["VoxelSizeX"]) * 1e6)
            except (KeyError, TypeError, ValueError):
                size = None
            names = list((meta.get("ChannelColors") or {}).get("ColorNames") or [])
            return None, names, size, "LSM VoxelSizeX/Y"
        unit_tag = keyframe.tags.get("ResolutionUnit")
        code = int(unit_tag.value) if unit_tag is not None else 2
        size = tiff_resolution_um(keyframe)
        if size is not None and max(size) >= PRINT_RESOLUTION_UM:
            size = None  # 72 / 96 dpi and the like: a print resolution, not a calibration
        return None, [], size, f"TIFF resolution tags ({'cm' if code == 3 else 'inch'})"

    def _unit_bytes(self, scene: int) -> tuple[int, str]:
        layout = self._layouts[scene]
        series = self._tif.series[layout.series]
        if self._page_mode(layout) == "whole":
            return int(series.nbytes), "this TIFF's planes cannot be read one at a time: the whole series"
        s = self.scenes[scene]
        if layout.samples_are_channels:
            return s.sizes["Y"] * s.sizes["X"] * s.samples * s.dtype.itemsize, "one page holds every channel"
        return 0, ""

    def _page_mode(self, layout: _TiffLayout) -> str:
        series = self._tif.series[layout.series]
        n_outer = int(np.prod(layout.outer_shape)) if layout.outer_shape else 1
        keyframe = series.keyframe
        plane_page = set(layout.page_axes) <= set("YXS")
        if plane_page and len(series.pages) == n_outer and all(p is not None for p in series.pages):
            return "page"
        if plane_page and series.dataoffset is not None and keyframe.compression == 1:
            return "offset"
        return "whole"

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        layout = self._layouts[scene.index]
        series = self._tif.series[layout.series]
        sample: int | None = None
        if layout.samples_are_channels:
            c, sample = divmod(c, scene.samples)
        t_index = np.unravel_index(t, tuple(layout.outer_shape[i] for i in layout.t_axes)) if layout.t_axes else ()
        index = []
        t_iter = iter(int(v) for v in t_index)
        for axis in layout.outer_axes:
            index.append(c if axis == "C" else z if axis == "Z" else next(t_iter))
        flat = int(np.ravel_multi_index(index, layout.outer_shape)) if index else 0
        mode = self._page_mode(layout)
        if mode == "page":
            page = series.pages[flat]
            if page is None:
                raise LsmError(f"plane t={t}, c={c}, z={z} is stored in another file of the series, which is missing")
            check_segments(page)
            arr = page.asarray()
        elif mode == "offset":
            keyframe = series.keyframe
            count = int(np.prod(layout.page_shape))
            dtype = np.dtype(series.dtype).newbyteorder(self._tif.byteorder)
            fh = self._tif.filehandle
            fh.seek(int(series.dataoffset or 0) + flat * count * dtype.itemsize)
            raw = fh.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise EOFError("the file ends before the plane's pixels")
            arr = np.frombuffer(raw, dtype).reshape(keyframe.shape).astype(dtype.newbyteorder("="))
        else:
            for each in series.pages:
                if each is not None:
                    check_segments(each)
            whole = series.asarray().reshape(series.get_shape(False))
            axes = series.get_axes(False)
            sel: list[Any] = []
            t_iter = iter(int(v) for v in t_index)
            for axis in axes:
                if axis in "YXS":
                    sel.append(slice(None))
                else:
                    sel.append(c if axis == "C" else z if axis == "Z" else next(t_iter))
            arr = whole[tuple(sel)]
            arr = np.ascontiguousarray(arr)
            del whole
            page_axes = "".join(a for a in axes if a in "YXS")
            if page_axes.startswith("S"):
                arr = np.moveaxis(arr, 0, -1)
            return arr if sample is None else arr[..., sample]
        if layout.page_axes.startswith("S") and arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)  # planar samples -> last
        if sample is not None:
            arr = arr[..., sample]
        return arr

    def close(self) -> None:
        self._tif.close()


# ------------------------------------------------------------------------------------------------- CZI


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
        while left > 0:
            piece = fh.read(min(left, 1 << 20))
            if not piece:
                break
            left -= len(piece)
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


class CziMicroscopeFile(MicroscopeFile):
    """Zeiss CZI through czifile: each S index is a scene; one plane is the subblocks of that (T, C, Z),
    tiles pasted at their positions. Pyramid levels (downscaled subblocks) are skipped; of the rarer axes
    (phase H, rotation R, illumination I, view V, block B) the first index is read.

    Bounded from the file's own bytes before czifile parses them: the directory's number of subblocks, the
    scenes, time points, channels and z planes they make and the channels and scenes the metadata names
    (LSM_MAX_PLANES); the metadata is streamed, never held; each subblock's header is read before its data,
    and its data is decompressed into a buffer the size of its tile, never more."""

    format = "CZI"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        import czifile

        super().__init__(path, name, limits)
        self.reader = _version("czifile")
        self._fh = path.open("rb")  # the headers this layer checks before czifile reads them
        try:
            self._czi = czifile.CziFile(str(path), multifile=False)
        except Exception:
            self._fh.close()
            raise
        try:
            self._setup()
        except Exception:
            self.close()
            raise

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
        size = _pair(meta.distances.get("Y"), meta.distances.get("X"))
        scene_names = meta.scenes

        by_scene: dict[int, list[tuple[Any, dict[str, int], dict[str, Any]]]] = {}
        for row in rows:
            by_scene.setdefault(row[1].get("S", 0), []).append(row)
        most = [max(len({r[1].get(k, 0) for r in srows}) for srows in by_scene.values()) for k in "TCZ"]
        check_declared(
            self.limits, self.name, scenes=len(by_scene), time_points=most[0], channels=most[1], z_planes=most[2]
        )
        self._blocks: list[list[_CziBlock]] = []
        for index, s in enumerate(sorted(by_scene)):
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
            self.scenes.append(
                Scene(
                    index=index,
                    name=scene_names[s] if s < len(scene_names) else None,
                    sizes=_sizes(len(ts), len(cs), len(zs), y1 - y0, x1 - x0),
                    dtype=base,
                    channels=_names(channel_names, len(cs)),
                    rgb=samples in (3, 4),
                    pixel_size_um=size,
                    pixel_size_origin="CZI metadata (Scaling/Items/Distance)" if size else None,
                    samples=samples,
                )
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

    def close(self) -> None:
        self._czi.close()
        self._fh.close()


# ------------------------------------------------------------------------------------------------- ND2


def _j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of a JPEG 2000 stream from its SIZ marker (in its first 4 KB), or None."""
    at = data.find(b"\xff\x4f\xff\x51", 0, 4096)
    if at < 0 or len(data) < at + 42:
        return None
    x, y, x0, y0 = struct.unpack_from(">IIII", data, at + 8)
    (components,) = struct.unpack_from(">H", data, at + 40)
    return max(0, x - x0), max(0, y - y0), components


class Nd2MicroscopeFile(MicroscopeFile):
    """Nikon ND2 through nd2: each XY position (P) is a scene. The reader's unit is a frame, which holds
    every channel of one (position, time, z): one plane costs C planes of memory, checked.

    The positions, time points (and any other loop), channels and z planes the experiment declares are
    checked (LSM_MAX_PLANES) before a frame index is built. nd2 decompresses a compressed frame whole (zlib,
    or JPEG 2000 in a legacy file): the frame is first measured here, streamed, against its declared size."""

    format = "ND2"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        import nd2

        super().__init__(path, name, limits)
        self.reader = _version("nd2")
        self._nd2 = nd2.ND2File(str(path))
        try:
            self._fh = path.open("rb")  # compressed frames are measured here before nd2 reads them
        except OSError:
            self._nd2.close()
            raise
        try:
            self._setup()
        except Exception:
            self.close()
            raise

    def _setup(self) -> None:
        f = self._nd2
        sizes = dict(f.sizes)
        declared = {k: int(v) for k, v in sizes.items() if k not in ("C", "Y", "X", "S")}
        others = int(np.prod([v for k, v in declared.items() if k not in ("P", "T", "Z")], dtype=object))
        check_declared(
            self.limits,
            self.name,
            scenes=declared.get("P", 1),
            time_points=declared.get("T", 1) * others,
            channels=int(sizes.get("C", 1)),
            z_planes=declared.get("Z", 1),
        )
        loops = [dict(ix) for ix in f.loop_indices]
        self._loop_keys = sorted({k for ix in loops for k in ix})
        self._frames = {tuple(ix.get(k, 0) for k in self._loop_keys): i for i, ix in enumerate(loops)}
        unknown = [k for k in self._loop_keys if k not in ("P", "T", "Z")]
        self._t_axes = ["T", *unknown] if "T" in self._loop_keys else unknown
        self._t_shape = tuple(max(int(ix.get(k, 0)) for ix in loops) + 1 for k in self._t_axes) if loops else ()
        size_t = int(np.prod(self._t_shape)) if self._t_shape else 1
        n_c = int(sizes.get("C", 1))
        samples = int(sizes.get("S", 1))
        rgb = bool(f.is_rgb) and samples in (3, 4)
        names: list[str] = []
        size = None
        try:
            channels = f.metadata.channels or []
            names = [ch.channel.name for ch in channels]
            volume = channels[0].volume if channels else None
            if volume is not None and all(volume.axesCalibrated[:2]):
                x_um, y_um = volume.axesCalibration[:2]
                size = _pair(y_um, x_um)
        except (AttributeError, IndexError, TypeError):
            pass
        positions = self._position_names(int(sizes.get("P", 1)))
        self._n_c = n_c
        for p in range(int(sizes.get("P", 1))):
            self.scenes.append(
                Scene(
                    index=p,
                    name=positions[p],
                    sizes=_sizes(size_t, n_c, sizes.get("Z", 1), sizes["Y"], sizes["X"]),
                    dtype=np.dtype(f.dtype),
                    channels=_names(names, n_c),
                    rgb=rgb,
                    pixel_size_um=size,
                    pixel_size_origin="ND2 metadata (axesCalibration)" if size else None,
                    samples=samples if rgb else 1,
                )
            )

    def _position_names(self, n: int) -> list[str | None]:
        names: list[str | None] = [None] * n
        try:
            for loop in self._nd2.experiment:
                if type(loop).__name__ == "XYPosLoop":
                    parameters: Any = loop.parameters
                    for i, point in enumerate(parameters.points[:n]):
                        names[i] = point.name or None
        except (AttributeError, TypeError):
            pass
        return names

    def _unit_bytes(self, scene: int) -> tuple[int, str]:
        s = self.scenes[scene]
        frame = max(s.sizes["Y"] * s.sizes["X"] * self._n_c * s.samples * s.dtype.itemsize, self._frame_bytes())
        return frame, f"an ND2 frame holds all {self._n_c} channels" if self._n_c > 1 else "one ND2 frame"

    def _frame_bytes(self) -> int:
        """A frame's bytes as nd2 reads it: its rows of ``widthBytes`` (every channel, padded)."""
        attrs = self._nd2.attributes
        return int(attrs.heightPx or 0) * int(attrs.widthBytes or 0)

    def _check_frame(self, index: int) -> None:
        """LsmError when frame ``index`` is stored compressed and expands beyond its declared size (with 64 KB
        to spare): a zlib frame (a modern file) is decompressed here a megabyte at a time, nothing kept; a
        JPEG 2000 frame (a legacy file) has its size read from its SIZ marker. Only then does nd2, which
        decompresses a frame whole, read it."""
        import zlib

        rdr: Any = self._nd2._rdr  # its chunk map (modern) or chunk loader (legacy): nd2 has no public way
        attrs = self._nd2.attributes
        most = self._unit_bytes(0)[0]
        too_big = LsmError(
            f"a compressed frame of this ND2 expands beyond the {_megabytes(most)} its header declares; the file "
            "is damaged or hostile"
        )
        if attrs.compressionType == "lossless" and hasattr(rdr, "chunkmap"):
            where = rdr.chunkmap.get(f"ImageDataSeq|{index}!".encode())
            if where is None:
                return  # nd2 gives a blank frame
            fh = self._fh
            fh.seek(int(where[0]))
            head = fh.read(16)
            if len(head) < 16:
                return  # nd2 says the file is damaged
            _, name_length, data_length = struct.unpack("<IIQ", head)
            fh.seek(int(where[0]) + 16 + name_length + 8)  # after the frame's 8-byte time stamp
            left, total = max(0, data_length - 8), 0
            inflate = zlib.decompressobj()
            while left > 0 and not inflate.eof:
                piece = fh.read(min(left, 1 << 20))
                if not piece:
                    break
                left -= len(piece)
                while piece and not inflate.eof:
                    total += len(inflate.decompress(piece, 1 << 20))
                    if total > most + 65536:
                        raise too_big
                    piece = inflate.unconsumed_tail
        elif type(rdr).__name__ == "LegacyReader":
            n_c = int(attrs.channelCount or 1)
            for i in range(n_c):
                found = _j2k_size(rdr._load_chunk(b"LUNK", index * n_c + i))
                if found is None or found[0] * found[1] * found[2] * self.scenes[0].dtype.itemsize > most + 65536:
                    raise too_big

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        t_index = [int(v) for v in np.unravel_index(t, self._t_shape)] if self._t_shape else []
        coords = dict(zip(self._t_axes, t_index))
        coords.update({"P": scene.index, "Z": z})
        key = tuple(coords.get(k, 0) for k in self._loop_keys)
        if key not in self._frames:
            raise LsmError(f"the ND2 has no frame for t={t}, z={z} in scene {scene.index} (an interrupted run?)")
        self._check_frame(self._frames[key])
        frame = np.asarray(self._nd2.read_frame(self._frames[key]))
        plane_dims = 3 if scene.rgb else 2
        if frame.ndim > plane_dims:  # channels first
            frame = frame[c]
        return frame

    def close(self) -> None:
        self._nd2.close()
        self._fh.close()


# ------------------------------------------------------------------------------------------------- LIF

# What readlif's whole-document ElementTree costs beyond the header's text, measured on Python 3.11: 88 bytes
# an element, about 60 an attribute (rounded up here)
_XML_ELEMENT_BYTES = 100
_XML_ATTRIBUTE_BYTES = 70


class _XmlCount:
    """A target of ET.XMLParser that counts elements and attributes and keeps nothing."""

    def __init__(self) -> None:
        self.elements = 0
        self.attributes = 0

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self.elements += 1
        self.attributes += len(attrib)

    def close(self) -> None:
        return None


def _lif_check(path: Path, limits: Limits, what: str) -> None:
    """A LIF's headers from its own bytes, before readlif reads them: readlif holds the XML header whole
    (its UTF-16 bytes, their text and an ElementTree of it), so its cost, estimated while streaming it once
    through a counting parser, is held to LSM_MAX_IMAGE_BYTES; and readlif keeps an offset per memory block,
    so the blocks (one per image) are counted against LSM_MAX_PLANES, stopping at the limit."""
    import codecs

    with path.open("rb") as fh:
        head = fh.read(13)
        if len(head) < 13:
            raise ValueError("the file ends inside its header")
        chars = struct.unpack_from("<I", head, 9)[0]
        count = _XmlCount()
        parser = ET.XMLParser(target=count)
        decoder = codecs.getincrementaldecoder("utf-16-le")()
        left, read = 2 * chars, 0
        try:
            while left > 0:
                piece = fh.read(min(left, 1 << 20))
                if not piece:
                    break
                left -= len(piece)
                read += len(piece)
                parser.feed(decoder.decode(piece))
                cost = 2 * read + _XML_ELEMENT_BYTES * count.elements + _XML_ATTRIBUTE_BYTES * count.attributes
                if cost > limits.max_image_bytes:
                    raise LsmError(
                        f"reading this LIF's XML header takes more than {_megabytes(cost)} at once (readlif holds "
                        f"it whole, with a tree of its elements, {count.elements:,} in the first "
                        f"{_megabytes(read)}); the limit is {_megabytes(limits.max_image_bytes)} "
                        "(LSM_MAX_IMAGE_BYTES). Save the images that matter as OME-TIFF."
                    )
            parser.feed(decoder.decode(b"", final=True))
            parser.close()
        except (ET.ParseError, UnicodeDecodeError) as exc:
            raise ValueError(f"the XML header is damaged ({exc})") from None
        fh.seek(13 + 2 * chars)
        blocks = 0
        while True:  # as readlif walks them: magic, 4 bytes, 0x2A, a 32- or 64-bit length, 0x2A, description
            block = fh.read(14)
            if len(block) < 14 or block[:4] != b"\x70\x00\x00\x00" or block[8] != 0x2A:
                return  # the end, or damage that readlif reports
            blocks += 1
            if blocks > limits.max_planes:
                raise LsmError(
                    f"{what} holds more than {limits.max_planes:,} memory blocks (one per image); the limit is "
                    f"{limits.max_planes:,} planes (LSM_MAX_PLANES)"
                )
            if block[13] == 0x2A:
                length = struct.unpack_from("<I", block, 9)[0]
            else:
                tail = fh.read(4)  # the 64-bit length's last bytes, then 0x2A
                if len(tail) < 4:
                    return
                length = struct.unpack_from("<Q", block + tail, 9)[0]
            described = fh.read(4)
            if len(described) < 4:
                return
            fh.seek(2 * struct.unpack("<I", described)[0] + length, 1)


class LifMicroscopeFile(MicroscopeFile):
    """Leica LIF through readlif: each image is a scene (each tile of a tile scan its own scene); one plane
    read at its offset. Channel names come from the image's channel settings where the XML has them
    (wide-field: the user's channel name or contrast method; confocal: the active detectors, e.g.
    "PMT Trans"), "" otherwise. The pixel size is readlif's (n - 1) / length convention.

    Bounded before readlif reads the file (:func:`_lif_check`), and before a scene is made: each image's
    channels, z planes, time points and tiles, the file's scenes and its scene-time-point pages
    (LSM_MAX_PLANES). LIF pixels are stored uncompressed: a plane is read at its offset, its size checked."""

    format = "LIF"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        from readlif.reader import LifFile

        super().__init__(path, name, limits)
        self.reader = _version("readlif")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # readlif warns of a truncated file and goes on with blank images
            _lif_check(path, limits, name)
            self._lif = LifFile(str(path))
        images = list(self._lif.get_iter_image())
        for image in images:
            check_declared(
                limits,
                f"{name} (image {image.name})",
                channels=int(image.channels),
                z_planes=int(image.nz),
                time_points=int(image.nt),
                tiles=int(image.n_mosaic),
            )
        check_declared(limits, name, scenes=sum(max(1, int(image.n_mosaic)) for image in images))
        check_declared(limits, name, pages=sum(max(1, int(image.n_mosaic)) * max(1, int(image.nt)) for image in images))
        file_size = path.stat().st_size
        for i, image in enumerate(images):
            bits = int(max(image.bit_depth)) if image.bit_depth else 8
            planes = int(image.channels) * int(image.nz) * int(image.nt) * int(image.n_mosaic)
            expected = planes * int(image.dims.x) * int(image.dims.y) * ((bits + 7) // 8)
            stored = int(image.offsets[1])
            if int(image.offsets[0]) + stored > file_size:
                stored = max(0, file_size - int(image.offsets[0]))
            if stored < expected:
                raise ValueError(
                    f"image {i + 1} ({image.name}) holds {stored:,} bytes of pixels where its header says "
                    f"{expected:,}: the file is truncated"
                )
        elements = [el for el in self._lif.xml_root.iter("Element") if el.find("./Data/Image") is not None]
        self._tiles: list[tuple[Any, int]] = []
        for i, image in enumerate(images):
            bits = int(max(image.bit_depth)) if image.bit_depth else 8
            if bits > 16:
                raise LsmError(f"image {i + 1} stores {bits}-bit samples, which readlif cannot read")
            dtype = np.dtype(np.uint8 if bits <= 8 else np.uint16)
            names = self._channel_names(elements[i] if i < len(elements) else None, int(image.channels))
            scale_x, scale_y = image.scale[0], image.scale[1]
            size = _pair(1.0 / scale_y if scale_y else None, 1.0 / scale_x if scale_x else None)
            n_m = int(image.n_mosaic)
            for m in range(n_m):
                self._tiles.append((image, m))
                self.scenes.append(
                    Scene(
                        index=len(self.scenes),
                        name=image.name if n_m == 1 else f"{image.name} tile {m + 1}",
                        sizes=_sizes(image.nt, image.channels, image.nz, image.dims.y, image.dims.x),
                        dtype=dtype,
                        channels=names,
                        pixel_size_um=size,
                        pixel_size_origin="LIF metadata (readlif)" if size else None,
                    )
                )

    @staticmethod
    def _channel_names(element: ET.Element | None, n: int) -> list[str]:
        if element is None:
            return _names([], n)
        wide = element.findall(".//WideFieldChannelInfo")
        if len(wide) == n:
            return _names(
                [w.get("UserDefName") or w.get("ContrastingMethodName") or w.get("FluoCubeName") or "" for w in wide],
                n,
            )
        detectors = [
            d.get("Name") or ""
            for d in element.findall(".//ATLConfocalSettingDefinition/DetectorList/Detector")
            if d.get("IsActive") == "1"
        ]
        if len(detectors) == n:
            return _names(detectors, n)
        return _names([], n)

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        image, m = self._tiles[scene.index]
        return np.asarray(image.get_frame(z=z, t=t, c=c, m=m))


# --------------------------------------------------------------------------------------------- OIB/OIF


class OifMicroscopeFile(MicroscopeFile):
    """Olympus FluoView OIB (one compound file) and OIF (a .oif file beside its .oif.files folder) through
    oiffile: one scene; each plane is one TIFF file inside, read alone. An OIF must keep its .oif name, which
    is how the reader finds its folder.

    Bounded before a plane is listed: an OIB's compound document (:func:`_check_compound`, when the format is
    told), the number of TIFF files, and the channels, z planes and time points their names declare
    (LSM_MAX_PLANES). A plane's TIFF must hold a first page of the scene's size and samples, and only that page
    is decoded: each strip or tile into a buffer of its declared size (tifffile), a strip or tile stored as a
    picture (JPEG, PNG, ...) once its header is found no larger than the tile (:func:`check_segments`)."""

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None, fmt: str = "OIB") -> None:
        import oiffile

        super().__init__(path, name, limits)
        self.format = fmt
        self.reader = _version("oiffile")
        if fmt == "OIF" and path.suffix.lower() != ".oif":
            raise LsmError("an Olympus OIF main file must keep its .oif name beside its .oif.files folder")
        self._oif = oiffile.OifFile(str(path))
        try:
            self._setup()
        except Exception:
            self._oif.close()
            raise

    def _setup(self) -> None:
        oif = self._oif
        groups: dict[str, list[str]] = {}
        for count, filename in enumerate(oif.glob("*.tif"), start=1):
            if count > self.limits.max_planes:
                raise LsmError(
                    f"{self.name} holds more than {self.limits.max_planes:,} TIFF files (one per plane); the limit "
                    f"is {self.limits.max_planes:,} planes (LSM_MAX_PLANES)"
                )
            key = "".join(ch for ch in PurePosixPath(filename.replace("\\", "/")).name[:-4] if ch.isalpha())
            groups.setdefault(key, []).append(filename)
        if not groups:
            raise LsmError("the file holds no image planes (no TIFF inside)")
        largest: list[str] = max(groups.values(), key=lambda names: len(names))
        files = list(tifffile.natural_sorted(largest))
        if len(files) > 1:
            dims, shape, indices, parsed = tifffile.parse_filenames(files, pattern="axes")
            files = list(parsed)
            axes = "".join(tifffile.TIFF.AXES_CODES.get(d.lower(), d[0].upper()) for d in dims)
        else:
            axes, shape, indices = "", (), [()]
        self._axes = axes
        self._shape = tuple(int(v) for v in shape)
        dims_map = dict(zip(axes, self._shape))
        self._t_axes = [a for a in axes if a not in "CZ"]
        self._t_shape = tuple(dims_map[a] for a in self._t_axes)
        size_t = int(np.prod(self._t_shape, dtype=object))  # Python integers: no overflow
        n_c = int(dims_map.get("C", 1))
        check_declared(self.limits, self.name, time_points=size_t, channels=n_c, z_planes=dims_map.get("Z", 1))
        self._index = {tuple(int(v) for v in ix): f for ix, f in zip(indices, files)}
        with oif.open_file(files[0]) as fh, tifffile.TiffFile(fh) as tif:
            page = tif.pages.first
            height, width = int(page.imagelength), int(page.imagewidth)
            dtype = np.dtype(page.dtype)
            samples = int(page.samplesperpixel)
        main = oif.mainfile
        names = [str((main.get(f"Channel {i + 1} Parameters") or {}).get("DyeName", "")) for i in range(n_c)]
        size = None
        origin = None
        ref = main.get("Reference Image Parameter") or {}
        try:
            factor_x = _um_per_unit(ref.get("WidthUnit", "um"))
            factor_y = _um_per_unit(ref.get("HeightUnit", ref.get("WidthUnit", "um")))
            if factor_x and factor_y:
                size = _pair(float(ref["HeightConvertValue"]) * factor_y, float(ref["WidthConvertValue"]) * factor_x)
                origin = "OIF Reference Image Parameter (Width/HeightConvertValue)"
        except (KeyError, TypeError, ValueError):
            size = None
        self.scenes.append(
            Scene(
                index=0,
                name=None,
                sizes=_sizes(size_t, n_c, dims_map.get("Z", 1), height, width),
                dtype=dtype,
                channels=_names(names, n_c),
                pixel_size_um=size,
                pixel_size_origin=origin if size else None,
                samples=samples,
            )
        )

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        t_index = iter(int(v) for v in np.unravel_index(t, self._t_shape)) if self._t_shape else iter(())
        key = tuple(c if a == "C" else z if a == "Z" else next(t_index) for a in self._axes)
        if key not in self._index:
            raise LsmError(f"the plane t={t}, c={c}, z={z} is missing from the file")
        with self._oif.open_file(self._index[key]) as fh, tifffile.TiffFile(fh) as tif:
            page = tif.pages.first
            stored = (int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel))
            if stored != (scene.sizes["Y"], scene.sizes["X"], scene.samples) or np.dtype(page.dtype) != scene.dtype:
                raise LsmError(
                    f"the plane t={t}, c={c}, z={z} is stored as {stored[1]} x {stored[0]} pixels of "
                    f"{stored[2]} {page.dtype} sample(s) where the first plane is {scene.sizes['X']} x "
                    f"{scene.sizes['Y']} of {scene.samples} {scene.dtype}; the file is inconsistent"
                )
            check_segments(page)  # a JPEG (PNG, ...) tile whose picture is larger than the tile: refused
            return np.asarray(page.asarray())

    def close(self) -> None:
        self._oif.close()


def _open_oib(path: Path, name: str, limits: Limits, detail: Any = None) -> MicroscopeFile:
    return OifMicroscopeFile(path, name, limits, detail, "OIB")


def _open_oif(path: Path, name: str, limits: Limits, detail: Any = None) -> MicroscopeFile:
    return OifMicroscopeFile(path, name, limits, detail, "OIF")


# -------------------------------------------------------------------------------------------- OME-Zarr


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
    member is unpacked a piece at a time, never beyond its declared size (:func:`images.read_member`)."""

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
        from lsm_core.imaging.images import read_member

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


class ZarrMicroscopeFile(MicroscopeFile):
    """OME-Zarr (NGFF 0.1 to 0.5; zarr v2 or v3) through zarr, as a folder or a ZIP of one: each image is a
    scene (one image; the series of a bioformats2raw layout; the fields of a plate), read at full
    resolution. A plane reads the chunks that cross it: memory is the plane plus one chunk, checked."""

    format = "OME-Zarr"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        import zarr

        super().__init__(path, name, limits)
        self.reader = _version("zarr")
        self._store: Any = None
        self._source: _ZarrSource | None = None
        if path.is_dir():
            self._check_metadata(
                (str(f.relative_to(path)), f.stat().st_size) for f in path.rglob("*") if f.name in _ZARR_METADATA
            )
            self._store = zarr.storage.LocalStore(str(path), read_only=True)
            root_path = ""
        else:
            self._check_zip(path)
            self._store = zarr.storage.ZipStore(str(path), mode="r")
            root_path = str(detail or "")
        try:
            self._source = _ZarrSource(path)
            root = zarr.open_group(store=self._store, path=root_path, mode="r")
            self._images: list[_ZarrImage] = []
            self._planes = 0  # declared by the images so far (LSM_MAX_PLANES bounds them all together)
            for label, group in self._image_groups(root):
                self._add(label, group)
            if not self.scenes:
                raise LsmError("the Zarr holds no OME-Zarr image (no 'multiscales' in its attributes)")
        except Exception:
            self.close()
            raise

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
                f"a member of the ZIP unpacks to {_megabytes(biggest)}; the limit for one file is "
                f"{_megabytes(self.limits.max_file_bytes)} (LSM_MAX_FILE_BYTES)"
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
                    f"the Zarr metadata file {name} declares {_megabytes(size)}; at most "
                    f"{_megabytes(ZARR_METADATA_BYTES)} are read (an OME-Zarr's metadata takes a few KB)"
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
        fy, fx = _um_per_unit(units[iy]), _um_per_unit(units[ix])
        size = _pair(scale[iy] * fy, scale[ix] * fx) if fy and fx else None
        omero = attrs.get("omero") or {}
        channel_names = [ch.get("label", "") for ch in omero.get("channels", [])[:n_c]]
        assert self._source is not None
        self._images.append(_ZarrImage(_ZarrArray(self._source, array), letters))
        self.scenes.append(
            Scene(
                index=len(self.scenes),
                name=label or multiscale.get("name") or None,
                sizes=_sizes(size_t, n_c, dims.get("Z", 1), dims["Y"], dims["X"]),
                dtype=np.dtype(array.dtype),
                channels=_names(channel_names, n_c),
                pixel_size_um=size,
                pixel_size_origin="OME-Zarr multiscales scale + axes unit" if size else None,
            )
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

    def close(self) -> None:
        close = getattr(self._store, "close", None)
        if close is not None:
            close()
        if self._source is not None:
            self._source.close()


# -------------------------------------------------------------------------------------------- PNG/JPEG


class PictureMicroscopeFile(MicroscopeFile):
    """PNG and JPEG through Pillow (via :class:`images.PilReader`, so the camera's EXIF orientation is
    applied): one scene, one plane; colour is one channel (its luminance)."""

    _DTYPES = {"I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16, "I": np.int32}

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        super().__init__(path, name, limits)
        self.reader = _version("pillow")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise LsmError(
                f"the file is {_megabytes(size)}; the limit for one file is {_megabytes(limits.max_file_bytes)} "
                "(LSM_MAX_FILE_BYTES)"
            )
        data = path.read_bytes()
        self._reader = PilReader(data)
        self.format = "PNG" if self._reader.format == "png" else "JPEG"
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        info = self._reader.pages[0]
        height, width = info.height, info.width
        if orientation in (5, 6, 7, 8):  # the camera's orientation turns the picture by 90 degrees
            height, width = width, height
        dtype = np.dtype(self._DTYPES.get(mode, np.float32 if mode == "F" else np.uint8))
        rgb = info.samples in (3, 4)
        self.scenes.append(
            Scene(
                index=0,
                name=None,
                sizes=_sizes(1, 1, 1, height, width),
                dtype=dtype,
                channels=[""],
                rgb=rgb,
                samples=info.samples,
            )
        )

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        arr, _bits = self._reader.read(0)  # EXIF orientation applied
        return arr


_OPENERS: dict[str, Any] = {
    "TIFF": TiffMicroscopeFile,
    "CZI": CziMicroscopeFile,
    "ND2": Nd2MicroscopeFile,
    "LIF": LifMicroscopeFile,
    "OIB": _open_oib,
    "OIF": _open_oif,
    "OME-Zarr": ZarrMicroscopeFile,
    "PNG": PictureMicroscopeFile,
    "JPEG": PictureMicroscopeFile,
}


# ------------------------------------------------------------------------------- channels, focus, labels

_TRANSMITTED_WORDS = frozenset(
    {"dic", "td", "trans", "transmitted", "bf", "bright", "brightfield", "phase", "tl", "nomarski"}
)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")


def channel_words(name: str) -> list[str]:
    """The words of a channel name, lower case: split at anything not a letter and at camel case
    ("TransmittedLight" -> transmitted, light; "DIC1" -> dic; "5-FAM/pH 9.0" -> fam, p, h)."""
    return [w.lower() for w in _WORD.findall(name or "")]


def transmitted_channel(channels: list[str]) -> int | None:
    """The index of the transmitted-light channel (DIC, brightfield, phase), found by name; None when no
    name says so (the caller asks the user).

    A name matches when one of its words (:func:`channel_words`, case-insensitive) is DIC, Nomarski, TD,
    Trans, Transmitted, TL, BF, Bright, Brightfield or Phase: "TD", "DIC 1", "Bright", "Transmitted light",
    "BF", "TL Brightfield", "PMT Trans", "Phase contrast" match. Whole words only, so "GFP", "BFP",
    "5-FAM/pH 9.0" (pH is not phase), "Dichroic" and "Brightness" (a display setting, not a contrast method)
    do not. When several match, the first. A file with one channel: that channel, whatever its name.
    """
    if len(channels) == 1:
        return 0
    for index, name in enumerate(channels):
        if any(word in _TRANSMITTED_WORDS for word in channel_words(name)):
            return index
    return None


def focus_score(plane: np.ndarray) -> float:
    """Variance of the Laplacian of Gaussian (sigma 1 pixel) of one plane normalised to [0, 1] by its own
    1st and 99th percentiles.

    The variance of the Laplacian is the focus measure of Pech-Pacheco et al., "Diatom autofocusing in
    brightfield microscopy: a comparative study", ICPR 2000 (vol. 3, pp. 314-317): defocus removes high
    spatial frequencies, which the Laplacian measures. Two changes make it robust on camera images:
    normalising each plane by its own percentiles makes the score independent of exposure, bit depth and
    offset (a plane that is merely brighter does not win); and a Gaussian of 1 pixel before the Laplacian
    keeps pixel noise out of it (the plain Laplacian of a noisy, badly defocused plane can score as high as
    the focused one, because the normalisation stretches its noise). A constant plane scores 0. ``plane``
    is (H, W), or (H, W, 3|4) colour (its luminance is used).
    """
    a = np.asarray(plane)
    if a.ndim == 3:
        a = luminance(a)
    if a.ndim != 2:
        raise LsmError(f"a focus score needs a 2-D plane, got shape {a.shape}")
    f = a.astype(np.float32)
    if not np.isfinite(f).all():
        finite = f[np.isfinite(f)]
        f = np.where(np.isfinite(f), f, finite.mean() if finite.size else 0.0).astype(np.float32)
    lo, hi = np.percentile(f, (1.0, 99.0))
    if not hi > lo:
        return 0.0
    f = np.clip((f - lo) / (hi - lo), 0.0, 1.0)
    return float(ndimage.gaussian_laplace(f, _FOCUS_SIGMA).var())


_FOCUS_SIGMA = 1.0  # pixels: the Gaussian of the Laplacian of Gaussian in focus_score


def best_focus(planes: Iterable[np.ndarray]) -> tuple[int, list[float]]:
    """The index of the best-focused plane of a z stack and the focus score of each (:func:`focus_score`:
    the variance of the Laplacian of Gaussian after percentile normalisation, after Pech-Pacheco et al.
    2000). Planes are
    read one at a time (pass a generator such as :meth:`MicroscopeFile.z_planes` to hold one in memory); the
    first of equal best scores wins. LsmError for no plane."""
    scores = [focus_score(p) for p in planes]
    if not scores:
        raise LsmError("no plane to choose the focus from")
    return int(np.argmax(scores)), scores


def image_label(file: str, scene: int, n_scenes: int, t: int, n_t: int) -> str:
    """How one image of a file is named: "file", or "file[s=2,t=3]" (1-based, each shown only when the
    file has more than one along that axis)."""
    parts = []
    if n_scenes > 1:
        parts.append(f"s={scene + 1}")
    if n_t > 1:
        parts.append(f"t={t + 1}")
    return f"{file}[{','.join(parts)}]" if parts else file


def describe(mf: MicroscopeFile) -> str:
    """A short human summary of an open file (format, reader, scenes), for logs and the command line."""
    lines = [f"{mf.name}: {mf.format} ({mf.reader}), {len(mf.scenes)} scene(s)"]
    for s in mf.scenes:
        size = (
            f"{s.pixel_size_um[1]:.4g} x {s.pixel_size_um[0]:.4g} um ({s.pixel_size_origin})"
            if s.pixel_size_um
            else "no pixel size"
        )
        lines.append(
            f"  scene {s.index + 1}{' ' + repr(s.name) if s.name else ''}: "
            + " ".join(f"{k}={v}" for k, v in s.sizes.items())
            + f" {s.dtype}{' RGB' if s.rgb else ''}, channels {s.channels}, {size}"
        )
    return "\n".join(lines)


__all__ = [
    "SUPPORTED_FORMATS",
    "Scene",
    "MicroscopeFile",
    "open_microscope_file",
    "transmitted_channel",
    "channel_words",
    "focus_score",
    "best_focus",
    "image_label",
    "luminance",
    "describe",
]
