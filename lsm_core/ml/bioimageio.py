"""Models that travel: a registered model as a BioImage Model Zoo (bioimage.io) model package.

The package (format 0.5, ``type: model``) is a ZIP of:

* ``rdf.yaml``: the description: name, description, authors, cite (the paper and this app), SPDX licence,
  tags, documentation, one input (batch, channel, y, x in micrometres at the crop's sampling; the per-crop
  standardisation as preprocessing), one output (batch, channel named after the classes: probabilities),
  three weights formats, the test tensors, and under ``config.lsm_classifier`` this app's manifest and
  where the model came from;
* ``weights.pt`` (``pytorch_state_dict``), with ``architecture.py``, a standalone copy of
  :mod:`lsm_core.ml.nets` that needs only torch and torchvision, whose ``ProbabilityClassifier`` wraps the
  network with its temperature and softmax, so that every weights format gives the probabilities the app
  gives; ``model.torchscript.pt`` (``torchscript``, traced) and ``model.onnx`` (``onnx``), each with
  ``parent: pytorch_state_dict``;
* ``test_input.npy`` / ``test_output.npy``: synthetic crops of the task and the probabilities the app's
  network gives them, in float32; ``README.md``: the model card, with a Validation section.

Nothing here is downloaded: the package validates with ``bioimageio.spec`` offline (tests/test_bioimageio.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lsm_core
from lsm_core.errors import LsmError
from lsm_core.ml.models import ModelPackage

FORMAT_VERSION = "0.5.4"
ONNX_OPSET = 18
TEST_CROPS = 4
PAPER_DOI = "10.1186/s13287-024-03682-8"
PAPER_TEXT = (
    "Wang et al. Deep learning-based predictive classification of functional subpopulations of hematopoietic "
    "stem cells and multipotent progenitors. Stem Cell Res Ther 15:74 (2024)"
)
TOLERANCE = {"relative_tolerance": 1e-4, "absolute_tolerance": 1e-4}  # of probabilities, across formats
CALLABLE = "ProbabilityClassifier"
_WRAPPER = '''

class ProbabilityClassifier(nn.Module):
    """The exported model: the network of ``architecture``, its temperature, and a softmax over the classes.
    Input (batch, 1, y, x) grey crops; output (batch, classes) probabilities."""

    def __init__(self, architecture: str, num_classes: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.net = create(architecture, num_classes)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x) / self.temperature, dim=1)
'''


class ProbabilityClassifier(nn.Module):
    """The app's network with its temperature and a softmax: what every exported weights format computes."""

    def __init__(self, net: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x) / self.temperature, dim=1)


def architecture_source() -> str:
    """:mod:`lsm_core.ml.nets` as a file of its own (no import of this app), with the exported wrapper."""
    from lsm_core.ml import nets

    source = Path(nets.__file__).read_text(encoding="utf-8")
    own = "from lsm_core.errors import LsmError\n"
    if own not in source:
        raise LsmError("lsm_core/ml/nets.py changed its imports: the exported architecture would not stand alone")
    source = source.replace(own, "\n\nclass LsmError(Exception):\n    pass\n")
    if re.search(r"^\s*(from|import) lsm_core", source, flags=re.M):
        raise LsmError("lsm_core/ml/nets.py imports this app: the exported architecture would not stand alone")
    header = '"""The architecture of an LSM classifier exported from the HSC classification app (standalone)."""\n'
    return header + source.split('"""', 2)[2].lstrip("\n") + _WRAPPER


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


@dataclass
class Exported:
    """An exported package: its ZIP's bytes and what it holds."""

    data: bytes
    files: dict[str, str]  # name -> sha256
    test_output: np.ndarray


def test_crops(task: str, size: int, n: int = TEST_CROPS) -> np.ndarray:
    """The package's test input: ``n`` synthetic crops of the task (1, 1, size, size each), float32."""
    from lsm_core.imaging import synthetic

    crops, _ = synthetic.make_crops(task, n, seed=20261204, size=size)
    return crops[:, None].astype(np.float32)


def _yaml(data: Any) -> str:
    """YAML for the description: JSON is YAML, and every value here is JSON's kind (no YAML library needed)."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def export_package(
    package: ModelPackage,
    authors: list[str],
    license_id: str = "CC-BY-4.0",
    model_card: str = "",
    provenance: dict[str, Any] | None = None,
    app_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Exported:
    """``package`` (a registered model) as a bioimage.io model package (a ZIP's bytes).

    ``authors``: the people who made the model (at least one); ``model_card``: the README's text (the app's
    model card, with a Validation section); ``provenance``: where the model came from (parent models,
    training data summary), kept under ``config.lsm_classifier``; ``app_url``: where this app's code is, for
    the second citation (without one the app is cited by name and version alone, beside the paper's DOI)."""
    say = progress or (lambda _m: None)
    m = package.manifest
    if not authors or not all(a.strip() for a in authors):
        raise LsmError("name at least one author of the model")
    net = ProbabilityClassifier(package.load("cpu"), m.temperature).eval()
    x = test_crops(m.task, m.input_size)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy().astype(np.float32)
    files: dict[str, bytes] = {}
    say("writing the state dict and its architecture")
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, buf)
    files["weights.pt"] = buf.getvalue()
    files["architecture.py"] = architecture_source().encode("utf-8")
    say("tracing TorchScript")
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch; the Zoo still reads it
        traced = torch.jit.trace(net, torch.from_numpy(x), check_trace=False)
        torch.jit.save(traced, buf)
    files["model.torchscript.pt"] = buf.getvalue()
    say(f"exporting ONNX (opset {ONNX_OPSET})")
    files["model.onnx"] = onnx_bytes(net, m.input_size)
    files["test_input.npy"] = _npy(x)
    files["test_output.npy"] = _npy(expected)
    files["README.md"] = (model_card or f"# {m.name} v{m.version}\n\n{m.description}\n").encode("utf-8")
    sha = {name: _sha256(data) for name, data in files.items()}
    scale = m.crop_um / m.input_size  # micrometres per pixel of what the network sees
    cite = [{"text": PAPER_TEXT, "doi": PAPER_DOI}]
    app = f"HSC classification web app {lsm_core.__version__} (the model was trained and exported with it)"
    cite.append({"text": app, "url": app_url} if app_url else {"text": app, "doi": PAPER_DOI})
    torch_version = torch.__version__.split("+")[0]
    task_name = {"lsm": "LT-HSC / ST-HSC / MPP", "aging": "young / aged LT-HSC"}.get(m.task, m.task)
    rdf = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": f"{m.name} v{m.version}",
        "description": (
            f"Classifies single-cell DIC crops of mouse hematopoietic stem and progenitor cells as {task_name} "
            f"({m.architecture}; {m.input_size}x{m.input_size} crops of {m.crop_um:.3g} µm)."
            + (" A demonstration model trained on synthetic cells: not a model of real cells." if m.demo else "")
        ),
        "version": f"{m.version}.0.0",
        "authors": [{"name": a.strip()} for a in authors],
        "cite": cite,
        "license": license_id,
        "tags": ["hematopoietic stem cells", "HSC", "DIC", "2d", "classification", "pytorch", m.task, "mouse"],
        "documentation": "README.md",
        "timestamp": m.created or None,
        "inputs": [
            {
                "id": "crop",
                "description": "a grey single-cell crop centred on the cell (the app's cell finder cuts it)",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": ["DIC"]},
                    {"type": "space", "id": "y", "size": m.input_size, "unit": "micrometer", "scale": scale},
                    {"type": "space", "id": "x", "size": m.input_size, "unit": "micrometer", "scale": scale},
                ],
                "test_tensor": {"source": "test_input.npy", "sha256": sha["test_input.npy"]},
                "data": {"type": "float32"},
                "preprocessing": [
                    {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"], "eps": 1e-6}}
                ],
            }
        ],
        "outputs": [
            {
                "id": "probabilities",
                "description": "each class's probability (temperature-scaled softmax); they sum to 1",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": list(m.classes)}],
                "test_tensor": {"source": "test_output.npy", "sha256": sha["test_output.npy"]},
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "sha256": sha["weights.pt"],
                "architecture": {
                    "source": "architecture.py",
                    "sha256": sha["architecture.py"],
                    "callable": CALLABLE,
                    "kwargs": {
                        "architecture": m.architecture,
                        "num_classes": len(m.classes),
                        "temperature": float(m.temperature),
                    },
                },
                "pytorch_version": torch_version,
            },
            "torchscript": {
                "source": "model.torchscript.pt",
                "sha256": sha["model.torchscript.pt"],
                "parent": "pytorch_state_dict",
                "pytorch_version": torch_version,
            },
            "onnx": {
                "source": "model.onnx",
                "sha256": sha["model.onnx"],
                "parent": "pytorch_state_dict",
                "opset_version": ONNX_OPSET,
            },
        },
        "config": {
            "bioimageio": {"reproducibility_tolerance": [{**TOLERANCE, "output_ids": ["probabilities"]}]},
            "lsm_classifier": {
                "manifest": m.to_dict(),
                "provenance": provenance or {},
                "app_version": lsm_core.__version__,
                "exported_from": f"{m.name} v{m.version}",
            },
        },
    }
    if rdf["timestamp"] is None:
        del rdf["timestamp"]
    files["rdf.yaml"] = _yaml(rdf).encode("utf-8")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("rdf.yaml", *sorted(n for n in files if n != "rdf.yaml")):
            z.writestr(name, files[name])
    return Exported(out.getvalue(), {n: _sha256(d) for n, d in files.items()}, expected)


def onnx_bytes(net: nn.Module, size: int) -> bytes:
    """``net`` as ONNX (opset :data:`ONNX_OPSET`, a dynamic batch axis), by torch's TorchScript-based exporter
    (the dynamo one needs onnxscript, which this app does not otherwise need)."""
    import warnings

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        path = Path(tmp) / "model.onnx"
        warnings.simplefilter("ignore")  # the exporter's deprecation notice: this is the path chosen, said above
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, 1, size, size),),
            path,
            dynamo=False,
            input_names=["crop"],
            output_names=["probabilities"],
            dynamic_axes={"crop": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
        return path.read_bytes()


def validate(data: bytes) -> list[str]:
    """The problems ``bioimageio.spec`` finds in a package (its ZIP's bytes); empty when it is valid."""
    from bioimageio.spec import InvalidDescr, load_description

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "package.zip"
        path.write_bytes(data)
        descr = load_description(path, perform_io_checks=True)
        if isinstance(descr, InvalidDescr):
            summary = descr.validation_summary
            return [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors] or [
                str(summary.status)
            ]
    return []
