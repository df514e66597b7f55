"""An added cell is its own small thing (issue #27 item 5), on SQLite and PostgreSQL: an add-cell job never
changes its batch's status (which follows the batch's classify jobs only, whether they are claimed, end, are
cancelled or their worker dies), a second cell at the same place is refused at the click with a message (not
by a failed job), and cells added at once, from many clicks and by two workers, get unique numbers at the first
attempt. And the small ones of item 7 about jobs: files an administrator adds to someone's batch are classified
by a job of the batch's owner, and a batch deleted while its job runs leaves that job cancelled, not done."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db.schema import AuditEvent, Batch, Cell, Image, Job, utcnow
from lsm_core.errors import LsmError
from lsm_core.lab import batches, jobs
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.worker import Worker
from lsm_core.reports.text import escape_markdown
from tests.helpers import crop_files


def batch_status(lab, batch_id: int) -> str:
    with lab() as s:
        return s.get(Batch, batch_id).status


def free_points(lab, image, n: int, spacing: int = 96) -> list[tuple[float, float]]:
    """``n`` points of the field, ``spacing`` pixels apart and at least 60 pixels from every cell's box."""
    with lab() as s:
        boxes = s.execute(select(Cell.x, Cell.y, Cell.w, Cell.h).where(Cell.image_id == image.id)).all()
    points = [
        (float(x), float(y))
        for y in range(40, image.height - 40, spacing)
        for x in range(40, image.width - 40, spacing)
        if all(x < bx - 60 or x > bx + bw + 60 or y < by - 60 or y > by + bh + 60 for bx, by, bw, bh in boxes)
    ]
    assert len(points) >= n, f"only {len(points)} free points in the field"
    return points[:n]


def side_of(lab, image) -> int:
    """The side of an added cell's box in the image's pixels (add_cell.CELL_UM at its pixel size)."""
    from lsm_core.lab.tasks import add_cell

    with lab() as s:
        im = s.get(Image, image.id)
        return max(4, round(add_cell.CELL_UM / (im.pixel_size_um or s.get(Batch, im.batch_id).model.pixel_size_um)))


# --- the batch's status follows its classify jobs only -----------------------------------------------------------
def test_an_add_cell_job_never_changes_its_batchs_status(field_batch):
    """What was seen: a second click a few pixels from the first was refused by its job, and the whole batch
    became failed with every image and cell intact; and a finished add-cell job would have marked done a batch
    whose classification was still queued. Its claim, its end (done or failed) and its cancel leave the batch
    as its classify job says."""
    from lsm_core.lab.tasks import add_cell

    lab, batch_id, field = field_batch
    (x, y), (x2, y2) = free_points(lab, field, 2)
    assert batch_status(lab, batch_id) == "done"
    # a job that can only fail (at a point where a cell is: made as the page made them before submit refused it)
    with lab() as s:
        cell = s.scalars(select(Cell).where(Cell.image_id == field.id).order_by(Cell.idx)).first()
    with lab.begin() as s:
        doomed = jobs.new_job(
            JobKind.ADD_CELL,
            {"image_id": field.id, "x": cell.x + cell.w / 2, "y": cell.y + cell.h / 2},
            "ana",
            total=1,
            batch_id=batch_id,
        )
        s.add(doomed)
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        failed = s.scalars(select(Job).where(Job.kind == "add_cell")).one()
        assert failed.status == "failed" and "is there already" in failed.error
    assert batch_status(lab, batch_id) == "done"  # was: failed

    # files added: the batch's classify job is queued; an added cell finishing meanwhile leaves it queued
    added = batches.add_files(lab, batch_id, crop_files(1, seed=41), "ana")
    assert batch_status(lab, batch_id) == "queued"
    job_id = add_cell.submit(lab, field.id, x, y, "ana")
    claimed = jobs.claim(lab, "w-add", kinds=["add_cell"])
    assert claimed is not None and claimed.id == job_id
    assert batch_status(lab, batch_id) == "queued"  # was: running
    Worker(lab, device="cpu", worker_id="w-add").run_job(claimed)
    with lab() as s:
        assert s.get(Job, job_id).status == "done"
    assert batch_status(lab, batch_id) == "queued"  # was: done, with its new file not read yet

    cancelled = add_cell.submit(lab, field.id, x2, y2, "ana")
    assert jobs.cancel(lab, cancelled, "ana") == "cancelled"
    assert batch_status(lab, batch_id) == "queued"  # was: cancelled

    assert Worker(lab, device="cpu", kinds=["classify"]).run(drain=True) == 1
    with lab() as s:
        assert s.get(Job, added.job_id).status == "done"
    assert batch_status(lab, batch_id) == "done"


def test_a_classify_job_whose_worker_died_for_good_ends_its_batch_too(field_batch):
    """A job whose lease ran out at its last attempt fails: a classify job's batch fails with it (it stayed
    'running' for ever); an add-cell job's batch keeps its status."""
    from lsm_core.lab.tasks import add_cell

    lab, batch_id, field = field_batch
    sub = batches.add_files(lab, batch_id, crop_files(1, seed=42), "ana")
    (x, y) = free_points(lab, field, 1)[0]
    cell_job = add_cell.submit(lab, field.id, x, y, "ana")
    for kind in ("add_cell", "classify"):
        job = jobs.claim(lab, f"dead-{kind}", kinds=[kind])
        assert job is not None and job.id == (cell_job if kind == "add_cell" else sub.job_id)
    assert batch_status(lab, batch_id) == "running"
    with lab.begin() as s:  # both workers died at their last attempt
        s.execute(
            update(Job)
            .where(Job.id.in_([cell_job, sub.job_id]))
            .values(attempts=Job.max_attempts, lease_expires=utcnow() - timedelta(seconds=5))
        )
    assert jobs.claim(lab, "next") is None  # reaps both
    with lab() as s:
        assert s.get(Job, cell_job).status == "failed" and s.get(Job, sub.job_id).status == "failed"
    assert batch_status(lab, batch_id) == "failed"


# --- the same place twice: refused at the click ----------------------------------------------------------------------
def test_a_second_cell_at_the_same_place_is_refused_when_it_is_clicked(field_batch):
    """Within about a cell's radius of a cell being added, or of a cell's centre, submit refuses with a message
    (and so does the page's check before it offers the button); a cell's width away is another cell."""
    from lsm_core.lab.tasks import add_cell

    lab, batch_id, field = field_batch
    x, y = free_points(lab, field, 1)[0]
    side = side_of(lab, field)
    first = add_cell.submit(lab, field.id, x, y, "ana")
    for dx, dy in ((0, 0), (3, -2), (side / 3, side / 4)):
        with pytest.raises(LsmError, match=rf"a cell is being added to {field.file} at \({x:.0f}, {y:.0f}\) already"):
            add_cell.submit(lab, field.id, x + dx, y + dy, "ana")
        with pytest.raises(LsmError, match="being added"):
            add_cell.looks_like_a_cell(lab, field.id, x + dx, y + dy)
    beside = add_cell.submit(lab, field.id, x + side, y, "ana")  # a cell's width away: its own cell
    assert Worker(lab, device="cpu").run(drain=True) == 2
    with lab() as s:
        ended = {j.id: j.status for j in s.scalars(select(Job).where(Job.kind == "add_cell"))}
        new = s.scalars(select(Cell).where(Cell.image_id == field.id, Cell.flags == "added").order_by(Cell.idx)).all()
    assert ended == {first: "done", beside: "done"}
    assert len(new) == 2
    with pytest.raises(LsmError, match=rf"cell {new[0].idx} of {field.file} is there already"):
        add_cell.submit(lab, field.id, x + 4, y + 3, "ana")  # its box's centre is a few pixels away
    with lab() as s:
        assert len(s.scalars(select(Job).where(Job.kind == "add_cell")).all()) == 2  # nothing queued by refusals
    assert batch_status(lab, batch_id) == "done"


def test_clicks_on_one_place_at_the_same_moment_queue_one_job(field_batch):
    """Two browsers clicking the same place at once: the image's row is locked while the place is checked and
    the job queued, so exactly one is queued and the others are told why."""
    from lsm_core.lab.tasks import add_cell

    lab, _, field = field_batch
    x, y = free_points(lab, field, 1)[0]
    start = threading.Barrier(6)

    def click(i: int) -> int | str:
        start.wait()
        try:
            return add_cell.submit(lab, field.id, x + i % 3, y - i % 2, "ana")
        except LsmError as exc:
            return str(exc)

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(click, range(6)))
    queued = [o for o in outcomes if isinstance(o, int)]
    assert len(queued) == 1, outcomes
    assert all("being added" in o for o in outcomes if isinstance(o, str))
    with lab() as s:
        assert [j.id for j in s.scalars(select(Job).where(Job.kind == "add_cell"))] == queued


def test_many_cells_added_at_once_by_two_workers_are_numbered_without_a_clash(field_batch):
    """16 clicks from threads, and two workers draining them at the same time: every job is done at its first
    attempt (on PostgreSQL two of them once took the same max + 1, a unique violation and a retry), the new
    cells are numbered on after the found ones with no gap and no repeat, and the image counts them all."""
    from lsm_core.lab.tasks import add_cell

    lab, batch_id, field = field_batch
    points = free_points(lab, field, 16, spacing=80)
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda p: add_cell.submit(lab, field.id, p[0], p[1], "ana"), points))
    workers = [Worker(lab, device="cpu", worker_id=f"w{i}", poll_s=0.05) for i in range(2)]
    for worker in workers:  # each loads the model first, so that both claim from the start
        worker.models.predictor(_model(lab, batch_id))
    counts: list[int] = []
    threads = [threading.Thread(target=lambda w=w: counts.append(w.run(drain=True))) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sum(counts) == 16
    with lab() as s:
        ended = s.scalars(select(Job).where(Job.id.in_(ids))).all()
        assert [(j.status, j.attempts, j.errors) for j in ended] == [("done", 1, [])] * 16, [j.errors for j in ended]
        assert {j.worker_id for j in ended} == {"w0", "w1"}  # both took part
        numbers = sorted(s.scalars(select(Cell.idx).where(Cell.image_id == field.id)))
        assert numbers == list(range(1, field.n_cells + 17))
        assert s.get(Image, field.id).n_cells == field.n_cells + 16
    assert batch_status(lab, batch_id) == "done"


def _model(lab, batch_id: int):
    from db.schema import Model

    with lab() as s:
        model = s.get(Model, s.get(Batch, batch_id).model_id)
        s.expunge(model)
        return model


# --- item 7: an administrator's files, and a batch deleted under its job ----------------------------------------------
def test_files_an_administrator_adds_are_classified_by_a_job_of_the_batchs_owner(field_batch):
    lab, batch_id, _ = field_batch
    sub = batches.add_files(lab, batch_id, crop_files(2, seed=43), "boss")
    with lab() as s:
        job = s.get(Job, sub.job_id)
        assert (job.kind, job.owner, job.status) == ("classify", "ana", "queued")  # was: boss
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "add files")).one()
        assert (event.actor, event.target) == ("boss", f"batch {batch_id}")
    other = batches.submit_batch(lab, crop_files(2, seed=44), _model(lab, batch_id).id, "bob's", owner="bob")
    with lab() as s:  # fairness counts it as ana's, served lately (her batch's first job): bob, never served, first
        assert jobs.queued_order(s) == [other.job_id, sub.job_id]  # was: boss's, never served, queued first
    assert jobs.cancel(lab, sub.job_id, "ana") == "cancelled"  # the owner cancels it (was: refused, boss's)


def test_a_batch_deleted_while_its_job_runs_leaves_the_job_cancelled(field_batch, caplog):
    """The running job ends cancelled when the delete commits, and its worker, at its next step, stops and
    says so (it ended failed when the batch was gone before the worker first read it)."""
    lab, batch_id, field = field_batch
    sub = batches.add_files(lab, batch_id, crop_files(2, seed=45), "ana")
    claimed = jobs.claim(lab, "w-del", kinds=["classify"])
    assert claimed is not None and claimed.id == sub.job_id
    batches.delete(lab, batch_id, "ana")
    with lab() as s:
        job = s.get(Job, sub.job_id)
        assert (job.status, job.finished is not None, job.lease_expires) == ("cancelled", True, None)
    with caplog.at_level(logging.INFO, logger="lsm_core.worker"):
        Worker(lab, device="cpu", worker_id="w-del").run_job(claimed)
    with lab() as s:
        job = s.get(Job, sub.job_id)
        assert (job.status, job.error) == ("cancelled", None)
    assert f"job {sub.job_id} failed" not in caplog.text


def test_an_add_cell_job_of_a_deleted_batch_is_cancelled(field_batch, caplog):
    from lsm_core.lab.tasks import add_cell

    lab, batch_id, field = field_batch
    x, y = free_points(lab, field, 1)[0]
    job_id = add_cell.submit(lab, field.id, x, y, "ana")
    claimed = jobs.claim(lab, "w-del")
    batches.delete(lab, batch_id, "ana")
    with caplog.at_level(logging.INFO, logger="lsm_core.worker"):
        Worker(lab, device="cpu", worker_id="w-del").run_job(claimed)
    with lab() as s:
        assert s.get(Job, job_id).status == "cancelled"  # was: failed ("its batch was deleted")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite serialises writes: it cannot happen there
def test_a_batch_deleted_as_its_job_ends_leaves_the_job_cancelled(field_batch, monkeypatch, caplog):
    """The delete committing between the worker's last check and its end (PostgreSQL only: SQLite serialises
    every write transaction): the job stayed done, its batch gone. Now its end finds it cancelled, writes nothing."""
    from lsm_core.lab.tasks import classify

    lab, batch_id, _ = field_batch
    sub = batches.add_files(lab, batch_id, crop_files(2, seed=46), "ana")
    original = classify._none_unread

    def delete_first(s, job_id, batch):
        batches.delete(lab, batch_id, "ana")  # another connection: commits at once
        original(s, job_id, batch)

    monkeypatch.setattr(classify, "_none_unread", delete_first)
    with caplog.at_level(logging.INFO, logger="lsm_core.worker"):
        assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        job = s.get(Job, sub.job_id)
        assert (job.status, job.batch_id) == ("cancelled", None)  # was: done
        assert s.get(Batch, batch_id) is None
    assert f"job {sub.job_id} cancelled" in caplog.text


# --- the field view's click: refused there, with why ------------------------------------------------------------------
def _field_view(lab, image_id: int, x: float, y: float) -> None:
    """pages/_review_queue.field_section for ana, as if she had clicked (x, y) on the field's empty background
    (the chart's selection event given; the rest as the page runs it)."""
    import streamlit as st

    from db import queries
    from db.schema import Batch, Image
    from pages import _review_queue as rq

    with lab() as s:
        image = s.get(Image, image_id)
        batch = s.get(Batch, image.batch_id)
        scope = rq.Scope([batch.id], list(batch.model.classes), {batch.id: batch.owner}, {batch.id: (None, None)})
        cells = queries.image_cells(s, image_id)
        s.expunge_all()

    class Clicked:
        selection = {"points": [{"x": x, "y": y, "customdata": [-1]}]}

    chart = st.plotly_chart
    st.plotly_chart = lambda *args, **kwargs: Clicked()
    try:
        rq.field_section(lab, image, cells, scope, "ana", "t", lambda editable: None)
    finally:
        st.plotly_chart = chart


def field_view(lab, image_id: int, x: float, y: float):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_field_view, args=(lab, image_id, x, y), default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def add_buttons(at) -> list:
    return [b for b in at.button if b.label.startswith("Add a cell at")]


def test_the_field_view_refuses_a_second_cell_at_the_same_place_where_it_is_clicked(field_batch):
    """The page: once a cell is being added at a point, that point says so instead of offering the button
    again (it did, and a second click queued a job that could only fail); a click a few pixels away is refused
    with why before any button; and of two browsers that both offered the button, the second click is refused
    beside the field view (it was shown above the review queue, or nowhere), one job queued."""
    lab, _, field = field_batch
    (x, y), (x2, y2) = free_points(lab, field, 2)
    at = field_view(lab, field.id, x, y)
    assert len(add_buttons(at)) == 1 and not at.error
    add_buttons(at)[0].click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert [m.value for m in at.success] == [f"A cell at ({x:.0f}, {y:.0f}) is being added (job 2)."]
    assert not add_buttons(at) and not at.error  # was: the button again

    near = field_view(lab, field.id, x + 4, y + 2)
    assert not add_buttons(near)  # was: offered
    assert [e.value for e in near.error] == [  # the message as Markdown source: the file's name escaped
        escape_markdown(
            f"a cell is being added to {field.file} at ({x:.0f}, {y:.0f}) already (job 2): review it once it is there"
        )
    ]

    tab1, tab2 = field_view(lab, field.id, x2, y2), field_view(lab, field.id, x2 + 3, y2 - 3)
    add_buttons(tab1)[0].click()
    tab1.run()
    add_buttons(tab2)[0].click()
    tab2.run()
    assert not tab2.exception, [e.message for e in tab2.exception]
    assert not tab2.success and len(tab2.error) == 1 and "being added" in tab2.error[0].value
    assert not add_buttons(tab2)
    with lab() as s:
        assert len(s.scalars(select(Job).where(Job.kind == "add_cell")).all()) == 2  # was: 3

    assert Worker(lab, device="cpu").run(drain=True) == 2
    there = field_view(lab, field.id, x + 4, y + 2)
    assert not add_buttons(there) and "is there already" in there.error[0].value
