import numpy as np
import pytest
import torch

from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.ml.predict import Predictor, probabilities


def test_probabilities_sum_to_one_and_score_is_the_max(tiny_lsm_package):
    crops, _ = synthetic.make_crops("lsm", 50, seed=5)
    pred = Predictor(tiny_lsm_package, device="cpu", precision="fp32")(crops)
    assert pred.probs.shape == (50, 3)
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.predicted, pred.probs.argmax(axis=1))
    np.testing.assert_allclose(pred.score, pred.probs.max(axis=1))
    assert (pred.score >= 1 / 3 - 1e-6).all()


def test_chunked_equals_unchunked(tiny_lsm_package):
    crops, _ = synthetic.make_crops("lsm", 37, seed=6)
    whole = Predictor(tiny_lsm_package, device="cpu", precision="fp32", batch_size=64)(crops)
    chunked = Predictor(tiny_lsm_package, device="cpu", precision="fp32", batch_size=5)(crops)
    np.testing.assert_allclose(whole.probs, chunked.probs, atol=1e-5)
    np.testing.assert_array_equal(whole.predicted, chunked.predicted)


def test_prepared_network_matches_the_plain_one(tiny_lsm_package):
    crops, _ = synthetic.make_crops("lsm", 20, seed=7)
    net = tiny_lsm_package.load("cpu")
    with torch.no_grad():
        plain = torch.softmax(net(torch.from_numpy(crops)[:, None]), 1).numpy()
    fast = Predictor(tiny_lsm_package, device="cpu", precision="fp32")(crops).probs
    np.testing.assert_allclose(plain, fast, atol=1e-4)
    bf16 = Predictor(tiny_lsm_package, device="cpu", precision="bf16")(crops).probs
    np.testing.assert_allclose(plain, bf16, atol=0.05)


def test_temperature_softens():
    logits = np.array([[2.0, 0.0, -1.0]])
    assert probabilities(logits, 2.0).score[0] < probabilities(logits, 1.0).score[0]


def test_wrong_crop_size_is_refused(tiny_lsm_package):
    with pytest.raises(LsmError, match="crops of shape"):
        Predictor(tiny_lsm_package, device="cpu")(np.zeros((2, 32, 32), np.float32))


def test_missing_gpu_is_a_clear_error(tiny_lsm_package):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LsmError, match="no usable CUDA"):
        Predictor(tiny_lsm_package, device="cuda:0")
