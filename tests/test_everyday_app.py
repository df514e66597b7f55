"""The everyday path in the pages (AppTest): what a biologist reads, and what the pages do for them.

History's row selection and adding files through the uploader need a real browser: see test_everyday_e2e.py.
"""

from __future__ import annotations

import base64
import io

from PIL import Image as PILImage

from tests.helpers import crop_files, field_file, run_page, texts


def _lab():
    from lsm_core.lab.open_lab import open_lab

    return open_lab()


def _model_id(lab, name="demo-lsm"):
    from db import queries

    with lab() as s:
        return queries.model_by_name(s, name).id


def test_classify_page_shows_whole_model_labels_and_a_plain_lab_mode_banner(app_env):
    at = run_page()
    classifier = next(s for s in at.selectbox if s.label == "Classifier")
    assert any(o.endswith("demo-lsm v1 (synthetic demo)") for o in classifier.options)
    banner = next(w.value for w in at.warning if "Lab mode" in w.value)
    assert "Anyone who can open this page works as ana" in banner and "README" not in banner
    assert any(e.label == "For the administrator: how to require sign-in" for e in at.expander)


def test_results_say_why_no_cell_was_found_and_offer_another_pixel_size(app_env):
    from db.schema import Batch
    from lsm_core.lab.batches import BatchMeta, submit_batch
    from lsm_core.lab.worker import Worker

    lab = _lab()
    sub = submit_batch(
        lab, [field_file(31)], _model_id(lab), "too coarse", owner="ana", meta=BatchMeta(pixel_size_um=4.0)
    )
    at = run_page("pages/results.py", {"batch": str(sub.batch_id)})
    assert "still being classified" in texts(at) and "No cells were classified" not in texts(at)
    Worker(lab, device="cpu").run(drain=True)
    at = run_page("pages/results.py", {"batch": str(sub.batch_id)})
    shown = texts(at)
    assert "No cells were classified in this batch." in shown and "yet" not in shown
    assert "field31.tif: no cells found" in shown and "larger than 18 µm" in shown
    assert "It is 4 µm/px, set for this batch" in shown
    pixel = next(n for n in at.number_input if n.label == "Pixel size (µm/px)")
    assert pixel.value == 4.0
    pixel.set_value(0.2)
    next(b for b in at.button if b.label == "Re-run at this pixel size").click()
    at.run()
    assert not at.exception
    new_id = int(
        at.query_params["batch"][0] if isinstance(at.query_params["batch"], list) else at.query_params["batch"]
    )
    assert new_id != sub.batch_id
    with lab() as s:
        assert s.get(Batch, new_id).pixel_size_um == 0.2
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    at = run_page("pages/results.py", {"batch": str(new_id)})
    assert int(next(m.value for m in at.metric if m.label == "Cells").replace(",", "")) >= 6


def test_cell_thumbnails_are_large_enough_to_see(with_batch):
    at = run_page("pages/results.py", {"batch": str(with_batch.batch_id)})
    table = next(d.value for d in at.dataframe if "cell" in d.value.columns and "predicted" in d.value.columns)
    uri = table["cell"].iloc[0]
    size = PILImage.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size
    assert size == (64, 64)


def test_saliency_appears_by_itself_and_the_gallery_shows_what_was_asked(app_env):
    from lsm_core.lab.batches import BatchMeta, submit_batch
    from lsm_core.lab.tasks.saliency import submit as submit_saliency
    from lsm_core.lab.worker import Worker

    lab = _lab()
    sub = submit_batch(lab, crop_files(60, seed=40), _model_id(lab), "sixty", owner="ana", meta=BatchMeta())
    Worker(lab, device="cpu").run(drain=True)
    job = submit_saliency(lab, sub.batch_id, "gradcam", top=12, owner="ana")
    at = run_page("pages/results.py", {"batch": str(sub.batch_id)})
    method = next(r for r in at.radio if r.label == "Method")
    method.set_value("gradcam")
    at.run()
    shown = texts(at)
    assert f"Grad-CAM maps are being computed (job {job}" in "\n".join(p.proto.text for p in at.get("progress"))
    assert "shows the maps by itself" in shown and not any(b.label.startswith("Compute") for b in at.button)
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    at.run()  # what the polling fragment's rerun does once the job is done
    shown = texts(at)
    assert "Bright = evidence for the predicted class" in shown
    from db import queries

    with lab() as s:
        predicted = [c.predicted for c in queries.batch_cells(s, sub.batch_id, limit=1000)]
    for cls in ("LT-HSC", "ST-HSC", "MPP"):
        expected = min(12, predicted.count(cls))
        if expected:
            assert f"{cls}: {expected} of {expected} cells, highest score first" in shown
    captions = [c.value for c in at.caption if ", p = " in c.value]
    assert len(captions) == sum(min(12, predicted.count(c)) for c in ("LT-HSC", "ST-HSC", "MPP"))
    assert all(" · cell " in c and c.endswith(".png") for c in captions), captions


def test_compare_starts_with_the_default_model_and_one_batch_per_mouse(app_env):
    from lsm_core.lab.batches import BatchMeta, submit_batch
    from lsm_core.lab.worker import Worker

    lab = _lab()
    model_id = _model_id(lab)
    for i, (mouse, age) in enumerate([("M1", 70), ("M1", 70), ("M2", 700), ("M3", 70)]):
        submit_batch(
            lab,
            crop_files(4, seed=50 + i),
            model_id,
            f"{mouse} #{i}",
            owner="ana",
            meta=BatchMeta(mouse_id=mouse, age_days=age),
        )
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    at = run_page("pages/compare.py")
    version = next(s for s in at.selectbox if s.label == "Model version")
    assert version.value == "demo-lsm v1 (synthetic demo)"  # the task's default, not "any"
    chosen = next(m for m in at.multiselect if m.label == "Batches (mice)")
    assert sorted(chosen.value) == [2, 3, 4]  # M1's older batch (#1) is not a second mouse
    assert "3 mice in 2 groups" in texts(at)


def test_classify_page_says_the_demo_models_are_training_and_waits_for_them(tmp_path, monkeypatch):
    """No model yet: the page says so and polls; while a trainer holds the demo lock, it says how far it is."""
    from tests.test_first_start import demo_lock_held, write_status

    monkeypatch.setenv("LSM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LSM_DATABASE_URL", raising=False)
    monkeypatch.setenv("LSM_USER", "ana")
    at = run_page()
    assert "No classifier is registered" in texts(at) and "updates itself when one is registered" in texts(at)
    models = tmp_path / "models"
    with demo_lock_held(models) as pid:
        write_status(models, pid=pid, epoch=5, epochs=12)
        at = run_page()
        shown = texts(at)
        assert "The synthetic demo models are being trained" in shown and "demo-lsm: training, epoch 5 of 12" in shown
        assert "No classifier is registered" not in shown


def test_the_history_table_shows_which_batch_and_its_cells_first(with_batch):
    """Item 15: the cell count is in view without scrolling sideways."""
    at = run_page("pages/history.py")
    table = next(d.value for d in at.dataframe if "owner" in d.value.columns)
    assert list(table.columns[:5]) == ["id", "name", "cells", "images", "failed"]
    assert table["cells"].iloc[0] > 0


def test_the_evaluation_starts_from_the_lsm_model(with_batch):
    """Item 9: one model order everywhere, LSM first (it used to default to the aging model)."""
    at = run_page("pages/models.py")
    chosen = next(s for s in at.selectbox if s.key == "eval_model")
    assert chosen.value.startswith("LSM: ") and "demo-lsm" in chosen.value and chosen.index == 0


def test_results_of_a_batch_whose_job_failed_say_it_failed_and_why(app_env):
    """A batch whose classification job failed (here: its model's weights are gone from the store) showed
    "Images read 1" and "No cells were classified" without a word about the job."""
    from lsm_core.lab.batches import submit_batch
    from lsm_core.lab.worker import Worker

    lab = _lab()
    model_id = _model_id(lab)
    sub = submit_batch(lab, [field_file(32)], model_id, "weights gone", owner="ana")
    for weights in (app_env / "models" / "demo-lsm").rglob("weights.safetensors"):
        weights.unlink()
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    at = run_page("pages/results.py", {"batch": str(sub.batch_id)})
    assert not at.exception
    failure = next(e.value for e in at.error if "classification job" in e.value)
    assert "failed" in failure and "weights" in failure.lower(), failure
    # members see why, not where the server keeps its files: no directory of the data dir is named
    plain = failure.replace("\\", "")  # as shown: Markdown's escapes taken off
    assert str(app_env) not in plain and "/models/" not in plain, plain
    assert "demo-lsm" in plain, plain
