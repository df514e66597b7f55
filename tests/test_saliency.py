"""Saliency maps: the three methods, their sanity checks (on a model trained on synthetic cells), the job and CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps

from lsm_core.imaging import synthetic
from lsm_core.lab import batches
from lsm_core.lab.tasks import saliency as saliency_task
from lsm_core.ml import nets
from lsm_core.ml.saliency import METHODS, integrated_gradients, saliency_maps
from lsm_core.ml.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained():
    """small_cnn trained 6 epochs on 2,000 synthetic LSM crops, and 32 held-out crops with their cell masks."""
    x, y = synthetic.make_crops("lsm", 2000, seed=1)
    net, _ = fit(x, y, 3, TrainConfig(architecture="small_cnn", epochs=6, batch_size=64, lr=3e-3, weight_decay=0))
    crops, labels, masks = synthetic.make_crops("lsm", 32, seed=9, return_masks=True)
    return net, crops, masks


def inside_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return (maps * masks).sum(axis=(1, 2)) / np.maximum(maps.sum(axis=(1, 2)), 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_maps_have_the_crops_shape_and_range(trained, method):
    net, crops, _ = trained
    maps = saliency_maps(net, "small_cnn", crops[:5], method)
    assert maps.shape == (5, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and (maps.max(axis=(1, 2)) > 0.99).all()


@pytest.mark.slow
def test_sanity_a_integrated_gradients_evidence_lies_inside_the_cell(trained):
    net, crops, masks = trained
    share = inside_share(saliency_maps(net, "small_cnn", crops, "ig"), masks)
    assert share.mean() >= 0.8, share


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_sanity_b_maps_of_a_reinitialised_network_differ(trained, method):
    """Adebayo et al. (2018): a map that survives randomising the weights explains the image, not the model."""
    net, crops, _ = trained
    torch.manual_seed(123)
    random_net = nets.create("small_cnn", 3).eval()
    targets = net(torch.from_numpy(crops)[:, None]).argmax(1).numpy()
    a = saliency_maps(net, "small_cnn", crops, method, targets)
    b = saliency_maps(random_net, "small_cnn", crops, method, targets)
    rho = np.nanmean([sps.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)])
    assert rho < 0.5, rho


@pytest.mark.slow
def test_sanity_c_integrated_gradients_completeness(trained):
    net, crops, _ = trained
    attributions, _ = integrated_gradients(net, crops[:12])
    x = torch.from_numpy(crops[:12])[:, None]
    with torch.no_grad():
        logits = net(x)
        flat = net(torch.full_like(x, 0.5))  # a flat crop: what the baseline is
    target = logits.argmax(1)
    expected = (logits - flat)[torch.arange(12), target].numpy()
    assert np.allclose(attributions.sum(axis=(1, 2)), expected, rtol=0.05, atol=0.05 * np.abs(expected).mean())


def test_no_hooks_leak_into_the_shared_model(trained):
    net, crops, _ = trained
    before = sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(getattr(m, "_forward_pre_hooks", {}))
        for m in net.modules()
    )
    for method in ("gradcam", "scorecam"):
        saliency_maps(net, "small_cnn", crops[:2], method)
    after = sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(getattr(m, "_forward_pre_hooks", {}))
        for m in net.modules()
    )
    assert after == before


@pytest.mark.slow
def test_saliency_job_stores_8_bit_maps_and_the_view_reads_them(history, data_dir):
    from db.schema import Job, SaliencyRun
    from lsm_core.lab.worker import Worker
    from lsm_core.reports.report import load_saliency
    from tests.helpers import crop_files, field_file

    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(4, 301) + [field_file(302)], model_id, "maps", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    job_id = saliency_task.submit(lab, sub.batch_id, "gradcam", top=3, owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        job = s.get(Job, job_id)
        assert job.status == "done", job.errors
        run = s.get(SaliencyRun, job.result["saliency_run"])
        view = load_saliency(s, run.id, lab.blobs)
    assert run.scope == "top 3 per class" and run.cells == len(view.cells) <= 9
    assert view.maps.shape == (len(view.cells), 64, 64) and 0 <= view.maps.min() and view.maps.max() <= 1
    counts = {}
    for c in view.cells:
        counts[c.predicted] = counts.get(c.predicted, 0) + 1
    assert max(counts.values()) <= 3
    assert set(view.mean_maps(["LT-HSC", "ST-HSC", "MPP"])) == set(counts)


@pytest.mark.slow
def test_command_line_saliency_writes_overlays_npz_and_csv(tiny_lsm_package, data_dir, tmp_path):
    import csv

    folder = tmp_path / "in"
    synthetic.write_dataset("lsm", 6, folder, seed=4)
    env = dict(os.environ, LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lsm_core",
            "saliency",
            str(folder),
            "--model",
            "tiny-lsm",
            "--method",
            "ig",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    maps = np.load(out / "maps.npz")["maps"]
    rows = [r for r in csv.DictReader(open(out / "cells.csv")) if r["cell"]]
    assert maps.shape == (6, 64, 64) and len(rows) == 6
    assert len(list(out.glob("*.png"))) == 6
