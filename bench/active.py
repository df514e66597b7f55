"""What to label next: accuracy after 50, 100, 200, 400 and 800 labels chosen by uncertainty vs at random.

On synthetic LSM cells (lsm_core.imaging.synthetic, three classes): a pool of unlabelled crops and a
held-out test set of another seed. "random" labels the pool in a random order. "uncertain" starts from the
same first 50 random labels and then, at each step, trains on what is labelled, predicts the rest of the
pool and labels the cells whose two largest probabilities are closest (the smallest margin: the review
queue's "most uncertain first", lsm_core.lab.cell_labels.margin) until the next size is reached. At every size a
fresh network is trained with the same recipe, seed and number of optimiser steps (lsm_core.ml.train.fit,
augmented, class-balanced) and its accuracy measured on the test set. Repeated over --seeds seeds (the
pool, the first labels and the network's seed change).

Prints a table (mean and standard deviation over seeds) and its ratio, and writes --figure (SVG) and
--json. This is the learning curve the training issue asked for, and the number the review queue's order
rests on.

Usage: python bench/active.py [--pool 3000] [--test 1000] [--seeds 3] [--arch small_cnn] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SIZES = (50, 100, 200, 400, 800)


BATCH = 32


def train_and_score(x, y, test_x, test_y, arch: str, steps: int, seed: int, classes: int):
    """(test accuracy, the network) of a fresh network trained on (x, y) for about ``steps`` optimiser steps
    (as many epochs as that takes: a small labelled set is not left under-trained)."""
    from lsm_core.ml.predict import softmax
    from lsm_core.ml.train import TrainConfig, fit, logits_of

    epochs = max(1, -(-steps * BATCH // len(y)))
    config = TrainConfig(architecture=arch, epochs=epochs, batch_size=BATCH, lr=3e-3, weight_decay=0.0, seed=seed)
    net, _ = fit(x, y, classes, config)
    net.eval()
    probs = softmax(logits_of(net, test_x))
    return float((probs.argmax(1) == test_y).mean()), net


def margins(net, crops) -> np.ndarray:
    from lsm_core.ml.predict import softmax
    from lsm_core.ml.train import logits_of

    probs = np.sort(softmax(logits_of(net, crops)), axis=1)
    return probs[:, -1] - probs[:, -2]


def curve(strategy: str, pool_x, pool_y, test_x, test_y, args, seed: int, classes: int) -> list[float]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool_y))
    labelled = list(order[: SIZES[0]])
    out = []
    for i, size in enumerate(SIZES):
        if strategy == "random":
            labelled = list(order[:size])
        acc, net = train_and_score(
            pool_x[labelled], pool_y[labelled], test_x, test_y, args.arch, args.steps, seed, classes
        )
        out.append(acc)
        print(f"  seed {seed} {strategy:9s} {size:4d} labels: accuracy {acc:.3f}", flush=True)
        if strategy == "uncertain" and i + 1 < len(SIZES):
            rest = np.setdiff1d(np.arange(len(pool_y)), labelled)
            m = margins(net, pool_x[rest])
            labelled += list(rest[np.argsort(m, kind="stable")[: SIZES[i + 1] - size]])
    return out


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, style in (("uncertain", "o-"), ("random", "s--")):
        runs = np.array(results[strategy])
        mean, sd = runs.mean(0), runs.std(0)
        ax.errorbar(SIZES, mean, yerr=sd, fmt=style, capsize=3, label=f"{strategy} (mean ± sd of {len(runs)} seeds)")
    ax.set_xscale("log")
    ax.set_xticks(SIZES, [str(s) for s in SIZES])
    ax.set_xlabel("labelled cells")
    ax.set_ylabel("accuracy on held-out synthetic cells")
    ax.set_title("What to label next: most uncertain first vs random")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    from lsm_core.imaging import synthetic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=int, default=3000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--steps", type=int, default=400, help="optimiser steps per training (batches of 32)")
    p.add_argument("--figure", default=str(ROOT / "bench" / "active.svg"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    classes = len(synthetic.task_classes("lsm"))
    test_x, test_y = synthetic.make_crops("lsm", args.test, seed=10_000)
    results: dict[str, list[list[float]]] = {"uncertain": [], "random": []}
    started = time.perf_counter()
    for seed in range(args.seeds):
        pool_x, pool_y = synthetic.make_crops("lsm", args.pool, seed=seed + 1)
        for strategy in results:
            results[strategy].append(curve(strategy, pool_x, pool_y, test_x, test_y, args, seed, classes))
    print(f"\n{args.arch}, {args.steps} steps of {BATCH}, pool {args.pool}, test {args.test}, {args.seeds} seeds "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    print("labels | uncertain first | random | ratio")
    for k, size in enumerate(SIZES):
        u = [r[k] for r in results["uncertain"]]
        r = [r[k] for r in results["random"]]
        sd = statistics.pstdev
        print(
            f"{size:6d} | {statistics.mean(u):.3f} ± {sd(u):.3f} | {statistics.mean(r):.3f} ± {sd(r):.3f} | "
            f"{statistics.mean(u) / statistics.mean(r):.3f}"
        )
    figure(results, Path(args.figure))
    print(f"figure: {args.figure}")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": SIZES, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
