"""Training and evaluation, read top to bottom (after torchvision's classification reference).

:func:`fit` trains a registered architecture on crops in memory with the paper's recipe as the default:
random rotations by multiples of 90 degrees and flips, brightness/contrast jitter, minority classes
oversampled to equal counts per epoch, cross-entropy, Adam with weight decay 0.05 (decoupled: AdamW), a
peak learning rate of 5e-4 (one-cycle schedule) for the head and ``backbone_lr_factor`` times that for the
rest (the paper's 1% is for an ImageNet-initialised backbone; from scratch the factor is 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from lsm_core.errors import LsmError
from lsm_core.imaging.cells import FindParams
from lsm_core.ml import nets

HEAD_NAMES = ("backbone.fc", "backbone.head")

# What the sets of a model's metrics are called wherever a number is shown (see train_and_register).
VALIDATION_SET = "validation set"
VALIDATION_SET_NOTE = "held out from the training data, whole source images at a time; the temperature was fitted on it"
TEST_SET = "test set (test files given at training, never trained on)"
DEMO_TEST_SET = "test set (synthetic cells of another seed)"


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
    # size as a training signal: single-cell crops are cut at the crop's micrometres around their centre (the
    # cell keeps its size, as in a field's crops) instead of resized whole to fill the input; the model records
    # it in its recipe and is given its cells the same way (lsm_core.imaging.cells.keeps_size)
    keep_size: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def find_params(self, input_size: int = 64) -> FindParams:
        """How to cut this run's training crops: the default crop (12.8 µm) at ``input_size`` pixels, single-cell
        crops cut as :attr:`keep_size` says."""
        return FindParams(output_size=input_size, keep_size=self.keep_size)


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    stopped_early: int | None = None


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
    parts = [
        rng.choice(np.flatnonzero(labels == c), size=top, replace=count < top) for c, count in zip(classes, counts)
    ]
    idx = np.concatenate(parts)
    rng.shuffle(idx)
    return idx


def param_groups(net: nn.Module, lr: float, backbone_factor: float) -> list[dict]:
    head: list[nn.Parameter] = []
    body: list[nn.Parameter] = []
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
    device: torch.device | str = "cpu",
) -> float:
    net.train()
    loss_fn = nn.CrossEntropyLoss()
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = torch.from_numpy(order[start : start + batch_size])
        x, y = crops[idx], labels[idx]
        if gen is not None:
            x = augment(x, gen)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
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
def evaluate(
    net: nn.Module, crops: torch.Tensor, labels: torch.Tensor, batch_size: int = 512, device: torch.device | str = "cpu"
) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy, accuracy and the logits (N, C) of ``net`` on crops (N, 1, H, W)."""
    net.eval()
    logits = torch.cat(
        [net(crops[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(crops), batch_size)]
    )
    loss = float(nn.functional.cross_entropy(logits, labels))
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return loss, accuracy, logits.numpy()


class TrainingCancelled(Exception):
    """Raised inside :func:`fit` when ``should_stop`` says so; nothing is registered."""


def imagenet_init(net: nn.Module, weights_path: str) -> None:
    """Initialise a ResNet backbone from torchvision ImageNet weights already on disk (never downloaded).

    The RGB filters of the first convolution are summed into its one grey channel; the head stays random.
    """
    from pathlib import Path

    from lsm_core.ml.models import read_state_dict

    path = Path(weights_path)
    if not path.is_file():
        raise LsmError(
            f"ImageNet weights {weights_path} are not on this machine, and nothing is downloaded here (offline). "
            "Copy torchvision's resnet50/resnet18 .pth file onto the machine and give its path, or train from scratch."
        )
    state = read_state_dict(path)
    if "conv1.weight" in state and state["conv1.weight"].shape[1] == 3:
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    backbone = net.get_submodule("backbone")
    result = backbone.load_state_dict(state, strict=False)
    if [k for k in result.missing_keys if not k.startswith("fc.")]:
        raise LsmError(f"{path.name}: these ImageNet weights do not fit this architecture")


def fit(
    crops: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[[int, float, float | None, float | None], None] | None = None,
    device: str | torch.device = "cpu",
    should_stop: Callable[[], bool] | None = None,
    patience: int | None = None,
    imagenet: str | None = None,
) -> tuple[nn.Module, History]:
    """Train ``config.architecture`` on crops (N, H, W) float32 with labels (N,) int.

    ``progress(epoch, train_loss, val_loss, val_accuracy)`` is called after every epoch; ``should_stop()``
    is asked after every epoch and raises :class:`TrainingCancelled` when true. With ``patience`` and a
    validation set, training stops early when the validation loss has not improved for that many epochs,
    and the best epoch's weights are kept. On CUDA the forward passes autocast to bfloat16. On the CPU the
    same seed gives the same network.
    """
    import copy

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed) if config.augment else None
    device = torch.device(device)
    net = nets.create(config.architecture, num_classes)
    if imagenet:
        imagenet_init(net, imagenet)
    net = net.to(device)
    optimiser = torch.optim.AdamW(
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
    best_loss, best_state, stale = float("inf"), None, 0
    for epoch in range(1, config.epochs + 1):
        order = balanced_indices(labels, rng) if config.balance else rng.permutation(len(labels))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = train_one_epoch(net, x, y, order, optimiser, config.batch_size, gen, scheduler, device)
        history.train_loss.append(loss)
        vloss = vacc = None
        if vx is not None and vy is not None:
            vloss, vacc, _ = evaluate(net, vx, vy, device=device)
            history.val_loss.append(vloss)
            history.val_accuracy.append(vacc)
        if progress:
            progress(epoch, loss, vloss, vacc)
        if should_stop is not None and should_stop():
            raise TrainingCancelled()
        if patience and vloss is not None:
            if vloss < best_loss - 1e-4:
                best_loss, best_state, stale = vloss, copy.deepcopy(net.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    history.stopped_early = epoch
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.cpu().eval(), history


def evaluate_predictor(predictor, data) -> dict:
    """Every metric of a loaded model (:class:`lsm_core.ml.predict.Predictor`, its temperature applied) on
    labelled crops (:class:`lsm_core.ml.datasets.LabelledData`), whatever the order of the model's classes."""
    from lsm_core.ml.metrics import evaluate_probs
    from lsm_core.ml.predict import softmax

    classes = list(predictor.classes)
    to_model = np.array([classes.index(c) for c in data.classes], np.int64)  # data's class index -> model's
    probs = softmax(predictor.logits(data.crops), predictor.temperature)
    return evaluate_probs(probs, to_model[data.labels], classes)


def logits_of(net: nn.Module, crops: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Logits (N, C) of an eval-mode network on crops (N, H, W)."""
    x = torch.from_numpy(np.asarray(crops, np.float32))[:, None]
    _, _, logits = evaluate(net.to(device), x, torch.zeros(len(x), dtype=torch.long), device=device)
    return logits


@torch.inference_mode()
def features_of(
    net: nn.Module, crops: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 512
) -> np.ndarray:
    """The penultimate-layer features (N, F) of an eval-mode network on crops (N, H, W) (:func:`nets.split_head`)."""
    body, _ = nets.split_head(net)
    body = body.to(device).eval()
    x = torch.from_numpy(np.asarray(crops, np.float32))[:, None]
    parts = [body(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)


REFERENCE_CELLS = 4000  # training cells at most that a model's feature reference is summarised from


def feature_reference(net: nn.Module, data, train_idx: np.ndarray, val_idx: np.ndarray, seed: int, device) -> dict:
    """What the model's own cells look like to it (:class:`lsm_core.ml.shift.FeatureReference`): the features of
    up to :data:`REFERENCE_CELLS` training cells, and the distances of the validation cells, as JSON."""
    from lsm_core.ml.shift import FeatureReference

    fit_idx = train_idx
    if len(fit_idx) > REFERENCE_CELLS:
        fit_idx = np.sort(np.random.default_rng(seed).choice(train_idx, REFERENCE_CELLS, replace=False))
    fit = features_of(net, data.crops[fit_idx], device)
    held_out = features_of(net, data.crops[val_idx], device)
    return FeatureReference.build(fit, held_out).to_dict()


def parents_of(provenance: list[dict]) -> list[dict]:
    """The parent models (name, version, sha256) that the data's parts name, once each: the models that
    classified the batches whose reviewed cells are the labels."""
    out: dict[str, dict] = {}
    for part in provenance:
        for parent in part.get("parents") or []:
            out.setdefault(str(parent.get("sha256")), dict(parent))
    return list(out.values())


def train_and_register(
    data,
    task: str,
    config: TrainConfig,
    name: str,
    store,
    test=None,
    progress: Callable[[int, float, float | None, float | None], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device = "cpu",
    imagenet: str | None = None,
    patience: int | None = 5,
    input_size: int = 64,
    demo: bool = False,
    description: str = "",
    test_name: str | None = None,
):
    """Split, train, calibrate, evaluate and register a new model version; returns its package.

    ``data`` and ``test`` are :class:`lsm_core.ml.datasets.LabelledData`. The split is stratified 8:2 and keeps
    each source (file or mouse) on one side. The temperature is fitted on the validation set and stored in
    the manifest, which also carries the metrics and a training summary (class counts, split, recipe,
    seed, sha256 of the data, and where the labels came from: ``training["labels"]``, the data's provenance,
    e.g. a reporter gate's rule and counts; manifests written before it have no such key).

    The training summary keeps what the model's own cells look like to it (``training["shift_reference"]``,
    :mod:`lsm_core.ml.shift`): what tells a batch unlike its training data.

    Every set of metrics says which cells it comes from (``evaluated_on``): the validation set, and the test
    set (``test_name``; for demo models "synthetic cells of another seed") under ``metrics["test"]``. The
    model's quality check (:func:`lsm_core.ml.metrics.quality_check`) on the validation set is recorded as
    ``metrics["quality_check"]``: a model not clearly above chance is registered all the same, but marked
    "failed quality check", is never made a default and is not offered by default.
    """
    from lsm_core.ml.datasets import split
    from lsm_core.ml.metrics import evaluate_probs, fit_temperature, quality_check
    from lsm_core.ml.models import Manifest
    from lsm_core.ml.predict import softmax
    from lsm_core.ml.shift import SHIFT_KEY

    train_idx, val_idx = split(data, 0.2, seed=config.seed)
    if len(val_idx) == 0 or len(set(data.labels[val_idx].tolist())) < 2:
        raise LsmError("too few distinct source images to hold some out for validation; add more images per class")
    net, history = fit(
        data.crops[train_idx],
        data.labels[train_idx],
        len(data.classes),
        config,
        val=(data.crops[val_idx], data.labels[val_idx]),
        progress=progress,
        device=device,
        should_stop=should_stop,
        patience=patience,
        imagenet=imagenet,
    )
    val_logits = logits_of(net, data.crops[val_idx], device)
    temperature = fit_temperature(val_logits, data.labels[val_idx])
    before = evaluate_probs(softmax(val_logits), data.labels[val_idx], data.classes)
    metrics = evaluate_probs(softmax(val_logits, temperature), data.labels[val_idx], data.classes)
    metrics["ece_before_scaling"] = before["ece"]
    metrics["nll_before_scaling"] = before["nll"]
    metrics["evaluated_on"] = f"{VALIDATION_SET} ({VALIDATION_SET_NOTE}): {len(val_idx)} cells"
    metrics["quality_check"] = quality_check(metrics, temperature, VALIDATION_SET)
    summary_test = None
    if test is not None:
        test_logits = logits_of(net, test.crops, device)
        summary_test = evaluate_probs(softmax(test_logits, temperature), test.labels, test.classes)
        summary_test["ece_before_scaling"] = evaluate_probs(softmax(test_logits), test.labels, test.classes)["ece"]
        test_name = test_name or (DEMO_TEST_SET if demo else TEST_SET)
        summary_test["evaluated_on"] = f"{test_name}: {len(test.labels)} cells"
        on_test = quality_check(summary_test, None, "test set")
        summary_test["quality_check"] = on_test
        if not on_test["passed"]:  # the validation set decides; a test set that disagrees is said beside it
            metrics["quality_check"]["warnings"].extend(on_test["reasons"])
    manifest = Manifest(
        task=task,
        name=name,
        classes=list(data.classes),
        architecture=config.architecture,
        input_size=input_size,
        temperature=temperature,
        metrics={**metrics, **({"test": summary_test} if summary_test else {})},
        demo=demo,
        description=description,
        training={
            "class_counts": data.class_counts,
            "split": {
                "train": int(len(train_idx)),
                "validation": int(len(val_idx)),
                "sources_train": int(len(set(data.groups[train_idx].tolist()))),
                "sources_validation": int(len(set(data.groups[val_idx].tolist()))),
            },
            "test_cells": int(len(test.labels)) if test is not None else 0,
            "recipe": config.to_dict(),
            "imagenet_init": bool(imagenet),
            "seed": config.seed,
            "data_sha256": data.digest(),
            "unusable_files": len(data.errors),
            "labels": [dict(part) for part in data.provenance],
            # the models whose predictions reviewers corrected to make these labels (the model card's lineage)
            "parents": parents_of(data.provenance),
            # how far from its training cells a cell of its own kind lies, in its features (lsm_core.ml.shift)
            SHIFT_KEY: feature_reference(net, data, train_idx, val_idx, config.seed, device),
            "history": {
                "train_loss": history.train_loss,
                "val_loss": history.val_loss,
                "val_accuracy": history.val_accuracy,
                "stopped_early_at_epoch": history.stopped_early,
            },
        },
    )
    return store.add(net, manifest)
