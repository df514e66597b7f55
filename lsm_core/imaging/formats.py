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
OME-Zarr       zarr                the chunks that cross the plane: memory is the plane plus one
                                   chunk, bounded.
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

Errors
------
Everything a file can cause raises :class:`lsm_core.errors.LsmError` with a message a biologist can act on:
an unknown format lists the formats read here; a file that looks like a vendor format but that the reader
fails on says which format and which reader (``the file looks like a Nikon ND2 but the nd2 reader failed:
...``).
"""

from __future__ import annotations

import io
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
from lsm_core.imaging.images import LUMA, Limits, PageInfo, PilReader

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


def _is_oib(path: Path) -> bool:
    """Whether an OLE compound document is an Olympus OIB: it holds an OibInfo.txt stream (its directory,
    which may lie anywhere in the file, is read by oiffile's compound-file reader)."""
    from oiffile import CompoundFile

    try:
        with CompoundFile(str(path)) as compound:
            names = [str(n).replace("\\", "/") for n in compound.files()]
    except Exception as exc:  # a damaged compound document
        raise LsmError(f"this OLE compound document (an Olympus OIB?) could not be read ({exc})") from None
    return any(n == "OibInfo.txt" or n.endswith("/OibInfo.txt") for n in names)


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
        if _is_oib(path):
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
        ome = _ome_images(tif.ome_metadata) if tif.is_ome else []
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
    (phase H, rotation R, illumination I, view V, block B) the first index is read."""

    format = "CZI"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        import czifile

        super().__init__(path, name, limits)
        self.reader = _version("czifile")
        self._czi = czifile.CziFile(str(path))
        try:
            self._setup()
        except Exception:
            self._czi.close()
            raise

    def _setup(self) -> None:
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

        xml = self._czi.metadata(raw=True) or ""
        try:
            root: ET.Element | None = ET.fromstring(xml) if xml else None
        except ET.ParseError:
            root = None
        names = self._channel_names(root)
        size = self._pixel_size(root)
        scene_names = self._scene_names(root)

        by_scene: dict[int, list[tuple[Any, dict[str, int], dict[str, Any]]]] = {}
        for row in rows:
            by_scene.setdefault(row[1].get("S", 0), []).append(row)
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

    @staticmethod
    def _channel_names(root: ET.Element | None) -> list[str]:
        if root is None:
            return []
        for path in (
            "Metadata/Information/Image/Dimensions/Channels/Channel",
            "Metadata/DisplaySetting/Channels/Channel",
        ):
            found = root.findall(path)
            if found:
                return [ch.get("Name") or ch.findtext("ShortName") or "" for ch in found]
        return []

    @staticmethod
    def _pixel_size(root: ET.Element | None) -> tuple[float, float] | None:
        if root is None:
            return None
        values: dict[str, float] = {}
        for distance in root.findall("Metadata/Scaling/Items/Distance"):
            try:
                values[distance.get("Id", "")] = float(distance.findtext("Value") or "nan") * 1e6  # metres
            except ValueError:
                continue
        return _pair(values.get("Y"), values.get("X"))

    @staticmethod
    def _scene_names(root: ET.Element | None) -> list[str | None]:
        if root is None:
            return []
        return [s.get("Name") for s in root.findall("Metadata/Information/Image/Dimensions/S/Scenes/Scene")]

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
        release on our mirror knows no zstd and decodes LZW with a NumPy call that NumPy 2 removed."""
        import imagecodecs

        entry = block.entry
        segment = entry.data_segment()
        base = np.dtype(np.dtype(entry.dtype).base)
        nbytes = block.h * block.w * scene.samples * base.itemsize
        compression = int(entry.compression)
        if int(segment.data_size) > 2 * nbytes + 65536:
            raise ValueError(f"a subblock declares {int(segment.data_size):,} bytes for a tile of {nbytes:,}")
        raw = segment.data(raw=True)
        if compression == 0:
            arr = np.frombuffer(raw, base, count=block.h * block.w * scene.samples)
        elif compression == 2:
            arr = np.frombuffer(imagecodecs.lzw_decode(raw), base)
        elif compression in (5, 6):
            arr = np.frombuffer(_zstd_decode(raw, compression, nbytes), base)
        elif compression == 1:
            arr = np.asarray(imagecodecs.jpeg8_decode(raw))
        elif compression == 4:
            arr = np.asarray(imagecodecs.jpegxr_decode(raw))
        else:
            raise ValueError(f"subblock compression {compression} is not supported (camera-specific raw data?)")
        arr = arr[: block.h * block.w * scene.samples].reshape(block.h, block.w, scene.samples)
        if scene.samples in (3, 4) and compression != 4:
            arr = arr[..., [2, 1, 0, 3][: scene.samples]]  # BGR(A) -> RGB(A), as czifile does
        return arr if scene.samples > 1 else arr[..., 0]

    def close(self) -> None:
        self._czi.close()


# ------------------------------------------------------------------------------------------------- ND2


class Nd2MicroscopeFile(MicroscopeFile):
    """Nikon ND2 through nd2: each XY position (P) is a scene. The reader's unit is a frame, which holds
    every channel of one (position, time, z): one plane costs C planes of memory, checked."""

    format = "ND2"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        import nd2

        super().__init__(path, name, limits)
        self.reader = _version("nd2")
        self._nd2 = nd2.ND2File(str(path))
        try:
            self._setup()
        except Exception:
            self._nd2.close()
            raise

    def _setup(self) -> None:
        f = self._nd2
        sizes = dict(f.sizes)
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
        frame = s.sizes["Y"] * s.sizes["X"] * self._n_c * s.samples * s.dtype.itemsize
        return frame, f"an ND2 frame holds all {self._n_c} channels" if self._n_c > 1 else "one ND2 frame"

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        t_index = [int(v) for v in np.unravel_index(t, self._t_shape)] if self._t_shape else []
        coords = dict(zip(self._t_axes, t_index))
        coords.update({"P": scene.index, "Z": z})
        key = tuple(coords.get(k, 0) for k in self._loop_keys)
        if key not in self._frames:
            raise LsmError(f"the ND2 has no frame for t={t}, z={z} in scene {scene.index} (an interrupted run?)")
        frame = np.asarray(self._nd2.read_frame(self._frames[key]))
        plane_dims = 3 if scene.rgb else 2
        if frame.ndim > plane_dims:  # channels first
            frame = frame[c]
        return frame

    def close(self) -> None:
        self._nd2.close()


# ------------------------------------------------------------------------------------------------- LIF


class LifMicroscopeFile(MicroscopeFile):
    """Leica LIF through readlif: each image is a scene (each tile of a tile scan its own scene); one plane
    read at its offset. Channel names come from the image's channel settings where the XML has them
    (wide-field: the user's channel name or contrast method; confocal: the active detectors, e.g.
    "PMT Trans"), "" otherwise. The pixel size is readlif's (n - 1) / length convention."""

    format = "LIF"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        from readlif.reader import LifFile

        super().__init__(path, name, limits)
        self.reader = _version("readlif")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # readlif warns of a truncated file and goes on with blank images
            self._lif = LifFile(str(path))
        images = list(self._lif.get_iter_image())
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
    is how the reader finds its folder."""

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
        for filename in oif.glob("*.tif"):
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
        self._index = {tuple(int(v) for v in ix): f for ix, f in zip(indices, files)}
        self._axes = axes
        self._shape = tuple(int(v) for v in shape)
        with oif.open_file(files[0]) as fh, tifffile.TiffFile(fh) as tif:
            page = tif.pages.first
            height, width = int(page.imagelength), int(page.imagewidth)
            dtype = np.dtype(page.dtype)
        dims_map = dict(zip(axes, self._shape))
        self._t_axes = [a for a in axes if a not in "CZ"]
        self._t_shape = tuple(dims_map[a] for a in self._t_axes)
        size_t = int(np.prod(self._t_shape)) if self._t_shape else 1
        n_c = int(dims_map.get("C", 1))
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
            )
        )

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        t_index = iter(int(v) for v in np.unravel_index(t, self._t_shape)) if self._t_shape else iter(())
        key = tuple(c if a == "C" else z if a == "Z" else next(t_index) for a in self._axes)
        if key not in self._index:
            raise LsmError(f"the plane t={t}, c={c}, z={z} is missing from the file")
        return np.asarray(self._oif.asarray(self._index[key]))

    def close(self) -> None:
        self._oif.close()


def _open_oib(path: Path, name: str, limits: Limits, detail: Any = None) -> MicroscopeFile:
    return OifMicroscopeFile(path, name, limits, detail, "OIB")


def _open_oif(path: Path, name: str, limits: Limits, detail: Any = None) -> MicroscopeFile:
    return OifMicroscopeFile(path, name, limits, detail, "OIF")


# -------------------------------------------------------------------------------------------- OME-Zarr


@dataclass(frozen=True)
class _ZarrImage:
    array: Any
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
        self._store: Any
        if path.is_dir():
            self._store = zarr.storage.LocalStore(str(path), read_only=True)
            root_path = ""
        else:
            self._check_zip(path)
            self._store = zarr.storage.ZipStore(str(path), mode="r")
            root_path = str(detail or "")
        try:
            root = zarr.open_group(store=self._store, path=root_path, mode="r")
            self._images: list[_ZarrImage] = []
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
        # zarr unpacks a chunk's whole member to read it: each is bounded like a file (zipfile never gives
        # more than the size declared)
        biggest = max((m.file_size for m in members), default=0)
        if biggest > self.limits.max_file_bytes:
            raise LsmError(
                f"a member of the ZIP unpacks to {_megabytes(biggest)}; the limit for one file is "
                f"{_megabytes(self.limits.max_file_bytes)} (LSM_MAX_FILE_BYTES)"
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
        if "plate" in attrs:
            for well in attrs["plate"].get("wells", []):
                well_group = root[well["path"]]
                for image in self._attrs(well_group).get("well", {}).get("images", []):
                    yield f"{well['path']}/{image['path']}", well_group[image["path"]]
            return
        if "bioformats2raw.layout" in attrs:
            i = 0
            while str(i) in root:
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
        size_t = (
            int(np.prod([s for a, s in zip(letters, shape) if a in "Tt"])) if any(a in "Tt" for a in letters) else 1
        )
        scale = [1.0] * len(shape)
        for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
            for tr in transforms or []:
                if tr.get("type") == "scale" and len(tr.get("scale", [])) == len(shape):
                    scale = [a * float(b) for a, b in zip(scale, tr["scale"])]
        iy, ix = letters.index("Y"), letters.index("X")
        fy, fx = _um_per_unit(units[iy]), _um_per_unit(units[ix])
        size = _pair(scale[iy] * fy, scale[ix] * fx) if fy and fx else None
        omero = attrs.get("omero") or {}
        channel_names = [ch.get("label", "") for ch in omero.get("channels", [])]
        n_c = int(dims.get("C", 1))
        self._images.append(_ZarrImage(array, letters))
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
        image = self._images[scene]
        chunks = tuple(int(v) for v in image.array.chunks)
        nbytes = int(np.prod(chunks)) * int(np.dtype(image.array.dtype).itemsize)
        return nbytes, f"one Zarr chunk of shape {chunks}"

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        image = self._images[scene.index]
        t_shape = tuple(int(s) for a, s in zip(image.axes, image.array.shape) if a in "Tt")
        t_index = iter(int(v) for v in np.unravel_index(t, t_shape)) if t_shape else iter(())
        sel: list[Any] = []
        for axis in image.axes:
            if axis in "YX":
                sel.append(slice(None))
            else:
                sel.append(c if axis == "C" else z if axis == "Z" else next(t_index))
        arr = np.asarray(image.array[tuple(sel)])
        if image.axes.index("Y") > image.axes.index("X"):
            arr = arr.T
        return arr

    def close(self) -> None:
        close = getattr(self._store, "close", None)
        if close is not None:
            close()


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
