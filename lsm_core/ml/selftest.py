"""A model's self-test: the same crops on every worker, compared with the probabilities where it was registered.

The crops are synthetic cells of the model's task drawn from a fixed seed (regenerated, not stored: numpy's
PCG64 stream is the same on every machine); the reference is the model's probabilities for them on the CPU in
float32 with torch, computed once when the model is registered (:func:`reference`, kept in ``models.self_test``).
Before a worker runs a job for a model it runs the crops on its own device, precision and runtime
(:func:`check`) and compares: the largest difference of a probability must stay within the tolerance the
reference declares for that precision (float32: 1e-4, the arithmetic's own noise; bfloat16 autocast: 0.05, over
ten times what rounding to 8 bits of mantissa did to the softmax on the CPU: at most 0.003 on a trained
small_cnn, resnet50_paper and resnet18, 2026-12-04). A worker whose numbers differ more (another GPU, another
library version, a damaged copy) refuses the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SEED = 20261204
CROPS = 8
TOLERANCE = {"fp32": 1e-4, "bf16": 0.05}


def crops_for(task: str, size: int, n: int = CROPS, seed: int = SEED) -> np.ndarray:
    from lsm_core.imaging import synthetic

    crops, _ = synthetic.make_crops(task, n, seed=seed, size=size)
    return crops


def reference(package) -> dict[str, Any]:
    """The self-test of a package (:class:`lsm_core.ml.models.ModelPackage`) as computed here: CPU, float32,
    torch; with the tolerance each precision must meet."""
    from lsm_core.ml.predict import TorchPredictor

    m = package.manifest
    probs = TorchPredictor(package, device="cpu", precision="fp32").__call__(crops_for(m.task, m.input_size)).probs
    return {
        "seed": SEED,
        "crops": CROPS,
        "probabilities": np.round(probs.astype(np.float64), 7).tolist(),
        "tolerance": dict(TOLERANCE),
        "computed_on": "cpu, fp32, torch",
    }


@dataclass
class Outcome:
    passed: bool
    max_difference: float
    tolerance: float
    precision: str
    runtime: str
    message: str


def check(predictor, task: str, ref: dict[str, Any]) -> Outcome:
    """Run the self-test crops through ``predictor`` (a worker's, on its device and precision) and compare with
    ``ref`` (:func:`reference`)."""
    precision = "bf16" if getattr(predictor, "bf16", False) else "fp32"
    runtime = getattr(predictor, "runtime", "torch")
    tolerance = float((ref.get("tolerance") or TOLERANCE).get(precision, TOLERANCE[precision]))
    crops = crops_for(task, predictor.manifest.input_size, int(ref.get("crops", CROPS)), int(ref.get("seed", SEED)))
    expected = np.asarray(ref.get("probabilities") or [], np.float64)
    got = predictor(crops).probs.astype(np.float64)
    where = f"on {predictor.device}, {precision}, {runtime}"
    if got.shape != expected.shape:
        return Outcome(
            False, float("inf"), tolerance, precision, runtime,
            f"self-test {where}: {got.shape} probabilities where the reference has {expected.shape}",
        )  # fmt: skip
    difference = float(np.max(np.abs(got - expected))) if got.size else 0.0
    passed = bool(np.isfinite(difference) and difference <= tolerance)
    said = "passed" if passed else "FAILED: the model is refused on this worker"
    message = (
        f"self-test {where}: largest difference {difference:.2g} from the probabilities where it was registered "
        f"({ref.get('computed_on', '?')}), tolerance {tolerance:g}: {said}"
    )
    return Outcome(passed, difference, tolerance, precision, runtime, message)
