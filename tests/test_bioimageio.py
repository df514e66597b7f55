"""Models that travel (issue #19 item 1 and 5): a model trained in the app exported as a BioImage Model Zoo
package, validated by bioimageio.spec, its test tensors reproduced by bioimageio.core in every weights format."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lsm_core.imaging import synthetic
from lsm_core.ml.bioimageio import TOLERANCE, architecture_source, npy_bytes, validate
from lsm_core.ml.datasets import LabelledData
from lsm_core.ml.train import TrainConfig, train_and_register

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def trained_lab(history):
    """`lab-aging` trained through train_and_register (validation and test metrics, a temperature) in the lab's
    store, registered; (lab, its model row id)."""
    from db import queries
    from lsm_core.lab.registry import sync_models

    lab, _, _ = history
    with lab() as s:
        if (row := queries.model_by_name(s, "lab-aging:1")) is not None:  # the data dir lives the whole session
            return lab, row.id
    x, y = synthetic.make_crops("aging", 300, seed=31)
    data = LabelledData(["young", "aged"], x, y, np.arange(300), [f"cell {i}" for i in range(300)])
    tx, ty = synthetic.make_crops("aging", 80, seed=32)
    test = LabelledData(["young", "aged"], tx, ty, np.arange(80), [f"t {i}" for i in range(80)])
    config = TrainConfig(architecture="tiny_cnn", epochs=3, batch_size=16, lr=1e-2, weight_decay=0.0)
    train_and_register(data, "aging", config, "lab-aging", lab.store, test=test, patience=None)
    sync_models(lab)
    with lab() as s:
        return lab, queries.model_by_name(s, "lab-aging:1").id


def exported(lab, model_id) -> tuple[bytes, dict, dict[str, bytes]]:
    from lsm_core.reports.zoo import export_for_zoo

    name, data = export_for_zoo(lab, model_id, ["Ana Researcher", "Ben Imager"], "MIT")
    assert name == "lab-aging-v1.bioimageio.zip"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        files = {n: z.read(n) for n in z.namelist()}
    return data, json.loads(files["rdf.yaml"]), files


def test_a_model_trained_in_the_app_exports_as_a_valid_bioimageio_package(trained_lab):
    lab, model_id = trained_lab
    data, rdf, files = exported(lab, model_id)
    package = lab.store.get("lab-aging")
    m = package.manifest
    assert validate(data) == []  # bioimageio.spec's own validation, with its file checks (sha256 of each file)
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model" and rdf["license"] == "MIT"
    assert [a["name"] for a in rdf["authors"]] == ["Ana Researcher", "Ben Imager"]
    assert [c.get("doi") for c in rdf["cite"]] == ["10.1186/s13287-024-03682-8"]  # no LSM_APP_URL: the paper only
    (crop,) = rdf["inputs"]
    assert [a["type"] for a in crop["axes"]] == ["batch", "channel", "space", "space"]
    y = crop["axes"][2]
    assert y["unit"] == "micrometer" and y["scale"] == pytest.approx(m.crop_um / m.input_size) and y["size"] == 64
    assert crop["preprocessing"][0]["id"] == "zero_mean_unit_variance"
    (out,) = rdf["outputs"]
    assert out["axes"][1]["channel_names"] == ["young", "aged"]
    weights = rdf["weights"]
    assert set(weights) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert weights["torchscript"]["parent"] == weights["onnx"]["parent"] == "pytorch_state_dict"
    assert weights["onnx"]["opset_version"] >= 13
    assert weights["pytorch_state_dict"]["architecture"]["kwargs"]["temperature"] == pytest.approx(m.temperature)
    # the model card, with its Validation section, is the documentation
    readme = files["README.md"].decode("utf-8")
    assert rdf["documentation"] == "README.md" and "## Validation" in readme and "### Calibration" in readme
    assert f"{m.metrics['accuracy']:.3f}" in readme and "Test set" in readme
    # provenance: where it came from
    config = rdf["config"]["lsm_classifier"]
    assert config["manifest"]["weights_sha256"] == m.weights_sha256
    assert config["provenance"]["lineage"] == ["lab-aging v1"]
    assert config["provenance"]["training_data"]["class_counts"] == m.training["class_counts"]
    # the test output is what the app's network gives the test input: probabilities
    expected = np.load(io.BytesIO(files["test_output.npy"]))
    assert expected.shape == (4, 2) and np.allclose(expected.sum(axis=1), 1, atol=1e-5)


def test_the_package_cites_the_paper_for_the_method_and_this_app_by_its_name_and_version(trained_lab):
    """Issue 26 item 9: the paper is cited as the source of the method, never as the app; the app is cited by its
    own name and version at the lab's address (LSM_APP_URL), and without one it is named, not cited (a Zoo
    citation needs a DOI or a URL)."""
    import lsm_core
    from lsm_core.classes import PAPER_DOI
    from lsm_core.lab.lab import Lab
    from lsm_core.ml.bioimageio import APP_NAME

    lab, model_id = trained_lab
    app = f"{APP_NAME} {lsm_core.__version__}"
    url = "https://example.com/hsc-lab/lsm-classifier"  # example.com: bioimageio.spec does not try to reach it
    data, rdf, files = exported(Lab(lab.sessions, lab.settings.with_(app_url=url), lab.engine), model_id)
    assert validate(data) == []
    paper, ours = rdf["cite"]
    assert paper["doi"] == PAPER_DOI and "url" not in paper and "The method this model follows" in paper["text"]
    assert ours == {"text": f"{app}: the software this model was trained and exported with", "url": url}
    assert f"Trained and exported with {app}" in rdf["description"]
    config = rdf["config"]["lsm_classifier"]
    assert (config["app"], config["app_version"], config["app_url"]) == (APP_NAME, lsm_core.__version__, url)
    assert app in files["architecture.py"].decode("utf-8").splitlines()[0]
    _, plain, _ = exported(lab, model_id)  # no address set: the app named in the description, the paper cited
    assert [c["doi"] for c in plain["cite"]] == [PAPER_DOI] and app in plain["description"]
    assert "app_url" not in plain["config"]["lsm_classifier"]
    assert not any("HSC classification web app" in json.dumps(r) for r in (rdf, plain))  # the old made-up name


def test_the_apps_name_is_the_one_its_readme_and_browser_tab_say():
    from lsm_core.ml.bioimageio import APP_NAME

    assert (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[0] == f"# {APP_NAME}"
    assert f'page_title="{APP_NAME}"' in (ROOT / "streamlit_app.py").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", None),
        ("  https://hsc.lab.example.org/lsm ", "https://hsc.lab.example.org/lsm"),
        ("http://10.0.0.5:8501", "http://10.0.0.5:8501"),
    ],
)
def test_lsm_app_url_is_read_and_passed_on(value, expected):
    from lsm_core.lab.settings import Settings

    settings = Settings.from_env({"LSM_APP_URL": value})
    assert settings.app_url == expected
    assert settings.environment().get("LSM_APP_URL") == settings.app_url


@pytest.mark.parametrize("value", ["hsc.lab.example.org", "ftp://lab.example.org/app", "https://", "https://a b.org"])
def test_lsm_app_url_that_is_not_a_web_address_is_refused(value):
    from lsm_core.errors import LsmError
    from lsm_core.lab.settings import Settings

    with pytest.raises(LsmError, match="LSM_APP_URL=.* is not a web address"):
        Settings.from_env({"LSM_APP_URL": value})


def test_the_onnx_weights_give_the_apps_probabilities(trained_lab):
    import onnxruntime as ort

    lab, model_id = trained_lab
    _, _, files = exported(lab, model_id)
    x = np.load(io.BytesIO(files["test_input.npy"]))
    expected = np.load(io.BytesIO(files["test_output.npy"]))
    session = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"crop": x})
    assert np.allclose(got, expected, rtol=TOLERANCE["relative_tolerance"], atol=TOLERANCE["absolute_tolerance"])
    (two,) = session.run(None, {"crop": np.concatenate([x, x])})  # the batch axis is dynamic
    assert two.shape == (8, 2)


@pytest.mark.slow
def test_bioimageio_core_reproduces_the_test_tensors_in_every_weights_format(trained_lab, tmp_path):
    """The Model Zoo's own library runs the package's test input through each weights format (PyTorch state
    dict with the architecture file, TorchScript, ONNX) and compares with the test output."""
    from bioimageio.core import test_model

    lab, model_id = trained_lab
    data, _, _ = exported(lab, model_id)
    path = tmp_path / "lab-aging.zip"
    path.write_bytes(data)
    for weights in ("pytorch_state_dict", "torchscript", "onnx"):
        summary = test_model(path, weight_format=weights)
        failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
        assert summary.status == "passed", (weights, failed)
        assert any("Reproduce test outputs" in d.name for d in summary.details)


def test_a_package_whose_files_were_changed_does_not_validate(trained_lab):
    lab, model_id = trained_lab
    data, _, files = exported(lab, model_id)
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as z:
        for name, content in files.items():
            if name == "test_output.npy":  # other numbers than the ones the rdf's sha256 vouches for
                content = npy_bytes(np.full((4, 2), 0.5, np.float32))
            z.writestr(name, content)
    problems = validate(broken.getvalue())
    assert problems and any("sha" in p.lower() for p in problems), problems


def test_the_architecture_file_stands_alone(tmp_path):
    """architecture.py imports torch and torchvision only: another lab's machine runs it without this app."""
    source = architecture_source()
    assert not re.search(r"^\s*(from|import) lsm_core", source, flags=re.M)
    (tmp_path / "architecture.py").write_text(source)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import torch, architecture; "
        "m = architecture.ProbabilityClassifier('small_cnn', 3, 1.5).eval(); "
        "p = m(torch.zeros(2, 1, 64, 64)); assert p.shape == (2, 3); print(float(p.sum()))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) == pytest.approx(2.0, abs=1e-5)


@pytest.mark.slow
def test_command_line_models_export(history, db_url, data_dir, tmp_path):
    env = dict(os.environ, LSM_DATABASE_URL=db_url, LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    out = tmp_path / "tiny.zip"
    args = ["models", "export", "tiny-lsm:1", "--format", "bioimageio", "--out", str(out), "--author", "Ana"]
    proc = subprocess.run([sys.executable, "-m", "lsm_core", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "validated by bioimageio.spec" in proc.stderr and validate(out.read_bytes()) == []
    proc = subprocess.run(
        [sys.executable, "-m", "lsm_core", "models", "export", "no-such-model", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "no registered model 'no-such-model'" in proc.stderr


# --- import (issue #19 item 2) ----------------------------------------------------------------------------------
@pytest.fixture
def fresh_lab(tmp_path):
    """Another lab: a data dir of its own (SQLite, blob store, model store), nothing registered."""
    from lsm_core.lab import settings
    from lsm_core.lab.open_lab import open_lab

    folder = tmp_path / "other-lab"
    lab = open_lab(
        settings.current().with_(
            data_dir=folder, database_url=f"sqlite:///{folder / 'lsm.db'}", blob_dir=folder / "blobs"
        )
    )
    yield lab
    lab.dispose()


def _rezip(files: dict[str, bytes], rdf: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, content in files.items():
            z.writestr(name, json.dumps(rdf) if name == "rdf.yaml" else content)
    return out.getvalue()


def test_an_exported_model_imported_into_another_lab_gives_the_same_probabilities(trained_lab, fresh_lab):
    from lsm_core.lab.registry import import_zoo_package
    from lsm_core.ml.predict import TorchPredictor
    from lsm_core.reports.model_card import model_card_markdown, origin_text

    lab, model_id = trained_lab
    data, rdf, _ = exported(lab, model_id)
    row = import_zoo_package(fresh_lab, data, "ana", source="lab-aging-v1.bioimageio.zip")
    assert (row.name, row.version, row.task, row.classes) == ("lab-aging", 1, "aging", ["young", "aged"])
    original, imported = lab.store.get("lab-aging", 1), fresh_lab.store.get("lab-aging", 1)
    m, n = original.manifest, imported.manifest
    assert (n.architecture, n.input_size, n.temperature) == (m.architecture, m.input_size, m.temperature)
    assert n.crop_um == pytest.approx(m.crop_um) and n.pixel_size_um == pytest.approx(m.pixel_size_um)
    assert n.metrics["accuracy"] == m.metrics["accuracy"]  # its validation travels with it
    crops, _ = synthetic.make_crops("aging", 50, seed=77)  # crops neither package holds
    before = TorchPredictor(original, device="cpu", precision="fp32")(crops).probs
    after = TorchPredictor(imported, device="cpu", precision="fp32")(crops).probs
    assert np.allclose(before, after, atol=1e-5)
    # the origin is on the model card
    origin = origin_text(n.training)
    assert origin and "Imported from the BioImage Model Zoo package lab-aging v1" in origin
    assert "Ana Researcher, Ben Imager" in origin and "licence MIT" in origin and "10.1186" in origin
    assert "Exported from lab-aging v1 by LSM classifier " in origin  # the app by its name
    assert "## Origin" in model_card_markdown(n)


@pytest.mark.parametrize(
    "change, said",
    [
        ("classes", "are not those of a task the app knows"),
        ("test_output", "test tensors do not reproduce"),
        ("architecture", "is not one the app runs"),
        ("channels", "more than one channel"),
        ("not_a_zip", "not a ZIP file"),
    ],
)
def test_a_package_the_app_cannot_use_is_refused_with_a_reason(trained_lab, fresh_lab, change, said):
    from lsm_core.errors import LsmError
    from lsm_core.lab.registry import import_zoo_package

    lab, model_id = trained_lab
    data, rdf, files = exported(lab, model_id)
    if change == "classes":
        rdf["outputs"][0]["axes"][1]["channel_names"] = ["alive", "dead"]
    elif change == "test_output":  # other numbers, their sha256 updated: valid, but not this network's output
        files["test_output.npy"] = npy_bytes(np.full((4, 2), 0.5, np.float32))
        rdf["outputs"][0]["test_tensor"]["sha256"] = hashlib.sha256(files["test_output.npy"]).hexdigest()
    elif change == "architecture":
        rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["architecture"] = "unet2d"
    elif change == "channels":  # a consistent two-channel package (its test input has two channels too)
        rdf["inputs"][0]["axes"][1]["channel_names"] = ["DIC", "GFP"]
        files["test_input.npy"] = npy_bytes(np.random.default_rng(0).random((4, 2, 64, 64), np.float32))
        rdf["inputs"][0]["test_tensor"]["sha256"] = hashlib.sha256(files["test_input.npy"]).hexdigest()
    package = b"PK\x03\x04 not really" if change == "not_a_zip" else _rezip(files, rdf)
    with pytest.raises(LsmError, match=said):
        import_zoo_package(fresh_lab, package, "ana")
    assert fresh_lab.store.packages() == []  # nothing kept


@pytest.mark.slow
def test_command_line_models_import_of_a_package(trained_lab, tmp_path):
    lab, model_id = trained_lab
    data, _, _ = exported(lab, model_id)
    package = tmp_path / "pkg.zip"
    package.write_bytes(data)
    other = tmp_path / "other"
    env = dict(os.environ, LSM_DATA_DIR=str(other), PYTHONPATH=str(ROOT))
    env.pop("LSM_DATABASE_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lsm_core", "models", "import", str(package), "--name", "from-zoo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "registered from-zoo v1 (aging) from the bioimage.io package pkg.zip" in proc.stderr


def test_an_error_profile_recorded_in_the_lab_travels_with_the_exported_package(trained_lab, tmp_path):
    """Recorded after registration, the profile lived only in the database: an exported package lost it, and the
    lab that imported it corrected compositions with the validation set's errors instead."""
    from lsm_core.lab.registry import import_zoo_package, record_error_profile
    from lsm_core.reports.correction import model_profile
    from tests.helpers import lab_at

    lab, model_id = trained_lab
    evaluation = {
        "classes": ["young", "aged"],
        "confusion_matrix": [[70, 10], [15, 65]],
        "evaluated_on": "the lab's sorted cells: 160 cells",
    }
    record_error_profile(lab, model_id, evaluation, "ana")
    data, rdf, _ = exported(lab, model_id)
    carried = rdf["config"]["lsm_classifier"]["manifest"]["metrics"]["error_profile"]
    assert carried["confusion_matrix"] == [[70, 10], [15, 65]] and carried["recorded_by"] == "ana"
    other = lab_at(tmp_path)
    row = import_zoo_package(other, data, "ben")
    profile = model_profile(row.metrics)
    assert profile is not None and profile.cells == 160 and profile.source == evaluation["evaluated_on"]
    other.dispose()
