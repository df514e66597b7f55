"""What a task gets from the worker: :class:`Context`.

A task reads and writes the database only through ``ctx.read`` and ``ctx.write`` (each one transaction, under
the worker's retry policy; every write first checks that this worker still holds the job and that nobody
asked to cancel it, and renews the job's lease), reports progress, asks ``ctx.should_stop()`` between steps,
and gets loaded models from the worker's cache. It ends by returning its result (or calling ``ctx.finish``
to write more in the same transaction as the job's end).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.schema import Batch, Job, Model
from lsm_core.errors import LsmError
from lsm_core.lab import jobs
from lsm_core.lab.jobs import JobStatus
from lsm_core.lab.lab import Lab
from lsm_core.lab.retry import Retry

if TYPE_CHECKING:
    import torch

    from lsm_core.imaging.prepare import PrepPool
    from lsm_core.ml.models import ModelPackage
    from lsm_core.ml.predict import Predictor

T = TypeVar("T")


class JobLost(Exception):
    """This worker no longer holds the job (its lease ran out and another took it, or it was removed)."""


class Cancelled(Exception):
    """Someone asked to cancel the job: the worker marks it cancelled."""


class Stopping(Exception):
    """The worker is stopping (SIGTERM): the job goes back to the queue without counting an attempt."""


class ModelRefused(Exception):
    """This worker's self-test of the model failed (lsm_core.ml.selftest): the job goes back to the queue for
    another worker, and this one takes no more of that model's jobs."""


class Preparation:
    """The worker's pool of preparation processes (:class:`lsm_core.imaging.prepare.PrepPool`), started when a
    job first needs it and kept for the next jobs (a process costs a second to start), closed with the worker."""

    def __init__(self, workers: int) -> None:
        self.workers = max(0, int(workers))
        self._pool: PrepPool | None = None

    def pool(self) -> PrepPool:
        from lsm_core.imaging.prepare import PrepPool

        if self._pool is None:
            self._pool = PrepPool(self.workers)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class ModelCache:
    """Loaded models, a few at a time (least recently used goes first), keyed by the weights' sha256."""

    def __init__(
        self, lab: Lab, device: torch.device, size: int = 3, batch_size: int | None = None, worker_id: str = ""
    ) -> None:
        self.lab, self.device, self.size, self.batch_size = lab, device, size, batch_size
        self.worker_id = worker_id
        self._predictors: OrderedDict[str, Predictor] = OrderedDict()
        self.refused: dict[int, str] = {}  # model id -> why: its self-test failed on this worker

    def package(self, model: Model) -> ModelPackage:
        """The package of a Model row, checked against the row's sha256."""
        from lsm_core.lab.registry import package_for

        return package_for(model, self.lab.store)

    def predictor(self, model: Model) -> Predictor:
        from lsm_core.ml.predict import DEFAULT_BATCH_SIZE, make_predictor

        key = model.weights_sha256
        if key in self._predictors:
            self._predictors.move_to_end(key)
            return self._predictors[key]
        if model.id in self.refused:
            raise ModelRefused(self.refused[model.id])
        predictor = make_predictor(
            self.package(model),
            device=self.device,
            precision=self.lab.settings.precision,
            batch_size=self.batch_size or DEFAULT_BATCH_SIZE,
            runtime=self.lab.settings.runtime,
        )
        self.self_test(model, predictor)
        self._predictors[key] = predictor
        while len(self._predictors) > self.size:
            self._predictors.popitem(last=False)
        return predictor

    def self_test(self, model: Model, predictor: Predictor) -> None:
        """Run the model's self-test on this worker's device, precision and runtime, keep the outcome per worker
        and model version (``model_checks``, written where models are registered: lsm_core.lab.registry), and
        raise :class:`ModelRefused` when it failed."""
        import logging

        from lsm_core.lab.registry import record_self_test, store_self_test_reference
        from lsm_core.ml.selftest import check, reference

        ref = model.self_test
        if ref is None:  # registered where no reference was computed: computed here, as the reference is defined
            ref = reference(predictor.package)
            store_self_test_reference(self.lab, model.id, ref)
        outcome = check(predictor, model.task, ref)
        record_self_test(self.lab, self.worker_id, model.id, str(predictor.device), outcome)
        logger = logging.getLogger("lsm_core.worker")
        if outcome.passed:
            logger.info("model %s: %s", model.label, outcome.message)
            return
        message = f"model {model.label}: {outcome.message}"
        logger.error("%s", message)
        self.refused[model.id] = message
        raise ModelRefused(message)


def model_of(s: Session, batch: Batch) -> Model:
    """Within ``s``: the model a batch is classified with; LsmError when it was deleted."""
    model = s.get(Model, batch.model_id)
    if model is None or model.deleted:
        raise LsmError("the batch's model was deleted; re-run the batch with another model")
    return model


def batch_and_model(s: Session, batch_id: int) -> tuple[Batch, Model]:
    """Within ``s``: the batch a task works on and its model, detached (read after ``s`` ends); LsmError when
    either was deleted."""
    batch = s.get(Batch, batch_id)
    if batch is None:
        raise LsmError(f"batch {batch_id} was deleted")
    model = model_of(s, batch)
    s.expunge(model)
    return batch, model


@dataclass
class Context:
    lab: Lab
    job: Job  # detached: id, kind, owner, attempts, payload
    worker_id: str
    retry: Retry
    models: ModelCache
    stop: threading.Event
    lease_s: float = jobs.DEFAULT_LEASE_S
    prep: Preparation = field(default_factory=lambda: Preparation(0))  # the worker's (0: images read in-process)
    finished: bool = field(default=False, init=False)

    @property
    def device(self) -> torch.device:
        return self.models.device

    def should_stop(self) -> None:
        """Raise :class:`Stopping` when the worker is asked to stop (between steps of a task)."""
        if self.stop.is_set():
            raise Stopping()

    def read(self, what: str, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in a read-only session, under the retry policy."""

        def attempt(_attempt: int) -> T:
            with self.lab() as s:
                return fn(s)

        return self.retry(what, attempt)

    def write(self, what: str, fn: Callable[[Session, int], T]) -> T:
        """``fn(session, attempt)`` in one transaction that first checks the job is still this worker's and not
        cancelled, and renews its lease; under the retry policy (``attempt`` > 0: check whether a lost commit
        landed before writing again)."""

        def attempt(n: int) -> T:
            with self.lab.begin() as s:
                self.check(s)
                out = fn(s, n)
                jobs.renew_lease(s, self.job.id, self.worker_id, self.lease_s)
                return out

        return self.retry(what, attempt)

    def check(self, s: Session) -> None:
        """Within ``s``: raise :class:`JobLost` or :class:`Cancelled` when the job is no longer ours to run
        (cancelled: someone asked to, or ended it as its batch was deleted: lsm_core.lab.batches.delete)."""
        row = s.execute(select(Job.worker_id, Job.status, Job.cancel_requested).where(Job.id == self.job.id)).first()
        if row is not None and row.worker_id == self.worker_id and row.status == JobStatus.CANCELLED:
            raise Cancelled()
        if row is None or row.worker_id != self.worker_id or row.status != JobStatus.RUNNING:
            raise JobLost()
        if row.cancel_requested:
            raise Cancelled()

    def progress(self, done: int, total: int | None = None, result: dict[str, Any] | None = None) -> None:
        """Record how far the job is (and, e.g. for training, the latest figures as its interim result)."""

        def write(s: Session, _attempt: int) -> None:
            jobs.set_progress(s, self.job.id, done, total)
            if result is not None:
                s.execute(update(Job).where(Job.id == self.job.id).values(result=result))

        self.write("reporting progress", write)

    def model(self, model_id: int, what: str = "the model") -> Model:
        """A live Model row (detached); LsmError when it was deleted."""

        def read(s: Session) -> Model:
            model = s.get(Model, model_id)
            if model is None or model.deleted:
                raise LsmError(f"{what} was deleted")
            s.expunge(model)
            return model

        return self.read("reading a model", read)

    def finish(self, result: dict[str, Any] | None = None, before: Callable[[Session], None] | None = None) -> None:
        """Mark the job done, with ``result`` and after ``before(session)``, in one transaction (unless a lost
        commit of a previous try did it already)."""

        def attempt(n: int) -> None:
            with self.lab.begin() as s:
                if n and self._ended_by_us(s):
                    return
                self.check(s)
                if before is not None:
                    before(s)
                if result is not None:
                    s.execute(update(Job).where(Job.id == self.job.id).values(result=result))
                if not jobs.finish(s, self.job.id, self.worker_id, JobStatus.DONE):
                    self.check(s)  # Cancelled when its batch was deleted meanwhile (PostgreSQL: since check above)
                    raise JobLost()

        self.retry("finishing a job", attempt)
        self.finished = True

    def _ended_by_us(self, s: Session) -> bool:
        row = s.execute(select(Job.status, Job.worker_id).where(Job.id == self.job.id)).first()
        return row is not None and row.worker_id == self.worker_id and row.status in jobs.ENDED
