"""Demo models, trained on synthetic cells so that the app works with no lab data and no published weights.

``demo-lsm`` and ``demo-aging`` are ``small_cnn`` networks trained for about a minute each on two CPU
cores, on crops from :mod:`lsm_core.synthetic` (seed 1), and checked on crops from another seed. Their
manifests carry ``demo: true``; everything that shows them says "synthetic demo". They say nothing about
real cells.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lsm_core import synthetic
from lsm_core.datasets import LabelledData
from lsm_core.models import ModelPackage, ModelStore
from lsm_core.tasks import task_classes
from lsm_core.train import TrainConfig, train_and_register

DEMO_NAMES = {"lsm": "demo-lsm", "aging": "demo-aging"}
DEMO_RECIPE = {"n_train": 5000, "n_val": 1200, "epochs": 12, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.0}


def train_demo(
    task: str,
    store: ModelStore,
    n_train: int = DEMO_RECIPE["n_train"],
    epochs: int = DEMO_RECIPE["epochs"],
    architecture: str = "small_cnn",
    name: str | None = None,
    log: Callable[[str], None] = print,
) -> ModelPackage:
    """Train, calibrate, evaluate and register one demo model for ``task``; returns its package.

    Trained on ``n_train`` synthetic crops (seed 1; a fifth held out for validation and calibration), and
    evaluated on crops of another seed (2), which the model card shows.
    """
    classes = list(task_classes(task))
    x, y = synthetic.make_crops(task, n_train, seed=1)
    data = LabelledData(classes, x, y, np.arange(n_train), [f"synthetic seed 1 #{i}" for i in range(n_train)])
    vx, vy = synthetic.make_crops(task, DEMO_RECIPE["n_val"], seed=2)
    test = LabelledData(classes, vx, vy, np.arange(len(vy)), [])
    config = TrainConfig(
        architecture=architecture, epochs=epochs, batch_size=DEMO_RECIPE["batch_size"], lr=DEMO_RECIPE["lr"],
        weight_decay=DEMO_RECIPE["weight_decay"], seed=0,
    )

    def progress(epoch: int, loss: float, vloss: float | None, vacc: float | None) -> None:
        log(f"  {task} demo: epoch {epoch}/{epochs}  loss {loss:.3f}  validation accuracy {vacc:.3f}")

    return train_and_register(
        data, task, config, name or DEMO_NAMES[task], store, test=test, progress=progress, patience=None, demo=True,
        description="Synthetic demo: trained on synthetic DIC-like cells, not on real data. For trying the app only.",
    )


def ensure_demo_models(store: ModelStore | None = None, log: Callable[[str], None] = print) -> list[ModelPackage]:
    """Make sure ``demo-lsm`` and ``demo-aging`` are registered (training those that are missing)."""
    store = store or ModelStore()
    packages = []
    for task, name in DEMO_NAMES.items():
        if store.versions(name):
            packages.append(store.get(name))
            continue
        log(f"training the synthetic demo model {name} (about a minute on a CPU) ...")
        package = train_demo(task, store, log=log)
        test = package.manifest.metrics.get("test", package.manifest.metrics)
        log(f"registered {package.manifest.label}: accuracy {test['accuracy']:.3f} on synthetic cells of another seed")
        packages.append(package)
    return packages
