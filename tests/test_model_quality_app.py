"""The Models page after issue #12: LSM first, each number names its set, a failed model says why and cannot
be the default, the Evaluate tab starts on the LSM default and shows a finished evaluation as a full card, and
Cancel is offered to the job's owner and administrators only (through streamlit.testing.v1.AppTest)."""

from __future__ import annotations

import json
import shutil

import pytest

from lsm_core.lab.tasks import evaluate as evaluate_task
from tests.helpers import labelled_zip, run_page, texts
from tests.test_model_quality import trained  # noqa: F401  (a module-scoped fixture: two trained packages)


@pytest.fixture
def app_env(tmp_path, monkeypatch, trained):  # noqa: F811
    """A fresh data dir (SQLite) whose model store holds demo-named tiny models, `useless-lsm` (failed its
    quality check) and `good-aging` (passed; evaluated on a test set of another seed; the aging default)."""
    from tests.helpers import add_tiny_demo_models

    monkeypatch.setenv("LSM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LSM_DATABASE_URL", raising=False)
    monkeypatch.setenv("LSM_USER", "ana")
    monkeypatch.delenv("LSM_ADMINS", raising=False)  # lab mode: everyone administers
    add_tiny_demo_models(tmp_path / "models")
    for path in trained.values():
        shutil.copytree(path, tmp_path / "models" / path.parent.name / path.name)
    return tmp_path


def models_page():
    return run_page("pages/models.py")


def figures(at) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def test_table_lists_lsm_first_and_names_the_set_of_each_number(app_env):
    at = models_page()
    frame = at.dataframe[0].value
    tasks = list(frame["task"])
    assert tasks == sorted(tasks, key=lambda t: not t.startswith("LSM")), tasks  # every LSM row before aging
    assert list(frame["model"])[0] == "demo-lsm" and list(frame["default"])[0] == "yes"
    for column in ("validation accuracy", "validation ECE", "test accuracy", "test ECE", "quality check"):
        assert column in frame.columns
    assert "accuracy" not in frame.columns and "ECE" not in frame.columns  # no number without its set
    useless = frame[frame["model"] == "useless-lsm"].iloc[0]
    assert useless["kind"] == "failed quality check" and useless["quality check"] == "failed"
    assert useless["default"] == ""
    good = frame[frame["model"] == "good-aging"].iloc[0]
    assert good["quality check"] == "passed" and good["test cells"] == 100
    # the model boxes of every tab list LSM first, its default first
    for key in ("card_model", "eval_model", "export_model"):
        options = at.selectbox(key=key).options
        assert options[0].startswith("LSM") and "demo-lsm" in options[0], (key, options)
        assert [o.startswith("LSM") for o in options] == sorted((o.startswith("LSM") for o in options), reverse=True)
    assert at.selectbox(key="eval_model").value == at.selectbox(key="eval_model").options[0]


def test_failed_model_card_says_why_and_cannot_be_the_default(app_env):
    at = models_page()
    card = at.selectbox(key="card_model")
    card.set_value(next(o for o in card.options if "useless-lsm" in o))
    at.run()
    assert "(failed quality check)" in at.selectbox(key="card_model").value
    errors = " ".join(e.value for e in at.error)
    assert "failed its quality check" in errors and "not clearly above chance" in errors
    assert any("bound of 20" in w.value for w in at.warning)
    button = next(b for b in at.button if b.label.startswith("Make useless-lsm v1 the default"))
    assert button.disabled
    assert "cannot be the default" in texts(at)
    assert "Validation set (held out from the training data" in texts(at)
    labels = [m.label for m in at.metric]
    assert labels[:2] == ["Accuracy (consistency)", "ECE"]  # ECE beside accuracy
    # a model that passed, with a test set: two cards, each naming its cells
    card = at.selectbox(key="card_model")
    card.set_value(next(o for o in card.options if "good-aging" in o))
    at.run()
    shown = texts(at)
    assert "Validation set (held out" in shown and "Test set (synthetic cells of another seed): 100 cells" in shown
    assert not at.error
    assert "This is the default model for its task." in shown  # a lab model that passed is preferred over a demo
    card = at.selectbox(key="card_model")
    card.set_value(next(o for o in card.options if "demo-aging" in o))  # no check recorded: may be the default
    at.run()
    assert not next(b for b in at.button if b.label.startswith("Make demo-aging v1 the default")).disabled
    card = at.selectbox(key="card_model")
    card.set_value(next(o for o in card.options if "good-aging" in o))
    at.run()
    curves = next(f for f in figures(at) if any(d.get("yaxis") == "y2" for d in f["data"]))
    assert curves["layout"]["yaxis2"]["range"] == [0, 1] and curves["layout"]["yaxis2"]["dtick"] == 0.2


def test_finished_evaluation_is_shown_as_a_full_card(app_env):
    from db import queries
    from lsm_core.imaging.readers.archives import RawFile
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.worker import Worker

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    uploads = lab.blobs.put_uploads(
        [RawFile("plate7.zip", labelled_zip("lsm", 30, seed=31)), RawFile("MPP/broken.png", b"\x89PNG\r\n\x1a\nbroken")]
    )
    job_id = evaluate_task.submit(lab, model_id, uploads, owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    at = models_page()
    assert not at.exception
    result = at.selectbox(key="eval_result")
    assert result.value == f"job {job_id} · demo-lsm v1 (synthetic demo) · plate7.zip, MPP/broken.png"
    shown = texts(at)
    assert "demo-lsm v1 (synthetic demo) on plate7.zip, MPP/broken.png: 30 cells" in shown
    assert "1 file(s) could not be used: MPP/broken.png" in shown
    evaluation = [m for m in at.metric]
    assert {"Accuracy (consistency)", "ECE", "Macro F1"} <= {m.label for m in evaluation}
    heatmaps = [f for f in figures(at) if f["data"] and f["data"][0].get("type") == "heatmap"]
    # one confusion matrix for the model card (none here: the tiny demo carries no metrics) and one for the job
    assert len(heatmaps) == 1 and heatmaps[0]["data"][0]["x"] == ["LT-HSC", "ST-HSC", "MPP"]
    frames = [d.value for d in at.dataframe]
    assert any(list(f.columns)[:3] == ["class", "precision", "recall"] and len(f) == 3 for f in frames)


def test_member_sees_cancel_only_on_own_jobs_and_cancelling_says_what_happened(app_env, monkeypatch):
    from db.schema import Job
    from lsm_core.imaging.readers.archives import RawFile
    from lsm_core.lab.open_lab import open_lab

    monkeypatch.setenv("LSM_ADMINS", "someone-else")  # ana is a member now
    lab = open_lab()
    from db import queries

    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    uploads = lab.blobs.put_uploads([RawFile("plate8.zip", labelled_zip("lsm", 30, seed=32))])
    bobs = evaluate_task.submit(lab, model_id, uploads, owner="bob")
    anas = evaluate_task.submit(lab, model_id, uploads, owner="ana")
    at = models_page()
    keys = {b.key for b in at.button}
    assert f"cancel_{anas}" in keys and f"cancel_{bobs}" not in keys
    at.button(key=f"cancel_{anas}").click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert f"Job {anas} cancelled" in texts(at)
    with lab() as s:
        assert s.get(Job, anas).status == "cancelled" and s.get(Job, bobs).status == "queued"
    lab.dispose()
