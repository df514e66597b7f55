"""The models the database knows: rows mirroring the packages of the model store.

Wherever models are listed or offered, :func:`offered_models` gives them in one order: the LSM task first,
then aging (the order of :data:`lsm_core.classes.TASK_TITLES`), within a task its default first, then by name
and newest version, models that failed their quality check last (and left out unless asked for). A model
that failed its quality check (:func:`lsm_core.ml.models.model_quality`) is never made a default.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import audit
from db.schema import Model, ModelCheck, utcnow
from lsm_core.classes import TASK_TITLES
from lsm_core.errors import LsmError
from lsm_core.lab import accounts
from lsm_core.lab.lab import Lab
from lsm_core.ml import demo
from lsm_core.ml.models import ModelPackage, ModelStore, failed_quality, model_quality

if TYPE_CHECKING:
    from lsm_core.ml.selftest import Outcome

log = logging.getLogger("lsm_core.registry")

TASK_ORDER: tuple[str, ...] = tuple(TASK_TITLES)  # ("lsm", "aging"): the LSM classifier first, everywhere


def task_rank(task: str) -> int:
    """The place of ``task`` in :data:`TASK_ORDER` (unknown tasks after the known ones)."""
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


def model_sort_key(m: Model) -> tuple:
    """The one order of models: task (LSM first), the task's default first, passed before failed quality
    checks, then name, then the newest version first."""
    return (task_rank(m.task), m.task, not m.is_default, failed_quality(m.metrics), m.name, -m.version)


def offered_models(
    s: Session, task: str | None = None, include_failed: bool = False, include_deleted: bool = False
) -> list[Model]:
    """Within ``s``: the models to list or offer (of ``task`` when given), in :func:`model_sort_key` order.

    Models that failed their quality check are left out unless ``include_failed``; deleted ones unless
    ``include_deleted``. The first model of a task is its default whenever it has one.
    """
    query = select(Model)
    if task:
        query = query.where(Model.task == task)
    if not include_deleted:
        query = query.where(Model.deleted.is_(False))
    rows = [m for m in s.scalars(query) if include_failed or not failed_quality(m.metrics)]
    return sorted(rows, key=model_sort_key)


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
    audit.record(
        s,
        accounts.SYSTEM,
        "register",
        f"model {m.name} v{m.version}",
        task=m.task,
        demo=m.demo,
        sha256=m.weights_sha256,
    )
    row = Model(
        task=m.task,
        name=m.name,
        version=m.version,
        classes=list(m.classes),
        architecture=m.architecture,
        input_size=m.input_size,
        pixel_size_um=m.pixel_size_um,
        crop_um=m.crop_um,
        normalisation=m.normalisation,
        temperature=m.temperature,
        weights_sha256=m.weights_sha256,
        path=str(package.path.resolve().relative_to(store.root.resolve())),
        metrics=m.metrics,
        training=m.training,
        demo=m.demo,
    )
    s.add(row)
    s.flush()
    return row


def sync_models(lab: Lab) -> list[Model]:
    """Register every package of the store in the database; give each task with none a default model.

    The default is a model that passed its quality check (or carries none), preferring one trained on lab
    data over a demo, then the newest. A model that failed its quality check is never made the default (and
    stops being one, should an older database say otherwise, when another model can take its place). A demo
    model's better version, when registered, takes over from its quick first version as the default
    (:mod:`lsm_core.ml.demo`).
    """
    store = lab.store
    with lab.begin() as s:
        known = set(s.scalars(select(Model.id)))
        rows = [row_for(s, p, store) for p in store.packages()]
        for new in [r for r in rows if r.id not in known and r.demo and not failed_quality(r.metrics)]:
            old = s.scalars(select(Model).where(Model.task == new.task, Model.is_default.is_(True))).first()
            if old is not None and old.name == new.name and old.version < new.version and old.demo:
                if (old.training or {}).get(demo.STAGE_KEY) == demo.FIRST:
                    old.is_default, new.is_default = False, True
        for task in {r.task for r in rows}:
            live = s.scalars(select(Model).where(Model.task == task, Model.deleted.is_(False))).all()
            usable = [r for r in live if not failed_quality(r.metrics)]
            if usable and not any(r.is_default for r in usable):
                for r in live:
                    r.is_default = False
                # prefer a model trained on lab data over a demo, then the newest
                best = sorted(usable, key=lambda r: (not r.demo, r.created, r.version))[-1]
                best.is_default = True
        missing = [(r.id, r.name, r.version) for r in rows if r.self_test is None]
    fill_self_tests(lab, missing)
    return rows


def fill_self_tests(lab: Lab, rows: list[tuple[int, str, int]]) -> None:
    """Compute the self-test reference (lsm_core.ml.selftest) of models that have none, each outside any
    transaction and then stored in one short one; a package that cannot be loaded is left without (its
    workers then refuse it, saying why)."""
    if not rows:
        return
    from lsm_core.ml.selftest import reference

    for model_id, name, version in rows:
        try:
            ref = reference(lab.store.get(name, version))
        except LsmError as exc:
            log.warning("model %s v%s: no self-test reference (%s)", name, version, exc)
            continue
        store_self_test_reference(lab, model_id, ref)


def store_self_test_reference(lab: Lab, model_id: int, ref: dict[str, Any]) -> None:
    """Keep ``ref`` as the self-test reference of model ``model_id``, in one short transaction, unless it has
    one already (or is gone): the first one computed stands."""
    with lab.begin() as s:
        row = s.get(Model, model_id)
        if row is not None and row.self_test is None:
            row.self_test = ref


def record_self_test(lab: Lab, worker_id: str, model_id: int, device: str, outcome: Outcome) -> None:
    """Keep a worker's self-test outcome of a model on its ``device``, precision and runtime (``model_checks``:
    one row per worker, model, device, precision and runtime, the latest outcome), in one short transaction."""
    with lab.begin() as s:
        key = {"worker_id": worker_id, "model_id": model_id, "device": device}
        key |= {"precision": outcome.precision, "runtime": outcome.runtime}
        row = s.scalars(select(ModelCheck).filter_by(**key)).first()
        if row is None:
            row = ModelCheck(**key)
            s.add(row)
        row.passed, row.max_difference, row.tolerance = outcome.passed, outcome.max_difference, outcome.tolerance
        row.message = outcome.message
        row.checked = utcnow()


def package_for(row: Model, store: ModelStore) -> ModelPackage:
    """The package of a Model row, checked against the row's sha256."""
    package = store.get(row.name, row.version)
    if package.manifest.weights_sha256 != row.weights_sha256:
        raise LsmError(f"model {row.label}: the package in the store is not the one the database registered")
    return package


def set_default(lab: Lab, model_id: int, user: str) -> None:
    """Make a model the default of its task (admins only)."""
    with lab.begin() as s:
        accounts.require_admin(lab, s, user, "choose default models")
        row = s.get(Model, model_id)
        if row is None or row.deleted:
            raise LsmError("that model no longer exists")
        passed, reasons, _ = model_quality(row.metrics)
        if passed is False:
            raise LsmError(
                f"{row.label} cannot be the default {row.task} model: it failed its quality check. " + " ".join(reasons)
            )
        for other in s.scalars(select(Model).where(Model.task == row.task)):
            other.is_default = other.id == row.id
        audit.record(s, user, "set default", f"model {row.name} v{row.version}", task=row.task)


def record_error_profile(lab: Lab, model_id: int, evaluation: dict, user: str) -> Model:
    """Make an evaluation on labelled cells the model's error profile (administrators only): its confusion matrix
    of counts, the cells it came from (``evaluated_on``), who recorded it and when, kept in the model's metrics
    as ``error_profile``; batches' compositions are corrected with it from then on (lsm_core.reports.correction)."""
    classes, matrix = evaluation.get("classes"), evaluation.get("confusion_matrix")
    with lab.begin() as s:
        accounts.require_admin(lab, s, user, "record a model's error profile")
        row = s.get(Model, model_id)
        if row is None or row.deleted:
            raise LsmError("that model no longer exists")
        if list(classes or []) != list(row.classes):
            raise LsmError(f"the evaluation's classes {classes} are not {row.label}'s {list(row.classes)}")
        k = len(row.classes)
        rows = matrix if isinstance(matrix, list) and len(matrix) == k else []
        values = [v for r in rows if isinstance(r, list) and len(r) == k for v in r]
        if len(values) != k * k or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in values):
            raise LsmError(f"the evaluation holds no confusion matrix of cell counts, {k} by {k}")
        cells = sum(values)
        source = str(evaluation.get("evaluated_on") or f"labelled cells: {cells} cells")
        profile = {
            "classes": list(row.classes),
            "confusion_matrix": rows,
            "evaluated_on": source,
            "recorded_by": user,
            "recorded_at": utcnow().isoformat(timespec="seconds"),
        }
        row.metrics = {**(row.metrics or {}), "error_profile": profile}  # a new dict: the JSON column sees the change
        audit.record(s, user, "error profile", f"model {row.name} v{row.version}", cells=cells, source=source)
        return row


def import_model(lab: Lab, weights: str | Path, manifest: str | Path, user: str) -> Model:
    """Import weights + manifest (files) into the model store and register them (admins only); returns the row."""
    with lab() as s:
        accounts.require_admin(lab, s, user, "import models")
    package = lab.store.import_weights(weights, manifest)
    sync_models(lab)
    m = package.manifest
    with lab.begin() as s:
        audit.record(s, user, "import", f"model {m.name} v{m.version}", sha256=m.weights_sha256)
        row = s.scalars(select(Model).where(Model.name == m.name, Model.version == m.version)).one()
        s.expunge(row)
        return row


def import_model_bytes(lab: Lab, weights_name: str, weights: bytes, manifest: bytes, user: str) -> Model:
    """:func:`import_model` for uploaded bytes (the Models page): written to a private temporary folder first,
    under a safe name (only the suffix of ``weights_name`` is kept: it tells safetensors from a pickle)."""
    suffix = Path(weights_name).suffix.lower()
    if suffix not in (".pt", ".pth", ".safetensors"):
        raise LsmError(f"{weights_name}: weights must be a .pt, .pth or .safetensors file")
    with tempfile.TemporaryDirectory() as tmp:
        wpath, mpath = Path(tmp) / f"weights{suffix}", Path(tmp) / "manifest.json"
        wpath.write_bytes(weights)
        mpath.write_bytes(manifest)
        return import_model(lab, wpath, mpath, user)


def lineage(s: Session, model: Model, limit: int = 50) -> list[str]:
    """The chain of models this one descends from, oldest first, ending with itself: each model's parent is
    the one whose predictions reviewers corrected to make its labels (``training["parents"]``, matched by
    the weights' sha256; the first of several). A parent that is not registered here is named as recorded."""
    chain = [model.label]
    seen = {model.weights_sha256}
    current: Model | None = model
    while current is not None and len(chain) < limit:
        parents = (current.training or {}).get("parents") or []
        if not parents:
            break
        parent = parents[0]
        sha = str(parent.get("sha256") or "")
        if sha in seen:
            break  # a cycle cannot be made by training, but a hand-written manifest could say one
        seen.add(sha)
        current = s.scalars(select(Model).where(Model.weights_sha256 == sha).order_by(Model.id)).first()
        more = f" (and {len(parents) - 1} more)" if len(parents) > 1 else ""
        chain.insert(
            0, (current.label if current is not None else f"{parent.get('name')} v{parent.get('version')}") + more
        )
    return chain


def import_zoo_package(lab: Lab, data: bytes, user: str, name: str | None = None, source: str = "package.zip") -> Model:
    """Import a BioImage Model Zoo package (a ZIP's bytes; administrators only) as the next version of its
    name (or ``name``): checked by :func:`lsm_core.ml.bioimageio.import_package` (a classifier of a known task,
    its test tensors reproduced) before anything is written; its origin is kept on the model card."""
    from lsm_core.ml.bioimageio import import_package

    with lab() as s:
        accounts.require_admin(lab, s, user, "import models")
    imported = import_package(data, name, source)
    package = lab.store.add(imported.net, imported.manifest)
    sync_models(lab)
    m = package.manifest
    with lab.begin() as s:
        audit.record(
            s,
            user,
            "import",
            f"model {m.name} v{m.version}",
            sha256=m.weights_sha256,
            package_sha256=m.training["imported_from"]["sha256"],
        )
        row = s.scalars(select(Model).where(Model.name == m.name, Model.version == m.version)).one()
        s.expunge(row)
        return row
