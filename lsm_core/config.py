"""Settings, read from environment variables (every one is documented in the README).

| variable | default | meaning |
| --- | --- | --- |
| LSM_DATA_DIR | ./data | where the model store (and later the database and blob store) live |
| LSM_DEVICE | auto | `cuda`, `cuda:N`, `cpu` or `auto` (CUDA when present) |
| LSM_PRECISION | auto | `auto` (bf16 autocast on CUDA and on CPUs with native bf16), `bf16` or `fp32` |
| LSM_PIXEL_SIZE_UM | the model's (0.2) | the microscope's calibration, micrometres per pixel |
| LSM_MAX_IMAGE_PIXELS | 100000000 | largest image (width x height) that is decoded |
| LSM_MAX_ARCHIVE_MEMBERS | 20000 | most files read from one ZIP |
| LSM_MAX_ARCHIVE_BYTES | 4294967296 | most bytes unpacked from one ZIP |
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lsm_core.errors import LsmError


def _env_number(name: str, default: float, kind: type = float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise LsmError(f"setting {name}={raw!r} is not a number") from None
    if value <= 0:
        raise LsmError(f"setting {name}={raw!r} must be positive")
    return value


@dataclass(frozen=True)
class Limits:
    """Bounds applied before anything is decoded or unpacked."""

    max_image_pixels: int = 100_000_000
    max_archive_members: int = 20_000
    max_archive_bytes: int = 4 * 1024**3

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(
            max_image_pixels=int(_env_number("LSM_MAX_IMAGE_PIXELS", cls.max_image_pixels, int)),
            max_archive_members=int(_env_number("LSM_MAX_ARCHIVE_MEMBERS", cls.max_archive_members, int)),
            max_archive_bytes=int(_env_number("LSM_MAX_ARCHIVE_BYTES", cls.max_archive_bytes, int)),
        )


DEFAULT_PIXEL_SIZE_UM = 0.2


def data_dir() -> Path:
    """The data folder (created on demand)."""
    path = Path(os.environ.get("LSM_DATA_DIR") or "data").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_store_dir() -> Path:
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pixel_size_um() -> float | None:
    """The microscope's calibration from LSM_PIXEL_SIZE_UM, or None when unset (then the model's own)."""
    if not os.environ.get("LSM_PIXEL_SIZE_UM", "").strip():
        return None
    return _env_number("LSM_PIXEL_SIZE_UM", DEFAULT_PIXEL_SIZE_UM)


def device_setting() -> str:
    return os.environ.get("LSM_DEVICE", "auto").strip() or "auto"


def precision_setting() -> str:
    value = os.environ.get("LSM_PRECISION", "auto").strip().lower() or "auto"
    if value not in ("auto", "bf16", "fp32"):
        raise LsmError(f"setting LSM_PRECISION={value!r} must be auto, bf16 or fp32")
    return value
