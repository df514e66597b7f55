"""Counted against corrected compositions (lsm_core.reports.correction), and how often the corrected 95% interval
holds the truth, against the size of the held-out set behind the confusion matrix.

The classifier's true error rates are the paper's LSM confusion matrix on its 4,156 test cells (../shared/PAPER.md,
rows normalised). For each held-out size (100, 300, 1,000 cells, a third of each class) and each true composition
(the paper's training mix 19/36/45, and mixes far from it: 70/20/10, 10/30/60, 20/30/50), many simulated studies
each draw their own held-out confusion and their own batch (500 cells); the table gives the mean worst-class
error of the counted and the corrected composition and the share of classes whose corrected interval holds the
truth (the goal: 93-97%).

Usage: python bench/composition.py [--studies N] [--cells N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsm_core.reports.correction import ErrorProfile, correct  # noqa: E402

CLASSES = ["LT-HSC", "ST-HSC", "MPP"]
PAPER = np.array([[385, 199, 63], [29, 1206, 339], [9, 429, 1497]], dtype=float)
MIXES = {
    "19/36/45 (the paper's training mix)": (0.19, 0.36, 0.45),
    "70/20/10": (0.7, 0.2, 0.1),
    "10/30/60": (0.1, 0.3, 0.6),
    "20/30/50": (0.2, 0.3, 0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200, help="simulated studies per cell of the table")
    parser.add_argument("--cells", type=int, default=500, help="cells per simulated batch")
    args = parser.parse_args()
    rates = PAPER / PAPER.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(29)
    print(f"{args.studies} studies per row, {args.cells} cells per batch; true error rates: the paper's test set")
    print(f"{'held-out':>8}  {'true mix':<38} {'counted err':>11} {'corrected err':>13} {'coverage':>8} {'s/batch':>7}")
    for heldout in (100, 300, 1000):
        for name, mix in MIXES.items():
            truth = np.array(mix)
            counted_err, corrected_err, held, checks = [], [], 0, 0
            start = time.perf_counter()
            for _ in range(args.studies):
                per_class = rng.multinomial(heldout, [1 / 3] * 3)
                confusion = np.stack([rng.multinomial(per_class[i], rates[i]) for i in range(3)]).astype(float)
                predicted = rng.multinomial(args.cells, truth @ rates)
                c = correct(dict(zip(CLASSES, predicted)), CLASSES, ErrorProfile(tuple(CLASSES), confusion, "sim"))
                counted_err.append(max(abs(s.counted - t) for s, t in zip(c.shares, truth)))
                corrected_err.append(max(abs(s.fraction - t) for s, t in zip(c.shares, truth)))
                held += sum(s.low <= t <= s.high for s, t in zip(c.shares, truth))
                checks += 3
            each = (time.perf_counter() - start) / args.studies
            print(
                f"{heldout:>8}  {name:<38} {np.mean(counted_err):>11.3f} {np.mean(corrected_err):>13.3f} "
                f"{held / checks:>8.1%} {each:>7.2f}"
            )


if __name__ == "__main__":
    main()
