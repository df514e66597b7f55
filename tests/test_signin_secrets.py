"""Signed-in mode refuses a cookie_secret anyone could know (issue #14, item 4).

The ``cookie_secret`` of ``[auth]`` signs the ``_streamlit_user`` cookie that says who is signed in. With the
README's example secret (or any short or placeholder one) a visitor signs their own cookie and is whoever
they write in it, an administrator included, without the identity provider. So
:func:`lsm_core.lab.settings.auth_problem` names such a secret and the app shows only that message. The last
test forges the cookie in a real browser against the real app.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lsm_core.lab import settings
from tests.helpers import APP, ARTIFACTS, ROOT, free_port, launch, need_browser, stop

# the example the README shows (whatever it becomes): refused, whatever the reason
_example = re.search(r'^cookie_secret = "([^"]*)"', (ROOT / "README.md").read_text(), re.M)
README_SECRET = _example.group(1) if _example else "a long random string"
STRONG = secrets.token_hex(32)


def auth_section(cookie_secret: str | None, port: int = 8501) -> str:
    lines = ["[auth]", f'redirect_uri = "http://localhost:{port}/oauth2callback"']
    if cookie_secret is not None:
        lines.append(f"cookie_secret = {json.dumps(cookie_secret)}")
    lines += [
        'client_id = "lsm-classifier"',
        'client_secret = "s"',
        'server_metadata_url = "http://127.0.0.1:1/.well-known/openid-configuration"',
    ]
    return "\n".join(lines) + "\n"


def secrets_file(folder: Path, text: str) -> Path:
    (folder / ".streamlit").mkdir(parents=True, exist_ok=True)
    path = folder / ".streamlit" / "secrets.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "cookie_secret, says",
    [
        (README_SECRET, ""),
        ("a long random string", "example"),  # the README's example when the issue was found
        ("changeme", "example"),
        ("a long random string 0123456789abcdef", "example"),  # the README's words, made longer
        ("Sup3r-Secret-Cookie-Secret-For-Our-Lab!", "example"),
        ("x" * 31, "31 bytes"),
        ("0123456" * 5, "random"),  # long enough, but seven different characters
        ("", "0 bytes"),
        (None, "no cookie_secret"),
    ],
)
def test_weak_example_or_missing_cookie_secrets_are_named(tmp_path, cookie_secret, says):
    path = secrets_file(tmp_path, auth_section(cookie_secret))
    problem = settings.auth_problem([tmp_path / "absent.toml", path])
    assert problem is not None and "cookie_secret" in problem and str(path) in problem
    assert says in problem


def test_a_long_random_cookie_secret_or_no_sign_in_is_fine(tmp_path):
    assert settings.auth_problem([tmp_path / "absent.toml"]) is None  # lab mode: nothing to check
    assert settings.auth_problem([secrets_file(tmp_path, 'other = "value"\n')]) is None
    assert settings.auth_problem([secrets_file(tmp_path, auth_section(STRONG))]) is None
    assert settings.auth_problem([secrets_file(tmp_path, auth_section(secrets.token_urlsafe(32)))]) is None


def test_the_section_streamlit_uses_is_the_one_checked(tmp_path):
    """Streamlit reads the user's file, then the app folder's; a later [auth] replaces an earlier one whole."""
    home = secrets_file(tmp_path / "home", auth_section(README_SECRET))
    app = secrets_file(tmp_path / "app", auth_section(STRONG))
    assert settings.auth_problem([home, app]) is None
    assert str(home) in (settings.auth_problem([app, home]) or "")
    broken = secrets_file(tmp_path / "broken", "[auth\n")
    assert "cannot be read" in (settings.auth_problem([broken]) or "")


def test_the_app_with_the_readme_cookie_secret_shows_only_the_problem(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LSM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LSM_DATABASE_URL", raising=False)
    monkeypatch.setenv("LSM_ADMINS", "boss@lab.org")
    secrets_file(tmp_path / "home", auth_section(README_SECRET))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    shown = [re.sub(r"\\(.)", r"\1", e.value).replace("\u2060", "") for e in at.error]  # as a person reads it
    assert shown == [settings.auth_problem()]
    assert "cookie_secret" in shown[0] and "anyone" in shown[0]
    assert not at.button and not at.sidebar.children  # no sign-in, no navigation, nothing of the lab
    assert not (tmp_path / "data" / "lsm.db").exists()  # the database was not even opened


@contextlib.contextmanager
def streamlit_app(home: Path, data_dir: Path, port: int, log_path: Path, **env_vars: str):
    """streamlit_app.py under `streamlit run` (as serve starts it), with ``home`` as HOME."""
    from lsm_core.lab.serve import STREAMLIT_BOOT

    env = dict(os.environ, HOME=str(home), LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT), **env_vars)
    env.pop("LSM_DATABASE_URL", None)
    env.pop("LSM_USER", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", STREAMLIT_BOOT, "run", APP, "--server.port", str(port), "--server.headless", "true"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start: " + log_path.read_text()[-5000:])
        yield f"http://localhost:{port}"
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_cookie_forged_with_the_readme_secret_signs_nobody_in(tmp_path):
    """What the issue found: with the README's cookie_secret, a cookie signed at home made its bearer the
    administrator named in LSM_ADMINS. Now the app says why it will not run, and nobody is signed in."""
    from playwright.sync_api import expect, sync_playwright
    from streamlit.web.server.starlette.starlette_app_utils import create_signed_value

    need_browser()
    port = free_port()
    home = tmp_path / "home"
    secrets_file(home, auth_section(README_SECRET, port))
    with streamlit_app(home, tmp_path / "data", port, tmp_path / "app.log", LSM_ADMINS="boss@lab.org") as url:
        claims = {
            "iss": "https://login.lab.example.org/realms/lab",
            "sub": "forged",
            "email": "boss@lab.org",
            "email_verified": True,
            "name": "Not the boss",
            "provider": "default",
            "is_logged_in": True,
            "origin": url,
        }
        forged = create_signed_value(README_SECRET, "_streamlit_user", json.dumps(claims)).decode()
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = launch(p)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                context.add_cookies([{"name": "_streamlit_user", "value": forged, "url": url}])
                page = context.new_page()
                page.goto(url)
                expect(page.get_by_text(re.compile("cookie_secret"))).to_be_visible(timeout=60_000)
                page.screenshot(path=str(ARTIFACTS / "signin-forged-cookie.png"))
                expect(page.get_by_text(re.compile(r"boss@lab\.org"))).to_have_count(0)
                expect(page.get_by_role("button", name=re.compile("Sign (in|out)"))).to_have_count(0)
                expect(page.get_by_role("link", name="Classify")).to_have_count(0)
            finally:
                browser.close()
    assert not (tmp_path / "data" / "lsm.db").exists()  # nobody was signed in, nothing was opened
