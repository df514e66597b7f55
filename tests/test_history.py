"""The SQL history and the job queue, each test on SQLite and on PostgreSQL (see conftest.db_url)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from db import queries
from db.schema import Batch, Cell, Image, Job
from db.schema import Worker as WorkerRow
from db.session import head_revision, make_engine, tables, upgrade
from lsm_core.errors import LsmError
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.lab import batches, jobs
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files, field_file, wait_for, with_settings

ROOT = Path(__file__).resolve().parents[1]


def worker_env(db_url: str, data_dir) -> dict:
    return dict(
        os.environ, LSM_DATABASE_URL=db_url, LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT), LSM_PRECISION="fp32"
    )


def start_worker(db_url, data_dir, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lsm_core", "worker", *args],
        cwd=ROOT,
        env=worker_env(db_url, data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_upgrade_from_empty_and_refuse_newer(db_url):
    engine = make_engine(db_url)
    assert "jobs" not in tables(engine)
    assert upgrade(engine) == head_revision()
    assert {"users", "models", "batches", "images", "cells", "jobs", "workers"} <= set(tables(engine))
    assert upgrade(engine) == head_revision()  # idempotent
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    with pytest.raises(LsmError, match="newer version"):
        upgrade(engine)
    engine.dispose()


def test_statuses_and_kinds_are_typed_and_stored_as_the_text_they_always_were(history):
    """Issue 28 item 7: the jobs' and batches' status columns are Mapped[JobStatus] (the enum in db), stored as
    its text in VARCHAR(16) with no CHECK and no database enum type, as migration 0001 made them: no migration,
    and rows written as text (by older code, or by hand) read back as the enum's members. (The kind column
    stays text: tests/test_worker.py, a kind no task runs.)"""
    from sqlalchemy.schema import CreateTable

    from db.schema import JobKind, JobStatus

    lab, engine, model_id = history
    for table in (Job.__table__, Batch.__table__):
        ddl = str(CreateTable(table).compile(engine)).lower()
        assert "check" not in ddl and "enum" not in ddl
        assert "\tstatus varchar(16) not null" in ddl
        assert table is Batch.__table__ or "\tkind varchar(16) not null" in ddl
    assert jobs.JobStatus is JobStatus and jobs.JobKind is JobKind  # the queue's names are the schema's
    with lab.begin() as s:
        batch = s.scalars(select(Batch.id)).first()
        s.execute(text("INSERT INTO jobs (kind, payload, status, priority, owner, attempts, max_attempts, "
                       "progress_done, progress_total, cancel_requested, errors, created) VALUES ('saliency', '{}', "
                       "'running', 0, 'ana', 1, 3, 0, 0, false, '[]', CURRENT_TIMESTAMP)"))  # fmt: skip
        old = s.scalars(select(Job.id).where(Job.owner == "ana")).one()
        s.add(jobs.new_job(jobs.JobKind.EVALUATE, {}, "bea", batch_id=batch))
    with lab() as s:
        job = s.get(Job, old)
        assert (job.status, job.kind) == (JobStatus.RUNNING, JobKind.SALIENCY)
        assert type(job.status) is JobStatus and job.status == "running"
        assert s.scalar(select(Job.id).where(Job.status == "running", Job.kind == JobKind.SALIENCY)) == old
        stored = s.execute(text("SELECT kind, status FROM jobs WHERE owner = 'bea'")).one()
    assert tuple(stored) == ("evaluate", "queued")  # written as the text, read as it by plain SQL


def test_submit_claim_finish_and_export(history, data_dir):
    lab, engine, model_id = history
    files = crop_files(5, seed=21) + [field_file(22), RawFile("broken.png", b"\x89PNG\r\n\x1a\n garbage")]
    meta = batches.BatchMeta(mouse_id="m7", age_days=70, sex="f", strain="C57BL/6", gate="LSK CD150+CD48-")
    sub = batches.submit_batch(lab, files, model_id, "first batch", owner="ana", meta=meta)
    assert sub.images == 7 and len(sub.errors) == 1 and sub.errors[0][0] == "broken.png"
    info = jobs.queue_info(lab, sub.job_id)
    assert info.status == "queued" and info.position == 1 and info.total == 6
    worker = Worker(lab, device="cpu")
    assert worker.run(drain=True) == 1
    with lab() as s:
        job = s.get(Job, sub.job_id)
        assert (job.status, job.attempts, job.progress_done) == ("done", 1, 6)
        batch = s.get(Batch, sub.batch_id)
        assert batch.status == "done" and batch.sex == "F" and batch.age_days == 70
        n_cells = s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == sub.batch_id))
        field = s.scalars(select(Image).where(Image.file == "field22.tif")).one()
        assert field.kind == "field" and 6 <= field.n_cells <= 10
        assert n_cells == 5 + field.n_cells
        counts = queries.class_counts(s, [sub.batch_id])[sub.batch_id]
        assert sum(counts.values()) == n_cells
        assert sum(queries.class_counts(s, [sub.batch_id], threshold=0.9)[sub.batch_id].values()) <= n_cells
        listed = queries.batches(s, queries.BatchFilter(owner="ana", age_min_days=60, age_max_days=80, text="FIRST"))
        assert [b.id for b in listed] == [sub.batch_id] and listed[0].errors == 1
        assert queries.batches(s, queries.BatchFilter(owner="someone else")) == []
        page = queries.batch_cells(s, sub.batch_id, offset=0, limit=3, order="score")
        assert len(page) == 3 and page[0].score >= page[-1].score
        by_age = queries.counts_by_age(s, "lsm")
        assert sum(n for age, _, n, _ in by_age if age == 70) == n_cells
        from lsm_core.reports.export import batch_rows

        columns, rows = batch_rows(s, [sub.batch_id])
        rows = list(rows)
    assert columns[:9] == ["file", "page", "cell", "x", "y", "w", "h", "predicted", "score"]
    assert "batch" in columns and "age_days" in columns
    assert len(rows) == n_cells + 1  # the broken file is one row with its error
    broken = [r for r in rows if r[0] == "broken.png"]
    assert broken and "damaged" in broken[0][columns.index("error")]


def test_bad_metadata_and_missing_model_are_refused(history):
    lab, _, model_id = history
    with pytest.raises(LsmError, match="not a number"):
        batches.submit_batch(lab, crop_files(1, 1), model_id, "x", "ana", meta=batches.BatchMeta(age_days="ten weeks"))
    with pytest.raises(LsmError, match="no longer exists"):
        batches.submit_batch(lab, crop_files(1, 1), 99999, "x", "ana")
    with pytest.raises(LsmError, match="no files"):
        batches.submit_batch(lab, [], model_id, "x", "ana")


def test_fair_order_serves_the_least_recently_served_owner_first(history):
    lab, _, model_id = history
    big = [jobs.submit(lab, jobs.JobKind.CLASSIFY, {}, "ana", total=100) for _ in range(4)]
    small = jobs.submit(lab, jobs.JobKind.CLASSIFY, {}, "ben", total=1)
    urgent = jobs.submit(lab, jobs.JobKind.CLASSIFY, {}, "ana", priority=5, total=1)
    with lab() as s:
        assert jobs.queued_order(s)[0] == urgent  # nobody served yet: priority, then age
    order = [jobs.claim(lab, "w1").id for _ in range(6)]
    assert order[0] == urgent
    assert order[1] == small  # ana was just served; ben never was
    assert order[2:] == big
    assert jobs.claim(lab, "w1") is None


def test_lease_expiry_retries_then_fails_keeping_every_error(history):
    lab, _, _ = history
    job_id = jobs.submit(lab, jobs.JobKind.CLASSIFY, {}, "ana")
    with lab.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(max_attempts=2))
    for attempt in (1, 2):
        job = jobs.claim(lab, f"w{attempt}", lease_s=0.0)
        assert job.id == job_id and job.attempts == attempt
        time.sleep(0.01)
    assert jobs.claim(lab, "w3") is None  # reaped: second attempt was the last
    with lab() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and len(job.errors) == 2
        assert all("lease ran out" in e for e in job.errors)


def test_cancel_queued_at_once_and_running_at_next_chunk(history):
    lab, _, model_id = history
    queued = batches.submit_batch(lab, crop_files(2, 31), model_id, "to cancel", owner="ana")
    assert jobs.cancel(lab, queued.job_id, "ana") == "cancelled"
    with lab() as s:
        assert s.get(Batch, queued.batch_id).status == "cancelled"

    running = batches.submit_batch(lab, crop_files(600, 32), model_id, "long", owner="ana")
    worker = Worker(lab, device="cpu", batch_size=4)
    job = jobs.claim(lab, worker.id)
    thread = threading.Thread(target=worker.run_job, args=(job,))
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        with lab() as s:
            if s.scalar(select(Job.progress_done).where(Job.id == job.id)) > 0:
                break
        time.sleep(0.01)
    assert jobs.cancel(lab, job.id, "ana") == "running"  # asked; the worker stops at its next chunk
    thread.join(timeout=60)
    with lab() as s:
        final = s.get(Job, job.id)
        assert final.status == "cancelled"
        assert 0 < final.progress_done < 600
        assert s.get(Batch, running.batch_id).status == "cancelled"


def test_cache_reuses_cells_of_the_same_image_and_weights(history, data_dir):
    lab, _, model_id = history
    files = crop_files(3, seed=41, prefix="cached") + [field_file(42)]
    first = batches.submit_batch(lab, files, model_id, "first", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    store = lab.blobs
    with lab() as s:
        shas = s.scalars(select(Image.sha256).where(Image.batch_id == first.batch_id)).all()
    for sha in shas:  # the bytes are gone: the second batch can only have come from the cache
        store.path(sha).unlink()
    second = batches.submit_batch(lab, files, model_id, "second", owner="ben")
    for sha in shas:
        store.path(sha).unlink()
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        assert s.get(Job, second.job_id).status == "done"

        def cells(batch_id):
            return [
                (c.idx, c.x, c.y, c.predicted, round(c.score, 6))
                for c in s.scalars(
                    select(Cell).join(Image).where(Cell.batch_id == batch_id).order_by(Image.position, Cell.idx)
                )
            ]

        assert cells(first.batch_id) == cells(second.batch_id) and len(cells(second.batch_id)) > 3
        assert (
            s.scalar(
                select(func.count())
                .select_from(Image)
                .where(Image.batch_id == second.batch_id, Image.error.is_not(None))
            )
            == 0
        )


@pytest.mark.slow
def test_forty_jobs_shared_by_worker_processes_each_done_once(history, db_url, data_dir):
    lab, _, model_id = history
    n_workers = 2 if db_url.startswith("sqlite") else 4
    procs = [start_worker(db_url, data_dir, "--device", "cpu", "--poll", "0.2") for _ in range(n_workers)]

    def all_listening() -> bool:  # every worker has started and polls the queue (a slow start took nothing)
        with lab() as s:
            return s.scalar(select(func.count()).select_from(WorkerRow)) == n_workers

    wait_for(all_listening, 120, "the workers to start")
    submitted = [
        batches.submit_batch(lab, crop_files(2, 100 + i, prefix=f"j{i}-"), model_id, f"b{i}", owner=f"u{i % 5}")
        for i in range(40)
    ]

    def all_ended() -> bool:
        with lab() as s:
            ids = [x.job_id for x in submitted]
            return (
                s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(ids), Job.status.in_(jobs.ENDED))) == 40
            )

    wait_for(all_ended, 240, "the 40 jobs")
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    with lab() as s:
        rows = s.execute(
            select(Job.status, Job.attempts, Job.worker_id).where(Job.id.in_([x.job_id for x in submitted]))
        ).all()
        assert [r.status for r in rows] == ["done"] * 40
        assert all(r.attempts == 1 for r in rows)
        assert len({r.worker_id for r in rows}) >= 2  # the work was shared
        total = s.scalar(select(func.count()).select_from(Cell))
        distinct = s.scalar(select(func.count()).select_from(select(Cell.image_id, Cell.idx).distinct().subquery()))
        assert total == distinct == 80


@pytest.mark.slow
def test_worker_killed_mid_job_another_finishes_without_duplicates(history, db_url, data_dir):
    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(600, 51), model_id, "big", owner="ana")
    first = start_worker(db_url, data_dir, "--device", "cpu", "--lease", "2", "--batch-size", "4", "--poll", "0.2")
    deadline = time.time() + 120
    while time.time() < deadline:
        with lab() as s:
            done = s.scalar(select(Job.progress_done).where(Job.id == sub.job_id))
        if done >= 20:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    with lab() as s:
        job = s.get(Job, sub.job_id)
        assert job.status == "running" and 0 < job.progress_done < 600, "the kill must land mid-job"
    second = start_worker(db_url, data_dir, "--drain", "--device", "cpu", "--poll", "0.2")
    out = second.communicate(timeout=240)[0]
    assert second.returncode == 0, out
    with lab() as s:
        job = s.get(Job, sub.job_id)
        assert job.status == "done" and job.attempts == 2 and job.progress_done == 600
        assert any("lease ran out" in e for e in job.errors)
        total = s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == sub.batch_id))
        assert total == 600  # one cell per crop, none lost, none twice
        assert (
            s.scalar(
                select(func.count()).select_from(Image).where(Image.batch_id == sub.batch_id, Image.done.is_(False))
            )
            == 0
        )


@pytest.mark.slow
def test_web_and_worker_write_at_once_without_lock_errors(history, db_url, data_dir):
    lab, _, model_id = history
    batches.submit_batch(lab, crop_files(400, 61), model_id, "busy", owner="ana")
    worker = start_worker(db_url, data_dir, "--device", "cpu", "--batch-size", "8", "--poll", "0.1", "--lease", "5")
    deadline = time.time() + 120
    while time.time() < deadline:  # the worker is writing chunks of cells
        with lab() as s:
            if s.scalar(select(func.count()).select_from(Job).where(Job.status == "running", Job.progress_done > 0)):
                break
        time.sleep(0.05)
    try:
        ids = [
            batches.submit_batch(lab, crop_files(1, 200 + i), model_id, f"web{i}", owner="ben").batch_id
            for i in range(25)
        ]
        for _ in ids[:5]:
            with lab() as s:
                queries.batches(s)
    finally:
        worker.send_signal(signal.SIGTERM)
        out = worker.communicate(timeout=60)[0]
    assert "database is locked" not in out
    assert worker.returncode == 0, out
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(Batch).where(Batch.id.in_(ids))) == 25
        row = s.scalars(select(WorkerRow)).first()
        assert row is not None and row.stopped and row.device == "cpu"
        # SIGTERM released the job it held: nothing is left running
        assert s.scalar(select(func.count()).select_from(Job).where(Job.status == "running")) == 0


def test_worker_heartbeat_row_is_live(history):
    lab, _, _ = history
    worker = Worker(lab, device="cpu")
    worker.run(drain=True)
    with lab() as s:
        assert queries.live_workers(s) == []  # it stopped
        s.execute(update(WorkerRow).values(stopped=False))
        s.commit()
        live = queries.live_workers(s)
        assert [w.id for w in live] == [worker.id] and live[0].host
        s.execute(update(WorkerRow).values(last_seen=WorkerRow.last_seen - timedelta(minutes=5)))
        s.commit()
        assert queries.live_workers(s) == []


def test_queue_position_and_eta_from_measured_throughput(history):
    lab, _, model_id = history
    first = batches.submit_batch(lab, crop_files(6, 71), model_id, "measured", owner="ana")
    assert jobs.queue_info(lab, first.job_id).eta_s is None  # nothing measured yet
    Worker(lab, device="cpu").run(drain=True)
    a = batches.submit_batch(lab, crop_files(4, 72), model_id, "next", owner="ana")
    b = batches.submit_batch(lab, crop_files(4, 73), model_id, "after", owner="ana")
    info_a, info_b = jobs.queue_info(lab, a.job_id), jobs.queue_info(lab, b.job_id)
    assert (info_a.position, info_b.position) == (1, 2)
    assert 0 < info_a.eta_s < info_b.eta_s  # b waits for a's images too
    done = jobs.queue_info(lab, first.job_id)
    assert done.status == "done" and done.eta_s is None and done.done == done.total == 6


@pytest.mark.slow
def test_command_line_submit_jobs_export(history, db_url, data_dir, tmp_path):
    lab = history[0]
    import json

    import openpyxl

    folder = tmp_path / "upload"
    folder.mkdir()
    for raw in crop_files(3, 81) + [field_file(82)]:
        (folder / raw.source).write_bytes(raw.data)
    (folder / "notes.tif").write_text("not an image")
    env = worker_env(db_url, data_dir)

    def cli(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "lsm_core", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    out = cli(
        "submit",
        str(folder),
        "--model",
        "tiny-lsm",
        "--batch",
        "cli batch",
        "--mouse-id",
        "M3",
        "--age-days",
        "540",
        "--sex",
        "M",
        "--strain",
        "C57BL/6",
        "--gate",
        "LSK",
        "--notes",
        "<b>not html</b>",
        "--owner",
        "cara",
    )
    words = out.stdout.split()
    assert words[0] == "batch" and words[2] == "job" and len(words) == 4
    assert "notes.tif" in out.stderr and "text file" in out.stderr
    batch_id, job_id = int(words[1]), int(words[3])
    listed = json.loads(cli("jobs", "--json").stdout)
    mine = next(j for j in listed if j["id"] == job_id)
    assert set(mine) == {"id", "batch", "owner", "kind", "status", "done", "total", "attempts", "error"}
    assert (mine["status"], mine["batch"], mine["owner"], mine["total"]) == ("queued", batch_id, "cara", 4)
    cli("worker", "--drain", "--device", "cpu")
    mine = next(j for j in json.loads(cli("jobs", "--json").stdout) if j["id"] == job_id)
    assert (mine["status"], mine["done"], mine["attempts"]) == ("done", 4, 1)
    xlsx = tmp_path / "export.xlsx"
    cli("export", str(batch_id), "--out", str(xlsx))
    sheet = openpyxl.load_workbook(xlsx).active
    rows = list(sheet.iter_rows(values_only=True))
    header = rows[0]
    assert header[:9] == ("file", "page", "cell", "x", "y", "w", "h", "predicted", "score")
    assert {"batch", "mouse_id", "age_days", "sex", "strain", "gate", "notes"} <= set(header)
    with lab() as s:
        n_cells = s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == batch_id))
    assert len(rows) - 1 == n_cells + 1  # every cell, plus the text file's error row
    body = [dict(zip(header, r)) for r in rows[1:]]
    assert all(r["batch"] == batch_id and r["age_days"] == 540 and r["notes"] == "<b>not html</b>" for r in body)
    # files are named as uploads are: from the folder's name, never by where they lie on the submitter's machine
    assert {r["file"] for r in body} == {f"upload/{raw.source}" for raw in crop_files(3, 81) + [field_file(82)]} | {
        "upload/notes.tif"
    }
    one = tmp_path / "elsewhere" / "single.tif"
    one.parent.mkdir()
    one.write_bytes(field_file(83).data)
    batch = int(cli("submit", str(one), "--model", "tiny-lsm", "--batch", "one file").stdout.split()[1])
    cli("worker", "--drain", "--device", "cpu")
    with lab() as s:
        assert s.scalars(select(Image.file).where(Image.batch_id == batch)).all() == ["single.tif"]
        idx = s.scalars(select(Cell.idx).where(Cell.batch_id == batch).order_by(Cell.idx)).first()
    cli("label", str(batch), f"single.tif:{idx}", "MPP")  # the name the pages and exports show finds the cell


def test_batch_operations_check_the_owner(history):
    from lsm_core.lab import batches

    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))  # ana and ben are members (tests/test_accounts.py)
    sub = batches.submit_batch(lab, crop_files(3, 91), model_id, "mine", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    assert batches.find_by_name(lab, "ana", " mine ") == sub.batch_id
    assert batches.find_by_name(lab, "ben", "mine") is None
    with pytest.raises(LsmError, match="belongs to ana"):
        batches.rename(lab, sub.batch_id, "stolen", "ben")
    with pytest.raises(LsmError, match="belongs to ana"):
        batches.delete(lab, sub.batch_id, "ben")
    batches.rename(lab, sub.batch_id, "renamed", "ana")
    added = batches.add_files(lab, sub.batch_id, crop_files(2, 92, prefix="more"), "ana")
    Worker(lab, device="cpu").run(drain=True)
    rerun = batches.rerun(lab, sub.batch_id, model_id, "ben")  # anyone may re-run into a batch of their own
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        assert s.get(Batch, sub.batch_id).name == "renamed"
        assert s.get(Job, added.job_id).status == "done"
        assert queries.count_cells(s, sub.batch_id) == 5
        copy = s.get(Batch, rerun.batch_id)
        assert copy.owner == "ben" and copy.status == "done" and queries.count_cells(s, rerun.batch_id) == 5
    batches.delete(lab, sub.batch_id, "ana")
    with lab() as s:
        assert s.get(Batch, sub.batch_id) is None
        assert s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == sub.batch_id)) == 0
        assert queries.count_cells(s, rerun.batch_id) == 5  # the re-run keeps its own cells


def test_audit_trail_records_who_did_what(history):
    from db import audit
    from lsm_core.lab import batches
    from lsm_core.lab.registry import set_default

    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(1, 401), model_id, "audited", owner="ana")
    batches.rename(lab, sub.batch_id, "audited 2", "ana")
    set_default(lab, model_id, "ana")
    batches.delete(lab, sub.batch_id, "ana")
    with pytest.raises(LsmError):
        batches.delete(lab, 999_999, "ana")  # a refused action leaves no record
    with lab() as s:
        trail = [(e.actor, e.action, e.target) for e in reversed(audit.events(s))]
    mine = [t for t in trail if t[0] == "ana"]
    assert mine == [
        ("ana", "submit", f"batch {sub.batch_id}"),
        ("ana", "rename", f"batch {sub.batch_id}"),
        ("ana", "set default", "model tiny-lsm v1"),
        ("ana", "delete", f"batch {sub.batch_id}"),
    ]
    assert any(a == "system" and act == "register" for a, act, _ in trail)
