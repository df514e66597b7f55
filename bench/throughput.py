"""Throughput of classification on the CPU: the classify pipeline against a naive loop and the bare network.

On N synthetic crops written as PNG files, with one randomly initialised ``resnet50_paper``:
(a) naive: the loop a notebook would write (PIL open, torchvision transform, ``model(x[None])`` per file);
(b) pipeline: ``lsm_core.ml.classify`` from files to probabilities (read, find cells, batch, predict);
(c) forward: the pipeline's prepared network alone, at its batch size, on tensors already in memory;
(d) the same pipeline and forward pass on ONNX Runtime (LSM_RUNTIME=onnx: lsm_core.ml.predict.OnnxPredictor,
float32), as ratios to torch in fp32 and at the default precision (bf16 autocast where the CPU has it), on
``resnet50_paper`` and on ``small_cnn``.
Everything runs in this one process, so the ratios hold on a noisy shared machine.

Usage: python bench/throughput.py [--n N] [--batch-size B]
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
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

from lsm_core.imaging import synthetic  # noqa: E402
from lsm_core.imaging.images import read_inputs  # noqa: E402
from lsm_core.ml import nets
from lsm_core.ml.classify import classify_records  # noqa: E402
from lsm_core.ml.models import Manifest, ModelStore  # noqa: E402
from lsm_core.ml.predict import OnnxPredictor, Predictor, TorchPredictor  # noqa: E402


def naive(files: list[Path], net: torch.nn.Module) -> float:
    tf = transforms.Compose([transforms.Grayscale(), transforms.Resize((64, 64)), transforms.ToTensor()])
    net.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for f in files:
            x = tf(Image.open(f))
            torch.softmax(net(x[None]), dim=1)
    return len(files) / (time.perf_counter() - t0)


def pipeline(folder: Path, predictor: Predictor) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(1 for row in classify_records(read_inputs([folder]), predictor) if row.cell is not None)
    return n / (time.perf_counter() - t0), n


def forward(predictor: Predictor, n: int) -> float:
    """Images per second of ``predictor.logits`` on crops in memory, one batch at a time (torch or ONNX alike)."""
    x = np.random.default_rng(0).random((predictor.batch_size, 64, 64), dtype=np.float32)
    batches = max(1, n // predictor.batch_size)
    predictor.logits(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        predictor.logits(x)
    return batches * predictor.batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counts = synthetic.write_dataset("lsm", args.n, tmp / "crops", seed=0)
        files = sorted((tmp / "crops").glob("*/*.png"))
        net = nets.create("resnet50_paper", 3)
        store = ModelStore(tmp / "models")
        package = store.add(
            net, Manifest(task="lsm", name="bench", classes=["LT-HSC", "ST-HSC", "MPP"], architecture="resnet50_paper")
        )
        print(
            f"{len(files)} PNG crops ({counts}); resnet50_paper, random weights; {torch.get_num_threads()} CPU threads"
        )
        predictor = TorchPredictor(package, device="cpu", batch_size=args.batch_size)
        predictor_fp32 = TorchPredictor(package, device="cpu", precision="fp32", batch_size=args.batch_size)
        pipeline(tmp / "crops", predictor)  # warm-up: page cache, oneDNN kernels
        r_naive = naive(files, net)
        r_pipe, n = pipeline(tmp / "crops", predictor)
        r_fwd = forward(predictor, n)
        r_pipe32, _ = pipeline(tmp / "crops", predictor_fp32)
        r_fwd32 = forward(predictor_fp32, n)
        onnx = OnnxPredictor(package, device="cpu", batch_size=args.batch_size)
        r_pipe_onnx, _ = pipeline(tmp / "crops", onnx)
        r_fwd_onnx = forward(onnx, n)
        small = store.add(
            nets.create("small_cnn", 3),
            Manifest(task="lsm", name="bench-small", classes=["LT-HSC", "ST-HSC", "MPP"], architecture="small_cnn"),
        )
        small_rates = {
            name: forward(p, n)
            for name, p in (
                ("torch", TorchPredictor(small, device="cpu", batch_size=args.batch_size)),
                ("torch fp32", TorchPredictor(small, device="cpu", precision="fp32", batch_size=args.batch_size)),
                ("onnx", OnnxPredictor(small, device="cpu", batch_size=args.batch_size)),
            )
        }
    precision = "bf16 autocast" if predictor.bf16 else "fp32"
    print(f"naive loop (PIL + transform + model(x[None]), fp32): {r_naive:8.1f} images/s")
    print(f"pipeline, default precision ({precision}):        {r_pipe:8.1f} images/s")
    print(f"forward only, same network and batch ({precision}): {r_fwd:8.1f} images/s")
    print(f"pipeline, LSM_PRECISION=fp32:                     {r_pipe32:8.1f} images/s")
    print(f"forward only, fp32:                                {r_fwd32:8.1f} images/s")
    print(f"ratio pipeline/naive fp32: {r_pipe32 / r_naive:.2f}")
    print(f"ratio pipeline/naive: {r_pipe / r_naive:.2f}")
    print(f"ratio pipeline/forward: {r_pipe / r_fwd:.2f}")
    print(f"pipeline, LSM_RUNTIME=onnx (fp32):                {r_pipe_onnx:8.1f} images/s")
    print(f"forward only, ONNX Runtime (fp32):                 {r_fwd_onnx:8.1f} images/s")
    print(f"ratio ONNX/torch, forward, fp32: {r_fwd_onnx / r_fwd32:.2f}; against the default ({precision}): "
          f"{r_fwd_onnx / r_fwd:.2f}; pipeline against the default: {r_pipe_onnx / r_pipe:.2f}")  # fmt: skip
    rates = small_rates
    print(
        f"small_cnn, forward: torch ({precision}) {rates['torch']:.0f}, torch fp32 {rates['torch fp32']:.0f}, "
        f"ONNX Runtime {small_rates['onnx']:.0f} images/s; ratio ONNX/torch fp32 "
        f"{small_rates['onnx'] / small_rates['torch fp32']:.2f}, against the default "
        f"{small_rates['onnx'] / small_rates['torch']:.2f}"
    )


if __name__ == "__main__":
    os.environ.setdefault("LSM_PRECISION", "auto")
    main()
