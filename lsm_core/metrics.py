"""Evaluation of a classifier and its calibration (numbers from scikit-learn where it has them).

:func:`evaluate_probs` gives accuracy (the paper's "consistency"), per-class precision / recall / F1 and
one-vs-rest ROC AUC, macro and weighted averages, the confusion matrix, ROC curves (per class, micro and
macro AUC), a reliability diagram, the expected calibration error (15 equal-width bins) and the NLL.
:func:`fit_temperature` fits the temperature that minimises the NLL of validation logits.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn import metrics as skm

N_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


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
    aucs = []
    for i, c in enumerate(classes):
        has_both = 0 < onehot[:, i].sum() < len(labels)
        auc = float(skm.roc_auc_score(onehot[:, i], probs[:, i])) if has_both else None
        if has_both:
            fpr, tpr, _ = skm.roc_curve(onehot[:, i], probs[:, i])
            curves[c] = {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist()}
            aucs.append(auc)
        per_class[c] = {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i]), "auc": auc}
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
    result = minimize_scalar(lambda log_t: nll(softmax(logits, float(np.exp(log_t))), labels),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))
