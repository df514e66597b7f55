"""Content-addressed blob store: uploaded bytes stored once, named by their sha256.

Files live at ``<root>/<aa>/<bb>/<sha256>`` (root: LSM_BLOB_DIR, default ``$LSM_DATA_DIR/blobs``; a shared
mount when workers run on several hosts). Writes go to a temporary file and are renamed into place, so a
reader never sees half a blob; a write that fails (a full disk) removes its temporary file and raises
LsmError saying so.

Nothing here knows who uses a blob: :mod:`lsm_core.lab.gc` asks the database and removes the blobs nothing
refers to. Its safety rests on two things this store does: storing content that is already there touches
the file (its modification time is the last time anyone stored it), and :meth:`BlobStore.remove` takes a
blob away only when it has not been stored again since a given moment, checked once more after the blob has
been moved aside, so a ``put`` racing with a removal either keeps the file or writes it anew.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lsm_core.errors import LsmError

if TYPE_CHECKING:  # not imported: the blob-writing helper (lsm_core.lab.blobwriter) starts without numpy
    from lsm_core.imaging.readers.archives import RawFile

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_HEX2_RE = re.compile(r"^[0-9a-f]{2}$")
PARTIAL_PREFIX = ".partial-"  # a write in progress, or left by a process killed while writing
TOMB_PREFIX = ".gc-"  # a blob moved aside while it is being removed (left only by a process killed then)


_TOKEN = secrets.token_hex(4)  # this process's, in its temporary files' names (several hosts share a store)
_counter = itertools.count()


def _create_partial(target: Path) -> tuple[str, int]:
    """A new temporary file beside ``target`` (its folders made when missing), open for writing: its path and
    descriptor. The name is unique to this process, thread and call, so O_EXCL never meets another's."""
    name = f"{PARTIAL_PREFIX}{target.name[:16]}-{_TOKEN}-{os.getpid()}-{threading.get_ident()}-{next(_counter)}"
    tmp = os.path.join(target.parent, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        return tmp, os.open(tmp, flags, 0o600)
    except FileNotFoundError:  # the first blob of its folder
        target.parent.mkdir(parents=True, exist_ok=True)
        return tmp, os.open(tmp, flags, 0o600)


def is_sha256(text: object) -> bool:
    """Whether ``text`` is a blob's name: 64 lower-case hexadecimal digits."""
    return isinstance(text, str) and _SHA_RE.match(text) is not None


def human_bytes(n: int | float) -> str:
    """A size in decimal units, as people read it: ``0 B``, ``950 B``, ``12.3 MB``, ``1.5 GB``."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class StoredFile:
    """A file found in the store by :meth:`BlobStore.scan`: a blob (``sha256`` set), a temporary file of a
    write (``partial``) or a blob moved aside by a removal that was interrupted (``tomb``, with its sha256)."""

    path: Path
    size: int
    mtime: float  # seconds since the epoch
    sha256: str | None = None
    partial: bool = False
    tomb: bool = False


class BlobStore:
    def __init__(self, root: str | Path, helpers: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.helpers = helpers  # most helper processes for blobwriter.put_many (None: blobwriter.HELPERS; 0: none)

    def path(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256 or ""):
            raise LsmError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` (once) and return its sha256. ``sha256``: the digest of ``data`` when the caller has
        computed it already (an upload is hashed once, when its headers are read), else it is computed here.

        A new blob is one temporary file, written and renamed into place (not fsynced): four system calls,
        its folders made only when the first write into them finds them missing. (Under 20 people uploading
        at once the web process spends most of a submit in these calls; tempfile.mkstemp's random names and
        a file object around the descriptor cost a quarter more; bench/load.py.)"""
        sha = sha256 or hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        try:
            os.utime(target)  # stored again: fresh, so a garbage collection running now leaves it (module docstring)
            return sha
        except FileNotFoundError:
            pass  # not there (or being removed right now): write it
        except OSError:
            if target.is_file():  # a store we may read but not touch (another owner): the blob is there
                return sha
        try:
            tmp, fd = _create_partial(target)
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked (a signal, a pipe-like mount)
                    view = view[os.write(fd, view) :]
            except BaseException:
                os.close(fd)
                Path(tmp).unlink(missing_ok=True)
                raise
            os.close(fd)
            try:
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise LsmError(
                    f"the file store at {self.root} is full (no space left on its disk): nothing more can be "
                    "saved until space is freed there; ask the lab's administrator"
                ) from None
            raise LsmError(f"the file store at {self.root} could not save an upload ({exc.strerror or exc})") from None
        return sha

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise LsmError(f"the stored file {sha256[:12]}... is missing from {self.root}") from None

    def file(self, sha256: str) -> Path:
        """Where the stored file lies, to be opened there (readers that read one plane at a time need not hold
        the whole file in memory, as :meth:`get` would); LsmError when it is missing."""
        path = self.path(sha256)
        if not path.is_file():
            raise LsmError(f"the stored file {sha256[:12]}... is missing from {self.root}")
        return path

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def remove(self, sha256: str, stored_before: float) -> int | None:
        """Remove a blob unless it was stored (:meth:`put`) at or after ``stored_before`` (seconds since the
        epoch); returns the bytes freed, or None when it was kept or is not there.

        The blob is first moved aside, then its modification time is read again: a ``put`` that touched it
        in between keeps it (it is moved back), and a ``put`` after the move finds nothing and writes it anew."""
        target = self.path(sha256)
        try:
            if target.stat().st_mtime >= stored_before:
                return None
            tomb = target.with_name(TOMB_PREFIX + sha256)
            os.replace(target, tomb)
        except FileNotFoundError:
            return None
        return self._finish_removal(tomb, target, stored_before)

    def _finish_removal(self, tomb: Path, target: Path, stored_before: float) -> int | None:
        """Delete a blob moved aside to ``tomb`` unless it was stored at or after ``stored_before``; then it
        goes back to ``target`` (the same bytes as any copy a ``put`` wrote there since)."""
        try:
            st = tomb.stat()
        except FileNotFoundError:
            return None
        if st.st_mtime >= stored_before:
            os.replace(tomb, target)
            return None
        tomb.unlink(missing_ok=True)
        return st.st_size

    def restore(self, tomb: StoredFile) -> None:
        """Put a blob that an interrupted removal left aside back in its place."""
        assert tomb.tomb and tomb.sha256 is not None
        try:
            os.replace(tomb.path, self.path(tomb.sha256))
        except FileNotFoundError:
            pass

    def remove_tomb(self, tomb: StoredFile, stored_before: float) -> int | None:
        """Finish the removal of a blob that an interrupted removal left aside (see :meth:`remove`)."""
        assert tomb.tomb and tomb.sha256 is not None
        return self._finish_removal(tomb.path, self.path(tomb.sha256), stored_before)

    def scan(self) -> Iterator[StoredFile]:
        """Every file of the store's layout (``<aa>/<bb>/<sha256>``, with the temporary files beside them), one
        at a time; anything else under the root is not the store's and is never listed."""
        for top in _subdirs(self.root):
            for sub in _subdirs(top):
                try:
                    entries = list(os.scandir(sub))
                except FileNotFoundError:
                    continue
                for entry in entries:
                    name = entry.name
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    path, prefix = Path(entry.path), top.name + sub.name
                    if is_sha256(name) and name.startswith(prefix):
                        yield StoredFile(path, st.st_size, st.st_mtime, sha256=name)
                    elif name.startswith(PARTIAL_PREFIX):
                        yield StoredFile(path, st.st_size, st.st_mtime, partial=True)
                    elif name.startswith(TOMB_PREFIX) and is_sha256(name[len(TOMB_PREFIX) :]):
                        sha = name[len(TOMB_PREFIX) :]
                        if sha.startswith(prefix):
                            yield StoredFile(path, st.st_size, st.st_mtime, sha256=sha, tomb=True)

    def put_uploads(self, files: Iterable[RawFile]) -> list[dict[str, str]]:
        """Keep uploaded files whole (a training ZIP is unpacked by the worker): ``[{"name", "sha256"}]``.
        An unreadable or empty file is refused by name."""
        out = []
        for raw in files:
            if raw.error is not None or not raw.data:
                raise LsmError(f"{raw.source}: {raw.error or 'the file is empty'}")
            out.append({"name": raw.source, "sha256": self.put(raw.data)})
        return out


def _subdirs(folder: Path) -> list[Path]:
    """The two-hex-digit folders of the store's layout in ``folder`` (sorted; none when it is gone)."""
    try:
        return sorted(
            Path(e.path) for e in os.scandir(folder) if _HEX2_RE.match(e.name) and e.is_dir(follow_symlinks=False)
        )
    except FileNotFoundError:
        return []
