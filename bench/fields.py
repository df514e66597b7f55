"""Fields of view to probabilities: cells per second with 0, 1 and 2 preparation processes (issue #16 item 3).

K synthetic 2048 x 2048 16-bit fields (60 cells each) are written as TIFF files; each run does what the
worker's classify task does with them, without the database: every field read where it lies, its cells found
and cropped (``lsm_core.imaging.prepare``: in the calling process for 0, in a pool of N processes for N), the
crops batched through the network (``lsm_core.ml.classify.in_batches``, the app's Predictor on the CPU), in
input order. The pool is started before the clock (a worker keeps it from job to job). Runs alternate, so that
the machine's other load falls on each alike; the figure is the median over rounds of cells/s, and the ratios
are of runs in the same round.

Also printed: the network alone on the same number of crops (crops/s, the ceiling of the classification side),
and a projection for a GPU host: cells/s per preparation process here x the host's cores - 1, against the
network's crops/s there (give ``--gpu-crops-per-s`` as measured on that GPU; see the README).

Usage: python bench/fields.py [--fields K] [--rounds R] [--arch tiny_cnn] [--threads T] [--gpu-crops-per-s N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402

from lsm_core.imaging import synthetic  # noqa: E402
from lsm_core.imaging.cells import FindParams  # noqa: E402
from lsm_core.imaging.prepare import PrepPool, PrepTask, crops_of  # noqa: E402
from lsm_core.imaging.readers.base import Limits, ReadOptions  # noqa: E402
from lsm_core.ml import nets  # noqa: E402
from lsm_core.ml.classify import in_batches  # noqa: E402
from lsm_core.ml.models import Manifest, ModelStore  # noqa: E402
from lsm_core.ml.predict import Predictor, TorchPredictor  # noqa: E402


def run(pool: PrepPool, files: list[Path], predictor: Predictor) -> tuple[float, int]:
    tasks = [PrepTask(f, 1, ReadOptions(), Limits(), FindParams(), 120.0) for f in files]
    t0 = time.perf_counter()
    cells = 0
    prepared = pool.ordered(tasks, lambda task: task)
    for chunk in in_batches(prepared, predictor, lambda item: crops_of(item[1])):
        for _, pred in chunk:
            cells += len(pred.probs) if pred is not None else 0
    return time.perf_counter() - t0, cells


def network_alone(predictor: Predictor, n: int) -> float:
    x = np.random.default_rng(0).random((n, 64, 64), dtype=np.float32)
    predictor(x[: predictor.batch_size])  # warm-up
    t0 = time.perf_counter()
    predictor(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fields", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arch", default="tiny_cnn", choices=sorted(nets.REGISTRY))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for the network")
    parser.add_argument("--gpu-crops-per-s", type=float, default=None, help="the network's rate on a GPU host")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = []
        for k in range(args.fields):
            field, _ = synthetic.make_field("lsm", seed=500 + k)
            path = folder / f"field{k:02d}.tif"
            tifffile.imwrite(path, np.round(field * 4095).astype(np.uint16))
            files.append(path)
        net = nets.create(args.arch, 3)
        manifest = Manifest(task="lsm", name="bench", classes=["LT-HSC", "ST-HSC", "MPP"], architecture=args.arch)
        package = ModelStore(folder / "models").add(net, manifest)
        predictor = TorchPredictor(package, device="cpu")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        print(
            f"{args.fields} synthetic 2048x2048 16-bit fields; {args.arch} (random weights) on the CPU with "
            f"{args.threads} torch thread(s); {cores} cores; {args.rounds} rounds"
        )
        pools = {n: PrepPool(n) for n in (0, 1, 2)}
        try:
            for pool in pools.values():  # warm-up: start the processes, page cache, kernels
                run(pool, files[:2], predictor)
            rates: dict[int, list[float]] = {n: [] for n in pools}
            ratio_2_1, ratio_1_0 = [], []
            cells = 0
            for r in range(args.rounds):
                round_rates = {}
                for n in list(pools) if r % 2 == 0 else list(reversed(list(pools))):
                    seconds, cells = run(pools[n], files, predictor)
                    round_rates[n] = cells / seconds
                    rates[n].append(round_rates[n])
                ratio_2_1.append(round_rates[2] / round_rates[1])
                ratio_1_0.append(round_rates[1] / round_rates[0])
        finally:
            for pool in pools.values():
                pool.close()
        alone = network_alone(predictor, max(cells, predictor.batch_size))
    for n in pools:
        label = "in the worker's process" if n == 0 else f"{n} preparation process{'es' if n > 1 else ''}"
        print(f"{label:<28} {np.median(rates[n]):8.1f} cells/s  ({cells} cells per run)")
    print(f"network alone ({args.arch})    {alone:8.1f} crops/s")
    print(f"ratio 2 processes / 1: {np.median(ratio_2_1):.2f} (goal >= 1.7 on two cores with a small network)")
    print(f"ratio 1 process / in-process: {np.median(ratio_1_0):.2f}")
    per_process = float(np.median(rates[1]))
    print(
        f"projection for a GPU host: about {per_process:.0f} cells/s per preparation process x (cores - 1); "
        f"a 16-core host: {per_process * 15:.0f} cells/s"
        + (
            f", against the network's {args.gpu_crops_per_s:.0f} crops/s there"
            if args.gpu_crops_per_s
            else " (give --gpu-crops-per-s to compare with the GPU's rate)"
        )
    )


if __name__ == "__main__":
    main()
