"""The job queue in the database, and nothing else: submit, claim, renew a lease, progress, finish, fail, retry,
release, cancel, and where a job stands. What a job does is a task (lsm_core.lab.tasks); batches, which
queue classify jobs, are lsm_core.lab.batches.

- **Claim** is race-free: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED``; on SQLite every
  transaction starts with ``BEGIN IMMEDIATE`` (see :mod:`db.session`), so claims are serialised.
- **Order** among queued jobs: first the owner served least recently (the owner whose latest job started
  earliest, or never), then higher priority, then older. One person's 100,000-cell batch does not hold up
  a colleague's 20 cells.
- **Leases**: a claimed job carries ``lease_expires``; the worker renews it by heartbeat. A job whose lease
  ran out (its worker died) goes back to the queue, keeping the error, until ``max_attempts``; then it fails.
- **Cancel**: a queued job at once; a running one at its worker's next chunk.
- **A batch's status** follows its classify jobs only (queued, running, done, failed, cancelled): a small job
  about one of its cells (adding a cell) never changes it, whether it runs, fails or ends.

Statuses and kinds are string enums (:class:`JobStatus`, :class:`JobKind`, defined with the schema in
:mod:`db.schema` and used from here), stored as their text in the jobs table's columns. Functions that take a
``Lab`` (or any session factory) run their own short transaction; those that take a ``Session`` work inside the
caller's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, case, func, or_, select, update
from sqlalchemy.orm import Session

from db import audit
from db.schema import Batch, Job, JobKind, JobStatus, utcnow
from lsm_core.errors import LsmError
from lsm_core.lab import accounts
from lsm_core.lab.lab import Lab

DEFAULT_LEASE_S = 60.0
DEFAULT_MAX_ATTEMPTS = 3


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
ENDED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


def new_job(
    kind: JobKind,
    payload: dict[str, Any],
    owner: str,
    priority: int = 0,
    total: int = 0,
    batch_id: int | None = None,
    status: JobStatus = JobStatus.QUEUED,
    error: str | None = None,
) -> Job:
    """A Job row to add in the caller's transaction (the one place a job is made). Its ``owner`` is always
    given, by whoever submits (the command line's person, the signed-in or lab-mode user of the app): LsmError
    when it is blank, never a name guessed here."""
    if not owner or not owner.strip():
        raise LsmError("a job needs an owner: say who submits it")
    return Job(
        kind=JobKind(kind).value,
        payload=payload,
        owner=owner,
        priority=priority,
        progress_total=total,
        batch_id=batch_id,
        max_attempts=DEFAULT_MAX_ATTEMPTS,
        status=JobStatus(status),
        error=error,
    )


def submit(
    lab: Lab,
    kind: JobKind,
    payload: dict[str, Any],
    owner: str,
    priority: int = 0,
    total: int = 0,
    batch_id: int | None = None,
    audit_as: tuple[str, str] | None = None,
) -> int:
    """Queue a job in its own transaction; returns its id. ``audit_as`` (action, target) records it in the
    audit trail in the same transaction."""
    with lab.begin() as s:
        if kind == JobKind.TRAIN:  # training registers a model: checked here too, whoever called (and at run)
            accounts.require_admin(lab, s, owner, "train models")
        job = new_job(kind, payload, owner, priority, total, batch_id)
        s.add(job)
        s.flush()
        if audit_as:
            audit.record(s, owner, audit_as[0], audit_as[1], job=job.id)
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


def _batch_follows(s: Session, job: Job, status: JobStatus) -> None:
    """Within ``s``: the batch of ``job`` takes ``status`` when ``job`` is one of its classify jobs (the jobs that
    read its images); any other job of a batch (an added cell) leaves the batch's status as it is."""
    if job.batch_id is not None and job.kind == JobKind.CLASSIFY:
        s.execute(update(Batch).where(Batch.id == job.batch_id).values(status=status))


def reap_expired(s: Session, now: datetime) -> int:
    """Within ``s``: jobs whose lease ran out go back to the queue (or fail after max attempts)."""
    expired = s.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING, Job.lease_expires < now).with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        message = f"attempt {job.attempts}: worker {job.worker_id} stopped answering (its lease ran out)"
        job.errors = [*(job.errors or []), message]
        job.worker_id = None
        job.lease_expires = None
        if job.cancel_requested:
            job.status, job.finished = JobStatus.CANCELLED, now
            _batch_follows(s, job, JobStatus.CANCELLED)
        elif job.attempts >= job.max_attempts:
            job.status, job.error, job.finished = (
                JobStatus.FAILED,
                f"gave up after {job.attempts} attempts: {message}",
                now,
            )
            _batch_follows(s, job, JobStatus.FAILED)
        else:
            job.status = JobStatus.QUEUED
    return len(expired)


def claim(
    lab: Lab,
    worker_id: str,
    kinds: Iterable[str] | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    refused_models: Iterable[int] = (),
    refused_jobs: Iterable[int] = (),
) -> Job | None:
    """Take the next job (see the module docstring for the order), or None when there is none. A worker
    that refused a model (its self-test failed there: lsm_core.ml.selftest) leaves the jobs of batches
    classified by it, and the jobs it gave back, to other workers."""
    now = utcnow()
    with lab.begin() as s:
        reap_expired(s, now)
        last_served, order = _order_columns()
        query = (
            select(Job)
            .outerjoin(last_served, last_served.c.owner == Job.owner)
            .where(Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
            .order_by(*order)
            .limit(1)
        )
        if kinds:
            query = query.where(Job.kind.in_(list(kinds)))
        if refused_jobs := list(refused_jobs):
            query = query.where(Job.id.not_in(refused_jobs))
        if refused_models := list(refused_models):
            of_refused = select(Batch.id).where(Batch.model_id.in_(refused_models))
            query = query.where(or_(Job.batch_id.is_(None), Job.batch_id.not_in(of_refused)))
        if s.bind.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=Job)
        job = s.scalars(query).first()
        if job is None:
            return None
        job.status = JobStatus.RUNNING
        job.worker_id = worker_id
        job.attempts += 1
        job.started = now
        job.lease_expires = now + timedelta(seconds=lease_s)
        _batch_follows(s, job, JobStatus.RUNNING)
        s.flush()
        s.expunge(job)
        return job


def renew_lease(s: Session, job_id: int, worker_id: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
    """Within ``s``: extend the lease; False when this worker no longer holds the job."""
    result = cast(
        CursorResult[Any],  # an UPDATE gives a CursorResult; Session.execute is typed as the general Result
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
            .values(lease_expires=utcnow() + timedelta(seconds=lease_s))
        ),
    )
    return result.rowcount == 1


def set_progress(s: Session, job_id: int, done: int, total: int | None = None) -> None:
    values = {"progress_done": done}
    if total is not None:
        values["progress_total"] = total
    s.execute(update(Job).where(Job.id == job_id).values(**values))


def cancel(lab: Lab, job_id: int, user: str) -> str:
    """Cancel a job (its owner or an administrator): a queued one at once, a running one at its next chunk.
    Returns the status after."""
    with lab.begin() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LsmError(f"no job {job_id}")
        if not accounts.may_change(lab, s, user, job.owner):
            raise LsmError(f"job {job_id} belongs to {job.owner}; only they or an administrator can cancel it")
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            audit.record(s, user, "cancel", f"job {job_id}", kind=job.kind, owner=job.owner)
        if job.status == JobStatus.QUEUED:
            job.status, job.finished = JobStatus.CANCELLED, utcnow()
            _batch_follows(s, job, JobStatus.CANCELLED)
        elif job.status == JobStatus.RUNNING:
            job.cancel_requested = True
        return job.status


def finish(
    s: Session, job_id: int, worker_id: str, status: JobStatus = JobStatus.DONE, error: str | None = None
) -> bool:
    """Within ``s``: end a job this worker holds (done, failed or cancelled). False if it no longer holds it."""
    now = utcnow()
    result = cast(
        CursorResult[Any],  # an UPDATE gives a CursorResult; Session.execute is typed as the general Result
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
            .values(status=status, finished=now, lease_expires=None, error=error)
        ),
    )
    if result.rowcount != 1:
        return False
    job = s.get(Job, job_id)
    assert job is not None  # the UPDATE above just matched this row, and it stays locked until ``s`` commits
    if error:
        job.errors = [*(job.errors or []), f"attempt {job.attempts}: {error}"]
    _batch_follows(s, job, status)
    return True


def fail_or_retry(lab: Lab, job_id: int, worker_id: str, error: str, retry: bool) -> str:
    """A job that raised: back to the queue while attempts remain (if ``retry``), else failed."""
    with lab.begin() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.worker_id != worker_id or job.status != JobStatus.RUNNING:
            return job.status if job else "gone"
        if retry and job.attempts < job.max_attempts:
            job.errors = [*(job.errors or []), f"attempt {job.attempts}: {error}"]
            job.status, job.worker_id, job.lease_expires = JobStatus.QUEUED, None, None
            return JobStatus.QUEUED
    with lab.begin() as s:
        finish(s, job_id, worker_id, JobStatus.FAILED, error)
    return JobStatus.FAILED


def release(lab: Lab, job_id: int, worker_id: str) -> None:
    """Give a running job back to the queue (a clean stop: the attempt does not count)."""
    with lab.begin() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
            .values(
                status=JobStatus.QUEUED,
                worker_id=None,
                lease_expires=None,
                attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
            )
        )


def queued_order(s: Session, kinds: Iterable[str] | None = None) -> list[int]:
    """Ids of the queued jobs in the order workers will take them."""
    last_served, order = _order_columns()
    query = (
        select(Job.id)
        .outerjoin(last_served, last_served.c.owner == Job.owner)
        .where(Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
        .order_by(*order)
    )
    if kinds:
        query = query.where(Job.kind.in_(list(kinds)))
    return list(s.scalars(query))


def throughput(s: Session, kind: str = "classify", recent: int = 20) -> float | None:
    """Images per second over the most recent finished jobs of ``kind`` (None before any)."""
    rows = s.execute(
        select(Job.progress_total, Job.started, Job.finished)
        .where(Job.kind == kind, Job.status == JobStatus.DONE, Job.started.is_not(None), Job.finished.is_not(None))
        .order_by(Job.finished.desc())
        .limit(recent)
    ).all()
    items = sum(total for total, _, _ in rows)
    seconds = sum(
        max((finished - started).total_seconds(), 1e-3)
        for _, started, finished in rows
        if started is not None and finished is not None  # always: the query asks for both
    )
    return items / seconds if rows and items else None


@dataclass
class QueueInfo:
    status: str
    position: int | None  # 1 = next; None when not queued
    done: int
    total: int
    eta_s: float | None
    error: str | None
    owner: str = ""


def queue_info(lab: Lab, job_id: int) -> QueueInfo:
    """Where a job stands: status, position in the queue, progress and an ETA from measured throughput."""
    with lab() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LsmError(f"no job {job_id}")
        rate = throughput(s, job.kind)
        position = None
        ahead_items = 0
        if job.status == JobStatus.QUEUED:
            order = queued_order(s, [job.kind])
            if job.id in order:
                position = order.index(job.id) + 1
                ahead_ids = order[: position - 1]
                if ahead_ids:
                    ahead_items = (
                        s.scalar(
                            select(func.coalesce(func.sum(Job.progress_total - Job.progress_done), 0)).where(
                                Job.id.in_(ahead_ids)
                            )
                        )
                        or 0
                    )
            running_left = (
                s.scalar(
                    select(func.coalesce(func.sum(Job.progress_total - Job.progress_done), 0)).where(
                        Job.status == JobStatus.RUNNING, Job.kind == job.kind
                    )
                )
                or 0
            )
            ahead_items += running_left
        remaining = max(job.progress_total - job.progress_done, 0)
        eta = None
        if rate and job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            eta = (ahead_items + remaining) / rate
        total = max(job.progress_total, 0)
        done = min(max(job.progress_done, 0), total)  # what a progress bar can show, whatever a row holds
        return QueueInfo(job.status, position, done, total, eta, job.error, job.owner)
