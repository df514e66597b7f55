"""A methods paragraph for a comparison: what was imaged, found, classified, counted and tested, and with what.

Written from what the database holds of the comparison's batches (their images, the model that classified them
and its training record) and from the comparison itself (lsm_core.reports.comparison.Comparison), so that the text
cannot drift from the numbers beside it in the workbook. Plain text, one paragraph per topic, in the words of
a methods section; nothing in it is a result.
"""

from __future__ import annotations

import platform
from collections import Counter
from importlib import metadata

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import lsm_core
from db.schema import Batch, Image, Model
from lsm_core.classes import PAPER_CITATION
from lsm_core.imaging.calibration import CalibrationSource
from lsm_core.imaging.cells import FindParams, keeps_size
from lsm_core.reports.comparison import Comparison, batches_of
from lsm_core.reports.correction import METHOD as CORRECTION_METHOD
from lsm_core.reports.report import age_text
from lsm_core.reports.stats import ODDS_MODEL

SOFTWARE = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "statsmodels",
    "pandas",
    "scikit-image",
    "tifffile",
    "captum",
    "grad-cam",
)
# where the pixel sizes came from, as a methods section says it of several batches (the pages say it of one:
# lsm_core.imaging.calibration.SOURCE_WORDS); a row classified before sources were recorded: the model's
SOURCES = {
    CalibrationSource.USER: "set for the batch",
    CalibrationSource.FILE: "read from the image file",
    CalibrationSource.SETTING: "the lab's LSM_PIXEL_SIZE_UM setting",
    CalibrationSource.MODEL_DEFAULT: "the model default",
}


def _n(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}"


def _mice(n: int) -> str:
    return f"{n} mouse" if n == 1 else f"{n} mice"


def _listed(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + f" and {items[-1]}"


def software_versions() -> dict[str, str]:
    """Python, this app and the libraries the numbers go through, as installed where the text is written."""
    out = {"Python": platform.python_version(), "this app": lsm_core.__version__}
    for name in SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _imaging(s: Session, batch_ids: list[int], models: list[Model]) -> str:
    images = s.execute(
        select(Image.kind, Image.pixel_size_um, Image.pixel_size_source, Image.channel, Image.z_plane, func.count())
        .where(Image.batch_id.in_(batch_ids), Image.done.is_(True), Image.error.is_(None))
        .group_by(Image.kind, Image.pixel_size_um, Image.pixel_size_source, Image.channel, Image.z_plane)
    ).all()
    total = sum(n for *_, n in images)
    kinds = Counter[str]()
    sizes: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    planes = 0
    for kind, size, source, channel, z, n in images:
        kinds["fields of view" if kind == "field" else "single-cell crops"] += n
        if size is not None:
            said = SOURCES[CalibrationSource(source or CalibrationSource.MODEL_DEFAULT)]
            sizes[f"{size:.4g} µm/px ({said})"] += n
        if channel:
            channels[str(channel)] += n
        if z is not None:
            planes += n
    modalities = sorted({m or "auto" for m in s.scalars(select(Batch.modality).where(Batch.id.in_(batch_ids)))})
    found = _listed([f"{n} {k}" for k, n in kinds.most_common()]) or "no images"
    text = [f"{total} images ({found}) of {len(batch_ids)} batches were analysed."]
    if sizes:
        text.append(f"Calibration: {_listed([f'{k} for {n} images' for k, n in sizes.most_common()])}.")
    if channels:
        text.append(f"Channel read: {_listed([f'{k} ({n} images)' for k, n in channels.most_common()])}.")
    if planes:
        text.append(f"In {planes} z-stacks the best-focused plane (or the chosen one) was read.")
    params = FindParams()
    model = models[0]
    text.append(
        f"Cells were found in each field of view by their relief against the flattened background (imaging "
        f"modality: {_listed(modalities)}; objects {params.min_diameter_um:g}-{params.max_diameter_um:g} µm across "
        f"and of solidity at least {params.min_solidity:g} kept, touching cells split) and each was cut as a "
        f"{model.crop_um:.3g} µm square centred on it, resampled to {model.input_size} x {model.input_size} pixels; "
        + (
            "a single-cell crop was cut as the same square around its centre, so that its cell kept its size."
            if keeps_size(model)
            else "a single-cell crop was taken whole, resized to fill that input (its cell's size not kept)."
        )
    )
    return " ".join(text)


def _model(m: Model) -> str:
    classes = _listed(list(m.classes))
    text = [
        f"Crops were classified by the model {m.name} version {m.version} ({m.architecture}; classes {classes}; "
        f"weights SHA-256 {m.weights_sha256}), trained at {m.pixel_size_um:.4g} µm/px. Each crop is "
        "standardised to zero mean and unit standard deviation inside the network; "
        + (
            f"the class probabilities are temperature-scaled (T = {m.temperature:.3g}, fitted on the validation set)."
            if m.temperature != 1
            else "its class probabilities are the softmax of its outputs (no temperature scaling)."
        )
    ]
    if m.demo:
        text.append(
            "This is a demonstration model trained on synthetic DIC-like cells, not on real cells: its results "
            "describe nothing biological and must not be published."
        )
    t = m.training or {}
    counts = t.get("class_counts") or {}
    split = t.get("split") or {}
    recipe = t.get("recipe") or {}
    if counts:
        per_class = _listed([f"{n} {c}" for c, n in counts.items()])
        text.append(f"It was trained on {sum(int(n) for n in counts.values())} labelled cells ({per_class})")
        if split:
            text[-1] += (
                f", split 8:2 by source image or mouse into {split.get('train', '?')} training cells from "
                f"{split.get('sources_train', '?')} sources and {split.get('validation', '?')} validation cells "
                f"from {split.get('sources_validation', '?')}"
            )
        text[-1] += "."
    from lsm_core.reports.model_card import training_labels

    labels = training_labels(t)
    if labels:
        text.append("Labels: " + " ".join(labels.lines))
    if recipe:
        factor = recipe.get("backbone_lr_factor", 1.0)
        backbone = f" ({_n(float(factor))} x for the convolutional layers)" if factor not in (None, 1, 1.0) else ""
        epochs, batch = recipe.get("epochs", "?"), recipe.get("batch_size", "?")
        text.append(
            f"Training recipe: cross-entropy, {epochs} epochs, batch {batch}, "
            f"AdamW with a one-cycle schedule of peak learning rate {recipe.get('lr', '?')}{backbone}, weight decay "
            f"{recipe.get('weight_decay', '?')}, "
            + ("random 90-degree rotations, flips and brightness/contrast jitter, " if recipe.get("augment") else "")
            + ("classes balanced by oversampling, " if recipe.get("balance") else "")
            + ("ImageNet-initialised, " if t.get("imagenet_init") else "randomly initialised, ")
            + f"seed {recipe.get('seed', t.get('seed', '?'))}; training data SHA-256 {t.get('data_sha256', '?')}."
        )
    metrics = m.metrics or {}
    if "accuracy" in metrics:
        text.append(
            f"On its validation set ({metrics.get('n', '?')} cells) it reached accuracy {_n(metrics['accuracy'])}, "
            f"macro F1 {_n(metrics.get('macro_f1', float('nan')))} and expected calibration error "
            f"{_n(metrics.get('ece', float('nan')))}."
        )
    return " ".join(text)


def _counting(c: Comparison) -> str:
    text = [
        "Each cell was assigned the class of highest probability; "
        + (
            f"only cells whose probability of that class (score) was at least {c.threshold:.2f} were counted."
            if c.threshold > 0
            else "every cell was counted, whatever its score."
        )
    ]
    if c.excluded:
        text.append(f"{c.excluded} found objects that reviewers marked as not a cell were excluded.")
    if c.on_corrected:
        text.append(
            "Each mouse's composition was then corrected for the classifier's own errors, using the confusion "
            "matrix of its model on held-out labelled cells ("
            + _listed(c.profiles)
            + f"), by {CORRECTION_METHOD}; the corrected fractions use every cell whatever its score (the confusion "
            "matrix was measured without a threshold) and assume that the cells of each class look like the "
            "held-out cells of that class, only the mix differing."
        )
    outside = c.table[c.table["group"].isna()]
    if len(outside):
        text.append(f"{len(outside)} mice fell in no group (no age recorded, or outside every bin) and were left out.")
    return " ".join(text)


def _statistics(c: Comparison) -> str:
    grouped = c.table.dropna(subset=["group"])
    sizes = grouped.groupby("group", sort=False).size()
    if c.by == "age" and c.bins:
        bins = {b.label: b for b in c.bins}

        def span(g: str) -> str:
            b = bins.get(g)
            if b is None:
                return g
            high = "" if b.high_days == float("inf") else f" to under {age_text(b.high_days)}"
            low = f"from {age_text(b.low_days)}" if b.low_days > 0 else "under" if high else ""
            return f"{g}, {low}{high}".replace("under to under", "under").rstrip(", ")

        groups = _listed([f"{span(str(g))} ({_mice(n)})" for g, n in sizes.items()])
    else:
        groups = _listed([f"{g} ({_mice(n)})" for g, n in sizes.items()])
    alone = int((grouped["unit"] != "mouse").sum())
    text = [
        "The mouse was the unit of replication: the batches of one mouse ID (imaging sessions, or sorted "
        "populations, of that mouse) were pooled, their cells summed, and each mouse's fraction of each class "
        f"computed; {len(grouped)} mice from {int(grouped['n_batches'].sum())} batches"
        + (f" ({alone} without a mouse ID, each counted as a mouse)" if alone else "")
        + f", grouped by {c.by}: {groups}."
    ]
    fractions = "corrected fractions" if c.on_corrected else "fractions (counted)"
    if len(sizes) == 2:
        text.append(
            f"Per-mouse {fractions} were compared between the groups with the two-sided Mann-Whitney U test, with "
            "the rank-biserial correlation as effect size and the difference of the mean fractions with its 95% "
            "Welch interval"
        )
    else:
        text.append(
            f"Per-mouse {fractions} were compared across the groups with the Kruskal-Wallis H test, with "
            "epsilon-squared as effect size"
        )
    if c.corrected:
        text[-1] += f"; p-values were corrected for the {len(c.tested)} classes by Holm's method."
    else:  # two classes: one test (stats.classes_tested), nothing to correct for
        first, last = c.classes
        text[-1] += (
            f". The two classes are complementary (a mouse's fraction of {first} cells is 1 minus its fraction of "
            f"{last} cells), so one test was run, on the fraction of {last} cells, and its p-value is not "
            "corrected for multiple comparisons."
        )
    smallest = c.tests["smallest_p"].dropna()
    if len(smallest) and float(smallest.min()) > 0.05:
        text.append(
            f"With these numbers of mice the smallest attainable p-value is {float(smallest.min()):.2g}, so no "
            "difference could reach p < 0.05; effect sizes and intervals are reported instead."
        )
    fitted = c.odds[c.odds["note"] == ""] if not c.odds.empty else c.odds
    if not c.odds.empty and fitted.empty:
        text.append(
            "A binomial model of the cells within mice could not be estimated with these mice (the odds_model "
            "sheet says why for each class)."
        )
    elif not fitted.empty:
        covariates = set(fitted["covariates"])
        with_sex = "sex" in covariates
        terms = "the group" + (" (and, separately, age in months as a continuous covariate)" if c.by == "age" else "")
        whose = "Each class's odds" if c.corrected else f"The odds of {c.tested[0]} cells"
        reported = (
            "odds ratios are reported with their 95% intervals and Holm-corrected p-values."
            if c.corrected
            else f"odds ratios are reported with their 95% intervals and p-values (the odds ratios of {c.classes[0]} "
            "cells are their inverses, with the same p-values: the same model)."
        )
        text.append(
            f"{whose} among a mouse's cells were also modelled with a {ODDS_MODEL.split(',')[0]} of the "
            f"per-mouse counts on {terms}" + (" with sex as a covariate" if with_sex else "") + ", with "
            "cluster-robust standard errors by mouse (the sandwich estimator with the CR2 small-sample "
            "adjustment) and t-based 95% intervals on the number of mice minus coefficients degrees of "
            f"freedom; {reported}"
            + (" The model works on counted cells, not on corrected fractions." if c.on_corrected else "")
        )
    text.append(
        "A chi-square test on the pooled cells of each group is reported only as a secondary view: cells of one "
        "mouse are not independent observations."
    )
    return " ".join(text)


def _cell_size(c: Comparison) -> str:
    """How cell size was measured and compared, with the mixed model's estimates."""
    said = (
        f"Each cell's size was measured from its outline as the diameter of the circle of equal area, at the pixel "
        f"size each image was read at ({c.sized_cells:,} cells"
        + (
            f"; {c.sizes_unknown:,} cells read at the model's default pixel size were left out, their size in "
            "micrometres being unknown"
            if c.sizes_unknown
            else ""
        )
        + "). Per-mouse median diameters were compared between groups with the same tests as the fractions, the "
        "mouse as the unit. A linear mixed model of each cell's diameter with a fixed effect of group and a random "
        "intercept per mouse (restricted maximum likelihood, statsmodels MixedLM) gave "
    )
    parts = []
    for row in c.size_model.itertuples():
        if np.isnan(row.estimate_um):
            parts.append(f"no estimate ({row.note})")
        else:
            parts.append(
                f"{row.term}: {row.estimate_um:+.2f} µm (95% CI {row.ci95_low:.2f} to {row.ci95_high:.2f}, "
                f"p = {row.p_value:.3g})" + (f", {row.note}" if row.note else "")
            )
    return said + ("; ".join(parts) or "no estimate") + "."


def methods_paragraphs(s: Session, c: Comparison) -> list[tuple[str, str]]:
    """(heading, paragraph) pairs of the methods text of comparison ``c``."""
    batch_ids = sorted(b for b, g in batches_of(c.table).items() if g is not None)
    used = select(Batch.model_id).where(Batch.id.in_(batch_ids))  # not DISTINCT over models: JSON has no = in PG
    models = list(s.scalars(select(Model).where(Model.id.in_(used))).all())
    models.sort(key=lambda m: (m.name, m.version))
    out = [("Images and cell finding", _imaging(s, batch_ids, models) if models else "No images were analysed.")]
    out += [("Classification" + (f" ({m.name} v{m.version})" if len(models) > 1 else ""), _model(m)) for m in models]
    if len(models) > 1:
        out.append(
            (
                "Mixed models",
                "The batches compared were classified by different models or model versions ("
                + _listed([f"{m.name} v{m.version}" for m in models])
                + "); each mouse's model is named in the per-mouse table.",
            )
        )
    out.append(("Counting", _counting(c)))
    out.append(("Statistics", _statistics(c)))
    if c.sized_cells:
        out.append(("Cell size", _cell_size(c)))
    if c.warnings:
        out.append(("Notes", " ".join(c.warnings)))
    versions = software_versions()
    out.append(
        (
            "Software",
            f"The analysis used the HSC classification web app {versions.pop('this app')}, which reimplements the "
            f"method of {PAPER_CITATION}, on Python {versions.pop('Python')} with "
            + _listed([f"{name} {v}" for name, v in versions.items()])
            + ".",
        )
    )
    return out


def methods_text(s: Session, c: Comparison) -> str:
    """The methods text of comparison ``c``: headed paragraphs, plain text (UTF-8)."""
    return "\n\n".join(f"{heading}. {text}" for heading, text in methods_paragraphs(s, c)) + "\n"
