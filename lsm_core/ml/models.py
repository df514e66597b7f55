"""Model packages and the model store.

A model package is a folder holding exactly two files:

* ``manifest.json``: task, name, version, ordered classes, architecture, input size, pixel size and crop
  size, normalisation, temperature, training summary, metrics, demo flag, and the sha256 of the weights;
* ``weights.safetensors``: the network's state_dict (tensors only: loading it can never run code).

Loading verifies the weights' sha256 against the manifest before anything is read. Importing a plain
PyTorch state_dict (``.pt``/``.pth``) unpickles with ``weights_only=True`` and needs a manifest from the
user; nothing else is ever unpickled. Packages live in the store as ``<store>/<name>/<version>/``; names
are restricted to letters, digits, ``.``, ``_`` and ``-`` so that no manifest can point outside the store.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lsm_core.classes import task_classes
from lsm_core.errors import LsmError
from lsm_core.imaging.cells import DEFAULT_PIXEL_SIZE_UM
from lsm_core.imaging.readers.archives import file_sha256
from lsm_core.ml import nets

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.safetensors"
FORMAT_VERSION = 1
NORMALISATION = "grey float in [0, 1], then per-crop zero mean / unit standard deviation (inside the network)"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """``name`` when it may name a model (it names the model's folder in the store), else LsmError. The whole name
    must match: ``$`` would let a newline at the end through."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise LsmError(
            f"model name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def model_quality(metrics: dict | None) -> tuple[bool | None, list[str], list[str]]:
    """The quality check recorded in a model's metrics: (passed, reasons, warnings).

    ``passed`` is None when no check was recorded (imported weights, models registered before the check).
    """
    check = (metrics or {}).get("quality_check")
    if not isinstance(check, dict) or not isinstance(check.get("passed"), bool):
        return None, [], []
    return check["passed"], [str(r) for r in check.get("reasons") or []], [str(w) for w in check.get("warnings") or []]


def failed_quality(metrics: dict | None) -> bool:
    """Whether a model's metrics record a failed quality check (False when none was recorded)."""
    return model_quality(metrics)[0] is False


@dataclass
class Manifest:
    task: str
    name: str
    classes: list[str]
    architecture: str
    version: int = 1
    input_size: int = 64
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
    crop_um: float = 64 * DEFAULT_PIXEL_SIZE_UM
    normalisation: str = NORMALISATION
    temperature: float = 1.0
    demo: bool = False
    weights_sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    description: str = ""
    format: int = FORMAT_VERSION

    @property
    def label(self) -> str:
        """How the model is shown to people: ``name v3``, with ``(synthetic demo)`` for demo models and
        ``(failed quality check)`` for models whose recorded quality check failed."""
        return (
            f"{self.name} v{self.version}"
            + (" (synthetic demo)" if self.demo else "")
            + (" (failed quality check)" if failed_quality(self.metrics) else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise LsmError(f"{source}: expected a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("task", "name", "classes", "architecture") if k not in data]
        if missing:
            raise LsmError(f"{source}: missing {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        try:
            manifest = cls(**values)
            manifest.version = int(manifest.version)
            manifest.input_size = int(manifest.input_size)
            manifest.pixel_size_um = float(manifest.pixel_size_um)
            manifest.crop_um = float(manifest.crop_um)
            manifest.temperature = float(manifest.temperature)
            manifest.demo = bool(manifest.demo)
        except (TypeError, ValueError) as exc:
            raise LsmError(f"{source}: a value has the wrong type ({exc})") from None
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest") -> None:
        check_name(self.name)
        for key in ("task", "architecture"):
            if not isinstance(getattr(self, key), str):
                raise LsmError(f"{source}: {key} must be a text value")
        expected = task_classes(self.task)
        if not isinstance(self.classes, list) or sorted(map(str, self.classes)) != sorted(expected):
            raise LsmError(
                f"{source}: classes {self.classes!r} do not match task {self.task!r} ({', '.join(expected)})"
            )
        if self.architecture not in nets.REGISTRY:
            raise LsmError(
                f"{source}: unknown architecture {self.architecture!r}; known: {', '.join(sorted(nets.REGISTRY))}"
            )
        if not 16 <= self.input_size <= 512:
            raise LsmError(f"{source}: input size {self.input_size} is outside 16..512")
        if self.version < 1:
            raise LsmError(f"{source}: version must be 1 or more")
        if not (self.pixel_size_um > 0 and self.crop_um > 0 and self.temperature > 0):
            raise LsmError(f"{source}: pixel size, crop size and temperature must be positive")


@dataclass
class ModelPackage:
    """A package on disk: its manifest and folder."""

    manifest: Manifest
    path: Path

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    def load(self, device: str | torch.device = "cpu") -> nn.Module:
        """Build the network and load its verified weights (eval mode, on ``device``)."""
        actual = file_sha256(self.weights_path)
        if actual != self.manifest.weights_sha256:
            raise LsmError(
                f"model {self.manifest.label}: the weights' sha256 ({actual[:12]}...) does not match the manifest "
                f"({self.manifest.weights_sha256[:12]}...): the file was changed or damaged; re-import the model"
            )
        net = nets.create(self.manifest.architecture, len(self.manifest.classes))
        state = load_file(str(self.weights_path), device="cpu")
        _load_state(net, state, self.manifest.label)
        return net.to(device).eval()


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        first = str(exc).strip().splitlines()[-1].strip()
        raise LsmError(f"{label}: the weights do not fit the architecture ({first})") from None
    if result.missing_keys or result.unexpected_keys:
        raise LsmError(
            f"{label}: the weights do not fit the architecture ({len(result.missing_keys)} missing and "
            f"{len(result.unexpected_keys)} unexpected tensors, e.g. "
            f"{(result.missing_keys or result.unexpected_keys)[0]!r})"
        )


def read_package(folder: str | Path) -> ModelPackage:
    folder = Path(folder)
    mpath = folder / MANIFEST_NAME
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LsmError(f"{folder}: not a model package (no {MANIFEST_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LsmError(f"{mpath}: not valid JSON ({exc})") from None
    manifest = Manifest.from_dict(data, str(mpath))
    if not (folder / WEIGHTS_NAME).is_file():
        raise LsmError(f"{folder}: the package has no {WEIGHTS_NAME}")
    return ModelPackage(manifest, folder)


def write_package(net: nn.Module, manifest: Manifest, folder: str | Path) -> ModelPackage:
    """Write ``net``'s weights and ``manifest`` (its sha256 filled in) to ``folder``, atomically."""
    folder = Path(folder)
    manifest = copy.deepcopy(manifest)  # the package owns its manifest; the caller's stays as it was
    manifest.validate()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"name": manifest.name, "task": manifest.task})
        manifest.weights_sha256 = file_sha256(tmp / WEIGHTS_NAME)
        manifest.created = manifest.created or datetime.now(UTC).isoformat(timespec="seconds")
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            raise LsmError(f"{folder} already exists")
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ModelPackage(manifest, folder)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a plain PyTorch state_dict (unpickled with ``weights_only=True``).

    A pickle that holds anything but tensors and plain containers (code, custom classes) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise LsmError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if path.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{"):
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise LsmError(f"{path.name}: not a valid safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code payloads, RuntimeError/EOFError for damage
        raise LsmError(
            f"{path.name}: refused. Only a plain state_dict of tensors is imported; this file holds something "
            f"else (possibly Python code that would run when opened) or is damaged. ({type(exc).__name__})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LsmError(f"{path.name}: expected a state_dict (a mapping of names to tensors)")
    return {str(k): v for k, v in obj.items()}


class ModelStore:
    """The registered models: ``<root>/<name>/<version>/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def packages(self) -> list[ModelPackage]:
        """Every valid package in the store, by name then version (damaged ones are skipped)."""
        found = []
        for name_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted(
                (p for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
            ):
                try:
                    found.append(read_package(version_dir))
                except LsmError:
                    continue
        return found

    def versions(self, name: str) -> list[int]:
        folder = self.root / check_name(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def get(self, name: str, version: int | None = None) -> ModelPackage:
        versions = self.versions(name)
        if not versions:
            known = sorted({p.manifest.name for p in self.packages()})
            raise LsmError(f"no model named {name!r}; registered: {', '.join(known) or 'none'}")
        version = versions[-1] if version is None else int(version)
        if version not in versions:
            raise LsmError(f"model {name!r} has no version {version}; versions: {', '.join(map(str, versions))}")
        return read_package(self.root / name / str(version))

    def resolve(self, name_or_path: str) -> ModelPackage:
        """A package from ``name``, ``name:version`` or the path of a package folder."""
        path = Path(name_or_path)
        if (path / MANIFEST_NAME).is_file():
            return read_package(path)
        name, _, version = name_or_path.partition(":")
        if version and not version.isdigit():
            raise LsmError(f"{name_or_path!r}: the version after ':' must be a number")
        return self.get(name, int(version) if version else None)

    def add(self, net: nn.Module, manifest: Manifest) -> ModelPackage:
        """Register ``net`` as the next version of ``manifest.name``."""
        check_name(manifest.name)
        manifest = copy.deepcopy(manifest)
        existing = self.versions(manifest.name)
        manifest.version = (existing[-1] + 1) if existing else 1
        return write_package(net, manifest, self.root / manifest.name / str(manifest.version))

    def import_weights(self, weights: str | Path, manifest_path: str | Path) -> ModelPackage:
        """Register a state_dict (``.pt``, ``.pth`` or ``.safetensors``) with a manifest the user supplies."""
        try:
            data = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LsmError(f"{manifest_path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LsmError(f"{manifest_path}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ("weights_sha256", "version", "created")}
        manifest = Manifest.from_dict(data, str(manifest_path))
        state = read_state_dict(weights)
        net = nets.create(manifest.architecture, len(manifest.classes))
        _load_state(net, state, Path(weights).name)
        return self.add(net, manifest)
