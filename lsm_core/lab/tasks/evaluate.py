"""Evaluate a registered model on labelled test files: every metric of a model card."""

from __future__ import annotations

from typing import Any

from lsm_core.errors import LsmError
from lsm_core.imaging.cells import FindParams
from lsm_core.lab import jobs
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.lab import Lab
from lsm_core.lab.tasks import task
from lsm_core.lab.tasks.context import Context
from lsm_core.lab.tasks.train import labelled_uploads


def submit(lab: Lab, model_id: int, uploads: list[dict[str, str]], owner: str) -> int:
    if not uploads:
        raise LsmError("choose a labelled test ZIP")
    return jobs.submit(
        lab,
        JobKind.EVALUATE,
        {"model_id": model_id, "uploads": uploads},
        owner,
        total=1,
        audit_as=("evaluate", f"model id {model_id}"),
    )


@task(JobKind.EVALUATE)
def run(ctx: Context, payload: dict[str, Any]) -> dict[str, Any]:
    from lsm_core.ml.train import evaluate_predictor

    model = ctx.model(int(payload["model_id"]), "the model to evaluate")
    predictor = ctx.models.predictor(model)
    data = labelled_uploads(ctx, payload["uploads"], model.task, FindParams.for_model(model))
    metrics = evaluate_predictor(predictor, data)
    metrics["unusable_files"] = [list(e) for e in data.errors[:200]]
    names = ", ".join(str(u.get("name", "?")) for u in payload["uploads"])
    metrics["evaluated_on"] = f"test set {names}: {metrics['n']} cells"
    ctx.progress(1)
    return metrics
