"""The worker loop and its tasks, on SQLite and PostgreSQL: a bug is not taken for a lost connection, every
task reads under the retry policy and refuses what was deleted, and a kind with no task fails plainly."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from db.schema import Job, Model
from lsm_core.lab import batches, jobs, tasks
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.retry import Retry, connection_lost
from lsm_core.lab.tasks import saliency as saliency_task
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files


def test_every_job_kind_has_its_task_and_each_task_module_registers_itself():
    assert set(tasks.tasks()) == {k.value for k in JobKind}
    assert all(callable(run) for run in tasks.tasks().values())


def test_a_claim_that_fails_for_another_reason_than_a_lost_connection_stops_the_worker(history):
    lab, engine, _ = history
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs RENAME TO jobs_gone"))  # what a bug in a query looks like
    worker = Worker(lab, device="cpu", poll_s=0.05)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - kept to be checked below
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    alive = thread.is_alive()
    worker.stop.set()
    assert not alive, "the worker kept looping on an error that is not a lost connection"
    assert raised and not connection_lost(raised[0])
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs_gone RENAME TO jobs"))


def test_the_retry_policy_waits_out_only_lost_connections():
    calls = []

    def broken(attempt: int) -> None:
        calls.append(attempt)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        Retry(seconds=5, sleep=lambda _s: None)("doing something", broken)
    assert calls == [0]  # not retried


def test_saliency_of_a_batch_whose_model_was_deleted_fails_with_a_message(history):
    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(2, seed=901), model_id, "maps", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    job_id = saliency_task.submit(lab, sub.batch_id, "gradcam", top=2, owner="ana")
    with lab.begin() as s:
        s.get(Model, model_id).deleted = True
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and job.attempts == 1
        assert job.error == "the batch's model was deleted; re-run the batch with another model"
    with lab.begin() as s:
        s.get(Model, model_id).deleted = False


def test_a_job_of_a_kind_no_task_runs_fails_plainly(history):
    lab, _, _ = history
    job_id = jobs.submit(lab, JobKind.CLASSIFY, {}, "ana")
    with lab.begin() as s:
        s.get(Job, job_id).kind = "teleport"
    worker = Worker(lab, device="cpu")
    claimed = jobs.claim(lab, worker.id, None)  # an old worker, or a row written by hand, took it
    worker.run_job(claimed)
    with lab() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and job.error.startswith("no task runs jobs of kind 'teleport'")
