"""Garbage collection of the blob store: the stored files nothing in the history refers to any more.

A blob is **referenced** while

* an image row of any batch names it (``images.sha256``),
* a saliency run stores its maps in it (``saliency_runs.blob``), or
* a queued or running job names it anywhere in its payload (a training or evaluation job's uploaded ZIPs:
  ``{"uploads": [{"name", "sha256"}], "test_uploads": [...]}``; any 64-hex-digit string counts, so a new
  job kind that names blobs is covered without a change here).

:func:`collect_garbage` removes the blobs nothing references that were last stored (:meth:`BlobStore.put
<lsm_core.lab.blobs.BlobStore.put>`, which touches a blob it already has) longer ago than a grace period,
and the temporary ``.partial-*`` files of writes that were killed, older than the same grace period. The
grace period covers an upload in progress: its files are stored one by one before the transaction that
names them commits. A blob stored again while it is being removed is kept (see
:meth:`BlobStore.remove <lsm_core.lab.blobs.BlobStore.remove>`).

Deleting a batch (:func:`lsm_core.lab.batches.delete`) removes at once the blobs only that batch referred
to, with :func:`unshared_blobs`; garbage collection catches everything else (refused or abandoned uploads,
finished training jobs' ZIPs, a saliency run whose batch went while it ran).

One blob store belongs to one history: never point two databases at the same ``LSM_BLOB_DIR``, or each
one's collection removes the other's blobs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.schema import Image, Job, SaliencyRun
from lsm_core.errors import LsmError
from lsm_core.lab.blobs import StoredFile, human_bytes, is_sha256
from lsm_core.lab.jobs import ACTIVE
from lsm_core.lab.lab import Lab

CHUNK = 500  # sha256s per IN (...) query: far below every engine's limit on bound parameters


@dataclass(frozen=True)
class GcReport:
    """What a collection removed (or, with ``dry_run``, would remove) and what it kept."""

    dry_run: bool
    blobs: int = 0  # unreferenced blobs older than the grace period
    blob_bytes: int = 0
    partials: int = 0  # stale temporary files of killed writes
    partial_bytes: int = 0
    kept_referenced: int = 0  # blobs the history refers to
    kept_young: int = 0  # unreferenced blobs or temporary files within the grace period (uploads in progress)
    failed: int = 0  # files that could not be removed (permissions, a read-only mount): kept
    first_error: str | None = None

    @property
    def files(self) -> int:
        return self.blobs + self.partials

    @property
    def bytes(self) -> int:
        return self.blob_bytes + self.partial_bytes

    def summary(self) -> str:
        """One line for people: ``freed 12.3 MB: 4 unreferenced blobs, 1 temporary file; kept ...``."""
        verb = "would free" if self.dry_run else "freed"
        return (
            f"{verb} {human_bytes(self.bytes)}: {self.blobs:,} unreferenced blob(s) ({human_bytes(self.blob_bytes)}), "
            f"{self.partials:,} stale temporary file(s) ({human_bytes(self.partial_bytes)}); kept "
            f"{self.kept_referenced:,} blob(s) in use and {self.kept_young:,} file(s) within the grace period"
            + (f"; {self.failed:,} file(s) could not be removed ({self.first_error})" if self.failed else "")
        )


def payload_blobs(payload: Any) -> set[str]:
    """Every sha256 named anywhere in a job's payload (nested dicts and lists)."""
    found: set[str] = set()
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif is_sha256(item):
            found.add(item)
    return found


def active_job_blobs(s: Session) -> set[str]:
    """Within ``s``: the blobs named by queued and running jobs' payloads."""
    found: set[str] = set()
    for payload in s.scalars(select(Job.payload).where(Job.status.in_([str(a) for a in ACTIVE]))):
        found |= payload_blobs(payload)
    return found


def referenced(s: Session, shas: Iterable[str], exclude_batch: int | None = None) -> set[str]:
    """Within ``s``: those of ``shas`` that the history refers to (see the module docstring), leaving out
    the references of batch ``exclude_batch`` (its images and saliency runs)."""
    wanted = sorted(set(shas))
    found = active_job_blobs(s) & set(wanted)
    for start in range(0, len(wanted), CHUNK):
        part = wanted[start : start + CHUNK]
        images = select(Image.sha256).where(Image.sha256.in_(part))
        runs = select(SaliencyRun.blob).where(SaliencyRun.blob.in_(part))
        if exclude_batch is not None:
            images = images.where(Image.batch_id != exclude_batch)
            runs = runs.where(SaliencyRun.batch_id != exclude_batch)
        found |= {sha for sha in s.scalars(images.distinct()) if sha is not None}
        found |= set(s.scalars(runs.distinct()))
    return found


def batch_blobs(s: Session, batch_id: int) -> set[str]:
    """Within ``s``: the blobs batch ``batch_id`` refers to (its images' files and its saliency maps)."""
    images = s.scalars(select(Image.sha256).where(Image.batch_id == batch_id, Image.sha256.is_not(None)).distinct())
    runs = s.scalars(select(SaliencyRun.blob).where(SaliencyRun.batch_id == batch_id))
    return {sha for sha in images if sha is not None} | set(runs)


def unshared_blobs(s: Session, batch_id: int) -> set[str]:
    """Within ``s``: the blobs only batch ``batch_id`` refers to: gone with it."""
    mine = batch_blobs(s, batch_id)
    return mine - referenced(s, mine, exclude_batch=batch_id)


def collect_garbage(lab: Lab, dry_run: bool, grace_s: float = 3600) -> GcReport:
    """Remove the blobs nothing refers to and the stale temporary files, both last written more than
    ``grace_s`` seconds ago (see the module docstring); with ``dry_run`` remove nothing and report what would
    go. Checks no role: the command line (``python -m lsm_core blobs gc``) lets administrators only."""
    if not grace_s >= 0:
        raise LsmError("the grace period must be 0 or more seconds")
    stored_before = time.time() - grace_s  # taken before the files are listed and the history is asked
    blobs = lab.blobs
    partials = partial_bytes = young = failed = 0
    first_error: str | None = None

    def could_not(f: StoredFile, exc: OSError) -> None:
        nonlocal failed, first_error
        failed += 1
        first_error = first_error or f"{f.path}: {exc.strerror or exc}"

    gone = gone_bytes = kept = 0

    def settle(old: list[StoredFile]) -> None:
        """Remove those of ``old`` (blobs past the grace period, and blobs an interrupted removal left aside)
        that nothing refers to; put back the ones left aside that something does."""
        nonlocal gone, gone_bytes, kept, young
        with lab() as s:
            used = referenced(s, (f.sha256 for f in old if f.sha256 is not None))
        for f in old:
            assert f.sha256 is not None  # blobs and tombs carry theirs
            try:
                if f.sha256 in used:
                    kept += 1
                    if f.tomb and not dry_run:
                        blobs.restore(f)
                    continue
                if dry_run:
                    freed: int | None = f.size
                elif f.tomb:
                    freed = blobs.remove_tomb(f, stored_before)
                else:
                    freed = blobs.remove(f.sha256, stored_before)
            except OSError as exc:
                could_not(f, exc)
                continue
            if freed is None:
                young += 1  # stored again since it was listed
            else:
                gone, gone_bytes = gone + 1, gone_bytes + freed

    old: list[StoredFile] = []  # a few at a time: a store of millions of files is never held in memory
    for f in blobs.scan():
        if f.mtime >= stored_before:
            young += 1
            if f.tomb and not dry_run:
                try:
                    blobs.restore(f)  # stored again while it was being removed
                except OSError as exc:
                    could_not(f, exc)
        elif f.partial:
            if dry_run:
                partials, partial_bytes = partials + 1, partial_bytes + f.size
            else:
                try:
                    f.path.unlink()
                    partials, partial_bytes = partials + 1, partial_bytes + f.size
                except FileNotFoundError:
                    pass  # its write finished or failed meanwhile
                except OSError as exc:
                    could_not(f, exc)
        else:
            old.append(f)
            if len(old) >= CHUNK:
                settle(old)
                old = []
    if old:
        settle(old)
    return GcReport(dry_run, gone, gone_bytes, partials, partial_bytes, kept, young, failed, first_error)
