"""One running job per batch (hardening issue, item 9), on SQLite and PostgreSQL.

Adding files to a batch whose classify job is queued or running extends that job (its total grows, the
worker takes the new images before it ends) instead of queuing a second job over the same images; progress
never goes negative or past the total.
"""

from __future__ import annotations

from sqlalchemy import func, select

from db.schema import Cell, Image, Job
from lsm_core.lab import batches, jobs
from lsm_core.lab.tasks import classify as classify_task
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files


def _jobs_of(lab, batch_id: int) -> list[Job]:
    with lab() as s:
        return list(s.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.id)))


def _check_done(lab, batch_id: int, images: int) -> None:
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(Image).where(Image.batch_id == batch_id)) == images
        assert s.scalar(select(func.count()).select_from(Image).where(Image.batch_id == batch_id, ~Image.done)) == 0
        per_image = s.execute(
            select(Cell.image_id, func.count()).where(Cell.batch_id == batch_id).group_by(Cell.image_id)
        ).all()
        assert len(per_image) == images and all(n == 1 for _, n in per_image)  # one crop, one cell, exactly once


def test_adding_files_while_the_job_is_queued_extends_it(history):
    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(3, seed=710), model_id, "extend queued", owner="ana")
    more = batches.add_files(lab, sub.batch_id, crop_files(2, seed=711, prefix="more"), "ana")
    assert more.job_id == sub.job_id
    (job,) = _jobs_of(lab, sub.batch_id)
    assert job.status == "queued" and job.progress_total == 5
    Worker(lab, device="cpu").run(drain=True)
    (job,) = _jobs_of(lab, sub.batch_id)
    assert job.status == "done" and (job.progress_done, job.progress_total) == (5, 5)
    _check_done(lab, sub.batch_id, 5)


def test_adding_files_while_the_job_runs_extends_it_and_the_worker_takes_them_before_it_ends(history, monkeypatch):
    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(3, seed=720), model_id, "extend running", owner="ana")
    worker = Worker(lab, device="cpu")
    claimed = jobs.claim(lab, worker.id)
    assert claimed is not None and claimed.id == sub.job_id
    real = classify_task._looked_up
    added: list[batches.Submitted] = []
    calls: list[int] = []

    def looked_up(ctx, image, *args):  # the user adds files while the worker takes up the batch's last image
        result = real(ctx, image, *args)
        calls.append(image.id)
        if len(calls) == 3 and not added:  # the last of the three images is read: add two more
            added.append(batches.add_files(lab, sub.batch_id, crop_files(2, seed=721, prefix="late"), "ana"))
        return result

    monkeypatch.setattr(classify_task, "_looked_up", looked_up)
    worker.run_job(claimed)
    assert added and added[0].job_id == sub.job_id  # no second job
    (job,) = _jobs_of(lab, sub.batch_id)
    assert job.status == "done", job.error
    assert (job.progress_done, job.progress_total) == (5, 5)
    _check_done(lab, sub.batch_id, 5)


def test_adding_files_after_the_job_ended_queues_a_new_one(history):
    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(2, seed=730), model_id, "after the end", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    more = batches.add_files(lab, sub.batch_id, crop_files(1, seed=731, prefix="next"), "ana")
    assert more.job_id != sub.job_id
    Worker(lab, device="cpu").run(drain=True)
    first, second = _jobs_of(lab, sub.batch_id)
    assert (first.progress_done, first.progress_total) == (2, 2)
    assert second.status == "done" and (second.progress_done, second.progress_total) == (1, 1)
    _check_done(lab, sub.batch_id, 3)


def test_progress_stays_within_zero_and_the_total_when_images_are_already_done(history):
    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(2, seed=740), model_id, "two jobs", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    with lab.begin() as s:  # a second job over the same, finished images (as old versions queued)
        s.add(jobs.new_job(jobs.JobKind.CLASSIFY, {"batch_id": sub.batch_id}, "ana", total=1, batch_id=sub.batch_id))
    Worker(lab, device="cpu").run(drain=True)
    for job in _jobs_of(lab, sub.batch_id):
        assert job.status == "done", job.error
        assert 0 <= job.progress_done <= job.progress_total


def test_an_image_that_takes_too_long_becomes_an_error_row_and_the_batch_goes_on(history):
    from lsm_core.lab.lab import Lab
    from tests.helpers import field_file

    lab, _, model_id = history
    hasty = Lab(lab.sessions, lab.settings.with_(max_seconds_per_image=0.001), lab.engine)
    sub = batches.submit_batch(hasty, [field_file(seed=750)], model_id, "slow field", owner="ana")
    Worker(hasty, device="cpu").run(drain=True)  # in this (main) thread, as `lsm_core worker` runs its tasks
    (job,) = _jobs_of(lab, sub.batch_id)
    assert job.status == "done", job.error
    with lab() as s:
        (image,) = s.scalars(select(Image).where(Image.batch_id == sub.batch_id))
    assert image.done and image.error is not None
    assert "took longer than 0.001 s (LSM_MAX_SECONDS_PER_IMAGE)" in image.error
