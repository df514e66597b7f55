"""`python -m lsm_core serve` from an empty data dir: database, worker and app up; Ctrl-C stops both."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.helpers import add_tiny_demo_models, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_data_dir(tmp_path):
    """A data dir whose store already holds demo-named tiny models (so serve starts no demo trainer)."""
    add_tiny_demo_models(tmp_path / "models")
    return tmp_path


@pytest.mark.slow
def test_serve_starts_worker_and_app_and_stops_on_ctrl_c(fresh_data_dir):
    port = free_port()
    env = dict(os.environ, LSM_DATA_DIR=str(fresh_data_dir), PYTHONPATH=str(ROOT))
    env.pop("LSM_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lsm_core", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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

        lab = session_factory(make_engine(f"sqlite:///{fresh_data_dir / 'lsm.db'}"))
        deadline = time.time() + 60
        workers = []
        while time.time() < deadline and not workers:
            with lab() as s:
                workers = queries.live_workers(s)
            time.sleep(0.5)
        assert len(workers) == 1 and workers[0].device == "cpu"
        with lab() as s:
            names = {m.name for m in queries.models(s)}
        assert {"demo-lsm", "demo-aging"} <= names
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    from db.schema import Worker

    with lab() as s:
        assert all(w.stopped for w in s.scalars(select(Worker)))
