"""Score-CAM (lsm_core.ml.saliency.score_cam): with every channel, the maps of pytorch-grad-cam's ScoreCAM; with the
k channels kept, close to every channel at a k-th of the cost; the checks on k. Deterministic networks of random
weights (seeded), so these run in seconds; the sanity checks on a trained network are in test_saliency.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import stats as sps

from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.ml import nets
from lsm_core.ml import predict as predict_module
from lsm_core.ml.saliency import SCORECAM_CHANNELS, SCORECAM_SAMPLED, saliency_maps, score_cam


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    x, _ = synthetic.make_crops("lsm", 8, seed=9)
    return x


def seeded(arch: str, sharp: float = 1.0) -> torch.nn.Module:
    """A network of seeded random weights, its BatchNorm statistics those of synthetic crops (with PyTorch's
    default initialisation and unit running variances, small_cnn's activations fade to nothing layer by layer);
    ``sharp`` scales the last layer, so that the logits of the masked crops spread and Score-CAM's softmax
    over the channels weighs them unequally, as in a trained network."""
    torch.manual_seed(0)
    net = nets.create(arch, 3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the calibration pass
    calibration, _ = synthetic.make_crops("lsm", 256, seed=3)
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(calibration)[:, None])
        net.backbone.head[-1].weight.mul_(sharp)
    return net.eval()


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([sps.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)])


def library_score_cam(net: torch.nn.Module, arch: str, crops: np.ndarray, monkeypatch) -> np.ndarray:
    """pytorch-grad-cam's ScoreCAM (Wang et al.'s Algorithm 1: softmax over the channels of the target logit of
    each masked input) on what follows the network's standardisation, where our masks act."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam import score_cam as library
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class NoBar:
        @staticmethod
        def tqdm(iterable, *args, **kwargs):
            return iterable

    monkeypatch.setattr(library, "tqdm", NoBar)
    x = torch.from_numpy(crops)[:, None]
    with torch.no_grad():
        targets = net(x).argmax(1).tolist()
        z = net.standardise(x)
    with ScoreCAM(model=net.backbone, target_layers=[nets.target_layer(net, arch)]) as cam:
        cam.batch_size = 256
        return np.asarray(cam(input_tensor=z, targets=[ClassifierOutputTarget(t) for t in targets]), np.float32)


@pytest.mark.parametrize("sharp", [1.0, 30.0])
def test_full_score_cam_gives_pytorch_grad_cams_maps(crops, sharp, monkeypatch):
    net = seeded("small_cnn", sharp)
    ours = saliency_maps(net, "small_cnn", crops, "scorecam", scorecam_channels=None)
    theirs = library_score_cam(net, "small_cnn", crops, monkeypatch)
    rho = spearman(ours, theirs)
    # the same algorithm; the maps differ only by the final upsampling (bilinear here, OpenCV's resize there)
    assert rho.min() >= 0.99, rho
    assert np.abs(ours - theirs).mean() < 0.02


@pytest.mark.parametrize("sharp", [1.0, 30.0])
def test_the_top_k_channels_agree_with_every_channel(crops, sharp):
    net = seeded("small_cnn", sharp)  # 64 channels at the target layer; the default k keeps fewer
    assert nets.target_layer(net, "small_cnn")[0].out_channels > SCORECAM_CHANNELS
    full = saliency_maps(net, "small_cnn", crops, "scorecam", scorecam_channels=None)
    top = saliency_maps(net, "small_cnn", crops, "scorecam")
    rho = spearman(top, full)
    assert np.nanmean(rho) >= 0.95 and np.nanmin(rho) >= 0.9, rho


def test_each_crop_costs_k_masked_passes(crops, monkeypatch):
    passes: list[int] = []
    prepare = predict_module.prepare_for_inference

    def counting(net, device):
        prepared = prepare(net, device)
        prepared.backbone.register_forward_pre_hook(lambda _m, args: passes.append(len(args[0])))
        return prepared

    monkeypatch.setattr(predict_module, "prepare_for_inference", counting)
    net = seeded("small_cnn")
    score_cam(net, "small_cnn", crops, channels=5)
    assert sum(passes) == (5 + SCORECAM_SAMPLED) * len(crops)  # the k kept, and those standing for the rest
    passes.clear()
    score_cam(net, "small_cnn", crops, channels=None)
    assert sum(passes) == 64 * len(crops)


def test_k_above_the_number_of_channels_is_every_channel(crops):
    net = seeded("tiny_cnn")  # 16 channels
    full = saliency_maps(net, "tiny_cnn", crops, "scorecam", scorecam_channels=None)
    assert np.array_equal(saliency_maps(net, "tiny_cnn", crops, "scorecam", scorecam_channels=1000), full)
    assert np.array_equal(saliency_maps(net, "tiny_cnn", crops, "scorecam", scorecam_channels=16), full)
    # k and the sampled channels together are all 16: every score is computed
    assert np.array_equal(
        saliency_maps(net, "tiny_cnn", crops, "scorecam", scorecam_channels=16 - SCORECAM_SAMPLED), full
    )


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_k_below_1_or_not_a_whole_number_is_refused(crops, k):
    net = seeded("tiny_cnn")
    with pytest.raises(LsmError, match="at least 1 channel"):
        saliency_maps(net, "tiny_cnn", crops[:2], "scorecam", scorecam_channels=k)
    with pytest.raises(LsmError, match="at least 1 channel"):
        score_cam(net, "tiny_cnn", crops[:2], channels=k)


def test_maps_keep_their_format_and_leave_the_model_as_it_was(crops):
    net = seeded("small_cnn", 30.0)
    net.backbone.head[-1].weight.requires_grad_(False)
    flags = [p.requires_grad for p in net.parameters()]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    maps = saliency_maps(net, "small_cnn", crops, "scorecam", classes=np.zeros(len(crops), np.int64), batch_size=3)
    assert maps.shape == (len(crops), 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and (maps.max(axis=(1, 2)) > 0.99).all()
    assert [p.requires_grad for p in net.parameters()] == flags
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == hooks
    # chunks of crops do not change the maps
    assert np.allclose(maps, saliency_maps(net, "small_cnn", crops, "scorecam", classes=np.zeros(8, np.int64)))


def test_bfloat16_masked_passes_give_the_same_maps(crops, monkeypatch):
    """Where the predictor autocasts to bfloat16 (CUDA, CPUs with native bf16), so does Score-CAM."""
    net = seeded("small_cnn", 30.0)
    fp32 = saliency_maps(net, "small_cnn", crops, "scorecam")
    monkeypatch.setattr(predict_module, "use_bf16", lambda device, precision="auto": True)
    bf16 = saliency_maps(net, "small_cnn", crops, "scorecam")
    assert spearman(bf16, fp32).min() >= 0.9


def test_k_is_a_setting_and_an_option(tiny_lsm_package, tmp_path, monkeypatch):
    from lsm_core import cli
    from lsm_core.lab.settings import Settings
    from lsm_core.ml import saliency

    assert Settings.from_env({}).scorecam_channels is None
    assert Settings.from_env({"LSM_SCORECAM_CHANNELS": "0"}).scorecam_channels == 0
    assert Settings.from_env({"LSM_SCORECAM_CHANNELS": "5"}).environment()["LSM_SCORECAM_CHANNELS"] == "5"
    with pytest.raises(LsmError, match="LSM_SCORECAM_CHANNELS"):
        Settings.from_env({"LSM_SCORECAM_CHANNELS": "-2"})
    assert [saliency.scorecam_k(v) for v in (None, 0, 7)] == [SCORECAM_CHANNELS, None, 7]
    # the command line gives the maps the option's k, else the setting's (0: every channel)
    seen: list[int | None] = []
    real = saliency.saliency_maps

    def spy(*args, scorecam_channels=SCORECAM_CHANNELS, **kwargs):
        seen.append(scorecam_channels)
        return real(*args, scorecam_channels=scorecam_channels, **kwargs)

    monkeypatch.setattr(saliency, "saliency_maps", spy)
    folder = tmp_path / "in"
    synthetic.write_dataset("lsm", 3, folder, seed=4)
    run = ["saliency", str(folder), "--model", "tiny-lsm", "--out", str(tmp_path / "out")]
    assert cli.main([*run, "--scorecam-channels", "3"]) == 0
    monkeypatch.setenv("LSM_SCORECAM_CHANNELS", "0")
    assert cli.main(run) == 0
    assert seen == [3, None]
    assert np.load(tmp_path / "out" / "maps.npz")["maps"].shape == (3, 64, 64)
