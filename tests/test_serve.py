"""`python -m lsm_core serve` from an empty data dir: database, worker and app up; Ctrl-C stops both."""

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
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


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (what a colleague's browser would reach), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _answers(host: str, port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://{host}:{port}/_stcore/health", timeout=2).read() == b"ok"
    except OSError:
        return False


def _start_serve(data_dir: Path, port: int, *extra: str, **env_extra: str) -> subprocess.Popen:
    env = dict(os.environ, LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT), **env_extra)
    for name in ("LSM_DATABASE_URL", "LSM_ADDRESS", "LSM_ADMINS"):
        if name not in env_extra:
            env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "lsm_core", "serve", "--port", str(port), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(check, seconds: float):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    return check()


def test_the_streamlit_config_listens_on_this_machine_and_shows_no_tracebacks():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"  # `streamlit run` too, not only serve
    assert config["client"]["showErrorDetails"] == "none"


def test_an_open_address_in_lab_mode_is_always_warned_about_whatever_lsm_admins_says():
    """Lab mode has no sign-in: everyone who reaches the port acts as the same person, so LSM_ADMINS cannot
    tell them apart and never silences the warning (issue 27 item 6); only sign-in or 127.0.0.1 do."""
    from lsm_core.lab.serve import is_loopback, open_lab_warning
    from lsm_core.lab.settings import Settings

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("lab-server.example.org")
    lab_mode = Settings(user="ana")
    assert open_lab_warning(lab_mode) is None  # the default: this machine only
    opened = lab_mode.with_(address="0.0.0.0")
    said = open_lab_warning(opened) or ""
    assert "anyone who can reach this port acts as ana. Everyone administers the lab" in said
    named = open_lab_warning(opened.with_(admins=frozenset({"ana"}))) or ""
    assert "LSM_ADMINS names ana, but it cannot tell people apart here: everyone administers the lab" in named
    other = open_lab_warning(opened.with_(admins=frozenset({"bea"}))) or ""
    assert "everyone can change or delete ana's batches" in other
    assert open_lab_warning(opened.with_(signed_in=True)) is None


@pytest.mark.slow
def test_serve_listens_on_localhost_only_and_starts_a_dead_worker_again(fresh_data_dir):
    from db.session import make_engine, session_factory
    from lsm_core.lab.serve import worker_restarts

    port = free_port()
    proc = _start_serve(fresh_data_dir, port)
    lab = session_factory(make_engine(f"sqlite:///{fresh_data_dir / 'lsm.db'}"))

    def live_pids() -> set[int]:
        from db import queries

        try:
            with lab() as s:
                return {w.pid for w in queries.live_workers(s)}
        except Exception:  # the database is not made yet
            return set()

    try:
        assert _wait_for(lambda: _answers("127.0.0.1", port), 90), "the app did not answer"
        outside = _outside_address()
        if outside is not None:
            assert not _answers(outside, port), f"the app answers on {outside}: it must listen on 127.0.0.1 only"
        first = _wait_for(live_pids, 60)
        assert len(first) == 1
        assert worker_restarts(fresh_data_dir) is None  # nothing to report yet
        os.kill(next(iter(first)), signal.SIGKILL)  # as the kernel's OOM killer would
        news = _wait_for(lambda: worker_restarts(fresh_data_dir), 30)
        assert news is not None and news.last_exit == -signal.SIGKILL
        second = _wait_for(lambda: live_pids() - first, 60)
        assert second, "no new worker started"
        assert _answers("127.0.0.1", port), "the app went down with its worker"
        news = worker_restarts(fresh_data_dir)
        assert news is not None and news.restarts == 1 and news.running
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "the worker stopped (exit status -9)" in out
    assert worker_restarts(fresh_data_dir) is None  # serve removed its record


@pytest.mark.slow
def test_serve_on_every_interface_in_lab_mode_warns_that_anyone_administers(fresh_data_dir):
    port = free_port()
    proc = _start_serve(fresh_data_dir, port, "--address", "0.0.0.0")
    try:
        assert _wait_for(lambda: _answers("127.0.0.1", port), 90), "the app did not answer"
        outside = _outside_address()
        if outside is not None:
            assert _answers(outside, port)
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "WARNING: the app listens on 0.0.0.0 in lab mode" in out


def test_serve_refuses_to_start_with_a_forgeable_cookie_secret(tmp_path):
    home = tmp_path / "home"
    (home / ".streamlit").mkdir(parents=True)
    (home / ".streamlit" / "secrets.toml").write_text(
        '[auth]\nredirect_uri = "http://localhost:8501/oauth2callback"\ncookie_secret = "a long random string"\n'
        'client_id = "lsm"\nclient_secret = "s3cr3t-s3cr3t-s3cr3t"\n'
        'server_metadata_url = "http://127.0.0.1:9/.well-known/openid-configuration"\n'
    )
    port = free_port()
    proc = _start_serve(tmp_path / "data", port, HOME=str(home))
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert "cookie_secret" in out
    assert not _answers("127.0.0.1", port)
    assert not (tmp_path / "data" / "lsm.db").exists()  # refused before anything was made


def test_the_app_says_when_it_is_open_to_everyone_and_when_its_worker_was_restarted(app_env, monkeypatch):
    import json

    from lsm_core.lab.serve import WORKER_STATUS_NAME
    from tests.helpers import run_page, texts

    at = run_page()
    assert "Open to the network" not in texts(at) and "The worker stopped" not in texts(at)
    monkeypatch.setenv("LSM_ADDRESS", "0.0.0.0")
    (app_env / WORKER_STATUS_NAME).write_text(
        json.dumps({"serve_pid": os.getpid(), "restarts": 2, "last_exit": -9, "died_at": time.time(), "running": True})
    )
    at = run_page()
    shown = texts(at)
    assert "Open to the network. The app listens on 0.0.0.0 in lab mode" in shown
    assert "anyone who can reach this port acts as ana. Everyone administers the lab" in shown
    monkeypatch.setenv("LSM_ADMINS", "ana")  # names nobody apart from the others on an open port
    assert "LSM_ADMINS names ana, but it cannot tell people apart here" in texts(run_page())
    monkeypatch.delenv("LSM_ADMINS")
    assert "(exit status -9) and was started again (2 restarts so far)" in shown


# every page of streamlit_app.py by its URL path (what links, bookmarks and the README name); "" is the default
PAGE_URLS = {
    "": "Classify",
    "batch-results": "Results",
    "review-cells": "Review",
    "batch-history": "History",
    "compare-ages": "Compare",
    "model-registry": "Models",
    "lab-admin": "Lab",
}


@pytest.mark.slow
def test_each_pages_url_path_opens_that_page_inside_the_app_and_a_page_files_name_opens_none(tmp_path):
    """On a fresh server (the first session is the one Streamlit used to serve from pages/ the old way, see
    lsm_core.lab.serve.STREAMLIT_BOOT) a page file's own name runs no page file outside streamlit_app.py: it is
    no URL of the app, which shows its default page in its frame. Then each page's URL path opens that page, in
    the app's frame (its lab-mode warning), without "Page not found"."""
    from playwright.sync_api import expect, sync_playwright

    from tests.helpers import launch, need_browser, served_app

    need_browser()
    add_tiny_demo_models(tmp_path / "data" / "models")
    served = served_app(tmp_path / "data", tmp_path / "server.log", LSM_USER="ana", LSM_ADMINS="ana")
    with served as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/results")  # the very first request: pages/results.py's name, not a URL of the app
        expect(page.locator("h1").first).to_have_text("Classify", timeout=90_000)
        expect(page.get_by_text("Lab mode: unauthenticated")).to_be_visible()
        for path, title in PAGE_URLS.items():
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/{path}")
            expect(page.locator("h1").first).to_have_text(title, timeout=60_000)
            expect(page.get_by_text("Lab mode: unauthenticated")).to_be_visible()
            page.wait_for_timeout(500)
            expect(page.get_by_text("Page not found")).to_have_count(0)
            assert page.url.rstrip("/") == f"{url}/{path}".rstrip("/")  # the address stays the page's
            page.close()
        browser.close()


def test_the_apps_sidebar_links_each_page_at_its_url_path(app_env):
    """The URL paths streamlit_app.py gives its pages, as its sidebar links them (AppTest; "" is the default)."""
    from streamlit.testing.v1 import AppTest

    from tests.helpers import APP

    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, [e.message for e in at.exception]
    links = {link.proto.label: link.proto.page for link in at.get("page_link")}
    assert links == {title: path for path, title in PAGE_URLS.items()}
