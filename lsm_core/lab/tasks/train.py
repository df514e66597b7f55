"""Train and register a model version from labelled ZIPs, labelled batches, batches labelled by a reporter gate
and/or the cells reviewers labelled (administrators only).

The job's payload: ``task``, ``name``, ``config`` (:class:`lsm_core.ml.train.TrainConfig`), and the data:
``uploads`` (labelled ZIPs in the blob store), ``batches`` (``{batch id: class}``), ``gated``
(``{"batches": [ids], "rule": "GFP high -> LT-HSC; GFP low -> MPP"}``, :mod:`lsm_core.lab.gating`),
``reviewed`` (batch ids: their cells that reviewers gave a class, :func:`lsm_core.lab.training_data.from_reviews`),
any of them together; ``test_uploads`` a separate test set."""

from __future__ import annotations

from typing import Any

from lsm_core.classes import task_classes
from lsm_core.errors import LsmError
from lsm_core.lab import accounts, jobs
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.lab import Lab
from lsm_core.lab.tasks import task
from lsm_core.lab.tasks.context import Cancelled, Context


def submit(
    lab: Lab,
    task_name: str,
    name: str,
    config: dict[str, Any],
    owner: str,
    uploads: list[dict[str, str]] | None = None,
    batches: dict[int, str] | None = None,
    test_uploads: list[dict[str, str]] | None = None,
    priority: int = 0,
    gated: dict[str, Any] | None = None,
    reviewed: list[int] | None = None,
) -> int:
    """Queue a training job (administrators only: it registers a model): data from uploaded labelled ZIPs
    (:meth:`lsm_core.lab.blobs.BlobStore.put_uploads`), labelled batches (``{batch id: class}``) and/or batches
    whose cells a reporter gate labels (``gated``: ``{"batches": [ids], "rule": text}``) and/or the cells of
    batches that reviewers gave a class (``reviewed``: batch ids). The gate is checked here against the batches
    (its syntax, classes, channel and overlaps), and the reviewed batches for a labelled cell, so that bad
    data is refused at once."""
    from lsm_core.lab.training_data import check_gate, reviewed_cells
    from lsm_core.ml.models import check_name

    task_classes(task_name)
    check_name(name)
    gate = None
    if gated is not None:
        gated, gate = _gated(gated, task_name)
    reviewed = list(dict.fromkeys(int(b) for b in reviewed or []))
    if not uploads and not batches and not gated and not reviewed:
        raise LsmError(
            "choose training data: a labelled ZIP, labelled batches, batches and a reporter gate, or batches "
            "whose cells reviewers labelled"
        )
    with lab() as s:
        accounts.require_admin(lab, s, owner, "train models")
        if gated is not None and gate is not None:
            check_gate(s, gated["batches"], gate)
        if reviewed:
            reviewed_cells(s, reviewed, task_name)
    payload: dict[str, Any] = {
        "task": task_name,
        "name": name,
        "config": config,
        "uploads": uploads or [],
        "batches": {str(k): v for k, v in (batches or {}).items()},
        "test_uploads": test_uploads or [],
    }
    if gated:
        payload["gated"] = gated
    if reviewed:
        payload["reviewed"] = reviewed
    return jobs.submit(
        lab,
        JobKind.TRAIN,
        payload,
        owner,
        priority,
        total=int(config.get("epochs", 20)),
        audit_as=("train", f"model {name}"),
    )


def _gated(gated: dict[str, Any], task_name: str):
    """The ``gated`` part of a payload, tidied (batch ids as numbers, the rule's text), and its parsed gate;
    (None, None) when it names neither batches nor a rule."""
    from lsm_core.lab.gating import EXAMPLE, parse_batch_ids, parse_gate

    if not isinstance(gated, dict):
        raise LsmError("gated must be {'batches': [ids], 'rule': text}")
    raw = gated.get("batches") or []
    try:
        ids = parse_batch_ids(raw if isinstance(raw, str) else " ".join(str(b) for b in raw))
    except TypeError:
        raise LsmError("gated batches must be a list of batch ids") from None
    rule = str(gated.get("rule") or "").strip()
    if not ids and not rule:
        return None, None
    if not rule:
        raise LsmError(f"batches to gate were chosen but no gate: write one, e.g. `{EXAMPLE}`")
    gate = parse_gate(rule, task_name)
    if not ids:
        raise LsmError("a gate was written but no batches chosen: give the ids of the batches whose cells it labels")
    return {"batches": ids, "rule": rule}, gate


def labelled_uploads(ctx: Context, uploads: list[dict[str, str]], task_name: str, params=None):
    """Labelled crops from uploaded ZIPs (class folders), unpacked here from the blob store."""
    from lsm_core.imaging.readers.archives import iter_upload
    from lsm_core.ml.datasets import from_files

    files = [raw for u in uploads for raw in iter_upload(u["name"], ctx.lab.blobs.get(u["sha256"]), ctx.lab.limits)]
    return from_files(files, task_name, params)


@task(JobKind.TRAIN)
def run(ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
    from lsm_core.lab.registry import sync_models
    from lsm_core.lab.training_data import from_batches, from_gate, from_reviews
    from lsm_core.ml.datasets import LabelledData
    from lsm_core.ml.train import TrainConfig, TrainingCancelled, train_and_register

    task_name, config = payload["task"], TrainConfig(**payload.get("config", {}))
    # the role again, where the job runs: it may have changed since it was queued
    ctx.read("checking the owner's role", lambda s: accounts.require_admin(ctx.lab, s, ctx.job.owner, "train models"))
    params = config.find_params()  # how the model will be given its cells: its training crops are cut so
    parts = []
    if payload.get("uploads"):
        parts.append(labelled_uploads(ctx, payload["uploads"], task_name, params))
    if payload.get("batches"):
        labels = {int(k): v for k, v in payload["batches"].items()}
        parts.append(
            ctx.read("reading labelled batches", lambda s: from_batches(s, ctx.lab, labels, task_name, params))
        )
    if payload.get("gated"):
        ids, rule = [int(b) for b in payload["gated"]["batches"]], payload["gated"]["rule"]
        parts.append(ctx.read("reading gated batches", lambda s: from_gate(s, ctx.lab, ids, rule, task_name, params)))
    if payload.get("reviewed"):
        reviewed = [int(b) for b in payload["reviewed"]]
        parts.append(
            ctx.read("reading reviewed cells", lambda s: from_reviews(s, ctx.lab, reviewed, task_name, params))
        )
    data = LabelledData.concat(parts)
    test = labelled_uploads(ctx, payload["test_uploads"], task_name, params) if payload.get("test_uploads") else None

    def progress(epoch: int, loss: float, vloss: float | None, vacc: float | None) -> None:
        ctx.progress(epoch, result={"epoch": epoch, "train_loss": loss, "val_loss": vloss, "val_accuracy": vacc})

    def should_stop() -> bool:
        ctx.should_stop()
        return False

    try:
        package = train_and_register(
            data,
            task_name,
            config,
            payload["name"],
            ctx.lab.store,
            test=test,
            progress=progress,
            should_stop=should_stop,
            device=ctx.device,
            patience=payload.get("patience", 5),
        )
    except TrainingCancelled:
        raise Cancelled() from None
    m = package.manifest
    rows = ctx.retry("registering the model", lambda _: sync_models(ctx.lab))
    model_id = next(r.id for r in rows if r.name == m.name and r.version == m.version)
    return {
        "model_id": model_id,
        "model": m.label,
        "accuracy": m.metrics["accuracy"],
        "quality_check": m.metrics.get("quality_check"),
        "unusable_files": [list(e) for e in data.errors[:200]],
        "labels": m.training.get("labels", []),
    }
