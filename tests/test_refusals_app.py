"""Every action a page calls that can refuse shows the refusal as a message beside it, never a traceback
(streamlit.testing.v1.AppTest, which also uploads files). Each refusal is brought about the way it happens in
a lab: someone else changes the history between the page being drawn and the click."""

from __future__ import annotations

import io
import json

from db import queries
from db.schema import Model
from lsm_core.lab import batches
from lsm_core.lab.open_lab import open_lab
from tests.helpers import crop_files, history_page, png_bytes, run_page, texts


def model_id(lab, name="demo-lsm") -> int:
    with lab() as s:
        return queries.model_by_name(s, name).id


def delete_model(lab, name="demo-lsm") -> None:
    with lab.begin() as s:
        s.get(Model, model_id(lab, name)).deleted = True


def no_exception(at) -> None:
    assert not at.exception, [e.message for e in at.exception]


def test_classify_refuses_a_model_deleted_since_the_page_was_drawn(app_env):
    at = run_page()
    files = crop_files(2, seed=801)
    at.file_uploader[0].set_value([(f.source, f.data, "image/png") for f in files])
    next(w for w in at.text_input if w.label == "Batch name").set_value("too late")
    lab = open_lab()
    delete_model(lab)  # an administrator retires the model meanwhile
    next(b for b in at.button if b.label == "Classify").click()
    at.run()
    no_exception(at)
    assert "the chosen model no longer exists; pick another one" in texts(at)
    with lab() as s:
        assert queries.batches(s) == []  # nothing half-made
    lab.dispose()


def test_adding_only_files_the_batch_has_is_refused_plainly(app_env):
    lab = open_lab()
    files = crop_files(3, seed=802)
    batches.submit_batch(lab, files, model_id(lab), "three", owner="ana")
    at = run_page()
    at.file_uploader[0].set_value([(f.source, f.data, "image/png") for f in files])
    next(w for w in at.text_input if w.label == "Batch name").set_value("three")
    next(b for b in at.button if b.label == "Classify").click()
    at.run()
    next(r for r in at.radio if r.label == "What should happen").set_value("Add the files to the existing batch")
    at.run()
    next(b for b in at.button if b.label == "Add and classify").click()
    at.run()
    no_exception(at)
    assert "nothing was added: all 3 file(s) are in batch 'three' already" in texts(at)
    lab.dispose()


def test_history_rename_refusals_are_messages(app_env):
    lab = open_lab()
    sub = batches.submit_batch(lab, crop_files(1, seed=803), model_id(lab), "named", owner="ana")
    at = history_page(lab, sub.batch_id)
    next(w for w in at.text_input if w.label == "New name").set_value("   ")
    next(b for b in at.button if b.label == "Save the new name").click()
    at.run()
    no_exception(at)
    assert "a batch name needs 1 to 200 characters" in texts(at)

    batches.rename(lab, sub.batch_id, "renamed by a colleague", "ana")  # the batch changes under the page
    at.run()
    no_exception(at)
    assert "This batch was changed since you selected it" in texts(at)
    assert not any(b.label == "Save the new name" for b in at.button)
    lab.dispose()


def test_history_rerun_with_a_model_deleted_meanwhile_is_refused(app_env):
    lab = open_lab()
    sub = batches.submit_batch(lab, crop_files(1, seed=804), model_id(lab), "to re-run", owner="ana")
    at = history_page(lab, sub.batch_id)
    delete_model(lab)
    next(b for b in at.button if b.label == "Re-run").click()
    at.run()
    no_exception(at)
    assert "the chosen model no longer exists; pick another one" in texts(at)
    lab.dispose()


def test_history_says_when_the_selected_batch_was_deleted_by_someone_else(app_env):
    lab = open_lab()
    sub = batches.submit_batch(lab, crop_files(1, seed=805), model_id(lab), "short-lived", owner="bob")
    batches.submit_batch(lab, crop_files(1, seed=806), model_id(lab), "stays", owner="ana")
    at = history_page(lab, sub.batch_id)
    batches.delete(lab, sub.batch_id, "bob")
    at.run()
    no_exception(at)
    assert f"Batch #{sub.batch_id} is no longer in the list" in texts(at)
    lab.dispose()


def test_saliency_of_a_batch_deleted_meanwhile_is_a_message(with_batch):
    lab = open_lab()
    at = run_page("pages/results.py", {"batch": str(with_batch.batch_id)})
    batches.delete(lab, with_batch.batch_id, "ana")
    next(b for b in at.button if b.label.startswith("Compute Score-CAM")).click()
    at.run()
    no_exception(at)
    assert f"batch #{with_batch.batch_id} no longer exists" in texts(at).lower()
    lab.dispose()


def test_models_page_refusals_are_messages(app_env, monkeypatch):
    at = run_page("pages/models.py")
    # an import whose manifest names no class of its task
    at.file_uploader(key="imp_w").set_value(("weights.safetensors", b"not safetensors", "application/octet-stream"))
    bad = {"task": "lsm", "name": "imported", "classes": ["A", "B"], "architecture": "tiny_cnn"}
    at.file_uploader(key="imp_m").set_value(("manifest.json", json.dumps(bad).encode(), "application/json"))
    next(b for b in at.button if b.label == "Import").click()
    at.run()
    no_exception(at)
    assert "classes ['A', 'B'] do not match task 'lsm'" in texts(at)

    # training asked for by someone who is no longer an administrator
    labelled = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(labelled, "w") as zf:
        zf.writestr("LT-HSC/a.png", png_bytes(__import__("numpy").full((64, 64), 0.5)))
    at.file_uploader(key="train_zip").set_value([("sorted.zip", labelled.getvalue(), "application/zip")])
    next(w for w in at.text_input if w.label == "Model name").set_value("lab-lsm")
    monkeypatch.setenv("LSM_ADMINS", "boss")  # ana's role changed while the page was open
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    no_exception(at)
    assert "only administrators train models" in texts(at)
