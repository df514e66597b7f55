"""Readers of every image format read here, one module per format family, one reader hierarchy
(:class:`base.Reader`); the format is told from the file's content (magic bytes, then structure), never from
its name alone. Each format is read by the field's maintained single-format reader:

=============  ==================  ================================================================
format         module, library     one plane at a time?
=============  ==================  ================================================================
OME-TIFF,      tiff: tifffile      yes: one TIFF page (IFD); a contiguous uncompressed series is read
ImageJ TIFF,                       at the plane's byte offset. A series whose pages hold more than one
TIFF, LSM                          plane (a rare volumetric page) is read whole, bounded (see base).
CZI            czi: czifile        yes: only the subblocks of that plane (tiles of a mosaic are pasted
                                   into the plane). czifile parses the file; the subblocks are decoded
                                   with imagecodecs.
ND2            nd2: nd2            one frame: a frame holds every channel of one (position, time, z),
                                   so a plane costs C planes of memory, bounded.
LIF            lif: readlif        yes: one plane read at its offset.
OIB, OIF       oif: oiffile        yes: one TIFF file of the compound document / folder.
OME-Zarr       zarr: zarr          the chunks that cross the plane, read and unpacked here (zarr
               (metadata)          would unpack a chunk whole, whatever it holds): memory is the
                                   plane plus one chunk, bounded.
PNG, JPEG      picture: Pillow     the whole picture (it is one plane).
=============  ==================  ================================================================

Two openers: :func:`open_microscope_file` (a file or an OME-Zarr folder on disk, every format above) and
:func:`open_image` (the bytes of an upload, or a path, as :mod:`lsm_core.imaging.images` reads them: a plain
TIFF page by page, a structured TIFF, vendor file or zipped OME-Zarr as a microscope stack). ZIP archives of
images and folders are :mod:`.archives`.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import tifffile

from lsm_core.errors import LsmError
from lsm_core.imaging.readers.archives import holds_zarr
from lsm_core.imaging.readers.base import (
    SUPPORTED_TEXT,
    Limits,
    Reader,
    ReadOptions,
    check_file_size,
    failed,
    head_of,
    looks_like_text,
    looks_vendor,
    sniff,
)
from lsm_core.imaging.readers.czi import CziReader
from lsm_core.imaging.readers.lif import LifReader
from lsm_core.imaging.readers.nd2 import Nd2Reader
from lsm_core.imaging.readers.oif import is_oib, open_oib, open_oif
from lsm_core.imaging.readers.picture import PictureReader
from lsm_core.imaging.readers.tiff import TiffPagesReader, TiffReader
from lsm_core.imaging.readers.zarr import ZarrReader, zip_zarr_root

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


_SUPPORTED_TEXT = (
    "OME-TIFF, ImageJ TIFF, TIFF, Zeiss CZI and LSM, Nikon ND2, Leica LIF, Olympus OIB and OIF, OME-Zarr "
    "(a folder, or a ZIP of one), PNG and JPEG"
)


_OPENERS: dict[str, Any] = {
    "TIFF": TiffReader,
    "CZI": CziReader,
    "ND2": Nd2Reader,
    "LIF": LifReader,
    "OIB": open_oib,
    "OIF": open_oif,
    "OME-Zarr": ZarrReader,
    "PNG": PictureReader.from_path,
    "JPEG": PictureReader.from_path,
}


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
    head = head_of(path)
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
        if is_oib(path, limits):
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
        root = zip_zarr_root(path, limits)
        if root is not None:
            return "OME-Zarr", root
        raise LsmError(
            "this ZIP archive holds no OME-Zarr (no .zattrs, .zgroup or zarr.json in it); a ZIP of ordinary "
            "images is unpacked by the image upload, not read as one microscope file"
        )
    raise LsmError(f"not a microscope image format this app reads; the formats read here are {_SUPPORTED_TEXT}")


def open_microscope_file(
    path: str | Path, name: str | None = None, limits: Limits | None = None, options: ReadOptions | None = None
) -> Reader:
    """Open one microscope file (or an OME-Zarr folder, or a ZIP of one): headers only, nothing decoded.

    ``name`` is how the file is shown (default: its file name); ``limits`` bound what one plane may cost;
    ``options`` choose the channel and z plane of its pages (:meth:`Reader.choose`). The format is told from
    the content. LsmError for an unknown format, or a file its reader fails on.
    """
    path = Path(path)
    limits = limits or Limits()
    fmt, detail = _detect(path, limits)
    shown = name or path.name
    opener = _OPENERS[fmt]
    try:
        reader: Reader = opener(path, shown, limits, detail)
    except LsmError:
        raise
    except Exception as exc:  # every reader raises its own types for damaged headers
        fmt_named = "OME-TIFF" if fmt == "TIFF" and _looks_ome(path) else fmt
        raise LsmError(failed(fmt_named, exc, "", path)) from None
    return reader.choose(options)


def _looks_ome(path: Path) -> bool:
    try:
        return b"<OME" in head_of(path, 1 << 16)
    except OSError:
        return False


def _structured_tiff(data: bytes | Path) -> bool:
    """Whether a TIFF is an OME-TIFF or an ImageJ hyperstack (axes, channels, calibration in its metadata),
    read by :class:`TiffReader`; a plain TIFF's pages are each an image (:class:`TiffPagesReader`)."""
    try:
        with tifffile.TiffFile(data if isinstance(data, Path) else io.BytesIO(data)) as tif:
            return bool(tif.is_ome or tif.is_imagej or tif.is_lsm)
    except Exception:  # a damaged header: TiffReader says so
        return False


def open_image(
    name: str, data: bytes | Path, limits: Limits | None = None, options: ReadOptions | None = None
) -> Reader:
    """A reader for one image file's bytes, or the file at a path (its format told from its content); LsmError
    when it is not an image this app reads, or its header is damaged. Nothing is decoded yet.

    A path is opened where it lies for the formats read plane by plane (TIFF, OME-TIFF, vendor files, a
    zipped OME-Zarr): memory is one plane, whatever the file's size. Other formats are read into memory."""
    limits = limits or Limits()
    if isinstance(data, Path):
        return _open_path(name, data, limits, options)
    if len(data) == 0:
        raise LsmError("the file is empty (0 bytes)")
    kind = sniff(data)
    if kind == "tiff":
        return (
            _open_bytes(name, data, limits, options) if _structured_tiff(data) else TiffPagesReader(data, limits, name)
        )
    if kind in ("png", "jpeg"):
        return PictureReader(data, name, limits)
    if kind == "zip":
        if holds_zarr(io.BytesIO(data)):
            return _open_bytes(name, data, limits, options)
        raise LsmError("a ZIP inside a ZIP is not read; unpack the inner archive first")
    if looks_like_text(data):
        raise LsmError(f"this is a text file, not an image ({SUPPORTED_TEXT} or ZIP expected)")
    if looks_vendor(data):
        return _open_bytes(name, data, limits, options)
    raise LsmError(f"not a supported image format ({SUPPORTED_TEXT} or ZIP expected)")


def _open_path(name: str, path: Path, limits: Limits, options: ReadOptions | None) -> Reader:
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            kind = sniff(head)
            zarr = kind == "zip" and holds_zarr(fh)
    except OSError as exc:
        raise LsmError(f"could not be read ({exc.strerror or exc})") from None
    if kind == "tiff":
        return (
            open_microscope_file(path, name, limits, options)
            if _structured_tiff(path)
            else TiffPagesReader(path, limits, name)
        )
    if zarr or (kind == "unknown" and looks_vendor(head)):
        return open_microscope_file(path, name, limits, options)
    check_file_size(path.stat().st_size, limits)
    return open_image(name, path.read_bytes(), limits, options)


def _open_bytes(name: str, data: bytes, limits: Limits, options: ReadOptions | None) -> Reader:
    """A microscope file given as bytes: the vendor libraries read files, not bytes, so they are written to a
    temporary file first, removed when the reader closes."""
    fd, tmp = tempfile.mkstemp(prefix="lsm-read-")
    owned = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        reader = open_microscope_file(owned, name, limits, options)
    except BaseException:
        owned.unlink(missing_ok=True)
        raise
    reader.owned = owned
    return reader
