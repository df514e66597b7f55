"""The one reader base: what every format's reader is (:class:`Reader`), the bounds it works within
(:class:`Limits`, :func:`check_declared`, :meth:`PageInfo.check`) and the messages they give.

A reader is one open file, seen two ways:

* as the microscope wrote it (:attr:`Reader.scenes`): each scene (position, scene, series, tile) with its
  sizes along T, C, Z, Y, X, its pixel type, its channel names, whether it is an RGB photograph, and its pixel
  size in micrometres with where that number came from; :meth:`Reader.plane` decodes one 2-D plane (Y, X) and
  nothing else;
* as images (:attr:`Reader.pages`): what :mod:`lsm_core.imaging.images` validates and decodes, one page at a
  time. A microscope stack (:class:`StackReader`: OME-TIFF, ImageJ, CZI, ND2, LIF, OIB/OIF, OME-Zarr) gives
  one page per (scene, time point), named ``file[s=2,t=3]``, of which one plane is read: the chosen channel
  (``options.channel``, else the transmitted-light channel found by name) at the chosen z (``options.z``,
  else the best-focused plane; see :mod:`lsm_core.imaging.planes`). A plain TIFF gives each of its pages, a
  PNG or JPEG its one picture.

Axes
----
``sizes`` always has the five keys T, C, Z, Y, X (1 when the file lacks an axis). Axes that are none of
these (tifffile's I and Q for a plain stack of pages, OME-Zarr custom axes, ...) are folded into T, in file
order: each index along them is one more "time point", which is also how :mod:`lsm_core.imaging.images`
treats the pages of a plain multi-page TIFF (every page is its own image). An RGB photograph
(samples per pixel 3 or 4, photometric RGB) is one channel: :meth:`Reader.plane` returns its
luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, :func:`planes.luminance`) in the file's
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
Before any pixel is decoded, :meth:`Reader.check` compares what reading one plane decodes, from the headers,
with :class:`Limits`: the plane's pixels (``max_image_pixels``) and its bytes, samples and the float32 grey
copy included (``max_image_bytes``, as :class:`PageInfo` counts them); and for readers whose unit is larger
than a plane (an ND2 frame, an OME-Zarr chunk, a TIFF series that cannot be cut into pages) that unit's bytes
too. :meth:`Reader.plane` calls it first.

Counts are bounded before anything is made of them: every reader checks the channels, z planes, time points,
scenes, series and pages its headers declare, and all their planes together, against ``max_planes``
(LSM_MAX_PLANES, :func:`check_declared`) before it makes a list, a loop or a row per plane (for
OME-TIFF, ImageJ and LSM files, from their own metadata, before tifffile makes its series).

Decompression is bounded while it happens. A Zarr chunk is read only when its stored size fits its declared
size, and unpacked by its codec (blosc, zstd, zlib, gzip, lz4, bz2, lzma) into at most its declared size;
a metadata file is at most ``ZARR_METADATA_BYTES``. A TIFF strip or tile is unpacked by tifffile into a
buffer of its size; one that is a picture (JPEG, PNG, WebP, JPEG 2000) has its own header read first
(:func:`tiff.check_segments`). A ZIP member is unpacked a piece at a time, never beyond its declared size
(:func:`archives.read_member`).

Errors
------
Everything a file can cause raises :class:`lsm_core.errors.LsmError` with a message a biologist can act on:
an unknown format lists the formats read here; a file that looks like a vendor format but that the reader
fails on says which format and which reader (``the file looks like a Nikon ND2 but the nd2 reader failed:
...``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from lsm_core.errors import LsmError
from lsm_core.imaging.planes import best_focus, luminance, transmitted_channel

MAX_REPORTER_CHANNELS = 16  # measured per cell beside the classified channel; more are named in a note


@dataclass(frozen=True)
class Limits:
    """Bounds applied before anything is decoded or unpacked (a lab changes them in its settings:
    LSM_MAX_IMAGE_PIXELS, LSM_MAX_IMAGE_BYTES, LSM_MAX_FILE_BYTES, LSM_MAX_ARCHIVE_MEMBERS,
    LSM_MAX_ARCHIVE_BYTES, LSM_MAX_PLANES; see lsm_core.lab.settings).

    ``max_image_bytes`` bounds the memory one decoded page takes: width x height x samples x bytes per sample
    as stored, plus its float32 grey copy. Pages are decoded one at a time, so this is the memory an image
    costs whatever its number of pages. ``max_file_bytes`` bounds one file (or ZIP member) read into memory.
    """

    max_image_pixels: int = 100_000_000
    max_image_bytes: int = 400_000_000
    max_file_bytes: int = 2 * 1024**3
    max_archive_members: int = 20_000
    max_archive_bytes: int = 4 * 1024**3
    # planes one file may declare: each count (channels, z planes, time points, scenes, series, pages) and
    # their product, checked from the headers before anything is built per plane (check_declared)
    max_planes: int = 20_000


def check_declared(limits: Limits, what: str = "the file", **counts: int) -> None:
    """LsmError when a count a file's headers declare (``channels=3, z_planes=10, time_points=1, ...``), or
    their product, is above ``limits.max_planes`` (LSM_MAX_PLANES): called by every reader before it builds a
    list, a loop or a row per plane, so a few bytes that declare millions of planes cost nothing.

    >>> check_declared(Limits(max_planes=100), "a.ome.zarr", channels=3, time_points=1_000_000)
    Traceback (most recent call last):
    lsm_core.errors.LsmError: a.ome.zarr declares 1,000,000 time points; the limit is 100 planes (LSM_MAX_PLANES)
    """
    total = 1
    for name, n in counts.items():
        n = int(n)
        words = name.replace("_", " ")
        if n > limits.max_planes:
            raise LsmError(f"{what} declares {n:,} {words}; the limit is {limits.max_planes:,} planes (LSM_MAX_PLANES)")
        total *= max(1, n)
    if total > limits.max_planes:
        listed = " x ".join(f"{int(n):,} {name.replace('_', ' ')}" for name, n in counts.items())
        raise LsmError(
            f"{what} declares {total:,} planes ({listed}); the limit is {limits.max_planes:,} (LSM_MAX_PLANES)"
        )


# ------------------------------------------------------------------------------------ shared messages


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _human_mp(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f} megapixels" if pixels >= 1e6 else f"{pixels:,} pixels"


def check_pixels(width: int, height: int, limits: Limits) -> None:
    pixels = int(width) * int(height)
    if width <= 0 or height <= 0:
        raise LsmError(f"the image has no pixels ({width} x {height})")
    if pixels > limits.max_image_pixels:
        raise LsmError(
            f"the image is {width} x {height} pixels ({_human_mp(pixels)}); the limit is "
            f"{_human_mp(limits.max_image_pixels)} (LSM_MAX_IMAGE_PIXELS). Tile it or bin it first."
        )


def check_file_size(size: int, limits: Limits) -> None:
    """LsmError when a file read into memory whole is over LSM_MAX_FILE_BYTES."""
    if size > limits.max_file_bytes:
        raise LsmError(
            f"the file is {megabytes(size)}; the limit for one file is {megabytes(limits.max_file_bytes)} "
            "(LSM_MAX_FILE_BYTES)"
        )


def check_pages(n_pages: int, limits: Limits, what: str) -> None:
    """LsmError when a TIFF has more pages than LSM_MAX_ARCHIVE_MEMBERS or LSM_MAX_PLANES allow."""
    if n_pages > limits.max_archive_members:
        raise LsmError(f"the TIFF has {n_pages:,} pages; the limit is {limits.max_archive_members:,}")
    check_declared(limits, what, pages=n_pages)


def damaged(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):  # Pillow names its buffer object here, which says nothing to people
        return "the file is damaged or incomplete and could not be decoded (its contents are not a readable image)"
    text = str(exc).strip() or type(exc).__name__
    return f"the file is damaged or incomplete and could not be decoded ({text})"


@dataclass(frozen=True)
class PageInfo:
    """What a page's header says, before anything is decoded: its size, samples per pixel, bytes per sample."""

    index: int  # 0-based
    width: int
    height: int
    samples: int = 1
    itemsize: int = 1
    bits: int = 8  # significant bits of an integer sample
    label: str | None = None  # how the image is named when a file holds scenes or time points: file[s=2,t=3]
    pixel_size_um: float | None = None  # what the file states (square pixels), None when it states nothing
    pixel_size_origin: str | None = None  # where in the file that number was found
    channel: str | None = None  # the channel read (a multi-channel file): its name, or #index

    @property
    def decoded_bytes(self) -> int:
        """The memory the page takes once decoded: its samples as stored plus its float32 grey copy."""
        return self.width * self.height * (self.samples * self.itemsize + 4)

    def check(self, limits: Limits) -> None:
        """LsmError when the page is larger than the limits allow (pixels, or memory once decoded)."""
        check_pixels(self.width, self.height, limits)
        if self.decoded_bytes > limits.max_image_bytes:
            raise LsmError(
                f"the image would take {megabytes(self.decoded_bytes)} of memory to decode ({self.width} x "
                f"{self.height} pixels, {self.samples} sample{'s' if self.samples != 1 else ''} of "
                f"{self.itemsize} byte{'s' if self.itemsize != 1 else ''} each); the limit is "
                f"{megabytes(limits.max_image_bytes)} (LSM_MAX_IMAGE_BYTES). Tile it, bin it, or save the "
                "channel that matters alone."
            )


@dataclass(frozen=True)
class ReadOptions:
    """What to read from a file of several channels or planes: the channel (a name, case-insensitive, or an
    index counted from 0; None: the transmitted-light channel found by name) and the z plane (counted from 0;
    None: the best-focused, see :func:`lsm_core.imaging.planes.best_focus`)."""

    channel: str | None = None
    z: int | None = None


# What a format is called in messages, and which reader reads it
LONG_NAME = {
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
READER = {
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


# Micrometres per unit, for every spelling the formats use (OME UnitsLength, ImageJ, OME-Zarr / UDUNITS).
UM_PER_UNIT = {
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


def um_per_unit(unit: str | None) -> float | None:
    if unit is None:
        return None
    return UM_PER_UNIT.get(str(unit).strip().lower())


def library_version(package: str) -> str:
    try:
        return f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package


_REASON_CHARS = 200  # of a reader's own message: enough to recognise it, not a dump of bytes


def failed(fmt: str, exc: BaseException, during: str = "", path: Path | None = None) -> str:
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
        f"the file looks like {LONG_NAME[fmt]} but the {READER[fmt]} reader failed{where}: {text} "
        "(the file may be incomplete or damaged: copy or export it again, or save it as OME-TIFF)"
    )


def tczyx(t: int = 1, c: int = 1, z: int = 1, y: int = 1, x: int = 1) -> dict[str, int]:
    return {"T": int(t), "C": int(c), "Z": int(z), "Y": int(y), "X": int(x)}


def channel_list(names: list[str], n: int) -> list[str]:
    """Exactly ``n`` channel names: the file's, padded with "" (or cut) when it names more or fewer."""
    clean = [str(v).strip() if v is not None else "" for v in names][:n]
    return clean + [""] * (n - len(clean))


def yx_um(y: float | None, x: float | None) -> tuple[float, float] | None:
    if y is None or x is None or not np.isfinite(y) or not np.isfinite(x) or y <= 0 or x <= 0:
        return None
    return (float(y), float(x))


def image_label(file: str, scene: int, n_scenes: int, t: int, n_t: int) -> str:
    """How one image of a file is named: "file", or "file[s=2,t=3]" (1-based, each shown only when the
    file has more than one along that axis)."""
    parts = []
    if n_scenes > 1:
        parts.append(f"s={scene + 1}")
    if n_t > 1:
        parts.append(f"t={t + 1}")
    return f"{file}[{','.join(parts)}]" if parts else file


# ------------------------------------------------------------------------------------------ recognition

SUPPORTED_TEXT = "PNG, JPEG, TIFF, OME-TIFF, CZI, ND2, LIF, OIB, OME-Zarr (zipped)"


def sniff(data: bytes) -> str:
    """What a file's first bytes say it is: "png", "jpeg", "tiff", "zip" or "unknown"."""
    head = data[:8]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    return "unknown"


def looks_vendor(data: bytes) -> bool:
    """Whether the bytes start like a vendor microscope file (CZI, ND2, LIF, OIB, OIR)."""
    head = data[:64]
    return (
        head.startswith(b"ZISRAWFILE")
        or head[:4] == b"\xda\xce\xbe\x0a"
        or head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n")
        or (len(head) >= 13 and head[:4] == b"\x70\x00\x00\x00" and head[8] == 0x2A)
        or head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
        or head.startswith(b"OLYMPUSRAWFORMAT")
    )


def looks_like_text(data: bytes) -> bool:
    sample = data[:2048]
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def pieces(fh: Any, n: int, size: int = 1 << 20) -> Iterator[bytes]:
    """The next ``n`` bytes of the open file ``fh``, ``size`` at a time (a header streamed through a parser
    without holding it whole); fewer where the file ends first."""
    left = n
    while left > 0:
        piece = fh.read(min(left, size))
        if not piece:
            return
        left -= len(piece)
        yield piece


def head_of(path: Path, n: int = 512) -> bytes:
    """The first ``n`` bytes of a file."""
    with open(path, "rb") as fh:
        return fh.read(n)


# ---------------------------------------------------------------------------------------------- readers


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
        """The plane as :class:`PageInfo` counts it (pixels, samples, bytes per sample)."""
        itemsize = int(self.dtype.itemsize)
        bits = itemsize * 8
        return PageInfo(self.index, self.sizes["X"], self.sizes["Y"], self.samples, itemsize, bits)


class Reader:
    """One open image file: the base every format's reader implements (one module per format family beside
    this one). Nothing is decoded until asked for.

    - its scenes (:attr:`scenes`, from the headers) and one plane of one at a time (:meth:`plane`; subclasses
      implement ``_read``, and ``_unit_bytes`` when their library decodes more than one plane to give one);
    - its pages (:attr:`pages`, from the headers, for the options :meth:`choose` was given), why one cannot be read
      (:meth:`error`), what of the :class:`ReadOptions` asked for one lacks (:meth:`lacks`), and its raw samples
      (:meth:`read`), which :mod:`lsm_core.imaging.images` turns into the one grey representation;
    - the other channels of a page (none but for a microscope stack, :class:`StackReader`).

    A context manager; :meth:`close` releases the file (subclasses implement ``_close``) and removes the
    temporary copy a reader of bytes was given (``owned``).
    """

    format: str = ""
    reader: str = ""  # the library and version that reads it, e.g. "czifile 2019.7.2.3"
    options: ReadOptions = ReadOptions()  # what to read of a page (set by the opener)
    last_note: str | None = None  # what the last read chose (the z plane), for the record's notes
    z_read: int | None = None  # the z plane the last read used (None: the image is no z stack)

    def __init__(self, path: Path | None, name: str, limits: Limits) -> None:
        self.path = path
        self.name = name
        self.limits = limits
        self.scenes: list[Scene] = []
        self.owned: Path | None = None  # a temporary file removed on close
        self.pages: list[PageInfo] = []  # every page's header (size, samples, bytes per sample, pixel size)
        self._errors: dict[int, str] = {}  # pages whose headers already say they cannot be read

    # -- pages
    def choose(self, options: ReadOptions | None = None) -> Reader:
        """What to read of each page (a channel, a z plane; the opener calls it): the pages are listed for
        it. Returns the reader."""
        self.options = options or ReadOptions()
        return self

    def error(self, index: int) -> str | None:
        """Why page ``index`` cannot be read, when its headers already say so."""
        return self._errors.get(index)

    def lacks(self, index: int, options: ReadOptions | None = None) -> str | None:
        """What of ``options`` page ``index`` does not have (a channel or z plane asked for), from its headers;
        None when it has all of it. A file of one plane has z plane 0 only, and its one channel."""
        if options is not None and options.z not in (None, 0):
            return f"z plane {options.z} was asked for; this image has 1 (counted from 0)"
        return None

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """The raw samples of page ``index`` ((H, W) or (H, W, S)) and their significant bits."""
        raise NotImplementedError

    def scene_channels(self, scene: int) -> list[str]:
        """The channel names of scene ``scene`` as the file states them (None or "" when unnamed)."""
        return list(self.scenes[scene].channels) if 0 <= scene < len(self.scenes) else []

    def other_channel_names(self, index: int) -> list[str]:
        """The names :meth:`other_channels` gives page ``index``'s other channels (headers only)."""
        return []

    def other_channels(self, index: int, limits: Limits | None = None) -> tuple[dict[str, np.ndarray], str | None]:
        """The other channels of page ``index`` and a note naming those left out (a file of one channel has
        none)."""
        return {}, None

    # -- scenes
    def check(self, scene: int) -> None:
        """LsmError when reading one plane of ``scene`` would exceed the limits (from the headers alone)."""
        info = self._scene(scene).plane_info
        info.check(self.limits)
        unit, what = self._unit_bytes(scene)
        if unit > self.limits.max_image_bytes:
            raise LsmError(
                f"reading one plane of this file decodes {megabytes(unit)} at once ({what}); the limit is "
                f"{megabytes(self.limits.max_image_bytes)} (LSM_MAX_IMAGE_BYTES). Save the plane or channel "
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
            raise LsmError(failed(self.format, exc, "reading a plane", self.path)) from None
        return _as_plane(arr, s)

    def z_planes(self, scene: int, t: int = 0, c: int = 0) -> Iterator[np.ndarray]:
        """The planes along Z of one (scene, t, c), one at a time (for :func:`planes.best_focus`)."""
        for z in range(self._scene(scene).sizes["Z"]):
            yield self.plane(scene, t, c, z)

    # -- the file
    def close(self) -> None:
        try:
            self._close()
        finally:
            if self.owned is not None:
                self.owned.unlink(missing_ok=True)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {self.name!r}: {len(self.scenes)} scene(s)>"

    # -- for subclasses
    def _close(self) -> None:
        pass

    def _scene(self, scene: int) -> Scene:
        if not 0 <= int(scene) < len(self.scenes):
            raise LsmError(f"scene {scene} is missing (the file has {len(self.scenes)}, counted from 0)")
        return self.scenes[int(scene)]

    def _unit_bytes(self, scene: int) -> tuple[int, str]:
        """Bytes the reader decodes at once to give one plane, and what that unit is."""
        return 0, ""

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        raise NotImplementedError


class StackReader(Reader):
    """A microscope file of scenes, time points, channels and z planes (OME-TIFF, ImageJ hyperstacks, CZI,
    ND2, LIF, OIB/OIF, OME-Zarr) as pages: one page per (scene, time point), named ``file[s=2,t=3]``; of each,
    one plane: the chosen channel (``options.channel``, else the transmitted-light channel found by name) at
    the chosen z (``options.z``, else the best-focused plane). A page whose file names no transmitted-light
    channel, or whose pixels are not square, is an error that says what to do."""

    last_z = 0  # the z plane the last read used (the other channels are read at it)
    library = ""  # the package that reads the format: it and its version are the reader's :attr:`reader`

    def __init__(self, path: Path, name: str, limits: Limits) -> None:
        super().__init__(path, name, limits)
        if self.library:
            self.reader = library_version(self.library)

    def _set_up(self) -> None:
        """Reads the file's headers into its scenes (:meth:`_setup`, once the subclass has opened the file):
        when that fails, what it opened is closed before the error goes on."""
        try:
            self._setup()
        except Exception:
            self.close()
            raise

    def _setup(self) -> None:
        raise NotImplementedError

    def _add_scene(
        self,
        name: str | None,
        sizes: tuple[int, int, int, int, int],
        dtype: np.dtype,
        channels: list[str],
        pixel_size_um: tuple[float, float] | None = None,
        origin: str | None = None,
        rgb: bool = False,
        samples: int = 1,
    ) -> None:
        """Adds the next scene from what the headers say: its sizes along T, C, Z, Y and X, the channel names
        the file gives (padded with "" or cut to C: :func:`channel_list`), its pixel size (y, x) in micrometres
        and where that was found (kept only with a pixel size)."""
        t, c, z, y, x = sizes
        self.scenes.append(
            Scene(
                index=len(self.scenes),
                name=name,
                sizes=tczyx(t, c, z, y, x),
                dtype=dtype,
                channels=channel_list(channels, int(c)),
                rgb=rgb,
                pixel_size_um=pixel_size_um,
                pixel_size_origin=origin if pixel_size_um else None,
                samples=samples,
            )
        )

    def choose(self, options: ReadOptions | None = None) -> Reader:
        super().choose(options)
        pages: list[PageInfo] = []
        self._where: list[tuple[int, int, int | None]] = []
        self._lacks: dict[int, str] = {}  # pages without the channel or z plane asked for
        self._errors = {}
        scenes = self.scenes
        for scene in scenes:
            channel, problem = self._channel(scene)
            lacks = problem  # no channel to classify, asked for or found by name: refused at submit, from headers
            depth, z = scene.sizes["Z"], self.options.z
            if z is not None and not 0 <= z < depth:
                lacks = lacks or f"z plane {z} was asked for; this image has {depth} (counted from 0)"
                problem = problem or lacks
            info = scene.plane_info
            size, square = scene.pixel_size_um, True
            if size is not None and abs(size[0] - size[1]) > 0.01 * size[1]:
                square = False
                problem = problem or (
                    f"its pixels are not square ({size[1]:.4g} x {size[0]:.4g} um, x by y, from "
                    f"{scene.pixel_size_origin}); resample it to square pixels first"
                )
            for t in range(scene.sizes["T"]):
                index = len(pages)
                pages.append(
                    replace(
                        info,
                        index=index,
                        label=image_label(self.name, scene.index, len(scenes), t, scene.sizes["T"]),
                        pixel_size_um=size[1] if size is not None and square else None,
                        pixel_size_origin=scene.pixel_size_origin if size is not None and square else None,
                        channel=(scene.channels[channel] or f"#{channel}")
                        if channel is not None and len(scene.channels) > 1
                        else None,
                    )
                )
                self._where.append((scene.index, t, channel))
                if problem:
                    self._errors[index] = problem
                if lacks:
                    self._lacks[index] = lacks
        self.pages = pages
        return self

    def _asked_channel(self) -> bool:
        return self.options.channel is not None and str(self.options.channel).strip() != ""

    def lacks(self, index: int, options: ReadOptions | None = None) -> str | None:
        return self._lacks.get(index)

    def _channel(self, scene: Scene) -> tuple[int | None, str | None]:
        names = scene.channels
        wanted = self.options.channel
        if self._asked_channel():
            text = str(wanted).strip()
            for i, n in enumerate(names):
                if n and n.lower() == text.lower():
                    return i, None
            if text.isdigit() and int(text) < len(names):
                return int(text), None
            listed = ", ".join(f"{i}: {n or '(unnamed)'}" for i, n in enumerate(names))
            return None, f"it has no channel {text!r}; its channels are {listed}"
        found = transmitted_channel(names)
        if found is None:
            listed = ", ".join(f"{i}: {n or '(unnamed)'}" for i, n in enumerate(names))
            return None, (
                f"none of its channels is named as transmitted light (DIC, TD, Trans, BF, Bright, Phase): "
                f"{listed}. Choose the channel to classify (--channel NAME or INDEX, or on the Classify page)"
            )
        return found, None

    def read(self, index: int) -> tuple[np.ndarray, int]:
        if index in self._errors:
            raise LsmError(self._errors[index])
        scene, t, channel = self._where[index]
        assert channel is not None  # a page without one has an error above
        depth = self.scenes[scene].sizes["Z"]
        z = self.options.z
        if z is None:
            z = best_focus(self.z_planes(scene, t, channel))[0] if depth > 1 else 0
            self.last_note = f"z plane {z + 1} of {depth} (best focus)" if depth > 1 else None
        else:
            if not 0 <= z < depth:
                raise LsmError(f"z plane {z} was asked for; this image has {depth} (counted from 0)")
            self.last_note = f"z plane {z + 1} of {depth} (chosen)" if depth > 1 else None
        self.last_z = z
        self.z_read = z if depth > 1 else None  # what the results record (None: no z stack)
        plane = self.plane(scene, t, channel, z)
        return plane, self.pages[index].bits

    def other_channel_names(self, index: int) -> list[str]:
        scene, _, channel = self._where[index]
        names: list[str] = []
        for c, name in enumerate(self.scenes[scene].channels):
            if c != channel:
                key = name or f"#{c}"
                names.append(f"{key} #{c}" if key in names else key)
        return names

    def other_channels(self, index: int, limits: Limits | None = None) -> tuple[dict[str, np.ndarray], str | None]:
        """The other channels of page ``index`` at the z plane :meth:`read` last used, in the file's grey
        values (float32), by name ("#2" for an unnamed one): the reporter signal measured in each cell; and a
        note naming the channels left out. Memory is bounded before anything is decoded: at most
        :data:`MAX_REPORTER_CHANNELS` channels, and together with the page itself within
        ``limits.max_image_bytes`` (each channel costs its plane as stored plus its float32 copy)."""
        limits = limits or Limits()
        scene, t, channel = self._where[index]
        info = self.pages[index]
        names = self.other_channel_names(index)
        indices = [c for c in range(len(self.scenes[scene].channels)) if c != channel]
        each = info.width * info.height * (info.itemsize + 4)
        room = max(0, limits.max_image_bytes - info.decoded_bytes) // max(1, each)
        keep = min(len(indices), MAX_REPORTER_CHANNELS, room)
        z = self.last_z
        out = {names[k]: np.asarray(self.plane(scene, t, indices[k], z), dtype=np.float32) for k in range(keep)}
        note = None
        if keep < len(indices):
            left = names[keep:]
            why = (
                f"at most {MAX_REPORTER_CHANNELS} are measured"
                if keep == MAX_REPORTER_CHANNELS
                else f"measuring them would pass the memory limit of {megabytes(limits.max_image_bytes)} "
                "(LSM_MAX_IMAGE_BYTES)"
            )
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            note = f"reporter channel{'s' if len(left) > 1 else ''} {shown} not measured: {why}"
        return out, note


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
