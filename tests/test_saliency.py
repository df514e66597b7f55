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

from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.lab import batches
from lsm_core.lab.tasks import saliency as saliency_task
from lsm_core.ml import nets
from lsm_core.ml.saliency import METHODS, deletion_test, integrated_gradients, mass_inside, saliency_maps
from lsm_core.ml.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained():
    """small_cnn trained 6 epochs on 2,000 synthetic LSM crops, and 90 held-out crops with their cell masks."""
    x, y = synthetic.make_crops("lsm", 2000, seed=1)
    net, _ = fit(x, y, 3, TrainConfig(architecture="small_cnn", epochs=6, batch_size=64, lr=3e-3, weight_decay=0))
    crops, labels, masks = synthetic.make_crops("lsm", 90, seed=9, return_masks=True)
    return net.eval(), crops, masks


@pytest.fixture(scope="module")
def explained(trained):
    """Each method's maps of the held-out crops, for the class each was predicted as."""
    net, crops, _ = trained
    with torch.no_grad():
        predicted = net(torch.from_numpy(crops)[:, None]).argmax(1).numpy()
    return predicted, {m: saliency_maps(net, "small_cnn", crops, m, predicted) for m in METHODS}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_maps_have_the_crops_shape_and_range(trained, method):
    net, crops, _ = trained
    maps = saliency_maps(net, "small_cnn", crops[:5], method)
    assert maps.shape == (5, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and (maps.max(axis=(1, 2)) > 0.99).all()


@pytest.mark.slow
def test_sanity_a_integrated_gradients_evidence_lies_inside_the_cell_for_every_class(trained, explained):
    _, _, masks = trained
    predicted, maps = explained
    share = mass_inside(maps["ig"], masks)
    per_class = {c: float(share[predicted == c].mean()) for c in range(3)}
    assert all((predicted == c).sum() >= 10 for c in range(3))
    assert min(per_class.values()) >= 0.8, per_class


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.1, 0.2])
def test_integrated_gradients_is_faithful_for_every_class(trained, explained, fraction):
    """Deleting the pixels IG calls evidence lowers the class's probability more than deleting random ones."""
    net, crops, _ = trained
    predicted, maps = explained
    d = deletion_test(net, crops, maps["ig"], fraction, predicted)
    for c in range(3):
        at = d.classes == c
        assert d.salient[at].mean() > d.random[at].mean() + 0.05, (c, d.salient[at].mean(), d.random[at].mean())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_cams_are_faithful_where_their_mass_lies_in_the_cell_and_not_where_it_is_the_empty_ring(
    trained, explained, method
):
    """Overall and for classes whose CAM mass lies inside the cell, deleting the CAM's most salient 20% lowers
    the probability more than random deletion. For the small LT-HSC cells most of a CAM's mass lies in the
    empty ring around the cell (the evidence for "small" is the absence of cell there): a blur cannot delete an
    absence, and the deletion test does not confirm those maps (what the gallery says about them)."""
    net, crops, masks = trained
    predicted, maps = explained
    d = deletion_test(net, crops, maps[method], 0.2, predicted)
    assert d.salient.mean() > 2 * d.random.mean(), (d.salient.mean(), d.random.mean())
    share = mass_inside(maps[method], masks)
    for c in range(3):
        at = d.classes == c
        inside = float(share[at].mean())
        if inside >= 0.5:
            assert d.salient[at].mean() > d.random[at].mean() + 0.05, (c, inside)
        elif inside <= 0.2:
            assert d.salient[at].mean() < 0.05, (c, inside, d.salient[at].mean())
    assert float(share[predicted == 0].mean()) <= 0.2  # LT-HSC: the CAM's mass outside the cell


def test_deletion_test_tells_a_faithful_map_from_an_inverted_one(trained):
    """The test itself can fail a map: the inverse of IG's map (its least salient pixels first) deletes less
    than random pixels do."""
    net, crops, _ = trained
    maps = saliency_maps(net, "small_cnn", crops[:30], "ig")
    good = deletion_test(net, crops[:30], maps, 0.2)
    bad = deletion_test(net, crops[:30], 1 - maps, 0.2)
    assert good.salient.mean() > good.random.mean() > bad.salient.mean()
    with pytest.raises(LsmError, match="between 0 and 1"):
        deletion_test(net, crops[:2], maps[:2], 1.5)


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


@pytest.mark.slow
def test_the_gallery_sentence_says_where_each_class_map_lies_as_traced_on_the_crops(trained, explained):
    """The gallery measures a map's mass against the outline it traces on the crop (no true mask there):
    on these crops that tells IG's maps (inside) from a CAM's for the small LT-HSC cells (outside)."""
    from lsm_core.imaging.cells import cell_mask
    from lsm_core.reports.report import mass_sentence

    _, crops, truth = trained
    predicted, maps = explained
    traced = [cell_mask(c, 0.2) for c in crops]
    ok = np.array([m is not None for m in traced])
    masks = np.stack([m if m is not None else np.zeros_like(t) for m, t in zip(traced, truth)])
    for method, cls, expected in (("ig", 0, "inside the cells"), ("gradcam", 0, "outside the cells")):
        at = (predicted == cls) & ok
        share = float(np.nanmean(mass_inside(maps[method][at], masks[at])))
        true_share = float(np.nanmean(mass_inside(maps[method][at], truth[at])))
        assert abs(share - true_share) < 0.15, (method, share, true_share)
        assert expected in mass_sentence("LT-HSC", share, int(at.sum()))
    assert "could not be traced" in mass_sentence("MPP", None, 0)
