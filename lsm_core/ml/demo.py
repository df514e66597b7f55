"""Demo models, trained on synthetic cells so that the app works with no lab data and no published weights.

``demo-lsm`` and ``demo-aging`` are ``small_cnn`` networks trained on crops from
:mod:`lsm_core.imaging.synthetic` (seed 1), and checked on crops from another seed. Each comes in two versions
(:class:`Recipes`): a quick first one (v1: few crops, few epochs, seconds of CPU each), so that a first start
offers a usable model within a minute or two even on a busy machine, and then a better one (v2: about a minute
of CPU each), which takes over as the task's default when it is registered
(:func:`lsm_core.lab.registry.sync_models`). Their manifests carry ``demo: true`` and the stage they were
trained in (``training["demo_stage"]``: "first" or "better"); everything that shows them says "synthetic
demo". They say nothing about real cells. A demo model whose newest version carries no stage (trained before
there were two, or put there by a test) counts as finished.

The trainer uses one CPU thread: these networks are too small for a second to help much on an idle machine,
and on a busy one a second thread waits for a core at every layer (three to seven times slower, measured).

``python -m lsm_core serve`` trains what is missing in the background (``python -m lsm_core demo``, which
runs :func:`train_missing_demo_models`) while the app already answers. The trainer holds a lock file in the
model store (one trainer at a time, whoever starts it) and keeps a status record there, which
:func:`demo_status` reads for the app: which model, which stage and epoch, or why it failed.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from lsm_core.errors import LsmError
from lsm_core.ml.models import MANIFEST_NAME, ModelPackage, ModelStore

DEMO_NAMES = {"lsm": "demo-lsm", "aging": "demo-aging"}
FIRST, BETTER = "first", "better"  # the two stages of a demo model: a quick first version, then a better one
STAGE_KEY = "demo_stage"  # in a demo manifest's training summary: the stage it was trained in


class Recipe(TypedDict):
    """How one version of a demo model is trained: the network, how many synthetic crops, the training
    settings and the CPU threads."""

    architecture: str
    n_train: int
    n_val: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    threads: int


class Recipes(NamedTuple):
    """The two versions of each demo model: ``first`` (quick, registered within a minute or two of a first
    start) and ``better`` (registered after it, and made the default in its place)."""

    first: Recipe
    better: Recipe


FIRST_RECIPE: Recipe = {
    "architecture": "small_cnn",
    "n_train": 1200,
    "n_val": 400,
    "epochs": 4,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.0,
    "threads": 1,
}
DEMO_RECIPE: Recipe = {
    "architecture": "small_cnn",
    "n_train": 5000,
    "n_val": 1200,
    "epochs": 12,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 0.0,
    "threads": 1,
}
# LSM_DEMO_RECIPE=tiny, a setting for tests only: demo-named models trained in seconds (and worth little)
RECIPES: dict[str, Recipes] = {
    "full": Recipes(FIRST_RECIPE, DEMO_RECIPE),
    "tiny": Recipes(
        {
            **FIRST_RECIPE,
            "architecture": "tiny_cnn",
            "n_train": 600,
            "n_val": 200,
            "epochs": 4,
            "batch_size": 32,
            "lr": 3e-3,
        },
        {**DEMO_RECIPE, "n_train": 600, "n_val": 200, "epochs": 4, "batch_size": 32, "lr": 3e-3},
    ),
}
DEMO_STATUS_NAME = ".demo-training.json"  # in the model store: written by the trainer, read by demo_status()
DEMO_LOCK_NAME = ".demo-training.lock"  # in the model store: flock()ed by the one process that trains

# report(model, stage, step, epoch, epochs): what the trainer is doing, for the status record
Report = Callable[[str, str, str, int, int], None]

DESCRIPTIONS = {
    FIRST: "Synthetic demo, quick first version (trained in seconds so that the app has a model at once; a "
    "better version takes over as the default when it is trained): trained on synthetic DIC-like cells, not on "
    "real data. For trying the app only.",
    BETTER: "Synthetic demo: trained on synthetic DIC-like cells, not on real data. For trying the app only.",
}
# what the status record (and so the Classify page) says the trainer does, by stage
STEPS = {
    FIRST: {
        "cells": "making synthetic cells",
        "training": "training a quick first version",
        "evaluating": "calibrating and evaluating",
        "registering": "registering",
    },
    BETTER: {
        "cells": "making synthetic cells for a better version",
        "training": "training a better version",
        "evaluating": "calibrating and evaluating a better version",
        "registering": "registering a better version",
    },
}


def demo_recipe(name: str = "full") -> Recipes:
    """The demo recipes called ``name`` (the setting LSM_DEMO_RECIPE): ``full`` or ``tiny`` (tests only)."""
    if name not in RECIPES:
        raise LsmError(f"setting LSM_DEMO_RECIPE={name!r} must be one of {', '.join(RECIPES)}")
    return RECIPES[name]


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _StagedStore:
    """The model store, writing the demo stage into the training summary of the package it adds."""

    def __init__(self, store: ModelStore, stage: str) -> None:
        self.store, self.stage = store, stage

    def add(self, net: Any, manifest: Any) -> ModelPackage:
        manifest.training[STAGE_KEY] = self.stage
        return self.store.add(net, manifest)


def train_demo(
    task: str,
    store: ModelStore,
    n_train: int | None = None,
    epochs: int | None = None,
    architecture: str | None = None,
    name: str | None = None,
    log: Callable[[str], None] = print,
    recipe: Recipe | None = None,
    report: Report | None = None,
    stage: str = BETTER,
) -> ModelPackage:
    """Train, calibrate, evaluate and register one demo model version for ``task``; returns its package.

    Trained on ``n_train`` synthetic crops (seed 1; a fifth held out for validation and calibration), and
    evaluated on crops of another seed (2), which the model card shows. ``recipe`` defaults to
    :data:`DEMO_RECIPE`; ``stage`` (``"first"`` or ``"better"``) is recorded in the manifest and says which
    description it gets; ``report(model, stage, step, epoch, epochs)`` is told each step and epoch.
    """
    import numpy as np

    from lsm_core.classes import task_classes
    from lsm_core.imaging import synthetic
    from lsm_core.ml.datasets import LabelledData
    from lsm_core.ml.train import TrainConfig, train_and_register

    if stage not in STEPS:
        raise LsmError(f"a demo model's stage is {FIRST!r} or {BETTER!r}, not {stage!r}")
    recipe = recipe or DEMO_RECIPE
    n_train = n_train or recipe["n_train"]
    epochs = epochs or recipe["epochs"]
    name = name or DEMO_NAMES[task]
    steps = STEPS[stage]
    if report:
        report(name, stage, steps["cells"], 0, epochs)
    classes = list(task_classes(task))
    x, y = synthetic.make_crops(task, n_train, seed=1)
    data = LabelledData(classes, x, y, np.arange(n_train), [f"synthetic seed 1 #{i}" for i in range(n_train)])
    vx, vy = synthetic.make_crops(task, recipe["n_val"], seed=2)
    test = LabelledData(classes, vx, vy, np.arange(len(vy)), [])
    config = TrainConfig(
        architecture=architecture or recipe["architecture"],
        epochs=epochs,
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        weight_decay=recipe["weight_decay"],
        seed=0,
    )
    if report:
        report(name, stage, steps["training"], 0, epochs)

    def progress(epoch: int, loss: float, vloss: float | None, vacc: float | None) -> None:
        log(f"  {task} demo ({stage}): epoch {epoch}/{epochs}  loss {loss:.3f}  validation accuracy {vacc:.3f}")
        if report:
            report(name, stage, steps["training"] if epoch < epochs else steps["evaluating"], epoch, epochs)

    with _torch_threads(recipe["threads"]):
        return train_and_register(
            data,
            task,
            config,
            name,
            _StagedStore(store, stage),
            test=test,
            progress=progress,
            patience=None,
            demo=True,
            description=DESCRIPTIONS[stage],
        )


def _stage_of_newest(folder: Path) -> str | None:
    """The demo stage of the newest version in a model's folder of the store: None when it has no version,
    ``"better"`` when its manifest records no stage (a model trained before there were two, or by a test)."""
    try:
        versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    except OSError:
        return None
    if not versions:
        return None
    try:
        training = json.loads((folder / str(max(versions)) / MANIFEST_NAME).read_text(encoding="utf-8"))["training"]
        stage = training.get(STAGE_KEY)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return BETTER  # not ours to redo: a damaged package is the store's to report
    return FIRST if stage == FIRST else BETTER


def demo_plan(store: ModelStore) -> list[tuple[str, str]]:
    """What the demo trainer still has to do, in order: (model name, stage) pairs. The quick first versions of
    all missing models come before any better one, so that each task has a model as soon as possible."""
    stages = {name: _stage_of_newest(store.root / name) for name in DEMO_NAMES.values()}
    first = [(name, FIRST) for name, stage in stages.items() if stage is None]
    better = [(name, BETTER) for name, stage in stages.items() if stage != BETTER]
    return first + better


def missing_demo_models(store: ModelStore) -> list[str]:
    """The demo model names with a version still to train (none yet, or only the quick first one)."""
    return list(dict.fromkeys(name for name, _ in demo_plan(store)))


def ensure_demo_models(
    store: ModelStore,
    log: Callable[[str], None] = print,
    recipe: Recipes | None = None,
    report: Report | None = None,
    on_model: Callable[[ModelPackage], object] | None = None,
) -> list[ModelPackage]:
    """Make sure ``demo-lsm`` and ``demo-aging`` are in the store in their better versions (training what is
    missing, the quick first versions first); returns the newest package of each.

    ``on_model(package)`` is called after each version is trained (to register it in the database at once).
    Takes no lock: :func:`train_missing_demo_models` is this with the lock and the status record.
    """
    recipes = recipe or RECIPES["full"]
    tasks = {name: task for task, name in DEMO_NAMES.items()}
    for name, stage in demo_plan(store):
        settings = recipes.first if stage == FIRST else recipes.better
        what = "a quick first version of" if stage == FIRST else "a better version of"
        log(f"training {what} the synthetic demo model {name} ...")
        package = train_demo(tasks[name], store, log=log, recipe=settings, report=report, stage=stage)
        test = package.manifest.metrics.get("test", package.manifest.metrics)
        log(f"registered {package.manifest.label}: accuracy {test['accuracy']:.3f} on synthetic cells of another seed")
        if on_model:
            if report:
                report(name, stage, STEPS[stage]["registering"], settings["epochs"], settings["epochs"])
            on_model(package)
    return [store.get(name) for name in DEMO_NAMES.values()]


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
    step: str  # "starting", then what the trainer does, as people read it (:data:`STEPS`)
    epoch: int  # epochs done of `model` (0 while its data are made)
    epochs: int  # epochs the recipe of this stage trains `model`
    models: tuple[str, ...]  # the models this run trains, in order
    done: tuple[str, ...]  # the versions it has trained and registered (usable now): "demo-lsm v1", ...
    error: str | None  # why it failed or stopped; None while training
    stage: str = FIRST  # the version being trained: "first" (quick) or "better" (takes over as the default)

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
        stage=BETTER if record.get("stage") == BETTER else FIRST,
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
    if not held and status.models and all(_stage_of_newest(folder / name) == BETTER for name in status.models):
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

    def __init__(self, folder: Path, models: list[str], stage: str, epochs: int) -> None:
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
            "stage": stage,
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

    def report(self, model: str, stage: str, step: str, epoch: int, epochs: int) -> None:
        self.write(model=model, task=_task_of(model), stage=stage, step=step, epoch=epoch, epochs=epochs)

    def model_done(self, package: ModelPackage) -> None:
        m = package.manifest
        self.write(done=[*self.record["done"], f"{m.name} v{m.version}"])

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def train_missing_demo_models(
    store: ModelStore,
    log: Callable[[str], None] = print,
    on_model: Callable[[ModelPackage], object] | None = None,
    recipe: Recipes | None = None,
) -> list[ModelPackage]:
    """:func:`ensure_demo_models` by one process at a time, with a status record for :func:`demo_status`.

    Waits while another process trains (then finds its models and trains nothing). The record is removed
    when the models are trained and ``on_model`` has registered each; it says "failed" with the error when
    training fails, and is removed when the training is interrupted (Ctrl-C, or SIGTERM made an exception).
    ``recipe`` defaults to the full ones (:func:`demo_recipe`).
    """
    recipes = recipe or demo_recipe()
    with open(store.root / DEMO_LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another process is training the demo models; waiting for it ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        plan = demo_plan(store)
        if not plan:
            return ensure_demo_models(store, log)
        stage = plan[0][1]
        first = recipes.first if stage == FIRST else recipes.better
        status = _StatusRecord(store.root, list(dict.fromkeys(name for name, _ in plan)), stage, first["epochs"])

        def done(package: ModelPackage) -> None:
            if on_model:
                on_model(package)
            status.model_done(package)

        try:
            packages = ensure_demo_models(store, log, recipe=recipes, report=status.report, on_model=done)
        except Exception as exc:
            error = str(exc) if isinstance(exc, LsmError) else f"{type(exc).__name__}: {exc}"
            status.write(state="failed", error=error)
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: stopped on purpose, nothing to report
            status.remove()
            raise
        status.remove()  # before the lock is released: demo_status() never sees a finished run as stopped
        return packages
