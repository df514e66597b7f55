"""The worker: a loop that claims jobs from the database and runs each through its task. Never imports Streamlit.

``python -m lsm_core worker [--device cuda:0|cpu] [--kinds classify,saliency] [--drain]``

The loop holds no task body (what a job does is :mod:`lsm_core.lab.tasks`); it claims, keeps its heartbeat
row and the job's lease fresh (a background thread), handles signals, owns the retry policy
(:class:`lsm_core.lab.retry.Retry`: only a lost connection is waited out) and turns a task's outcome into the
job's state:

- returned: done (with the returned result), unless the task finished the job itself;
- :class:`LsmError` (something a person can fix: a deleted model, a damaged file): failed, not retried;
- cancelled on request, or ended as cancelled when its batch was deleted: cancelled; the lease lost to another
  worker: left to it;
- SIGTERM or SIGINT: the task stops at its next step, the job goes back to the queue, the worker exits;
- anything else (a bug, a crash of the library): back to the queue while attempts remain, else failed,
  each attempt's error kept.

A claim that fails for any other reason than a lost connection stops the worker with the error: a bug
must not make it loop forever.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterable

from db.schema import Job, utcnow
from db.schema import Worker as WorkerRow
from lsm_core.errors import LsmError
from lsm_core.imaging.prepare import default_workers
from lsm_core.lab import jobs, tasks
from lsm_core.lab.jobs import JobKind, JobStatus
from lsm_core.lab.lab import Lab
from lsm_core.lab.retry import DEFAULT_SECONDS, Retry, connection_lost
from lsm_core.lab.tasks.context import (
    Cancelled,
    Context,
    JobLost,
    ModelCache,
    ModelRefused,
    Preparation,
    Stopping,
)

log = logging.getLogger("lsm_core.worker")
ALL_KINDS = tuple(k.value for k in JobKind)


class Worker:
    def __init__(
        self,
        lab: Lab,
        device: str | None = None,
        kinds: Iterable[str] = ALL_KINDS,
        lease_s: float = jobs.DEFAULT_LEASE_S,
        poll_s: float = 1.0,
        cache_size: int = 3,
        worker_id: str | None = None,
        batch_size: int | None = None,
        db_retry_s: float = DEFAULT_SECONDS,
        prep_workers: int | None = None,
    ) -> None:
        from lsm_core.ml.predict import choose_device

        self.lab = lab
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(ALL_KINDS)
        if unknown:
            raise LsmError(f"unknown job kinds {sorted(unknown)}; this worker runs {', '.join(ALL_KINDS)}")
        self.device = choose_device(device or lab.settings.device)
        self.lease_s, self.poll_s = lease_s, poll_s
        self.retry = Retry(db_retry_s)
        self.host = socket.gethostname()
        self.id = worker_id or f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.models = ModelCache(lab, self.device, cache_size, batch_size, worker_id=self.id)
        self.refused_jobs: set[int] = set()  # given back after a model's self-test failed here: for other workers
        if prep_workers is None:  # the setting, else the host's cores minus one as memory allows
            prep_workers = lab.settings.prep_workers
        self.prep = Preparation(default_workers(lab.limits) if prep_workers is None else prep_workers)
        self.stop = threading.Event()
        self.current_job: int | None = None

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log.info("signal %s: finishing the current step, then stopping", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # --- heartbeat ----------------------------------------------------------------------------------
    def _beat(self, stopped: bool = False) -> None:
        with self.lab.begin() as s:
            row = s.get(WorkerRow, self.id)
            if row is None:
                row = WorkerRow(
                    id=self.id, host=self.host, pid=os.getpid(), device=str(self.device), kinds=",".join(self.kinds)
                )
                s.add(row)
            row.last_seen = utcnow()
            row.current_job_id = self.current_job
            row.stopped = stopped
            if self.current_job is not None:
                jobs.renew_lease(s, self.current_job, self.id, self.lease_s)

    def _beat_now(self, stopped: bool = False) -> None:
        """Tell the app at once what this worker does (the heartbeat thread would say it only seconds later)."""
        try:
            self._beat(stopped)
        except Exception as exc:  # the database may be restarting; the heartbeat thread tries again
            log.warning("heartbeat failed: %s", exc)

    def _heartbeat_loop(self, done: threading.Event) -> None:
        while not done.wait(min(self.lease_s / 3, 10.0)):
            self._beat_now()

    # --- the loop -----------------------------------------------------------------------------------
    def _claim(self) -> Job | None:
        """The next job, or None when there is none (or the worker is stopping); waits while the database is
        unreachable, and raises anything else."""
        while not self.stop.is_set():
            try:
                return jobs.claim(
                    self.lab, self.id, self.kinds, self.lease_s, list(self.models.refused), list(self.refused_jobs)
                )
            except Exception as exc:
                if not connection_lost(exc):
                    raise
                log.warning("could not claim a job (the database is unreachable): %s", exc)
                self.stop.wait(self.poll_s)
        return None

    def run(self, drain: bool = False, max_jobs: int | None = None) -> int:
        """Claim and run jobs until stopped (or, with ``drain``, until the queue is empty). Returns jobs run."""
        beats_done = threading.Event()
        beater = threading.Thread(target=self._heartbeat_loop, args=(beats_done,), daemon=True)
        self.retry("registering the worker", lambda _: self._beat())
        beater.start()
        n = 0
        try:
            while not self.stop.is_set():
                job = self._claim()
                if job is None:
                    if drain:
                        break
                    self.stop.wait(self.poll_s)
                    continue
                try:
                    self.run_job(job)
                except Exception:  # its outcome could not be written: the lease runs out, the job is retried
                    log.exception("job %s: its outcome could not be recorded", job.id)
                n += 1
                if max_jobs is not None and n >= max_jobs:
                    break
        finally:
            beats_done.set()
            self.prep.close()
            self.current_job = None
            self._beat_now(stopped=True)
        return n

    def run_job(self, job: Job) -> None:
        """Run one claimed job through its task and record how it ended."""
        self.current_job = job.id
        self._beat_now()
        log.info("job %s (%s) claimed, attempt %s", job.id, job.kind, job.attempts)
        ctx = Context(self.lab, job, self.id, self.retry, self.models, self.stop, self.lease_s, self.prep)
        try:
            result = tasks.find(job.kind)(ctx, job.payload)
            if not ctx.finished:
                ctx.finish(result)
            log.info("job %s done", job.id)
        except Cancelled:
            self.retry("cancelling a job", lambda _: self._end(job.id, JobStatus.CANCELLED))
            log.info("job %s cancelled", job.id)
        except JobLost:
            log.warning("job %s: lease lost; another worker has it", job.id)
        except ModelRefused as exc:  # before LsmError: not the job's fault, another worker may run it
            self.refused_jobs.add(job.id)
            self.retry("releasing a job", lambda _: jobs.release(self.lab, job.id, self.id))
            log.error("job %s given back to the queue for another worker: %s", job.id, exc)
        except LsmError as exc:
            reason = str(exc)
            status = self.retry(
                "failing a job", lambda _: jobs.fail_or_retry(self.lab, job.id, self.id, reason, retry=False)
            )
            if status == JobStatus.FAILED:
                log.warning("job %s failed: %s", job.id, reason)
            else:  # ended meanwhile: cancelled as its batch was deleted (lsm_core.lab.batches.delete)
                log.info("job %s %s (%s)", job.id, status, reason)
        except Stopping:
            self.retry("releasing a job", lambda _: jobs.release(self.lab, job.id, self.id))
            log.info("job %s released back to the queue", job.id)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            status = self.retry(
                "failing a job", lambda _: jobs.fail_or_retry(self.lab, job.id, self.id, message, retry=True)
            )
            log.exception("job %s raised; now %s", job.id, status)
        finally:
            self.current_job = None
            self._beat_now()

    def _end(self, job_id: int, status: JobStatus) -> None:
        with self.lab.begin() as s:
            jobs.finish(s, job_id, self.id, status)
