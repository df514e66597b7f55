"""The job queue in the database: submit, claim, heartbeat, progress, cancel, finish, fail, retry.

- **Claim** is race-free: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED``; on SQLite every
  transaction starts with ``BEGIN IMMEDIATE`` (see :mod:`db.session`), so claims are serialised.
- **Order** among queued jobs: first the owner served least recently (the owner whose latest job started
  earliest, or never), then higher priority, then older. One person's 100,000-cell batch does not hold up
  a colleague's 20 cells.
- **Leases**: a claimed job carries ``lease_expires``; the worker renews it by heartbeat. A job whose lease
  ran out (its worker died) goes back to the queue, keeping the error, until ``max_attempts``; then it fails.
- **Cancel**: a queued job at once; a running one at its worker's next chunk.

Every function takes a session factory and runs its own short transaction, unless it says otherwise.
"""
from __future__ import annotations

import getpass
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db import audit
from db.schema import Batch, Image, Job, Model, utcnow
from lsm_core import accounts
from lsm_core.blobs import BlobStore
from lsm_core.config import Limits
from lsm_core.errors import LsmError
from lsm_core.images import RawFile, decode_raw

DEFAULT_LEASE_S = 60.0
DEFAULT_MAX_ATTEMPTS = 3
SEXES = {"F", "M"}


def current_user() -> str:
    """Who is acting: LSM_USER, else the operating-system user."""
    return os.environ.get("LSM_USER") or getpass.getuser()


@dataclass
class BatchMeta:
    """Sample metadata of a batch (what comparisons across mice need)."""

    mouse_id: str | None = None
    age_days: float | None = None
    sex: str | None = None
    strain: str | None = None
    gate: str | None = None
    imaging_date: str | None = None
    notes: str | None = None
    pixel_size_um: float | None = None

    def validated(self) -> "BatchMeta":
        if self.age_days is not None:
            try:
                self.age_days = float(self.age_days)
            except (TypeError, ValueError):
                raise LsmError(f"age {self.age_days!r} is not a number of days") from None
            if not 0 <= self.age_days <= 365 * 10:
                raise LsmError(f"age {self.age_days:g} days is outside 0 to 3650 days")
        if self.sex is not None and self.sex != "":
            if self.sex.upper() not in SEXES:
                raise LsmError(f"sex {self.sex!r} must be F or M")
            self.sex = self.sex.upper()
        if self.imaging_date:
            try:
                datetime.strptime(self.imaging_date, "%Y-%m-%d")
            except ValueError:
                raise LsmError(f"imaging date {self.imaging_date!r} must be written YYYY-MM-DD") from None
        for name, limit in (("mouse_id", 100), ("strain", 200), ("gate", 200), ("notes", 20_000)):
            value = getattr(self, name)
            if value is not None and len(str(value)) > limit:
                raise LsmError(f"{name.replace('_', ' ')} is longer than {limit:,} characters")
        if self.pixel_size_um is not None and not self.pixel_size_um > 0:
            raise LsmError("pixel size must be a positive number of micrometres per pixel")
        return self


@dataclass
class Submitted:
    batch_id: int
    job_id: int
    images: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, message)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why): the same bytes are in the batch already


@dataclass
class ImageRows:
    """Image rows for uploaded files (not yet in a session), with the files that failed and those skipped."""

    rows: list[Image] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def readable(self) -> int:
        return sum(1 for r in self.rows if r.error is None)


def image_rows(files: Iterable[RawFile], blobs: BlobStore, limits: Limits,
               present: dict[str, str] | None = None) -> ImageRows:
    """Image rows for uploaded files: each file's bytes stored once, each decoded once to validate it; a file
    that fails becomes a row with its error. A file whose bytes are in ``present`` (sha256 -> the file name
    there: the batch's files) or earlier in ``files`` is skipped, never counted twice."""
    out = ImageRows()
    seen = dict(present or {})
    for raw in files:
        sha = blobs.put(raw.data) if raw.error is None and raw.data else None
        if sha is not None and sha in seen:
            same = seen[sha]
            out.skipped.append((raw.source, "the same file is in this batch already" + ("" if same == raw.source
                                                                                          else f" (as {same})")))
            continue
        if sha is not None:
            seen[sha] = raw.source
        for record in decode_raw(raw, limits):
            image = Image(
                position=len(out.rows), file=record.source, page=record.page + 1,
                sha256=sha if record.ok else record.sha256, width=record.width, height=record.height,
                bit_depth=record.bit_depth, error=record.error, done=not record.ok,
            )
            if not record.ok:
                image.n_cells = 0
                out.errors.append((record.source, record.error or ""))
            out.rows.append(image)
            record.pixels = None
    return out


def submit_batch(
    sessions: sessionmaker[Session],
    files: Iterable[RawFile],
    model_id: int,
    name: str,
    owner: str | None = None,
    meta: BatchMeta | None = None,
    blobs: BlobStore | None = None,
    limits: Limits | None = None,
    priority: int = 0,
) -> Submitted:
    """Store the files' bytes, then create the batch, its images and its classify job in one transaction.

    Every file is decoded once here to validate it; a file that fails becomes an image row with its error
    and the rest go on. Raises LsmError when nothing at all was uploaded or the model is unknown.
    """
    owner = owner or current_user()
    meta = (meta or BatchMeta()).validated()
    name = (name or "").strip()
    if not name:
        raise LsmError("the batch needs a name")
    if len(name) > 200:
        raise LsmError("the batch name is longer than 200 characters")
    found = image_rows(files, blobs or BlobStore(), limits or Limits.from_env())
    rows, errors, readable = found.rows, found.errors, found.readable
    if not rows:
        raise LsmError("no files were uploaded")
    with sessions.begin() as s:
        model = s.get(Model, model_id)
        if model is None or model.deleted:
            raise LsmError("the chosen model no longer exists; pick another one")
        batch = Batch(name=name, owner=owner, model_id=model.id, status="queued" if readable else "failed", **vars(meta))
        batch.images = rows
        s.add(batch)
        s.flush()
        job = Job(
            kind="classify", payload={"batch_id": batch.id, "model_id": model.id}, owner=owner, batch_id=batch.id,
            priority=priority, progress_total=readable, max_attempts=DEFAULT_MAX_ATTEMPTS,
            status="queued" if readable else "failed",
            error=None if readable else "none of the files could be read",
        )
        s.add(job)
        s.flush()
        audit.record(s, owner, "submit", f"batch {batch.id}", name=name, model=model.label, images=len(rows),
                     failed=len(errors), skipped=len(found.skipped))
        return Submitted(batch.id, job.id, len(rows), errors, found.skipped)


def submit_job(sessions: sessionmaker[Session], kind: str, payload: dict, owner: str | None = None, priority: int = 0,
               total: int = 0, batch_id: int | None = None) -> int:
    """Queue a job of any kind; returns its id."""
    with sessions.begin() as s:
        job = Job(kind=kind, payload=payload, owner=owner or current_user(), priority=priority, progress_total=total,
                  batch_id=batch_id, max_attempts=DEFAULT_MAX_ATTEMPTS)
        s.add(job)
        s.flush()
        if kind in ("train", "evaluate"):
            target = f"model {payload.get('name')}" if kind == "train" else f"model id {payload.get('model_id')}"
            audit.record(s, job.owner, kind, target, job=job.id)
        return job.id


def _order_columns():
    last_served = (
        select(Job.owner.label("owner"), func.max(Job.started).label("last"))
        .where(Job.started.is_not(None))
        .group_by(Job.owner)
        .subquery()
    )
    never = datetime(1970, 1, 1)
    order = (func.coalesce(last_served.c.last, never).asc(), Job.priority.desc(), Job.created.asc(), Job.id.asc())
    return last_served, order


def reap_expired(s: Session, now: datetime) -> int:
    """Within ``s``: jobs whose lease ran out go back to the queue (or fail after max attempts)."""
    expired = s.scalars(
        select(Job).where(Job.status == "running", Job.lease_expires < now).with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        message = f"attempt {job.attempts}: worker {job.worker_id} stopped answering (its lease ran out)"
        job.errors = [*(job.errors or []), message]
        job.worker_id = None
        job.lease_expires = None
        if job.cancel_requested:
            job.status, job.finished = "cancelled", now
        elif job.attempts >= job.max_attempts:
            job.status, job.error, job.finished = "failed", f"gave up after {job.attempts} attempts: {message}", now
        else:
            job.status = "queued"
    return len(expired)


def claim(
    sessions: sessionmaker[Session], worker_id: str, kinds: Iterable[str] | None = None, lease_s: float = DEFAULT_LEASE_S
) -> Job | None:
    """Take the next job (see the module docstring for the order), or None when there is none."""
    now = utcnow()
    with sessions.begin() as s:
        reap_expired(s, now)
        last_served, order = _order_columns()
        query = (
            select(Job)
            .outerjoin(last_served, last_served.c.owner == Job.owner)
            .where(Job.status == "queued", Job.cancel_requested.is_(False))
            .order_by(*order)
            .limit(1)
        )
        if kinds:
            query = query.where(Job.kind.in_(list(kinds)))
        if s.bind.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=Job)
        job = s.scalars(query).first()
        if job is None:
            return None
        job.status = "running"
        job.worker_id = worker_id
        job.attempts += 1
        job.started = now
        job.lease_expires = now + timedelta(seconds=lease_s)
        if job.batch_id is not None:
            s.execute(update(Batch).where(Batch.id == job.batch_id).values(status="running"))
        s.flush()
        s.expunge(job)
        return job


def renew_lease(s: Session, job_id: int, worker_id: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
    """Within ``s``: extend the lease; False when this worker no longer holds the job."""
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
        .values(lease_expires=utcnow() + timedelta(seconds=lease_s))
    )
    return result.rowcount == 1


def heartbeat(sessions: sessionmaker[Session], job_id: int, worker_id: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
    with sessions.begin() as s:
        return renew_lease(s, job_id, worker_id, lease_s)


def set_progress(s: Session, job_id: int, done: int, total: int | None = None) -> None:
    values = {"progress_done": done}
    if total is not None:
        values["progress_total"] = total
    s.execute(update(Job).where(Job.id == job_id).values(**values))


def cancel(sessions: sessionmaker[Session], job_id: int, user: str) -> str:
    """Cancel a job (its owner or an administrator): a queued one at once, a running one at its next chunk.
    Returns the status after."""
    with sessions.begin() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LsmError(f"no job {job_id}")
        if not accounts.may_change(s, user, job.owner):
            raise LsmError(f"job {job_id} belongs to {job.owner}; only they or an administrator can cancel it")
        if job.status in ("queued", "running"):
            audit.record(s, user, "cancel", f"job {job_id}", kind=job.kind, owner=job.owner)
        if job.status == "queued":
            job.status, job.finished = "cancelled", utcnow()
            if job.batch_id:
                s.execute(update(Batch).where(Batch.id == job.batch_id).values(status="cancelled"))
        elif job.status == "running":
            job.cancel_requested = True
        return job.status


def finish(s: Session, job_id: int, worker_id: str, status: str = "done", error: str | None = None) -> bool:
    """Within ``s``: end a job this worker holds (done, failed or cancelled). False if it no longer holds it."""
    now = utcnow()
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
        .values(status=status, finished=now, lease_expires=None, error=error)
    )
    if result.rowcount != 1:
        return False
    job = s.get(Job, job_id)
    if error:
        job.errors = [*(job.errors or []), f"attempt {job.attempts}: {error}"]
    if job.batch_id is not None:
        s.execute(update(Batch).where(Batch.id == job.batch_id).values(status=status))
    return True


def fail_or_retry(sessions: sessionmaker[Session], job_id: int, worker_id: str, error: str, retry: bool) -> str:
    """A job that raised: back to the queue while attempts remain (if ``retry``), else failed."""
    with sessions.begin() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.worker_id != worker_id or job.status != "running":
            return job.status if job else "gone"
        if retry and job.attempts < job.max_attempts:
            job.errors = [*(job.errors or []), f"attempt {job.attempts}: {error}"]
            job.status, job.worker_id, job.lease_expires = "queued", None, None
            return "queued"
    with sessions.begin() as s:
        finish(s, job_id, worker_id, "failed", error)
    return "failed"


def release(sessions: sessionmaker[Session], job_id: int, worker_id: str) -> None:
    """Give a running job back to the queue (a clean stop: the attempt does not count)."""
    with sessions.begin() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
            .values(status="queued", worker_id=None, lease_expires=None,
                    attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0))
        )


def queued_order(s: Session, kinds: Iterable[str] | None = None) -> list[int]:
    """Ids of the queued jobs in the order workers will take them."""
    last_served, order = _order_columns()
    query = (
        select(Job.id).outerjoin(last_served, last_served.c.owner == Job.owner)
        .where(Job.status == "queued", Job.cancel_requested.is_(False)).order_by(*order)
    )
    if kinds:
        query = query.where(Job.kind.in_(list(kinds)))
    return list(s.scalars(query))


def throughput(s: Session, kind: str = "classify", recent: int = 20) -> float | None:
    """Images per second over the most recent finished jobs of ``kind`` (None before any)."""
    rows = s.execute(
        select(Job.progress_total, Job.started, Job.finished)
        .where(Job.kind == kind, Job.status == "done", Job.started.is_not(None), Job.finished.is_not(None))
        .order_by(Job.finished.desc()).limit(recent)
    ).all()
    items = sum(r[0] for r in rows)
    seconds = sum(max((r[2] - r[1]).total_seconds(), 1e-3) for r in rows)
    return items / seconds if rows and items else None


@dataclass
class QueueInfo:
    status: str
    position: int | None  # 1 = next; None when not queued
    done: int
    total: int
    eta_s: float | None
    error: str | None


def queue_info(sessions: sessionmaker[Session], job_id: int) -> QueueInfo:
    """Where a job stands: status, position in the queue, progress and an ETA from measured throughput."""
    with sessions() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LsmError(f"no job {job_id}")
        rate = throughput(s, job.kind)
        position = None
        ahead_items = 0
        if job.status == "queued":
            order = queued_order(s, [job.kind])
            if job.id in order:
                position = order.index(job.id) + 1
                ahead_ids = order[: position - 1]
                if ahead_ids:
                    ahead_items = s.scalar(select(func.coalesce(func.sum(Job.progress_total - Job.progress_done), 0)).where(Job.id.in_(ahead_ids))) or 0
            running_left = s.scalar(
                select(func.coalesce(func.sum(Job.progress_total - Job.progress_done), 0)).where(Job.status == "running", Job.kind == job.kind)
            ) or 0
            ahead_items += running_left
        remaining = job.progress_total - job.progress_done
        eta = None
        if rate and job.status in ("queued", "running"):
            eta = (ahead_items + remaining) / rate
        return QueueInfo(job.status, position, job.progress_done, job.progress_total, eta, job.error)



def store_uploads(files: Iterable[RawFile], blobs: BlobStore | None = None) -> list[dict]:
    """Keep uploaded files whole in the blob store (a training ZIP is unpacked by the worker)."""
    blobs = blobs or BlobStore()
    out = []
    for raw in files:
        if raw.error is not None or not raw.data:
            raise LsmError(f"{raw.source}: {raw.error or 'the file is empty'}")
        out.append({"name": raw.source, "sha256": blobs.put(raw.data)})
    return out


def submit_training(
    sessions: sessionmaker[Session], task: str, name: str, config: dict, owner: str | None = None,
    uploads: list[dict] | None = None, batches: dict[int, str] | None = None, test_uploads: list[dict] | None = None,
    priority: int = 0,
) -> int:
    """Queue a training job (administrators only: it registers a model): data from uploaded labelled ZIPs
    (see :func:`store_uploads`) and/or labelled batches."""
    from lsm_core.models import check_name
    from lsm_core.tasks import task_classes

    task_classes(task)
    check_name(name)
    if not uploads and not batches:
        raise LsmError("choose training data: a labelled ZIP or labelled batches")
    with sessions() as s:
        accounts.require_admin(s, owner or current_user(), "train models")
    payload = {"task": task, "name": name, "config": config, "uploads": uploads or [],
               "batches": {str(k): v for k, v in (batches or {}).items()}, "test_uploads": test_uploads or []}
    return submit_job(sessions, "train", payload, owner=owner, priority=priority, total=int(config.get("epochs", 20)))


def submit_evaluation(sessions: sessionmaker[Session], model_id: int, uploads: list[dict], owner: str | None = None) -> int:
    if not uploads:
        raise LsmError("choose a labelled test ZIP")
    return submit_job(sessions, "evaluate", {"model_id": model_id, "uploads": uploads}, owner=owner, total=1)


def submit_saliency(sessions: sessionmaker[Session], batch_id: int, method: str, top: int | None = None,
                    owner: str | None = None) -> int:
    """Queue saliency maps for a batch: every cell, or the ``top`` highest-scoring cells of each class."""
    from lsm_core.saliency import METHODS

    if method not in METHODS:
        raise LsmError(f"unknown saliency method {method!r}; choose {', '.join(METHODS)}")
    with sessions() as s:
        if s.get(Batch, batch_id) is None:
            raise LsmError(f"batch {batch_id} does not exist")
    return submit_job(sessions, "saliency", {"batch_id": batch_id, "method": method, "top": top}, owner=owner,
                      batch_id=None, total=0)
