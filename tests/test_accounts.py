"""Roles (lsm_core.lab.accounts): what members and administrators may do, checked in the functions themselves,
on SQLite and PostgreSQL, in lab mode and in signed-in mode (an [auth] section in a real secrets.toml)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from db import audit
from db.schema import Batch, Job, Model, User
from lsm_core.errors import LsmError
from lsm_core.lab import accounts, batches, jobs, settings
from lsm_core.lab.registry import import_model, set_default
from lsm_core.lab.tasks import train as train_task
from lsm_core.ml import nets
from tests.helpers import crop_files, with_settings


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
    assert not accounts.auth_configured(lab)
    with lab() as s:
        assert accounts.role_of(lab, s, "anyone") == accounts.ADMIN
    set_default(lab, model_id, "anyone")  # does not raise


def test_members_change_only_their_own_and_admins_anyones(history, lab_mode):
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
    ana = batches.submit_batch(lab, crop_files(2, 501), model_id, "ana's", owner="ana")
    bob = batches.submit_batch(lab, crop_files(2, 502), model_id, "bob's", owner="bob")
    with lab() as s:
        assert accounts.role_of(lab, s, "ana") == accounts.MEMBER and accounts.role_of(lab, s, "boss") == accounts.ADMIN

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


def test_models_defaults_training_and_import_are_for_admins(history, lab_mode, tmp_path):
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
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


def test_roles_are_given_by_admins_and_the_audit_trail_is_theirs(history, lab_mode):
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
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


def test_lab_mode_without_named_admins_whoever_promoted_a_colleague_can_demote_them(history, lab_mode):
    """Issue 26 item 5: in lab mode without LSM_ADMINS everyone administers (the People table says so), so a
    colleague made an administrator is never the lab's last one: the person running the lab (stored nowhere as
    an administrator) can make them a member again, and they can step down themselves. set_role says what the
    role was; setting the same role again writes nothing."""
    lab, _, _ = history
    accounts.set_role(lab, "colleague", accounts.ADMIN, "root")
    people = {p.name: (p.role, p.stored_role) for p in accounts.people(lab)}
    assert people["root"] == (accounts.ADMIN, accounts.MEMBER)  # administers, though no users row says so
    assert people["colleague"] == (accounts.ADMIN, accounts.ADMIN)
    accounts.set_role(lab, "colleague", accounts.MEMBER, "root")  # was refused: "the lab's last administrator"
    assert accounts.set_role(lab, "colleague", accounts.ADMIN, "colleague") == accounts.MEMBER
    assert accounts.set_role(lab, "colleague", accounts.MEMBER, "colleague") == accounts.ADMIN  # steps down
    with lab() as s:
        assert s.scalar(select(User.role).where(User.name == "colleague")) == accounts.MEMBER
        assert accounts.role_of(lab, s, "colleague") == accounts.ADMIN  # lab mode: still administers, as the table says
        changes = [e for e in audit.events(s) if e.action == "set role"]
    assert accounts.set_role(lab, "colleague", accounts.MEMBER, "root") == accounts.MEMBER  # the same: a no-op
    with lab() as s:
        assert len([e for e in audit.events(s) if e.action == "set role"]) == len(changes) == 4


def _claims(sub: str, email: str, name: str) -> dict:
    """An ID token's claims, as st.user holds them after the provider signed someone in."""
    return {"iss": "https://login.lab.org", "sub": sub, "email": email, "email_verified": True, "name": name}


def test_signed_in_newcomers_are_members_and_the_last_admin_stays(history, signed_in_mode):
    lab, _, model_id = history
    lab = with_settings(lab, signed_in=settings.current().signed_in)  # as the secrets file written here says
    assert accounts.auth_configured(lab)
    assert accounts.sign_in(lab, _claims("17", "ana@lab.org", "Ana")) == "ana@lab.org"
    with lab() as s:
        assert accounts.role_of(lab, s, "ana@lab.org") == accounts.MEMBER
    with pytest.raises(LsmError, match="not an administrator"):
        set_default(lab, model_id, "ana@lab.org")  # no LSM_ADMINS: nobody administers yet

    named = with_settings(lab, admins=frozenset({"boss@lab.org"}))  # the lab started with LSM_ADMINS
    assert accounts.sign_in(named, _claims("1", "boss@lab.org", "Boss")) == "boss@lab.org"
    accounts.set_role(named, "ana@lab.org", accounts.ADMIN, "boss@lab.org")
    # from now on (the lab without LSM_ADMINS) the users table alone says who administers
    with lab() as s:
        assert accounts.role_of(lab, s, "boss@lab.org") == accounts.ADMIN  # made an admin at first sign-in
        assert s.scalar(select(User).where(User.name == "ana@lab.org")).display_name == "Ana"
    accounts.set_role(lab, "boss@lab.org", accounts.MEMBER, "ana@lab.org")
    with pytest.raises(LsmError, match="last administrator"):
        accounts.set_role(lab, "ana@lab.org", accounts.MEMBER, "ana@lab.org")
    people = {p.name: p.role for p in accounts.people(lab)}
    assert people == {"ana@lab.org": accounts.ADMIN, "boss@lab.org": accounts.MEMBER}

    with pytest.raises(LsmError, match="no e-mail address"):
        accounts.sign_in(lab, _claims("5", "  ", "Nobody"))


def test_a_broken_secrets_file_is_named(lab_mode, tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text("[auth\n")
    with pytest.raises(LsmError, match="secrets.toml cannot be read"):
        settings.current()


def test_a_training_job_is_refused_for_a_member_where_it_is_queued_and_where_it_runs(history, lab_mode):
    from lsm_core.lab.worker import Worker

    lab, _, _ = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
    payload = {"task": "lsm", "name": "sneaky", "config": {"epochs": 1}, "uploads": [], "batches": {}}
    with pytest.raises(LsmError, match="only administrators train models"):
        jobs.submit(lab, jobs.JobKind.TRAIN, payload, "ana")  # the queue itself refuses, not only train.submit
    with lab.begin() as s:  # a row written by an old version, or by hand: the worker checks again
        s.add(jobs.new_job(jobs.JobKind.TRAIN, payload, "ana"))
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        job = s.scalars(select(Job).where(Job.kind == "train")).one()
        assert job.status == "failed" and "only administrators train models" in (job.error or "")
        assert s.scalar(select(func.count()).select_from(Model).where(Model.name == "sneaky")) == 0


def test_submitting_for_someone_else_is_for_admins_and_the_audit_names_who_acted(history, lab_mode):
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
    with pytest.raises(LsmError, match="only administrators submit batches for someone else"):
        batches.submit_batch(lab, crop_files(1, seed=801), model_id, "for bea", owner="bea", actor="ana")
    sub = batches.submit_batch(lab, crop_files(1, seed=802), model_id, "for bea", owner="bea", actor="boss")
    with lab() as s:
        assert s.get(Batch, sub.batch_id).owner == "bea"
        (event,) = [e for e in audit.events(s) if e.action == "submit" and e.target == f"batch {sub.batch_id}"]
    assert event.actor == "boss" and event.detail["owner"] == "bea"


def test_the_command_line_records_who_ran_it_not_the_owner_it_names(history, lab_mode, monkeypatch, tmp_path):
    from lsm_core import cli

    lab, _, _ = history
    folder = tmp_path / "cells"
    folder.mkdir()
    for f in crop_files(1, seed=803):
        (folder / f.source).write_bytes(f.data)
    monkeypatch.setenv("LSM_DATABASE_URL", lab.settings.database_url)
    monkeypatch.setenv("LSM_DATA_DIR", str(lab.settings.data_dir))
    monkeypatch.setenv("LSM_ADMINS", "boss")
    monkeypatch.setenv("LSM_USER", "ana")
    assert cli.main(["submit", str(folder), "--model", "tiny-lsm", "--batch", "x", "--owner", "bea"]) != 0
    monkeypatch.setenv("LSM_USER", "boss")
    assert cli.main(["submit", str(folder), "--model", "tiny-lsm", "--batch", "x", "--owner", "bea"]) == 0
    with lab() as s:
        events = [e for e in audit.events(s) if e.action == "submit"]
    assert events[0].actor == "boss" and events[0].detail["owner"] == "bea"


def test_two_admins_demoting_each_other_at_once_leave_one(history, signed_in_mode, monkeypatch):
    import threading

    lab, _, _ = history
    lab = with_settings(lab, signed_in=settings.current().signed_in)  # as the secrets file written here says
    assert lab.settings.signed_in
    with lab.begin() as s:
        s.add_all([User(name="a@lab.org", role=accounts.ADMIN), User(name="b@lab.org", role=accounts.ADMIN)])
    both_checked = threading.Barrier(2, timeout=3)
    real_record = audit.record

    def record(*args, **kwargs):  # each demotion waits here, after its check, for the other one's check
        if args[2] == "set role":
            try:
                both_checked.wait()
            except threading.BrokenBarrierError:  # the other one is held back by a lock: go on alone
                pass
        return real_record(*args, **kwargs)

    monkeypatch.setattr(audit, "record", record)
    outcomes: dict[str, str] = {}

    def demote(who: str, by: str) -> None:
        try:
            accounts.set_role(lab, who, accounts.MEMBER, by)
            outcomes[by] = "done"
        except LsmError as exc:
            outcomes[by] = str(exc)

    threads = [
        threading.Thread(target=demote, args=("b@lab.org", "a@lab.org")),
        threading.Thread(target=demote, args=("a@lab.org", "b@lab.org")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with lab() as s:
        admins = set(s.scalars(select(User.name).where(User.role == accounts.ADMIN)))
    assert len(admins) == 1, outcomes
    refused = [m for m in outcomes.values() if m != "done"]
    assert len(refused) == 1 and ("last administrator" in refused[0] or "not an administrator" in refused[0])


def test_who_administers_is_the_labs_settings_not_the_environment(history, lab_mode, monkeypatch):
    """Issue 28 item 6: the roles follow the Lab's settings (LSM_ADMINS, LSM_ALLOWED_DOMAINS, sign-in, as read
    when it was opened), never the process's environment read again: two Labs of one process, on one database,
    with different settings answer differently, and changing the environment changes neither."""
    lab, _, model_id = history
    named = with_settings(lab, admins=frozenset({"boss"}), allowed_domains=frozenset({"lab.org"}))
    everyone = with_settings(lab, admins=frozenset(), signed_in=False)
    monkeypatch.setenv("LSM_ADMINS", "ana")  # read by neither lab
    monkeypatch.setenv("LSM_ALLOWED_DOMAINS", "elsewhere.net")
    assert settings.current().admins == {"ana"}  # the environment does say so
    with lab() as s:
        assert accounts.role_of(named, s, "ana") == accounts.MEMBER
        assert accounts.role_of(named, s, "boss") == accounts.ADMIN
        assert accounts.role_of(everyone, s, "ana") == accounts.ADMIN  # lab mode, nobody named
        assert accounts.role_of(everyone, s, "someone") == accounts.ADMIN
    assert accounts.configured_admins(named) == {"boss"} and accounts.configured_admins(everyone) == frozenset()
    assert accounts.allowed_domains(named) == {"lab.org"} and accounts.allowed_domains(everyone) == frozenset()
    with pytest.raises(LsmError, match="only administrators choose default models"):
        set_default(named, model_id, "ana")
    set_default(everyone, model_id, "ana")  # the same person, the same database: the other lab lets her


def test_a_job_is_never_submitted_without_its_owner(history, lab_mode):
    """Issue 28 item 6: whoever submits says who owns the job; no submit function falls back to the
    operating system's user name (the command line decides who its person is, once, and passes it)."""
    from lsm_core.lab.tasks import evaluate as evaluate_task
    from lsm_core.lab.tasks import saliency as saliency_task

    lab, _, model_id = history
    with pytest.raises(TypeError, match="owner"):
        batches.submit_batch(lab, crop_files(1, seed=811), model_id, "nobody's")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="owner"):
        saliency_task.submit(lab, 1, "gradcam")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="owner"):
        evaluate_task.submit(lab, model_id, [{"name": "x.zip", "sha256": "0"}])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="owner"):
        train_task.submit(lab, "lsm", "m", {"epochs": 1}, uploads=[{"name": "x", "sha256": "0"}])  # type: ignore[call-arg]
    for blank in ("", "  "):
        with pytest.raises(LsmError, match="a job needs an owner"):
            jobs.submit(lab, jobs.JobKind.EVALUATE, {"model_id": model_id, "uploads": []}, blank)
        with pytest.raises(LsmError, match="a job needs an owner"):
            batches.submit_batch(lab, crop_files(1, seed=812), model_id, "nobody's", blank)
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(Batch)) == 0
