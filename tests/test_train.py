"""Training, evaluation and calibration: the recipe, the metrics, the splits, the jobs and bad data."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm
from sqlalchemy import select

from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.lab.tasks import train as train_task
from lsm_core.ml.datasets import LabelledData, from_files, split
from lsm_core.ml.metrics import evaluate_probs, fit_temperature, nll
from lsm_core.ml.predict import softmax
from lsm_core.ml.train import TrainConfig, evaluate, fit
from tests.helpers import labelled_zip, png_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_network_beats_chance_after_two_epochs():
    x, y = synthetic.make_crops("aging", 600, seed=1)
    vx, vy = synthetic.make_crops("aging", 200, seed=2)
    net, history = fit(
        x, y, 2, TrainConfig(architecture="tiny_cnn", epochs=2, batch_size=16, lr=1e-2, weight_decay=0), val=(vx, vy)
    )
    import torch

    _, accuracy, _ = evaluate(net, torch.from_numpy(vx)[:, None], torch.from_numpy(vy))
    assert accuracy > 0.65, history  # chance is 0.5
    assert len(history.train_loss) == 2 and history.val_accuracy[-1] == pytest.approx(accuracy)


def test_same_seed_same_network_on_the_cpu():
    x, y = synthetic.make_crops("lsm", 60, seed=3)
    cfg = TrainConfig(architecture="tiny_cnn", epochs=1, batch_size=16, lr=1e-3, seed=5)
    a, _ = fit(x, y, 3, cfg)
    b, _ = fit(x, y, 3, cfg)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert np.array_equal(va.numpy(), vb.numpy()), k


def test_metrics_equal_scikit_learn_on_fixed_arrays():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 2.0 * np.eye(3)[labels]
    probs = softmax(logits)
    m = evaluate_probs(probs, labels, ["LT-HSC", "ST-HSC", "MPP"])
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(labels, pred, average="weighted"))
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()
    for i, c in enumerate(["LT-HSC", "ST-HSC", "MPP"]):
        assert m["per_class"][c]["auc"] == pytest.approx(skm.roc_auc_score(labels == i, probs[:, i]))
        assert m["per_class"][c]["recall"] == pytest.approx(skm.recall_score(labels, pred, labels=[i], average="macro"))
    assert m["macro_auc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert m["micro_auc"] == pytest.approx(skm.roc_auc_score(np.eye(3)[labels], probs, average="micro"))
    assert m["nll"] == pytest.approx(skm.log_loss(labels, probs))
    # ECE by hand: a perfectly calibrated toy has none
    conf = np.full(1000, 0.8)
    hits = np.r_[np.ones(800, int), np.zeros(200, int)]
    toy = np.stack([conf, 1 - conf], 1)
    assert evaluate_probs(toy, 1 - hits, ["young", "aged"])["ece"] == pytest.approx(0.0, abs=1e-9)


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_model():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 2000)
    honest = rng.normal(size=(2000, 3)) + 1.5 * np.eye(3)[labels]
    overconfident = 4.0 * honest
    t = fit_temperature(overconfident, labels)
    assert t > 2.0
    assert nll(softmax(overconfident, t), labels) < nll(softmax(overconfident), labels)
    before = evaluate_probs(softmax(overconfident), labels, ["a", "b", "c"])["ece"]
    after = evaluate_probs(softmax(overconfident, t), labels, ["a", "b", "c"])["ece"]
    assert after < before


def test_no_source_on_both_sides_of_the_split():
    field_like_groups = np.repeat(np.arange(40), 7)  # 40 fields of view, 7 cells each
    labels = np.repeat(np.arange(40) % 2, 7)
    data = LabelledData(
        ["young", "aged"], np.zeros((280, 4, 4), np.float32), labels, field_like_groups, [str(i) for i in range(40)]
    )
    train_idx, val_idx = split(data, 0.2, seed=3)
    assert not set(data.groups[train_idx]) & set(data.groups[val_idx])
    assert len(train_idx) + len(val_idx) == 280
    for c in (0, 1):  # stratified: about 20% of each class
        share = np.mean(data.labels[val_idx] == c) if len(val_idx) else 0
        assert 0.3 < share < 0.7
    assert 0.1 < len(val_idx) / 280 < 0.3


def test_labelled_zip_bad_data_is_said_and_good_images_used():
    good = labelled_zip("lsm", 60, seed=4)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with zipfile.ZipFile(io.BytesIO(good)) as src:
            for info in src.infolist():
                zf.writestr(info.filename, src.read(info))
        zf.writestr("sorted/MPP/broken.png", b"\x89PNG\r\n\x1a\nbroken")
        zf.writestr("sorted/HSC-unknown/x.png", png_bytes(np.full((64, 64), 0.5, np.float32)))
        zf.writestr("sorted/LT-HSC/tiny.png", png_bytes(np.random.default_rng(0).random((8, 8)).astype(np.float32)))
    data = from_files([RawFile("train.zip", buf.getvalue())], "lsm")
    assert data.class_counts == {"LT-HSC": 20, "ST-HSC": 20, "MPP": 20}
    problems = " | ".join(f"{f}: {e}" for f, e in data.errors)
    assert "broken.png" in problems and "damaged" in problems
    assert "HSC-unknown" in problems and "names no lsm class" in problems
    assert "tiny.png" in problems and "too small" in problems


@pytest.mark.parametrize("classes,words", [(["MPP"], "only one class"), (["LT-HSC", "MPP"], None)])
def test_one_class_only_is_refused(classes, words):
    data = labelled_zip("lsm", 60, seed=5, classes=classes)
    if words:
        with pytest.raises(LsmError, match=words):
            from_files([RawFile("one.zip", data)], "lsm")
    else:
        assert from_files([RawFile("two.zip", data)], "lsm").class_counts["ST-HSC"] == 0


def test_too_few_images_in_a_class_and_wrong_task_are_refused():
    crops, labels = synthetic.make_crops("lsm", 45, seed=6)
    files = [
        RawFile(f"d/{['LT-HSC', 'ST-HSC', 'MPP'][y]}/{i}.png", png_bytes(c))
        for i, (c, y) in enumerate(zip(crops, labels))
        if y != 2 or i < 20
    ]
    with pytest.raises(LsmError, match="MPP has [0-9] "):
        from_files(files, "lsm")
    with pytest.raises(LsmError, match="folders named young, aged"):
        from_files(files, "aging")


def test_training_job_runs_registers_and_cancel_registers_nothing(history, data_dir):
    from db.schema import Job, Model
    from lsm_core.lab import jobs
    from lsm_core.lab.worker import Worker

    lab, _, _ = history
    uploads = lab.blobs.put_uploads([RawFile("labelled.zip", labelled_zip("aging", 120, seed=7))])
    config = {"architecture": "tiny_cnn", "epochs": 2, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0}
    done_id = train_task.submit(lab, "aging", "trained-aging", config, owner="ana", uploads=uploads)
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        job = s.get(Job, done_id)
        assert job.status == "done", job.errors
        model = s.get(Model, job.result["model_id"])
        assert model.name == "trained-aging" and model.task == "aging" and not model.demo
        assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "ece"} <= set(model.metrics)
        assert model.training["split"]["validation"] > 0 and len(model.training["data_sha256"]) == 64
        assert model.temperature > 0

    long = dict(config, epochs=200)
    cancel_id = train_task.submit(lab, "aging", "never-registered", long, owner="ana", uploads=uploads)
    worker = Worker(lab, device="cpu")
    thread = threading.Thread(target=worker.run, kwargs={"drain": True})
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline:
        with lab() as s:
            if s.get(Job, cancel_id).progress_done >= 1:
                break
        time.sleep(0.05)
    assert jobs.cancel(lab, cancel_id, "ana") == "running"
    thread.join(timeout=120)
    with lab() as s:
        job = s.get(Job, cancel_id)
        assert job.status == "cancelled" and 1 <= job.progress_done < 200
        assert s.scalars(select(Model).where(Model.name == "never-registered")).first() is None
    assert lab.store.versions("never-registered") == []


@pytest.mark.slow
def test_command_line_train_and_evaluate_json(data_dir, tmp_path):
    env = dict(os.environ, LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    env.pop("LSM_DATABASE_URL", None)
    (tmp_path / "train.zip").write_bytes(labelled_zip("lsm", 150, seed=8))
    (tmp_path / "test.zip").write_bytes(labelled_zip("lsm", 60, seed=9))

    def cli(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "lsm_core", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    out = cli(
        "train",
        str(tmp_path / "train.zip"),
        "--task",
        "lsm",
        "--arch",
        "tiny_cnn",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--seed",
        "1",
        "--register",
        "cli-lsm",
    )
    assert "registered cli-lsm v1" in out.stderr and "epoch 2/2" in out.stderr
    metrics = json.loads(cli("evaluate", str(tmp_path / "test.zip"), "--model", "cli-lsm", "--json").stdout)
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "ece"} <= set(metrics)
    assert metrics["n"] == 60 and sum(map(sum, metrics["confusion_matrix"])) == 60
    assert set(metrics["per_class"]) == {"LT-HSC", "ST-HSC", "MPP"}

    # issue #29 item 1: an administrator records the evaluation as the model's error profile; a member may not
    env.update(LSM_ADMINS="boss", LSM_USER="ana")
    refused = subprocess.run(
        [sys.executable, "-m", "lsm_core", "evaluate", str(tmp_path / "test.zip"), "--model", "cli-lsm", "--record"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "administrator" in refused.stderr
    env["LSM_USER"] = "boss"
    said = cli("evaluate", str(tmp_path / "test.zip"), "--model", "cli-lsm", "--record").stderr
    assert "recorded as the error profile of cli-lsm v1" in said
    from db import queries
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.settings import Settings
    from lsm_core.reports.correction import model_profile

    lab = open_lab(Settings.from_env({"LSM_DATA_DIR": str(data_dir)}), sync=False)
    with lab() as s:
        profile = model_profile(queries.model_by_name(s, "cli-lsm").metrics)
    lab.dispose()
    assert profile is not None and profile.cells == 60 and "test.zip" in profile.source
    assert profile.counts.tolist() == metrics["confusion_matrix"]  # the same cells, the same model
