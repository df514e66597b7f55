"""Saliency maps: what the network looks at in each crop.

Three methods, through the maintained libraries:

* ``scorecam``: Score-CAM (Wang et al., 2020; the paper's method), from ``pytorch-grad-cam``;
* ``gradcam``: Grad-CAM (Selvaraju et al., 2017), from ``pytorch-grad-cam``;
* ``ig``: Integrated Gradients (Sundararajan et al., 2017), from ``captum``, from a flat crop (what the
  network sees as "no cell") to the crop, after the network's standardisation (see
  :func:`integrated_gradients`).

Each architecture of :mod:`lsm_core.ml.nets` names its target layer (the last convolutional block). The class
explained is the predicted one unless given. Crops go through in chunks (bounded memory), and every call
registers its hooks inside a context manager that removes them, so nothing leaks into the worker's shared
model.

:func:`saliency_maps` returns maps normalised to [0, 1] per crop (for display and storage as 8-bit);
:func:`integrated_gradients` returns IG's raw attributions, which sum to f(x) - f(baseline).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lsm_core.errors import LsmError
from lsm_core.ml import nets

METHODS = ("scorecam", "gradcam", "ig")


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


class _NoBar:
    """Stands in for the tqdm module in pytorch-grad-cam's Score-CAM, which draws a progress bar per batch of
    crops. (tqdm reads TQDM_DISABLE once, when imported, so the environment cannot turn it off later.)"""

    @staticmethod
    def tqdm(iterable, *args, **kwargs):
        return iterable


def _cam(
    method: str,
    net: nn.Module,
    architecture: str,
    crops: np.ndarray,
    classes: np.ndarray | None,
    batch_size: int,
    device,
) -> np.ndarray:
    from pytorch_grad_cam import GradCAM, ScoreCAM, score_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    score_cam.tqdm = _NoBar  # worker logs and the command line's own bar stay readable
    cls = {"gradcam": GradCAM, "scorecam": ScoreCAM}[method]
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
                cls(model=net, target_layers=[layer]) as cam,
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            ):  # hooks removed on exit
                if method == "scorecam":
                    cam.batch_size = 64
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
            out.append(np.asarray(maps, np.float32))
    finally:
        start_here.remove()
        for p, flag in zip(net.parameters(), trainable):
            p.requires_grad_(flag)
    return np.concatenate(out)


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
) -> np.ndarray:
    """Maps (N, H, W) float32 in [0, 1] for crops (N, H, W): how much each pixel supports the class.

    For IG the map is the positive part of the attributions (evidence for the class).
    """
    if method not in METHODS:
        raise LsmError(f"unknown saliency method {method!r}; choose {', '.join(METHODS)}")
    if len(crops) == 0:
        return np.zeros((0, *np.shape(crops)[1:]), np.float32)
    net = net.eval().to(device)
    if method == "ig":
        attr, _ = integrated_gradients(net, crops, classes, batch_size=batch_size, device=device)
        return _normalise(np.clip(attr, 0, None))
    net = net.to(memory_format=torch.channels_last)  # in place: oneDNN's fast layout, as for classification
    return _normalise(_cam(method, net, architecture, crops, classes, batch_size, device))


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
