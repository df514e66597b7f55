"""Shared fixtures: a private data dir per test session and a tiny registered model."""

from __future__ import annotations

import os

import pytest

# Workers in tests read images in-process unless a test asks for preparation processes (tests/test_prepare.py):
# spawning a pool for each of the hundreds of short worker runs would only cost time.
os.environ.setdefault("LSM_PREP_WORKERS", "0")


@pytest.fixture(autouse=True)
def _main_module_kept():
    """Streamlit's AppTest leaves the page script it ran as ``sys.modules["__main__"]``; a process that
    multiprocessing spawns later (the preparation pool of tests/test_prepare.py) runs ``__main__`` again
    first, and dies running a page outside Streamlit. Each test gets back the ``__main__`` it started with."""
    import sys

    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


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
    from lsm_core.imaging import synthetic
    from lsm_core.ml.models import Manifest, ModelStore
    from lsm_core.ml.train import TrainConfig, fit

    x, y = synthetic.make_crops("lsm", 300, seed=11)
    net, _ = fit(x, y, 3, TrainConfig(architecture="tiny_cnn", epochs=2, batch_size=64, lr=3e-3, weight_decay=0.0))
    manifest = Manifest(task="lsm", name="tiny-lsm", classes=["LT-HSC", "ST-HSC", "MPP"], architecture="tiny_cnn")
    return ModelStore(data_dir / "models").add(net, manifest)


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
    """(lab, engine, model row id): a Lab on an upgraded database (the session's data dir for its stores) with
    `tiny-lsm` registered."""
    from lsm_core.lab import settings
    from lsm_core.lab.open_lab import open_lab

    lab = open_lab(settings.current().with_(database_url=db_url))
    with lab() as s:
        from db import queries

        model_id = queries.model_by_name(s, "tiny-lsm").id
    yield lab, lab.engine, model_id
    lab.dispose()


# --- the app: a fresh data dir with demo-named tiny models --------------------------------------------
@pytest.fixture
def app_env(tmp_path, monkeypatch):
    """A fresh data dir (SQLite) whose model store holds demo-named tiny models; lab mode, acting as ana."""
    from tests.helpers import add_tiny_demo_models

    monkeypatch.setenv("LSM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LSM_DATABASE_URL", raising=False)
    monkeypatch.setenv("LSM_USER", "ana")
    monkeypatch.delenv("LSM_ADMINS", raising=False)  # lab mode: everyone administers
    add_tiny_demo_models(tmp_path / "models")
    return tmp_path


@pytest.fixture
def with_batch(app_env):
    """One classified LSM batch: 6 crops, one field of view, one broken file."""

    import io

    import numpy as np
    import tifffile
    from PIL import Image as PILImage

    from db import queries
    from lsm_core.imaging import synthetic
    from lsm_core.imaging.readers.archives import RawFile
    from lsm_core.lab.batches import BatchMeta, submit_batch
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.worker import Worker

    lab = open_lab()
    crops, _ = synthetic.make_crops("lsm", 6, seed=5)
    files = []
    for i, c in enumerate(crops):
        buf = io.BytesIO()
        PILImage.fromarray((c * 255).astype(np.uint8)).save(buf, format="PNG")
        files.append(RawFile(f"crop{i}.png", buf.getvalue()))
    field, _ = synthetic.make_field("lsm", seed=6, shape=(768, 768), n_cells=8, n_debris=0)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.round(field * 4095).astype(np.uint16))
    files += [RawFile("field.tif", buf.getvalue()), RawFile("broken.png", b"\x89PNG\r\n\x1a\nbroken")]
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    sub = submit_batch(
        lab,
        files,
        model_id,
        "M17 LT-HSC",
        owner="ana",
        meta=BatchMeta(mouse_id="M17", age_days=70, sex="F", notes="<script>alert(1)</script>"),
    )
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    return sub


@pytest.fixture
def field_batch(history, monkeypatch):
    """(lab, batch id, the field's Image row) of ana's classified batch of one field of view and one crop
    (boss administers)."""
    from sqlalchemy import select

    from db.schema import Image
    from lsm_core.lab import batches
    from lsm_core.lab.worker import Worker
    from tests.helpers import crop_files, field_file, with_settings

    monkeypatch.setenv("LSM_ADMINS", "boss")  # for the pages a test shows
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
    sub = batches.submit_batch(lab, [field_file(11), *crop_files(1, seed=3)], model_id, "field", owner="ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        field = s.scalars(select(Image).where(Image.batch_id == sub.batch_id, Image.kind == "field")).one()
    assert field.n_cells and field.n_cells > 0
    return lab, sub.batch_id, field
