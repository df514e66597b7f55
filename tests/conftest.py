"""Shared fixtures: a private data dir per test session and a tiny registered model."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("lsm-data")
    old = os.environ.get("LSM_DATA_DIR")
    os.environ["LSM_DATA_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("LSM_DATA_DIR", None)
    else:
        os.environ["LSM_DATA_DIR"] = old


@pytest.fixture(scope="session")
def tiny_lsm_package(data_dir):
    """A tiny_cnn LSM model trained two epochs on 300 synthetic crops, registered as `tiny-lsm`."""
    from lsm_core import synthetic
    from lsm_core.models import Manifest, ModelStore
    from lsm_core.train import TrainConfig, fit

    x, y = synthetic.make_crops("lsm", 300, seed=11)
    net, _ = fit(x, y, 3, TrainConfig(architecture="tiny_cnn", epochs=2, batch_size=64, lr=3e-3, weight_decay=0.0))
    manifest = Manifest(task="lsm", name="tiny-lsm", classes=["LT-HSC", "ST-HSC", "MPP"], architecture="tiny_cnn")
    return ModelStore().add(net, manifest)
