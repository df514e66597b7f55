"""A network as ONNX: the ``model.onnx`` of a Zoo package (lsm_core.ml.bioimageio) and the network that ONNX
Runtime runs on a CPU worker (lsm_core.ml.predict.OnnxPredictor)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

ONNX_OPSET = 18


def onnx_bytes(net: nn.Module, size: int, output: str | tuple[str, ...] = "probabilities") -> bytes:
    """``net`` as ONNX (opset :data:`ONNX_OPSET`, a dynamic batch axis), by torch's TorchScript-based exporter
    (the dynamo one needs onnxscript, which this app does not otherwise need). ``output``: the name of its
    output, or of each of its outputs in order."""
    import warnings

    outputs = (output,) if isinstance(output, str) else output

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        path = Path(tmp) / "model.onnx"
        warnings.simplefilter("ignore")  # the exporter's deprecation notice: this is the path chosen, said above
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, 1, size, size),),
            path,
            dynamo=False,
            input_names=["crop"],
            output_names=list(outputs),
            dynamic_axes={"crop": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            opset_version=ONNX_OPSET,
        )
        return path.read_bytes()
