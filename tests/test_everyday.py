"""The everyday path (issue: actions on the wrong batch, files counted twice, ids reused, silent empty
results), in the library, on SQLite and on PostgreSQL (see conftest.db_url)."""

from __future__ import annotations

import threading
import time

import pytest
from alembic import command
from sqlalchemy import func, select, text

from db import audit, queries
from db.schema import AuditEvent, Batch, Image, Job
from db.schema import Worker as WorkerRow
from db.session import _alembic_config, make_engine, session_factory, upgrade
from lsm_core.errors import LsmError
from lsm_core.imaging.cells import FindParams, no_cells_note
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.lab import accounts, batches, jobs
from lsm_core.lab.worker import Worker
from lsm_core.reports import compare
from lsm_core.reports.report import load_report
from tests.helpers import crop_files, field_file, with_settings


def submit(lab, model_id, files, name="b", owner="ana", **meta):
    return batches.submit_batch(lab, files, model_id, name, owner=owner, meta=batches.BatchMeta(**meta))


def test_an_action_names_the_batch_and_the_revision_its_user_saw(history):
    lab, _, model_id = history
    mine = submit(lab, model_id, crop_files(2, seed=1), "A2 20m")
    with lab() as s:
        seen = s.get(Batch, mine.batch_id).revision
    theirs = submit(lab, model_id, crop_files(2, seed=2), "colleague's", owner="bob")  # the list changes
    assert theirs.batch_id > mine.batch_id

    batches.rename(lab, mine.batch_id, "A2 20m renamed", "ana", seen_revision=seen)
    with pytest.raises(LsmError, match=f"batch #{mine.batch_id} was changed since you selected it"):
        batches.delete(lab, mine.batch_id, "ana", seen_revision=seen)  # renamed since: refused
    with lab() as s:
        now = s.get(Batch, mine.batch_id).revision
    assert now == seen + 1

    gone = batches.delete(lab, mine.batch_id, "ana", seen_revision=now)
    assert (gone.batch_id, gone.name, gone.images, gone.cells) == (mine.batch_id, "A2 20m renamed", 2, 0)
    with lab() as s:
        assert s.get(Batch, theirs.batch_id) is not None  # the colleague's batch is untouched
        target = s.scalars(select(AuditEvent.target).where(AuditEvent.action == "delete")).all()
    assert target == [f"batch {mine.batch_id}"]
    with pytest.raises(LsmError, match="no longer exists"):
        batches.delete(lab, mine.batch_id, "ana")
    with pytest.raises(LsmError, match="no longer exists"):
        batches.rename(lab, mine.batch_id, "x", "ana")
    with pytest.raises(LsmError, match="no longer exists"):
        batches.rerun(lab, mine.batch_id, model_id, "ana")


def test_adding_files_adds_only_new_ones_never_twice(history):
    lab, _, model_id = history
    first = crop_files(20, seed=3)
    sub = submit(lab, model_id, first, "twenty")
    Worker(lab, device="cpu").run(drain=True)
    one_more = crop_files(1, seed=4, prefix="extra")
    added = batches.add_files(lab, sub.batch_id, first + one_more, "ana")  # the uploader still held the 20
    assert added.images == 1 and len(added.skipped) == 20
    assert all("in this batch already" in why for _, why in added.skipped)
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        shas = s.scalars(select(Image.sha256).where(Image.batch_id == sub.batch_id)).all()
        report = load_report(s, sub.batch_id)
    assert len(shas) == len(set(shas)) == 21
    assert report.cells_total == 21 and report.images_read == 21
    with pytest.raises(LsmError, match="nothing was added: all 21 file"):
        batches.add_files(lab, sub.batch_id, first + one_more, "ana")
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.batch_id == sub.batch_id)) == 2


def test_the_same_file_twice_in_one_upload_is_counted_once(history):
    lab, _, model_id = history
    files = crop_files(3, seed=5)
    sub = submit(lab, model_id, files + [RawFile("copy of cell0000.png", files[0].data)], "dup")
    assert sub.images == 3 and sub.skipped == [
        ("copy of cell0000.png", "the same file is in this batch already (as cell0000.png)")
    ]


def test_ids_of_batches_and_jobs_are_never_reused(history):
    lab, _, model_id = history
    a = submit(lab, model_id, crop_files(1, seed=6), "a")
    b = submit(lab, model_id, crop_files(1, seed=7), "b")
    batches.delete(lab, b.batch_id, "ana")  # the newest one
    with lab.begin() as s:
        s.execute(text("DELETE FROM jobs WHERE id = :i"), {"i": b.job_id})  # (jobs are not deleted by the app)
    c = submit(lab, model_id, crop_files(1, seed=8), "c")
    assert c.batch_id > b.batch_id > a.batch_id and c.job_id > b.job_id


def test_the_migration_keeps_deleted_ids_unused_and_every_row(tmp_path):
    """An SQLite history at revision 0005 whose newest batch was deleted (and an audit trail naming a higher
    one) keeps its images and cells through the upgrade, and the next batch gets a new id."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(_alembic_config(engine), "0005")
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO models (id, task, name, version, classes, architecture, input_size, pixel_size_um, "
                "crop_um, normalisation, temperature, weights_sha256, path, metrics, training, demo, is_default, "
                "deleted, created) VALUES (1, 'lsm', 'm', 1, '[]', 'tiny_cnn', 64, 0.2, 12.8, '', 1, 'x', 'p', "
                "'{}', '{}', 0, 0, 0, '2026-01-01')"
            )
        )
        for i in (1, 2, 3):
            c.execute(
                text(
                    f"INSERT INTO batches (id, name, owner, created, model_id, status) "
                    f"VALUES ({i}, 'b{i}', 'ana', '2026-01-01', 1, 'done')"
                )
            )
            c.execute(
                text(f"INSERT INTO images (id, batch_id, position, file, page, done) VALUES ({i}, {i}, 0, 'f', 1, 1)")
            )
            c.execute(
                text(
                    f"INSERT INTO cells (batch_id, image_id, idx, x, y, w, h, predicted, score, probs, flags) "
                    f"VALUES ({i}, {i}, 1, 0, 0, 1, 1, 'MPP', 0.5, '[]', '')"
                )
            )
            c.execute(
                text(
                    f"INSERT INTO jobs (kind, payload, status, priority, owner, batch_id, attempts, max_attempts, "
                    f"progress_done, progress_total, cancel_requested, errors, created) VALUES ('classify', "
                    f"'{{}}', 'done', 0, 'ana', {i}, 1, 3, 1, 1, 0, '[]', '2026-01-01')"
                )
            )
        c.execute(
            text(
                "INSERT INTO audit_events (at, actor, action, target, detail) "
                "VALUES ('2026-01-01', 'ana', 'delete', 'batch 5', '{}')"
            )
        )
        c.execute(text("DELETE FROM batches WHERE id = 3"))
    upgrade(engine)
    lab = session_factory(engine)
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 2  # batches 1 and 2 kept their images
        assert s.scalar(text("SELECT count(*) FROM cells")) == 2
        assert s.scalar(text("SELECT count(*) FROM jobs")) == 3
        assert s.scalar(text("PRAGMA foreign_keys")) == 1
        assert [b.revision for b in s.scalars(select(Batch))] == [0, 0]
    with lab.begin() as s:
        s.add(Batch(name="new", owner="ana", model_id=1))
    with lab() as s:
        assert max(s.scalars(select(Batch.id))) == 6  # past 5, which the audit trail names
    engine.dispose()


def test_an_image_without_cells_says_why_and_a_rerun_at_another_pixel_size_finds_them(history):
    lab, _, model_id = history
    sub = submit(lab, model_id, [field_file(31)], "wrong calibration", pixel_size_um=4.0)  # 20 times too large
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        report = load_report(s, sub.batch_id)
    assert report.cells_total == 0 and not report.running
    [(file, why)] = report.without_cells
    assert file == "field31.tif"
    assert "larger than 18 µm" in why and "Is the pixel size right? It is 4 µm/px, set for this batch" in why

    again = batches.rerun(lab, sub.batch_id, model_id, "ana", pixel_size_um=0.2)
    Worker(lab, device="cpu").run(drain=True)  # not the cached (empty) result of the other pixel size
    with lab() as s:
        redone = load_report(s, again.batch_id)
        assert s.get(Batch, again.batch_id).pixel_size_um == 0.2
    assert redone.cells_total >= 6 and not redone.without_cells


def test_no_cells_note_names_what_was_dropped():
    assert no_cells_note({"clump": 1, "debris": 3}, FindParams()) == (
        "no cells found: 1 object larger than 18 µm was dropped as a clump; 3 objects smaller than 4 µm were dropped "
        "as debris. Is the pixel size right? It is 0.2 µm/px, the model's default."
    )
    assert "nothing stood out from the background" in no_cells_note({}, FindParams())


def test_the_worker_says_at_once_which_job_it_runs(history):
    lab, _, model_id = history
    sub = submit(lab, model_id, crop_files(300, seed=9), "long")
    worker = Worker(lab, device="cpu", batch_size=8)  # many small chunks: the job lasts a while
    job = jobs.claim(lab, worker.id)
    seen: set = set()
    thread = threading.Thread(target=worker.run_job, args=(job,))
    thread.start()
    while thread.is_alive():  # no heartbeat thread runs here: only the claim itself can say it
        with lab() as s:
            row = s.get(WorkerRow, worker.id)
            seen.add(row.current_job_id if row is not None else "no row")
        time.sleep(0.01)
    thread.join()
    assert sub.job_id in seen
    with lab() as s:
        assert s.get(WorkerRow, worker.id).current_job_id is None  # and at once when it ends


def test_people_are_those_who_acted_and_audit_details_read_as_text(history):
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset(), signed_in=False)  # lab mode, nobody named: ana administers
    submit(lab, model_id, crop_files(1, seed=10), "x", owner="ana")
    submit(lab, model_id, crop_files(1, seed=11), "y", owner="bob")
    names = {p.name for p in accounts.people(lab)}
    assert {"ana", "bob"} <= names and accounts.SYSTEM not in names
    trail = accounts.audit_trail(lab, "ana")
    submitted = next(e for e in trail if e["did"] == "submit" and e["who"] == "bob")
    assert submitted["detail"].startswith("name: y · model: tiny-lsm v1 · images: 1")
    assert audit.describe({"a_b": 1.5, "c": None, "d": [1, 2]}) == "a b: 1.5 · d: 1, 2"


def test_compare_starts_from_one_batch_per_mouse(history):
    lab, _, model_id = history
    old = submit(lab, model_id, crop_files(1, seed=12), "M1 first", mouse_id="M1")
    new = submit(lab, model_id, crop_files(1, seed=13), "M1 again", mouse_id="M1")
    other = submit(lab, model_id, crop_files(1, seed=14), "M2", mouse_id="M2")
    loose = submit(lab, model_id, crop_files(1, seed=15), "no mouse")
    with lab() as s:
        rows = queries.batches(s)
    chosen = compare.one_batch_per_mouse(rows)
    assert sorted(chosen) == sorted([new.batch_id, other.batch_id, loose.batch_id]) and old.batch_id not in chosen


def test_a_broken_file_is_described_without_python_internals(history):
    lab, _, model_id = history
    sub = submit(lab, model_id, crop_files(1, seed=16) + [RawFile("broken.png", b"\x89PNG\r\n\x1a\nbroken")], "x")
    [(file, message)] = sub.errors
    assert file == "broken.png" and "damaged or incomplete" in message
    assert "_io" not in message and "object at 0x" not in message
