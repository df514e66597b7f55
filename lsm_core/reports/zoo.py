"""A registered model as a BioImage Model Zoo package, its README the model card (lsm_core.reports.model_card):
the card is built here, where the export is, so the shared service (lsm_core.lab) never imports the reports."""

from __future__ import annotations

from dataclasses import replace

from db.schema import Model
from lsm_core.errors import LsmError
from lsm_core.lab.lab import Lab
from lsm_core.lab.registry import lineage, package_for
from lsm_core.reports.model_card import model_card_markdown


def export_for_zoo(
    lab: Lab, model_id: int, authors: list[str], license_id: str = "CC-BY-4.0", progress=None
) -> tuple[str, bytes]:
    """A registered model as a BioImage Model Zoo package: (file name, the ZIP's bytes), validated by
    ``bioimageio.spec`` before it is handed out (LsmError naming what the validator found). Its README is the
    model card; ``config.lsm_classifier.provenance`` records its lineage, parents and training data, and its
    manifest the error profile recorded for it on the lab's labelled cells, if any (compositions corrected with it
    wherever the package is imported)."""
    from lsm_core.ml.bioimageio import export_package, validate

    with lab() as s:
        row = s.get(Model, model_id)
        if row is None or row.deleted:
            raise LsmError(f"no model {model_id} to export")
        chain = lineage(s, row)
    package = package_for(row, lab.store)
    recorded = (row.metrics or {}).get("error_profile")
    if recorded is not None:  # recorded since registration (registry.record_error_profile): it travels too
        metrics = {**(package.manifest.metrics or {}), "error_profile": recorded}
        package = replace(package, manifest=replace(package.manifest, metrics=metrics))
    training = package.manifest.training or {}
    provenance = {
        "lineage": chain,
        "parents": training.get("parents") or [],
        "training_data": {
            "class_counts": training.get("class_counts") or {},
            "data_sha256": training.get("data_sha256"),
            "labels_from": [part.get("kind") for part in training.get("labels") or [] if isinstance(part, dict)],
        },
        "weights_sha256": package.manifest.weights_sha256,
    }
    data = export_package(
        package,
        authors,
        license_id,
        model_card=model_card_markdown(package.manifest, chain),
        provenance=provenance,
        app_url=lab.settings.app_url,
        progress=progress,
    )
    problems = validate(data)
    if problems:
        raise LsmError("the package does not validate as a bioimage.io model: " + "; ".join(problems[:5]))
    m = package.manifest
    return f"{m.name}-v{m.version}.bioimageio.zip", data
