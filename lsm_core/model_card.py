"""Figures of a model card, from the metrics a manifest (or an evaluation job) carries. No UI."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import plotly.graph_objects as go

from lsm_core.report import colour


def confusion_figure(metrics: dict) -> go.Figure:
    classes = metrics["classes"]
    cm = metrics["confusion_matrix"]
    totals = [max(1, sum(row)) for row in cm]
    share = [[v / t for v in row] for row, t in zip(cm, totals)]
    fig = go.Figure(go.Heatmap(
        z=share, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1,
        text=[[f"{v}<br>{100 * p:.0f}%" for v, p in zip(row, prow)] for row, prow in zip(cm, share)],
        texttemplate="%{text}", hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
        colorbar={"title": "share of row"},
    ))
    fig.update_layout(xaxis_title="predicted", yaxis_title="true (FACS gate)", yaxis_autorange="reversed", height=380,
                      margin={"t": 30})
    return fig


def roc_figure(metrics: dict) -> go.Figure:
    fig = go.Figure()
    for i, (name, curve) in enumerate(metrics.get("roc", {}).items()):
        auc = metrics["per_class"].get(name, {}).get("auc") if name != "micro" else metrics.get("micro_auc")
        label = f"{name} (AUC {auc:.2f})" if auc is not None else name
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=label,
                                 line={"color": colour(name, i), "dash": "dot" if name == "micro" else "solid"}))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#999", "dash": "dash"}, showlegend=False))
    fig.update_layout(xaxis_title="false positive rate", yaxis_title="true positive rate", height=380, margin={"t": 30},
                      title={"text": f"one-vs-rest ROC, macro AUC {metrics['macro_auc']:.2f}" if metrics.get("macro_auc") else ""})
    return fig


def reliability_figure(metrics: dict) -> go.Figure:
    bins = metrics.get("reliability", [])
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[(b["low"] + b["high"]) / 2 for b in bins], y=[b["accuracy"] for b in bins],
                         width=[(b["high"] - b["low"]) * 0.9 for b in bins], name="accuracy in bin",
                         customdata=[b["count"] for b in bins], hovertemplate="confidence %{x:.2f}: accuracy %{y:.2f} (n=%{customdata})<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "#999"}, name="perfect calibration"))
    fig.update_layout(xaxis_title="confidence (score)", yaxis_title="accuracy", xaxis_range=[0, 1], yaxis_range=[0, 1],
                      height=380, margin={"t": 30}, title={"text": f"ECE {metrics['ece']:.3f}"})
    return fig


def training_figure(training: dict) -> go.Figure:
    h = training.get("history", {})
    fig = go.Figure()
    epochs = list(range(1, len(h.get("train_loss", [])) + 1))
    fig.add_trace(go.Scatter(x=epochs, y=h.get("train_loss", []), name="training loss", mode="lines+markers"))
    if h.get("val_loss"):
        fig.add_trace(go.Scatter(x=epochs, y=h["val_loss"], name="validation loss", mode="lines+markers"))
    if h.get("val_accuracy"):
        fig.add_trace(go.Scatter(x=epochs, y=h["val_accuracy"], name="validation accuracy", mode="lines+markers", yaxis="y2"))
    fig.update_layout(xaxis_title="epoch", yaxis_title="loss", height=340, margin={"t": 30},
                      yaxis2={"title": "accuracy", "overlaying": "y", "side": "right", "range": [0, 1]})
    return fig


def package_zip(folder: Path) -> bytes:
    """A model package (manifest.json + weights.safetensors) as one ZIP, for export."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ("manifest.json", "weights.safetensors"):
            zf.write(folder / name, f"{folder.parent.name}-v{folder.name}/{name}")
    return buf.getvalue()
