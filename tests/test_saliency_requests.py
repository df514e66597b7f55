"""Saliency requests (hardening issue, item 11), on SQLite and PostgreSQL: the same request gives the same job,
a member's request is capped at LSM_SALIENCY_MAX_CELLS cells (administrators may ask for all), and a request
can be cancelled from the page that shows its progress."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db.schema import Job
from lsm_core.errors import LsmError
from lsm_core.lab import batches
from lsm_core.lab.lab import Lab
from lsm_core.lab.tasks import saliency as saliency_task
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files, run_page, texts


def _saliency_jobs(lab) -> int:
    with lab() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.kind == "saliency")) or 0


def test_the_same_request_gives_the_same_job_queued_running_or_done(history):
    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(4, seed=960), model_id, "maps twice", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    before = _saliency_jobs(lab)
    first = saliency_task.submit(lab, sub.batch_id, "gradcam", top=2, owner="ana")
    assert saliency_task.submit(lab, sub.batch_id, "gradcam", top=2, owner="bea") == first  # a colleague's click
    other = saliency_task.submit(lab, sub.batch_id, "gradcam", owner="ana")  # every cell: another request
    assert other != first
    assert _saliency_jobs(lab) == before + 2
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        assert s.get(Job, first).status == "done"
    assert saliency_task.submit(lab, sub.batch_id, "gradcam", top=2, owner="ana") == first  # done: its maps stand
    assert _saliency_jobs(lab) == before + 2


def test_a_member_may_ask_for_a_capped_number_of_cells_and_an_admin_for_all(history, monkeypatch, tmp_path):
    lab, _, model_id = history
    monkeypatch.setenv("HOME", str(tmp_path))  # lab mode (no [auth])
    monkeypatch.chdir(tmp_path)
    capped = Lab(lab.sessions, lab.settings.with_(saliency_max_cells=3, admins=frozenset({"boss"})), lab.engine)
    sub = batches.submit_batch(capped, crop_files(6, seed=961), model_id, "six cells", owner="ana")
    Worker(capped, device="cpu").run(drain=True)
    with pytest.raises(LsmError, match=r"maps of 6 cells were asked for; members may ask for at most 3"):
        saliency_task.submit(capped, sub.batch_id, "gradcam", owner="ana")
    saliency_task.submit(capped, sub.batch_id, "gradcam", top=1, owner="ana")  # at most 3 cells: allowed
    job = saliency_task.submit(capped, sub.batch_id, "gradcam", owner="boss")  # an administrator: any number
    with capped() as s:
        assert s.get(Job, job).progress_total == 6


def test_a_saliency_job_can_be_cancelled_where_its_progress_is_shown(app_env):
    from db import queries
    from lsm_core.lab.open_lab import open_lab

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    sub = batches.submit_batch(lab, crop_files(3, seed=962), model_id, "to cancel", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    job = saliency_task.submit(lab, sub.batch_id, "gradcam", top=2, owner="ana")
    at = run_page("pages/results.py", {"batch": str(sub.batch_id)})
    method = next(r for r in at.radio if r.label == "Method")
    method.set_value("gradcam")
    at.run()
    cancel = next(b for b in at.button if b.label == "Cancel these maps")
    cancel.click()
    at.run()
    with lab() as s:
        assert s.get(Job, job).status == "cancelled"
    at.run()  # what the polling fragment's rerun does once the job has ended
    assert any(b.label.startswith("Compute") for b in at.button)  # the request can be made again
    lab.dispose()


def test_saliency_jobs_are_listed_on_the_history_page_and_cancelled_there(app_env):
    from db import queries
    from lsm_core.lab.open_lab import open_lab

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    sub = batches.submit_batch(lab, crop_files(3, seed=963), model_id, "listed", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    job = saliency_task.submit(lab, sub.batch_id, "gradcam", top=2, owner="ana")
    at = run_page("pages/history.py")
    shown = texts(at)
    assert f"job {job} · ana · queued · batch {sub.batch_id} · gradcam · top 2 per class" in shown
    next(b for b in at.button if b.key == f"cancel_{job}").click()
    at.run()
    with lab() as s:
        assert s.get(Job, job).status == "cancelled"
    assert f"Job {job} cancelled." in texts(at)
    lab.dispose()


def test_a_job_is_cancelled_on_the_command_line_by_its_owner_not_by_another_member(app_env, monkeypatch, capsys):
    from db import queries
    from lsm_core import cli
    from lsm_core.lab.open_lab import open_lab

    monkeypatch.setenv("LSM_ADMINS", "boss")  # ana and bea are members
    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    sub = batches.submit_batch(lab, crop_files(3, seed=964), model_id, "cli cancel", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    job = saliency_task.submit(lab, sub.batch_id, "gradcam", top=2, owner="ana")
    monkeypatch.setenv("LSM_USER", "bea")
    assert cli.main(["cancel", str(job)]) != 0
    with lab() as s:
        assert s.get(Job, job).status == "queued"
    monkeypatch.setenv("LSM_USER", "ana")
    assert cli.main(["cancel", str(job)]) == 0
    assert f"job {job} cancelled" in capsys.readouterr().out
    with lab() as s:
        assert s.get(Job, job).status == "cancelled"
    lab.dispose()
