"""Saliency maps: what the network looks at in each crop.

Three methods:

* ``scorecam``: Score-CAM (Wang et al., 2020; the paper's method), here: the masked crops in large batches,
  the scores computed for the k channels of each crop whose activation varies most and estimated for the
  others from a few more (see :func:`score_cam`);
* ``gradcam``: Grad-CAM (Selvaraju et al., 2017), from ``pytorch-grad-cam``;
* ``ig``: Integrated Gradients (Sundararajan et al., 2017), from ``captum``, from a flat crop (what the
  network sees as "no cell") to the crop, after the network's standardisation (see
  :func:`integrated_gradients`).

Each architecture of :mod:`lsm_core.ml.nets` names its target layer (the last convolutional block). The class
explained is the predicted one unless given. Crops go through in chunks (bounded memory), and every hook is
removed before the call returns, so nothing leaks into the worker's shared model.

:func:`saliency_maps` returns maps normalised to [0, 1] per crop (for display and storage as 8-bit);
:func:`integrated_gradients` returns IG's raw attributions, which sum to f(x) - f(baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lsm_core.errors import LsmError
from lsm_core.ml import nets
from lsm_core.ml.names import SALIENCY_METHODS as METHODS  # the command line reads them there, without torch


def _targets(net: nn.Module, x: torch.Tensor, classes: np.ndarray | None) -> np.ndarray:
    if classes is not None:
        return np.asarray(classes, dtype=np.int64)
    with torch.no_grad():
        return net(x).argmax(1).cpu().numpy()


def integrated_gradients(
    net: nn.Module,
    crops: np.ndarray,
    classes: np.ndarray | None = None,
    steps: int = 64,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Raw IG attributions (N, H, W) for the target logits, and the completeness gap per crop.

    The first layer of every network standardises the crop, which makes the network blind to a crop's
    scale; so IG runs on what follows it, from a flat crop (all zeros once standardised: what the network
    sees when there is no cell) to the standardised crop. The attributions of each pixel therefore sum to
    f(x) - f(flat crop), the gap being the integral's numerical error.
    """
    from captum.attr import IntegratedGradients

    net = net.eval().to(device)
    backbone = getattr(net, "backbone", net)
    standardise = getattr(net, "standardise", nn.Identity())
    ig = IntegratedGradients(backbone)
    out, gaps = [], []
    for start in range(0, len(crops), batch_size):
        x = torch.from_numpy(np.asarray(crops[start : start + batch_size], np.float32))[:, None].to(device)
        with torch.no_grad():
            z = standardise(x)
        target = _targets(net, x, None if classes is None else classes[start : start + batch_size])
        attr, delta = ig.attribute(
            z,
            baselines=torch.zeros_like(z),
            target=torch.from_numpy(target).to(device),
            n_steps=steps,
            internal_batch_size=batch_size * 8,
            return_convergence_delta=True,
        )
        out.append(attr[:, 0].detach().cpu().numpy())
        gaps.append(delta.detach().cpu().numpy())
    return np.concatenate(out).astype(np.float32), np.concatenate(gaps).astype(np.float32)


def _grad_cam(
    net: nn.Module,
    architecture: str,
    crops: np.ndarray,
    classes: np.ndarray | None,
    batch_size: int,
    device,
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) of crops (N, H, W) for the target classes, from ``pytorch-grad-cam``."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = nets.target_layer(net, architecture)
    out = []
    # Only the target layer's gradient is needed: weights stay frozen (no weight gradients), and the
    # layer's output is made the start of the backward pass, which then stops there.
    # On CUDA and CPUs with native bfloat16 the forward pass autocasts (as classification does); the target
    # layer's activations are handed on in float32, which is what the CAM arithmetic reads.
    from lsm_core.ml.predict import use_bf16

    device = torch.device(device)
    bf16 = use_bf16(device)
    trainable = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)
    start_here = layer.register_forward_hook(lambda _m, _i, output: output.float().requires_grad_(True))
    try:
        for start in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.asarray(crops[start : start + batch_size], np.float32))[:, None].to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            target = _targets(net, x, None if classes is None else classes[start : start + batch_size])
            with (
                GradCAM(model=net, target_layers=[layer]) as cam,
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            ):  # hooks removed on exit
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
            out.append(np.asarray(maps, np.float32))
    finally:
        start_here.remove()
        for p, flag in zip(net.parameters(), trainable):
            p.requires_grad_(flag)
    return np.concatenate(out)


SCORECAM_CHANNELS = 8
"""Score-CAM's default k, the channels of the target layer whose score is computed exactly per crop (one
masked pass each), chosen with bench/saliency.py (see :func:`score_cam`)."""

SCORECAM_SAMPLED = 8
"""Channels beyond the k kept whose scores stand for every other channel's (see :func:`score_cam`)."""


def _masked_batch(device: torch.device) -> int:
    return 1024 if device.type == "cuda" else 256


def scorecam_k(setting: int | None) -> int | None:
    """Score-CAM's k from a setting (LSM_SCORECAM_CHANNELS, ``--scorecam-channels``): None gives the default,
    0 every channel (full Score-CAM)."""
    if setting is None:
        return SCORECAM_CHANNELS
    return None if setting == 0 else setting


def _check_channels(channels: int | None) -> int | None:
    if channels is None:
        return None
    if isinstance(channels, bool) or not isinstance(channels, int | np.integer) or channels < 1:
        raise LsmError(f"Score-CAM keeps at least 1 channel of the target layer; got {channels!r}")
    return int(channels)


def _scored_channels(variance: torch.Tensor, constant: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Per crop, the channels whose score is computed (n, m): the ``channels`` of most variance, then
    ``SCORECAM_SAMPLED`` more spread evenly over the ranks of the rest (every channel when that is all, or
    ``channels`` is None). Constant channels (no mask) rank last."""
    n, c = variance.shape
    if channels is None or channels + SCORECAM_SAMPLED >= c:
        return torch.arange(c, device=variance.device).expand(n, c)
    ranked = variance.masked_fill(constant, -1.0).argsort(dim=1, descending=True)
    rest = c - channels
    picks = channels + ((torch.arange(SCORECAM_SAMPLED, device=variance.device) + 0.5) * rest / SCORECAM_SAMPLED)
    return torch.cat([ranked[:, :channels], ranked[:, picks.long()]], dim=1)


def _channel_scores(
    net: nn.Module,
    fast: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    classes: np.ndarray | None,
    channels: int | None,
    device: torch.device,
    bf16: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations (n, c, h, w) of ``layer`` for crops ``x`` (n, 1, H, W), and each channel's score (n, c):
    the target logit of ``fast`` (the backbone after the standardisation, prepared for inference) for the
    crop masked by the channel, computed for the channels :func:`_scored_channels` picks, in large batches of
    masked inputs. A channel not computed gets the log-mean-exp of the sampled ones' scores (its expected
    softmax weight); a constant channel, which masks nothing, -inf."""
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, _i, output: captured.append(output.float()))
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
    finally:
        hook.remove()
    acts = captured[-1]
    if classes is None:
        targets = logits.float().argmax(1)
    else:
        targets = torch.as_tensor(np.asarray(classes, np.int64), device=device)
    n, c, h, w = acts.shape
    flat = acts.flatten(2)
    constant = (flat.amax(dim=2) - flat.amin(dim=2)) <= 0
    picked = _scored_channels(flat.var(dim=2), constant, channels)  # (n, m)
    m = picked.shape[1]
    chosen = torch.gather(acts, 1, picked[:, :, None, None].expand(-1, -1, h, w)).reshape(n * m, 1, h, w)
    standardise = getattr(net, "standardise", nn.Identity())
    z = standardise(x.float())  # masks act on what the network sees after its standardisation
    owner = torch.arange(n, device=device).repeat_interleave(m)
    out = []
    step = _masked_batch(device)
    for start in range(0, n * m, step):
        # pytorch-grad-cam's upsampling of the masks (corner-aligned bilinear), then min-max to [0, 1]
        up = F.interpolate(chosen[start : start + step], size=x.shape[-2:], mode="bilinear", align_corners=True)
        lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        masks = (up - lo) / (hi - lo).clamp_min(1e-8)
        masked = (z[owner[start : start + step]] * masks).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(fast(masked).float())
        del up, masks, masked
    exact = torch.cat(out).view(n, m, -1)[torch.arange(n, device=device), :, targets]  # (n, m)
    if m == c:  # every channel computed, in channel order
        scores = exact
    else:
        sampled = exact[:, m - SCORECAM_SAMPLED :]
        rest = torch.logsumexp(sampled, dim=1, keepdim=True) - float(np.log(SCORECAM_SAMPLED))
        scores = rest.expand(n, c).clone().scatter(1, picked, exact)
    return acts, scores.masked_fill(constant, float("-inf"))


def _combine(acts: torch.Tensor, weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU(sum_k w_k A_k) per crop, upsampled to the crop's size (bilinear): (n, H, W)."""
    cam = torch.relu(torch.einsum("nk,nkhw->nhw", weights, acts))
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def score_cam(
    net: nn.Module,
    architecture: str,
    crops: np.ndarray,
    classes: np.ndarray | None = None,
    channels: int | None = SCORECAM_CHANNELS,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Score-CAM (Wang et al., 2020) maps (N, H, W) float32, >= 0 and not normalised, for the target classes.

    The paper's Algorithm 1, as pytorch-grad-cam implements it: for each crop, the activations A_k of the
    architecture's target layer; each channel, upsampled to the crop (bilinear) and min-max normalised, is a
    mask H_k; the crop times H_k goes through the network, and the channel's score is the target's logit,
    S_k = f_c(X o H_k) - f_c(X_b); the weights are the softmax of the scores over the channels (the baseline
    X_b drops out of it, so it costs no pass), and the map is ReLU(sum_k w_k A_k), upsampled. (The
    post-softmax increase of confidence of the paper's Definition 5, p_c(X o H_k) - p_c(X_b), is no use here:
    the demo model gives a flat crop to LT-HSC with probability 1, so every LT-HSC map would be all zeros.)
    As with Integrated Gradients, the masks act after the network's per-crop standardisation, where a flat
    crop is all zeros: what a mask removes becomes the crop's mean, not black (the paper's ImageNet masks act
    on the normalised image likewise, with X_b = 0).

    ``channels`` (k): full Score-CAM costs one masked pass per channel, 1,024 per crop at ResNet-50's layer3.
    Here the score is computed for the k channels of each crop whose activation varies most over it (Faster
    Score-CAM's criterion), and for ``SCORECAM_SAMPLED`` more spread over the ranks of the others; every other
    channel gets the log-mean-exp of those sampled scores, i.e. its expected share of the softmax, and keeps
    its place in the map. (Keeping only the k channels, as Faster Score-CAM does, drops the others' sum from
    the map: on a trained ResNet-50 the softmax over 1,024 scores is nearly flat, and that sum is most of the
    map; Spearman correlation with full Score-CAM 0.86 at k = 16, against 0.999 here at k = 4 to 32, on the network that
    bench/saliency.py trains.) The cost is about k + 8 masked passes per crop; None computes every channel's
    score (full Score-CAM). The masked crops run through a copy of the network prepared as for classification
    (BatchNorm folded, channels-last, bfloat16 autocast where the predictor uses it), in large batches.
    """
    from lsm_core.ml.predict import prepare_for_inference, use_bf16

    channels = _check_channels(channels)
    device = torch.device(device)
    bf16 = use_bf16(device)
    net = net.eval().to(device).to(memory_format=torch.channels_last)  # in place, as for the other CAMs
    if len(crops) == 0:
        return np.zeros((0, *np.shape(crops)[1:]), np.float32)
    prepared = prepare_for_inference(net, device)  # a copy, made before any hook is registered on ``net``
    fast = getattr(prepared, "backbone", prepared)
    layer = nets.target_layer(net, architecture)
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.asarray(crops[start : start + batch_size], np.float32))[:, None].to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            part = None if classes is None else classes[start : start + batch_size]
            acts, scores = _channel_scores(net, fast, layer, x, part, channels, device, bf16)
            weights = torch.nan_to_num(torch.softmax(scores, dim=1))  # (n, c), summing to 1 over the channels
            out.append(_combine(acts, weights, (x.shape[-2], x.shape[-1])).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _normalise(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    return np.where(hi > lo, (maps - lo) / np.maximum(hi - lo, 1e-12), 0.0).astype(np.float32)


def saliency_maps(
    net: nn.Module,
    architecture: str,
    crops: np.ndarray,
    method: str = "scorecam",
    classes: np.ndarray | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    scorecam_channels: int | None = SCORECAM_CHANNELS,
) -> np.ndarray:
    """Maps (N, H, W) float32 in [0, 1] for crops (N, H, W): how much each pixel supports the class.

    For IG the map is the positive part of the attributions (evidence for the class). ``scorecam_channels``:
    Score-CAM's k (see :func:`score_cam`; None: every channel).
    """
    if method not in METHODS:
        raise LsmError(f"unknown saliency method {method!r}; choose {', '.join(METHODS)}")
    scorecam_channels = _check_channels(scorecam_channels)
    if len(crops) == 0:
        return np.zeros((0, *np.shape(crops)[1:]), np.float32)
    net = net.eval().to(device)
    if method == "ig":
        attr, _ = integrated_gradients(net, crops, classes, batch_size=batch_size, device=device)
        return _normalise(np.clip(attr, 0, None))
    if method == "scorecam":
        return _normalise(score_cam(net, architecture, crops, classes, scorecam_channels, batch_size, device))
    net = net.to(memory_format=torch.channels_last)  # in place: oneDNN's fast layout, as for classification
    return _normalise(_grad_cam(net, architecture, crops, classes, batch_size, device))


def mass_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per crop, the share of a map's mass that lies inside the cell's mask (NaN where a map is all zero)."""
    maps = np.clip(np.asarray(maps, np.float64), 0, None)
    total = maps.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (maps * masks).sum(axis=(1, 2)) / total, np.nan)


@dataclass
class Deletion:
    """A deletion test's result, per crop: the fall of the explained class's probability when the ``fraction``
    most salient pixels are replaced by a blurred copy of the crop (``salient``) and when as many pixels chosen
    at random are (``random``). A faithful map's pixels matter more than random ones: salient > random."""

    fraction: float
    classes: np.ndarray  # the class explained in each crop
    salient: np.ndarray
    random: np.ndarray


def deletion_test(
    net: nn.Module,
    crops: np.ndarray,
    maps: np.ndarray,
    fraction: float = 0.2,
    classes: np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> Deletion:
    """Faithfulness of saliency ``maps`` of ``crops`` (Samek et al., 2017; Petsiuk et al., 2018): the
    ``fraction`` most salient pixels of each crop (ties broken at random) are replaced by the crop blurred
    (Gaussian, sigma a 16th of the crop's side: the cell's fine structure gone, its grey level kept), and,
    separately, the same number of random pixels; the fall of the probability of the explained class
    (``classes``, default the predicted one) is measured in both. Deletion can only remove what is there: a
    map whose evidence is an absence (the empty background that says a cell is small) is not confirmed by it,
    which is what a small salient fall beside a larger random one shows."""
    from scipy import ndimage as ndi

    crops = np.asarray(crops, np.float32)
    maps = np.asarray(maps, np.float32)
    if crops.shape != maps.shape:
        raise LsmError(f"crops {crops.shape} and maps {maps.shape} differ in shape")
    if not 0 < fraction < 1:
        raise LsmError(f"the fraction of pixels deleted must be between 0 and 1, not {fraction}")
    n, h, w = crops.shape
    k = max(1, int(round(fraction * h * w)))
    rng = np.random.default_rng(seed)
    net = net.eval().to(device)

    def probabilities(x: np.ndarray) -> np.ndarray:
        """Every class's probability (N, C) for crops ``x``, in batches."""
        with torch.no_grad():
            parts = [
                torch.softmax(net(torch.from_numpy(x[i : i + batch_size])[:, None].to(device)).float(), 1).cpu().numpy()
                for i in range(0, len(x), batch_size)
            ]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    before = probabilities(crops)
    classes = np.asarray(before.argmax(1) if classes is None else classes, np.int64)
    rows = np.arange(n)
    sigma = max(h, w) / 16
    salient, scattered = crops.copy(), crops.copy()
    for i in range(n):
        blurred = ndi.gaussian_filter(crops[i], sigma, mode="nearest").ravel()
        top = np.lexsort((rng.random(h * w), -maps[i].ravel()))[:k]  # highest first, ties in random order
        salient[i].reshape(-1)[top] = blurred[top]
        chosen = rng.choice(h * w, k, replace=False)
        scattered[i].reshape(-1)[chosen] = blurred[chosen]
    base = before[rows, classes]
    return Deletion(
        fraction, classes, base - probabilities(salient)[rows, classes], base - probabilities(scattered)[rows, classes]
    )


def to_uint8(maps: np.ndarray) -> np.ndarray:
    """Compact storage: (N, H, W) in [0, 1] to uint8."""
    return np.round(np.clip(maps, 0, 1) * 255).astype(np.uint8)


def overlay(crop: np.ndarray, saliency: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image: the crop in grey with the map in a heat colour scale on top."""
    from matplotlib import colormaps

    lo, hi = float(crop.min()), float(crop.max())
    grey = (crop - lo) / max(hi - lo, 1e-9)
    heat = colormaps["inferno"](np.clip(saliency, 0, 1))[..., :3]
    rgb = (1 - opacity) * np.stack([grey] * 3, axis=-1) + opacity * heat
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
