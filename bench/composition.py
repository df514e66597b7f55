"""Counted against corrected compositions (lsm_core.reports.correction), and how often the corrected 95% interval
holds the truth, against the size of the held-out set behind the confusion matrix.

The classifier's true error rates are the paper's LSM confusion matrix on its 4,156 test cells (../shared/PAPER.md,
rows normalised). For each held-out size (100, 300, 1,000 cells, a third of each class) and each true composition
(the paper's training mix 19/36/45, and mixes far from it: 70/20/10, 10/30/60, 20/30/50), many simulated studies
each draw their own held-out confusion and their own batch (500 cells); the table gives the mean worst-class
error of the counted and the corrected composition and the share of classes whose corrected interval holds the
truth (the goal: 93-97%).

``--model``: the same with a real classifier's errors instead of the paper's: the LSM demo model's quick first
version is trained here on synthetic cells (seed 1), and a pool of 9,000 synthetic cells of another seed (7), each
predicted once by it, gives every study its held-out cells (their true and predicted classes make its confusion)
and, from the rest, its batch. Then the shift check (lsm_core.reports.shift): the same model given held-out
synthetic cells (100, 300, 1,000), cells cut from synthetic fields of view, and the 900 real brightfield cells of
../shared/data (0.5 um/px), with each one's shift score and verdict.

Usage: python bench/composition.py [--studies N] [--cells N] [--model]
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
    parser.add_argument("--model", action="store_true", help="a demo model's errors on synthetic cells; shift")
    args = parser.parse_args()
    if args.model:
        model_bench(args.studies, args.cells)
        return
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


def model_bench(studies: int, cells: int) -> None:
    import tempfile

    import tifffile

    from lsm_core.imaging import synthetic
    from lsm_core.imaging.calibration import resolve
    from lsm_core.imaging.cells import FindParams, find_cells
    from lsm_core.ml.demo import FIRST, FIRST_RECIPE, train_demo
    from lsm_core.ml.models import ModelStore
    from lsm_core.ml.predict import make_predictor
    from lsm_core.reports.shift import assess

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        package = train_demo("lsm", ModelStore(tmp), recipe=FIRST_RECIPE, stage=FIRST, log=lambda _: None)
        predictor = make_predictor(package, "cpu", "fp32", runtime="torch")
    print(f"demo model (first version) trained in {time.perf_counter() - start:.0f} s")
    x, truth = synthetic.make_crops("lsm", 9000, seed=7)
    predicted = predictor(x).predicted
    rng = np.random.default_rng(29)
    by_class = [np.flatnonzero(truth == k) for k in range(3)]
    print(f"{studies} studies per row, {cells} cells per batch; error rates: the demo model's on synthetic cells")
    print(f"{'held-out':>8}  {'true mix':<38} {'counted err':>11} {'corrected err':>13} {'coverage':>8}")
    for heldout in (100, 300, 1000):
        for name, mix in MIXES.items():
            counted_err, corrected_err, held, checks = [], [], 0, 0
            for _ in range(studies):
                chosen = [rng.permutation(idx) for idx in by_class]
                confusion = np.zeros((3, 3))
                for k in range(3):
                    np.add.at(confusion[k], predicted[chosen[k][: heldout // 3]], 1)
                want = rng.multinomial(cells, mix)
                batch = np.concatenate([chosen[k][heldout // 3 :][: want[k]] for k in range(3)])
                counts = np.bincount(predicted[batch], minlength=3)
                real = np.bincount(truth[batch], minlength=3) / len(batch)
                c = correct(dict(zip(CLASSES, counts)), CLASSES, ErrorProfile(tuple(CLASSES), confusion, "sim"))
                counted_err.append(max(abs(sh.counted - t) for sh, t in zip(c.shares, real)))
                corrected_err.append(max(abs(sh.fraction - t) for sh, t in zip(c.shares, real)))
                held += sum(sh.low <= t <= sh.high for sh, t in zip(c.shares, real))
                checks += 3
            print(
                f"{heldout:>8}  {name:<38} {np.mean(counted_err):>11.3f} {np.mean(corrected_err):>13.3f} "
                f"{held / checks:>8.1%}"
            )
    print("\nshift from the training data (share of cells beyond the 99th percentile of the held-out cells)")
    print(f"{'cells given':<52} {'cells':>6} {'score':>6} {'95% CI':>12}  verdict")

    def row(name: str, crops: np.ndarray) -> None:
        shift = assess(predictor(crops).distance.tolist(), package.manifest.training)
        ci = f"{shift.low:.2f}-{shift.high:.2f}"
        print(f"{name:<52} {shift.cells:>6} {shift.score:>6.3f} {ci:>12}  {shift.level}")

    for n in (100, 300, 1000):
        row(f"held-out synthetic cells (seed 3), {n}", synthetic.make_crops("lsm", n, seed=3)[0])
    params = FindParams.for_model(package.manifest, resolve(model_default=package.manifest.pixel_size_um), None)
    fields = [synthetic.make_field("lsm", seed=s, shape=(768, 768), n_cells=8, n_debris=2)[0] for s in range(40)]
    row("cells cut from 40 synthetic fields of view", np.concatenate([find_cells(f, params).crops for f in fields]))
    montage = Path(__file__).resolve().parents[2] / "shared" / "data" / "brightfield" / "jurkat_G1_montage.tif"
    if montage.is_file():
        image = tifffile.imread(montage).astype(np.float32)
        real = FindParams.for_model(package.manifest, resolve(user=0.5, model_default=0.5), None)
        row("real brightfield Jurkat cells (../shared/data)", find_cells(image / image.max(), real).crops)
    else:
        print(f"{montage} is not here: the real cells' row is left out")


if __name__ == "__main__":
    main()
