"""Every page through streamlit.testing.v1.AppTest, on an empty database and on one with a classified batch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_page, texts, with_settings

ROOT = Path(__file__).resolve().parents[1]


def test_classify_page_on_an_empty_database(app_env):
    at = run_page()
    assert at.title[0].value == "Classify"
    labels = [w.label for w in at.text_input]
    assert {"Batch name", "Mouse id", "Age", "Strain or reporter", "Sorting gate"} <= set(labels)
    classifier = next(s for s in at.selectbox if s.label == "Classifier")
    assert any("synthetic demo" in o for o in classifier.options)
    assert any("Aging" in o for o in classifier.options) and any("LSM" in o for o in classifier.options)
    assert [s.label for s in at.selectbox if s.label == "Age unit"] and "weeks" in next(
        s for s in at.selectbox if s.label == "Age unit"
    ).options
    assert any(b.label == "Classify" for b in at.button)
    assert "Signed in as" in texts(at) and "unauthenticated" in texts(at)
    assert "No worker is running" in texts(at)


def test_classify_page_says_what_is_wrong(app_env):
    at = run_page()
    name = next(w for w in at.text_input if w.label == "Batch name")
    age = next(w for w in at.text_input if w.label == "Age")
    age.set_value("ten weeks")
    name.set_value("my batch")
    next(b for b in at.button if b.label == "Classify").click()
    at.run()
    assert "not a number" in texts(at)
    next(w for w in at.text_input if w.label == "Age").set_value("10")
    next(b for b in at.button if b.label == "Classify").click()
    at.run()
    assert "Choose at least one file" in texts(at)


@pytest.mark.parametrize("page,words", [("pages/results.py", "No batches yet"), ("pages/history.py", "No batches yet")])
def test_results_and_history_on_an_empty_database(app_env, page, words):
    at = run_page(page)
    assert words in texts(at)


def test_models_page_lists_demo_models(app_env):
    at = run_page("pages/models.py")
    frame = at.dataframe[0].value
    assert set(frame["model"]) == {"demo-lsm", "demo-aging"}
    assert set(frame["kind"]) == {"synthetic demo"}
    downloads = {d.proto.label: d for d in at.get("download_button")}
    assert "Export for BioImage Model Zoo" in downloads  # issue #19: the package (tests/test_bioimageio.py)
    assert not downloads["Export for BioImage Model Zoo"].proto.disabled
    next(w for w in at.text_input if w.label.startswith("Authors")).set_value(" , ").run()
    downloads = {d.proto.label: d for d in at.get("download_button")}
    assert downloads["Export for BioImage Model Zoo"].proto.disabled  # no author: nothing to export


def test_results_page_with_data(with_batch):
    at = run_page("pages/results.py", {"batch": str(with_batch.batch_id)})
    shown = texts(at)
    assert "Composition" in [h.value for h in at.subheader]
    assert "synthetic demo" in shown and "M17" in shown and "10.0 weeks" in shown
    metrics = {m.label: m.value for m in at.metric}
    cells = int(metrics["Cells"].replace(",", ""))
    assert cells >= 6 + 5 and metrics["Files that could not be read"] == "1"
    assert metrics["Images read"] == "7"  # 6 crops and the field, as the job's progress counts them
    assert sum(t.value.count("broken.png") for t in at.text) == 1  # the broken file is named once
    assert "<script>alert(1)</script>" in [t.value for t in at.text]  # notes shown as plain text
    threshold = next(s for s in at.slider if s.label.startswith("Score threshold"))
    threshold.set_value(0.99)
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    kept = int(metrics["Cells with score ≥ 0.99"].replace(",", ""))
    assert kept <= cells
    downloads = [d.proto.label for d in at.get("download_button")]
    assert downloads[-2:] == ["Download xlsx (cells, summary, batch, model, images, review)", "Download csv (cells)"]
    # every figure has its download for a paper (SVG by default; PDF, PNG, HTML to choose)
    named = [f"Download batch-1-{name}.svg" for name in ("composition", "scores", "probabilities")]
    assert downloads[:3] == named and re.fullmatch(r"Download batch-1-image-\d+-field\.svg", downloads[3])
    assert "Field of view" in [h.value for h in at.subheader]


def test_history_page_with_data_and_filters(with_batch):
    at = run_page("pages/history.py")
    frame = at.dataframe[0].value
    assert list(frame["name"]) == ["M17 LT-HSC"] and frame["cells"][0] > 0 and frame["failed"][0] == 1
    next(w for w in at.text_input if w.label.startswith("Text")).set_value("no such thing")
    at.run()
    assert "No batches match" in texts(at)


@pytest.mark.parametrize(
    "page,title",
    [
        (None, "Classify"),
        ("pages/results.py", "Results"),
        ("pages/history.py", "History"),
        ("pages/models.py", "Models"),
        ("pages/compare.py", "Compare"),
        ("pages/lab.py", "Lab"),
    ],
)
def test_every_page_with_data(with_batch, page, title):
    at = run_page(page)
    assert at.title[0].value == title
    assert any("Lab mode: unauthenticated" in w.value for w in at.warning)  # the banner, on every page


def test_lab_page_shows_people_and_the_audit_trail_to_administrators_only(with_batch, monkeypatch):
    at = run_page("pages/lab.py")  # lab mode without LSM_ADMINS: ana administers
    trail = at.dataframe[1].value
    assert ("ana", "submit") in set(zip(trail["who"], trail["did"]))
    monkeypatch.setenv("LSM_ADMINS", "boss")
    at = run_page("pages/lab.py")
    assert "for the lab's administrators" in texts(at) and not at.dataframe
    assert "Lab" not in [link.proto.label for link in at.get("page_link")]
    monkeypatch.setenv("LSM_USER", "boss")
    at = run_page("pages/lab.py")
    people = at.dataframe[0].value  # everyone who acted (lab mode has no sign-in): ana submitted the batch
    assert list(people["name"]) == ["ana", "boss"] and list(people["role"]) == ["member", "admin (LSM_ADMINS)"]
    assert people["last seen (UTC)"][0]  # when ana last acted
    trail = at.dataframe[1].value
    submitted = trail[trail["did"] == "submit"]["detail"].iloc[0]
    assert submitted.startswith("name: M17 LT-HSC · model: demo-lsm v1 (synthetic demo) · images: 8 · failed: 1")


def test_models_page_model_card_and_default_choice(app_env):
    from db import queries
    from lsm_core.errors import LsmError
    from lsm_core.imaging import synthetic
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.registry import set_default
    from lsm_core.ml.datasets import LabelledData
    from lsm_core.ml.models import ModelStore
    from lsm_core.ml.train import TrainConfig, train_and_register

    crops, labels = synthetic.make_crops("lsm", 300, seed=12)  # enough to pass the quality check
    data = LabelledData(["LT-HSC", "ST-HSC", "MPP"], crops, labels, np.arange(300), [str(i) for i in range(300)])
    train_and_register(
        data,
        "lsm",
        TrainConfig(architecture="tiny_cnn", epochs=3, batch_size=16, lr=1e-2, weight_decay=0.0),
        "lab-lsm",
        ModelStore(app_env / "models"),
        patience=None,
    )
    lab = open_lab()
    at = run_page("pages/models.py")
    frame = at.dataframe[0].value
    assert "lab-lsm" in set(frame["model"]) and "trained on lab data" in set(frame["kind"])
    card = next(s for s in at.selectbox if s.label == "Model")
    card.set_value(next(o for o in card.options if "lab-lsm" in o))
    at.run()
    labels_shown = [m.label for m in at.metric]
    assert "Accuracy (consistency)" in labels_shown and "ECE" in labels_shown
    assert "This is the default model for its task." in texts(at)  # a lab-trained model is preferred over a demo
    card = next(s for s in at.selectbox if s.label == "Model")
    card.set_value(next(o for o in card.options if "demo-lsm" in o))
    at.run()
    next(b for b in at.button if b.label.startswith("Make demo-lsm v1 the default")).click()
    at.run()
    with lab() as s:
        defaults = [m.name for m in queries.models(s, "lsm") if m.is_default]
    assert defaults == ["demo-lsm"]
    # roles are enforced in the function, not only by the disabled button
    with lab() as s:
        demo_id = queries.model_by_name(s, "demo-lsm").id
    with pytest.raises(LsmError, match="not an administrator"):
        set_default(with_settings(lab, admins=frozenset({"someone-else"})), demo_id, "ana")
    lab.dispose()


def test_compare_page_with_six_batches_from_three_ages(app_env):
    from db import queries
    from lsm_core.lab.open_lab import open_lab
    from tests.test_compare import make_six_batches

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    make_six_batches(lab, model_id)
    lab.dispose()
    at = run_page("pages/compare.py")
    bins = next(w for w in at.text_input if w.label.startswith("Age groups"))
    bins.set_value("young:<6m, middle:6m-18m, aged:>=18m")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    shown = texts(at)
    assert "6 mice in 3 groups" in shown
    assert "Tests (mouse as the unit)" in [h.value for h in at.subheader]
    tests = at.dataframe[0].value
    assert list(tests["class"]) == ["LT-HSC", "ST-HSC", "MPP"] and set(tests["test"]) == {"Kruskal-Wallis H"}
    assert "Model of cells within mice" in [h.value for h in at.subheader]
    odds = at.dataframe[1].value
    assert set(odds["term"]) == {"middle vs young", "aged vs young", "per month of age"} and len(odds) == 9
    downloads = [d.proto.label for d in at.get("download_button")]
    assert "Download comparison xlsx" in downloads and "Download methods text" in downloads
    next(w for w in at.text_input if w.label.startswith("Age groups")).set_value("young 8 weeks")
    at.run()
    assert "label:range" in texts(at)  # a bin it cannot read is said, not a crash


def test_results_page_saliency_gallery(with_batch):
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.tasks.saliency import submit as submit_saliency
    from lsm_core.lab.worker import Worker

    at = run_page("pages/results.py", {"batch": str(with_batch.batch_id)})
    assert "Saliency: where the network looks" in [h.value for h in at.subheader]
    assert any(b.label.startswith("Compute Score-CAM") for b in at.button)
    lab = open_lab()
    submit_saliency(lab, with_batch.batch_id, "scorecam", top=4, owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    at = run_page("pages/results.py", {"batch": str(with_batch.batch_id)})
    assert "Bright = evidence for the predicted class" in texts(at), texts(at)[-600:]
    # per class shown, one sentence on where the map lies (inside the cells, around them, or split)
    said = [c.value for c in at.caption if re.search(r"of the map lies|the map is split|could not be traced", c.value)]
    assert said, [c.value for c in at.caption]
    downloads = [d.proto.label for d in at.get("download_button")]
    assert any(label.startswith("Download Score-CAM (the paper's) overlays") for label in downloads)
