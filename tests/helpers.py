"""Helpers shared by the tests that start the app or need its demo models."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEMO = (("lsm", "demo-lsm", ["LT-HSC", "ST-HSC", "MPP"]), ("aging", "demo-aging", ["young", "aged"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_tiny_demo_models(models_dir: Path, train_epochs: int = 0) -> None:
    """Register tiny_cnn models under the demo names, so that `serve` need not train for minutes.

    With ``train_epochs`` they are trained that long on 200 synthetic crops (predictions then vary).
    """
    from lsm_core import nets, synthetic
    from lsm_core.models import Manifest, ModelStore
    from lsm_core.train import TrainConfig, fit

    store = ModelStore(models_dir)
    for task, name, classes in DEMO:
        if train_epochs:
            x, y = synthetic.make_crops(task, 200, seed=3)
            net, _ = fit(x, y, len(classes), TrainConfig(architecture="tiny_cnn", epochs=train_epochs, batch_size=64,
                                                          lr=3e-3, weight_decay=0))
        else:
            net = nets.create("tiny_cnn", len(classes))
        store.add(net, Manifest(task=task, name=name, classes=classes, architecture="tiny_cnn", demo=True))


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> None:
    """Ask a process to stop (``sig``), then kill it if it has not within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def served_app(data_dir: Path, log_path: Path, host: str = "127.0.0.1", port: int | None = None,
               **env_vars: str | None):
    """`python -m lsm_core serve` (what `make run` runs) on ``port`` (default: a free one) with its own data dir
    (SQLite); yields its URL once healthy and stops it afterwards. ``env_vars`` set (or, given None, remove)
    environment variables; the server's output goes to ``log_path``."""
    import pytest

    port = port or free_port()
    env = dict(os.environ, LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    env.pop("LSM_DATABASE_URL", None)
    for key, value in env_vars.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    url = f"http://{host}:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lsm_core", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail("the app did not start: " + Path(log_path).read_text()[-5000:])
            yield url
        finally:
            stop(proc)
