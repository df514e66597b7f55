"""`python -m lsm_core serve` from an empty data dir: database, worker and app up; Ctrl-C stops both."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fresh_data_dir(tmp_path):
    """A data dir whose store already holds demo-named tiny models (so serve does not train for minutes)."""
    from lsm_core import nets
    from lsm_core.models import Manifest, ModelStore

    store = ModelStore(tmp_path / "models")
    for task, name, classes in (("lsm", "demo-lsm", ["LT-HSC", "ST-HSC", "MPP"]), ("aging", "demo-aging", ["young", "aged"])):
        store.add(nets.create("tiny_cnn", len(classes)), Manifest(task=task, name=name, classes=classes, architecture="tiny_cnn", demo=True))
    return tmp_path


@pytest.mark.slow
def test_serve_starts_worker_and_app_and_stops_on_ctrl_c(fresh_data_dir):
    port = free_port()
    env = dict(os.environ, LSM_DATA_DIR=str(fresh_data_dir), PYTHONPATH=str(ROOT))
    env.pop("LSM_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "lsm_core", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, healthy = time.time() + 90, False
        while time.time() < deadline and not healthy:
            try:
                healthy = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok"
            except OSError:
                time.sleep(0.5)
        assert healthy, "the app did not answer"
        from db import queries
        from db.session import make_engine, session_factory

        sessions = session_factory(make_engine(f"sqlite:///{fresh_data_dir / 'lsm.db'}"))
        deadline = time.time() + 60
        workers = []
        while time.time() < deadline and not workers:
            with sessions() as s:
                workers = queries.live_workers(s)
            time.sleep(0.5)
        assert len(workers) == 1 and workers[0].device == "cpu"
        with sessions() as s:
            names = {m.name for m in queries.models(s)}
        assert {"demo-lsm", "demo-aging"} <= names
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    from db.schema import Worker

    with sessions() as s:
        assert all(w.stopped for w in s.scalars(select(Worker)))
