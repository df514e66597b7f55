"""What people do to batches after submitting them: find, rename, delete, re-run, add files.

Ownership is checked here, not only by hiding buttons: a member changes only their own batches, an
administrator anyone's (see :mod:`lsm_core.accounts`). Everyone may re-run any batch into a new one of their own.

Every action names the batch by id, never by a position in a list, and may name the ``revision`` its user
saw (``Batch.revision`` counts renames and added files): a batch that was deleted or changed since is
refused with a message, so nobody acts on something other than what they looked at.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db import audit
from db.schema import Batch, Cell, Image, Job, Model
from lsm_core import accounts, jobs
from lsm_core.blobs import BlobStore
from lsm_core.config import Limits
from lsm_core.errors import LsmError
from lsm_core.images import RawFile


def find_by_name(sessions: sessionmaker[Session], owner: str, name: str) -> int | None:
    """The id of ``owner``'s batch called ``name`` (newest), or None."""
    with sessions() as s:
        return s.scalar(
            select(Batch.id).where(Batch.owner == owner, Batch.name == name.strip()).order_by(Batch.id.desc()).limit(1)
        )


def _get(s: Session, batch_id: int, seen_revision: int | None = None) -> Batch:
    """Within ``s``: the batch (locked for the rest of the transaction on PostgreSQL), refused when it is gone
    or, with ``seen_revision``, changed since its user saw it."""
    batch = s.get(Batch, batch_id, with_for_update=s.bind.dialect.name == "postgresql")
    if batch is None:
        raise LsmError(f"batch #{batch_id} no longer exists: someone deleted it. Nothing was done.")
    if seen_revision is not None and batch.revision != seen_revision:
        raise LsmError(f"batch #{batch_id} was changed since you selected it (it is now called {batch.name!r}). "
                       "Nothing was done: look at it again, then act.")
    return batch


def _own(s: Session, batch_id: int, user: str, seen_revision: int | None = None) -> Batch:
    batch = _get(s, batch_id, seen_revision)
    if not accounts.may_change(s, user, batch.owner):
        raise LsmError(f"batch {batch.name!r} belongs to {batch.owner}; only they or an administrator can change it")
    return batch


def rename(sessions: sessionmaker[Session], batch_id: int, new_name: str, user: str,
           seen_revision: int | None = None) -> None:
    new_name = (new_name or "").strip()
    if not new_name or len(new_name) > 200:
        raise LsmError("a batch name needs 1 to 200 characters")
    with sessions.begin() as s:
        batch = _own(s, batch_id, user, seen_revision)
        audit.record(s, user, "rename", f"batch {batch_id}", old=batch.name, new=new_name)
        batch.name = new_name
        batch.revision += 1


@dataclass(frozen=True)
class Deleted:
    """What a delete removed, for the message that confirms it."""

    batch_id: int
    name: str
    images: int
    cells: int


def delete(sessions: sessionmaker[Session], batch_id: int, user: str, seen_revision: int | None = None) -> Deleted:
    """Delete a batch with its images and cells; its queued or running jobs are cancelled. Returns what went."""
    with sessions.begin() as s:
        batch = _own(s, batch_id, user, seen_revision)
        gone = Deleted(batch.id, batch.name,
                       s.scalar(select(func.count()).select_from(Image).where(Image.batch_id == batch_id)) or 0,
                       s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == batch_id)) or 0)
        s.execute(
            update(Job).where(Job.batch_id == batch_id, Job.status == "queued").values(status="cancelled", finished=func.now())
        )
        s.execute(update(Job).where(Job.batch_id == batch_id, Job.status == "running").values(cancel_requested=True))
        audit.record(s, user, "delete", f"batch {batch_id}", name=batch.name, owner=batch.owner, images=gone.images,
                     cells=gone.cells)
        s.delete(batch)
        return gone


def rerun(sessions: sessionmaker[Session], batch_id: int, model_id: int, user: str,
          pixel_size_um: float | None = None, seen_revision: int | None = None) -> jobs.Submitted:
    """A new batch with the same images and metadata, classified by another model (version) or at another
    pixel size (``pixel_size_um``; default: the old batch's)."""
    if pixel_size_um is not None and not (pixel_size_um > 0 and pixel_size_um < 100):
        raise LsmError("the pixel size must be a positive number of micrometres per pixel (below 100)")
    with sessions.begin() as s:
        old = _get(s, batch_id, seen_revision)
        model = s.get(Model, model_id)
        if model is None or model.deleted:
            raise LsmError("the chosen model no longer exists; pick another one")
        if model.task != old.model.task:
            raise LsmError(f"{model.label} is a {model.task} model; this batch was classified with a {old.model.task} model")
        images = s.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.position)).all()
        copies = [
            Image(position=i, file=im.file, page=im.page, sha256=im.sha256, width=im.width, height=im.height,
                  bit_depth=im.bit_depth, error=im.error if im.width is None else None,
                  done=im.width is None, n_cells=0 if im.width is None else None)
            for i, im in enumerate(images)
        ]
        readable = sum(1 for c in copies if not c.done)
        pixels = pixel_size_um if pixel_size_um is not None else old.pixel_size_um
        suffix = f" ({model.name} v{model.version}" + (f", {pixels:g} um/px" if pixel_size_um is not None else "") + ")"
        batch = Batch(
            name=old.name + suffix, owner=user, model_id=model.id, status="queued",
            mouse_id=old.mouse_id, age_days=old.age_days, sex=old.sex, strain=old.strain, gate=old.gate,
            imaging_date=old.imaging_date, notes=old.notes, pixel_size_um=pixels,
        )
        batch.images = copies
        s.add(batch)
        s.flush()
        job = Job(kind="classify", payload={"batch_id": batch.id, "model_id": model.id}, owner=user, batch_id=batch.id,
                  progress_total=readable, max_attempts=jobs.DEFAULT_MAX_ATTEMPTS)
        s.add(job)
        s.flush()
        audit.record(s, user, "rerun", f"batch {batch.id}", source=batch_id, model=model.label, pixel_size_um=pixels)
        return jobs.Submitted(batch.id, job.id, len(copies), [])


def add_files(
    sessions: sessionmaker[Session],
    batch_id: int,
    files: Iterable[RawFile],
    user: str,
    blobs: BlobStore | None = None,
    limits: Limits | None = None,
    seen_revision: int | None = None,
) -> jobs.Submitted:
    """Add files to one of ``user``'s batches and queue a job that classifies the new images.

    A file whose bytes are in the batch already (same sha256) is skipped and listed in ``skipped``; when
    every file is, nothing is queued and LsmError says so.
    """
    with sessions() as s:
        batch = _own(s, batch_id, user, seen_revision)
        present = dict(s.execute(select(Image.sha256, Image.file).where(Image.batch_id == batch_id,
                                                                         Image.sha256.is_not(None))).all())
    found = jobs.image_rows(files, blobs or BlobStore(), limits or Limits.from_env(), present)
    if not found.rows:
        if found.skipped:
            raise LsmError(f"nothing was added: all {len(found.skipped)} file(s) are in batch {batch.name!r} already")
        raise LsmError("no files were uploaded")
    with sessions.begin() as s:
        batch = _own(s, batch_id, user, seen_revision)
        start = (s.scalar(select(func.max(Image.position)).where(Image.batch_id == batch_id)) or 0) + 1
        for i, row in enumerate(found.rows):
            row.position = start + i
            row.batch_id = batch_id
            s.add(row)
        batch.status = "queued"
        batch.revision += 1
        job = Job(kind="classify", payload={"batch_id": batch_id, "model_id": batch.model_id}, owner=user,
                  batch_id=batch_id, progress_total=found.readable, max_attempts=jobs.DEFAULT_MAX_ATTEMPTS)
        s.add(job)
        s.flush()
        audit.record(s, user, "add files", f"batch {batch_id}", images=len(found.rows), failed=len(found.errors),
                     skipped=len(found.skipped))
        return jobs.Submitted(batch_id, job.id, len(found.rows), found.errors, found.skipped)
