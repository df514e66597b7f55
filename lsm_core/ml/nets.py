"""Network architectures by name: one registry, one small function per architecture.

As in timm's ``_registry``: a decorator puts each builder into :data:`REGISTRY`; callers ask
:func:`create` for a name. Adding a backbone is adding one function.

Every network takes a batch of grey crops, shape (N, 1, H, W) float32 in the representation of
:mod:`lsm_core.imaging.planes`, and returns logits, shape (N, num_classes). Its first layer,
:class:`CropStandardise`, is the project's one intensity normalisation.

No builder downloads anything: ImageNet initialisation (in :mod:`lsm_core.ml.train`) only uses weights
already on disk.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models as tvm

from lsm_core.errors import LsmError
from lsm_core.ml.names import ARCHITECTURES


class CropStandardise(nn.Module):
    """Standardise each crop to zero mean and unit standard deviation (the one intensity normalisation).

    (N, C, H, W) in, same shape out. A flat crop (standard deviation below ``eps``) becomes all zeros.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1, unbiased=False).view(-1, 1, 1, 1)
        out = (x - mean) / std.clamp_min(self.eps)
        return torch.where(std < self.eps, torch.zeros_like(out), out)


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: its builder and the layer saliency maps are taken from.

    At the paper's 64x64 input the last block of a ResNet is 2x2 and of small_cnn 4x4, too coarse to say
    whether evidence lies inside a 40-pixel cell; the target is the block before (4x4 and 8x8).
    """

    name: str
    builder: Callable[[int], nn.Module]
    target_layer: str
    description: str


REGISTRY: dict[str, ArchSpec] = {}


def register(target_layer: str, description: str) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    def wrap(fn: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        if fn.__name__ not in ARCHITECTURES:  # the command line offers the names from there, without torch
            raise LsmError(f"architecture {fn.__name__!r}: add it to lsm_core.ml.names.ARCHITECTURES")
        REGISTRY[fn.__name__] = ArchSpec(fn.__name__, fn, target_layer, description)
        return fn

    return wrap


class Classifier(nn.Module):
    """Standardise, then a backbone that maps (N, 1, H, W) to logits."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.standardise = CropStandardise()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # the normalisation always runs in float32
            x = self.standardise(x.float())
        return self.backbone(x)


def _grey_resnet(net: tvm.ResNet, head: nn.Module) -> tvm.ResNet:
    # grey input: one input channel (ImageNet weights, when used, are summed over RGB into it)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = head
    return net


@register("backbone.layer3", "ResNet-50 with the paper's head: FC 2048-512, ReLU, dropout 0.3, FC 512-classes")
def resnet50_paper(num_classes: int) -> nn.Module:
    head = nn.Sequential(nn.Linear(2048, 512), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(512, num_classes))
    return Classifier(_grey_resnet(tvm.resnet50(weights=None), head))


@register("backbone.layer3", "ResNet-18 with a two-layer head (FC 512-256, ReLU, dropout 0.3): CPU-sized")
def resnet18(num_classes: int) -> nn.Module:
    head = nn.Sequential(nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(256, num_classes))
    return Classifier(_grey_resnet(tvm.resnet18(weights=None), head))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A compact VGG-style network: blocks of two 3x3 convolutions, 2x2 pooling between them."""

    def __init__(self, num_classes: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        # stem: a strided 3x3 convolution halves the crop before the blocks
        layers: list[nn.Module] = [
            nn.Conv2d(1, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        cin = widths[0]
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers.append(_conv_block(cin, width))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


@register(
    "backbone.features.7",
    "compact CNN: strided stem, 4 blocks (16-32-64-128): the demo models, trains in a minute on a CPU",
)
def small_cnn(num_classes: int) -> nn.Module:
    return Classifier(SmallCNN(num_classes, (16, 32, 64, 128)))


@register("backbone.features", "tiny 2-block CNN (8-16) for tests")
def tiny_cnn(num_classes: int) -> nn.Module:
    return Classifier(SmallCNN(num_classes, (8, 16)))


def create(name: str, num_classes: int) -> nn.Module:
    """Build the architecture ``name`` with randomly initialised weights."""
    try:
        spec = REGISTRY[name]
    except KeyError:
        raise LsmError(f"unknown architecture {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
    if num_classes < 2:
        raise LsmError(f"a classifier needs at least 2 classes, got {num_classes}")
    return spec.builder(num_classes)


def target_layer(model: nn.Module, name: str) -> nn.Module:
    """The module of ``model`` (built as architecture ``name``) that saliency methods look at."""
    return model.get_submodule(REGISTRY[name].target_layer)


def split_head(net: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(body, last): a copy of ``net`` whose last linear layer is an identity, so that it returns what that layer
    reads (the penultimate-layer features, :mod:`lsm_core.ml.shift`), and that layer: ``last(body(x))`` is
    ``net(x)`` for every architecture here (each ends in a linear layer)."""
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise LsmError("this network has no linear layer to read its features before")
    body = copy.deepcopy(net)
    parent_name, _, attr = names[-1].rpartition(".")
    parent = body.get_submodule(parent_name) if parent_name else body
    last = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    return body, last
