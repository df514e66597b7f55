"""The settings: every environment variable of the README's table and the sign-in mode, in one object.

:func:`current` reads the environment once per process and keeps the :class:`Settings` it made; it reads
again only when one of the variables (or a secrets file) changed, which happens in tests, not in a running
app. Nothing else in the project reads the environment: functions get what they need from a ``Settings``
(or from a :class:`lsm_core.lab.lab.Lab`, which carries one), so the environment is never a hidden input.

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
| LSM_MAX_IMAGE_BYTES | 400000000 | most memory one decoded page may take (samples as stored plus a float grey copy) |
| LSM_MAX_FILE_BYTES | 2147483648 | largest single file (or ZIP member) read into memory |
| LSM_MAX_ARCHIVE_MEMBERS | 20000 | most files read from one ZIP (and pages from one TIFF) |
| LSM_MAX_ARCHIVE_BYTES | 4294967296 | most bytes unpacked from one ZIP |
| LSM_MAX_PLANES | 20000 | most planes (and channels, z planes, time points, scenes) one file may declare |
| LSM_DEMO_RECIPE | full | tests only: ``tiny`` trains the demo models in seconds |
| LSM_ADDRESS | 127.0.0.1 | the address ``serve`` listens on (``0.0.0.0``: every interface of the machine) |
| LSM_ALLOWED_DOMAINS | (anyone the provider knows) | signed-in mode: e-mail domains (or addresses) that may sign in |
| LSM_MAX_SECONDS_PER_IMAGE | 120 | a worker gives up reading and finding the cells of one image after this long |
| LSM_SALIENCY_MAX_CELLS | 2000 | most cells a member may ask saliency maps for at once (administrators: any number) |
| LSM_PREP_WORKERS | cores - 1, as memory allows | a worker's processes that read images and find cells (0: none) |
| LSM_SCORECAM_CHANNELS | 8 | Score-CAM's k: channels of the target layer scored per cell, by variance (0: all) |
| LSM_BLOB_HELPERS | 2 | helper processes that store uploads for a busy web process (0: none) |
| LSM_CHROMIUM | chromium on the PATH | the browser that draws figures as SVG, PDF and PNG (kaleido) |
| LSM_RUNTIME | auto | a CPU worker's networks: ``torch``, ``onnx``, or ``auto`` (onnx where torch runs fp32) |
| LSM_APP_URL | (none) | where the lab's copy of this app is (http or https): a BioImage Model Zoo export cites it |

Sign-in is on when an ``[auth]`` section is configured in ``~/.streamlit/secrets.toml`` or
``./.streamlit/secrets.toml`` (Streamlit's own places); :func:`auth_problem` says when its ``cookie_secret`` is
one that anyone could know or guess, so that neither the app nor ``serve`` starts with it, and
:func:`auth_warning` when other accounts of the machine can read (or change) the file that holds it.
"""

from __future__ import annotations

import getpass
import math
import os
import stat
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from lsm_core.errors import LsmError, as_number
from lsm_core.imaging.readers.base import Limits

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
    "LSM_MAX_IMAGE_BYTES",
    "LSM_MAX_FILE_BYTES",
    "LSM_MAX_ARCHIVE_MEMBERS",
    "LSM_MAX_ARCHIVE_BYTES",
    "LSM_MAX_PLANES",
    "LSM_DEMO_RECIPE",
    "LSM_ADDRESS",
    "LSM_ALLOWED_DOMAINS",
    "LSM_MAX_SECONDS_PER_IMAGE",
    "LSM_SALIENCY_MAX_CELLS",
    "LSM_PREP_WORKERS",
    "LSM_SCORECAM_CHANNELS",
    "LSM_BLOB_HELPERS",
    "LSM_CHROMIUM",
    "LSM_RUNTIME",
    "LSM_APP_URL",
)
RUNTIMES = ("auto", "torch", "onnx")
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


# cookie_secret signs the cookie that says who is signed in: anyone who knows it signs a cookie of their own and is
# whoever they write in it (administrators included) without the identity provider. So signed-in mode refuses a
# short one and one printed in a README or a manual. Compared without case, spaces or punctuation; the phrases
# are refused inside a longer secret too ("a long random string 123...").
MIN_COOKIE_SECRET_BYTES = 32
MIN_COOKIE_SECRET_CHARACTERS = 8  # different characters: a random secret of 32 bytes has far more
MIN_COOKIE_SECRET_BITS = 128  # what guessing it must take, as :func:`secret_bits` estimates it
EXAMPLE_COOKIE_SECRETS = (
    "a long random string",  # this project's README
    "a-long-random-string-for-the-test-only",  # this project's tests, before they made a random one
    "xxx",  # Streamlit's documentation
    "changeme",
    "change me",
    "changeit",
    "replace me",
    "secret",
    "my secret",
    "super secret",
    "cookie secret",
    "your cookie secret",
    "your secret",
    "secret key",
    "password",
    "random string",
    "example",
    "todo",
)
EXAMPLE_COOKIE_SECRET_PHRASES = (
    "alongrandomstring",
    "randomstring",
    "changeme",
    "replaceme",
    "cookiesecret",
    "yoursecret",
    "forthetestonly",
)


def _letters(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def secret_bits(secret: str, longest: int = 4096) -> float:
    """About how many bits of chance a secret holds: what it takes to write it down briefly, read from left to
    right. A character costs log2 of the characters of its kinds (digits 10, lower case 26, upper case 26,
    ASCII punctuation and space 33, anything else 100: a random secret's every character); a piece that repeats
    one before it ("abcdefgh" * 4, "password" twice) costs only where it starts and how long it is; a run that
    goes on by the same step as the two characters before it ("abcdef", "13579", "aaaa") costs only its length.
    A random secret keeps nearly all of its characters' bits (``secrets.token_hex(16)`` about 165, its true 128
    being fewer only because hex digits are 16 of the 36 counted); a pattern keeps a few dozen. Only the first
    ``longest`` characters are read (enough for any secret worth its name).

    >>> round(secret_bits("abcdefgh" * 4))
    22
    >>> secret_bits("9f86d081884c7d659a2feaa0c55ad015") > 128
    True
    """
    text = secret[:longest]
    kinds = [
        (10, any(c.isascii() and c.isdigit() for c in text)),
        (26, any(c.isascii() and c.islower() for c in text)),
        (26, any(c.isascii() and c.isupper() for c in text)),
        (33, any(c.isascii() and not c.isalnum() for c in text)),
        (100, any(not c.isascii() for c in text)),
    ]
    per_character = math.log2(max(2, sum(size for size, present in kinds if present)))
    bits, i, n = 0.0, 0, len(text)
    while i < n:
        copy = 0  # the longest piece starting here that starts earlier too (it may overlap this one)
        for j in range(i):
            k = 0
            while i + k < n and text[j + k] == text[i + k]:
                k += 1
            copy = max(copy, k)
        run = 0  # how far the step between the two characters before goes on
        if i >= 2:
            step = ord(text[i - 1]) - ord(text[i - 2])
            while i + run < n and ord(text[i + run]) - ord(text[i + run - 1]) == step:
                run += 1
        if copy >= 3 and copy >= run:
            bits += math.log2(i) + math.log2(copy) + 1
            i += copy
        elif run >= 2:
            bits += math.log2(run) + 1
            i += run
        else:
            bits += per_character
            i += 1
    return bits


def _effective_auth(files: list[Path]) -> tuple[Path, object] | None:
    """The ``[auth]`` section Streamlit signs in with, and its file: Streamlit reads ``files`` in order and a
    later file's ``[auth]`` replaces an earlier one's whole. None without one. An unreadable file raises."""
    found = None
    for path in files:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LsmError(f"{path} cannot be read ({exc}); fix it or remove it") from None
        if "auth" in data:
            found = (path, data["auth"])
    return found if found is not None and found[1] else None


def auth_problem(files: list[Path] | None = None) -> str | None:
    """Why signed-in mode must not start with the ``[auth]`` section of the secrets ``files`` (default: where
    Streamlit looks, :func:`secrets_files`, from the working folder of this process), or None when it may (or
    when there is no ``[auth]``: lab mode).

    The section's ``cookie_secret`` must be at least 32 bytes, not made of a handful of characters, and none
    of :data:`EXAMPLE_COOKIE_SECRETS` (nor hold one of :data:`EXAMPLE_COOKIE_SECRET_PHRASES`). The message says
    which file and how to make a good one. The web app shows it instead of anything else; ``serve`` refuses to
    start with it.
    """
    try:
        found = _effective_auth(secrets_files() if files is None else files)
    except LsmError as exc:
        return f"Sign-in cannot start: {exc}."
    if found is None:
        return None
    path, auth = found
    fix = (
        'Replace it with a long random one (make one with: python -c "import secrets; print(secrets.token_hex(32))") '
        "and restart the app; everyone signs in again afterwards."
    )
    where = f"the cookie_secret in the [auth] section of {path}"
    if not isinstance(auth, dict):
        return f"Sign-in cannot start: [auth] in {path} is not a section of settings."
    secret = auth.get("cookie_secret")
    if secret is None:
        return (
            f"Sign-in cannot start: the [auth] section of {path} has no cookie_secret, which signs the cookie "
            f"that says who is signed in. {fix.replace('Replace it with', 'Add')}"
        )
    if not isinstance(secret, str):
        return f"Sign-in cannot start: {where} is not text. {fix}"
    danger = (
        "can sign a sign-in cookie of their own and be anyone, an administrator included, without the lab's "
        "identity provider."
    )
    letters = _letters(secret)
    if letters in {_letters(example) for example in EXAMPLE_COOKIE_SECRETS} - {""} or any(
        phrase in letters for phrase in EXAMPLE_COOKIE_SECRET_PHRASES
    ):
        return f"Sign-in is not safe: {where} is an example from documentation; anyone who knows it {danger} {fix}"
    size = len(secret.encode())
    if size < MIN_COOKIE_SECRET_BYTES:
        return (
            f"Sign-in is not safe: {where} is {size} bytes long, under {MIN_COOKIE_SECRET_BYTES}; anyone who "
            f"guesses it {danger} {fix}"
        )
    if len(set(secret)) < MIN_COOKIE_SECRET_CHARACTERS:
        return (
            f"Sign-in is not safe: {where} is not random (only {len(set(secret))} different characters); anyone "
            f"who guesses it {danger} {fix}"
        )
    bits = secret_bits(secret)
    if bits < MIN_COOKIE_SECRET_BITS:
        return (
            f"Sign-in is not safe: {where} is not random: it repeats a piece of itself or runs on like abcd "
            f"(about {bits:.0f} bits of chance, under {MIN_COOKIE_SECRET_BITS}); anyone who guesses it {danger} {fix}"
        )
    return None


def auth_warning(files: list[Path] | None = None) -> str | None:
    """What to warn an administrator about the file signed-in mode reads its ``[auth]`` section from (``files``
    as :func:`auth_problem`), or None: that other accounts of this machine can read it (and so sign a cookie with
    its ``cookie_secret``) or change it (and so point sign-in at a provider of their own). Not a refusal: the
    owner of the file may know why; ``chmod 600`` ends it. None without ``[auth]``, where the file cannot be read
    (:func:`auth_problem` says so), and on Windows (no such permission bits)."""
    try:
        found = _effective_auth(secrets_files() if files is None else files)
        if found is None or os.name == "nt":
            return None
        mode = found[0].stat().st_mode
    except (LsmError, OSError):
        return None
    path = found[0]
    others = [what for what, bits in (("read", 0o044), ("changed", 0o022)) if mode & bits]
    if not others:
        return None
    return (
        f"{path} can be {' and '.join(others)} by other accounts of this machine (its permissions are "
        f"{stat.filemode(mode)}): whoever reads its cookie_secret can sign a sign-in cookie of their own and be "
        f"anyone, an administrator included. Make it readable by the app's account only: chmod 600 {path}"
    )


def _count(env: Mapping[str, str], name: str) -> int | None:
    """A whole number of 0 or more, or None when the variable is not set."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    value = as_number(raw, int, f"setting {name}={raw!r} is not a whole number")
    if value < 0:
        raise LsmError(f"setting {name}={raw!r} must be 0 or more")
    return value


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


def _web_address(name: str, raw: str) -> str | None:
    """The setting ``name``'s value ``raw`` as an http(s) address with a host, or None when it is empty."""
    from urllib.parse import urlsplit

    raw = raw.strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in raw):
        raise LsmError(f"setting {name}={raw!r} is not a web address (http:// or https:// and a host)")
    return raw


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
    address: str = "127.0.0.1"  # where serve listens: this machine only, unless told otherwise
    allowed_domains: frozenset[str] = frozenset()  # who may sign in (e-mail domains or whole addresses); empty: anyone
    max_seconds_per_image: float = 120.0  # a worker gives up reading one image after this long
    saliency_max_cells: int = 2000  # most cells a member may ask saliency maps for at once (administrators: any)
    prep_workers: int | None = None  # a worker's preparation processes (None: lsm_core.imaging.prepare's default)
    scorecam_channels: int | None = None  # Score-CAM's k (None: lsm_core.ml.saliency's default; 0: every channel)
    blob_helpers: int | None = None  # blob-writing helper processes (None: lsm_core.lab.blobwriter's default; 0: none)
    chromium: str | None = None  # the browser kaleido draws figures with (None: chromium or chrome on the PATH)
    runtime: str = "auto"  # what runs the networks on a CPU worker (lsm_core.ml.predict.make_predictor)
    app_url: str | None = None  # where the lab's copy of the app is: cited by its Model Zoo exports (bioimageio)

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
        runtime = env.get("LSM_RUNTIME", "").strip().lower() or "auto"
        if runtime not in RUNTIMES:
            raise LsmError(f"setting LSM_RUNTIME={runtime!r} must be one of {', '.join(RUNTIMES)}")
        app_url = _web_address("LSM_APP_URL", env.get("LSM_APP_URL", ""))
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
                max_image_bytes=int(_number(env, "LSM_MAX_IMAGE_BYTES", defaults.max_image_bytes, int)),
                max_file_bytes=int(_number(env, "LSM_MAX_FILE_BYTES", defaults.max_file_bytes, int)),
                max_archive_members=int(_number(env, "LSM_MAX_ARCHIVE_MEMBERS", defaults.max_archive_members, int)),
                max_archive_bytes=int(_number(env, "LSM_MAX_ARCHIVE_BYTES", defaults.max_archive_bytes, int)),
                max_planes=int(_number(env, "LSM_MAX_PLANES", defaults.max_planes, int)),
            ),
            demo_recipe=recipe,
            signed_in=_auth_configured(secrets_files() if secrets is None else secrets),
            address=env.get("LSM_ADDRESS", "").strip() or "127.0.0.1",
            allowed_domains=frozenset(
                d.strip().lower().lstrip("@") for d in env.get("LSM_ALLOWED_DOMAINS", "").split(",") if d.strip()
            ),
            max_seconds_per_image=float(_number(env, "LSM_MAX_SECONDS_PER_IMAGE", 120.0)),
            saliency_max_cells=int(_number(env, "LSM_SALIENCY_MAX_CELLS", 2000, int)),
            prep_workers=_count(env, "LSM_PREP_WORKERS"),
            scorecam_channels=_count(env, "LSM_SCORECAM_CHANNELS"),
            blob_helpers=_count(env, "LSM_BLOB_HELPERS"),
            chromium=env.get("LSM_CHROMIUM", "").strip() or None,
            runtime=runtime,
            app_url=app_url,
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
            "LSM_MAX_IMAGE_BYTES": str(self.limits.max_image_bytes),
            "LSM_MAX_FILE_BYTES": str(self.limits.max_file_bytes),
            "LSM_ADDRESS": self.address,
            "LSM_MAX_SECONDS_PER_IMAGE": repr(self.max_seconds_per_image),
            "LSM_SALIENCY_MAX_CELLS": str(self.saliency_max_cells),
            **({"LSM_PREP_WORKERS": str(self.prep_workers)} if self.prep_workers is not None else {}),
            **({"LSM_SCORECAM_CHANNELS": str(self.scorecam_channels)} if self.scorecam_channels is not None else {}),
            **({"LSM_BLOB_HELPERS": str(self.blob_helpers)} if self.blob_helpers is not None else {}),
            **({"LSM_CHROMIUM": self.chromium} if self.chromium else {}),
            "LSM_RUNTIME": self.runtime,
            **({"LSM_APP_URL": self.app_url} if self.app_url else {}),
            "LSM_MAX_ARCHIVE_MEMBERS": str(self.limits.max_archive_members),
            "LSM_MAX_ARCHIVE_BYTES": str(self.limits.max_archive_bytes),
            "LSM_MAX_PLANES": str(self.limits.max_planes),
        }
        if self.admins:
            env["LSM_ADMINS"] = ",".join(sorted(self.admins))
        if self.allowed_domains:
            env["LSM_ALLOWED_DOMAINS"] = ",".join(sorted(self.allowed_domains))
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
