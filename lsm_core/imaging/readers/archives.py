"""Files as they come: uploads, ZIP archives of images and folders, each file's bytes (or, read lazily, its
path) with the name it is reported under (:class:`RawFile`).

ZIP archives are checked for their number of members and unpacked size (as declared; zipfile never unpacks
more than a member declares), and members with absolute paths, ``..`` components or symbolic links are
refused, as are members that unpack to over :data:`BOMB_FLOOR` bytes from over :data:`BOMB_RATIO` times
fewer. A member is unpacked a piece at a time (:func:`read_member`), its first bytes first: one that is no
image is refused before the rest is unpacked. Folder names are kept in the reported file name
(``archive.zip/LT-HSC/cell1.png``). An OME-Zarr, as a folder or a ZIP of one, is one file (one microscope
image read chunk by chunk), not an archive to unpack.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lsm_core.errors import LsmError
from lsm_core.imaging.readers.base import (
    SUPPORTED_TEXT,
    Limits,
    check_file_size,
    looks_like_text,
    looks_vendor,
    megabytes,
    sniff,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".czi", ".nd2", ".lif", ".oib"}
ARCHIVE_SUFFIXES = {".zip"}
INPUT_SUFFIXES = IMAGE_SUFFIXES | ARCHIVE_SUFFIXES

# Files that operating systems add to folders and archives; never images, never worth an error.
_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


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
            f"the OME-Zarr holds {megabytes(total)}; the limit for one file is {megabytes(limits.max_file_bytes)} "
            "(LSM_MAX_FILE_BYTES)"
        )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for f in files:
            archive.write(f, f"{folder.name}/{f.relative_to(folder).as_posix()}")
    return buf.getvalue()


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
            f"unpacks to {megabytes(member.file_size)}; the limit for one file is "
            f"{megabytes(limits.max_file_bytes)} (LSM_MAX_FILE_BYTES)"
        )
    packed = max(1, member.compress_size)
    if problem is None and member.file_size > BOMB_FLOOR and member.file_size > BOMB_RATIO * packed:
        problem = (
            f"unpacks to {megabytes(member.file_size)} from {member.compress_size:,} bytes in the archive (over "
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
    kind = sniff(head)
    if kind == "zip":
        return "a ZIP inside a ZIP is not read; unpack the inner archive first"
    if kind != "unknown" or looks_vendor(head):
        return None
    if looks_like_text(head):
        return f"this is a text file, not an image ({SUPPORTED_TEXT} or ZIP expected)"
    return f"not a supported image format ({SUPPORTED_TEXT} or ZIP expected)"


def iter_upload(name: str, data: bytes, limits: Limits | None = None) -> Iterator[RawFile]:
    """The raw files of one uploaded file: itself (an image, or a ZIP of one OME-Zarr), or its members when it
    is a ZIP archive of images."""
    limits = limits or Limits()
    if sniff(data) == "zip" and not holds_zarr(io.BytesIO(data)):
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
            if sniff(head) == "zip" and not holds_zarr(fh):
                fh.seek(0)
                yield from iter_zip_members(name, fh, limits)
                return
            if lazy:
                yield RawFile(name, path=path)
                return
            size = os.fstat(fh.fileno()).st_size
            try:
                check_file_size(size, limits)
            except LsmError as exc:
                yield RawFile(name, error=str(exc))
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
