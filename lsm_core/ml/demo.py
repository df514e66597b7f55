"""Demo models, trained on synthetic cells so that the app works with no lab data and no published weights.

``demo-lsm`` and ``demo-aging`` are ``small_cnn`` networks trained for about a minute each on two CPU
cores, on crops from :mod:`lsm_core.imaging.synthetic` (seed 1), and checked on crops from another seed. Their
manifests carry ``demo: true``; everything that shows them says "synthetic demo". They say nothing about
real cells.

``python -m lsm_core serve`` trains the missing ones in the background (``python -m lsm_core demo``, which
runs :func:`train_missing_demo_models`) while the app already answers. The trainer holds a lock file in the
model store (one trainer at a time, whoever starts it) and keeps a status record there, which
:func:`demo_status` reads for the app: which model, which epoch, or why it failed.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from lsm_core.errors import LsmError
from lsm_core.ml.models import ModelPackage, ModelStore

DEMO_NAMES = {"lsm": "demo-lsm", "aging": "demo-aging"}


class Recipe(TypedDict):
    """How a demo model is trained: how many synthetic crops, and the training settings."""

    n_train: int
    n_val: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float


DEMO_RECIPE: Recipe = {"n_train": 5000, "n_val": 1200, "epochs": 12, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.0}
# LSM_DEMO_RECIPE=tiny, a setting for tests only: demo-named models trained in seconds (and worth little)
RECIPES: dict[str, Recipe] = {
    "full": DEMO_RECIPE,
    "tiny": {"n_train": 600, "n_val": 200, "epochs": 4, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0},
}
DEMO_STATUS_NAME = ".demo-training.json"  # in the model store: written by the trainer, read by demo_status()
DEMO_LOCK_NAME = ".demo-training.lock"  # in the model store: flock()ed by the one process that trains

# report(model, step, epoch, epochs): what the trainer is doing, for the status record
Report = Callable[[str, str, int, int], None]


def demo_recipe(name: str = "full") -> Recipe:
    """The demo recipe called ``name`` (the setting LSM_DEMO_RECIPE): ``full`` or ``tiny`` (tests only)."""
    if name not in RECIPES:
        raise LsmError(f"setting LSM_DEMO_RECIPE={name!r} must be one of {', '.join(RECIPES)}")
    return RECIPES[name]


def train_demo(
    task: str,
    store: ModelStore,
    n_train: int | None = None,
    epochs: int | None = None,
    architecture: str = "small_cnn",
    name: str | None = None,
    log: Callable[[str], None] = print,
    recipe: Recipe | None = None,
    report: Report | None = None,
) -> ModelPackage:
    """Train, calibrate, evaluate and register one demo model for ``task``; returns its package.

    Trained on ``n_train`` synthetic crops (seed 1; a fifth held out for validation and calibration), and
    evaluated on crops of another seed (2), which the model card shows. ``recipe`` defaults to
    :data:`DEMO_RECIPE`; ``report(model, step, epoch, epochs)`` is told each step and epoch.
    """
    import numpy as np

    from lsm_core.classes import task_classes
    from lsm_core.imaging import synthetic
    from lsm_core.ml.datasets import LabelledData
    from lsm_core.ml.train import TrainConfig, train_and_register

    recipe = recipe or DEMO_RECIPE
    n_train = n_train or recipe["n_train"]
    epochs = epochs or recipe["epochs"]
    name = name or DEMO_NAMES[task]
    if report:
        report(name, "making synthetic cells", 0, epochs)
    classes = list(task_classes(task))
    x, y = synthetic.make_crops(task, n_train, seed=1)
    data = LabelledData(classes, x, y, np.arange(n_train), [f"synthetic seed 1 #{i}" for i in range(n_train)])
    vx, vy = synthetic.make_crops(task, recipe["n_val"], seed=2)
    test = LabelledData(classes, vx, vy, np.arange(len(vy)), [])
    config = TrainConfig(
        architecture=architecture,
        epochs=epochs,
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        weight_decay=recipe["weight_decay"],
        seed=0,
    )
    if report:
        report(name, "training", 0, epochs)

    def progress(epoch: int, loss: float, vloss: float | None, vacc: float | None) -> None:
        log(f"  {task} demo: epoch {epoch}/{epochs}  loss {loss:.3f}  validation accuracy {vacc:.3f}")
        if report:
            report(name, "training" if epoch < epochs else "calibrating and evaluating", epoch, epochs)

    return train_and_register(
        data,
        task,
        config,
        name,
        store,
        test=test,
        progress=progress,
        patience=None,
        demo=True,
        description="Synthetic demo: trained on synthetic DIC-like cells, not on real data. For trying the app only.",
    )


def missing_demo_models(store: ModelStore) -> list[str]:
    """The demo model names with no package in the store."""
    return [name for name in DEMO_NAMES.values() if not store.versions(name)]


def ensure_demo_models(
    store: ModelStore,
    log: Callable[[str], None] = print,
    recipe: Recipe | None = None,
    report: Report | None = None,
    on_model: Callable[[ModelPackage], object] | None = None,
) -> list[ModelPackage]:
    """Make sure ``demo-lsm`` and ``demo-aging`` are in the store (training those that are missing).

    ``on_model(package)`` is called after each model is trained (to register it in the database at once).
    Takes no lock: :func:`train_missing_demo_models` is this with the lock and the status record.
    """
    packages = []
    for task, name in DEMO_NAMES.items():
        if store.versions(name):
            packages.append(store.get(name))
            continue
        log(f"training the synthetic demo model {name} (about a minute on a CPU) ...")
        package = train_demo(task, store, log=log, recipe=recipe, report=report)
        test = package.manifest.metrics.get("test", package.manifest.metrics)
        log(f"registered {package.manifest.label}: accuracy {test['accuracy']:.3f} on synthetic cells of another seed")
        if on_model:
            if report:
                epochs = (recipe or DEMO_RECIPE)["epochs"]
                report(name, "registering", epochs, epochs)
            on_model(package)
        packages.append(package)
    return packages


# --- the status record -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoStatus:
    """What the demo trainer of a data dir is doing, from its status record (see :func:`demo_status`)."""

    state: str  # "training" (a trainer is at work), "failed" (it ended with `error`), "stopped" (it vanished)
    pid: int  # the trainer's process id (on `host`)
    host: str
    started: datetime  # when this training run began (UTC, timezone-aware)
    updated: datetime  # the record's last change (UTC, timezone-aware)
    model: str  # the model being (or last) trained: "demo-lsm" or "demo-aging"
    step: str  # "starting", "making synthetic cells", "training", "calibrating and evaluating", "registering"
    epoch: int  # epochs done of `model` (0 while its data are made)
    epochs: int  # epochs the recipe trains each model
    models: tuple[str, ...]  # the models this run trains, in order
    done: tuple[str, ...]  # those already trained and registered (usable now)
    error: str | None  # why it failed or stopped; None while training

    @property
    def running(self) -> bool:
        return self.state == "training"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _when(text) -> datetime:
    try:
        value = datetime.fromisoformat(str(text))
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _write_atomically(path: Path, record: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".demo-status-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _has_version(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and p.name.isdigit() for p in folder.iterdir())


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _status_from(record: dict) -> DemoStatus:
    return DemoStatus(
        state=str(record.get("state") or "training"),
        pid=int(record.get("pid") or 0),
        host=str(record.get("host") or ""),
        started=_when(record.get("started")),
        updated=_when(record.get("updated") or record.get("started")),
        model=str(record.get("model") or ""),
        step=str(record.get("step") or ""),
        epoch=int(record.get("epoch") or 0),
        epochs=int(record.get("epochs") or 0),
        models=tuple(record.get("models") or ()),
        done=tuple(record.get("done") or ()),
        error=record.get("error"),
    )


def demo_status(models_dir: str | Path) -> DemoStatus | None:
    """The demo training of a model store (its folder), or None when there is none.

    ``state`` is "training" only while a trainer holds the lock; a record left by a trainer that ended in
    an error says "failed" (with ``error``), one left by a trainer that vanished (killed, machine restarted)
    "stopped", until its models are in the store. A finished or interrupted training removes its record:
    then None. Cheap (a file read and a lock probe): the app may call it on every rerun.
    """
    folder = Path(models_dir)
    path = folder / DEMO_STATUS_NAME
    if not path.is_file():
        return None
    try:
        lock = open(folder / DEMO_LOCK_NAME, "a")
    except OSError:
        lock = None
    try:
        held = False
        if lock is not None:
            try:
                # a shared lock is refused only while a trainer holds its exclusive one; holding it, we read
                # a record that no trainer is writing
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    finally:
        if lock is not None:
            lock.close()
    try:
        status = _status_from(record)
    except (AttributeError, TypeError, ValueError):  # not a record this code wrote
        return None
    if lock is None:  # a lock file we may not open (a read-only store): is its process alive on this machine?
        held = status.host == socket.gethostname() and _alive(status.pid)
    if not held and status.models and all(_has_version(folder / name) for name in status.models):
        return None  # an old record of a run whose models have been trained since
    if status.state == "training" and not held:
        status = replace(
            status,
            state="stopped",
            error=(
                f"the demo training (process {status.pid} on {status.host or 'this machine'}) stopped before it "
                "finished; `python -m lsm_core serve` or `python -m lsm_core demo` starts it again"
            ),
        )
    return status


def _task_of(model: str) -> str | None:
    return next((t for t, n in DEMO_NAMES.items() if n == model), None)


class _StatusRecord:
    """The trainer's side: the record in the model store, rewritten atomically at every change."""

    def __init__(self, folder: Path, models: list[str], epochs: int) -> None:
        self.path = folder / DEMO_STATUS_NAME
        now = _now()
        self.record: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": now,
            "updated": now,
            "state": "training",
            "model": models[0],
            "task": _task_of(models[0]),
            "step": "starting",
            "epoch": 0,
            "epochs": epochs,
            "models": models,
            "done": [],
            "error": None,
        }
        self.write()

    def write(self, **fields) -> None:
        self.record.update(fields, updated=_now())
        _write_atomically(self.path, self.record)

    def report(self, model: str, step: str, epoch: int, epochs: int) -> None:
        self.write(model=model, task=_task_of(model), step=step, epoch=epoch, epochs=epochs)

    def model_done(self, package: ModelPackage) -> None:
        self.write(done=[*self.record["done"], package.manifest.name])

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def train_missing_demo_models(
    store: ModelStore,
    log: Callable[[str], None] = print,
    on_model: Callable[[ModelPackage], object] | None = None,
    recipe: Recipe | None = None,
) -> list[ModelPackage]:
    """:func:`ensure_demo_models` by one process at a time, with a status record for :func:`demo_status`.

    Waits while another process trains (then finds its models and trains nothing). The record is removed
    when the models are trained and ``on_model`` has registered each; it says "failed" with the error when
    training fails, and is removed when the training is interrupted (Ctrl-C, or SIGTERM made an exception).
    ``recipe`` defaults to the full one (:func:`demo_recipe`).
    """
    recipe = recipe or demo_recipe()
    with open(store.root / DEMO_LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another process is training the demo models; waiting for it ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        missing = missing_demo_models(store)
        if not missing:
            return ensure_demo_models(store, log)
        status = _StatusRecord(store.root, missing, recipe["epochs"])

        def done(package: ModelPackage) -> None:
            if on_model:
                on_model(package)
            status.model_done(package)

        try:
            packages = ensure_demo_models(store, log, recipe=recipe, report=status.report, on_model=done)
        except Exception as exc:
            error = str(exc) if isinstance(exc, LsmError) else f"{type(exc).__name__}: {exc}"
            status.write(state="failed", error=error)
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: stopped on purpose, nothing to report
            status.remove()
            raise
        status.remove()  # before the lock is released: demo_status() never sees a finished run as stopped
        return packages
