"""Helpers shared by the tests that start the app or need its demo models."""
from __future__ import annotations

import socket
from pathlib import Path

DEMO = (("lsm", "demo-lsm", ["LT-HSC", "ST-HSC", "MPP"]), ("aging", "demo-aging", ["young", "aged"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_tiny_demo_models(models_dir: Path, train_epochs: int = 0) -> None:
    """Register tiny_cnn models under the demo names, so that `serve` need not train for minutes.

    With ``train_epochs`` they are trained that long on 200 synthetic crops (predictions then vary).
    """
    from lsm_core import nets, synthetic
    from lsm_core.models import Manifest, ModelStore
    from lsm_core.train import TrainConfig, fit

    store = ModelStore(models_dir)
    for task, name, classes in DEMO:
        if train_epochs:
            x, y = synthetic.make_crops(task, 200, seed=3)
            net, _ = fit(x, y, len(classes), TrainConfig(architecture="tiny_cnn", epochs=train_epochs, batch_size=64,
                                                          lr=3e-3, weight_decay=0))
        else:
            net = nets.create("tiny_cnn", len(classes))
        store.add(net, Manifest(task=task, name=name, classes=classes, architecture="tiny_cnn", demo=True))
