"""The worker: claims jobs from the database and runs them on one device. Never imports Streamlit.

``python -m lsm_core worker [--device cuda:0|cpu] [--kinds classify,saliency] [--drain]``

- Loaded models stay in memory (a small LRU keyed by the weights' sha256).
- A classify job works through its batch's images in chunks that fill the network's batch; each chunk's
  cells, the images' ``done`` marks and the job's progress commit in one transaction, under the unique
  key (image, cell index): a worker killed mid-chunk leaves nothing of that chunk, and whoever takes the
  job over starts after the last committed chunk. No cell is ever duplicated, and the batch is ``done`` only
  when its job is.
- Cells computed before for the same image bytes (sha256) and the same weights (sha256) are copied, not
  recomputed.
- A background thread renews the job's lease and the worker's heartbeat row (host, device, current job).
- The database going away for a while (PostgreSQL restarted, a dropped connection) does not stop the worker:
  each of its transactions is tried again with backoff for up to ``db_retry_s`` (5 minutes), a retried write
  first checks whether its lost commit landed after all, and the job goes on where it was (same attempt).
- SIGTERM or SIGINT: the current chunk finishes, the job goes back to the queue, the worker exits.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.bulk import insert_cells
from db.schema import Batch, Cell, Image, Job, Model, Worker as WorkerRow, utcnow
from lsm_core import jobs
from lsm_core.blobs import BlobStore
from lsm_core.cells import FindParams, find_cells, no_cells_note
from lsm_core.config import Limits
from lsm_core.errors import LsmError
from lsm_core.images import decode_page
from lsm_core.models import ModelStore
from lsm_core.predict import Predictor, choose_device
from lsm_core.registry import package_for

log = logging.getLogger("lsm_core.worker")
ALL_KINDS = ("classify", "train", "evaluate", "saliency")
DEFAULT_DB_RETRY_S = 300.0
T = TypeVar("T")


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or dropped the connection (a server restart, a
    network cut): worth trying again. SQLite's errors (a locked file already waits 30 s) are not."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if isinstance(exc, (OperationalError, InterfaceError)) else None
    if exc is None or not type(exc).__module__.startswith("psycopg"):
        return False
    import psycopg

    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


class JobLost(Exception):
    """This worker no longer holds the job (its lease ran out and another took it, or it was removed)."""


class Cancelled(Exception):
    pass


class Worker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        device: str | None = None,
        kinds: tuple[str, ...] = ALL_KINDS,
        lease_s: float = jobs.DEFAULT_LEASE_S,
        poll_s: float = 1.0,
        store: ModelStore | None = None,
        blobs: BlobStore | None = None,
        cache_size: int = 3,
        worker_id: str | None = None,
        batch_size: int | None = None,
        db_retry_s: float = DEFAULT_DB_RETRY_S,
    ) -> None:
        self.sessions = sessions
        self.db_retry_s = db_retry_s
        self.device = choose_device(device)
        unknown = set(kinds) - set(ALL_KINDS)
        if unknown:
            raise LsmError(f"unknown job kinds {sorted(unknown)}; this worker runs {', '.join(ALL_KINDS)}")
        self.kinds = tuple(kinds)
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.store = store or ModelStore()
        self.blobs = blobs or BlobStore()
        self.limits = Limits.from_env()
        self.cache: OrderedDict[str, Predictor] = OrderedDict()
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.host = socket.gethostname()
        self.id = worker_id or f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop = threading.Event()
        self.current_job: int | None = None
        self.handlers: dict[str, Callable[[Job], None]] = {
            "classify": self.run_classify, "train": self.run_train, "evaluate": self.run_evaluate,
            "saliency": self.run_saliency,
        }

    # --- life cycle -------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log.info("signal %s: finishing the current chunk, then stopping", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _db(self, what: str, fn: Callable[[int], T]) -> T:
        """``fn(attempt)``, one transaction of its own, tried again with backoff while the database is unreachable,
        for up to ``db_retry_s`` seconds. ``attempt`` counts from 0: a retried write checks first whether the
        commit it lost the answer to landed after all."""
        deadline = time.monotonic() + self.db_retry_s
        delay, attempt = 0.25, 0
        while True:
            try:
                return fn(attempt)
            except Exception as exc:
                if not connection_lost(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("database unreachable while %s (%s); trying again in %.2g s", what,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, delay)
            time.sleep(delay)
            delay, attempt = min(delay * 2, 5.0), attempt + 1

    def _finished_already(self, s: Session, job_id: int, attempt: int) -> bool:
        """On a retry: whether the previous try's commit, which ended the job, landed after all."""
        if not attempt:
            return False
        row = s.execute(select(Job.status, Job.worker_id).where(Job.id == job_id)).first()
        return row is not None and row.worker_id == self.id and row.status in ("done", "failed", "cancelled")

    def _beat(self, stopped: bool = False) -> None:
        with self.sessions.begin() as s:
            row = s.get(WorkerRow, self.id)
            if row is None:
                row = WorkerRow(id=self.id, host=self.host, pid=os.getpid(), device=str(self.device), kinds=",".join(self.kinds))
                s.add(row)
            row.last_seen = utcnow()
            row.current_job_id = self.current_job
            row.stopped = stopped
            if self.current_job is not None:
                jobs.renew_lease(s, self.current_job, self.id, self.lease_s)

    def _heartbeat_loop(self, done: threading.Event) -> None:
        while not done.wait(min(self.lease_s / 3, 10.0)):
            try:
                self._beat()
            except Exception as exc:  # the database may be restarting; the next beat tries again
                log.warning("heartbeat failed: %s", exc)

    def run(self, drain: bool = False, max_jobs: int | None = None) -> int:
        """Claim and run jobs until stopped (or, with ``drain``, until the queue is empty). Returns jobs run."""
        beats_done = threading.Event()
        beater = threading.Thread(target=self._heartbeat_loop, args=(beats_done,), daemon=True)
        self._db("registering the worker", lambda _: self._beat())
        beater.start()
        n = 0
        try:
            while not self.stop.is_set():
                try:
                    job = jobs.claim(self.sessions, self.id, self.kinds, self.lease_s)
                except Exception as exc:  # database unreachable for a moment
                    log.warning("could not claim a job: %s", exc)
                    time.sleep(self.poll_s)
                    continue
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
            self.current_job = None
            try:
                self._beat(stopped=True)
            except Exception:
                pass
        return n

    def _beat_now(self) -> None:
        """Tell the app at once what this worker does (the heartbeat thread would say it only seconds later)."""
        try:
            self._beat()
        except Exception as exc:  # the database may be restarting; the heartbeat thread tries again
            log.warning("heartbeat failed: %s", exc)

    def run_job(self, job: Job) -> None:
        self.current_job = job.id
        self._beat_now()
        log.info("job %s (%s) claimed, attempt %s", job.id, job.kind, job.attempts)
        try:
            self.handlers[job.kind](job)
        except Cancelled:
            def cancelled(_attempt: int) -> None:
                with self.sessions.begin() as s:
                    jobs.finish(s, job.id, self.id, "cancelled")

            self._db("cancelling a job", cancelled)
            log.info("job %s cancelled", job.id)
        except JobLost:
            log.warning("job %s: lease lost; another worker has it", job.id)
        except LsmError as exc:
            self._db("failing a job", lambda _: jobs.fail_or_retry(self.sessions, job.id, self.id, str(exc), retry=False))
            log.warning("job %s failed: %s", job.id, exc)
        except _Stopping:
            self._db("releasing a job", lambda _: jobs.release(self.sessions, job.id, self.id))
            log.info("job %s released back to the queue", job.id)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            status = self._db("failing a job", lambda _: jobs.fail_or_retry(self.sessions, job.id, self.id, message, retry=True))
            log.exception("job %s raised; now %s", job.id, status)
        finally:
            self.current_job = None
            self._beat_now()

    # --- models -----------------------------------------------------------------------------------
    def predictor(self, model: Model) -> Predictor:
        key = model.weights_sha256
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        package = package_for(model, self.store)
        predictor = Predictor(package, device=self.device, **({"batch_size": self.batch_size} if self.batch_size else {}))
        self.cache[key] = predictor
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return predictor

    # --- classify ---------------------------------------------------------------------------------
    def _check(self, s: Session, job_id: int) -> None:
        """Within ``s``: raise if the job was taken away or cancellation was asked for."""
        row = s.execute(select(Job.worker_id, Job.status, Job.cancel_requested).where(Job.id == job_id)).first()
        if row is None or row.worker_id != self.id or row.status != "running":
            raise JobLost()
        if row.cancel_requested:
            raise Cancelled()

    def _chunk_written(self, s: Session, chunk: list[tuple]) -> bool:
        """Whether a chunk's images are marked done already (a retried commit that had landed)."""
        ids = [image.id for image, _ in chunk]
        return s.scalar(select(func.count()).select_from(Image).where(Image.id.in_(ids), Image.done.is_(True))) == len(ids)

    def run_classify(self, job: Job) -> None:
        batch_id = int(job.payload["batch_id"])

        def read(_attempt: int):
            with self.sessions() as s:
                batch = s.get(Batch, batch_id)
                if batch is None:
                    raise LsmError(f"batch {batch_id} was deleted")
                model = s.get(Model, batch.model_id)
                if model is None or model.deleted:
                    raise LsmError("the batch's model was deleted; re-run the batch with another model")
                s.expunge(model)
                todo = s.execute(
                    select(Image.id, Image.sha256, Image.page)
                    .where(Image.batch_id == batch_id, Image.done.is_(False), Image.error.is_(None))
                    .order_by(Image.position)
                ).all()
                total = s.scalar(select(Job.progress_total).where(Job.id == job.id))
                return model, batch.pixel_size_um, todo, total - len(todo)

        model, pixel_size, todo, done_before = self._db("reading a batch", read)
        predictor = self.predictor(model)
        params = FindParams.for_model(model, pixel_size)
        done = done_before
        i = 0
        while i < len(todo):
            if self.stop.is_set():
                raise _Stopping()
            chunk, cells_in_chunk = [], 0
            while i < len(todo) and (not chunk or cells_in_chunk < predictor.batch_size):
                image = todo[i]
                result = self._cells_for(image, model, params, pixel_size)
                chunk.append((image, result))
                cells_in_chunk += result.n
                i += 1
            self._predict_chunk(chunk, predictor)
            done += len(chunk)

            def write(attempt: int, chunk=chunk, done=done) -> None:
                with self.sessions.begin() as s:
                    self._check(s, job.id)
                    if not (attempt and self._chunk_written(s, chunk)):
                        self._write_chunk(s, batch_id, chunk, predictor.classes)
                    jobs.set_progress(s, job.id, done)
                    jobs.renew_lease(s, job.id, self.id, self.lease_s)

            self._db("writing cells", write)
        self._db("finishing a job", lambda attempt: self._finish_done(job.id, attempt))
        log.info("job %s done: %s images", job.id, len(todo))

    def _finish_done(self, job_id: int, attempt: int, before: Callable[[Session], None] | None = None) -> None:
        """Mark the job done (after ``before(s)`` in the same transaction), unless a lost commit did already."""
        with self.sessions.begin() as s:
            if self._finished_already(s, job_id, attempt):
                return
            self._check(s, job_id)
            if before is not None:
                before(s)
            if not jobs.finish(s, job_id, self.id, "done"):
                raise JobLost()

    def _cells_for(self, image, model: Model, params: FindParams, pixel_size: float | None) -> "_ImageResult":
        result = _ImageResult(image.id)
        cached = self._db("looking up earlier cells",
                          lambda _: self._cached_cells(image.sha256, image.page, model.weights_sha256, pixel_size))
        if cached is not None:
            result.kind, result.cached, result.note = cached
            return result
        try:
            pixels = decode_page("stored", self.blobs.get(image.sha256), image.page, self.limits)
            found = find_cells(pixels, params)
        except LsmError as exc:
            result.error = str(exc)
            return result
        result.kind = "single" if found.flags == ["single"] else "field"
        result.found = found
        result.n = len(found)
        result.note = None if result.n else no_cells_note(found.dropped, params)
        return result

    def _cached_cells(self, sha: str | None, page: int, weights_sha: str,
                      pixel_size: float | None) -> tuple[str | None, list[dict], str | None] | None:
        """(kind, cells, note) computed before for these image bytes, these weights and this batch pixel size
        (None: the model's), or None."""
        if not sha:
            return None
        with self.sessions() as s:
            source = s.execute(
                select(Image.id, Image.n_cells, Image.note, Image.kind)
                .join(Batch, Batch.id == Image.batch_id)
                .join(Model, Model.id == Batch.model_id)
                .where(Image.sha256 == sha, Image.page == page, Image.done.is_(True), Image.error.is_(None),
                       Model.weights_sha256 == weights_sha, Image.n_cells.is_not(None),
                       func.coalesce(Batch.pixel_size_um, -1.0) == (-1.0 if pixel_size is None else pixel_size))
                .limit(1)
            ).first()
            if source is None:
                return None
            cells = s.scalars(select(Cell).where(Cell.image_id == source.id).order_by(Cell.idx)).all()
            if len(cells) != source.n_cells:
                return None
            return source.kind, [
                {"idx": c.idx, "x": c.x, "y": c.y, "w": c.w, "h": c.h, "predicted": c.predicted, "score": c.score,
                 "probs": c.probs, "flags": c.flags}
                for c in cells
            ], source.note

    def _predict_chunk(self, chunk: list[tuple], predictor: Predictor) -> None:
        crops = [r.found.crops for _, r in chunk if r.found is not None and r.n]
        if not crops:
            return
        pred = predictor(np.concatenate(crops))
        k = 0
        for _, r in chunk:
            if r.found is not None and r.n:
                r.probs = pred.probs[k : k + r.n]
                r.predicted = pred.predicted[k : k + r.n]
                r.score = pred.score[k : k + r.n]
                k += r.n

    def _write_chunk(self, s: Session, batch_id: int, chunk: list[tuple], classes: list[str]) -> None:
        rows: list[dict] = []
        for image, r in chunk:
            values: dict = {"done": True}
            if r.error:
                values.update(error=r.error, n_cells=0)
            elif r.cached is not None:
                rows += [c | {"batch_id": batch_id, "image_id": image.id} for c in r.cached]
                values.update(n_cells=len(r.cached), kind=r.kind, note=r.note)
            else:
                found = r.found
                for j in range(r.n):
                    x, y, w, h = (int(v) for v in found.boxes[j])
                    rows.append({
                        "batch_id": batch_id, "image_id": image.id, "idx": j + 1, "x": x, "y": y, "w": w, "h": h,
                        "predicted": classes[int(r.predicted[j])], "score": float(r.score[j]),
                        "probs": [float(p) for p in r.probs[j]], "flags": found.flags[j],
                    })
                values.update(n_cells=r.n, kind=r.kind, note=r.note)
            s.execute(update(Image).where(Image.id == image.id).values(**values))
        insert_cells(s, rows)


    # --- train and evaluate ---------------------------------------------------------------------
    def _uploaded(self, uploads: list[dict], task: str, params: FindParams | None = None):
        from lsm_core.datasets import from_files
        from lsm_core.images import iter_upload

        files = [raw for u in uploads for raw in iter_upload(u["name"], self.blobs.get(u["sha256"]), self.limits)]
        return from_files(files, task, params)

    def run_train(self, job: Job) -> None:
        from lsm_core.datasets import LabelledData, from_batches
        from lsm_core.registry import sync_models
        from lsm_core.train import TrainConfig, TrainingCancelled, train_and_register

        p = job.payload
        task, config = p["task"], TrainConfig(**p.get("config", {}))
        parts = []
        if p.get("uploads"):
            parts.append(self._uploaded(p["uploads"], task))
        if p.get("batches"):
            parts.append(from_batches(self.sessions, {int(k): v for k, v in p["batches"].items()}, task))
        data = parts[0]
        for more in parts[1:]:
            offset = len(data.sources)
            data = LabelledData(data.classes, np.concatenate([data.crops, more.crops]),
                                np.concatenate([data.labels, more.labels]), np.concatenate([data.groups, more.groups + offset]),
                                data.sources + more.sources, data.errors + more.errors)
        test = self._uploaded(p["test_uploads"], task) if p.get("test_uploads") else None

        def progress(epoch, loss, vloss, vacc):
            def write(_attempt: int) -> None:
                with self.sessions.begin() as s:
                    self._check(s, job.id)
                    s.execute(update(Job).where(Job.id == job.id).values(
                        progress_done=epoch, result={"epoch": epoch, "train_loss": loss, "val_loss": vloss, "val_accuracy": vacc}))

            self._db("reporting progress", write)

        def should_stop() -> bool:
            if self.stop.is_set():
                raise _Stopping()
            return False

        try:
            package = train_and_register(data, task, config, p["name"], self.store, test=test, progress=progress,
                                         should_stop=should_stop, device=self.device, patience=p.get("patience", 5))
        except TrainingCancelled:
            raise Cancelled() from None
        rows = self._db("registering the model", lambda _: sync_models(self.sessions, self.store))
        model_id = next(r.id for r in rows if r.name == package.manifest.name and r.version == package.manifest.version)
        result = {"model_id": model_id, "model": package.manifest.label, "accuracy": package.manifest.metrics["accuracy"],
                  "unusable_files": [list(e) for e in data.errors[:200]]}
        self._db("finishing a job", lambda attempt: self._finish_done(
            job.id, attempt, lambda s: s.execute(update(Job).where(Job.id == job.id).values(result=result))))

    def run_evaluate(self, job: Job) -> None:
        from lsm_core.train import evaluate_predictor

        def read(_attempt: int) -> Model:
            with self.sessions() as s:
                model = s.get(Model, int(job.payload["model_id"]))
                if model is None or model.deleted:
                    raise LsmError("the model to evaluate was deleted")
                s.expunge(model)
                return model

        model = self._db("reading a model", read)
        predictor = self.predictor(model)
        data = self._uploaded(job.payload["uploads"], model.task, FindParams.for_model(model))
        metrics = evaluate_predictor(predictor, data)
        metrics["unusable_files"] = [list(e) for e in data.errors[:200]]
        self._db("finishing a job", lambda attempt: self._finish_done(
            job.id, attempt, lambda s: s.execute(update(Job).where(Job.id == job.id).values(result=metrics, progress_done=1))))


    def run_saliency(self, job: Job) -> None:
        """Maps for a batch's cells (all, or the top-k per class by score), stored as one 8-bit npz blob."""
        import io as _io

        from db.schema import SaliencyRun
        from lsm_core.datasets import recut_crops
        from lsm_core.saliency import saliency_maps, to_uint8

        p = job.payload
        batch_id, method, top = int(p["batch_id"]), p.get("method", "scorecam"), p.get("top")
        with self.sessions() as s:
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise LsmError(f"batch {batch_id} was deleted")
            model = s.get(Model, batch.model_id)
            s.expunge(model)
            cells = s.execute(select(Cell.id, Cell.image_id, Cell.x, Cell.y, Cell.w, Cell.h, Cell.predicted, Cell.score)
                              .where(Cell.batch_id == batch_id).order_by(Cell.image_id, Cell.idx)).all()
            if top:
                keep = set()
                for cls in model.classes:
                    ranked = sorted((c for c in cells if c.predicted == cls), key=lambda c: -c.score)[: int(top)]
                    keep |= {c.id for c in ranked}
                cells = [c for c in cells if c.id in keep]
            images = {im.id: im for im in s.scalars(select(Image).where(Image.id.in_({c.image_id for c in cells})))}
            for im in images.values():
                s.expunge(im)
        if not cells:
            raise LsmError("this batch has no classified cells")
        params = FindParams.for_model(model, batch.pixel_size_um)
        net = package_for(model, self.store).load(self.device)  # a private copy: the predictor's is fused
        index = {c: i for i, c in enumerate(model.classes)}
        ids, maps = [], []
        chunk = 256
        for start in range(0, len(cells), chunk):
            part = cells[start : start + chunk]
            crops = []
            for image_id in dict.fromkeys(c.image_id for c in part):
                mine = [c for c in part if c.image_id == image_id]
                crops.append(recut_crops(images[image_id], [(c.x, c.y, c.w, c.h) for c in mine], params, self.blobs))
                ids += [c.id for c in mine]
            targets = np.array([index[c.predicted] for c in part])
            maps.append(to_uint8(saliency_maps(net, model.architecture, np.concatenate(crops), method, targets,
                                               device=self.device)))

            def progress(_attempt: int, done=min(len(cells), start + chunk)) -> None:
                with self.sessions.begin() as s:
                    self._check(s, job.id)
                    jobs.set_progress(s, job.id, done, len(cells))

            self._db("reporting progress", progress)
            if self.stop.is_set():
                raise _Stopping()
        buf = _io.BytesIO()
        np.savez_compressed(buf, cell_ids=np.array(ids, np.int64), maps=np.concatenate(maps))
        blob = self.blobs.put(buf.getvalue())

        def record(s: Session) -> None:
            run = SaliencyRun(batch_id=batch_id, method=method, scope=f"top {top} per class" if top else "all",
                              cells=len(ids), blob=blob)
            s.add(run)
            s.flush()
            s.execute(update(Job).where(Job.id == job.id).values(result={"saliency_run": run.id}))

        self._db("finishing a job", lambda attempt: self._finish_done(job.id, attempt, record))


class _Stopping(Exception):
    pass


class _ImageResult:
    __slots__ = ("image_id", "found", "n", "error", "kind", "cached", "note", "probs", "predicted", "score")

    def __init__(self, image_id: int) -> None:
        self.image_id = image_id
        self.found = None
        self.n = 0
        self.error = None
        self.kind = None
        self.cached = None
        self.note: str | None = None
        self.probs = self.predicted = self.score = None
