"""Helpers shared by the tests: files to upload, the app in AppTest or a real browser, the served app, waiting."""

from __future__ import annotations

import contextlib
import html
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "streamlit_app.py")
ARTIFACTS = ROOT / "artifacts"  # screenshots of the browser tests (git-ignored)
CHROMIUM = "/usr/bin/chromium"

DEMO = (("lsm", "demo-lsm", ["LT-HSC", "ST-HSC", "MPP"]), ("aging", "demo-aging", ["young", "aged"]))


def with_settings(lab, **changes):
    """The same database and stores as ``lab`` under its settings with ``changes`` (Settings.with_: e.g.
    ``admins``, ``signed_in``). Who administers is the Lab's settings (lsm_core.lab.accounts), never the
    environment, so a test that changes it after opening its lab takes a lab like this."""
    from lsm_core.lab.lab import Lab

    return Lab(lab.sessions, lab.settings.with_(**changes), lab.engine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_tiny_demo_models(models_dir: Path, train_epochs: int = 0) -> None:
    """Register tiny_cnn models under the demo names, so that `serve` need not train for minutes.

    With ``train_epochs`` they are trained that long on 200 synthetic crops (predictions then vary).
    """
    import torch

    from lsm_core.imaging import synthetic
    from lsm_core.ml import nets
    from lsm_core.ml.models import Manifest, ModelStore
    from lsm_core.ml.train import TrainConfig, fit

    store = ModelStore(models_dir)
    for i, (task, name, classes) in enumerate(DEMO):
        torch.manual_seed(1000 + i)  # the same weights in every run: a test cannot pass or fail by their chance
        if train_epochs:
            x, y = synthetic.make_crops(task, 200, seed=3)
            net, _ = fit(
                x,
                y,
                len(classes),
                TrainConfig(architecture="tiny_cnn", epochs=train_epochs, batch_size=64, lr=3e-3, weight_decay=0),
            )
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
def served_app(
    data_dir: Path, log_path: Path, host: str = "127.0.0.1", port: int | None = None, **env_vars: str | None
):
    """`python -m lsm_core serve` (what `make run` runs) on ``port`` (default: a free one) with its own data dir
    (SQLite); yields its URL once healthy and stops it afterwards. ``env_vars`` set (or, given None, remove)
    environment variables; the server's output goes to ``log_path``."""
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
        proc = subprocess.Popen(
            [sys.executable, "-m", "lsm_core", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
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


def wait_for(condition, timeout: float, what: str, every: float = 0.05):
    """Poll ``condition`` until it returns something truthy (and return that); fail with ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


# --- files to upload: written by PIL and tifffile ----------------------------------------------------
def png_bytes(crop: np.ndarray) -> bytes:
    """A grey crop (float in [0, 1]) as 8-bit PNG bytes."""
    buf = io.BytesIO()
    PILImage.fromarray(np.round(crop * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def crop_files(n: int, seed: int, prefix: str = "cell"):
    """``n`` synthetic LSM single-cell crops as PNG files (RawFile)."""
    from lsm_core.imaging import synthetic
    from lsm_core.imaging.readers.archives import RawFile

    crops, _ = synthetic.make_crops("lsm", n, seed=seed)
    return [RawFile(f"{prefix}{i:04d}.png", png_bytes(c)) for i, c in enumerate(crops)]


def field_file(seed: int):
    """A 768 x 768 synthetic LSM field of view with 8 cells and 2 debris, as a 12-bit-in-16 TIFF (RawFile)."""
    import tifffile

    from lsm_core.imaging import synthetic
    from lsm_core.imaging.readers.archives import RawFile

    field, _ = synthetic.make_field("lsm", seed=seed, shape=(768, 768), n_cells=8, n_debris=2)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.round(field * 4095).astype(np.uint16))
    return RawFile(f"field{seed}.tif", buf.getvalue())


def labelled_zip(task: str, n: int, seed: int, classes: list[str] | None = None) -> bytes:
    """A ZIP of ``n`` synthetic crops in class folders (``sorted/LT-HSC/cell0001.png``)."""
    from lsm_core.imaging import synthetic

    crops, labels = synthetic.make_crops(task, n, seed=seed)
    names = synthetic.task_classes(task)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (c, y) in enumerate(zip(crops, labels)):
            cls = names[y]
            if classes is not None and cls not in classes:
                continue
            zf.writestr(f"sorted/{cls}/cell{i:04d}.png", png_bytes(c))
    return buf.getvalue()


# --- the app in AppTest -------------------------------------------------------------------------------
def run_page(page: str | None = None, query: dict | None = None):
    """The app (streamlit_app.py) in Streamlit's AppTest, switched to ``page``; fails on an exception."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    if query:
        at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def history_page(lab, batch_id: int):
    """The History page with ``batch_id`` selected (what clicking its row does); fails on an exception."""
    from db import queries

    at = run_page("pages/history.py")
    with lab() as s:
        row = next(b for b in queries.batches(s) if b.id == batch_id)
    at.session_state["history_batch"] = (row.id, row.revision)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def texts(at) -> str:
    """Every text a person reads on the page (Markdown escapes removed and the entities escape_markdown writes for
    <, > and & read back, as the browser shows them), plain text too."""
    parts = [m.value for m in at.markdown] + [m.value for m in at.title] + [m.value for m in at.subheader]
    parts += [e.value for e in at.error] + [e.value for e in at.info] + [w.value for w in at.warning]
    parts += [c.value for c in at.caption] + [s.value for s in at.success] + [t.value for t in at.text]
    return html.unescape(re.sub(r"\\(.)", r"\1", "\n".join(str(p) for p in parts).replace("**", "")))


# --- a real browser: Debian's chromium through playwright ------------------------------------------
def browser_problem() -> str | None:
    """Why a page can't be looked at in chromium (None: it can); under CI=true a missing browser fails."""
    problem = None
    if not Path(CHROMIUM).exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed"
    if problem and os.environ.get("CI") == "true":
        pytest.fail(problem)
    return problem


def need_browser() -> None:
    """Skip (or, under CI=true, fail) when chromium or playwright is missing."""
    problem = browser_problem()
    if problem:
        pytest.skip(problem)


def settle(page) -> None:
    """Wait until the app has finished its rerun (Streamlit's status widget is gone): a click or key during a
    rerun may be taken by the old run, or reach a widget that has not been drawn yet."""
    from playwright.sync_api import expect

    page.wait_for_timeout(500)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=60_000)


def launch(p):
    """Headless chromium for playwright ``p``, with the flags this sandbox needs."""
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
        ],
    )


# --- a lab on a given database and data dir -----------------------------------------------------------
def lab_at(data_dir: Path, url: str | None = None, sync: bool = False, **changes):
    """A Lab on ``url`` (default: the SQLite file of ``data_dir``) whose stores live in ``data_dir``; upgraded,
    and with ``sync`` its model store registered. ``changes`` change other settings (e.g. ``blob_dir``)."""
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.settings import Settings, database_url_for

    data_dir = Path(data_dir)
    settings = Settings.from_env().with_(
        data_dir=data_dir, blob_dir=data_dir / "blobs", database_url=url or database_url_for("", data_dir)
    )
    return open_lab(settings.with_(**changes) if changes else settings, sync=sync)


def with_blobs(lab, root: Path):
    """The same lab (same database) with its blob store at ``root``."""
    from lsm_core.lab.lab import Lab

    return Lab(lab.sessions, lab.settings.with_(blob_dir=Path(root)), lab.engine)
