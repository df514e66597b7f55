"""The models the database knows: rows mirroring the packages of the model store."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import audit
from db.schema import Model
from lsm_core import accounts
from lsm_core.errors import LsmError
from lsm_core.models import ModelPackage, ModelStore


def row_for(s: Session, package: ModelPackage, store: ModelStore) -> Model:
    """Within ``s``: the Model row of ``package``, created if missing."""
    m = package.manifest
    row = s.scalars(select(Model).where(Model.name == m.name, Model.version == m.version)).first()
    if row is not None:
        if row.weights_sha256 != m.weights_sha256:
            raise LsmError(
                f"model {m.name} v{m.version} in the store does not match the one the database knows "
                f"(sha256 {m.weights_sha256[:12]} vs {row.weights_sha256[:12]})"
            )
        return row
    audit.record(s, "system", "register", f"model {m.name} v{m.version}", task=m.task, demo=m.demo,
                 sha256=m.weights_sha256)
    row = Model(
        task=m.task, name=m.name, version=m.version, classes=list(m.classes), architecture=m.architecture,
        input_size=m.input_size, pixel_size_um=m.pixel_size_um, crop_um=m.crop_um, normalisation=m.normalisation,
        temperature=m.temperature, weights_sha256=m.weights_sha256,
        path=str(package.path.resolve().relative_to(store.root.resolve())),
        metrics=m.metrics, training=m.training, demo=m.demo,
    )
    s.add(row)
    s.flush()
    return row


def sync_models(sessions: sessionmaker[Session], store: ModelStore | None = None) -> list[Model]:
    """Register every package of the store in the database; make each task's first model its default."""
    store = store or ModelStore()
    with sessions.begin() as s:
        rows = [row_for(s, p, store) for p in store.packages()]
        for task in {r.task for r in rows}:
            live = s.scalars(select(Model).where(Model.task == task, Model.deleted.is_(False))).all()
            if live and not any(r.is_default for r in live):
                # prefer a model trained on lab data over a demo, then the newest
                best = sorted(live, key=lambda r: (not r.demo, r.created, r.version))[-1]
                best.is_default = True
        return rows


def package_for(row: Model, store: ModelStore | None = None) -> ModelPackage:
    """The package of a Model row, checked against the row's sha256."""
    store = store or ModelStore()
    package = store.get(row.name, row.version)
    if package.manifest.weights_sha256 != row.weights_sha256:
        raise LsmError(f"model {row.label}: the package in the store is not the one the database registered")
    return package


def set_default(sessions: sessionmaker[Session], model_id: int, user: str) -> None:
    """Make a model the default of its task (admins only)."""
    with sessions.begin() as s:
        accounts.require_admin(s, user, "choose default models")
        row = s.get(Model, model_id)
        if row is None or row.deleted:
            raise LsmError("that model no longer exists")
        for other in s.scalars(select(Model).where(Model.task == row.task)):
            other.is_default = other.id == row.id
        audit.record(s, user, "set default", f"model {row.name} v{row.version}", task=row.task)


def import_model(sessions: sessionmaker[Session], weights, manifest, user: str, store: ModelStore | None = None) -> Model:
    """Import weights + manifest into the model store and register them (admins only); returns the row."""
    with sessions() as s:
        accounts.require_admin(s, user, "import models")
    store = store or ModelStore()
    package = store.import_weights(weights, manifest)
    sync_models(sessions, store)
    m = package.manifest
    with sessions.begin() as s:
        audit.record(s, user, "import", f"model {m.name} v{m.version}", sha256=m.weights_sha256)
        row = s.scalars(select(Model).where(Model.name == m.name, Model.version == m.version)).one()
        s.expunge(row)
        return row
