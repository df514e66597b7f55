"""Batched inference: crops in, per-cell class probabilities out.

Chunks of ``batch_size`` crops bound the memory whatever the number of cells. The network runs under
``torch.inference_mode`` in channels-last layout with its BatchNorm folded into the convolutions; with
``precision="auto"`` it autocasts to bfloat16 on CUDA and on CPUs with native bfloat16 arithmetic
(``LSM_PRECISION=fp32`` turns that off). The crop standardisation always runs in float32.
"""

from __future__ import annotations

import copy
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lsm_core.errors import LsmError
from lsm_core.ml.models import ModelPackage
from lsm_core.ml.nets import split_head
from lsm_core.ml.onnx_export import onnx_bytes
from lsm_core.ml.shift import SHIFT_KEY, FeatureReference

DEFAULT_BATCH_SIZE = 256


def choose_device(setting: str | None = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` (LSM_DEVICE: lsm_core.lab.settings)."""
    setting = (setting or "auto").strip()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise LsmError(f"unknown device {setting!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LsmError(f"device {setting!r} asked for, but this machine has no usable CUDA GPU")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(device: torch.device, precision: str | None = "auto") -> bool:
    """Whether to autocast to bfloat16: ``precision`` is ``auto``, ``bf16`` or ``fp32`` (LSM_PRECISION)."""
    precision = precision or "auto"
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def prepare_for_inference(net: nn.Module, device: torch.device) -> nn.Module:
    """An eval-mode copy of ``net`` on ``device``: BatchNorm folded into convolutions, channels-last."""
    net = copy.deepcopy(net).eval()
    backbone = getattr(net, "backbone", None)
    if backbone is not None:
        try:
            from torch.fx.experimental.optimization import fuse

            net.backbone = fuse(backbone)
        except Exception:  # an architecture fx cannot trace still runs, just unfused
            pass
    return net.to(device).to(memory_format=torch.channels_last)


@dataclass
class Prediction:
    """probs: (N, C) float32, rows sum to 1; predicted: (N,) int64; score: (N,) float32 = the largest probability;
    distance: (N,) float32, each cell's distance from the model's training cells in its features
    (:mod:`lsm_core.ml.shift`), None where the model carries no reference."""

    probs: np.ndarray
    predicted: np.ndarray
    score: np.ndarray
    distance: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.predicted)

    def __getitem__(self, index: slice) -> Prediction:
        distance = self.distance[index] if self.distance is not None else None
        return Prediction(self.probs[index], self.predicted[index], self.score[index], distance)


class Predictor(ABC):
    """A loaded, prepared model that turns crops into probabilities: on torch (:class:`TorchPredictor`) or on
    ONNX Runtime (:class:`OnnxPredictor`), which differ in how they hold the network and compute its logits."""

    runtime: str

    def __init__(
        self,
        package: ModelPackage,
        device: str | torch.device | None = None,
        precision: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        net: nn.Module | None = None,
    ) -> None:
        self.package = package
        self.manifest = package.manifest
        self.device = device if isinstance(device, torch.device) else choose_device(device)
        self.bf16 = use_bf16(self.device, precision)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise LsmError("batch size must be at least 1")
        self.temperature = float(self.manifest.temperature)
        # what the model's own cells look like to it: each cell's distance from them is measured where it has one
        self.reference = FeatureReference.from_dict((self.manifest.training or {}).get(SHIFT_KEY))
        self._load(net if net is not None else package.load("cpu"))

    @abstractmethod
    def _load(self, net: nn.Module) -> None:
        """Make the loaded network ready to run on this predictor's device (with :attr:`reference`: split before
        its last linear layer, :func:`lsm_core.ml.nets.split_head`, so that the features are read too)."""

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def _checked(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``crops`` as float32 (N, S, S), checked against the model's input size, and the empty logits."""
        crops = np.asarray(crops, dtype=np.float32)
        size = self.manifest.input_size
        if crops.ndim != 3 or crops.shape[1:] != (size, size):
            raise LsmError(f"expected crops of shape (N, {size}, {size}), got {crops.shape}")
        return crops, np.empty((len(crops), len(self.classes)), np.float32)

    @abstractmethod
    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw logits (N, C) float32 of crops (N, H, W) float32, in chunks of ``batch_size``, and each crop's
        distance from the model's training cells (N,) (None: the model carries no reference)."""

    def logits(self, crops: np.ndarray) -> np.ndarray:
        """Raw logits (N, C) float32 of crops (N, H, W) float32."""
        return self.run(crops)[0]

    def _distances(self, crops: np.ndarray) -> np.ndarray | None:
        return np.empty(len(crops), np.float32) if self.reference is not None else None

    def __call__(self, crops: np.ndarray) -> Prediction:
        logits, distance = self.run(crops)
        prediction = probabilities(logits, self.temperature)
        prediction.distance = distance
        return prediction


class TorchPredictor(Predictor):
    """:class:`Predictor` on torch: the network prepared for inference (:func:`prepare_for_inference`) on the
    predictor's device, autocast to bfloat16 where :func:`use_bf16` says so."""

    runtime = "torch"

    def _load(self, net: nn.Module) -> None:
        self.last: nn.Module | None = None
        if self.reference is not None:
            net, last = split_head(net)
            self.last = last.to(self.device).eval()
        self.net = prepare_for_inference(net, self.device)

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        crops, out = self._checked(crops)
        distance = self._distances(crops)
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                chunk = torch.from_numpy(crops[start : start + self.batch_size])[:, None]
                x = chunk.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    y = self.net(x)
                    if self.last is not None and self.reference is not None and distance is not None:
                        features = y.float()
                        y = self.last(features)
                        distance[start : start + len(chunk)] = self.reference.distances(features.cpu().numpy())
                out[start : start + len(chunk)] = y.float().cpu().numpy()
        return out, distance


RUNTIMES = ("auto", "torch", "onnx")


class OnnxPredictor(Predictor):
    """:class:`Predictor` on ONNX Runtime (CPU): the network exported to ONNX when the predictor is made (opset
    :data:`lsm_core.ml.onnx_export.ONNX_OPSET`), run in float32 with as many threads as torch uses. For
    CPU-only workers (LSM_RUNTIME=onnx); its speed against torch is measured in bench/throughput.py."""

    runtime = "onnx"

    def __init__(
        self,
        package: ModelPackage,
        device: str | torch.device | None = "cpu",
        precision: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        net: nn.Module | None = None,
    ) -> None:
        device = device if isinstance(device, torch.device) else choose_device(device)
        if device.type != "cpu":
            raise LsmError(f"the ONNX Runtime path runs on the CPU, not {device}: use LSM_RUNTIME=torch there")
        super().__init__(package, device, "fp32", batch_size, net)

    def _load(self, net: nn.Module) -> None:
        """The network exported to ONNX and opened in an ONNX Runtime session (no torch copy is kept)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        outputs: tuple[str, ...] = ("logits",)
        if self.reference is not None:  # the features as a second output
            net, outputs = _WithFeatures(*split_head(net)), ("logits", "features")
        self.session = ort.InferenceSession(
            onnx_bytes(net, self.manifest.input_size, outputs), options, providers=["CPUExecutionProvider"]
        )

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        crops, out = self._checked(crops)
        distance = self._distances(crops)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size][:, None]
            results = self.session.run(None, {"crop": np.ascontiguousarray(chunk)})
            out[start : start + len(chunk)] = results[0]
            if distance is not None and self.reference is not None:
                distance[start : start + len(chunk)] = self.reference.distances(results[1])
        return out, distance


class _WithFeatures(nn.Module):
    """A network split before its last linear layer, giving (logits, features): one ONNX graph, two outputs."""

    def __init__(self, body: nn.Module, last: nn.Module) -> None:
        super().__init__()
        self.body, self.last = body, last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.last(features), features


def make_predictor(
    package: ModelPackage,
    device: str | torch.device | None = None,
    precision: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    runtime: str = "auto",
) -> Predictor:
    """The predictor of the runtime asked for (LSM_RUNTIME): ``torch``; ``onnx`` on a CPU worker (a GPU
    worker keeps torch: ONNX Runtime's CPU build is what is installed); ``auto``: onnx where torch would run
    in float32 on the CPU (no native bfloat16, or LSM_PRECISION=fp32), where ONNX Runtime is faster (1.4 times
    the forward pass of resnet50_paper, 1.2 times small_cnn's: bench/throughput.py), torch elsewhere (its bf16
    autocast is faster still: ONNX Runtime gives 0.64 of it)."""
    if runtime not in RUNTIMES:
        raise LsmError(f"unknown runtime {runtime!r}; choose {', '.join(RUNTIMES)}")
    resolved = device if isinstance(device, torch.device) else choose_device(device)
    if runtime == "auto":
        runtime = "onnx" if resolved.type == "cpu" and not use_bf16(resolved, precision) else "torch"
    if runtime == "onnx" and resolved.type == "cpu":
        return OnnxPredictor(package, resolved, precision, batch_size)
    return TorchPredictor(package, resolved, precision, batch_size)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` (N, C) in float64, rows summing to 1."""
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> Prediction:
    """Softmax of ``logits / temperature`` (N, C), with the predicted class and its score."""
    p = softmax(logits, temperature)
    return Prediction(p.astype(np.float32), p.argmax(axis=1).astype(np.int64), p.max(axis=1).astype(np.float32))
