"""Models that travel: a registered model as a BioImage Model Zoo (bioimage.io) model package.

The package (format 0.5, ``type: model``) is a ZIP of:

* ``rdf.yaml``: the description: name, description (which names this app and its version), authors, cite (the
  paper, as the source of the method; this app by its name and version, at the lab's address when LSM_APP_URL
  gives one: a Zoo citation needs a DOI or a URL, and the paper's DOI is not the app's), SPDX licence,
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

import contextlib
import hashlib
import io
import json
import re
import sys
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

import lsm_core
from lsm_core.classes import PAPER_AUTHORS, PAPER_DOI, PAPER_JOURNAL, PAPER_TITLE
from lsm_core.errors import LsmError
from lsm_core.ml.models import ModelPackage
from lsm_core.ml.onnx_export import ONNX_OPSET, onnx_bytes

APP_NAME = "LSM classifier"  # this app, as its README and its browser tab name it
FORMAT_VERSION = "0.5.4"
TEST_CROPS = 4
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


def _literal_import(match: re.Match) -> str:
    """``from lsm_core.X import A, B`` as ``A = <value>`` lines, for names whose values are plain literals (a tuple
    of names, a number); anything else stays an import of this app, which :func:`architecture_source` refuses."""
    import ast
    import importlib

    module = importlib.import_module(match.group(1))
    lines = []
    for name in (n.strip() for n in match.group(2).split(",")):
        value = getattr(module, name, None)
        try:
            if ast.literal_eval(repr(value)) != value:
                return match.group(0)
        except (ValueError, SyntaxError):
            return match.group(0)
        lines.append(f"{name} = {value!r}\n")
    return "".join(lines)


def architecture_source() -> str:
    """:mod:`lsm_core.ml.nets` as a file of its own (no import of this app), with the exported wrapper: its
    LsmError a plain exception, constants it imports from the app (names of architectures) written out."""
    from lsm_core.ml import nets

    source = Path(nets.__file__).read_text(encoding="utf-8")
    own = "from lsm_core.errors import LsmError\n"
    if own not in source:
        raise LsmError("lsm_core/ml/nets.py changed its imports: the exported architecture would not stand alone")
    source = source.replace(own, "\n\nclass LsmError(Exception):\n    pass\n")
    source = re.sub(r"^from (lsm_core[\w.]*) import ([\w, ]+)\n", _literal_import, source, flags=re.M)
    if re.search(r"^\s*(from|import) lsm_core", source, flags=re.M):
        raise LsmError("lsm_core/ml/nets.py imports this app: the exported architecture would not stand alone")
    header = f'"""The architecture of a model exported from {APP_NAME} {lsm_core.__version__} (standalone)."""\n'
    return header + source.split('"""', 2)[2].lstrip("\n") + _WRAPPER


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


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
) -> bytes:
    """``package`` (a registered model) as a bioimage.io model package (a ZIP's bytes).

    ``authors``: the people who made the model (at least one); ``model_card``: the README's text (the app's
    model card, with a Validation section); ``provenance``: where the model came from (parent models,
    training data summary), kept under ``config.lsm_classifier``; ``app_url``: where the lab's copy of this app
    is (the LSM_APP_URL setting): with one, the app is the second citation, by its name and version; without,
    the description and the config name it (a citation needs a DOI or a URL). The paper is cited as the source
    of the method only."""
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
    files["test_input.npy"] = npy_bytes(x)
    files["test_output.npy"] = npy_bytes(expected)
    files["README.md"] = (model_card or f"# {m.name} v{m.version}\n\n{m.description}\n").encode("utf-8")
    sha = {name: _sha256(data) for name, data in files.items()}
    scale = m.crop_um / m.input_size  # micrometres per pixel of what the network sees
    app = f"{APP_NAME} {lsm_core.__version__}"
    made = "exported" if (m.training or {}).get("imported_from") else "trained and exported"
    method = f"{PAPER_AUTHORS} {PAPER_TITLE}. {PAPER_JOURNAL}"
    cite = [{"text": f"{method}. The method this model follows (the paper published no weights)", "doi": PAPER_DOI}]
    if app_url:
        cite.append({"text": f"{app}: the software this model was {made} with", "url": app_url})
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
            + f" {made.capitalize()} with {app}; the method: {PAPER_AUTHORS}, {PAPER_JOURNAL}."
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
                "app": APP_NAME,
                "app_version": lsm_core.__version__,
                **({"app_url": app_url} if app_url else {}),
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
    return out.getvalue()


MAX_PACKAGE_BYTES = 1 << 30  # a package's declared unpacked size (its weights three ways: ResNet-50's ~300 MB)
MAX_PACKAGE_MEMBERS = 200
MAX_RDF_BYTES = 1 << 20  # rdf.yaml: a description, never a data file
MAX_RDF_NODES = 100_000  # values in rdf.yaml (YAML aliases can make a small file a huge tree)
MAX_WEIGHTS_BYTES = 512 << 20  # the state dict read: a ResNet-50's is ~100 MB
MAX_TEST_CROPS = 64  # crops in a test tensor (the app's own exports hold TEST_CROPS)
MAX_TEST_BYTES = 64 << 20  # a test tensor, as its .npy header declares it
_NETWORK_EVENTS = (
    "socket.connect",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.sendto",
    "socket.sendmsg",
    "urllib.Request",
)
_offline = threading.local()
_hook_added = False
_hook_lock = threading.Lock()


def _network_hook(event: str, args: tuple) -> None:
    if getattr(_offline, "on", False) and event in _NETWORK_EVENTS:
        raise OfflineError(f"a model package may not reach the network ({event} {args[1:2]!r} refused)")


class OfflineError(PermissionError):
    """Raised inside :func:`no_network` by anything that tries to open a connection or resolve a name."""


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """No connection and no name lookup from this thread while inside (an audit hook, added once; other threads,
    such as the web server's and the database's, are untouched): reading a package never reaches the network,
    whatever URLs its description holds."""
    global _hook_added
    with _hook_lock:
        if not _hook_added:
            sys.addaudithook(_network_hook)
            _hook_added = True
    before = getattr(_offline, "on", False)
    _offline.on = True
    try:
        yield
    finally:
        _offline.on = before


class Package:
    """A package ZIP opened for reading, bounded before anything is decompressed: at most
    :data:`MAX_PACKAGE_MEMBERS` files declaring at most :data:`MAX_PACKAGE_BYTES` together; a member is read
    streaming against a cap (what it declares, and the caller's limit), never whole first."""

    def __init__(self, data: bytes) -> None:
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise LsmError("not a ZIP file: a bioimage.io package is a ZIP with rdf.yaml at its top") from None
        self.infos = {i.filename: i for i in self.zip.infolist() if not i.is_dir()}
        if len(self.infos) > MAX_PACKAGE_MEMBERS:
            raise LsmError(f"the package holds {len(self.infos)} files (at most {MAX_PACKAGE_MEMBERS})")
        total = sum(i.file_size for i in self.infos.values())
        if total > MAX_PACKAGE_BYTES:
            raise LsmError(f"the package unpacks to {total / 1e9:.1f} GB (at most {MAX_PACKAGE_BYTES / 1e9:.1f} GB)")

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zip.close()

    def info(self, name: object, what: str) -> zipfile.ZipInfo:
        if not isinstance(name, str) or name.removeprefix("./") not in self.infos:
            shown = name if isinstance(name, str) and len(name) < 200 else type(name).__name__
            raise LsmError(f"its {what} ({shown!r}) is not a file of the package (a URL is never fetched)")
        return self.infos[name.removeprefix("./")]

    def open(self, name: object, what: str) -> IO[bytes]:
        return self.zip.open(self.info(name, what))

    def _chunks(self, info: zipfile.ZipInfo, what: str) -> Iterator[bytes]:
        """A member's bytes, streamed (the zip stops at its declared size; more data than declared fails its
        CRC), a damaged member an LsmError naming it."""
        try:
            with self.zip.open(info) as f:
                while chunk := f.read(1 << 20):
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise LsmError(f"its {what} ({info.filename}) cannot be unpacked: {exc}") from None

    def read(self, name: object, what: str, limit: int) -> bytes:
        """A member's bytes, at most ``limit`` (refused above, before anything is unpacked)."""
        info = self.info(name, what)
        if info.file_size > limit:
            raise LsmError(
                f"its {what} ({info.filename}) unpacks to {info.file_size / 1e6:.1f} MB (at most {limit / 1e6:.0f} MB)"
            )
        return b"".join(self._chunks(info, what))

    def sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        for chunk in self._chunks(self.infos[name], "file"):
            digest.update(chunk)
        return digest.hexdigest()


def _count_nodes(value: Any, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise LsmError(f"its rdf.yaml holds more than {MAX_RDF_NODES:,} values (YAML aliases?)")
    if isinstance(value, dict):
        for k, v in value.items():
            _count_nodes(k, budget)
            _count_nodes(v, budget)
    elif isinstance(value, list):
        for v in value:
            _count_nodes(v, budget)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def read_rdf(package: Package) -> dict[str, Any]:
    """rdf.yaml, bounded (:data:`MAX_RDF_BYTES`, :data:`MAX_RDF_NODES`); JSON (the app's exports) or YAML."""
    raw = package.read("rdf.yaml", "description", MAX_RDF_BYTES)
    try:
        rdf = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        from ruyaml import YAML  # written by other tools: real YAML (ruyaml is bioimageio.spec's YAML library)
        from ruyaml.error import YAMLError

        try:
            rdf = YAML(typ="safe").load(raw.decode("utf-8"))
        except (YAMLError, UnicodeDecodeError, ValueError) as exc:
            raise LsmError(f"its rdf.yaml is not YAML: {type(exc).__name__}") from None
    if not isinstance(rdf, dict):
        raise LsmError("its rdf.yaml is not a description (a mapping of fields)")
    _count_nodes(rdf, [MAX_RDF_NODES])
    return rdf


def unused_members(package: Package, rdf: dict[str, Any]) -> list[str]:
    """The package's files that its description names nowhere (a package brings only what it uses)."""
    named = {s.removeprefix("./") for s in _strings(rdf)}
    return sorted(n for n in package.infos if n != "rdf.yaml" and n not in named)


def declared_sha256(rdf: dict[str, Any]) -> dict[str, str]:
    """Each file the description vouches for by a sha256 (``source`` and ``sha256`` side by side)."""
    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            source, sha = value.get("source"), value.get("sha256")
            if isinstance(source, str) and isinstance(sha, str):
                found[source.removeprefix("./")] = sha.lower()
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(rdf)
    return found


def validate(data: bytes) -> list[str]:
    """The problems ``bioimageio.spec`` finds in a package (its ZIP's bytes), and files of it that are not what
    their sha256 vouches for; empty when it is valid. Offline: the description's URLs are never fetched (no IO
    checks by bioimageio.spec, under :func:`no_network`); the sha256 of the package's own files is checked
    here, streaming."""
    with Package(data) as package:
        return _problems(package, read_rdf(package), data)


def _problems(package: Package, rdf: dict[str, Any], data: bytes) -> list[str]:
    from bioimageio.spec import InvalidDescr, load_description

    problems = [
        f"{name}: not the file its sha256 in rdf.yaml vouches for"
        for name, sha in declared_sha256(rdf).items()
        if name in package.infos and package.sha256(name) != sha
    ]
    with tempfile.TemporaryDirectory() as tmp, no_network():
        path = Path(tmp) / "package.zip"
        path.write_bytes(data)
        descr = load_description(path, perform_io_checks=False)
        if isinstance(descr, InvalidDescr):
            summary = descr.validation_summary
            problems += [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors] or [
                str(summary.status)
            ]
    return problems


@dataclass
class Imported:
    """What an imported package becomes: the network with its weights and the app's manifest for it."""

    net: nn.Module
    manifest: Any  # lsm_core.ml.models.Manifest


def _refuse(reason: str) -> LsmError:
    return LsmError(f"this package cannot be imported: {reason}")


def import_package(data: bytes, name: str | None = None, source: str = "package.zip") -> Imported:
    """A bioimage.io model package (a ZIP's bytes) as a model of this app, checked before anything is kept.

    It must validate with ``bioimageio.spec``; be a classifier of a task the app knows (one input of one grey
    channel and two square spatial axes, one output whose channel axis names the classes of the LSM or the
    aging model); carry PyTorch state-dict weights of an architecture the app runs (the app's own exports,
    or any package whose architecture kwargs name one of :mod:`lsm_core.ml.nets`; other architectures run
    in their own tools, and are refused here); and its test input must give its test output within the
    package's declared tolerance. Its classes, the pixel size of its input axes and its temperature become
    the manifest; its name, authors, citations, licence and sha256 are kept as ``training["imported_from"]``
    (shown on the model card). The weights are read with ``torch.load(weights_only=True)``: no code of the
    package is run. It is read offline (no URL of it is fetched) and in bounded memory (:class:`Package`, the
    MAX_* limits above); a file of the package that its rdf.yaml does not name is refused."""
    try:
        with Package(data) as package:
            return _import(package, data, name, source)
    except (LsmError, OfflineError) as exc:  # OfflineError: a URL reached for despite no IO checks, not followed
        raise _refuse(str(exc)) from None


def _test_tensor(package: Package, tensor: Any, what: str) -> np.ndarray:
    """A test tensor, its .npy header read first: at most :data:`MAX_TEST_CROPS` crops and
    :data:`MAX_TEST_BYTES`, numbers only, before its data is unpacked."""
    tensor = tensor if isinstance(tensor, dict) else {}
    source = tensor.get("source")
    try:
        with package.open(source, what) as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_2_0 if version >= (2, 0) else np.lib.format.read_array_header_1_0
            shape, _, dtype = header(f)
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise LsmError(f"its {what} is not a .npy array ({exc})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise LsmError(f"its {what} holds {dtype}, not numbers")
    crops = int(shape[0]) if shape else 1
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
    if crops > MAX_TEST_CROPS or nbytes > MAX_TEST_BYTES:
        raise LsmError(
            f"its {what} declares {crops:,} crops of shape {tuple(shape)} ({nbytes / 1e6:,.0f} MB); a test tensor "
            f"here holds at most {MAX_TEST_CROPS} crops and {MAX_TEST_BYTES / 1e6:.0f} MB"
        )
    raw = package.read(source, what, MAX_TEST_BYTES + (1 << 16))
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as exc:
        raise LsmError(f"its {what} is not a .npy array ({exc})") from None


def _claims_dropped(metrics: Any) -> dict[str, Any]:
    """A package's metrics without the verdicts it records about itself (``quality_check``, here and in its test
    set's summary): an imported model's quality is not recorded (the Models table says so) and never taken on
    the package's word to make it the default."""
    if not isinstance(metrics, dict):
        return {}
    out = {k: v for k, v in metrics.items() if k != "quality_check"}
    for key, value in out.items():
        if isinstance(value, dict) and "quality_check" in value:
            out[key] = {k: v for k, v in value.items() if k != "quality_check"}
    return out


def _import(package: Package, data: bytes, name: str | None, source: str) -> Imported:
    from lsm_core.classes import TASKS as TASK_CLASSES
    from lsm_core.ml import nets
    from lsm_core.ml.models import Manifest, check_name

    if "rdf.yaml" not in package.infos:
        raise LsmError("no rdf.yaml at the top of the ZIP")
    rdf = read_rdf(package)
    unused = unused_members(package, rdf)
    if unused:
        shown = ", ".join(repr(n[:80]) for n in unused[:5]) + (
            f" and {len(unused) - 5} more" if len(unused) > 5 else ""
        )
        raise LsmError(f"it holds files its rdf.yaml does not name ({shown}): a package brings only what it uses")
    problems = _problems(package, rdf, data)  # every member's sha256 among them: read once here
    if problems:
        raise LsmError("bioimageio.spec does not validate it: " + "; ".join(problems[:3]))
    if rdf.get("type") != "model":
        raise LsmError(f"it describes a {rdf.get('type')!r}, not a model")
    inputs, outputs = rdf.get("inputs") or [], rdf.get("outputs") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise LsmError(f"a classifier here has one input and one output (this has {len(inputs)} and {len(outputs)})")
    axes = {a.get("type"): a for a in inputs[0].get("axes") or []}
    space = [a for a in inputs[0].get("axes") or [] if a.get("type") == "space"]
    channel = axes.get("channel")
    if channel is not None and len(channel.get("channel_names") or []) != 1:
        raise LsmError("its input has more than one channel; the app classifies one grey channel")
    sizes = {a.get("size") for a in space}
    if len(space) != 2 or len(sizes) != 1 or not all(isinstance(s, int) for s in sizes):
        raise LsmError("its input is not one square crop of a fixed size (two space axes of one size)")
    size = int(sizes.pop())
    out_axes = outputs[0].get("axes") or []
    if [a.get("type") for a in out_axes] not in (["batch", "channel"], ["channel"]):
        raise LsmError("its output is not a class axis (batch, channel): it is not a classifier")
    classes = [str(c) for c in next(a for a in out_axes if a.get("type") == "channel").get("channel_names") or []]
    task = next((t for t, known in TASK_CLASSES.items() if sorted(known) == sorted(classes)), None)
    if task is None:
        known = "; ".join(f"{t}: {', '.join(c)}" for t, c in TASK_CLASSES.items())
        raise LsmError(f"its classes ({', '.join(classes)}) are not those of a task the app knows ({known})")
    preprocessing = [p.get("id") for p in inputs[0].get("preprocessing") or []]
    if any(p not in ("zero_mean_unit_variance", "ensure_dtype") for p in preprocessing):
        raise LsmError(
            f"its preprocessing ({', '.join(preprocessing)}) is not the per-crop standardisation the app's networks do"
        )
    weights = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not weights:
        raise LsmError("it has no pytorch_state_dict weights (the app runs PyTorch networks)")
    kwargs = (weights.get("architecture") or {}).get("kwargs") or {}
    architecture = kwargs.get("architecture")
    if architecture not in nets.REGISTRY:
        raise LsmError(
            f"its architecture ({(weights.get('architecture') or {}).get('callable', '?')}"
            + (f", {architecture}" if architecture else "")
            + ") is not one the app runs; run it in bioimageio.core, ilastik or deepImageJ"
        )
    config = (rdf.get("config") or {}).get("lsm_classifier") or {}
    ours: dict[str, Any] = config["manifest"] if isinstance(config.get("manifest"), dict) else {}
    temperature = float(kwargs.get("temperature", ours.get("temperature", 1.0)))
    raw = package.read(weights.get("source"), "weights", MAX_WEIGHTS_BYTES)
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LsmError(f"its weights are not a plain state dict of tensors ({type(exc).__name__})") from None
    net = nets.create(architecture, len(classes))
    inner = {k.removeprefix("net."): v for k, v in state.items()} if isinstance(state, dict) else {}
    from lsm_core.ml.models import _load_state

    _load_state(net, inner, source)
    wrapped = ProbabilityClassifier(net, temperature).eval()
    del raw
    x = _test_tensor(package, inputs[0].get("test_tensor"), "test input")
    expected = _test_tensor(package, outputs[0].get("test_tensor"), "test output")
    try:
        x = np.asarray(x, np.float32).reshape(-1, 1, size, size)
    except ValueError:
        raise LsmError(f"its test input of shape {x.shape} is not crops of {size}x{size}") from None
    with torch.no_grad():
        got = wrapped(torch.from_numpy(x)).numpy()
    declared = ((rdf.get("config") or {}).get("bioimageio") or {}).get("reproducibility_tolerance") or []
    tolerance: dict[str, Any] = declared[0] if declared and isinstance(declared[0], dict) else {}
    rtol = float(tolerance.get("relative_tolerance", TOLERANCE["relative_tolerance"]))
    atol = float(tolerance.get("absolute_tolerance", TOLERANCE["absolute_tolerance"]))
    if got.shape != np.shape(expected):
        raise LsmError(f"its test input gives output of shape {got.shape}, not the test output's {np.shape(expected)}")
    difference = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not np.allclose(got, expected, rtol=rtol, atol=atol):
        raise LsmError(
            f"its test tensors do not reproduce: the largest difference is {difference:.3g} (tolerance: relative "
            f"{rtol:g}, absolute {atol:g}): the weights, the architecture or the test output do not belong together"
        )
    scale = float(space[0].get("scale", 1.0))
    wanted = name or ours.get("name") or str(rdf.get("name", "imported")).split(" v")[0]
    wanted = re.sub(r"[^A-Za-z0-9._-]+", "-", wanted).strip("-._")[:64] or "imported"
    check_name(wanted)
    origin = {
        "format": "bioimageio",
        "name": rdf.get("name"),
        "version": rdf.get("version"),
        "authors": [a.get("name") for a in rdf.get("authors") or [] if isinstance(a, dict)],
        "cite": rdf.get("cite") or [],
        "license": rdf.get("license"),
        "sha256": _sha256(data),
        "file": source,
        "exported_from": config.get("exported_from"),
        "app": config.get("app"),
        "app_version": config.get("app_version"),
    }
    training = dict(ours.get("training") or {}) if isinstance(ours.get("training"), dict) else {}
    training["imported_from"] = origin
    manifest = Manifest(
        task=task,
        name=wanted,
        classes=classes,
        architecture=architecture,
        input_size=size,
        pixel_size_um=float(ours.get("pixel_size_um", scale)),
        crop_um=scale * size,
        temperature=temperature,
        metrics=_claims_dropped(ours.get("metrics")),
        training=training,
        demo=bool(ours.get("demo", False)),
        description=str(ours.get("description") or rdf.get("description") or ""),
    )
    manifest.validate(source)
    return Imported(net, manifest)
