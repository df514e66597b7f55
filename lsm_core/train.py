"""Training and evaluation, read top to bottom (after torchvision's classification reference).

:func:`fit` trains a registered architecture on crops in memory with the paper's recipe as the default:
random rotations by multiples of 90 degrees and flips, brightness/contrast jitter, minority classes
oversampled to equal counts per epoch, cross-entropy, Adam with weight decay 0.05, a peak learning rate of
5e-4 (one-cycle schedule) for the head and ``backbone_lr_factor`` times that for the rest (the paper's 1% is for an
ImageNet-initialised backbone; from scratch the factor is 1).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from lsm_core import nets

HEAD_NAMES = ("backbone.fc", "backbone.head")


@dataclass
class TrainConfig:
    architecture: str = "resnet50_paper"
    epochs: int = 20
    batch_size: int = 512
    lr: float = 5e-4
    backbone_lr_factor: float = 1.0
    weight_decay: float = 0.05
    seed: int = 0
    augment: bool = True
    balance: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random dihedral transform (rotation by k*90 degrees, flip) and brightness/contrast jitter per crop.

    x : (N, 1, H, W) float32; returns the same shape.
    """
    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for r in range(4):
        for f in (False, True):
            sel = (k == r) & (flip == f)
            if sel.any():
                y = torch.rot90(x[sel], r, dims=(2, 3))
                out[sel] = torch.flip(y, dims=(3,)) if f else y
    gain = 1.0 + 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    bias = 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    return out * gain + bias * out.mean(dim=(2, 3), keepdim=True)


def balanced_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's indices with every class oversampled to the size of the largest, shuffled."""
    classes, counts = np.unique(labels, return_counts=True)
    top = counts.max()
    parts = [rng.choice(np.flatnonzero(labels == c), size=top, replace=count < top) for c, count in zip(classes, counts)]
    idx = np.concatenate(parts)
    rng.shuffle(idx)
    return idx


def param_groups(net: nn.Module, lr: float, backbone_factor: float) -> list[dict]:
    head, body = [], []
    for name, p in net.named_parameters():
        (head if name.startswith(HEAD_NAMES) else body).append(p)
    return [{"params": head, "lr": lr}, {"params": body, "lr": lr * backbone_factor}]


def train_one_epoch(
    net: nn.Module,
    crops: torch.Tensor,
    labels: torch.Tensor,
    order: np.ndarray,
    optimiser: torch.optim.Optimizer,
    batch_size: int,
    gen: torch.Generator | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    net.train()
    loss_fn = nn.CrossEntropyLoss()
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = torch.from_numpy(order[start : start + batch_size])
        x, y = crops[idx], labels[idx]
        if gen is not None:
            x = augment(x, gen)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimiser.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.inference_mode()
def evaluate(net: nn.Module, crops: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy, accuracy and the logits (N, C) of ``net`` on crops (N, 1, H, W)."""
    net.eval()
    logits = torch.cat([net(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)])
    loss = float(nn.functional.cross_entropy(logits, labels))
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return loss, accuracy, logits.numpy()


def fit(
    crops: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[[int, float, float | None, float | None], None] | None = None,
) -> tuple[nn.Module, History]:
    """Train ``config.architecture`` on crops (N, H, W) float32 with labels (N,) int.

    ``progress(epoch, train_loss, val_loss, val_accuracy)`` is called after every epoch.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed) if config.augment else None
    net = nets.create(config.architecture, num_classes)
    optimiser = torch.optim.Adam(
        param_groups(net, config.lr, config.backbone_lr_factor), weight_decay=config.weight_decay
    )
    x = torch.from_numpy(np.asarray(crops, np.float32))[:, None]
    y = torch.from_numpy(np.asarray(labels, np.int64))
    vx = vy = None
    if val is not None:
        vx = torch.from_numpy(np.asarray(val[0], np.float32))[:, None]
        vy = torch.from_numpy(np.asarray(val[1], np.int64))
    per_epoch = len(balanced_indices(labels, rng)) if config.balance else len(labels)
    steps = config.epochs * -(-per_epoch // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[g["lr"] for g in optimiser.param_groups], total_steps=steps, pct_start=0.2
    )
    history = History()
    for epoch in range(1, config.epochs + 1):
        order = balanced_indices(labels, rng) if config.balance else rng.permutation(len(labels))
        loss = train_one_epoch(net, x, y, order, optimiser, config.batch_size, gen, scheduler)
        history.train_loss.append(loss)
        vloss = vacc = None
        if vx is not None:
            vloss, vacc, _ = evaluate(net, vx, vy)
            history.val_loss.append(vloss)
            history.val_accuracy.append(vacc)
        if progress:
            progress(epoch, loss, vloss, vacc)
    return net.eval(), history
