"""The settings: every environment variable of the README's table and the sign-in mode, in one object.

:func:`current` reads the environment once per process and keeps the :class:`Settings` it made; it reads
again only when one of the variables (or a secrets file) changed, which happens in tests, not in a running
app. Nothing else in the project reads the environment: functions get what they need from a ``Settings``
(or from a :class:`lsm_core.lab.history.Lab`, which carries one), so the environment is never a hidden input.

| variable | default | meaning |
| --- | --- | --- |
| LSM_DATA_DIR | ./data | the SQLite database, the blob store and the model store |
| LSM_DATABASE_URL | sqlite:///$LSM_DATA_DIR/lsm.db | the history (``postgresql://user@host:5432/db`` for a lab) |
| LSM_BLOB_DIR | $LSM_DATA_DIR/blobs | uploaded files by sha256 |
| LSM_USER | the login name | who acts, in lab mode and on the command line |
| LSM_ADMINS | (lab mode: everyone; signed in: nobody) | comma-separated administrators |
| LSM_DEVICE | auto | ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` |
| LSM_PRECISION | auto | ``auto`` (bf16 autocast on CUDA and on CPUs with native bf16), ``bf16``, ``fp32`` |
| LSM_PIXEL_SIZE_UM | the model's (0.2) | the microscope's calibration in micrometres per pixel |
| LSM_MAX_IMAGE_PIXELS | 100000000 | largest image (width x height) decoded |
| LSM_MAX_ARCHIVE_MEMBERS | 20000 | most files read from one ZIP (and pages from one TIFF) |
| LSM_MAX_ARCHIVE_BYTES | 4294967296 | most bytes unpacked from one ZIP |
| LSM_DEMO_RECIPE | full | tests only: ``tiny`` trains the demo models in seconds |

Sign-in is on when an ``[auth]`` section is configured in ``~/.streamlit/secrets.toml`` or
``./.streamlit/secrets.toml`` (Streamlit's own places).
"""

from __future__ import annotations

import getpass
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from lsm_core.errors import LsmError
from lsm_core.imaging.images import Limits

VARIABLES = (
    "LSM_DATA_DIR",
    "LSM_DATABASE_URL",
    "LSM_BLOB_DIR",
    "LSM_USER",
    "LSM_ADMINS",
    "LSM_DEVICE",
    "LSM_PRECISION",
    "LSM_PIXEL_SIZE_UM",
    "LSM_MAX_IMAGE_PIXELS",
    "LSM_MAX_ARCHIVE_MEMBERS",
    "LSM_MAX_ARCHIVE_BYTES",
    "LSM_DEMO_RECIPE",
)
PRECISIONS = ("auto", "bf16", "fp32")
DEMO_RECIPES = ("full", "tiny")


def secrets_files() -> list[Path]:
    """Where Streamlit reads secrets from (its default ``secrets.files``): the user's, then the app's folder."""
    return [Path.home() / ".streamlit" / "secrets.toml", Path.cwd() / ".streamlit" / "secrets.toml"]


def _auth_configured(files: list[Path]) -> bool:
    for path in files:
        try:
            with open(path, "rb") as fh:
                if tomllib.load(fh).get("auth"):
                    return True
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LsmError(f"{path} cannot be read ({exc}); fix it or remove it") from None
    return False


def _number(env: Mapping[str, str], name: str, default: float, kind: type = float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise LsmError(f"setting {name}={raw!r} is not a number") from None
    if not value > 0:
        raise LsmError(f"setting {name}={raw!r} must be positive")
    return value


def database_url_for(raw: str, data_dir: Path) -> str:
    """The SQLAlchemy URL of LSM_DATABASE_URL (``postgresql://`` means psycopg 3), or the data dir's SQLite file."""
    raw = raw.strip()
    if raw.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + raw.split("://", 1)[1]
    return raw or f"sqlite:///{data_dir.resolve() / 'lsm.db'}"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    database_url: str = ""
    blob_dir: Path = Path("data/blobs")
    user: str = ""
    admins: frozenset[str] = frozenset()
    device: str = "auto"
    precision: str = "auto"
    pixel_size_um: float | None = None
    limits: Limits = field(default_factory=Limits)
    demo_recipe: str = "full"
    signed_in: bool = False  # [auth] configured: people sign in with the lab's identity provider

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, secrets: list[Path] | None = None) -> Settings:
        """Read and check every setting (an LsmError names a wrong one)."""
        env = os.environ if env is None else env
        data = Path(env.get("LSM_DATA_DIR", "").strip() or "data").expanduser()
        precision = env.get("LSM_PRECISION", "").strip().lower() or "auto"
        if precision not in PRECISIONS:
            raise LsmError(f"setting LSM_PRECISION={precision!r} must be {', '.join(PRECISIONS)}")
        recipe = env.get("LSM_DEMO_RECIPE", "").strip().lower() or "full"
        if recipe not in DEMO_RECIPES:
            raise LsmError(f"setting LSM_DEMO_RECIPE={recipe!r} must be one of {', '.join(DEMO_RECIPES)}")
        pixel = _number(env, "LSM_PIXEL_SIZE_UM", 0.0) if env.get("LSM_PIXEL_SIZE_UM", "").strip() else None
        defaults = Limits()
        return cls(
            data_dir=data,
            database_url=database_url_for(env.get("LSM_DATABASE_URL", ""), data),
            blob_dir=Path(env.get("LSM_BLOB_DIR", "").strip() or data / "blobs").expanduser(),
            user=env.get("LSM_USER", "").strip() or getpass.getuser(),
            admins=frozenset(a.strip() for a in env.get("LSM_ADMINS", "").split(",") if a.strip()),
            device=env.get("LSM_DEVICE", "").strip() or "auto",
            precision=precision,
            pixel_size_um=pixel,
            limits=Limits(
                max_image_pixels=int(_number(env, "LSM_MAX_IMAGE_PIXELS", defaults.max_image_pixels, int)),
                max_archive_members=int(_number(env, "LSM_MAX_ARCHIVE_MEMBERS", defaults.max_archive_members, int)),
                max_archive_bytes=int(_number(env, "LSM_MAX_ARCHIVE_BYTES", defaults.max_archive_bytes, int)),
            ),
            demo_recipe=recipe,
            signed_in=_auth_configured(secrets_files() if secrets is None else secrets),
        )

    def with_(self, **changes) -> Settings:
        """A copy with some settings changed (tests, and serve's children)."""
        return replace(self, **changes)

    def environment(self) -> dict[str, str]:
        """These settings as environment variables (absolute paths), for child processes."""
        env = {
            "LSM_DATA_DIR": str(self.data_dir.resolve()),
            "LSM_DATABASE_URL": self.database_url,
            "LSM_BLOB_DIR": str(self.blob_dir.resolve()),
            "LSM_USER": self.user,
            "LSM_DEVICE": self.device,
            "LSM_PRECISION": self.precision,
            "LSM_DEMO_RECIPE": self.demo_recipe,
            "LSM_MAX_IMAGE_PIXELS": str(self.limits.max_image_pixels),
            "LSM_MAX_ARCHIVE_MEMBERS": str(self.limits.max_archive_members),
            "LSM_MAX_ARCHIVE_BYTES": str(self.limits.max_archive_bytes),
        }
        if self.admins:
            env["LSM_ADMINS"] = ",".join(sorted(self.admins))
        if self.pixel_size_um is not None:
            env["LSM_PIXEL_SIZE_UM"] = repr(self.pixel_size_um)
        return env


_lock = threading.Lock()
_cached: tuple[tuple, Settings] | None = None


def _fingerprint() -> tuple:
    stamps: list[tuple[str, int | None]] = []
    for path in secrets_files():
        try:
            stamps.append((str(path), path.stat().st_mtime_ns))
        except OSError:
            stamps.append((str(path), None))
    return tuple(os.environ.get(name) for name in VARIABLES) + tuple(stamps)


def current() -> Settings:
    """The settings of this process (read once; again only when the environment or a secrets file changed)."""
    global _cached
    key = _fingerprint()
    with _lock:
        if _cached is None or _cached[0] != key:
            _cached = (key, Settings.from_env())
        return _cached[1]
