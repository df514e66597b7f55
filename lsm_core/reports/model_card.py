"""Figures of a model card, from the metrics a manifest (or an evaluation job) carries. No UI.

An imported package brings its own metrics, description and origin: every text of it is drawn as text (names in
figures through :func:`lsm_core.reports.report.plot_text`, Markdown through
:func:`lsm_core.reports.text.escape_markdown`), and a number it carries is drawn only when it is a number (text
where a number belongs would become an axis of category labels, which plotly reads as HTML too).
"""

from __future__ import annotations

import io
import math
import numbers
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

from lsm_core.classes import PAPER_CITATION
from lsm_core.imaging.cells import keeps_size
from lsm_core.reports.report import colour, plot_text
from lsm_core.reports.text import escape_markdown as _md  # the one rule of people's text in Markdown


def _finite(value: object) -> float | None:
    """A number of a set of metrics (perhaps a package's), or None: text, booleans, NaN and infinities are none."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's numbers are Real too
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _finites(values: object) -> list[float | None]:
    """A list of numbers as :func:`_finite` reads each (anything but a list: none)."""
    return [_finite(v) for v in values] if isinstance(values, (list, tuple)) else []


def _count(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.3g}"


def count_matrix(metrics: dict) -> tuple[list[str], list[list[float]]] | None:
    """The classes and confusion matrix of ``metrics`` when they are a square table of counts, one row and column
    per class (else None: a package may carry anything there)."""
    classes, cm = metrics.get("classes"), metrics.get("confusion_matrix")
    if not isinstance(classes, list) or not classes or not isinstance(cm, list) or len(cm) != len(classes):
        return None
    rows = [_finites(row) for row in cm]
    if any(len(row) != len(classes) or any(v is None or v < 0 for v in row) for row in rows):
        return None
    return [str(c) for c in classes], [[float(v) for v in row if v is not None] for row in rows]


def confusion_figure(metrics: dict) -> go.Figure:
    found = count_matrix(metrics)
    names, cm = found if found else ([], [])
    classes = [plot_text(c) for c in names]  # the axes' labels and the hover: text, never HTML
    totals = [max(1.0, sum(row)) for row in cm]
    share = [[v / t for v in row] for row, t in zip(cm, totals)]
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=classes,
            y=classes,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            text=[[f"{_count(v)}<br>{100 * p:.0f}%" for v, p in zip(row, prow)] for row, prow in zip(cm, share)],
            texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
            colorbar={"title": "share of row"},
        )
    )
    fig.update_layout(
        xaxis_title="predicted",
        yaxis_title="true (FACS gate)",
        yaxis_autorange="reversed",
        height=380,
        margin={"t": 30},
    )
    return fig


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def roc_figure(metrics: dict) -> go.Figure:
    fig = go.Figure()
    per_class = _dict(metrics.get("per_class"))
    for i, (name, curve) in enumerate(_dict(metrics.get("roc")).items()):
        if not isinstance(curve, dict):
            continue
        auc = _finite(metrics.get("micro_auc") if name == "micro" else _dict(per_class.get(name)).get("auc"))
        text = plot_text(name)  # a class's name, or any key a package's ROC curves carry: a legend of text
        label = f"{text} (AUC {auc:.2f})" if auc is not None else text
        fig.add_trace(
            go.Scatter(
                x=_finites(curve.get("fpr")),
                y=_finites(curve.get("tpr")),
                mode="lines",
                name=label,
                line={"color": colour(str(name), i), "dash": "dot" if name == "micro" else "solid"},
            )
        )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#999", "dash": "dash"}, showlegend=False)
    )
    macro = _finite(metrics.get("macro_auc"))
    fig.update_layout(
        xaxis_title="false positive rate",
        yaxis_title="true positive rate",
        height=380,
        margin={"t": 30},
        title={"text": f"one-vs-rest ROC, macro AUC {macro:.2f}" if macro else ""},
    )
    return fig


def reliability_bins(metrics: dict) -> list[dict]:
    """The reliability diagram's bins of ``metrics`` that are numbers (low, high, accuracy, count)."""
    found = metrics.get("reliability")
    bins = []
    for b in found if isinstance(found, list) else []:
        values = {k: _finite(b.get(k)) for k in ("low", "high", "accuracy", "count")} if isinstance(b, dict) else {}
        if values and all(v is not None for v in values.values()):
            bins.append(values)
    return bins


def reliability_figure(metrics: dict) -> go.Figure:
    bins = reliability_bins(metrics)
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=[(b["low"] + b["high"]) / 2 for b in bins],
            y=[b["accuracy"] for b in bins],
            width=[(b["high"] - b["low"]) * 0.9 for b in bins],
            name="accuracy in bin",
            customdata=[int(b["count"]) for b in bins],
            hovertemplate="confidence %{x:.2f}: accuracy %{y:.2f} (n=%{customdata})<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "#999"}, name="perfect calibration")
    )
    fig.update_layout(
        xaxis_title="confidence (score)",
        yaxis_title="accuracy",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1],
        height=380,
        margin={"t": 30},
        title={
            "text": f"accuracy {_num(metrics.get('accuracy'))} · ECE {_num(metrics.get('ece'))}"
            if _finite(metrics.get("accuracy")) is not None
            else f"ECE {_num(metrics.get('ece'))}"
        },
    )
    return fig


def training_figure(training: dict) -> go.Figure:
    """Loss (left axis, from 0) and validation accuracy (right axis, 0 to 1 in steps of 0.2) per epoch."""
    h = _dict(training.get("history"))  # a package's too: numbers only (text would be category labels)
    train_loss, val_loss, val_accuracy = (_finites(h.get(k)) for k in ("train_loss", "val_loss", "val_accuracy"))
    fig = go.Figure()
    epochs = list(range(1, len(train_loss) + 1))
    fig.add_trace(go.Scatter(x=epochs, y=train_loss, name="training loss", mode="lines+markers"))
    if val_loss:
        fig.add_trace(go.Scatter(x=epochs, y=val_loss, name="validation loss", mode="lines+markers"))
    if val_accuracy:
        fig.add_trace(
            go.Scatter(x=epochs, y=val_accuracy, name="validation accuracy", mode="lines+markers", yaxis="y2")
        )
    # both axes get their own ticks: an overlaying axis left to itself follows the other's tick positions
    # (plotly's "sync"), which printed 0.032, 0.243, ... on the accuracy axis
    fig.update_layout(
        xaxis={"title": "epoch", "tickmode": "linear", "tick0": 1, "dtick": max(1, len(epochs) // 10)},
        yaxis={"title": "loss", "rangemode": "tozero", "tickmode": "auto"},
        yaxis2={
            "title": "validation accuracy",
            "overlaying": "y",
            "side": "right",
            "range": [0, 1],
            "tickmode": "linear",
            "tick0": 0,
            "dtick": 0.2,
            "tickformat": ".1f",
            "showgrid": False,
        },
        height=340,
        margin={"t": 30},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


@dataclass
class MetricsCard:
    """Everything a page shows of one set of metrics, built here so that pages only draw it.

    ``heading`` names the cells the numbers come from; ``numbers`` are (label, value, help) for st.metric;
    ``per_class`` rows for a table; ``figures`` the confusion matrix, ROC and reliability figures;
    ``errors`` and ``warnings`` plain sentences.
    """

    heading: str
    numbers: list[tuple[str, str, str | None]]
    per_class: list[dict]
    figures: dict[str, go.Figure]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _num(value, digits: int = 3) -> str:
    number = _finite(value)
    return f"{number:.{digits}f}" if number is not None else "n/a"


def _rounded(value, default: float | None = None) -> float | None:
    """A per-class figure to three places; ``default`` when missing, None when it is not a number."""
    if value is None:
        return default
    number = _finite(value)
    return None if number is None else round(number, 3)


def metrics_card(
    metrics: dict, heading: str, quality: dict | None = None, verdict: str | None = "errors"
) -> MetricsCard:
    """The card of one set of metrics (:func:`lsm_core.ml.metrics.evaluate_probs`): the model's validation or test
    set, or an evaluation job's result. ``quality`` is a :func:`lsm_core.ml.metrics.quality_check` result, whose
    chance level is shown beside the accuracy; ``verdict`` says where its reasons (when it failed) and warnings
    go: "errors" (reasons as errors, warnings as warnings), "warnings" (both as warnings) or None (neither,
    because the page says them elsewhere)."""
    check = quality or {}
    chance = check.get("chance")
    n = _finite(metrics.get("n"))
    numbers = [
        (
            "Accuracy (consistency)",
            _num(metrics.get("accuracy")),
            f"share of the {_count(n) if n is not None else '?'} cells of this set whose predicted class is their "
            "true class",
        ),
        (
            "ECE",
            _num(metrics.get("ece")),
            "expected calibration error (15 bins): how far the scores are from the accuracy they promise"
            + (
                f"; before temperature scaling {_num(metrics['ece_before_scaling'])}"
                if _finite(metrics.get("ece_before_scaling")) is not None
                else ""
            ),
        ),
        ("Macro F1", _num(metrics.get("macro_f1")), None),
        ("Macro AUC", _num(metrics.get("macro_auc")), None),
    ]
    if _finite(chance) is not None:
        p_value = _finite(check.get("p_value"))
        numbers.append(
            (
                "Chance (largest class)",
                _num(chance),
                "what always answering the largest class scores on these cells"
                + (
                    f"; p = {p_value:.2g} (one-sided binomial test of the accuracy against it)"
                    if p_value is not None
                    else ""
                ),
            )
        )
    numbers.append(("Cells", _count(n) if n is not None else "0" if metrics.get("n") is None else "n/a", None))
    per_class = []
    for c, found in _dict(metrics.get("per_class")).items():
        v = _dict(found)
        support = _finite(v.get("support"))
        per_class.append(
            {
                "class": str(c),
                "precision": _rounded(v.get("precision"), 0.0),
                "recall": _rounded(v.get("recall"), 0.0),
                "F1": _rounded(v.get("f1"), 0.0),
                "AUC": _rounded(v.get("auc")),
                "cells": int(support) if support is not None and support.is_integer() else support,
            }
        )
    figures = {}
    notes = []
    if count_matrix(metrics) is not None:
        figures["confusion"] = confusion_figure(metrics)
    elif metrics.get("confusion_matrix"):
        notes.append("The confusion matrix is not a table of counts with a row and a column per class: not drawn.")
    if metrics.get("roc"):
        figures["roc"] = roc_figure(metrics)
    if reliability_bins(metrics) and _finite(metrics.get("ece")) is not None:
        figures["reliability"] = reliability_figure(metrics)
    reasons = list(check.get("reasons") or []) if not check.get("passed", True) else []
    warnings = list(check.get("warnings") or [])
    if verdict is None:
        reasons, warnings = [], []
    elif verdict == "warnings":
        reasons, warnings = [], reasons + warnings
    return MetricsCard(heading, numbers, per_class, figures, reasons, warnings, notes)


def error_profile_text(metrics: dict | None) -> str:
    """What the model's error profile is and what it does to compositions, in words a biologist can check: the
    confusion matrix its batches' compositions are corrected with (lsm_core.reports.correction), and what counting
    alone would report for a batch of equal parts."""
    from lsm_core.reports.correction import NO_PROFILE, model_profile

    profile = model_profile(metrics)
    if profile is None:
        return NO_PROFILE
    counted = profile.rates.mean(axis=0) * 100  # a batch of equal parts, as counting would read it
    even = ", ".join(f"{c} {v:.0f}%" for c, v in zip(profile.classes, counted))
    said = (
        f"Error profile: the confusion matrix of {profile.cells:,} held-out labelled cells ({profile.source}). "
        f"Counting predicted classes alone would report a batch of equal parts as {even}; every batch's "
        "composition is therefore also shown corrected with this matrix, with an interval that carries its "
        "finite size. The correction assumes the cells of each class look like these held-out cells."
    )
    problem = profile.problem()
    return f"{said} It cannot correct here: {problem}." if problem else said


def set_heading(metrics: dict, default: str) -> str:
    """Which cells a set of metrics comes from, e.g. "Validation set (...): 240 cells"."""
    n = _finite(metrics.get("n"))
    text = str(metrics.get("evaluated_on") or f"{default}: {_count(n) if n is not None else '?'} cells")
    return text[:1].upper() + text[1:]


def model_cards(metrics: dict | None, demo: bool = False) -> list[MetricsCard]:
    """The cards of a registered model: its validation set and, when one was evaluated at training, its test
    set. The recorded quality check's verdict and warnings are the model's: the page shows them above the
    cards (:func:`lsm_core.ml.models.model_quality`), so the validation card repeats neither."""
    from lsm_core.ml.metrics import quality_check

    metrics = metrics or {}
    cards = []
    recorded = metrics.get("quality_check") if isinstance(metrics.get("quality_check"), dict) else None
    if metrics.get("confusion_matrix"):
        counted = count_matrix(metrics) is not None  # a package's may be anything: checked only when it is counts
        check = recorded or (quality_check(metrics, None, "validation set") if counted else {})
        card = metrics_card(metrics, set_heading(metrics, "validation set"), check, verdict=None)
        if recorded is None:  # models registered before the check, or imported with their own figures
            card.notes.append("No quality check was recorded when this model was registered.")
        cards.append(card)
    test = metrics.get("test")
    if isinstance(test, dict) and test.get("confusion_matrix"):
        default = "test set (synthetic cells of another seed)" if demo else "test set"
        test_check = test.get("quality_check")
        if isinstance(test_check, dict):
            check = test_check
        else:
            check = quality_check(test, None, "test set") if count_matrix(test) is not None else {}
        said = set((recorded or {}).get("warnings") or [])  # the model's warnings repeat a failed test set's reasons
        check = {**check, "reasons": [r for r in check.get("reasons") or [] if r not in said]}
        cards.append(metrics_card(test, set_heading(test, default), check, verdict="warnings"))
    return cards


def evaluation_card(result: dict, model_label: str, files: list[str]) -> MetricsCard:
    """The card of an evaluation job's result: which model, on which test files, every figure."""
    from lsm_core.ml.metrics import quality_check

    names = ", ".join(files) if files else "the uploaded test files"
    heading = f"{model_label} on {names}: {int(result.get('n', 0)):,} cells"
    check = quality_check(result, None, "test files") if result.get("confusion_matrix") else None
    card = metrics_card(result, heading, check, verdict="warnings")
    unusable = [u for u in result.get("unusable_files") or [] if isinstance(u, (list, tuple)) and len(u) == 2]
    if unusable:  # (file, message) pairs, as the worker stores them
        card.notes.append(
            f"{len(unusable)} file(s) could not be used: "
            + "; ".join(f"{f}: {e}" for f, e in unusable[:5])
            + (" ..." if len(unusable) > 5 else "")
        )
    return card


def model_kind(demo: bool, metrics: dict | None) -> str:
    """What a model is, in the words of the Models table."""
    from lsm_core.ml.models import failed_quality

    if failed_quality(metrics):
        return "synthetic demo, failed quality check" if demo else "failed quality check"
    return "synthetic demo" if demo else "trained on lab data"


TASK_SHORT = {"lsm": "LSM", "aging": "aging"}  # the Models table's task column (the full titles in its help)


def models_table(rows: list) -> list[dict]:
    """One row per model (Model rows, in the order given) for the Models table; every figure says its set:
    "validation ..." (held out from the training data) and, when any model was evaluated on a test set at
    training, "test ..."; ECE stands beside each accuracy. How each column is shown: :func:`models_table_columns`."""
    from lsm_core.ml.models import model_quality

    def num(d: dict, key: str):
        v = d.get(key)
        return round(v, 3) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    any_test = any(isinstance((m.metrics or {}).get("test"), dict) for m in rows)
    out = []
    for m in rows:
        metrics = m.metrics or {}
        passed = model_quality(metrics)[0]
        row = {
            "model": m.name,
            "version": m.version,
            "task": TASK_SHORT.get(m.task, m.task),
            "kind": model_kind(m.demo, metrics),
            "default": "yes" if m.is_default else "",
            "quality check": {True: "passed", False: "failed", None: "not recorded"}[passed],
            "validation accuracy": num(metrics, "accuracy"),
            "validation ECE": num(metrics, "ece"),
            "validation macro F1": num(metrics, "macro_f1"),
            "validation cells": num(metrics, "n"),
        }
        if any_test:
            found = metrics.get("test")
            test = found if isinstance(found, dict) else {}
            row.update(
                {"test accuracy": num(test, "accuracy"), "test ECE": num(test, "ece"), "test cells": num(test, "n")}
            )
        row.update(
            {
                "architecture": m.architecture,
                "created": m.created.strftime("%Y-%m-%d %H:%M"),
                "sha256": m.weights_sha256[:12],
            }
        )
        out.append(row)
    return out


@dataclass(frozen=True)
class TableColumn:
    """How the Models table shows one column of :func:`models_table`: a short header (the set of each number
    still named: "val." or "test"), what it means in full (the header's help), a number format (None: text),
    a width in pixels, and whether it stays in view when the table scrolls sideways."""

    label: str
    help: str
    width: int
    number_format: str | None = None
    pinned: bool = False


def models_table_columns(columns: list[str]) -> dict[str, TableColumn]:
    """How each of ``columns`` (the keys of :func:`models_table`'s rows) is shown in the Models table."""
    from lsm_core.classes import TASK_TITLES

    held_out = "the validation set (cells held out from the training data)"
    test_set = "the test set it was evaluated on at training"
    ece = "expected calibration error on {} (0: each probability is as often right as it says; lower is better)"
    known = {
        "model": TableColumn("model", "the model's name (each version is a row)", 190, pinned=True),
        "version": TableColumn("version", "the model's version", 64, "%d"),
        "task": TableColumn("task", "; ".join(TASK_TITLES.values()), 60),
        "kind": TableColumn("kind", "synthetic demo (trained on synthetic cells only) or trained on lab data", 150),
        "default": TableColumn("default", "yes: the model a new batch of its task is classified with", 64),
        "quality check": TableColumn(
            "quality",
            "the quality check at training: a model that failed it is not offered for classification by default "
            "and cannot be the default; not recorded for imported models and those trained before the check",
            100,
        ),
        "validation accuracy": TableColumn("val. accuracy", f"accuracy on {held_out}", 104, "%.3f"),
        "validation ECE": TableColumn("val. ECE", ece.format(held_out), 76, "%.3f"),
        "validation macro F1": TableColumn("val. F1", f"macro F1 (mean of the classes' F1) on {held_out}", 68, "%.3f"),
        "validation cells": TableColumn("val. cells", f"cells in {held_out}", 80, "%d"),
        "test accuracy": TableColumn("test accuracy", f"accuracy on {test_set}", 108, "%.3f"),
        "test ECE": TableColumn("test ECE", ece.format(test_set), 76, "%.3f"),
        "test cells": TableColumn("test cells", f"cells in {test_set}", 80, "%d"),
        "architecture": TableColumn("architecture", "the network it runs (resnet50_paper: the paper's)", 124),
        "created": TableColumn("created", "when the model was registered", 132),
        "sha256": TableColumn("weights sha256", "the first 12 hex digits of the weights' sha256", 120),
    }
    return {c: known.get(c, TableColumn(c, c, 100)) for c in columns}


@dataclass
class LabelsSection:
    """Where a model's training labels came from ("Training labels" on its card): plain sentences, and rows
    (labels from, class, cells) for a table, left-out cells included."""

    lines: list[str]
    counts: list[dict]


def _number(value: float) -> str:
    return f"{value:,.1f}" if abs(value) < 1e6 else f"{value:.4g}"


def training_labels(training: dict | None) -> LabelsSection | None:
    """The "Training labels" section of a model card, from ``training["labels"]`` (the data's provenance, see
    :func:`lsm_core.ml.train.train_and_register`); None for models registered before it was recorded."""
    parts = (training or {}).get("labels")
    if not isinstance(parts, list) or not parts:
        return None
    lines: list[str] = []
    rows: list[dict] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        mine: list[str] = []
        mine_rows: list[dict] = []
        try:
            _labels_part(part, mine, mine_rows)
        except (
            TypeError,
            ValueError,
            AttributeError,
        ):  # a record from elsewhere (an imported package) not as written here
            lines.append(f"A part of the record ({str(part.get('kind'))[:40]}) could not be read and is left out.")
            continue
        lines += mine
        rows += mine_rows
    return LabelsSection(lines, rows) if lines else None


def _labels_part(part: dict, lines: list[str], rows: list[dict]) -> None:
    """One part of ``training["labels"]`` as lines and table rows (TypeError or ValueError when it is not as
    :func:`lsm_core.ml.train.train_and_register` writes it)."""
    kind = part.get("kind")
    if kind == "folders":
        cells = part.get("cells") or {}
        lines.append(
            f"Class folders (labelled ZIPs or folders named after the classes): {part.get('images', '?')} images."
        )
        rows += [{"labels from": "class folders", "class": c, "cells": n} for c, n in cells.items()]
    elif kind == "batches":
        named = part.get("batches") or {}
        lines.append(
            "Batches labelled with the class their cells were sorted as: "
            + ", ".join(f"batch {b}: {c}" for b, c in named.items())
            + "."
        )
        per_class: dict[str, int] = {}
        for b, n in (part.get("cells") or {}).items():
            cls = named.get(b)
            if cls is not None:
                per_class[cls] = per_class.get(cls, 0) + int(n)
        rows += [{"labels from": "sorted batches", "class": c, "cells": n} for c, n in per_class.items()]
    elif kind == "gate":
        channel = part.get("channel", "?")
        measure = part.get("measure", "mean")
        how = (
            "the mean intensity inside each cell minus the background"
            if measure == "mean"
            else "the integrated intensity of each cell minus the background"
        )
        batches = ", ".join(str(b) for b in part.get("batches") or [])
        lines.append(f"Reporter gate on {channel} ({how}) of batch(es) {batches}: {part.get('rule', '?')}")
        thresholds = part.get("thresholds") or {}
        if thresholds:
            lines.append(
                "Otsu's threshold (high / low) of each batch: "
                + "; ".join(f"batch {b}: {_number(t)}" for b, t in thresholds.items())
            )
        counts = part.get("counts") or {}
        between, no_value = int(counts.get("between", 0)), int(counts.get("no_value", 0))
        unusable = int(counts.get("unusable", 0))
        lines.append(
            f"Left out: {between} cell(s) between the thresholds (no clause covers them), {no_value} with no "
            f"{channel} value" + (f", {unusable} in images that could not be read again" if unusable else "") + "."
        )
        rows += [
            {"labels from": "reporter gate", "class": c, "cells": n} for c, n in (counts.get("labelled") or {}).items()
        ]
        rows.append({"labels from": "reporter gate", "class": "left out: between the thresholds", "cells": between})
        rows.append({"labels from": "reporter gate", "class": f"left out: no {channel} value", "cells": no_value})
    elif kind == "reviews":
        batches = ", ".join(str(b) for b in part.get("batches") or [])
        people = part.get("labelled_by") or {}
        lines.append(
            f"Cells of batch(es) {batches} that reviewers gave a class (their consensus), labelled by "
            + (", ".join(f"{who} ({n})" for who, n in people.items()) or "nobody")
            + f"; {int(part.get('disputed', 0))} disputed (the newest label counted), "
            f"{int(part.get('not_a_cell', 0))} marked as not a cell left out."
        )
        lines.append(f"Label set sha256: {part.get('sha256', '?')}")
        source = "reviewed cells"
        rows += [{"labels from": source, "class": c, "cells": n} for c, n in (part.get("cells") or {}).items()]
        unusable = int(part.get("unusable", 0))
        if unusable:
            rows.append({"labels from": source, "class": "left out: image not readable", "cells": unusable})


def lineage_text(chain: list[str]) -> str:
    """A model's lineage as people read it: ``demo-lsm v1 → lsm-lab v1 → lsm-lab v2``."""
    return " → ".join(chain)


def package_zip(folder: Path) -> bytes:
    """A model package (manifest.json + weights.safetensors) as one ZIP, for export."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ("manifest.json", "weights.safetensors"):
            zf.write(folder / name, f"{folder.parent.name}-v{folder.name}/{name}")
    return buf.getvalue()


def origin_text(training: dict | None) -> str | None:
    """Where an imported model came from (``training["imported_from"]``), as plain text; None when it was
    trained here."""
    origin = (training or {}).get("imported_from")
    if not isinstance(origin, dict):
        return None
    authors = ", ".join(str(a) for a in origin.get("authors") or []) or "authors not named"
    cite = "; ".join(
        str(c.get("text", "")) + (f" (doi:{c['doi']})" if c.get("doi") else f" ({c['url']})" if c.get("url") else "")
        for c in origin.get("cite") or []
        if isinstance(c, dict)
    )
    lines = [
        f"Imported from the BioImage Model Zoo package {origin.get('name', '?')!s} (version "
        f"{origin.get('version', '?')!s}, licence {origin.get('license', '?')!s}), file {origin.get('file', '?')!s}, "
        f"sha256 {origin.get('sha256', '?')!s}.",
        f"Authors: {authors}.",
    ]
    if cite:
        lines.append(f"Cite: {cite}.")
    if origin.get("exported_from"):
        app = str(origin.get("app") or "this app")  # packages exported before the app's name was recorded
        by = f" by {app} {origin['app_version']}" if origin.get("app_version") else ""
        lines.append(f"Exported from {origin['exported_from']!s}{by}.")
    return "\n".join(lines)


def _listed(value: object) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def model_card_markdown(manifest, lineage: list[str] | None = None) -> str:
    """A registered model's card as Markdown (the README of an exported bioimage.io package): what it is for,
    its training data and recipe, and a Validation section (the evaluation metrics of its validation and test
    sets, the calibration, the quality check), then its limitations. ``manifest``: a
    :class:`lsm_core.ml.models.Manifest`."""
    m = manifest
    training = m.training or {}
    out = [f"# {_md(m.name)} v{m.version}", ""]
    task = {"lsm": "LT-HSC, ST-HSC or MPP", "aging": "young or aged LT-HSC"}.get(m.task, m.task)
    out += [
        f"Classifies a single-cell DIC crop of a mouse hematopoietic stem or progenitor cell as {task} "
        f"(classes, in the output's order: {', '.join(_md(c) for c in m.classes)}), after {_md(PAPER_CITATION)}.",
        "",
    ]
    if m.description:
        out += [_md(m.description), ""]
    if m.demo:
        out += [
            "**A demonstration model trained on synthetic DIC-like cells.** It is not a model of real cells: do not "
            "use its output for biology.",
            "",
        ]
    out += [
        "## Input",
        "",
        f"- one grey channel, {m.input_size} x {m.input_size} pixels: a {m.crop_um:.3g} µm square centred on the "
        f"cell ({m.crop_um / m.input_size:.4g} µm/px as the network sees it; trained on images at "
        f"{m.pixel_size_um:.4g} µm/px)",
        "- single-cell crops: "
        + (
            "cut as the same square around their centre at the image's calibration (the cell keeps its size)"
            if keeps_size(m)
            else "resized whole to fill the input (the cell's size is not seen; a field's cells keep theirs)"
        ),
        f"- {_md(m.normalisation)}",
        "",
        "## Output",
        "",
        f"The probability of each class (softmax of the logits divided by the temperature T = {m.temperature:.3g}).",
        "",
        "## Training",
        "",
        f"- architecture: {m.architecture}",
    ]
    counts = _dict(training.get("class_counts"))  # an imported package's training record: its own text
    if counts:
        out.append("- labelled cells: " + ", ".join(f"{_md(c)} {_md(n)}" for c, n in counts.items()))
    split = _dict(training.get("split"))
    if split:
        out.append(
            f"- split by source (file or mouse): {_md(split.get('train', '?'))} training cells from "
            f"{_md(split.get('sources_train', '?'))} sources, {_md(split.get('validation', '?'))} validation cells "
            f"from {_md(split.get('sources_validation', '?'))}"
        )
    recipe = _dict(training.get("recipe"))
    if recipe:
        out.append("- recipe: " + ", ".join(f"{_md(k)} {_md(v)}" for k, v in recipe.items()))
    if "imagenet_init" in training:
        out.append(f"- initialisation: {'ImageNet' if training['imagenet_init'] else 'random'}")
    if training.get("data_sha256"):
        out.append(f"- training data sha256: {_md(training['data_sha256'])}")
    section = training_labels(training)
    if section:
        out += [f"- labels: {_md(line)}" for line in section.lines]
    if lineage and len(lineage) > 1:
        out.append(f"- lineage: {_md(lineage_text(lineage))}")
    origin = origin_text(training)
    if origin:
        out += ["", "## Origin", "", *[_md(line) + "  " for line in origin.splitlines()]]
    out += ["", "## Validation", ""]
    metrics = m.metrics or {}
    sets = [(set_heading(metrics, "validation set"), metrics)] if metrics.get("confusion_matrix") else []
    test = metrics.get("test")
    if isinstance(test, dict) and test.get("confusion_matrix"):
        sets.append((set_heading(test, "test set"), test))
    if not sets:
        out += ["No evaluation was recorded for this model.", ""]
    for heading, values in sets:
        card = metrics_card(values, heading, None, verdict=None)
        out += [f"### {_md(heading)}", "", "| metric | value |", "| --- | --- |"]
        out += [f"| {_md(label)} | {value} |" for label, value, _ in card.numbers]
        if card.per_class:
            out += ["", "| class | precision | recall | F1 | AUC | cells |", "| --- | --- | --- | --- | --- | --- |"]
            out += [
                f"| {_md(r['class'])} | {r['precision']} | {r['recall']} | {r['F1']} | {r['AUC']} | {r['cells']} |"
                for r in card.per_class
            ]
        out.append("")
    out += ["### Calibration", ""]
    if isinstance(metrics.get("ece"), (int, float)):
        before = metrics.get("ece_before_scaling")
        said = f" (before scaling {_num(before)})" if isinstance(before, (int, float)) else ""
        out.append(
            f"Temperature T = {m.temperature:.3g}, fitted on the validation set: expected calibration error "
            f"{_num(metrics['ece'])}{said}."
        )
    else:
        out.append(f"Temperature T = {m.temperature:.3g}; no calibration was measured.")
    check = metrics.get("quality_check")
    if isinstance(check, dict):
        out += ["", "### Quality check", "", "passed" if check.get("passed") else "**failed**"]
        out += [f"- {_md(r)}" for r in [*_listed(check.get("reasons")), *_listed(check.get("warnings"))]]
    out += [
        "",
        "## Limitations",
        "",
        "Trained on one lab's microscope, staining-free DIC, and sorting gates; check it on your own sorted cells "
        "before relying on it. The cells' crops must be cut as described under Input (the app's cell finder).",
        "",
    ]
    return "\n".join(out)
