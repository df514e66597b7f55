"""Sign-in in a real browser: the app with an [auth] section signs people in through an OpenID Connect
provider (tests/oidc_provider.py, real HTTP) with st.login, and acts with their roles.

Chromium goes to the app, is sent to the provider and back, and the test checks what each person sees and
what the database knows of them (each person is their account at the provider: issuer and subject); a member
cannot open the administrators' page, an administrator (named in LSM_ADMINS) sees it with the member listed;
another account that claims the administrator's e-mail, and an account whose e-mail the provider has not
verified, are refused with a message and a way to sign out.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import ARTIFACTS, CHROMIUM, add_tiny_demo_models, free_port, need_browser, served_app
from tests.oidc_provider import Provider


@pytest.fixture(scope="module")
def signed_in_app(tmp_path_factory):
    need_browser()
    tmp_path = tmp_path_factory.mktemp("signin")
    add_tiny_demo_models(tmp_path / "data" / "models")
    port = free_port()
    with Provider() as provider:
        home = tmp_path / "home"
        (home / ".streamlit").mkdir(parents=True)
        (home / ".streamlit" / "secrets.toml").write_text(
            "[auth]\n"
            f'redirect_uri = "http://localhost:{port}/oauth2callback"\n'
            f'cookie_secret = "{secrets.token_hex(32)}"\n'  # a random one: serve and the app refuse a weak one
            f'client_id = "{provider.client_id}"\nclient_secret = "{provider.client_secret}"\n'
            f'server_metadata_url = "{provider.metadata_url}"\n'
        )
        # the cookie set on the way back from the provider belongs to the redirect_uri's host: localhost
        with served_app(
            tmp_path / "data",
            tmp_path / "server.log",
            host="localhost",
            port=port,
            HOME=str(home),
            LSM_ADMINS="boss@lab.org",
            LSM_USER=None,
        ) as url:
            yield url, provider, tmp_path / "data"


def _users(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / "lsm.db") as db:
        return dict(db.execute("SELECT name, role FROM users"))


def _accounts(data_dir: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(data_dir / "lsm.db") as db:
        return {
            name: (issuer, subject) for name, issuer, subject in db.execute("SELECT name, issuer, subject FROM users")
        }


def test_people_sign_in_with_the_lab_provider_and_act_with_their_roles(signed_in_app):
    from playwright.sync_api import expect, sync_playwright

    url, provider, data_dir = signed_in_app
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # before signing in: nothing of the lab's data, only the sign-in button
            page.goto(url)
            expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
            expect(page.get_by_role("heading", name="Classify")).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "signin-1-before.png"))

            # a member signs in: sent to the provider and back
            provider.user = {"sub": "17", "email": "ana@lab.org", "name": "Ana Member"}
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Classify")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("ana@lab.org (member)")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "signin-2-member.png"))
            expect(page.get_by_text(re.compile("unauthenticated"))).to_have_count(0)
            expect(page.get_by_role("link", name="Lab", exact=True)).to_have_count(0)
            assert _users(data_dir) == {"ana@lab.org": "member"}
            assert _accounts(data_dir) == {"ana@lab.org": (provider.issuer, "17")}
            page.goto(f"{url}/lab-admin")
            expect(page.get_by_text("This page is for the lab's administrators")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("ana@lab.org (member)")).to_be_visible()

            # sign out: back to the sign-in page
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)

            # the administrator named in LSM_ADMINS sees the Lab page with the member on it
            provider.user = {"sub": "1", "email": "boss@lab.org", "name": "Boss"}
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text("boss@lab.org (admin)")).to_be_visible(timeout=60_000)
            page.get_by_role("link", name="Lab", exact=True).click()
            expect(page.get_by_role("heading", name="People")).to_be_visible(timeout=60_000)
            expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
            expect(page.get_by_role("button", name="Set role")).to_be_visible()  # data grids draw on a canvas
            page.screenshot(path=str(ARTIFACTS / "signin-3-admin-lab.png"), full_page=True)
            assert _users(data_dir) == {"ana@lab.org": "member", "boss@lab.org": "admin"}

            # another account of the provider with the administrator's e-mail is refused, not made the administrator
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
            provider.user = {"sub": "666", "email": "boss@lab.org", "name": "Not the boss"}
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text(re.compile("already the e-mail address of another account"))).to_be_visible(
                timeout=60_000
            )
            expect(page.get_by_text("boss@lab.org (admin)")).to_have_count(0)
            expect(page.get_by_role("link", name="Lab", exact=True)).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "signin-4-impostor-refused.png"))
            page.get_by_role("button", name="Sign out").click()

            # an e-mail the provider has not verified signs nobody in
            expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
            provider.user = {"sub": "99", "email": "eve@lab.org", "email_verified": False, "name": "Eve"}
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text(re.compile("has not verified"))).to_be_visible(timeout=60_000)
            expect(page.get_by_role("heading", name="Classify")).to_have_count(0)
            expect(page.get_by_role("button", name="Sign out")).to_be_visible()
            assert _accounts(data_dir) == {
                "ana@lab.org": (provider.issuer, "17"),
                "boss@lab.org": (provider.issuer, "1"),
            }
        finally:
            browser.close()
