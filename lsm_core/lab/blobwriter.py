"""Helper processes that write uploads into the blob store for a busy web process.

Storing one small file is four system calls (:meth:`lsm_core.lab.blobs.BlobStore.put`), and each gives up
Python's interpreter lock and takes it back. One upload alone does not notice; with 20 people pressing
`Classify` at once the web process's threads hand that lock to each other some fifty times per upload of
ten crops, and the handoffs, not the disk, become most of the time a submit takes (bench/load.py: submit
latency 0.6x with the helpers). So when an upload is stored while another one is being stored in the same
process, its small files go to a helper process in one message and are written there; the caller waits
for the helper's answer, so the files are in the store, exactly as :meth:`BlobStore.put` would leave them,
before the caller goes on (the batch's rows are committed only after that).

A process storing one upload at a time (the command line, a lone user) never starts a helper. Files larger
than :data:`SMALL` are written in the calling process (copying their bytes costs more than the handoffs).
A helper checks every file's sha256 before writing it, answers a store error (a full disk) with its
message, and exits when its input closes (its parent went away). A helper that dies or answers nonsense
is dropped and the files are written in the calling process instead, so an upload never fails because of
a helper.

Run as ``python -m lsm_core.lab.blobwriter`` by :class:`Writers`; its protocol (little-endian):
request ``u16 len(root) u32 n root`` then ``n`` times ``u64 size, 64 bytes sha256 (hex), data``;
answer ``u32 len(message) message`` (empty: every file stored); before the first request a helper writes
one byte, ``R``, once it is ready.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

from lsm_core.errors import LsmError
from lsm_core.lab.blobs import BlobStore

log = logging.getLogger(__name__)

SMALL = 1 << 20  # bytes: larger files are written by the calling process

HELPERS = 2  # processes at most, unless LSM_BLOB_HELPERS says (each writes one upload at a time)
_HEAD = struct.Struct("<HI")
_ITEM = struct.Struct("<Q")
_ANSWER = struct.Struct("<I")
READY = b"R"  # a helper's first byte: it is up


class _Helper:
    """One helper process; :meth:`ready` once it has imported what it needs and said so."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lsm_core.lab.blobwriter"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )

    def ready(self) -> bool:
        """Wait for the helper's first byte (it is up); False when it exited instead."""
        assert self.proc.stdout is not None
        return self.proc.stdout.read(1) == READY

    def write(self, root: str, items: Sequence[tuple[bytes, str]]) -> str:
        """Send one upload's files; the helper's answer (empty: all stored). OSError/EOFError: it is gone."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        encoded = root.encode()
        parts: list[bytes] = [_HEAD.pack(len(encoded), len(items)), encoded]
        for data, sha in items:
            parts += [_ITEM.pack(len(data)), sha.encode("ascii"), data]
        self.proc.stdin.write(b"".join(parts))
        self.proc.stdin.flush()
        (size,) = _ANSWER.unpack(_read(self.proc.stdout, _ANSWER.size))
        return _read(self.proc.stdout, size).decode(errors="replace")

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class Writers:
    """The helper processes of this process: started in the background when first needed (at most
    :data:`HELPERS`); until one is up, and whenever none is free soon, the caller writes its files itself."""

    WAIT_S = 0.05  # how long a caller waits for a busy helper (each upload takes it a millisecond or two)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: queue.LifoQueue[_Helper] = queue.LifoQueue()
        self._made = 0  # started, starting included
        self._up = 0  # started and ready
        self._busy = 0  # uploads being stored right now, with or without a helper
        self.helped = 0  # uploads stored through a helper so far

    def store(self, store: BlobStore, items: Sequence[tuple[bytes, str]], limit: int | None = None) -> None:
        """Store ``items`` ((bytes, sha256) pairs) in ``store`` (a BlobStore): small ones through a helper when
        another upload is being stored at the same time, the rest with ``store.put``. ``limit``: most helpers
        (None: HELPERS; 0: never any)."""
        with self._lock:
            crowded = self._busy > 0
            self._busy += 1
        try:
            small = [(d, s) for d, s in items if len(d) <= SMALL] if crowded and len(items) > 1 else []
            if small and self.via_helper(str(store.root), small, limit):
                items = [(d, s) for d, s in items if len(d) > SMALL]
            for data, sha in items:
                store.put(data, sha)
        finally:
            with self._lock:
                self._busy -= 1

    def via_helper(self, root: str, items: Sequence[tuple[bytes, str]], limit: int | None = None) -> bool:
        """Store ``items`` in the store at ``root`` through a free helper: True when one did, False when none
        could (none up, none free within WAIT_S, or it failed: then the caller writes them). LsmError: the
        helper could not store them (a full disk, bytes that do not match their sha256). ``limit``: most
        helpers (None: HELPERS; 0: never any)."""
        limit = HELPERS if limit is None else limit
        helper = self._take(limit) if limit > 0 else None
        if helper is None:
            return False
        try:
            message = helper.write(root, items)
        except (OSError, EOFError, struct.error, ValueError) as exc:
            log.warning("a blob-writing helper process failed (%s); writing in this process", exc)
            self._drop(helper)
            return False
        self._idle.put(helper)
        if message:
            raise LsmError(message)
        with self._lock:
            self.helped += 1
        return True

    def _take(self, limit: int) -> _Helper | None:
        """A free helper: an idle one, else (when every helper is up and busy) the first to be free within
        WAIT_S; None otherwise, after starting one more in the background while there are fewer than ``limit``."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            start = self._made < limit
            if start:
                self._made += 1
            wait = not start and self._up == self._made > 0
        if start:
            threading.Thread(target=self._start, name="blob-helper-start", daemon=True).start()
            return None
        if wait:
            try:
                return self._idle.get(timeout=self.WAIT_S)
            except queue.Empty:
                return None
        return None

    @property
    def started(self) -> int:
        """Helpers started (those starting included)."""
        return self._made

    def pids(self) -> list[int]:
        """The process ids of the helpers that are up and idle."""
        return [h.proc.pid for h in list(self._idle.queue)]

    def start(self, limit: int | None = None, timeout: float = 10.0) -> int:
        """Start every helper now (``limit``, default HELPERS: a web server that has been up a while has them)
        and wait until they are up, at most ``timeout`` seconds; the number up."""
        with self._lock:
            missing = (HELPERS if limit is None else limit) - self._made
            self._made += max(missing, 0)
        starters = [threading.Thread(target=self._start, daemon=True) for _ in range(max(missing, 0))]
        for t in starters:
            t.start()
        for t in starters:
            t.join(timeout)
        return self._up

    def _start(self) -> None:
        try:
            helper = _Helper()
        except OSError as exc:
            log.warning("could not start a blob-writing helper process (%s); writing in this process", exc)
            with self._lock:
                self._made -= 1
            return
        try:
            up = helper.ready()
        except OSError:
            up = False
        if not up:
            log.warning("a blob-writing helper process exited at its start; writing in this process")
            helper.close()
            with self._lock:
                self._made -= 1
            return
        with self._lock:
            self._up += 1
        self._idle.put(helper)

    def _drop(self, helper: _Helper) -> None:
        helper.close()
        with self._lock:
            self._made -= 1
            self._up -= 1

    def _forget(self) -> None:
        """In a forked child: its parent's helpers are not its own."""
        self.__init__()  # type: ignore[misc]

    def close(self) -> None:
        while True:
            try:
                helper = self._idle.get_nowait()
            except queue.Empty:
                return
            self._drop(helper)


WRITERS = Writers()
atexit.register(WRITERS.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WRITERS._forget)


def put_many(store: BlobStore, items: Sequence[tuple[bytes, str]]) -> None:
    """Store several blobs ((bytes, sha256) pairs, each digest already computed) in ``store``, as
    :meth:`BlobStore.put` does each. Under many uploads at once, the small ones are written by helper
    processes (at most ``store.helpers``): they are in the store when this returns either way."""
    WRITERS.store(store, items, store.helpers)


def _read(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("the other end closed the pipe")
    return data


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """The helper's loop: read requests from ``inp`` until it closes, answer each on ``out``."""
    stores: dict[str, BlobStore] = {}
    out.write(READY)
    out.flush()
    while True:
        head = inp.read(_HEAD.size)
        if not head:
            return
        if len(head) != _HEAD.size:
            raise EOFError("a request was cut short")
        root_len, n = _HEAD.unpack(head)
        root = _read(inp, root_len).decode()
        items = []
        for _ in range(n):
            (size,) = _ITEM.unpack(_read(inp, _ITEM.size))
            sha = _read(inp, 64).decode("ascii")
            items.append((_read(inp, size), sha))
        try:
            store = stores.get(root) or stores.setdefault(root, BlobStore(root))
            for data, sha in items:
                if hashlib.sha256(data).hexdigest() != sha:
                    raise LsmError(f"an upload's bytes do not match their sha256 {sha[:12]}...; nothing was stored")
                store.put(data, sha)
            message = b""
        except LsmError as exc:
            message = str(exc).encode()
        out.write(_ANSWER.pack(len(message)) + message)
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
