"""Read and validate image files: every page of every file of an upload, a folder or an archive becomes an
:class:`ImageRecord`, its pixels in the one grey representation (:func:`lsm_core.imaging.planes.to_grey_float`)
or the plain-language error that stopped it; the other files go on.

Accepted: PNG, JPEG (EXIF orientation applied), TIFF (8-bit, 16-bit, 32-bit integer and float; every page
of a multi-page file is one image), grey, grey+alpha, RGB and RGBA, microscope files (OME-TIFF, ImageJ, CZI,
ND2, LIF, OIB, OME-Zarr: one image per scene and time point, see :mod:`lsm_core.imaging.readers`), and ZIP
archives of these (folder names are kept in the reported file name: ``archive.zip/LT-HSC/cell1.png``; see
:mod:`lsm_core.imaging.readers.archives`). The format is told from the file's content, not its name.

Bounds
------
Pixel counts are checked from the header before any decoding (:meth:`readers.base.PageInfo.check`), and a
page is decoded only within ``Limits.max_image_bytes``; counts a file declares (channels, z planes, time
points, scenes, series, pages) are bounded by ``Limits.max_planes`` (:func:`readers.base.check_declared`)
before anything is made per plane; archives are bounded as :mod:`lsm_core.imaging.readers.archives` says.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lsm_core.errors import LsmError
from lsm_core.imaging.planes import to_grey_float, transmitted_channel
from lsm_core.imaging.readers import open_image
from lsm_core.imaging.readers.archives import (
    RawFile,
    file_sha256,
    holds_zarr,
    iter_files,
    iter_path,
    iter_upload,
    iter_zip_members,
)
from lsm_core.imaging.readers.base import Limits, PageInfo, Reader, ReadOptions, sniff
from lsm_core.imaging.reporters import ChannelSignal


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


def _decoded(reader: Reader, info: PageInfo, limits: Limits) -> np.ndarray:
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
    elif sniff(raw.data) == "zip" and not holds_zarr(io.BytesIO(raw.data)):
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
                record.others, left_out = reader.other_channels(info.index, limits)
                if left_out:
                    record.notes.append(left_out)
                if reader.last_note:
                    record.notes.append(reader.last_note)
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
        return _decoded(reader, _readable_page(reader, name, page), limits)


def _readable_page(reader: Reader, name: str, page: int) -> PageInfo:
    """Page ``page`` (counted from 1) of an open file; LsmError when it is missing or its headers say it cannot
    be read."""
    if not 1 <= page <= len(reader.pages):
        raise LsmError(f"{name}: page {page} is missing")
    problem = reader.error(page - 1)
    if problem:
        raise LsmError(problem)
    return reader.pages[page - 1]


def decode_page_channels(
    name: str, data: bytes | Path, page: int, limits: Limits | None = None, options: ReadOptions | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], str | None, int | None]:
    """:func:`decode_page`, with the page's other channels (a multi-channel microscope file: the reporter
    channels, at the same z plane, in the file's grey values; a file of one channel gives none), a note
    naming those left out (see :meth:`readers.base.StackReader.other_channels`) and the z plane read (from 0; None: the
    image is no z stack)."""
    limits = limits or Limits()
    with open_image(name, data, limits, options) as reader:
        pixels = _decoded(reader, _readable_page(reader, name, page), limits)
        others, note = reader.other_channels(page - 1, limits)
        return pixels, others, note, reader.z_read


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
            if member.error or source is None or (member.data is not None and sniff(member.data) in ("png", "jpeg")):
                continue
            try:
                with open_image(member.source, source, limits, options) as reader:
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
    limits = limits or Limits()
    if raw.error or not raw.data:
        return None
    for member in iter_upload(raw.source, raw.data, limits):
        if member.error or not member.data or sniff(member.data) in ("png", "jpeg"):
            return None
        try:
            with open_image(member.source, member.data, limits) as reader:
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
