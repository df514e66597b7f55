"""Content-addressed blob store: uploaded bytes stored once, named by their sha256.

Files live at ``<root>/<aa>/<bb>/<sha256>`` (root: LSM_BLOB_DIR, default ``$LSM_DATA_DIR/blobs``; a shared
mount when workers run on several hosts). Writes go to a temporary file and are renamed into place, so a
reader never sees half a blob; a write that fails (a full disk) removes its temporary file and raises
LsmError saying so.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lsm_core.errors import LsmError
from lsm_core.imaging.images import RawFile

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256 or ""):
            raise LsmError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.exists():
            return sha
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
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

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_uploads(self, files: Iterable[RawFile]) -> list[dict[str, str]]:
        """Keep uploaded files whole (a training ZIP is unpacked by the worker): ``[{"name", "sha256"}]``.
        An unreadable or empty file is refused by name."""
        out = []
        for raw in files:
            if raw.error is not None or not raw.data:
                raise LsmError(f"{raw.source}: {raw.error or 'the file is empty'}")
            out.append({"name": raw.source, "sha256": self.put(raw.data)})
        return out
