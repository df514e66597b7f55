"""The blob store's garbage: deleting a batch frees the files only it used, and ``collect_garbage`` (``python -m
lsm_core blobs gc``) removes what nothing refers to; each history test on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from db.schema import Batch, Job, SaliencyRun, utcnow
from lsm_core.lab import batches, jobs
from lsm_core.lab.blobs import BlobStore, human_bytes
from lsm_core.lab.jobs import JobKind
from tests.helpers import crop_files, with_blobs

ROOT = Path(__file__).resolve().parents[1]
HOUR = 3600.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look last written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def age_all(blobs: BlobStore, seconds: float) -> None:
    for f in blobs.scan():
        age(f.path, seconds)


def stored(blobs: BlobStore) -> set[str]:
    return {f.sha256 for f in blobs.scan() if f.sha256 is not None and not f.tomb}


def saliency_run(lab, batch_id: int, data: bytes) -> str:
    """A saliency run row of ``batch_id`` whose maps are the blob of ``data``; returns its sha256."""
    sha = lab.blobs.put(data)
    with lab.begin() as s:
        s.add(SaliencyRun(batch_id=batch_id, method="gradcam", scope="all", cells=0, blob=sha))
    return sha


@pytest.fixture
def history_lab(history, tmp_path):
    """The history's lab with a blob store of its own (the session's store is shared by other tests' databases):
    (lab, the id of the model `tiny-lsm`)."""
    lab, _, model_id = history
    return with_blobs(lab, tmp_path / "blobs"), model_id


def test_delete_removes_the_batchs_own_blobs_keeps_shared_ones_and_says_how_much(history_lab):
    lab, model_id = history_lab
    own, shared = crop_files(3, seed=601, prefix="own"), crop_files(1, seed=602, prefix="shared")
    a = batches.submit_batch(lab, own + shared, model_id, "A", owner="ana")
    b = batches.submit_batch(lab, shared, model_id, "B", owner="ana")
    maps = saliency_run(lab, a.batch_id, b"npz maps of batch A")
    own_shas = {sha(f.data) for f in own}
    shared_sha = sha(shared[0].data)
    assert stored(lab.blobs) == own_shas | {shared_sha, maps}

    gone = batches.delete(lab, a.batch_id, "ana")

    expected = sum(len(f.data) for f in own) + len(b"npz maps of batch A")
    assert (gone.images, gone.blobs, gone.freed_bytes) == (4, 4, expected)
    assert gone.freed == human_bytes(expected)
    assert stored(lab.blobs) == {shared_sha}  # batch B still uses it
    assert lab.blobs.get(shared_sha) == shared[0].data

    last = batches.delete(lab, b.batch_id, "ana")  # now nothing shares it
    assert (last.blobs, last.freed_bytes) == (1, len(shared[0].data))
    assert stored(lab.blobs) == set()


def test_delete_leaves_a_blob_an_upload_is_storing_again_to_garbage_collection(history_lab):
    from lsm_core.lab.gc import collect_garbage

    lab, model_id = history_lab
    files = crop_files(2, seed=611)
    sub = batches.submit_batch(lab, files, model_id, "C", owner="ana")
    with lab.begin() as s:  # made a while ago, with its files
        s.execute(update(Batch).where(Batch.id == sub.batch_id).values(created=utcnow() - timedelta(minutes=10)))
    age_all(lab.blobs, 20 * 60)
    again = lab.blobs.put(files[0].data)  # someone uploads the same bytes right now: not committed yet

    gone = batches.delete(lab, sub.batch_id, "ana")

    assert (gone.blobs, gone.freed_bytes) == (1, len(files[1].data))
    assert stored(lab.blobs) == {again}
    assert collect_garbage(lab, dry_run=False).files == 0  # within the grace period: the upload may still commit


def test_gc_removes_old_orphans_and_keeps_young_and_referenced_blobs(history_lab, monkeypatch):
    from lsm_core.lab import gc
    from lsm_core.lab.gc import collect_garbage

    monkeypatch.setattr(gc, "CHUNK", 2)  # files and queries a few at a time, as in a store of millions
    lab, model_id = history_lab
    images = crop_files(2, seed=621)
    sub = batches.submit_batch(lab, images, model_id, "D", owner="ana")
    maps = saliency_run(lab, sub.batch_id, b"saliency maps")
    waiting = lab.blobs.put(b"a labelled test ZIP, its evaluation queued")
    jobs.submit(lab, JobKind.EVALUATE, {"model_id": model_id, "uploads": [{"name": "t.zip", "sha256": waiting}]}, "ana")
    finished = lab.blobs.put(b"a test ZIP whose evaluation is done")
    job_id = jobs.submit(
        lab, JobKind.EVALUATE, {"model_id": model_id, "uploads": [{"name": "t.zip", "sha256": finished}]}, "ana"
    )
    with lab.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="done"))
    orphan = lab.blobs.put(b"a refused upload")
    age_all(lab.blobs, 2 * HOUR)
    young = lab.blobs.put(b"an upload being submitted right now")
    foreign = lab.blobs.root / "README.txt"  # not the store's layout: never touched
    foreign.write_text("notes")
    age(foreign, 9 * HOUR)
    referenced = {sha(f.data) for f in images} | {maps, waiting}

    report = collect_garbage(lab, dry_run=False, grace_s=HOUR)

    assert stored(lab.blobs) == referenced | {young}
    assert foreign.is_file()
    assert (report.blobs, report.blob_bytes) == (
        2,
        len(b"a refused upload") + len(b"a test ZIP whose evaluation is done"),
    )
    assert (report.kept_referenced, report.kept_young, report.partials, report.failed) == (4, 1, 0, 0)
    assert (report.files, report.bytes, report.dry_run) == (2, report.blob_bytes, False)
    assert orphan not in stored(lab.blobs)
    again = collect_garbage(lab, dry_run=False, grace_s=HOUR)
    assert again.files == again.bytes == 0 and again.kept_referenced == 4


def test_gc_dry_run_removes_nothing_but_reports_what_it_would_free(history_lab):
    from lsm_core.lab.gc import collect_garbage

    lab, model_id = history_lab
    orphans = [lab.blobs.put(b"orphan one"), lab.blobs.put(b"orphan number two")]
    partial = lab.blobs.path(orphans[0]).parent / ".partial-killed"
    partial.write_bytes(b"half an upload")
    age_all(lab.blobs, 2 * HOUR)
    before = sorted((f.path, f.mtime) for f in lab.blobs.scan())

    report = collect_garbage(lab, dry_run=True, grace_s=HOUR)

    assert sorted((f.path, f.mtime) for f in lab.blobs.scan()) == before
    assert (report.dry_run, report.blobs, report.partials) == (True, 2, 1)
    assert report.bytes == len(b"orphan one") + len(b"orphan number two") + len(b"half an upload")
    assert report.summary().startswith(f"would free {human_bytes(report.bytes)}")
    assert collect_garbage(lab, dry_run=False, grace_s=HOUR).bytes == report.bytes


def test_gc_removes_stale_partial_files_and_keeps_a_write_in_progress(history_lab):
    from lsm_core.lab.gc import collect_garbage

    lab, model_id = history_lab
    folder = lab.blobs.path(lab.blobs.put(b"kept: a batch would use it")).parent
    stale, writing = folder / ".partial-abc123", folder / ".partial-def456"
    stale.write_bytes(b"x" * 1000)
    writing.write_bytes(b"y" * 10)
    age(stale, 2 * HOUR)

    report = collect_garbage(lab, dry_run=False, grace_s=HOUR)

    assert not stale.exists() and writing.exists()
    assert (report.partials, report.partial_bytes, report.blobs) == (1, 1000, 0)  # the blob is young


def test_put_of_stored_content_touches_it_so_a_collection_keeps_it(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    sha = blobs.put(b"the same bytes")
    path = blobs.path(sha)
    age(path, 5 * HOUR)
    start = time.time()
    assert blobs.put(b"the same bytes") == sha
    assert path.stat().st_mtime >= start - 1  # stored again: fresh
    assert blobs.remove(sha, time.time() - HOUR) is None and path.is_file()  # too young to remove
    age(path, 5 * HOUR)
    assert blobs.remove(sha, time.time() - HOUR) == len(b"the same bytes") and not path.exists()
    assert blobs.put(b"the same bytes") == sha and blobs.get(sha) == b"the same bytes"  # written anew


def test_gc_finishes_a_removal_that_was_interrupted(history_lab):
    """A blob moved aside (``.gc-<sha256>``) by a collection killed half-way: back in place when something uses it,
    removed when nothing does."""
    from lsm_core.lab.gc import collect_garbage

    lab, model_id = history_lab
    used = crop_files(1, seed=631)
    batches.submit_batch(lab, used, model_id, "E", owner="ana")
    used_sha, unused_sha = sha(used[0].data), lab.blobs.put(b"nobody's")
    for name in (used_sha, unused_sha):
        path = lab.blobs.path(name)
        path.rename(path.with_name(".gc-" + name))
    age_all(lab.blobs, 2 * HOUR)

    report = collect_garbage(lab, dry_run=False, grace_s=HOUR)

    assert lab.blobs.get(used_sha) == used[0].data
    assert not any(f.tomb for f in lab.blobs.scan()) and stored(lab.blobs) == {used_sha}
    assert (report.blobs, report.blob_bytes) == (1, len(b"nobody's"))


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 999, 12_345_678, 1_500_000_000)] == ["0 B", "999 B", "12.3 MB", "1.5 GB"]


def test_only_administrators_collect_garbage_on_the_command_line(history_lab, db_url, data_dir):
    lab, _ = history_lab
    orphan = lab.blobs.put(b"an orphan")
    age_all(lab.blobs, 3 * HOUR)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        LSM_DATA_DIR=str(data_dir),
        LSM_DATABASE_URL=db_url,
        LSM_BLOB_DIR=str(lab.blobs.root),
        LSM_ADMINS="boss",
    )

    def gc(user: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lsm_core", "blobs", "gc", *args],
            cwd=ROOT,
            env=dict(env, LSM_USER=user),
            capture_output=True,
            text=True,
        )

    member = gc("ana")
    assert member.returncode == 2 and "ana is not an administrator" in member.stderr, member.stderr
    assert lab.blobs.has(orphan)
    dry = gc("boss", "--dry-run", "--grace-hours", "2")
    assert dry.returncode == 0, dry.stderr
    assert "would free 9 B: 1 unreferenced blob(s)" in dry.stdout and lab.blobs.has(orphan)
    late = gc("boss", "--grace-hours", "4")  # the orphan is 3 hours old
    assert late.returncode == 0 and "freed 0 B" in late.stdout and lab.blobs.has(orphan)
    done = gc("boss")
    assert done.returncode == 0, done.stderr
    assert "freed 9 B: 1 unreferenced blob(s)" in done.stdout and not lab.blobs.has(orphan)
