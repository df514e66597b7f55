"""Evaluation of a classifier and its calibration (numbers from scikit-learn where it has them).

:func:`evaluate_probs` gives accuracy (the paper's "consistency"), per-class precision / recall / F1 and
one-vs-rest ROC AUC, macro and weighted averages, the confusion matrix, ROC curves (per class, micro and
macro AUC), a reliability diagram, the expected calibration error (15 equal-width bins) and the NLL.
:func:`fit_temperature` fits the temperature that minimises the NLL of validation logits.
:func:`quality_check` says whether a model's accuracy on a labelled set is clearly above chance (recorded in
a new model's metrics at registration); :func:`lsm_core.ml.models.model_quality` reads that record back for
pages and the registry.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn import metrics as skm

from lsm_core.ml.predict import softmax

N_BINS = 15

# The temperature is searched between these bounds (log scale). A fit at a bound means the NLL wanted more:
# at 20 the scores carry next to no information (every probability is pulled towards 1/C, which makes the
# ECE of a useless model look excellent); at 0.05 they were sharpened as far as allowed.
TEMPERATURE_MIN = 0.05
TEMPERATURE_MAX = 20.0
TEMPERATURE_BOUND_TOLERANCE = 0.01  # "at the bound": within 1% of it (the search stops within ~1e-5 on log T)

# The quality check (see quality_check). A model passes when its accuracy on the validation set beats the
# no-information rate (the share of the largest class, at least 1/C: what always answering that class
# scores) by at least QUALITY_MIN_MARGIN *and* a one-sided exact binomial test of "accuracy > no-information
# rate" gives p < QUALITY_MAX_P. The margin rules out a difference too small to matter on a large set (with
# 1000 cells p < 0.01 is reached at 0.369 for three classes); the test rules out luck on a small one (with
# 12 cells a 0.75 accuracy is needed, with 30 cells 0.567). It also fails when the model gives one class to
# QUALITY_ONE_CLASS_SHARE or more of the cells although that class is a smaller share of the truth.
QUALITY_MIN_MARGIN = 0.05
QUALITY_MAX_P = 0.01
QUALITY_ONE_CLASS_SHARE = 0.95


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(p).mean())


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> tuple[list[dict], float]:
    """Confidence bins (count, mean confidence, accuracy) and the expected calibration error."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    bins, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        n = int(sel.sum())
        if n:
            acc, mean_conf = float(correct[sel].mean()), float(conf[sel].mean())
            ece += n / len(labels) * abs(acc - mean_conf)
            bins.append({"low": float(lo), "high": float(hi), "count": n, "confidence": mean_conf, "accuracy": acc})
    return bins, float(ece)


def evaluate_probs(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Every metric of the model card, as plain JSON-able values."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    k = len(classes)
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=range(k), zero_division=0)
    onehot = np.eye(k)[labels]
    per_class, curves = {}, {}
    aucs: list[float] = []
    for i, c in enumerate(classes):
        has_both = 0 < onehot[:, i].sum() < len(labels)
        auc: float | None = None
        if has_both:
            auc = float(skm.roc_auc_score(onehot[:, i], probs[:, i]))
            fpr, tpr, _ = skm.roc_curve(onehot[:, i], probs[:, i])
            curves[c] = {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist()}
            aucs.append(auc)
        per_class[c] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "auc": auc,
        }
    fpr, tpr, _ = skm.roc_curve(onehot.ravel(), probs.ravel())  # micro: every (cell, class) pair pooled
    micro_auc = float(skm.auc(fpr, tpr))
    step = max(1, len(fpr) // 500)
    curves["micro"] = {"fpr": fpr[::step].round(4).tolist(), "tpr": tpr[::step].round(4).tolist()}
    bins, ece = reliability(probs, labels)
    return {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "macro_f1": float(skm.f1_score(labels, pred, average="macro", labels=range(k), zero_division=0)),
        "weighted_f1": float(skm.f1_score(labels, pred, average="weighted", labels=range(k), zero_division=0)),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "weighted_precision": float(np.average(precision, weights=np.maximum(support, 0)) if support.sum() else 0.0),
        "weighted_recall": float(np.average(recall, weights=np.maximum(support, 0)) if support.sum() else 0.0),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "micro_auc": micro_auc,
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(labels, pred, labels=range(k)).tolist(),
        "roc": curves,
        "reliability": bins,
        "ece": ece,
        "nll": nll(probs, labels),
        "classes": list(classes),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) (Guo et al., 2017)."""
    labels = np.asarray(labels, np.int64)
    result = minimize_scalar(
        lambda log_t: nll(softmax(logits, float(np.exp(log_t))), labels),
        bounds=(np.log(TEMPERATURE_MIN), np.log(TEMPERATURE_MAX)),
        method="bounded",
    )
    return float(np.exp(result.x))


def temperature_warning(temperature: float | None) -> str | None:
    """A plain sentence when a fitted temperature sits at (or within a hair of) a bound of :func:`fit_temperature`."""
    if temperature is None or not np.isfinite(temperature) or temperature <= 0:
        return None
    if abs(np.log(temperature / TEMPERATURE_MAX)) <= TEMPERATURE_BOUND_TOLERANCE:
        return (
            f"The temperature hit its bound of {TEMPERATURE_MAX:g}: the model's scores carry almost no information "
            "(every probability is pulled towards an even split); calibration figures such as the ECE are not "
            "meaningful."
        )
    if abs(np.log(temperature / TEMPERATURE_MIN)) <= TEMPERATURE_BOUND_TOLERANCE:
        return (
            f"The temperature hit its bound of {TEMPERATURE_MIN:g}: the scores were sharpened as far as allowed "
            "and may still be under-confident; calibration figures such as the ECE are not reliable."
        )
    return None


def quality_check(metrics: dict, temperature: float | None = None, set_name: str = "validation set") -> dict:
    """Whether the accuracy in ``metrics`` (from :func:`evaluate_probs`) is clearly above chance.

    Chance is the no-information rate: the share of the largest class among these cells, at least 1/C. The
    model passes when accuracy - chance >= QUALITY_MIN_MARGIN and a one-sided exact binomial test (scipy's
    ``binomtest``, alternative "greater") gives p < QUALITY_MAX_P, and it does not give one class to (nearly)
    every cell. A temperature at a fitting bound is a warning. Returns plain JSON: ``passed``, ``accuracy``,
    ``chance``, ``margin``, ``p_value``, ``n``, ``reasons`` and ``warnings`` (plain sentences), and the
    constants used.
    """
    from scipy.stats import binomtest

    classes = list(metrics.get("classes") or [])
    cm = np.asarray(metrics.get("confusion_matrix") or [], np.int64)
    k = max(len(classes), 2)
    n = int(cm.sum()) if cm.size else int(metrics.get("n", 0))
    reasons: list[str] = []
    warnings: list[str] = []
    if cm.size and n:
        hits = int(np.trace(cm))
        truth = cm.sum(axis=1) / n
        predicted = cm.sum(axis=0) / n
    else:
        hits = int(round(float(metrics.get("accuracy", 0.0)) * n))
        truth = predicted = np.zeros(0)
    accuracy = hits / n if n else 0.0
    chance = max(float(truth.max()) if truth.size else 0.0, 1.0 / k)
    margin = accuracy - chance
    p_value = float(binomtest(hits, n, chance, alternative="greater").pvalue) if n and chance < 1 else 1.0
    if n == 0:
        reasons.append(f"The {set_name} holds no cells, so the model could not be checked.")
    elif margin < QUALITY_MIN_MARGIN or p_value >= QUALITY_MAX_P:
        parts = []
        if margin < QUALITY_MIN_MARGIN:
            parts.append(f"it is {margin:+.3f} from chance and at least {QUALITY_MIN_MARGIN:+.2f} is required")
        if p_value >= QUALITY_MAX_P:
            parts.append(
                f"a one-sided binomial test gives p = {p_value:.2g} and below {QUALITY_MAX_P:g} is required"
                + ("; with this few cells the accuracy could be luck" if margin >= QUALITY_MIN_MARGIN else "")
            )
        what = (
            f"Its accuracy on the {set_name} ({accuracy:.3f} on {n} cells) is not clearly above chance "
            f"({chance:.3f}, what always answering the largest class scores): " + "; ".join(parts) + "."
        )
        reasons.append(what)
    if predicted.size and n:
        top = int(np.argmax(predicted))
        if predicted[top] >= QUALITY_ONE_CLASS_SHARE and truth[top] < QUALITY_ONE_CLASS_SHARE:
            name = classes[top] if top < len(classes) else str(top)
            reasons.append(
                f"It predicts {name} for {int(round(predicted[top] * n))} of the {n} cells of the "
                f"{set_name}, although {name} is {truth[top]:.0%} of them: it has not learned to tell "
                "the classes apart."
            )
    note = temperature_warning(temperature)
    if note:
        warnings.append(note)
    return {
        "passed": not reasons,
        "accuracy": accuracy,
        "chance": chance,
        "margin": margin,
        "p_value": p_value,
        "n": n,
        "set": set_name,
        "reasons": reasons,
        "warnings": warnings,
        "rule": {
            "min_margin": QUALITY_MIN_MARGIN,
            "max_p": QUALITY_MAX_P,
            "one_class_share": QUALITY_ONE_CLASS_SHARE,
            "test": "one-sided exact binomial test of accuracy against the no-information rate",
        },
    }
