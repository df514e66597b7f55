"""The blob-writing helper processes (lsm_core.lab.blobwriter): uploads stored at the same time as another
one go to a helper, which leaves the store exactly as BlobStore.put would; a lone upload never starts one;
a helper's store error is the caller's error; a helper that died costs nothing but the speed."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest
from sqlalchemy import func, select

from db.schema import Cell, Image
from lsm_core.errors import LsmError
from lsm_core.lab import blobwriter
from lsm_core.lab.batches import submit_batch
from lsm_core.lab.blobs import BlobStore
from lsm_core.lab.blobwriter import Writers
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files


def _items(n: int, seed: int, size: int = 5000) -> list[tuple[bytes, str]]:
    out = []
    for i in range(n):
        data = hashlib.sha256(f"{seed}-{i}".encode()).digest() * (size // 32)
        out.append((data, hashlib.sha256(data).hexdigest()))
    return out


@pytest.fixture
def writers(monkeypatch):
    monkeypatch.setattr(blobwriter, "HELPERS", 1)
    w = Writers()
    yield w
    w.close()


class _Held:
    """A store whose first put waits until released: an upload kept in flight, so the next one is crowded."""

    def __init__(self, store: BlobStore) -> None:
        self.root = store.root
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()

    def put(self, data: bytes, sha256: str | None = None) -> str:
        self.entered.set()
        assert self.release.wait(30)
        return self.store.put(data, sha256)


def _in_flight(w: Writers, store: BlobStore) -> tuple[threading.Thread, _Held]:
    held = _Held(store)
    t = threading.Thread(target=w.store, args=(held, _items(1, seed=999)), daemon=True)
    t.start()
    assert held.entered.wait(10)
    return t, held


def test_a_helper_stores_files_as_put_would_and_not_in_this_process(tmp_path, writers, monkeypatch):
    store = BlobStore(tmp_path / "blobs")
    assert writers.start() == 1
    items = _items(3, seed=1)

    def not_here(*_args, **_kwargs):
        raise AssertionError("written in the calling process")

    monkeypatch.setattr(BlobStore, "put", not_here)
    assert writers.via_helper(str(store.root), items)
    monkeypatch.undo()
    for data, sha in items:
        path = store.path(sha)
        assert path.read_bytes() == data
        assert path.stat().st_mode & 0o777 == 0o600
    assert not [f for f in store.scan() if f.partial]
    assert sorted(f.sha256 for f in store.scan()) == sorted(sha for _, sha in items)
    assert writers.helped == 1


def test_an_upload_stored_while_another_is_goes_through_a_helper(tmp_path, writers):
    store = BlobStore(tmp_path / "blobs")
    writers.start()
    t, held = _in_flight(writers, store)
    items = _items(4, seed=2)
    writers.store(store, items)
    assert writers.helped == 1
    assert all(store.get(sha) == data for data, sha in items)
    held.release.set()
    t.join(10)
    assert store.has(_items(1, seed=999)[0][1])


def test_a_file_larger_than_small_is_written_by_the_caller(tmp_path, writers, monkeypatch):
    monkeypatch.setattr(blobwriter, "SMALL", 6000)
    store = BlobStore(tmp_path / "blobs")
    writers.start()
    t, held = _in_flight(writers, store)
    small, big = _items(2, seed=3), _items(1, seed=4, size=8000)
    writes: list[str] = []
    real_put = BlobStore.put

    def counted(self, data, sha256=None):
        writes.append(sha256)
        return real_put(self, data, sha256)

    monkeypatch.setattr(BlobStore, "put", counted)
    writers.store(store, small + big)
    assert writes == [big[0][1]]  # the small ones went to the helper
    assert all(store.get(sha) == data for data, sha in small + big)
    held.release.set()
    t.join(10)


def test_one_upload_at_a_time_never_starts_a_helper(tmp_path, writers):
    store = BlobStore(tmp_path / "blobs")
    items = _items(5, seed=5)
    writers.store(store, items)
    writers.store(store, _items(5, seed=6))
    assert writers.started == 0 and writers.helped == 0
    assert all(store.get(sha) == data for data, sha in items)


def test_no_helpers_when_configured_so(tmp_path, monkeypatch):
    monkeypatch.setattr(blobwriter, "HELPERS", 0)
    w = Writers()
    store = BlobStore(tmp_path / "blobs")
    assert not w.via_helper(str(store.root), _items(2, seed=7))
    assert w.started == 0


@pytest.mark.parametrize(("text", "n"), [("", None), ("0", 0), ("3", 3)])
def test_lsm_blob_helpers_reaches_the_lab_s_store(tmp_path, text, n):
    from lsm_core.lab.lab import Lab
    from lsm_core.lab.settings import Settings

    settings = Settings.from_env({"LSM_DATA_DIR": str(tmp_path), "LSM_BLOB_HELPERS": text})
    assert settings.blob_helpers == n
    assert Lab(None, settings).blobs.helpers == n
    assert settings.environment().get("LSM_BLOB_HELPERS") == (text or None)


@pytest.mark.parametrize("text", ["two", "-1"])
def test_a_wrong_lsm_blob_helpers_is_refused(text):
    from lsm_core.lab.settings import Settings

    with pytest.raises(LsmError, match="LSM_BLOB_HELPERS"):
        Settings.from_env({"LSM_BLOB_HELPERS": text})


def test_a_store_configured_without_helpers_never_starts_one(tmp_path, writers):
    store = BlobStore(tmp_path / "blobs", helpers=0)
    t, held = _in_flight(writers, store)
    writers.store(store, _items(3, seed=12), store.helpers)
    assert writers.started == 0 and writers.helped == 0
    held.release.set()
    t.join(10)


def test_a_store_error_in_the_helper_is_the_caller_s_error(tmp_path, writers):
    store = BlobStore(tmp_path / "blobs")
    items = _items(2, seed=8)
    for _, sha in items:  # a file where each blob's folder should be: nothing can be written there
        (store.root / sha[:2]).write_bytes(b"in the way")
    writers.start()
    with pytest.raises(LsmError, match="could not save an upload"):
        writers.via_helper(str(store.root), items)
    assert writers.started == 1  # the helper said so and is still up for the next upload
    for _, sha in items:
        (store.root / sha[:2]).unlink()
    assert writers.via_helper(str(store.root), items)
    assert all(store.get(sha) == data for data, sha in items)


def test_bytes_that_do_not_match_their_sha256_are_refused(tmp_path, writers):
    store = BlobStore(tmp_path / "blobs")
    (data, _), (_, other) = _items(2, seed=10)
    writers.start()
    with pytest.raises(LsmError, match="do not match their sha256"):
        writers.via_helper(str(store.root), [(data, other)])
    assert not store.has(other)


def test_a_helper_that_died_is_dropped_and_the_caller_writes(tmp_path, writers):
    store = BlobStore(tmp_path / "blobs")
    writers.start()
    (pid,) = writers.pids()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    items = _items(3, seed=11)
    assert not writers.via_helper(str(store.root), items)
    assert writers.started == 0
    t, held = _in_flight(writers, store)  # crowded again: no helper is up, so this one writes here
    writers.store(store, items)
    assert all(store.get(sha) == data for data, sha in items)
    held.release.set()
    t.join(10)


def test_a_batch_submitted_during_another_upload_is_classified(history, monkeypatch):
    """End to end on both engines: the files a helper stored are the ones the worker classifies."""
    lab, _engine, model_id = history
    monkeypatch.setattr(blobwriter, "HELPERS", 1)
    assert blobwriter.WRITERS.start() >= 1
    t, held = _in_flight(blobwriter.WRITERS, lab.blobs)
    helped = blobwriter.WRITERS.helped
    files = crop_files(6, seed=4242, prefix="helped")
    try:
        r = submit_batch(lab, files, model_id, "during another upload", owner="ana")
    finally:
        held.release.set()
        t.join(10)
    assert blobwriter.WRITERS.helped == helped + 1
    with lab() as s:
        shas = s.scalars(select(Image.sha256).where(Image.batch_id == r.batch_id).order_by(Image.position)).all()
    assert [lab.blobs.get(sha) for sha in shas] == [f.data for f in files]
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == r.batch_id)) == 6
