"""Cost of saliency maps on the CPU, as ratios to classifying the same cells in the same process.

For 1,000 synthetic crops: the time of classification (lsm_core.ml.predict, the app's path) and of Grad-CAM,
Score-CAM and Integrated Gradients (lsm_core.ml.saliency), on `small_cnn` (the demo models' architecture) and
on `resnet50_paper` (Grad-CAM and IG only: Score-CAM needs one forward pass per channel of the target
layer, 1,024 for ResNet-50's layer3, i.e. about a million forward passes for 1,000 cells). Random weights:
the cost does not depend on them. Target: Grad-CAM <= 3x classification.

Usage: python bench/saliency.py [--n N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lsm_core.imaging import synthetic  # noqa: E402
from lsm_core.ml import nets
from lsm_core.ml.models import Manifest, ModelStore  # noqa: E402
from lsm_core.ml.predict import Predictor  # noqa: E402
from lsm_core.ml.saliency import saliency_maps  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    crops, _ = synthetic.make_crops("lsm", args.n, seed=0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        for arch, methods in (("small_cnn", ("gradcam", "scorecam", "ig")), ("resnet50_paper", ("gradcam", "ig"))):
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
            predictor = Predictor(package, device="cpu")
            predictor(crops[:64])  # warm-up
            base = timed(lambda predictor=predictor: predictor(crops))
            predicted = predictor(crops).predicted  # maps explain the class each cell was given
            print(
                f"{arch}: classification of {args.n} cells: {base:.2f} s ({args.n / base:.0f} cells/s, "
                f"{'bf16' if predictor.bf16 else 'fp32'})"
            )
            for method in methods:
                seconds = timed(
                    lambda net=net, arch=arch, method=method, predicted=predicted: saliency_maps(
                        net, arch, crops, method, predicted
                    )
                )
                print(f"  {method}: {seconds:.2f} s, ratio {method}/classification: {seconds / base:.2f}")


if __name__ == "__main__":
    main()
