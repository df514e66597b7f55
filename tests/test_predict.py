import numpy as np
import pytest
import torch

from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.ml.predict import TorchPredictor, probabilities


def test_probabilities_sum_to_one_and_score_is_the_max(tiny_lsm_package):
    crops, _ = synthetic.make_crops("lsm", 50, seed=5)
    pred = TorchPredictor(tiny_lsm_package, device="cpu", precision="fp32")(crops)
    assert pred.probs.shape == (50, 3)
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.predicted, pred.probs.argmax(axis=1))
    np.testing.assert_allclose(pred.score, pred.probs.max(axis=1))
    assert (pred.score >= 1 / 3 - 1e-6).all()


def test_chunked_equals_unchunked(tiny_lsm_package):
    crops, _ = synthetic.make_crops("lsm", 37, seed=6)
    whole = TorchPredictor(tiny_lsm_package, device="cpu", precision="fp32", batch_size=64)(crops)
    chunked = TorchPredictor(tiny_lsm_package, device="cpu", precision="fp32", batch_size=5)(crops)
    np.testing.assert_allclose(whole.probs, chunked.probs, atol=1e-5)
    np.testing.assert_array_equal(whole.predicted, chunked.predicted)


def test_prepared_network_matches_the_plain_one(tiny_lsm_package):
    crops, _ = synthetic.make_crops("lsm", 20, seed=7)
    net = tiny_lsm_package.load("cpu")
    with torch.no_grad():
        plain = torch.softmax(net(torch.from_numpy(crops)[:, None]), 1).numpy()
    fast = TorchPredictor(tiny_lsm_package, device="cpu", precision="fp32")(crops).probs
    np.testing.assert_allclose(plain, fast, atol=1e-4)
    bf16 = TorchPredictor(tiny_lsm_package, device="cpu", precision="bf16")(crops).probs
    np.testing.assert_allclose(plain, bf16, atol=0.05)


def test_temperature_softens():
    logits = np.array([[2.0, 0.0, -1.0]])
    assert probabilities(logits, 2.0).score[0] < probabilities(logits, 1.0).score[0]


def test_wrong_crop_size_is_refused(tiny_lsm_package):
    with pytest.raises(LsmError, match="crops of shape"):
        TorchPredictor(tiny_lsm_package, device="cpu")(np.zeros((2, 32, 32), np.float32))


def test_missing_gpu_is_a_clear_error(tiny_lsm_package):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LsmError, match="no usable CUDA"):
        TorchPredictor(tiny_lsm_package, device="cuda:0")


# --- the ONNX Runtime path (issue #19 item 3) ----------------------------------------------------------------
def test_onnx_runtime_gives_torchs_probabilities(tiny_lsm_package):
    from lsm_core.imaging import synthetic
    from lsm_core.ml.predict import OnnxPredictor, TorchPredictor, make_predictor

    crops, _ = synthetic.make_crops("lsm", 300, seed=41)
    torch_fp32 = TorchPredictor(tiny_lsm_package, device="cpu", precision="fp32", batch_size=64)(crops)
    onnx = make_predictor(tiny_lsm_package, "cpu", None, 64, runtime="onnx")
    assert isinstance(onnx, OnnxPredictor) and onnx.runtime == "onnx" and not onnx.bf16
    got = onnx(crops)
    assert np.allclose(got.probs, torch_fp32.probs, atol=1e-4)
    assert (got.predicted == torch_fp32.predicted).mean() >= 0.99  # ties at 1e-6 may flip, nothing else
    assert make_predictor(tiny_lsm_package, "cpu", runtime="torch").runtime == "torch"
    # auto: ONNX Runtime where torch would run fp32 on the CPU (it is faster there), torch where bf16 runs
    assert make_predictor(tiny_lsm_package, "cpu", "fp32", runtime="auto").runtime == "onnx"
    assert make_predictor(tiny_lsm_package, "cpu", "bf16", runtime="auto").runtime == "torch"


def test_the_runtime_setting_is_checked():
    from lsm_core.lab.settings import Settings

    assert Settings.from_env({}).runtime == "auto"
    assert Settings.from_env({"LSM_RUNTIME": " ONNX "}).environment()["LSM_RUNTIME"] == "onnx"
    with pytest.raises(LsmError, match="LSM_RUNTIME='tensorrt' must be one of auto, torch, onnx"):
        Settings.from_env({"LSM_RUNTIME": "tensorrt"})


@pytest.mark.slow
def test_a_cpu_worker_on_onnx_runtime_classifies_as_a_torch_worker_does(history):
    from db.schema import Cell
    from lsm_core.lab import batches
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.worker import Worker
    from tests.helpers import crop_files, field_file

    lab, _, model_id = history
    files = crop_files(6, 501) + [field_file(502)]
    torch_lab = open_lab(lab.settings.with_(runtime="torch"))  # the first worker on torch, whatever the default
    try:
        on_torch = batches.submit_batch(torch_lab, files, model_id, "torch", owner="ana").batch_id
        Worker(torch_lab, device="cpu").run(drain=True)
    finally:
        torch_lab.dispose()
    onnx_lab = open_lab(lab.settings.with_(runtime="onnx", precision="fp32"))
    try:
        on_onnx = batches.submit_batch(onnx_lab, files, model_id, "onnx", owner="ana").batch_id
        Worker(onnx_lab, device="cpu").run(drain=True)
    finally:
        onnx_lab.dispose()
    with lab() as s:
        a = s.query(Cell).filter_by(batch_id=on_torch).order_by(Cell.image_id, Cell.idx).all()
        b = s.query(Cell).filter_by(batch_id=on_onnx).order_by(Cell.image_id, Cell.idx).all()
    assert len(a) == len(b) >= 10
    # the torch worker may run bf16 where the CPU has it: compare at bf16's tolerance
    assert np.allclose([c.probs for c in a], [c.probs for c in b], atol=0.03)
    assert [(c.x, c.y, c.w, c.h) for c in a] == [(c.x, c.y, c.w, c.h) for c in b]
