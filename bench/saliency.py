"""Cost of saliency maps on the CPU, as ratios to classifying the same cells in the same process.

For N synthetic crops (default 1,000): the time of classification (lsm_core.ml.predict, the app's path) and of
Grad-CAM, Score-CAM (at its default k, ``SCORECAM_CHANNELS``) and Integrated Gradients (lsm_core.ml.saliency),
on `small_cnn` (the demo models' architecture) and on `resnet50_paper`. Random weights: the cost does not
depend on them. Targets: Grad-CAM <= 3x classification, Score-CAM <= 30x on `resnet50_paper`.

Then Score-CAM's k on `resnet50_paper`: for each k of --ks, the cost on --sweep-n crops as a ratio to
classifying them, and the agreement of the maps with full Score-CAM (each of layer3's 1,024 channels a masked
pass) on the first --agreement of those crops: Spearman correlation of the two maps of each crop, mean and
minimum over the crops (goal >= 0.9), the channels kept by activation variance (Faster Score-CAM's criterion).
That network is trained first (--train-epochs on --train-n synthetic crops): a random network's maps follow
no cell, and their agreement would say little. Ratios are given in wall time and in CPU time (this process,
all threads): on a shared machine the second is steadier.

Then faithfulness, per method and class (issue #18 item 7), on `small_cnn` trained as tests/test_saliency.py
trains it (6 epochs on 2,000 synthetic crops; --faithful-arch resnet50_paper for the paper's network, 2 epochs):
on --faithful-n held-out crops, the share of each map's mass inside the cell's true outline, and the deletion
test (lsm_core.ml.saliency.deletion_test): the fall of the predicted class's probability when the 10% and the
20% most salient pixels are replaced by a blurred copy, against as many random pixels.

Usage: python bench/saliency.py [--n N] [--quick] [--ks 8,16,...] [--sweep-n N] [--agreement M] [--only-k]
                                [--only-faithfulness] [--faithful-n N] [--faithful-arch ARCH]
  --quick: 200 crops, Integrated Gradients left out on resnet50_paper (the longest part: about 9 minutes)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats as sps  # noqa: E402

from lsm_core.imaging import synthetic  # noqa: E402
from lsm_core.ml import nets  # noqa: E402
from lsm_core.ml.models import Manifest, ModelStore  # noqa: E402
from lsm_core.ml.predict import Predictor, TorchPredictor  # noqa: E402
from lsm_core.ml.saliency import (  # noqa: E402
    METHODS,
    SCORECAM_CHANNELS,
    deletion_test,
    mass_inside,
    saliency_maps,
    score_cam,
)
from lsm_core.ml.train import TrainConfig, fit, logits_of  # noqa: E402

NAMES = {"gradcam": "Grad-CAM", "scorecam": f"Score-CAM (k={SCORECAM_CHANNELS})", "ig": "Integrated Gradients"}


class Timing:
    """Wall and CPU seconds of one call, and what it returned."""

    def __init__(self, fn) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.result = fn()
        self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu

    def ratio(self, base: Timing) -> str:
        return f"{self.wall / base.wall:.1f} (CPU time {self.cpu / base.cpu:.1f})"


def classification(predictor: Predictor, crops: np.ndarray, repeats: int = 3) -> Timing:
    """The median (by wall time) of ``repeats`` runs: classification is short, so its noise weighs most."""
    runs = sorted((Timing(lambda: predictor(crops)) for _ in range(repeats)), key=lambda t: t.wall)
    return runs[len(runs) // 2]


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each pair of maps (NaN where a map is constant)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([sps.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)])


def summary(rho: np.ndarray) -> str:
    constant = int(np.isnan(rho).sum())
    note = f" ({constant} constant)" if constant else ""
    return f"{np.nanmean(rho):.3f} / {np.nanmin(rho):.3f}{note}"


_LOADED: dict[str, tuple[torch.nn.Module, Predictor]] = {}


def predictor_for(store: ModelStore, arch: str) -> tuple[torch.nn.Module, Predictor]:
    """A network of random weights and the app's predictor for it (one per architecture in a run)."""
    if arch not in _LOADED:
        torch.manual_seed(0)  # the same weights whichever parts run
        net = nets.create(arch, 3).eval()
        package = store.add(
            net,
            Manifest(
                task="lsm",
                name=f"bench-{arch.replace('_', '-')}",
                classes=["LT-HSC", "ST-HSC", "MPP"],
                architecture=arch,
            ),
        )
        predictor = TorchPredictor(package, device="cpu")
        predictor(np.zeros((8, 64, 64), np.float32))  # warm-up
        _LOADED[arch] = net, predictor
    return _LOADED[arch]


def methods_table(store: ModelStore, crops: np.ndarray, quick: bool) -> None:
    n = len(crops)
    for arch in ("small_cnn", "resnet50_paper"):
        methods = ("gradcam", "scorecam") if quick and arch == "resnet50_paper" else ("gradcam", "scorecam", "ig")
        net, predictor = predictor_for(store, arch)
        base = classification(predictor, crops)
        predicted = predictor(crops).predicted  # maps explain the class each cell was given
        print(
            f"{arch}: classification of {n} cells: {base.wall:.2f} s ({n / base.wall:.0f} cells/s, "
            f"{'bf16' if predictor.bf16 else 'fp32'})",
            flush=True,
        )
        for method in methods:
            run = Timing(
                lambda net=net, arch=arch, method=method, predicted=predicted: saliency_maps(
                    net, arch, crops, method, predicted
                )
            )
            print(f"  {NAMES[method]}: {run.wall:.2f} s, ratio to classification {run.ratio(base)}", flush=True)


def trained_resnet(crops: int, epochs: int) -> torch.nn.Module:
    """``resnet50_paper`` trained briefly on synthetic LSM crops: its maps, unlike a random network's, follow
    the cells, so the agreement of k channels with every channel is measured on maps that mean something."""
    x, y = synthetic.make_crops("lsm", crops, seed=1)
    config = TrainConfig(architecture="resnet50_paper", epochs=epochs, batch_size=64, lr=1e-3, weight_decay=0)
    net, _ = fit(x, y, 3, config)
    return net.eval()


def choose_k(
    store: ModelStore,
    crops: np.ndarray,
    labels: np.ndarray,
    ks: list[int],
    agreement: int,
    args: argparse.Namespace,
) -> None:
    arch = "resnet50_paper"
    _, predictor = predictor_for(store, arch)
    t0 = time.perf_counter()
    net = trained_resnet(args.train_n, args.train_epochs)
    predicted = logits_of(net, crops).argmax(1)
    print(
        f"\nScore-CAM's k on {arch}, trained {args.train_epochs} epochs on {args.train_n} synthetic crops "
        f"({time.perf_counter() - t0:.0f} s; accuracy on the {len(crops)} bench crops "
        f"{(predicted == labels).mean():.2f})",
        flush=True,
    )
    sub, sub_classes = crops[:agreement], predicted[:agreement]
    full = Timing(lambda: score_cam(net, arch, sub, sub_classes, channels=None))
    base = classification(predictor, crops)
    print(
        f"full Score-CAM (all 1,024 channels of layer3) of {agreement} of them: {full.wall:.1f} s; "
        f"classification of {len(crops)}: {base.wall:.2f} s\n"
    )
    print("| k | Score-CAM time | ratio to classification | Spearman with full Score-CAM, mean / min |")
    print("| --- | --- | --- | --- |")
    for k in ks:
        run = Timing(lambda k=k: score_cam(net, arch, crops, predicted, channels=k))
        rho = summary(spearman(run.result[:agreement], full.result))
        print(f"| {k} | {run.wall:.1f} s | {run.ratio(base)} | {rho} |", flush=True)


def faithfulness(arch: str, n: int) -> None:
    """Per method and class: mass inside the cell, and the deletion test at 10% and 20% (salient vs random)."""
    x, y = synthetic.make_crops("lsm", 2000 if arch == "small_cnn" else 1000, seed=1)
    epochs, lr = (6, 3e-3) if arch == "small_cnn" else (2, 1e-3)
    t0 = time.perf_counter()
    net, _ = fit(x, y, 3, TrainConfig(architecture=arch, epochs=epochs, batch_size=64, lr=lr, weight_decay=0))
    net = net.eval()
    crops, labels, masks = synthetic.make_crops("lsm", n, seed=9, return_masks=True)
    predicted = logits_of(net, crops).argmax(1)
    classes = synthetic.task_classes("lsm")
    print(
        f"\nFaithfulness on {arch} (trained {epochs} epochs, {time.perf_counter() - t0:.0f} s; accuracy on the {n} "
        f"held-out crops {(predicted == labels).mean():.2f}); fall of the predicted class's probability:\n"
    )
    print("| method | class | cells | mass inside the cell | 10% salient / random | 20% salient / random | faithful |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method in METHODS:
        maps = saliency_maps(net, arch, crops, method, predicted)
        inside = mass_inside(maps, masks)
        tests = {f: deletion_test(net, crops, maps, f, predicted) for f in (0.1, 0.2)}
        for c, name in enumerate(classes):
            at = predicted == c
            falls = {f: (float(d.salient[at].mean()), float(d.random[at].mean())) for f, d in tests.items()}
            faithful = all(sal > rnd for sal, rnd in falls.values())
            said = " | ".join(f"{sal:+.3f} / {rnd:+.3f}" for sal, rnd in falls.values())
            print(
                f"| {NAMES[method]} | {name} | {int(at.sum())} | {np.nanmean(inside[at]):.2f} | {said} | "
                f"{'yes' if faithful else 'no'} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=None, help="crops for the methods (default 1,000; 200 with --quick)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ks", default="8,16,24,32,64", help="Score-CAM's k values to compare on resnet50_paper")
    parser.add_argument("--sweep-n", type=int, default=128, help="crops timed for each k")
    parser.add_argument("--agreement", type=int, default=12, help="of those, crops compared with full Score-CAM")
    parser.add_argument("--only-k", action="store_true", help="only the comparison of k values")
    parser.add_argument("--train-n", type=int, default=1000, help="synthetic crops the k comparison's network learns")
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--only-faithfulness", action="store_true", help="only the faithfulness table")
    parser.add_argument("--faithful-n", type=int, default=150, help="held-out crops of the faithfulness table")
    parser.add_argument("--faithful-arch", default="small_cnn", help="the network the faithfulness table explains")
    args = parser.parse_args()
    if args.only_faithfulness:
        faithfulness(args.faithful_arch, args.faithful_n)
        return
    n = args.n or (200 if args.quick else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        if not args.only_k:
            crops, _ = synthetic.make_crops("lsm", n, seed=0)
            methods_table(store, crops, args.quick)
        crops, labels = synthetic.make_crops("lsm", max(args.sweep_n, args.agreement), seed=0)
        choose_k(store, crops, labels, [int(k) for k in args.ks.split(",")], min(args.agreement, len(crops)), args)
    faithfulness(args.faithful_arch, args.faithful_n)


if __name__ == "__main__":
    main()
