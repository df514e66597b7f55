"""What people do to batches after submitting them: find, rename, delete, re-run, add files.

Ownership is checked here, not only by hiding buttons: a member changes only their own batches, an
administrator anyone's (see :mod:`lsm_core.accounts`). Everyone may re-run any batch into a new one of their own.
"""
from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db import audit
from db.schema import Batch, Image, Job, Model
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


def _own(s: Session, batch_id: int, user: str) -> Batch:
    batch = s.get(Batch, batch_id)
    if batch is None:
        raise LsmError(f"batch {batch_id} no longer exists")
    if not accounts.may_change(s, user, batch.owner):
        raise LsmError(f"batch {batch.name!r} belongs to {batch.owner}; only they or an administrator can change it")
    return batch


def rename(sessions: sessionmaker[Session], batch_id: int, new_name: str, user: str) -> None:
    new_name = (new_name or "").strip()
    if not new_name or len(new_name) > 200:
        raise LsmError("a batch name needs 1 to 200 characters")
    with sessions.begin() as s:
        batch = _own(s, batch_id, user)
        audit.record(s, user, "rename", f"batch {batch_id}", old=batch.name, new=new_name)
        batch.name = new_name


def delete(sessions: sessionmaker[Session], batch_id: int, user: str) -> None:
    """Delete a batch with its images and cells; its queued or running jobs are cancelled."""
    with sessions.begin() as s:
        batch = _own(s, batch_id, user)
        s.execute(
            update(Job).where(Job.batch_id == batch_id, Job.status == "queued").values(status="cancelled", finished=func.now())
        )
        s.execute(update(Job).where(Job.batch_id == batch_id, Job.status == "running").values(cancel_requested=True))
        audit.record(s, user, "delete", f"batch {batch_id}", name=batch.name, owner=batch.owner)
        s.delete(batch)


def rerun(sessions: sessionmaker[Session], batch_id: int, model_id: int, user: str) -> jobs.Submitted:
    """A new batch with the same images and metadata, classified by another model (version)."""
    with sessions.begin() as s:
        old = s.get(Batch, batch_id)
        if old is None:
            raise LsmError(f"batch {batch_id} no longer exists")
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
        batch = Batch(
            name=f"{old.name} ({model.name} v{model.version})", owner=user, model_id=model.id, status="queued",
            mouse_id=old.mouse_id, age_days=old.age_days, sex=old.sex, strain=old.strain, gate=old.gate,
            imaging_date=old.imaging_date, notes=old.notes, pixel_size_um=old.pixel_size_um,
        )
        batch.images = copies
        s.add(batch)
        s.flush()
        job = Job(kind="classify", payload={"batch_id": batch.id, "model_id": model.id}, owner=user, batch_id=batch.id,
                  progress_total=readable, max_attempts=jobs.DEFAULT_MAX_ATTEMPTS)
        s.add(job)
        s.flush()
        audit.record(s, user, "rerun", f"batch {batch.id}", source=batch_id, model=model.label)
        return jobs.Submitted(batch.id, job.id, len(copies), [])


def add_files(
    sessions: sessionmaker[Session],
    batch_id: int,
    files: Iterable[RawFile],
    user: str,
    blobs: BlobStore | None = None,
    limits: Limits | None = None,
) -> jobs.Submitted:
    """Add files to one of ``user``'s batches and queue a job that classifies the new images."""
    rows, errors = jobs.image_rows(files, blobs or BlobStore(), limits or Limits.from_env())
    if not rows:
        raise LsmError("no files were uploaded")
    with sessions.begin() as s:
        batch = _own(s, batch_id, user)
        start = (s.scalar(select(func.max(Image.position)).where(Image.batch_id == batch_id)) or 0) + 1
        for i, row in enumerate(rows):
            row.position = start + i
            row.batch_id = batch_id
            s.add(row)
        readable = sum(1 for r in rows if r.error is None)
        batch.status = "queued"
        job = Job(kind="classify", payload={"batch_id": batch_id, "model_id": batch.model_id}, owner=user,
                  batch_id=batch_id, progress_total=readable, max_attempts=jobs.DEFAULT_MAX_ATTEMPTS)
        s.add(job)
        s.flush()
        audit.record(s, user, "add files", f"batch {batch_id}", images=len(rows), failed=len(errors))
        return jobs.Submitted(batch_id, job.id, len(rows), errors)
