"""Faults with real parts: PostgreSQL restarted under a running worker, a full blob store, an upload killed half-way.

- **PostgreSQL restart**: a private PostgreSQL cluster (initdb into a temporary folder, its own port) is
  stopped and started again while a worker process is half-way through a classify job. A private cluster,
  not the shared server at 127.0.0.1:5432, so that the restart cannot break anyone else's connections
  (other test runs, a running app); it is the same server program and the same ``pg_ctl`` restart that
  ``pg_ctlcluster`` runs.
- **Disk full**: a small tmpfs is mounted as the blob store (we need root) and filled almost full.
- **Upload killed**: a process running the real ``submit_batch`` is SIGKILLed while it stores the files.

Under CI=true a test whose PostgreSQL programs, root or mount are missing fails instead of skipping.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from db.schema import Batch, Cell, Image, Job, SaliencyRun, utcnow
from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.lab import batches
from lsm_core.lab.tasks import saliency as saliency_task
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files, field_file, free_port, lab_at, png_bytes, stop, wait_for, with_blobs

ROOT = Path(__file__).resolve().parents[1]


def _unavailable(message: str):
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def distinct_crops(n: int, seed: int) -> list[RawFile]:
    """8n single-cell PNGs, all different bytes (so none is taken from the worker's cache): n synthetic crops in
    their eight orientations, which costs an eighth of making 8n crops."""
    crops, _ = synthetic.make_crops("lsm", n, seed=seed)
    files = []
    for i, crop in enumerate(crops):
        for k in range(8):
            turned = np.rot90(crop, k % 4)
            files.append(
                RawFile(f"cell{i:03d}-{k}.png", png_bytes(np.ascontiguousarray(turned[:, ::-1] if k >= 4 else turned)))
            )
    return files


def count(s, model, *where) -> int:
    return s.scalar(select(func.count()).select_from(model).where(*where))


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_blobs_whole(root: Path, ignore: tuple[Path, ...] = ()) -> list[Path]:
    """Every file under ``root`` (but ``ignore``) is a complete blob: no temporary file, each named by its sha256."""
    files = [p for p in blob_files(root) if p not in ignore]
    assert not [p for p in files if p.name.startswith(".partial-")], "temporary files left in the blob store"
    for p in files:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, f"{p} is not a whole blob"
    return files


# --- 1. PostgreSQL restarted under a running worker ----------------------------------------------
class PrivateCluster:
    """A throw-away PostgreSQL cluster on a free port, run by the ``postgres`` user when we are root."""

    def __init__(self) -> None:
        self.bin = self._bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="lsm-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.log = self.dir / "server.log"
        self.user = None
        if os.geteuid() == 0:  # initdb refuses to run as root
            self.user = "postgres"
            shutil.chown(self.dir, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def _bindir() -> Path:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        if found:
            return found[-1].parent
        initdb = shutil.which("initdb")
        if initdb:
            return Path(initdb).parent
        raise FileNotFoundError("initdb (the PostgreSQL server programs) is not installed")

    def _run(self, program: str, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin / program), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr or proc.stdout}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """What ``pg_ctlcluster ... restart`` does first: a fast shutdown that ends every session."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def accepting(self) -> bool:
        proc = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)])
        return proc.returncode == 0

    def destroy(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except Exception:  # noqa: BLE001  (not running)
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg():
    try:
        cluster = PrivateCluster()
    except Exception as exc:  # noqa: BLE001
        _unavailable(f"cannot make a private PostgreSQL cluster: {exc}")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.mark.slow
def test_worker_survives_a_postgresql_restart_mid_job(private_pg, data_dir, tiny_lsm_package, tmp_path):
    from lsm_core.lab.registry import sync_models

    lab = lab_at(data_dir, private_pg.url)
    engine = lab.engine
    model_id = next(r.id for r in sync_models(lab) if r.name == "tiny-lsm")
    files = distinct_crops(50, seed=501) + [field_file(502), RawFile("broken.png", b"\x89PNG\r\n\x1a\n not a png")]
    sub = batches.submit_batch(lab, files, model_id, "through a restart", owner="ana")
    readable = len(files) - 1

    log = tmp_path / "worker.log"
    env = dict(
        os.environ,
        LSM_DATABASE_URL=private_pg.url,
        LSM_DATA_DIR=str(data_dir),
        PYTHONPATH=str(ROOT),
        LSM_PRECISION="fp32",
    )
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lsm_core",
                "worker",
                "--device",
                "cpu",
                "--batch-size",
                "4",
                "--poll",
                "0.2",
                "--lease",
                "60",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def progress():
            with lab() as s:
                job = s.get(Job, sub.job_id)
                return job.status == "running" and job.progress_done > 0 and (job.progress_done, job.progress_total)

        done_before, total = wait_for(progress, 180, "the worker to commit its first chunk")
        assert done_before < total, "the restart must land mid-job"
        engine.dispose()  # our own pooled connections would die with the server anyway
        private_pg.stop()
        time.sleep(3)  # down for a while: the worker meets refused connections, not only a dropped one
        assert worker.poll() is None, log.read_text()
        private_pg.start()
        wait_for(private_pg.accepting, 60, "PostgreSQL to accept connections again")
        back = utcnow()

        def finished():
            with lab() as s:
                status = s.scalar(select(Job.status).where(Job.id == sub.job_id))
            assert worker.poll() is None, f"the worker died:\n{log.read_text()}"
            return status in ("done", "failed", "cancelled") and status

        assert wait_for(finished, 300, "the job to finish", every=0.2) == "done", log.read_text()
        assert worker.poll() is None, log.read_text()
        with lab() as s:
            job = s.get(Job, sub.job_id)
            assert (job.status, job.progress_done, job.attempts) == ("done", readable, 1), (job.errors, log.read_text())
            assert job.finished > back, "the job ended before the restart: it must land mid-job"
            assert s.get(Batch, sub.batch_id).status == "done"
            images = s.scalars(select(Image).where(Image.batch_id == sub.batch_id)).all()
            assert len(images) == len(files) and all(im.done for im in images)
            broken = [im for im in images if im.error]
            assert [im.file for im in broken] == ["broken.png"]
            per_image = dict(
                s.execute(
                    select(Cell.image_id, func.count()).where(Cell.batch_id == sub.batch_id).group_by(Cell.image_id)
                ).all()
            )
            for im in images:
                if im.error is None:
                    assert im.n_cells == per_image.get(im.id, 0) and im.n_cells >= 1, (im.file, im.n_cells)
            assert sum(1 for im in images if im.file.startswith("cell") and im.n_cells == 1) == 400
            total_cells = count(s, Cell, Cell.batch_id == sub.batch_id)
            distinct = s.scalar(
                select(func.count()).select_from(
                    select(Cell.image_id, Cell.idx).where(Cell.batch_id == sub.batch_id).distinct().subquery()
                )
            )
            assert total_cells == distinct == sum(im.n_cells for im in images)
        assert "database" in log.read_text().lower(), "the worker never noticed the restart"
    finally:
        stop(worker, signal.SIGTERM)
        if not private_pg.accepting():
            try:  # a failure while it was down: start it again (the fixture removes it afterwards)
                private_pg.start()
            except Exception:  # noqa: BLE001  (do not hide the failure that brought us here)
                pass
        engine.dispose()
    assert worker.returncode == 0, log.read_text()  # SIGTERM: a clean stop


# --- 2. The blob store's disk is full -----------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted as a blob store (needs root); unmounted afterwards."""
    if os.geteuid() != 0:
        _unavailable("mounting a small tmpfs as the blob store needs root")
    mount = tmp_path / "blobs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "lsm-test-blobs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(mount: Path, leave: int = 0) -> Path:
    """Write a filler file until at most ``leave`` bytes are free on ``mount``."""
    filler = mount / "filler"
    with open(filler, "ab") as fh:
        while True:
            st = os.statvfs(mount)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                fh.write(b"\0" * min(free - leave, 1 << 20))
                fh.flush()
            except OSError:  # full: what we wanted
                break
    st = os.statvfs(mount)
    assert st.f_bavail * st.f_frsize <= leave
    return filler


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_full_blob_store_refuses_the_batch_and_leaves_nothing_half_written(history, small_disk):
    lab, _, model_id = history
    lab = with_blobs(lab, small_disk)
    store = lab.blobs
    files = crop_files(4, seed=521) + [field_file(522)] + crop_files(2, seed=523, prefix="late")
    assert len(files[4].data) > 256 * 1024  # the field cannot fit in what is left
    filler = fill(small_disk, leave=64 * 1024)
    with pytest.raises(LsmError) as raised:
        batches.submit_batch(lab, files, model_id, "does not fit", owner="ana")
    message = str(raised.value)
    assert str(small_disk) in message and "full" in message.replace(str(small_disk), ""), message
    with lab() as s:
        assert (count(s, Batch), count(s, Image), count(s, Job)) == (0, 0, 0)
    stored = assert_blobs_whole(small_disk, ignore=(filler,))
    assert {p.name for p in stored} <= {hashlib.sha256(f.data).hexdigest() for f in files[:4]}

    filler.unlink()  # space again: the same files go through, reusing what was stored
    sub = batches.submit_batch(lab, files, model_id, "fits now", owner="ana")
    assert sub.images == len(files) and not sub.errors
    with lab() as s:
        shas = s.scalars(select(Image.sha256).where(Image.batch_id == sub.batch_id)).all()
        assert (count(s, Batch), count(s, Image), count(s, Job)) == (1, len(files), 1)
    assert len(shas) == len(files) and all(store.has(sha) for sha in shas)
    assert len(assert_blobs_whole(small_disk)) == len(files)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_saliency_job_on_a_full_blob_store_fails_clearly_and_the_worker_goes_on(history, small_disk):
    lab, _, model_id = history
    lab = with_blobs(lab, small_disk)
    first = batches.submit_batch(lab, crop_files(4, seed=531), model_id, "maps wanted", owner="ana")
    worker = Worker(lab, device="cpu")
    assert worker.run(drain=True) == 1
    later = batches.submit_batch(lab, crop_files(3, seed=532), model_id, "after the maps", owner="ana")
    maps = saliency_task.submit(lab, first.batch_id, "gradcam", owner="ana")
    filler = fill(small_disk)
    assert worker.run(drain=True) == 2  # the saliency job, then the classify job: the worker did not stop
    with lab() as s:
        job = s.get(Job, maps)
        assert job.status == "failed" and job.attempts == 1, (job.status, job.errors)
        assert str(small_disk) in job.error and "full" in job.error.replace(str(small_disk), ""), job.error
        assert count(s, SaliencyRun) == 0
        assert s.get(Job, later.job_id).status == "done"
        assert count(s, Cell, Cell.batch_id == later.batch_id) == 3
    assert_blobs_whole(small_disk, ignore=(filler,))


# --- 3. The app killed while it stores an upload ------------------------------------------------
UPLOAD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from db.session import make_engine, session_factory
    from lsm_core.imaging.images import RawFile
    from lsm_core.lab import batches, settings
    from lsm_core.lab.lab import Lab

    url, model_id, folder, blobs = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

    def slowly():
        for path in sorted(folder.iterdir()):
            yield RawFile(path.name, path.read_bytes())
            time.sleep(0.25)  # a slow upload: the kill lands while the files are being stored

    lab = Lab(session_factory(make_engine(url)), settings.current().with_(blob_dir=Path(blobs)))
    sub = batches.submit_batch(lab, slowly(), model_id, "killed", owner="ana")
    print("submitted", sub.batch_id, flush=True)
""")


def test_upload_killed_half_way_leaves_no_batch_and_a_resubmission_reuses_the_blobs(history, db_url, tmp_path):
    from db.schema import AuditEvent

    lab, _, model_id = history
    folder, root = tmp_path / "upload", tmp_path / "blobs"
    folder.mkdir()
    files = crop_files(40, seed=541)
    for raw in files:
        (folder / raw.source).write_bytes(raw.data)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOAD, db_url, str(model_id), str(folder), str(root)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def some_stored():
            assert proc.poll() is None, proc.communicate()[0]
            return root.is_dir() and len([p for p in blob_files(root) if not p.name.startswith(".partial-")]) >= 5

        wait_for(some_stored, 120, "the upload to store its first files")
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL and "submitted" not in out, out
    with lab() as s:
        assert (count(s, Batch), count(s, Image), count(s, Job)) == (0, 0, 0)
        assert count(s, AuditEvent, AuditEvent.action == "submit") == 0
    # a temporary file of a write cut by the kill may remain; it is never read as a blob
    before = {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in assert_blobs_whole(root, ignore=tuple(root.rglob(".partial-*")))
    }
    assert 5 <= len(before) < len(files), "the kill must land half-way through the upload"

    lab = with_blobs(lab, root)
    store = lab.blobs
    sub = batches.submit_batch(lab, files, model_id, "killed", owner="ana")
    assert sub.images == len(files) and not sub.errors
    with lab() as s:
        assert (count(s, Batch), count(s, Image), count(s, Job)) == (1, len(files), 1)
        shas = set(s.scalars(select(Image.sha256).where(Image.batch_id == sub.batch_id)))
    assert shas == {hashlib.sha256(f.data).hexdigest() for f in files} and all(store.has(sha) for sha in shas)
    for name, (inode, mtime) in before.items():  # stored once: the blobs of the killed upload were kept, not
        p = store.path(name)  # rewritten; storing them again only touched them (so a collection keeps them)
        assert p.stat().st_ino == inode and p.stat().st_mtime_ns >= mtime
