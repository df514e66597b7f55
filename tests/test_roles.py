"""Roles (lsm_core.lab.accounts): what members and administrators may do, checked in the functions themselves,
on SQLite and PostgreSQL, in lab mode and in signed-in mode (an [auth] section in a real secrets.toml)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from db import audit
from db.schema import Batch, Job, Model, User
from lsm_core.errors import LsmError
from lsm_core.lab import accounts, batches, jobs
from lsm_core.lab.registry import import_model, set_default
from lsm_core.lab.tasks import train as train_task
from lsm_core.ml import nets
from tests.helpers import crop_files


@pytest.fixture
def lab_mode(monkeypatch, tmp_path):
    """No [auth] anywhere Streamlit looks (home and working folder are empty temporary folders)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LSM_ADMINS", raising=False)


@pytest.fixture
def signed_in_mode(lab_mode, tmp_path):
    folder = tmp_path / ".streamlit"
    folder.mkdir()
    (folder / "secrets.toml").write_text(
        '[auth]\nredirect_uri = "http://localhost:8501/oauth2callback"\ncookie_secret = "x"\n'
        'client_id = "lsm"\nclient_secret = "s"\nserver_metadata_url = "http://127.0.0.1:1/.well-known/openid-configuration"\n'
    )


def _weights_and_manifest(tmp_path, name="imported"):
    from safetensors.torch import save_file

    net = nets.create("tiny_cnn", 3)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(dict(task="lsm", name=name, classes=["LT-HSC", "ST-HSC", "MPP"], architecture="tiny_cnn"))
    )
    return weights, manifest


def test_lab_mode_without_named_admins_everyone_administers(history, lab_mode):
    lab, _, model_id = history
    assert not accounts.auth_configured()
    with lab() as s:
        assert accounts.role_of(s, "anyone") == accounts.ADMIN
    set_default(lab, model_id, "anyone")  # does not raise


def test_members_change_only_their_own_and_admins_anyones(history, lab_mode, monkeypatch):
    lab, _, model_id = history
    monkeypatch.setenv("LSM_ADMINS", "boss")
    ana = batches.submit_batch(lab, crop_files(2, 501), model_id, "ana's", owner="ana")
    bob = batches.submit_batch(lab, crop_files(2, 502), model_id, "bob's", owner="bob")
    with lab() as s:
        assert accounts.role_of(s, "ana") == accounts.MEMBER and accounts.role_of(s, "boss") == accounts.ADMIN

    with pytest.raises(LsmError, match="belongs to bob"):
        batches.rename(lab, bob.batch_id, "mine now", "ana")
    with pytest.raises(LsmError, match="belongs to bob"):
        batches.delete(lab, bob.batch_id, "ana")
    with pytest.raises(LsmError, match="belongs to bob"):
        jobs.cancel(lab, bob.job_id, "ana")
    with lab() as s:
        assert s.get(Batch, bob.batch_id).name == "bob's" and s.get(Job, bob.job_id).status == "queued"

    # a member re-runs anyone's batch into a new one of their own, and cancels and deletes their own
    again = batches.rerun(lab, bob.batch_id, model_id, "ana")
    with lab() as s:
        assert s.get(Batch, again.batch_id).owner == "ana"
    assert jobs.cancel(lab, ana.job_id, "ana") == "cancelled"
    batches.delete(lab, ana.batch_id, "ana")

    # an administrator renames and deletes anyone's batch; the trail says who did it
    batches.rename(lab, bob.batch_id, "renamed by boss", "boss")
    batches.delete(lab, bob.batch_id, "boss")
    with lab() as s:
        assert s.get(Batch, bob.batch_id) is None
        deleted = [e for e in audit.events(s) if e.action == "delete" and e.target == f"batch {bob.batch_id}"]
    assert [(e.actor, e.detail["owner"]) for e in deleted] == [("boss", "bob")]


def test_models_defaults_training_and_import_are_for_admins(history, lab_mode, monkeypatch, tmp_path):
    lab, _, model_id = history
    monkeypatch.setenv("LSM_ADMINS", "boss")
    with pytest.raises(LsmError, match="only administrators choose default models"):
        set_default(lab, model_id, "ana")
    with pytest.raises(LsmError, match="only administrators train models"):
        train_task.submit(lab, "lsm", "ana-model", {"epochs": 1}, owner="ana", uploads=[{"name": "x", "sha256": "0"}])
    weights, manifest = _weights_and_manifest(tmp_path)
    before = len(lab.store.packages())
    with pytest.raises(LsmError, match="only administrators import models"):
        import_model(lab, weights, manifest, "ana")
    assert len(lab.store.packages()) == before  # nothing reached the store
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "train")) == 0

    row = import_model(lab, weights, manifest, "boss")
    set_default(lab, row.id, "boss")
    with lab() as s:
        assert s.get(Model, row.id).is_default and not s.get(Model, model_id).is_default
        trail = {(e.actor, e.action) for e in audit.events(s)}
    assert {("boss", "import"), ("boss", "set default")} <= trail


def test_roles_are_given_by_admins_and_the_audit_trail_is_theirs(history, lab_mode, monkeypatch):
    lab, _, model_id = history
    monkeypatch.setenv("LSM_ADMINS", "boss")
    with pytest.raises(LsmError, match="only administrators read the audit trail"):
        accounts.audit_trail(lab, "ana")
    with pytest.raises(LsmError, match="only administrators change people's roles"):
        accounts.set_role(lab, "ana", accounts.ADMIN, "ana")
    with pytest.raises(LsmError, match="named in LSM_ADMINS"):
        accounts.set_role(lab, "boss", accounts.MEMBER, "boss")
    with pytest.raises(LsmError, match="unknown role"):
        accounts.set_role(lab, "ana", "owner", "boss")

    accounts.set_role(lab, "ana", accounts.ADMIN, "boss")
    set_default(lab, model_id, "ana")  # now allowed
    assert any(e["did"] == "set role" and e["who"] == "boss" for e in accounts.audit_trail(lab, "ana"))
    accounts.set_role(lab, "ana", accounts.MEMBER, "boss")
    with pytest.raises(LsmError):
        set_default(lab, model_id, "ana")


def test_signed_in_newcomers_are_members_and_the_last_admin_stays(history, signed_in_mode, monkeypatch):
    lab, _, model_id = history
    assert accounts.auth_configured()
    assert accounts.sign_in(lab, "ana@lab.org", "Ana") == accounts.MEMBER
    with pytest.raises(LsmError, match="not an administrator"):
        set_default(lab, model_id, "ana@lab.org")  # no LSM_ADMINS: nobody administers yet

    monkeypatch.setenv("LSM_ADMINS", "boss@lab.org")
    assert accounts.sign_in(lab, "boss@lab.org", "Boss") == accounts.ADMIN
    accounts.set_role(lab, "ana@lab.org", accounts.ADMIN, "boss@lab.org")
    monkeypatch.delenv("LSM_ADMINS")  # from now on the users table alone says who administers
    with lab() as s:
        assert accounts.role_of(s, "boss@lab.org") == accounts.ADMIN  # made an admin at first sign-in
        assert s.scalar(select(User).where(User.name == "ana@lab.org")).display_name == "Ana"
    accounts.set_role(lab, "boss@lab.org", accounts.MEMBER, "ana@lab.org")
    with pytest.raises(LsmError, match="last administrator"):
        accounts.set_role(lab, "ana@lab.org", accounts.MEMBER, "ana@lab.org")
    people = {p.name: p.role for p in accounts.people(lab)}
    assert people == {"ana@lab.org": accounts.ADMIN, "boss@lab.org": accounts.MEMBER}

    with pytest.raises(LsmError, match="no usable name"):
        accounts.sign_in(lab, "  ")


def test_a_broken_secrets_file_is_named(lab_mode, tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text("[auth\n")
    with pytest.raises(LsmError, match="secrets.toml cannot be read"):
        accounts.auth_configured()
