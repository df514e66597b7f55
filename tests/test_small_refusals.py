"""The smaller refusals and warnings of issue #27 item 7: a model name is checked whole (``"lsm-lab\\n"`` passed a
``$``), a sign-in cookie secret made of a repeated piece or a run (``"abcdefgh" * 4``: 32 bytes, 8 different
characters) is refused while random ones of every usual kind are not, the secrets file readable by other
accounts is warned about (to administrators, on every page), and the Classify page's channel tooltip shows
the first file's name as text."""

from __future__ import annotations

import io
import os
import re
import secrets

import numpy as np
import pytest

from lsm_core.errors import LsmError
from lsm_core.lab import settings
from tests.helpers import APP
from tests.test_signin_secrets import STRONG, auth_section, secrets_file


# --- model names ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lsm-lab\n", "lsm-lab\r\n", "lsm\nlab", "a" * 64 + "\n"])
def test_a_model_name_is_checked_whole(name, tmp_path):
    from lsm_core.ml import nets
    from lsm_core.ml.models import Manifest, ModelStore, check_name

    with pytest.raises(LsmError, match="is not allowed"):
        check_name(name)
    with pytest.raises(LsmError, match="is not allowed"):
        Manifest.from_dict(
            {"task": "lsm", "name": name, "classes": ["LT-HSC", "ST-HSC", "MPP"], "architecture": "tiny_cnn"}
        )
    store = ModelStore(tmp_path / "models")
    manifest = Manifest(task="lsm", name="lsm-lab", classes=["LT-HSC", "ST-HSC", "MPP"], architecture="tiny_cnn")
    manifest.name = name
    with pytest.raises(LsmError, match="is not allowed"):
        store.add(nets.create("tiny_cnn", 3), manifest)
    assert not any((tmp_path / "models").rglob("*.json"))  # nothing written
    assert check_name("lsm-lab") == "lsm-lab" and check_name("a" * 64) == "a" * 64


# --- the cookie secret ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cookie_secret",
    [
        "abcdefgh" * 4,  # the issue's: 32 bytes, 8 different characters
        "0123456789abcdef" * 2,  # a hex digit of each, twice
        "Tr0ub4dor&3!" * 3,
        "password" * 3 + "12345678",
        "abcdefghijklmnopqrstuvwxyz123456",  # the alphabet: 32 different characters, all in a run
        "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210",
        "a1b2c3d4" + "e5f6g7h8" * 4,
    ],
)
def test_a_cookie_secret_of_a_repeated_piece_or_a_run_is_refused(tmp_path, cookie_secret):
    path = secrets_file(tmp_path, auth_section(cookie_secret))
    problem = settings.auth_problem([path])
    assert problem is not None and "not random" in problem and str(path) in problem and "token_hex" in problem
    assert settings.secret_bits(cookie_secret) < settings.MIN_COOKIE_SECRET_BITS


def test_random_cookie_secrets_of_every_usual_kind_pass(tmp_path):
    made = [secrets.token_hex(16) for _ in range(300)] + [secrets.token_hex(32) for _ in range(50)]
    made += [secrets.token_urlsafe(32) for _ in range(50)] + [secrets.token_urlsafe(24) for _ in range(50)]
    made += [STRONG, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    for secret in made:
        assert settings.secret_bits(secret) >= settings.MIN_COOKIE_SECRET_BITS, secret
        assert settings.auth_problem([secrets_file(tmp_path, auth_section(secret))]) is None, secret


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_secrets_file_other_accounts_can_read_or_change_is_warned_about(tmp_path):
    path = secrets_file(tmp_path, auth_section(STRONG))
    for mode, says in ((0o644, "can be read by"), (0o660, "can be read and changed by"), (0o602, "changed by")):
        path.chmod(mode)
        warning = settings.auth_warning([path])
        assert warning is not None and says in warning and f"chmod 600 {path}" in warning, (oct(mode), warning)
        assert settings.auth_problem([path]) is None  # a warning, not a refusal
    for mode in (0o600, 0o400, 0o700):
        path.chmod(mode)
        assert settings.auth_warning([path]) is None
    lab_mode = secrets_file(tmp_path / "other", 'other = "value"\n')
    lab_mode.chmod(0o644)
    assert settings.auth_warning([lab_mode]) is None  # no [auth]: no cookie_secret to read


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_administrators_see_the_warning_on_every_page_and_members_do_not(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LSM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LSM_DATABASE_URL", raising=False)
    monkeypatch.setenv("LSM_ADMINS", "boss@lab.org")
    path = secrets_file(home, auth_section(STRONG))
    path.chmod(0o644)

    def app_as(email: str):
        at = AppTest.from_file(APP, default_timeout=60)
        at.user = {
            "iss": "https://login.lab.example.org",
            "sub": email,
            "email": email,
            "email_verified": True,
            "is_logged_in": True,
        }
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    boss = app_as("boss@lab.org")
    shown = [re.sub(r"\\(.)", r"\1", w.value) for w in boss.warning]
    assert any("sign-in secret is exposed" in w and f"chmod 600 {path}" in w for w in shown), shown
    assert not any("exposed" in w.value for w in app_as("ana@lab.org").warning)
    path.chmod(0o600)
    assert not any("exposed" in w.value for w in app_as("boss@lab.org").warning)


# --- the Classify page's channel tooltip ---------------------------------------------------------------------------
def two_channel_tiff() -> bytes:
    import tifffile

    planes = np.stack([np.full((64, 64), 10 * c, np.uint16) for c in range(2)])
    buf = io.BytesIO()
    tifffile.imwrite(buf, planes, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["DIC", "GFP"]}})
    return buf.getvalue()


def test_the_channel_tooltip_shows_the_files_name_as_text(app_env):
    """A file named with Markdown (a link, an image) is named in the channel picker's help as text: its
    syntax escaped, the name still readable."""
    from tests.helpers import run_page
    from tests.test_markdown_app import IMG, LINK, LINK_SYNTAX, unescaped

    name = f"{LINK} {IMG}.ome.tif"
    at = run_page()
    at.file_uploader[0].set_value([(name, two_channel_tiff(), "image/tiff")])
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    picker = next(s for s in at.selectbox if s.label == "Channel to classify")
    assert name in unescaped(picker.help)
    assert not LINK_SYNTAX.search(picker.help), picker.help
    assert not re.search(r"https?:/", picker.help.replace("\\", "")), picker.help
