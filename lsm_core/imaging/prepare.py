"""Preparing images for the network: reading a stored file's page, finding its cells and measuring its reporter
channels, in a pool of processes that the worker feeds, results in input order.

One image's preparation (:func:`prepare`) needs no torch and no database: a path, a page, the read options,
the limits and the cell-finding settings in; the cells (crops, boxes, flags), the reporter signal and a note,
or the error, out. :class:`PrepPool` runs it in ``workers`` processes (``spawn``ed: a worker that has loaded
torch and CUDA must not ``fork``) and keeps at most ``2 x workers`` images in flight, so memory holds a few
images per process; ``workers = 0`` runs it in the calling process, one image at a time, as the serial path
did. The results are the same either way, bit for bit: the same function on the same bytes.

Each image has a time limit (:func:`time_limit`, LSM_MAX_SECONDS_PER_IMAGE), applied in the process that
prepares it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from lsm_core.errors import LsmError
from lsm_core.imaging.cells import CellCrops, FindParams, find_cells, no_cells_note
from lsm_core.imaging.images import decode_page_channels
from lsm_core.imaging.readers.base import Limits, ReadOptions
from lsm_core.imaging.reporters import ChannelSignal, measure
from lsm_core.imaging.shape import CellShape, measured

T = TypeVar("T")


class TookTooLong(LsmError):
    """One item of a job (an image) ran past the per-item time limit (LSM_MAX_SECONDS_PER_IMAGE)."""


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`TookTooLong` in the block after ``seconds`` (a SIGALRM timer: in the main thread only, where
    workers run their tasks and pool processes their items; elsewhere, as in tests that run a worker in a
    thread, the block is not limited). A long call into C (a decompressor, say) ends its step before the
    signal is seen."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    message = f"{what} took longer than {seconds:g} s (LSM_MAX_SECONDS_PER_IMAGE); it was stopped"
    fired: list[bool] = []

    def expired(_signum, _frame):
        fired.append(True)
        raise TookTooLong(message)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:  # the block swallowed it (a library's broad ``except Exception``) and went on: still too long
        raise TookTooLong(message)


@dataclass(frozen=True)
class PrepTask:
    """One stored image to prepare: where its file lies, which page, how to read it and find its cells."""

    path: Path
    page: int
    options: ReadOptions
    limits: Limits
    params: FindParams
    seconds: float = 0.0  # the time limit (0: none)


@dataclass
class Prepared:
    """What an image gave: its cells (labels dropped once measured), its reporter signal and a note; or the
    error that stopped it."""

    found: CellCrops | None = None
    signal: list[ChannelSignal] = field(default_factory=list)
    note: str | None = None
    error: str | None = None
    z: int | None = None  # the z plane read (from 0; None: no z stack)
    # per cell: its outline as stored and its size and shape (lsm_core.imaging.shape), in the cells' order
    shapes: list[tuple[list[float] | None, CellShape | None]] = field(default_factory=list)


def prepare(task: PrepTask) -> Prepared:
    """Read one page of a stored file, find its cells, measure its other channels in them. Never raises for the
    image's content (its error is in the result)."""
    try:
        with time_limit(task.seconds, "reading this image and finding its cells"):
            pixels, others, left_out, z = decode_page_channels(
                "stored", task.path, task.page, task.limits, task.options
            )
            found = find_cells(pixels, task.params)
            signal_: list[ChannelSignal] = []
            if others and found.labels is not None:  # the reporter channels, measured in each cell's mask
                signal_ = measure(found.labels, len(found), others, task.params.pixel_size_um)
            shapes = measured(found, task.params.pixel_size_um)
    except LsmError as exc:
        return Prepared(error=str(exc))
    found.labels = None  # measured: only the crops travel back
    notes = [left_out, None if len(found) else no_cells_note(found.dropped, task.params)]
    return Prepared(found, signal_, "; ".join(n for n in notes if n) or None, z=z, shapes=shapes)


def default_workers(limits: Limits | None = None, cores: int | None = None, memory: int | None = None) -> int:
    """The host's cores minus one (one is left to the loop and the network), at most as many as memory holds:
    each process may hold two images at the byte limit (LSM_MAX_IMAGE_BYTES) plus its imports (~150 MB),
    within half of the memory available."""
    limits = limits or Limits()
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if memory is None:
        try:
            memory = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            memory = 4 * 1024**3
    per_process = 2 * limits.max_image_bytes + 150 * 1024**2
    return max(0, min(cores - 1, int(memory // 2 // per_process)))


@dataclass
class _Slot(Generic[T]):
    item: T
    task: PrepTask | None
    future: Future | None  # None: nothing to prepare
    retried: bool = False


def _one_thread() -> None:
    """Each preparation process computes on one core: numpy's BLAS (the background's interpolation is two
    matrix products) would start a thread per core in every process and they would crowd each other out
    (2 processes on 2 cores: 0.9x one process, against 1.7x with one thread each; bench/fields.py)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _executor(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)


class PrepPool:
    """``workers`` processes that prepare images (0: the calling process does, one at a time). Use as a context
    manager; :meth:`ordered` maps :func:`prepare` over items in input order."""

    def __init__(self, workers: int) -> None:
        self.workers = max(0, int(workers))
        self._executor: ProcessPoolExecutor | None = None
        if self.workers:
            self._executor = _executor(self.workers)

    def __enter__(self) -> PrepPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def ordered(
        self, items: Iterable[T], task_of: Callable[[T], PrepTask | None]
    ) -> Iterator[tuple[T, Prepared | None]]:
        """``(item, prepared)`` for every item, in input order; ``task_of(item)`` is None for an item that needs
        no preparation (its result is known: cells found before), given back with None. At most ``2 x
        workers`` items are in flight."""
        if self._executor is None:
            for item in items:
                task = task_of(item)
                yield item, (prepare(task) if task is not None else None)
            return
        window: deque[_Slot[T]] = deque()
        ahead = 2 * self.workers
        for item in items:
            task = task_of(item)
            window.append(_Slot(item, task, self._submit(task) if task is not None else None))
            while len(window) > ahead or (window and _finished(window[0])):
                yield self._result(window.popleft())
        while window:
            yield self._result(window.popleft())

    def _submit(self, task: PrepTask) -> Future:
        assert self._executor is not None
        try:
            return self._executor.submit(prepare, task)
        except BrokenProcessPool:  # a process died (killed for memory, say): a fresh pool for the rest
            self._restart()
            return self._executor.submit(prepare, task)

    def _restart(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = _executor(self.workers)

    def _result(self, slot: _Slot[T]) -> tuple[T, Prepared | None]:
        if slot.future is None or slot.task is None:
            return slot.item, None
        try:
            return slot.item, slot.future.result()
        except LsmError as exc:
            return slot.item, Prepared(error=str(exc))
        except BrokenProcessPool as exc:
            # the pool broke while this image was in it (it may be the image that killed a process, or one that
            # merely shared the pool with it): once more in a fresh pool, then it is this image's error
            if not slot.retried:
                if self._executor is None or getattr(self._executor, "_broken", False):
                    self._restart()
                slot.future, slot.retried = self._submit(slot.task), True
                return self._result(slot)
            return slot.item, Prepared(error=f"preparing this image stopped its process twice ({exc})")
        except Exception as exc:  # anything else that escaped prepare(): this image's error, the rest goes on
            return slot.item, Prepared(error=f"preparing this image failed ({type(exc).__name__}: {exc})")


def _finished(slot: _Slot) -> bool:
    return slot.future is None or slot.future.done()


def crops_of(prepared: Prepared | None) -> np.ndarray | None:
    """The crops of a prepared image, or None when it has none."""
    if prepared is None or prepared.found is None or not len(prepared.found):
        return None
    return prepared.found.crops
