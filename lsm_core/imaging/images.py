"""Read and validate microscope image files.

Accepted: PNG, JPEG (EXIF orientation applied), TIFF (8-bit, 16-bit, 32-bit integer and float; every page
of a multi-page file is one image), grey, grey+alpha, RGB and RGBA, and ZIP archives of these (folder names
are kept in the reported file name: ``archive.zip/LT-HSC/cell1.png``). The format is told from the file's
content, not its name.

The one grey representation
---------------------------
Every image becomes a 2-D ``float32`` array of shape (H, W) with values in [0, 1]:

* colour is reduced to luminance, ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601); alpha is dropped;
* integers are divided by the largest value of their bit depth (255 for 8-bit, 65535 for 16-bit; a
  12-bit camera image stored in 16 bits therefore uses the lower part of the range, which is fine: see
  below);
* floats already inside [0, 1] are kept; other floats are rescaled from their minimum..maximum to 0..1;
  NaN or infinite values are an error.

The one intensity normalisation
-------------------------------
Exposure, bit depth and lamp brightness differ between sessions, so the networks never see absolute
intensities: the first layer of every network in :mod:`lsm_core.ml.nets` standardises each crop to zero mean
and unit standard deviation (:class:`lsm_core.ml.nets.CropStandardise`). Because it sits inside the network,
training, inference and saliency apply it identically, and any affine change of the grey values above
(8-bit vs 16-bit, 12-bit in 16) leaves predictions unchanged.

Bounds
------
Pixel counts are checked from the header before any decoding; ZIP archives are checked for their number of
members and unpacked size (as declared; zipfile never unpacks more than a member declares), and members with
absolute paths, ``..`` components or symbolic links are refused, as are members that unpack to over
:data:`BOMB_FLOOR` bytes from over :data:`BOMB_RATIO` times fewer. A member is unpacked a piece at a time
(:func:`read_member`), its first bytes first: one that is no image is refused before the rest is unpacked.
Counts a file declares (channels, z planes, time points, scenes, series, pages) are bounded by
``Limits.max_planes`` (:func:`check_declared`) before anything is made per plane. Every bad file becomes an
:class:`ImageRecord` with ``error`` set to a plain-language message; the other files go on.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from lsm_core.errors import LsmError
from lsm_core.imaging.reporters import ChannelSignal

# The pixel limit is LSM_MAX_IMAGE_PIXELS, checked from the header before decoding (_check_pixels);
# Pillow's own, lower, built-in limit would otherwise override a lab's raised setting.
Image.MAX_IMAGE_PIXELS = None

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".czi", ".nd2", ".lif", ".oib"}
ARCHIVE_SUFFIXES = {".zip"}
INPUT_SUFFIXES = IMAGE_SUFFIXES | ARCHIVE_SUFFIXES
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
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


# Files that operating systems add to folders and archives; never images, never worth an error.
_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


@dataclass
class ImageRecord:
    """One decoded image (one page of a file), or the error that stopped it.

    ``pixels`` is (H, W) float32 in [0, 1] (see the module docstring), or None when ``error`` is set.
    """

    source: str
    page: int = 0
    pixels: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    bit_depth: int | None = None
    sha256: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    pixel_size_um: float | None = None  # what the file states (None: nothing; the user's or the model's applies)
    pixel_size_origin: str | None = None
    channel: str | None = None
    lacks: str | None = None  # the channel or z plane asked for that this page does not have (its error too)
    others: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # the other channels' planes
    signal: list[ChannelSignal] = field(default_factory=list, repr=False)  # measured in its cells

    @property
    def ok(self) -> bool:
        return self.error is None


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


def _sniff(data: bytes) -> str:
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


ZARR_MARKERS = (".zattrs", ".zgroup", "zarr.json")


def file_sha256(path: Path) -> str:
    """The sha256 of a file on disk, read in blocks (never the whole file at once)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def holds_zarr(fileobj) -> bool:
    """Whether a ZIP archive (a file object) holds an OME-Zarr (a .zattrs, .zgroup or zarr.json in it): one
    microscope image read chunk by chunk, not a ZIP of image files to unpack."""
    try:
        with zipfile.ZipFile(fileobj) as archive:
            return any(PurePosixPath(m.filename).name in ZARR_MARKERS for m in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    finally:
        if hasattr(fileobj, "seek"):
            fileobj.seek(0)


def is_zarr_folder(path: Path) -> bool:
    """Whether a folder is an OME-Zarr (a marker file at its top)."""
    return path.is_dir() and any((path / m).is_file() for m in ZARR_MARKERS)


def zip_zarr_folder(folder: Path, limits: Limits) -> bytes:
    """An OME-Zarr folder as the bytes of an uncompressed ZIP of it (how the app stores and hands it to the
    workers, like an uploaded ZIP of one); LsmError when its files pass LSM_MAX_FILE_BYTES together."""
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    total = sum(f.stat().st_size for f in files)
    if total > limits.max_file_bytes:
        raise LsmError(
            f"the OME-Zarr holds {_megabytes(total)}; the limit for one file is {_megabytes(limits.max_file_bytes)} "
            "(LSM_MAX_FILE_BYTES)"
        )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for f in files:
            archive.write(f, f"{folder.name}/{f.relative_to(folder).as_posix()}")
    return buf.getvalue()


def _looks_like_text(data: bytes) -> bool:
    sample = data[:2048]
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _human_mp(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f} megapixels" if pixels >= 1e6 else f"{pixels:,} pixels"


def _check_pixels(width: int, height: int, limits: Limits) -> None:
    pixels = int(width) * int(height)
    if width <= 0 or height <= 0:
        raise LsmError(f"the image has no pixels ({width} x {height})")
    if pixels > limits.max_image_pixels:
        raise LsmError(
            f"the image is {width} x {height} pixels ({_human_mp(pixels)}); the limit is "
            f"{_human_mp(limits.max_image_pixels)} (LSM_MAX_IMAGE_PIXELS). Tile it or bin it first."
        )


def to_grey_float(arr: np.ndarray, bit_depth: int | None = None) -> np.ndarray:
    """Convert a decoded image to the one grey representation.

    Parameters
    ----------
    arr : ndarray, shape (H, W) or (H, W, C) with C in 1..4, any integer, bool or float dtype
    bit_depth : int, optional
        Significant bits of an integer image; defaults to the dtype's width.

    Returns
    -------
    ndarray, shape (H, W), float32, values in [0, 1]

    Raises
    ------
    LsmError
        For NaN or infinite values, or an unsupported number of channels.
    """
    a = np.asarray(arr)
    if a.ndim == 3:
        channels = a.shape[2]
        if channels in (1, 2):  # grey or grey + alpha
            a = a[..., 0]
        elif channels in (3, 4):  # RGB or RGBA: luminance, alpha dropped
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a[..., :3]).all():
                raise LsmError(_nan_message(a[..., :3]))
            if np.issubdtype(a.dtype, np.integer) and np.iinfo(a.dtype).min == 0:
                return _luminance(a, bit_depth)
            grey = np.empty(a.shape[:2], np.float32)
            for r in range(0, a.shape[0], _ROWS):  # a few rows at a time: no float copy of every channel
                grey[r : r + _ROWS] = a[r : r + _ROWS, :, :3].astype(np.float32) @ LUMA
            if np.issubdtype(a.dtype, np.integer):
                grey = np.rint(grey).astype(a.dtype)
            a = grey
        else:
            raise LsmError(f"the image has {channels} channels; expected grey, RGB or RGBA")
    elif a.ndim != 2:
        raise LsmError(f"the image has {a.ndim} dimensions; expected a 2-D picture")

    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if info.min < 0:  # signed: shift into the unsigned range of the same width
            out = (a.astype(np.float64) - info.min) / (float(info.max) - info.min)
            return out.astype(np.float32)
        bits = bit_depth if bit_depth and bit_depth <= info.bits else info.bits
        top = float(2**bits - 1)
        return np.clip(a.astype(np.float32) / top, 0.0, 1.0)
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32, copy=False)
        if not np.isfinite(a).all():
            raise LsmError(_nan_message(a))
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.ascontiguousarray(a)
        if hi == lo:
            return np.zeros_like(a)
        return ((a - lo) / (hi - lo)).astype(np.float32)
    raise LsmError(f"unsupported pixel type {a.dtype}")


_ROWS = 256  # rows converted at a time from colour to grey


def _luminance(a: np.ndarray, bit_depth: int | None) -> np.ndarray:
    """Unsigned integer RGB(A) (H, W, 3|4) to grey float32 in [0, 1], a few rows at a time: the same values as
    rounding the luminance to the integer type and scaling it, with no other full-size copy."""
    info = np.iinfo(a.dtype)
    bits = bit_depth if bit_depth and bit_depth <= info.bits else info.bits
    top = np.float32(2**bits - 1)
    grey = np.empty(a.shape[:2], np.float32)
    for r in range(0, a.shape[0], _ROWS):
        block = a[r : r + _ROWS, :, :3].astype(np.float32) @ LUMA
        np.rint(block, out=block)
        np.clip(block / top, 0.0, 1.0, out=grey[r : r + _ROWS])
    return grey


def _nan_message(a: np.ndarray) -> str:
    nan = int(np.isnan(a).sum())
    inf = int(np.isinf(a).sum())
    parts = []
    if nan:
        parts.append(f"{nan:,} NaN (not-a-number)")
    if inf:
        parts.append(f"{inf:,} infinite")
    return f"the image holds {' and '.join(parts)} pixel values; export it again without masked pixels"


def _damaged(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):  # Pillow names its buffer object here, which says nothing to people
        return "the file is damaged or incomplete and could not be decoded (its contents are not a readable image)"
    text = str(exc).strip() or type(exc).__name__
    return f"the file is damaged or incomplete and could not be decoded ({text})"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


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
        _check_pixels(self.width, self.height, limits)
        if self.decoded_bytes > limits.max_image_bytes:
            raise LsmError(
                f"the image would take {_megabytes(self.decoded_bytes)} of memory to decode ({self.width} x "
                f"{self.height} pixels, {self.samples} sample{'s' if self.samples != 1 else ''} of "
                f"{self.itemsize} byte{'s' if self.itemsize != 1 else ''} each); the limit is "
                f"{_megabytes(limits.max_image_bytes)} (LSM_MAX_IMAGE_BYTES). Tile it, bin it, or save the "
                "channel that matters alone."
            )


@dataclass(frozen=True)
class ReadOptions:
    """What to read from a file of several channels or planes: the channel (a name, case-insensitive, or an
    index counted from 0; None: the transmitted-light channel found by name) and the z plane (counted from 0;
    None: the best-focused, see :func:`lsm_core.imaging.formats.best_focus`)."""

    channel: str | None = None
    z: int | None = None


class ImageReader:
    """One image file's pages: their headers at once (:attr:`pages`), their pixels one page at a time."""

    format = ""
    pages: list[PageInfo]

    def error(self, index: int) -> str | None:
        """Why page ``index`` cannot be read, when its headers already say so."""
        return None

    def lacks(self, index: int, options: ReadOptions | None) -> str | None:
        """What of ``options`` page ``index`` does not have (a channel or z plane asked for), from its headers;
        None when it has all of it. A file of one plane has z plane 0 only, and its one channel."""
        if options is not None and options.z not in (None, 0):
            return f"z plane {options.z} was asked for; this image has 1 (counted from 0)"
        return None

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """The raw samples of page ``index`` ((H, W) or (H, W, S)) and their significant bits."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_PIL_MODES = {  # mode -> (samples, bytes per sample) as decoded (palette and bilevel images are converted)
    "1": (1, 1),
    "L": (1, 1),
    "P": (4, 1),
    "LA": (2, 1),
    "PA": (4, 1),
    "RGB": (3, 1),
    "RGBA": (4, 1),
    "RGBX": (4, 1),
    "CMYK": (3, 1),
    "YCbCr": (3, 1),
    "LAB": (3, 1),
    "HSV": (3, 1),
    "I": (1, 4),
    "F": (1, 4),
    "I;16": (1, 2),
    "I;16L": (1, 2),
    "I;16B": (1, 2),
    "I;16N": (1, 2),
}


class PilReader(ImageReader):
    """PNG and JPEG through Pillow: one page; the camera's orientation (EXIF) is applied."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        try:
            with Image.open(io.BytesIO(data)) as im:
                self.format = (im.format or "").lower()
                samples, itemsize = _PIL_MODES.get(im.mode, (4, 4))
                bits = 16 if im.mode.startswith("I;16") else 8 * itemsize
                self.pages = [PageInfo(0, im.width, im.height, samples, itemsize, bits)]
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise LsmError(_damaged(exc)) from None

    def read(self, index: int) -> tuple[np.ndarray, int]:
        try:
            with Image.open(io.BytesIO(self._data)) as opened:
                im: Image.Image = opened  # exif_transpose and convert return plain Images
                if im.format == "JPEG" or "exif" in im.info:
                    im = ImageOps.exif_transpose(im)  # applies the camera's orientation
                mode = im.mode
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("L" if mode == "1" else "RGB")
                arr = np.asarray(im)
        except Image.DecompressionBombError as exc:
            raise LsmError(f"the image is too large to decode safely ({exc})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise LsmError(_damaged(exc)) from None
        bits = 16 if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) <= 65535) else None
        if mode == "I" and bits == 16:
            arr = arr.astype(np.uint16)
        if arr.dtype == np.uint8:
            bits = 8
        return arr, bits or arr.dtype.itemsize * 8


class TiffReader(ImageReader):
    """TIFF through tifffile: every page's header at once, the pixels of one page when asked for."""

    format = "tiff"

    def __init__(self, data: bytes | Path, limits: Limits) -> None:
        try:
            self._tif = tifffile.TiffFile(data if isinstance(data, Path) else io.BytesIO(data))
            n_pages = len(self._tif.pages)
        except Exception as exc:  # tifffile raises many types for broken headers
            raise LsmError(_damaged(exc)) from None
        try:
            if n_pages > limits.max_archive_members:
                raise LsmError(f"the TIFF has {n_pages:,} pages; the limit is {limits.max_archive_members:,}")
            check_declared(limits, "the TIFF", pages=n_pages)
        except LsmError:
            self._tif.close()
            raise
        if n_pages == 0:
            self._tif.close()
            raise LsmError("the TIFF holds no readable image (no page in it could be read)")
        self.pages = []
        self._errors: dict[int, str] = {}
        for index in range(n_pages):
            try:
                self.pages.append(self._info(index))
            except LsmError as exc:
                self._errors[index] = str(exc)
                self.pages.append(PageInfo(index, 0, 0))
            except Exception as exc:
                self._errors[index] = _damaged(exc)
                self.pages.append(PageInfo(index, 0, 0))

    def _info(self, index: int) -> PageInfo:
        page = self._tif.pages[index]
        shape = tuple(int(v) for v in page.shape)
        axes = page.axes
        samples = 1
        if len(shape) == 3 and "S" in axes:
            samples = shape[axes.index("S")]
            shape = tuple(v for i, v in enumerate(shape) if axes[i] != "S")
        if len(shape) != 2:
            raise LsmError(f"page {index + 1} is a {len(shape)}-D stack {tuple(page.shape)}; save each plane as a page")
        # LSM and ScanImage files give TiffFrames, which carry no tags of their own: read their keyframe's
        keyframe = page.keyframe
        assert keyframe is not None  # page.shape above already required it
        if page.dtype is None:
            raise LsmError(f"page {index + 1} stores its samples in a format this app cannot read")
        from lsm_core.imaging.formats import PRINT_RESOLUTION_UM, tiff_resolution_um

        size = tiff_resolution_um(keyframe)
        square = size is not None and abs(size[0] - size[1]) <= 0.01 * size[1] and size[1] < PRINT_RESOLUTION_UM
        return PageInfo(
            index,
            shape[1],
            shape[0],
            samples,
            int(page.dtype.itemsize),
            int(keyframe.bitspersample),
            pixel_size_um=size[1] if size is not None and square else None,
            pixel_size_origin="TIFF resolution tags" if square else None,
        )

    def error(self, index: int) -> str | None:
        return self._errors.get(index)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        if index in self._errors:
            raise LsmError(self._errors[index])
        from lsm_core.imaging.formats import check_segments

        try:
            page = self._tif.pages[index]
            check_segments(page)  # a tile that is a picture larger than the tile is refused before decoding
            arr = page.asarray()
        except LsmError:
            raise
        except Exception as exc:
            raise LsmError(_damaged(exc)) from None
        if "S" in page.axes and page.axes.index("S") == 0 and arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)  # planar RGB -> channels last
        return arr, self.pages[index].bits

    def close(self) -> None:
        self._tif.close()


class FormatReader(ImageReader):
    """A microscope file of scenes, time points, channels and z planes (OME-TIFF, ImageJ hyperstacks, CZI,
    ND2, LIF, OIB/OIF) through :mod:`lsm_core.imaging.formats`: one page per (scene, time point), named
    ``file[s=2,t=3]``; of each, one plane: the chosen channel (``options.channel``, else the transmitted-light
    channel found by name) at the chosen z (``options.z``, else the best-focused plane). A page whose file
    names no transmitted-light channel, or whose pixels are not square, is an error that says what to do.

    The vendor readers read files, not bytes: given a path (a stored blob, a file on disk) the file is opened
    where it lies, and only the planes asked for are read from it; given bytes, they are written to a
    temporary file first, removed on close.
    """

    def __init__(self, name: str, data: bytes | Path, limits: Limits, options: ReadOptions | None = None) -> None:
        import tempfile

        from lsm_core.imaging import formats

        self.options = options or ReadOptions()
        self._tmp: Path | None = None
        if isinstance(data, Path):
            self._file = formats.open_microscope_file(data, name, limits)
        else:
            fd, tmp = tempfile.mkstemp(prefix="lsm-read-")
            self._tmp = Path(tmp)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                self._file = formats.open_microscope_file(self._tmp, name, limits)
            except BaseException:
                self._tmp.unlink(missing_ok=True)
                raise
        self.format = self._file.format
        self.pages, self._where, self._errors = [], [], {}
        self._lacks: dict[int, str] = {}  # pages without the channel or z plane asked for
        scenes = self._file.scenes
        for scene in scenes:
            channel, problem = self._channel(scene)
            lacks = problem if problem and self._asked_channel() else None
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
                index = len(self.pages)
                self.pages.append(
                    replace(
                        info,
                        index=index,
                        label=formats.image_label(name, scene.index, len(scenes), t, scene.sizes["T"]),
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

    def _asked_channel(self) -> bool:
        return self.options.channel is not None and str(self.options.channel).strip() != ""

    def lacks(self, index: int, options: ReadOptions | None = None) -> str | None:
        return self._lacks.get(index)

    def _channel(self, scene) -> tuple[int | None, str | None]:
        from lsm_core.imaging.formats import transmitted_channel

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

    def error(self, index: int) -> str | None:
        return self._errors.get(index)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        from lsm_core.imaging.formats import best_focus

        if index in self._errors:
            raise LsmError(self._errors[index])
        scene, t, channel = self._where[index]
        assert channel is not None  # a page without one has an error above
        depth = self._file.scenes[scene].sizes["Z"]
        z = self.options.z
        if z is None:
            z = best_focus(self._file.z_planes(scene, t, channel))[0] if depth > 1 else 0
            self.last_note = f"z plane {z + 1} of {depth} (best focus)" if depth > 1 else None
        else:
            if not 0 <= z < depth:
                raise LsmError(f"z plane {z} was asked for; this image has {depth} (counted from 0)")
            self.last_note = f"z plane {z + 1} of {depth} (chosen)" if depth > 1 else None
        self.last_z = z
        self.z_read: int | None = z if depth > 1 else None  # what the results record (None: no z stack)
        plane = self._file.plane(scene, t, channel, z)
        return plane, self.pages[index].bits

    def scene_channels(self, scene: int) -> list[str]:
        """The channel names of scene ``scene`` as the file states them (None or "" when unnamed)."""
        scenes = self._file.scenes
        return list(scenes[scene].channels) if 0 <= scene < len(scenes) else []

    def other_channel_names(self, index: int) -> list[str]:
        """The names :meth:`other_channels` gives page ``index``'s other channels (headers only)."""
        scene, _, channel = self._where[index]
        names: list[str] = []
        for c, name in enumerate(self._file.scenes[scene].channels):
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
        indices = [c for c in range(len(self._file.scenes[scene].channels)) if c != channel]
        each = info.width * info.height * (info.itemsize + 4)
        room = max(0, limits.max_image_bytes - info.decoded_bytes) // max(1, each)
        keep = min(len(indices), MAX_REPORTER_CHANNELS, room)
        z = getattr(self, "last_z", 0)
        out = {names[k]: np.asarray(self._file.plane(scene, t, indices[k], z), dtype=np.float32) for k in range(keep)}
        note = None
        if keep < len(indices):
            left = names[keep:]
            why = (
                f"at most {MAX_REPORTER_CHANNELS} are measured"
                if keep == MAX_REPORTER_CHANNELS
                else f"measuring them would pass the memory limit of {_megabytes(limits.max_image_bytes)} "
                "(LSM_MAX_IMAGE_BYTES)"
            )
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            note = f"reporter channel{'s' if len(left) > 1 else ''} {shown} not measured: {why}"
        return out, note

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)


def _structured_tiff(data: bytes | Path) -> bool:
    """Whether a TIFF is an OME-TIFF or an ImageJ hyperstack (axes, channels, calibration in its metadata),
    read by :class:`FormatReader`; a plain TIFF's pages are each an image (:class:`TiffReader`)."""
    try:
        with tifffile.TiffFile(data if isinstance(data, Path) else io.BytesIO(data)) as tif:
            return bool(tif.is_ome or tif.is_imagej or tif.is_lsm)
    except Exception:  # a damaged header: TiffReader says so
        return False


def open_image(
    name: str, data: bytes | Path, limits: Limits | None = None, options: ReadOptions | None = None
) -> ImageReader:
    """A reader for one image file's bytes, or the file at a path (its format told from its content); LsmError
    when it is not an image this app reads, or its header is damaged. Nothing is decoded yet.

    A path is opened where it lies for the formats read plane by plane (TIFF, OME-TIFF, vendor files, a
    zipped OME-Zarr): memory is one plane, whatever the file's size. Other formats are read into memory."""
    limits = limits or Limits()
    if isinstance(data, Path):
        return _open_path(name, data, limits, options)
    if len(data) == 0:
        raise LsmError("the file is empty (0 bytes)")
    kind = _sniff(data)
    if kind == "tiff":
        return FormatReader(name, data, limits, options) if _structured_tiff(data) else TiffReader(data, limits)
    if kind in ("png", "jpeg"):
        return PilReader(data)
    if kind == "zip":
        if holds_zarr(io.BytesIO(data)):
            return FormatReader(name, data, limits, options)
        raise LsmError("a ZIP inside a ZIP is not read; unpack the inner archive first")
    if _looks_like_text(data):
        raise LsmError(f"this is a text file, not an image ({SUPPORTED_TEXT} or ZIP expected)")
    if _vendor(data):
        return FormatReader(name, data, limits, options)
    raise LsmError(f"not a supported image format ({SUPPORTED_TEXT} or ZIP expected)")


SUPPORTED_TEXT = "PNG, JPEG, TIFF, OME-TIFF, CZI, ND2, LIF, OIB, OME-Zarr (zipped)"


def _open_path(name: str, path: Path, limits: Limits, options: ReadOptions | None) -> ImageReader:
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            kind = _sniff(head)
            zarr = kind == "zip" and holds_zarr(fh)
    except OSError as exc:
        raise LsmError(f"could not be read ({exc.strerror or exc})") from None
    if kind == "tiff":
        return FormatReader(name, path, limits, options) if _structured_tiff(path) else TiffReader(path, limits)
    if zarr or (kind == "unknown" and _vendor(head)):
        return FormatReader(name, path, limits, options)
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise LsmError(
            f"the file is {_megabytes(size)}; the limit for one file is {_megabytes(limits.max_file_bytes)} "
            "(LSM_MAX_FILE_BYTES)"
        )
    return open_image(name, path.read_bytes(), limits, options)


def _vendor(data: bytes) -> bool:
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


def _record(raw: RawFile, info: PageInfo, digest: str) -> ImageRecord:
    return ImageRecord(
        info.label or raw.source,
        page=info.index,
        sha256=digest,
        width=info.width or None,
        height=info.height or None,
        bit_depth=info.bits,
        pixel_size_um=info.pixel_size_um,
        pixel_size_origin=info.pixel_size_origin,
        channel=info.channel,
    )


def _page_error(info: PageInfo, many: bool, exc: LsmError) -> str:
    return str(exc) if info.label or not many else f"page {info.index + 1}: {exc}"


def inspect(raw: RawFile, limits: Limits | None = None, options: ReadOptions | None = None) -> list[ImageRecord]:
    """One record per page of a file from its headers alone: size and bit depth, or why it cannot be read
    (format, damaged header, too large). Pixels are not decoded (``pixels`` stays None): cheap enough for
    the web server, which leaves decoding to the workers."""
    limits = limits or Limits()
    if raw.error is not None or raw.data is None:
        return [ImageRecord(raw.source, error=raw.error or "could not be read")]
    digest = hashlib.sha256(raw.data).hexdigest()
    try:
        reader = open_image(raw.source, raw.data, limits, options)
    except LsmError as exc:
        return [ImageRecord(raw.source, sha256=digest, error=str(exc))]
    records = []
    with reader:
        many = len(reader.pages) > 1
        for info in reader.pages:
            record = _record(raw, info, digest)
            try:
                record.lacks = reader.lacks(info.index, options)
                problem = reader.error(info.index) or record.lacks
                if problem:
                    raise LsmError(problem)
                info.check(limits)
            except LsmError as exc:
                record.error = _page_error(info, many, exc)
                record.width = record.height = None
            records.append(record)
    return records


def _decoded(reader: ImageReader, info: PageInfo, limits: Limits) -> np.ndarray:
    info.check(limits)
    arr, bits = reader.read(info.index)
    return to_grey_float(arr, bits)


def decode_raw(raw: RawFile, limits: Limits | None = None, options: ReadOptions | None = None) -> Iterator[ImageRecord]:
    """The records of one raw file, one page at a time (its error, or each page decoded): a multi-page file
    holds one decoded page in memory at a time, as long as the caller lets go of each. Never raises for bad
    content."""
    limits = limits or Limits()
    if raw.error is None and raw.data is None and raw.path is not None:
        source: bytes | Path = raw.path
        try:
            digest = file_sha256(raw.path)
        except OSError as exc:
            yield ImageRecord(raw.source, error=f"could not be read ({exc.strerror or exc})")
            return
    elif raw.error is not None or raw.data is None:
        yield ImageRecord(raw.source, error=raw.error or "could not be read")
        return
    elif _sniff(raw.data) == "zip" and not holds_zarr(io.BytesIO(raw.data)):
        for member in iter_zip_members(raw.source, io.BytesIO(raw.data), limits):
            yield from decode_raw(member, limits, options)
        return
    else:
        source, digest = raw.data, hashlib.sha256(raw.data).hexdigest()
    try:
        reader = open_image(raw.source, source, limits, options)
    except LsmError as exc:
        yield ImageRecord(raw.source, sha256=digest, error=str(exc))
        return
    with reader:
        many = len(reader.pages) > 1
        for info in reader.pages:
            record = _record(raw, info, digest)
            record.width = record.height = None
            try:
                record.pixels = _decoded(reader, info, limits)
                record.height, record.width = record.pixels.shape
                if isinstance(reader, FormatReader):
                    record.others, left_out = reader.other_channels(info.index, limits)
                    if left_out:
                        record.notes.append(left_out)
                note = getattr(reader, "last_note", None)
                if note:
                    record.notes.append(note)
            except LsmError as exc:
                record.error = _page_error(info, many, exc)
            yield record


def decode_bytes(
    name: str, data: bytes, limits: Limits | None = None, options: ReadOptions | None = None
) -> list[ImageRecord]:
    """Every record of one file's bytes at once (small files and tests; pipelines use :func:`decode_raw`)."""
    return list(decode_raw(RawFile(name, data), limits, options))


def decode_page(
    name: str, data: bytes | Path, page: int, limits: Limits | None = None, options: ReadOptions | None = None
) -> np.ndarray:
    """The pixels of page ``page`` (counted from 1) of one file's bytes (or the file at a path, see
    :func:`open_image`), decoding that page only; LsmError if it cannot be read."""
    limits = limits or Limits()
    with open_image(name, data, limits, options) as reader:
        if not 1 <= page <= len(reader.pages):
            raise LsmError(f"{name}: page {page} is missing")
        problem = reader.error(page - 1)
        if problem:
            raise LsmError(problem)
        return _decoded(reader, reader.pages[page - 1], limits)


def decode_page_channels(
    name: str, data: bytes | Path, page: int, limits: Limits | None = None, options: ReadOptions | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], str | None, int | None]:
    """:func:`decode_page`, with the page's other channels (a multi-channel microscope file: the reporter
    channels, at the same z plane, in the file's grey values; a file of one channel gives none), a note
    naming those left out (see :meth:`FormatReader.other_channels`) and the z plane read (from 0; None: the
    image is no z stack)."""
    limits = limits or Limits()
    with open_image(name, data, limits, options) as reader:
        if not 1 <= page <= len(reader.pages):
            raise LsmError(f"{name}: page {page} is missing")
        problem = reader.error(page - 1)
        if problem:
            raise LsmError(problem)
        pixels = _decoded(reader, reader.pages[page - 1], limits)
        if isinstance(reader, FormatReader):
            others, note = reader.other_channels(page - 1, limits)
            return pixels, others, note, getattr(reader, "z_read", None)
        return pixels, {}, None, None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_name(name: str, limit: int = 1000) -> str:
    """A file name as it is stored and shown: control characters (which break spreadsheets and terminals)
    replaced by "?", cut to ``limit`` characters."""
    cleaned = _CONTROL.sub("?", name)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _unsafe_member(name: str) -> str | None:
    normal = name.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        return "has an absolute path; refused"
    if ".." in PurePosixPath(normal).parts:
        return "has '..' in its path (it points outside the archive); refused"
    return None


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    base = parts[-1] if parts else name
    return "__MACOSX" in parts or base.startswith("._") or base.lower() in _JUNK_NAMES


@dataclass
class RawFile:
    """One file's bytes as found in a folder, an upload or an archive, or the error that stopped reading it;
    or, read lazily (:func:`iter_path` with ``lazy``), the path of a file on disk to be opened where it lies."""

    source: str
    data: bytes | None = None
    error: str | None = None
    path: Path | None = None


def iter_zip_members(name: str, fileobj, limits: Limits | None = None, only_images: bool = True) -> Iterator[RawFile]:
    """Yield the bytes of every image member of a ZIP archive, bounded by ``limits``.

    Members are read in memory, never written to disk. Members whose names do not end in an image suffix
    are skipped when ``only_images`` (as in a folder); operating-system junk (``__MACOSX``, ``.DS_Store``)
    always is. Sources are ``<name>/<member path>``. An archive that gives nothing at all gives one error (a
    file never vanishes without a word).
    """
    skipped: list[str] = []
    given = 0
    for raw in _zip_members(name, fileobj, limits or Limits(), only_images, skipped):
        given += 1
        yield raw
    if not given:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5:,} more" if len(skipped) > 5 else "")
        yield RawFile(
            name,
            error="the ZIP holds no image files (PNG, JPEG, TIFF)" + (f"; it holds {shown}" if shown else ""),
        )


# ZIP members are unpacked a piece at a time into a buffer of their declared size, never more (zipfile stops at
# the declared size, and a stream longer than declared fails its CRC there): memory is the member's declared size.
MEMBER_PIECE = 1 << 20
# A member that unpacks to more than BOMB_FLOOR bytes from over BOMB_RATIO times fewer in the archive is a bomb, not
# an image (a microscope image packs two to five times at best; a blank one up to a hundred): refused from the
# archive's directory alone. A 1.1 MB ZIP of three 386 MB members of zeros took 0.94 GB when this applied only
# above LSM_MAX_IMAGE_BYTES.
BOMB_RATIO = 100
BOMB_FLOOR = 16 << 20


def read_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, cap: int | None = None, start: int = 0, length: int | None = None
) -> bytes:
    """The unpacked bytes of one archive member (``length`` of them from ``start``; default: all), read
    ``MEMBER_PIECE`` at a time into one growing buffer (no second copy of the whole): never more than its
    declared size, and LsmError before anything is unpacked when what would be read is over ``cap``. zipfile's
    own errors (a CRC mismatch: a stream longer or other than declared; encryption) pass through."""
    size = member.file_size
    want = max(0, min(size - start, size if length is None else length))
    if cap is not None and want > cap:
        raise LsmError(
            f"the archive member {clean_name(member.filename)!r} declares {want:,} bytes; at most {cap:,} are read"
        )
    out = io.BytesIO()
    with archive.open(member) as fh:
        skip = start
        while skip > 0:  # unpacked and dropped, a piece at a time
            piece = fh.read(min(MEMBER_PIECE, skip))
            if not piece:
                break
            skip -= len(piece)
        while out.tell() < want:
            piece = fh.read(min(MEMBER_PIECE, want - out.tell()))
            if not piece:
                break
            out.write(piece)
    if out.tell() < want:
        raise zipfile.BadZipFile(f"the member ends after {start + out.tell():,} of its {size:,} bytes")
    return out.getvalue()  # the buffer itself, not a copy (io.BytesIO hands it over when nothing else holds it)


def _archive_bytes(fileobj) -> int | None:
    try:
        where = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(where)
        return int(end)
    except (AttributeError, OSError, ValueError):
        return None


def _member_problem(member: zipfile.ZipInfo, limits: Limits) -> str | None:
    """Why a member is refused from the archive's directory alone, before anything of it is unpacked."""
    problem = _unsafe_member(member.filename)
    if problem is None and member.file_size > limits.max_file_bytes:
        problem = (
            f"unpacks to {_megabytes(member.file_size)}; the limit for one file is "
            f"{_megabytes(limits.max_file_bytes)} (LSM_MAX_FILE_BYTES)"
        )
    packed = max(1, member.compress_size)
    if problem is None and member.file_size > BOMB_FLOOR and member.file_size > BOMB_RATIO * packed:
        problem = (
            f"unpacks to {_megabytes(member.file_size)} from {member.compress_size:,} bytes in the archive (over "
            f"{BOMB_RATIO} times smaller packed than unpacked: no microscope image compresses so well); refused"
        )
    if problem is None and stat.S_ISLNK(member.external_attr >> 16):
        problem = "is a symbolic link; refused"
    return problem


def _zip_members(name: str, fileobj, limits: Limits, only_images: bool, skipped: list[str]) -> Iterator[RawFile]:
    try:
        archive = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield RawFile(name, error=f"the ZIP archive is damaged ({exc})")
        return
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not _is_junk(m.filename)]
        if len(members) > limits.max_archive_members:
            yield RawFile(
                name,
                error=f"the ZIP holds {len(members):,} files; the limit is {limits.max_archive_members:,} "
                "(LSM_MAX_ARCHIVE_MEMBERS). Split it into several archives.",
            )
            return
        declared = sum(m.file_size for m in members)
        if declared > limits.max_archive_bytes:
            yield RawFile(
                name,
                error=f"the ZIP would unpack to {declared / 1e9:,.2f} GB; the limit is "
                f"{limits.max_archive_bytes / 1e9:,.2f} GB (LSM_MAX_ARCHIVE_BYTES). Split it.",
            )
            return
        size = _archive_bytes(fileobj)
        packed = sum(m.compress_size for m in archive.infolist())
        if size is not None and packed > size:  # members that overlap, or sizes that lie: the ratio would too
            yield RawFile(
                name,
                error=f"the ZIP archive is damaged (its members claim {packed:,} packed bytes in an archive of "
                f"{size:,})",
            )
            return
        for member in members:
            source = f"{name}/{clean_name(member.filename)}"
            problem = _member_problem(member, limits)
            if problem:
                yield RawFile(source, error=f"archive member {clean_name(member.filename)!r} {problem}")
                continue
            suffix = PurePosixPath(member.filename).suffix.lower()
            if only_images and suffix not in IMAGE_SUFFIXES | ARCHIVE_SUFFIXES:
                skipped.append(clean_name(PurePosixPath(member.filename).name, 60))
                continue
            try:
                # its first bytes tell what it is: a member that is no image is refused before the rest is unpacked
                head = read_member(archive, member, length=4096)
                problem = _not_an_image(head)
                data = read_member(archive, member) if problem is None and len(head) < member.file_size else head
            except RuntimeError as exc:  # encrypted
                yield RawFile(source, error=f"could not be read from the archive ({exc})")
                continue
            except Exception as exc:  # BadZipFile, CRC mismatch, zlib/lzma/bz2 errors: only this member
                yield RawFile(source, error=f"the archive member is damaged ({type(exc).__name__}: {exc})")
                continue
            if problem:
                yield RawFile(source, error=problem)
                continue
            yield RawFile(source, data)


def _not_an_image(head: bytes) -> str | None:
    """Why bytes that start with ``head`` are no image read here (text, an unknown format, a ZIP in a ZIP);
    None when they may be one."""
    if not head:
        return "the file is empty (0 bytes)"
    kind = _sniff(head)
    if kind == "zip":
        return "a ZIP inside a ZIP is not read; unpack the inner archive first"
    if kind != "unknown" or _vendor(head):
        return None
    if _looks_like_text(head):
        return f"this is a text file, not an image ({SUPPORTED_TEXT} or ZIP expected)"
    return f"not a supported image format ({SUPPORTED_TEXT} or ZIP expected)"


def iter_upload(name: str, data: bytes, limits: Limits | None = None) -> Iterator[RawFile]:
    """The raw files of one uploaded file: itself (an image, or a ZIP of one OME-Zarr), or its members when it
    is a ZIP archive of images."""
    limits = limits or Limits()
    if _sniff(data) == "zip" and not holds_zarr(io.BytesIO(data)):
        yield from iter_zip_members(name, io.BytesIO(data), limits)
    else:
        yield RawFile(name, data)


def _iter_folder(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        zarrs = [d for d in dirs if is_zarr_folder(Path(root) / d)]  # one image each: not searched inside
        dirs[:] = [d for d in dirs if d not in zarrs]
        yield from (Path(root) / d for d in zarrs)
        for fname in sorted(files):
            if fname.startswith(".") or fname.lower() in _JUNK_NAMES:
                continue
            if Path(fname).suffix.lower() in INPUT_SUFFIXES:
                yield Path(root) / fname


def iter_path(
    path: str | Path, limits: Limits | None = None, display: str | None = None, lazy: bool = False
) -> Iterator[RawFile]:
    """The raw files of one file on disk (itself, or its members when it is a ZIP archive of images); an
    OME-Zarr, as a folder or a ZIP of one, is one file. ``lazy``: a file that is not a ZIP of images is given
    by its path, not its bytes (:func:`decode_raw` then opens it where it lies: a TIFF or vendor file costs one
    plane of memory, not its size, and LSM_MAX_FILE_BYTES bounds only the formats read into memory)."""
    limits = limits or Limits()
    path = Path(path)
    name = display or str(path)
    if path.is_dir():
        try:
            yield RawFile(name, zip_zarr_folder(path, limits))
        except LsmError as exc:
            yield RawFile(name, error=str(exc))
        except OSError as exc:
            yield RawFile(name, error=f"could not be read ({exc.strerror or exc})")
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if _sniff(head) == "zip" and not holds_zarr(fh):
                fh.seek(0)
                yield from iter_zip_members(name, fh, limits)
                return
            if lazy:
                yield RawFile(name, path=path)
                return
            size = os.fstat(fh.fileno()).st_size
            if size > limits.max_file_bytes:
                yield RawFile(
                    name,
                    error=f"the file is {_megabytes(size)}; the limit for one file is "
                    f"{_megabytes(limits.max_file_bytes)} (LSM_MAX_FILE_BYTES)",
                )
                return
            fh.seek(0)
            data = fh.read(size)  # read() after a seek would join its buffer to the rest: two copies at once
    except OSError as exc:
        yield RawFile(name, error=f"could not be read ({exc.strerror or exc})")
        return
    yield RawFile(name, data)


def iter_files(inputs: Iterable[str | Path], limits: Limits | None = None, lazy: bool = False) -> Iterator[RawFile]:
    """Raw files from files, folders (searched recursively for image and ZIP files) and ZIP archives
    (``lazy``: files by their paths, see :func:`iter_path`)."""
    limits = limits or Limits()
    for item in inputs:
        path = Path(item)
        if is_zarr_folder(path):
            yield from iter_path(path, limits, display=str(item))
        elif path.is_dir():
            for found in _iter_folder(path):
                yield from iter_path(found, limits, lazy=lazy)
        elif path.exists():
            yield from iter_path(path, limits, display=str(item), lazy=lazy)
        else:
            yield RawFile(str(item), error="no such file or folder")


def read_path(
    path: str | Path, limits: Limits | None = None, display: str | None = None, options: ReadOptions | None = None
) -> Iterator[ImageRecord]:
    """Records for one file (image or ZIP), reported under ``display`` (default: the path as given)."""
    limits = limits or Limits()
    for raw in iter_path(path, limits, display, lazy=True):
        yield from decode_raw(raw, limits, options)


def reporter_names(
    inputs: Iterable[str | Path], limits: Limits | None = None, options: ReadOptions | None = None
) -> list[str]:
    """The other (reporter) channels of the inputs' multi-channel files, from their headers, in the order first
    met: the columns a table of their cells needs before the first cell is written."""
    limits = limits or Limits()
    names: dict[str, None] = {}
    for raw in iter_files(inputs, limits, lazy=True):
        for member in [raw] if raw.error or raw.data is None else iter_upload(raw.source, raw.data, limits):
            source = member.path if member.data is None else member.data
            if member.error or source is None or (member.data is not None and _sniff(member.data) in ("png", "jpeg")):
                continue
            try:
                with open_image(member.source, source, limits, options) as reader:
                    if isinstance(reader, FormatReader):
                        for info in reader.pages:
                            if reader.error(info.index) is None:
                                names.update(dict.fromkeys(reader.other_channel_names(info.index)))
            except LsmError:
                continue
    return list(names)


SHOWN_CHANNELS = 40  # channel names a page lists at most (a file may declare up to LSM_MAX_PLANES)


@dataclass(frozen=True)
class FileChannels:
    """The channels of a multi-channel file's first scene (headers only): the names of the first
    :data:`SHOWN_CHANNELS` ("" when unnamed), how many there are in all (``count``), and the one classified when
    nobody chooses (the transmitted-light channel found by name, ``automatic_name`` its name, wherever it is
    among them; None: none is). ``repeated``: the names that more than one channel has (not a unique choice)."""

    file: str
    names: list[str]
    automatic: int | None
    count: int = 0
    automatic_name: str = ""
    repeated: frozenset[str] = frozenset()

    @property
    def more(self) -> int:
        """How many channels are not listed in :attr:`names`."""
        return max(0, self.count - len(self.names))


def file_channels(raw: RawFile, limits: Limits | None = None) -> FileChannels | None:
    """The channels of an upload's first image file (a ZIP's first member), read from the headers only; None
    when it has one channel (or cannot be read: the upload says why later). A file declaring more planes than
    LSM_MAX_PLANES is refused by its reader before a list is made of them; of the rest, at most
    :data:`SHOWN_CHANNELS` names are kept."""
    from lsm_core.imaging.formats import transmitted_channel

    limits = limits or Limits()
    if raw.error or not raw.data:
        return None
    for member in iter_upload(raw.source, raw.data, limits):
        if member.error or not member.data or _sniff(member.data) in ("png", "jpeg"):
            return None
        try:
            with open_image(member.source, member.data, limits) as reader:
                if not isinstance(reader, FormatReader):
                    return None
                names = [n or "" for n in reader.scene_channels(0)]
        except LsmError:
            return None
        if len(names) < 2:
            return None
        automatic = transmitted_channel(names)
        seen: dict[str, int] = {}
        for n in names:
            seen[n] = seen.get(n, 0) + 1
        return FileChannels(
            member.source,
            names[:SHOWN_CHANNELS],
            automatic,
            len(names),
            names[automatic] if automatic is not None else "",
            frozenset(n for n, k in seen.items() if k > 1 and n),
        )
    return None


def read_inputs(
    inputs: Iterable[str | Path], limits: Limits | None = None, options: ReadOptions | None = None
) -> Iterator[ImageRecord]:
    """Records for files, folders (searched recursively for image and ZIP files) and ZIP archives."""
    limits = limits or Limits()
    for raw in iter_files(inputs, limits, lazy=True):
        yield from decode_raw(raw, limits, options)
