"""Uploads that do not wait on decoding (issue #16, item 5), on SQLite and PostgreSQL.

``submit_batch`` reads headers and sizes only: a file whose headers are fine but whose pixels are broken (a
PNG cut in its image data, a TIFF whose strip is cut short) is accepted there and reported by the worker as
that image's error, once, while the rest of the batch is classified. Its rows are written in one statement
on PostgreSQL (after the model's read), and each upload is hashed once.
"""

from __future__ import annotations

import io
import types

import numpy as np
import pytest
import tifffile
from sqlalchemy import event, func, select

from db.schema import AuditEvent, Batch, Cell, Image, Job, Model
from lsm_core.errors import LsmError
from lsm_core.imaging import images
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.imaging.readers.base import StackReader
from lsm_core.imaging.readers.picture import PictureReader
from lsm_core.imaging.readers.tiff import TiffPagesReader
from lsm_core.lab import batches
from lsm_core.lab import blobs as blobs_module
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files


def _cut_pixels() -> list[RawFile]:
    """A PNG and a TIFF whose headers are whole and whose pixel data are cut short."""
    arr = (np.random.default_rng(5).random((64, 64)) * 255).astype(np.uint8)
    png = crop_files(1, seed=951, prefix="cut")[0].data
    assert png is not None
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    tif = buf.getvalue()
    with tifffile.TiffFile(io.BytesIO(tif)) as t:
        strip = t.pages[0].dataoffsets[0]  # type: ignore[union-attr]
    assert strip > 8  # the IFD comes before the pixels: cutting the strip leaves the header whole
    return [RawFile("cut.png", png[: len(png) // 2]), RawFile("cut.tif", tif[: strip + 100])]


def _no_decoding(*_args, **_kwargs):
    raise AssertionError("submit_batch decoded pixels")


def test_pixels_are_decoded_by_the_worker_and_a_broken_page_is_that_image_s_error(history, monkeypatch):
    lab, _, model_id = history
    good = crop_files(3, seed=950)
    with monkeypatch.context() as m:  # nothing decodes and nothing is hashed twice during the submit
        for reader in (PictureReader, TiffPagesReader, StackReader):
            m.setattr(reader, "read", _no_decoding)
        m.setattr(images, "to_grey_float", _no_decoding)
        m.setattr(blobs_module, "hashlib", types.SimpleNamespace(sha256=_no_decoding))
        sub = batches.submit_batch(lab, good[:2] + _cut_pixels() + good[2:], model_id, "cut pixels", owner="ana")
    assert sub.errors == [] and sub.images == 5  # their headers are fine: accepted, stored
    with lab() as s:
        cut = s.scalars(select(Image).where(Image.batch_id == sub.batch_id, Image.file.like("cut.%"))).all()
        assert [(im.width, im.height, im.error) for im in cut] == [(64, 64, None)] * 2
        assert all(im.sha256 and lab.blobs.has(im.sha256) for im in cut)
        assert s.get(Job, sub.job_id).progress_total == 5
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        rows = s.scalars(select(Image).where(Image.batch_id == sub.batch_id).order_by(Image.position)).all()
        assert [r.file for r in rows] == ["cell0000.png", "cell0001.png", "cut.png", "cut.tif", "cell0002.png"]
        for r in rows:
            cells = s.scalar(select(func.count()).select_from(Cell).where(Cell.image_id == r.id))
            if r.file.startswith("cut."):  # one error row each, from the worker
                assert r.error and "damaged or incomplete" in r.error, (r.file, r.error)
                assert (r.done, r.n_cells, cells) == (True, 0, 0)
            else:
                assert (r.error, r.done, r.n_cells, cells) == (None, True, 1, 1)
        job = s.get(Job, sub.job_id)
        assert (job.status, job.progress_done, job.progress_total) == ("done", 5, 5)
        assert s.get(Batch, sub.batch_id).status == "done"


def _statements(lab, call):
    """What ``call()`` returns, and the SQL statements it sent: (text, number of parameters, whether the
    driver's connection was in autocommit)."""
    sent: list[tuple[str, int, bool]] = []

    def seen(conn, _cursor, statement, parameters, *_rest):
        driver = conn.connection.driver_connection
        sent.append((statement, len(parameters or ()), bool(getattr(driver, "autocommit", False))))

    event.listen(lab.engine, "before_cursor_execute", seen)
    try:
        return call(), sent
    finally:
        event.remove(lab.engine, "before_cursor_execute", seen)


# one image row (VALUES), or many (on PostgreSQL: unnest of one array per column)
@pytest.mark.parametrize(("n_good", "broken"), [(1, False), (12, True)])
def test_the_rows_of_a_submit_are_written_at_once(history, n_good, broken):
    lab, engine, model_id = history
    files = crop_files(n_good, seed=960 + n_good) + ([RawFile("broken.png", b"\x89PNG\r\n\x1a\n garbage")] * broken)
    n_rows = n_good + broken
    meta = batches.BatchMeta(mouse_id="m9", age_days=63, sex="f", notes="two\tlines\n")
    sub, sent = _statements(
        lab, lambda: batches.submit_batch(lab, files, model_id, "at once", owner="bea", meta=meta, priority=2)
    )
    if engine.dialect.name == "postgresql":
        assert len(sent) == 2, sent  # the model (with the batch's new id), then every row: one round trip each
        assert all(autocommit for _, _, autocommit in sent)  # no BEGIN, no COMMIT: the insert is atomic alone
        assert sent[1][1] <= 50  # parameters: psycopg keeps the statement's conversion (the constants are text)
    assert sub.images == n_rows and [f for f, _ in sub.errors] == ["broken.png"] * broken
    with lab() as s:
        batch = s.get(Batch, sub.batch_id)
        assert (batch.name, batch.owner, batch.model_id, batch.status, batch.revision) == (
            "at once",
            "bea",
            model_id,
            "queued",
            0,
        )
        assert (batch.mouse_id, batch.age_days, batch.sex, batch.notes) == ("m9", 63, "F", "two\tlines\n")
        assert batch.created is not None
        rows = s.scalars(select(Image).where(Image.batch_id == sub.batch_id).order_by(Image.position)).all()
        assert [r.position for r in rows] == list(range(n_rows)) and all(r.page == 1 for r in rows)
        assert [r.done for r in rows] == [False] * n_good + [True] * broken
        good = rows[:n_good]
        assert all(r.width == r.height == 64 and r.bit_depth == 8 and r.n_cells is None for r in good)
        assert all(r.sha256 and lab.blobs.has(r.sha256) and r.error is None for r in good)
        if broken:
            assert rows[-1].n_cells == 0 and "damaged" in (rows[-1].error or "") and rows[-1].width is None
        job = s.get(Job, sub.job_id)
        assert job.payload == {"batch_id": sub.batch_id, "model_id": model_id}
        assert (job.kind, job.status, job.owner, job.priority, job.batch_id) == (
            "classify",
            "queued",
            "bea",
            2,
            sub.batch_id,
        )
        assert (job.progress_done, job.progress_total, job.attempts, job.max_attempts) == (0, n_good, 0, 3)
        assert (job.errors, job.cancel_requested, job.created is not None) == ([], False, True)
        label = s.get(Model, model_id).label
        event_row = s.scalars(select(AuditEvent).where(AuditEvent.target == f"batch {sub.batch_id}")).one()
        assert (event_row.actor, event_row.action, event_row.at is not None) == ("bea", "submit", True)
        detail = {"name": "at once", "model": label, "images": n_rows, "failed": int(broken), "skipped": 0}
        assert event_row.detail == detail
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        cells = s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == sub.batch_id))
        assert cells == n_good and s.get(Job, sub.job_id).status == "done"


def test_a_refused_submit_writes_nothing(history):
    lab, _, model_id = history
    with lab() as s:
        before = [s.scalar(select(func.count()).select_from(t)) for t in (Batch, Image, Job, AuditEvent)]
    with lab.begin() as s:
        s.get(Model, model_id).deleted = True
    try:
        with pytest.raises(LsmError, match="no longer exists"):
            batches.submit_batch(lab, crop_files(2, seed=970), model_id, "too late", owner="ana")
    finally:
        with lab.begin() as s:
            s.get(Model, model_id).deleted = False
    with lab() as s:
        assert [s.scalar(select(func.count()).select_from(t)) for t in (Batch, Image, Job, AuditEvent)] == before
    sub = batches.submit_batch(lab, crop_files(2, seed=970), model_id, "in time", owner="ana")
    with lab() as s:
        assert s.get(Batch, sub.batch_id).name == "in time" and s.get(Job, sub.job_id).batch_id == sub.batch_id


def test_rows_that_need_several_statements_are_never_sent_in_autocommit(history):
    """db.bulk.insert_together on Lab.begin_one_statement: rows of several tables that PostgreSQL cannot take
    in one statement (many rows holding JSON) are refused there, nothing written; SQLite takes them in its
    transaction."""
    from db import bulk

    lab, engine, _ = history
    events = [{"actor": "ana", "action": "probe", "target": f"t{i}", "detail": {"i": i}} for i in range(2)]
    job = {"kind": "classify", "payload": {}, "owner": "ana", "status": "cancelled"}
    with lab() as s:
        before = s.scalar(select(func.count()).select_from(AuditEvent))
    if engine.dialect.name == "postgresql":
        with pytest.raises(AssertionError, match="not atomic"):
            with lab.begin_one_statement() as s:
                bulk.insert_together(s, [(AuditEvent, events), (Job, [job])], Job.id)
        with lab() as s:
            assert s.scalar(select(func.count()).select_from(AuditEvent)) == before
    else:
        with lab.begin_one_statement() as s:
            job_id = bulk.insert_together(s, [(AuditEvent, events), (Job, [job])], Job.id)
        with lab() as s:
            assert s.scalar(select(func.count()).select_from(AuditEvent)) == before + 2
            assert s.get(Job, job_id).owner == "ana"
