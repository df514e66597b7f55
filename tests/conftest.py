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


# --- databases: every history test runs on SQLite and on PostgreSQL -------------------------------
PG_ADMIN = os.environ.get("LSM_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001
        return str(exc).strip().splitlines()[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database URL: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.db'}"
        return
    problem = _pg_available()
    if problem:
        message = f"PostgreSQL is not reachable at {PG_ADMIN}: {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    import uuid

    import psycopg

    name = f"lsm_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def history(db_url, data_dir, tiny_lsm_package):
    """(session factory, engine, model row id) on an upgraded database with `tiny-lsm` registered."""
    from db.session import make_engine, session_factory, upgrade
    from lsm_core.registry import sync_models

    engine = make_engine(db_url)
    upgrade(engine)
    sessions = session_factory(engine)
    rows = sync_models(sessions)
    model_id = next(r.id for r in rows if r.name == "tiny-lsm")
    yield sessions, engine, model_id
    engine.dispose()
