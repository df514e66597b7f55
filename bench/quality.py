"""Quality of the training pipeline on synthetic cells, beside the paper's figures for real cells.

For each task: train a CPU-sized version of the recipe (resnet18, 3,000 training crops from seed 101,
8 epochs, batch 128, peak learning rate 2e-3) through `train_and_register`, then evaluate on 1,500 crops
from seed 202, never seen in training. Prints held-out accuracy, macro F1, per-class AUC and the ECE before
and after temperature scaling. Targets on synthetic data: accuracy >= 0.85 for both tasks, ECE after
scaling <= 0.05. The baseline in the same run is chance (1/classes).

With ``--size``: whether size as a training signal helps (``TrainConfig.keep_size``). The synthetic classes
differ in size by design (LT-HSC 7.0, ST-HSC 7.7, MPP 8.4 µm across; young 7.1, aged 7.9), besides shape,
nucleus and granules. A lab's single-cell crops are often cut tightly around each cell, so each crop's side
follows its cell's size; resized whole to fill the input, every cell looks equally large to the network. Here
each synthetic cell (0.2 µm/px) is cut as a square around its outline with a margin of 15% of its diameter
plus 2 px, and the same recipe is trained twice on those crops: resized to fill the input (the default), and
with ``keep_size`` (cut as the model's 12.8 µm square around the centre: the cell keeps its size). Held-out
crops are cut the way each registered model asks for them (``FindParams.for_model``). The baseline in the same
run is the default. With ``--size-only`` the classes differ in nothing but size (every class drawn with the
first class's morphology and its own diameter): a control of what each way of cutting lets the network see.

Usage: python bench/quality.py [--n-train N] [--epochs E] [--arch A] [--size [--size-only]] [--tasks lsm aging]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsm_core.classes import task_classes  # noqa: E402
from lsm_core.imaging import synthetic  # noqa: E402
from lsm_core.imaging.cells import FindParams, find_cells  # noqa: E402
from lsm_core.ml.datasets import LabelledData  # noqa: E402
from lsm_core.ml.metrics import evaluate_probs  # noqa: E402
from lsm_core.ml.models import ModelStore  # noqa: E402
from lsm_core.ml.predict import softmax  # noqa: E402
from lsm_core.ml.train import TrainConfig, logits_of, train_and_register  # noqa: E402

PAPER = {
    "lsm": "paper (real cells, ResNet-50, 21,594 training cells): accuracy 0.74; F1 LT 0.72 ST 0.71 MPP 0.78; "
    "AUC LT 0.93 ST 0.86 MPP 0.90 (macro 0.89)",
    "aging": "paper (real cells): accuracy 0.78; recall aged 0.80, young 0.74",
}


def labelled(task: str, n: int, seed: int) -> LabelledData:
    import numpy as np

    crops, labels = synthetic.make_crops(task, n, seed=seed)
    return LabelledData(
        list(task_classes(task)), crops, labels, np.arange(n), [f"synthetic-{seed}-{i}" for i in range(n)]
    )


def tight_crops(task: str, n: int, seed: int) -> tuple[list, object]:
    """Synthetic single cells (0.2 µm/px) each cut as a square around its outline with a margin (15% of its
    diameter + 2 px): crops whose side follows the cell's size, as a lab cuts them; and their labels."""
    import numpy as np

    images, labels, masks = synthetic.make_crops(task, n, seed=seed, size=96, return_masks=True)
    out = []
    for image, mask in zip(images, masks):
        ys, xs = np.nonzero(mask)
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        diameter = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        half = int(round(diameter * 0.65)) + 2
        y0, x0 = max(0, int(round(cy)) - half), max(0, int(round(cx)) - half)
        out.append(image[y0 : int(round(cy)) + half + 1, x0 : int(round(cx)) + half + 1])
    return out, labels


def cut(task: str, images: list, labels, params: FindParams, seed: int) -> LabelledData:
    """The crops ``find_cells`` gives each single-cell image with ``params``, labelled."""
    import numpy as np

    crops = np.concatenate([find_cells(image, params).crops for image in images])
    n = len(images)
    return LabelledData(list(task_classes(task)), crops, labels, np.arange(n), [f"tight-{seed}-{i}" for i in range(n)])


def size_only() -> None:
    """Every class of every task drawn with its first class's morphology and its own diameter."""
    from dataclasses import replace

    for classes in synthetic.MORPHOLOGY.values():
        first = next(iter(classes.values()))
        for name, morph in classes.items():
            classes[name] = replace(first, diameter=morph.diameter)


def size_signal(args: argparse.Namespace) -> None:
    import numpy as np

    if args.size_only:
        size_only()
        print("(--size-only: the classes differ in diameter only)")
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        for task in args.tasks:
            classes = list(task_classes(task))
            train_images, train_labels = tight_crops(task, args.n_train, seed=101)
            test_images, test_labels = tight_crops(task, args.n_test, seed=202)
            sides = [im.shape[0] for im in train_images]
            print(
                f"== {task}: {args.arch}, {args.n_train} tight single-cell crops (sides {min(sides)}-{max(sides)} px, "
                f"median {int(np.median(sides))}), {args.epochs} epochs; held out: {args.n_test} crops of another seed"
            )
            accuracy = {}
            for keep in (False, True):
                config = TrainConfig(
                    architecture=args.arch, epochs=args.epochs, batch_size=128, lr=2e-3, seed=0, keep_size=keep
                )
                train = cut(task, train_images, train_labels, config.find_params(), 101)
                t0 = time.perf_counter()
                package = train_and_register(train, task, config, f"size-{task}-{int(keep)}", store, patience=None)
                seconds = time.perf_counter() - t0
                test = cut(task, test_images, test_labels, FindParams.for_model(package.manifest), 202)
                logits = logits_of(package.load(), test.crops)
                m = evaluate_probs(softmax(logits, package.manifest.temperature), test.labels, classes)
                accuracy[keep] = m["accuracy"]
                how = "keep_size (cut to scale)" if keep else "default (resized to fill)"
                print(
                    f"   {how}: held-out accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}, macro AUC "
                    f"{m['macro_auc']:.3f}, ECE {m['ece']:.3f} ({seconds:.0f} s)"
                )
            gain = accuracy[True] - accuracy[False]
            print(f"   keep_size - default: {gain:+.3f} accuracy ({'helps' if gain > 0.01 else 'no clear gain'})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", action="store_true", help="size as a training signal: keep_size against the default")
    parser.add_argument("--size-only", action="store_true", help="with --size: classes that differ in size only")
    parser.add_argument("--tasks", nargs="+", default=["lsm", "aging"], choices=["lsm", "aging"])
    args = parser.parse_args()
    if args.size:
        return size_signal(args)
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        for task in args.tasks:
            classes = list(task_classes(task))
            train = labelled(task, args.n_train, seed=101)
            test = labelled(task, args.n_test, seed=202)
            config = TrainConfig(architecture=args.arch, epochs=args.epochs, batch_size=128, lr=2e-3, seed=0)
            t0 = time.perf_counter()
            package = train_and_register(train, task, config, f"quality-{task}", store, patience=None)
            seconds = time.perf_counter() - t0
            net = package.load()
            logits = logits_of(net, test.crops)
            raw = evaluate_probs(softmax(logits), test.labels, classes)
            m = evaluate_probs(softmax(logits, package.manifest.temperature), test.labels, classes)
            print(
                f"== {task}: {args.arch}, {args.n_train} training crops, {args.epochs} epochs, "
                f"{seconds:.0f} s on the CPU"
            )
            print(
                f"   held-out synthetic cells: n={m['n']}, accuracy {m['accuracy']:.3f} "
                f"(chance {1 / len(classes):.2f}), "
                f"macro F1 {m['macro_f1']:.3f}"
            )
            print(
                "   per class: "
                + "; ".join(
                    f"{c} F1 {v['f1']:.2f} recall {v['recall']:.2f} AUC {v['auc']:.3f}"
                    for c, v in m["per_class"].items()
                )
            )
            print(
                f"   macro AUC {m['macro_auc']:.3f}; ECE {raw['ece']:.3f} before and {m['ece']:.3f} after temperature "
                f"scaling (T = {package.manifest.temperature:.2f})"
            )
            print(f"   {PAPER[task]}")
            ok = m["accuracy"] >= 0.85 and m["ece"] <= 0.05
            print(f"   targets (accuracy >= 0.85, ECE after scaling <= 0.05): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
