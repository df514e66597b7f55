"""Who signs in (issue #14, item 5): the identity provider's verified e-mail, known by issuer and subject.

:func:`lsm_core.lab.accounts.sign_in` takes the ID token's claims (what ``st.user`` holds) and lets a person in
only when the provider verified their e-mail (``email_verified``) and ``LSM_ALLOWED_DOMAINS`` admits it. A person
is their (``iss``, ``sub``) pair; their name (what batches' owner and the audit trail hold) stays the e-mail
they first came with. Another account that claims a known e-mail is refused, never merged into that person.
Each test on SQLite and PostgreSQL (conftest.db_url); migration 0008 too.
"""

from __future__ import annotations

import secrets

import pytest
from alembic import command
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from db.schema import User
from db.session import _alembic_config, head_revision, make_engine, upgrade
from lsm_core.errors import LsmError
from lsm_core.lab import accounts, batches, settings
from tests.helpers import crop_files, with_settings

ISSUER = "https://login.lab.example.org/realms/lab"


def claims(sub: str, email: str, verified: object = True, iss: str = ISSUER, **more) -> dict:
    """The claims of an ID token as st.user holds them."""
    return {"iss": iss, "sub": sub, "email": email, "email_verified": verified, "is_logged_in": True, **more}


@pytest.fixture
def signed_in(history, monkeypatch, tmp_path):
    """History's lab, opened with an [auth] section in the working folder's .streamlit/secrets.toml (a real file,
    read as Streamlit would) and nobody in LSM_ADMINS or LSM_ALLOWED_DOMAINS."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for name in ("LSM_ADMINS", "LSM_ALLOWED_DOMAINS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        f'[auth]\nredirect_uri = "http://localhost:8501/oauth2callback"\ncookie_secret = "{secrets.token_hex(32)}"\n'
        f'client_id = "lsm"\nclient_secret = "s"\nserver_metadata_url = "{ISSUER}/.well-known/openid-configuration"\n'
    )
    lab, _, _ = history
    lab = with_settings(lab, signed_in=settings.current().signed_in, admins=frozenset(), allowed_domains=frozenset())
    assert accounts.auth_configured(lab)
    return lab


def users(lab) -> list[tuple[str, str | None, str | None, str]]:
    with lab() as s:
        return [(u.name, u.issuer, u.subject, u.role) for u in s.scalars(select(User).order_by(User.id))]


def test_an_email_the_provider_has_not_verified_is_refused(history, signed_in):
    lab = signed_in
    for verified in (False, None, "false", "yes", 1):
        with pytest.raises(LsmError, match="has not verified"):
            accounts.sign_in(lab, claims("7", "eve@lab.org", verified))
    without = claims("7", "eve@lab.org")
    del without["email_verified"]
    with pytest.raises(LsmError, match="has not verified"):
        accounts.sign_in(lab, without)
    assert users(lab) == []
    assert accounts.sign_in(lab, claims("7", "eve@lab.org", "true")) == "eve@lab.org"  # some providers send text


def test_an_account_without_issuer_subject_or_email_is_refused(history, signed_in):
    lab = signed_in
    with pytest.raises(LsmError, match="did not say who"):
        accounts.sign_in(lab, claims("", "ana@lab.org"))
    with pytest.raises(LsmError, match="did not say who"):
        accounts.sign_in(lab, claims("17", "ana@lab.org", iss=""))
    with pytest.raises(LsmError, match="no e-mail address"):
        accounts.sign_in(lab, claims("17", ""))
    with pytest.raises(LsmError, match="not an e-mail address"):
        accounts.sign_in(lab, claims("17", "ana"))
    assert users(lab) == []


def test_people_are_known_by_issuer_and_subject_and_keep_their_name(history, signed_in):
    lab, model_id = signed_in, history[2]
    assert accounts.sign_in(lab, claims("17", "ana@lab.org", name="Ana")) == "ana@lab.org"
    assert users(lab) == [("ana@lab.org", ISSUER, "17", accounts.MEMBER)]
    batches.submit_batch(lab, crop_files(1, 601), model_id, "ana's", owner="ana@lab.org")
    # the provider now gives Ana another address: she is still the person who owns her batches
    assert accounts.sign_in(lab, claims("17", "ana.smith@lab.org", name="Ana Smith")) == "ana@lab.org"
    assert users(lab) == [("ana@lab.org", ISSUER, "17", accounts.MEMBER)]
    with lab() as s:
        assert s.scalar(select(User.display_name).where(User.subject == "17")) == "Ana Smith"


def test_another_account_with_a_known_email_is_refused_not_merged(history, signed_in):
    lab, model_id = signed_in, history[2]
    lab = with_settings(lab, admins=frozenset({"boss@lab.org"}))
    assert accounts.sign_in(lab, claims("1", "boss@lab.org")) == "boss@lab.org"
    with lab() as s:
        assert accounts.role_of(lab, s, "boss@lab.org") == accounts.ADMIN
    for impostor in (
        claims("666", "boss@lab.org"),  # another account of the same provider
        claims("666", "Boss@Lab.org"),  # the same address written otherwise
        claims("1", "boss@lab.org", iss="https://accounts.example.com"),  # another provider, same subject
    ):
        with pytest.raises(LsmError, match="another account"):
            accounts.sign_in(lab, impostor)
    assert users(lab) == [("boss@lab.org", ISSUER, "1", accounts.ADMIN)]
    # nor can the impostor take a name that someone acted under: a person's history stays theirs
    batches.submit_batch(lab, crop_files(1, 602), model_id, "ana's", owner="ana@lab.org")
    assert accounts.sign_in(lab, claims("2", "ana@lab.org")) == "ana@lab.org"
    with pytest.raises(LsmError, match="another account"):
        accounts.sign_in(lab, claims("3", "ana@lab.org"))
    # an account keeps its name whatever address the provider gives it later: with the boss's, Ana is Ana
    assert accounts.sign_in(lab, claims("2", "boss@lab.org")) == "ana@lab.org"
    with lab() as s:
        assert accounts.role_of(lab, s, "ana@lab.org") == accounts.MEMBER


def test_someone_known_by_name_before_is_linked_at_their_first_sign_in(history, signed_in):
    """A users row without issuer and subject (signed in before migration 0008, or promoted on the Lab page
    before ever signing in) becomes the first account that signs in with its e-mail; no second one."""
    lab = signed_in
    lab = with_settings(lab, admins=frozenset({"boss@lab.org"}))
    accounts.set_role(lab, "carol@lab.org", accounts.ADMIN, "boss@lab.org")
    assert users(lab) == [("carol@lab.org", None, None, accounts.ADMIN)]
    assert accounts.sign_in(lab, claims("c1", "carol@lab.org")) == "carol@lab.org"
    assert users(lab) == [("carol@lab.org", ISSUER, "c1", accounts.ADMIN)]
    with pytest.raises(LsmError, match="another account"):
        accounts.sign_in(lab, claims("c2", "carol@lab.org"))


def test_allowed_domains_limit_who_may_sign_in(history, signed_in):
    lab = signed_in
    assert accounts.sign_in(lab, claims("9", "anyone@elsewhere.net")) == "anyone@elsewhere.net"  # empty: anyone
    lab = with_settings(lab, allowed_domains=frozenset({"lab.example.org", "alice@guest.org"}))
    assert accounts.sign_in(lab, claims("10", "bob@lab.example.org")) == "bob@lab.example.org"
    assert accounts.sign_in(lab, claims("11", "Carl@LAB.example.org")) == "Carl@LAB.example.org"
    assert accounts.sign_in(lab, claims("12", "alice@guest.org")) == "alice@guest.org"
    for outsider in ("eve@guest.org", "eve@evil.org", "eve@sub.lab.example.org", "eve@lab.example.org.evil.net"):
        with pytest.raises(LsmError, match="may not sign in") as refused:
            accounts.sign_in(lab, claims(outsider, outsider))
        assert "lab.example.org" in str(refused.value) and "alice@guest.org" not in str(refused.value)
    with pytest.raises(LsmError, match="may not sign in"):
        accounts.sign_in(lab, claims("9", "anyone@elsewhere.net"))  # known, but no longer admitted
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 4


def test_migration_0008_adds_issuer_and_subject_unique_together(db_url):
    engine = make_engine(db_url)
    cfg = _alembic_config(engine)
    command.upgrade(cfg, "0007")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name, role, created) VALUES ('old@lab.org', 'admin', '2026-01-01')"))
    assert upgrade(engine) == head_revision()
    assert {"issuer", "subject"} <= {c["name"] for c in inspect(engine).get_columns("users")}
    with engine.begin() as conn:
        assert conn.execute(text("SELECT name, role, issuer, subject FROM users")).all() == [
            ("old@lab.org", "admin", None, None)
        ]
        conn.execute(text("INSERT INTO users (name, role, created) VALUES ('other@lab.org', 'member', '2026-01-02')"))
        conn.execute(text("UPDATE users SET issuer = 'https://idp', subject = '1' WHERE name = 'old@lab.org'"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE users SET issuer = 'https://idp', subject = '1' WHERE name = 'other@lab.org'"))
    with pytest.raises(IntegrityError), engine.begin() as conn:  # names stay unique through SQLite's rebuild
        conn.execute(text("INSERT INTO users (name, role, created) VALUES ('old@lab.org', 'member', '2026-01-03')"))
    command.downgrade(cfg, "0007")
    assert not {"issuer", "subject"} & {c["name"] for c in inspect(engine).get_columns("users")}
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar() == 2
    assert upgrade(engine) == head_revision()
    engine.dispose()
