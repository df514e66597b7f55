"""Size as a training signal (issue #30 item 4): a training run can keep each single-cell crop's cell at its size
(cut as the model's square of micrometres around the centre, at the image's calibration) instead of resizing
the whole crop to fill the input; the model records it, and is given its cells the same way wherever it
classifies, evaluates or is retrained (FindParams.for_model). Fields of view keep their cells' size either way."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from sqlalchemy import select

from db.schema import Cell, Job, Model
from lsm_core.imaging import synthetic
from lsm_core.imaging.calibration import Calibration, CalibrationSource
from lsm_core.imaging.cells import FindParams, find_cells, keeps_size
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.ml.models import Manifest
from lsm_core.ml.train import TrainConfig
from tests.helpers import png_bytes

TINY = {"architecture": "tiny_cnn", "epochs": 1, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.0}


def tight(task: str, n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Synthetic cells at 0.2 µm/px, each cut as a square around its outline with a small margin: crops whose
    side follows the cell's size, as a lab cuts them."""
    images, labels, masks = synthetic.make_crops(task, n, seed=seed, size=96, return_masks=True)
    out = []
    for image, mask in zip(images, masks):
        ys, xs = np.nonzero(mask)
        cy, cx = int(round((ys.min() + ys.max()) / 2)), int(round((xs.min() + xs.max()) / 2))
        half = int(round((max(ys.max() - ys.min(), xs.max() - xs.min()) + 1) * 0.65)) + 2
        out.append(image[cy - half : cy + half + 1, cx - half : cx + half + 1])
    return out, labels


def test_a_single_cell_crop_is_cut_to_scale_only_when_asked():
    """Default: the whole crop resized to fill the input (a small and a large cell fill it alike). keep_size: the
    model's 12.8 µm square around the centre (64 px at 0.2 µm/px: the image itself, unscaled, in the middle,
    the rest the background level), so a 30 px crop stays 30 px; at 0.4 µm/px the same square is 32 px of the
    image, resized to 64."""
    rng = np.random.default_rng(0)
    image = (0.5 + 0.05 * rng.standard_normal((30, 40))).astype(np.float32)
    image[10:20, 15:25] = 0.9
    fill = find_cells(image, FindParams())
    kept = find_cells(image, FindParams(keep_size=True))
    assert fill.flags == kept.flags == ["single"] and fill.crops.shape == kept.crops.shape == (1, 64, 64)
    np.testing.assert_array_equal(kept.boxes, [[0, 0, 40, 30]])
    # the image lies unscaled in the middle of the kept crop: rows 17..46, columns 12..51
    np.testing.assert_allclose(kept.crops[0, 17:47, 12:52], image, atol=1e-6)
    assert np.all(kept.crops[0, :17] == kept.crops[0, 0, 0]) and np.all(kept.crops[0, 47:] == kept.crops[0, 0, 0])
    assert abs(float(kept.crops[0, 0, 0]) - float(np.median(image[::8, ::8]))) < 1e-6
    # resized to fill, the bright square covers (10/40 x 64)^2 pixels of the crop, not 10 x 10
    assert (fill.crops[0] > 0.7).sum() > 2 * (kept.crops[0] > 0.7).sum()
    assert (kept.crops[0] > 0.7).sum() == 100
    coarse = find_cells(image, FindParams(keep_size=True).at(Calibration(0.4, CalibrationSource.USER)))
    assert (coarse.crops[0] > 0.7).sum() == pytest.approx(400, abs=40)  # 10 px at 0.4 µm/px = 20 px at 0.2


def test_kept_crops_show_the_classes_sizes_that_filled_crops_hide():
    """On tight crops of synthetic cells (MPP about 1.2 times the diameter of LT-HSC), the cell's share of the
    crop differs between the classes when cut to scale, and hardly when resized to fill."""
    images, labels = tight("lsm", 90, seed=3)

    def cell_share(params):
        crops = np.concatenate([find_cells(im, params).crops for im in images])
        away = np.abs(crops - np.median(crops, axis=(1, 2), keepdims=True)) > 0.03
        share = away.mean(axis=(1, 2))
        return [float(share[labels == k].mean()) for k in range(3)]

    lt, _, mpp = cell_share(FindParams(keep_size=True))
    assert mpp / lt > 1.25, (lt, mpp)
    lt_fill, _, mpp_fill = cell_share(FindParams())
    assert mpp_fill / lt_fill < 1.05, (lt_fill, mpp_fill)


def test_a_model_says_whether_it_keeps_size_and_older_models_do_not():
    manifest = Manifest(task="lsm", name="m", classes=["LT-HSC", "ST-HSC", "MPP"], architecture="tiny_cnn")
    assert not keeps_size(manifest) and not FindParams.for_model(manifest).keep_size
    manifest.training = {"recipe": TrainConfig(keep_size=True).to_dict()}
    assert keeps_size(manifest) and FindParams.for_model(manifest).keep_size
    assert TrainConfig(keep_size=True).find_params(96) == FindParams(output_size=96, keep_size=True)
    for odd in ({"recipe": "?"}, {"recipe": None}, None, {}):
        manifest.training = odd  # type: ignore[assignment]
        assert not keeps_size(manifest)


def _zip(images, labels, task: str) -> bytes:
    names = synthetic.task_classes(task)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (im, y) in enumerate(zip(images, labels)):
            zf.writestr(f"sorted/{names[y]}/cell{i:04d}.png", png_bytes(im))
    return buf.getvalue()


def test_a_training_job_that_keeps_size_registers_a_model_that_is_given_its_cells_to_scale(history):
    """On both engines: the Train job with ``keep_size`` cuts its training crops to scale, records it in the
    model's recipe, card and methods; a batch classified by that model gets the probabilities of the crops cut
    to scale (not of the crops resized to fill)."""
    from lsm_core.imaging.images import decode_bytes
    from lsm_core.lab import batches
    from lsm_core.lab.registry import sync_models
    from lsm_core.lab.tasks import train as train_task
    from lsm_core.lab.worker import Worker
    from lsm_core.ml.predict import TorchPredictor, softmax
    from lsm_core.reports.methods import _imaging
    from lsm_core.reports.model_card import model_card_markdown

    lab, _, _ = history
    images, labels = tight("lsm", 60, seed=5)
    uploads = lab.blobs.put_uploads([RawFile("tight.zip", _zip(images, labels, "lsm"))])
    job_id = train_task.submit(lab, "lsm", "kept-size", {**TINY, "keep_size": True}, owner="ana", uploads=uploads)
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        job = s.get(Job, job_id)
        assert job.status == "done", job.errors
        model = s.get(Model, job.result["model_id"])
        assert model.training["recipe"]["keep_size"] is True and keeps_size(model)
        assert FindParams.for_model(model).keep_size
        model_id = model.id
    package = lab.store.resolve("kept-size")
    assert "cut as the same square around their centre" in model_card_markdown(package.manifest)

    new, _ = tight("lsm", 4, seed=9)
    sub = batches.submit_batch(
        lab, [RawFile(f"c{i}.png", png_bytes(im)) for i, im in enumerate(new)], model_id, "b", owner="ana"
    )
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        stored = np.array(
            [c.probs for c in s.scalars(select(Cell).where(Cell.batch_id == sub.batch_id).order_by(Cell.image_id))]
        )
        model = s.get(Model, model_id)
        assert "so that its cell kept its size" in _imaging(s, [sub.batch_id], [model])
    predictor = TorchPredictor(package, device="cpu")
    decoded = [decode_bytes("c.png", png_bytes(im))[0].pixels for im in new]  # as the worker reads them

    def probs(params):
        crops = np.concatenate([find_cells(im, params).crops for im in decoded])
        return softmax(predictor.logits(crops), predictor.temperature)

    to_scale, filled = probs(FindParams(keep_size=True)), probs(FindParams())
    assert stored.shape == (4, 3)
    np.testing.assert_allclose(stored, to_scale, atol=2e-3)
    assert np.abs(stored - filled).max() > 5 * np.abs(stored - to_scale).max()
    sync_models(lab)


def test_the_command_line_trains_with_keep_size(history, tmp_path, monkeypatch):
    """`lsm train --keep-size` records it in the model's recipe."""
    from lsm_core import cli

    lab, _, _ = history
    images, labels = tight("lsm", 45, seed=6)
    archive = tmp_path / "tight.zip"
    archive.write_bytes(_zip(images, labels, "lsm"))
    monkeypatch.setenv("LSM_DATABASE_URL", lab.settings.database_url)
    monkeypatch.delenv("LSM_ADMINS", raising=False)
    argv = ["train", "--task", "lsm", "--arch", "tiny_cnn", "--epochs", "1", "--batch-size", "16", "--keep-size"]
    assert cli.main([*argv, "--register", "kept-cli", str(archive)]) == 0
    assert lab.store.resolve("kept-cli").manifest.training["recipe"]["keep_size"] is True


def test_the_models_page_queues_training_with_keep_size(with_batch):
    """The Models page's Train form has the checkbox and queues the job with it."""
    from lsm_core.lab.open_lab import open_lab
    from tests.helpers import run_page

    at = run_page("pages/models.py")
    next(w for w in at.text_input if w.label == "Model name").set_value("kept-page")
    next(w for w in at.text_area if w.label.startswith("Labelled batches")).set_value(f"{with_batch.batch_id}: MPP")
    next(w for w in at.checkbox if w.label == "Single-cell crops keep the cell's size").check()
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("Training queued" in m.value for m in at.success)
    page_lab = open_lab()
    with page_lab() as s:
        job = s.scalars(select(Job).where(Job.kind == "train")).one()
        assert job.payload["config"]["keep_size"] is True
    page_lab.dispose()
