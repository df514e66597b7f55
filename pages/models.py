"""Models page: the registered classifiers, their model cards, defaults, import, export, training, evaluation."""
import json
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from db import queries
from db.schema import Job
from lsm_core import jobs
from lsm_core.errors import LsmError
from lsm_core.images import RawFile
from lsm_core.model_card import confusion_figure, package_zip, reliability_figure, roc_figure, training_figure
from lsm_core.models import ModelStore
from lsm_core.registry import import_model, set_default
from lsm_core.tasks import TASK_TITLES
from pages._shared import admin, sessions, user

st.title("Models")
st.caption("Classifiers of this lab. Demo models are trained on synthetic cells only and say nothing about real cells.")
factory = sessions()
with factory() as s:
    rows = queries.models(s)
administers = admin()  # what the page offers; the functions it calls check again


def headline(m) -> dict:
    metrics = m.metrics or {}
    return {
        "model": m.name, "version": m.version, "task": TASK_TITLES.get(m.task, m.task),
        "kind": "synthetic demo" if m.demo else "trained on lab data",
        "default": "yes" if m.is_default else "",
        "accuracy": round(metrics["accuracy"], 3) if isinstance(metrics.get("accuracy"), (int, float)) else None,
        "macro F1": round(metrics["macro_f1"], 3) if isinstance(metrics.get("macro_f1"), (int, float)) else None,
        "ECE": round(metrics["ece"], 3) if isinstance(metrics.get("ece"), (int, float)) else None,
        "architecture": m.architecture, "created": m.created.strftime("%Y-%m-%d %H:%M"), "sha256": m.weights_sha256[:12],
    }


if not rows:
    st.info("No models are registered yet. `python -m lsm_core serve` registers the synthetic demo models; "
            "below you can import weights or train a model.")
else:
    st.dataframe(pd.DataFrame([headline(m) for m in rows]), hide_index=True, width="stretch")

tabs = st.tabs(["Model card", "Train", "Evaluate", "Import / export"])

with tabs[0]:
    if rows:
        labels = {f"{TASK_TITLES.get(m.task, m.task)} · {m.label}": m for m in rows}
        m = labels[st.selectbox("Model", list(labels), key="card_model")]
        if m.demo:
            st.warning("A **synthetic demo** model: its figures describe synthetic cells only.")
        metrics = m.metrics or {}
        if "confusion_matrix" in metrics:
            st.caption(f"Metrics on {metrics.get('evaluated_on', 'held-out cells')}; "
                       f"temperature {m.temperature:.2f} (fitted on the validation set, applied at inference)")
            c = st.columns(4)
            c[0].metric("Accuracy (consistency)", f"{metrics['accuracy']:.3f}")
            c[1].metric("Macro F1", f"{metrics['macro_f1']:.3f}")
            c[2].metric("Macro AUC", f"{metrics['macro_auc']:.3f}" if metrics.get("macro_auc") else "n/a")
            c[3].metric("ECE", f"{metrics['ece']:.3f}",
                        help=f"before temperature scaling: {metrics.get('ece_before_scaling', float('nan')):.3f}")
            st.dataframe(pd.DataFrame([{"class": k, **{kk: (round(vv, 3) if isinstance(vv, float) else vv)
                                                       for kk, vv in v.items()}} for k, v in metrics["per_class"].items()]),
                         hide_index=True, width="stretch")
            c = st.columns(3)
            c[0].plotly_chart(confusion_figure(metrics), width="stretch", key="card_cm")
            c[1].plotly_chart(roc_figure(metrics), width="stretch", key="card_roc")
            c[2].plotly_chart(reliability_figure(metrics), width="stretch", key="card_rel")
        else:
            st.info("This model carries no evaluation yet; evaluate it on a labelled test set (tab Evaluate).")
        training = m.training or {}
        if training.get("history"):
            st.markdown("**Training curves**")
            st.plotly_chart(training_figure(training), width="stretch", key="card_train")
        if training:
            st.markdown("**Training summary**")
            st.json({k: v for k, v in training.items() if k != "history"}, expanded=False)
        if not m.is_default:
            if st.button(f"Make {m.name} v{m.version} the default {m.task} model", disabled=not administers,
                         help=None if administers else "Only administrators choose default models."):
                try:
                    set_default(factory, m.id, user())
                    st.rerun()
                except LsmError as exc:
                    st.error(str(exc))
        else:
            st.caption("This is the default model for its task.")


def recent(kind: str) -> list[Job]:
    with factory() as s:
        return [j for j in queries.jobs_list(s, limit=50) if j.kind == kind][:5]


@st.fragment(run_every=2.0)
def job_list(kind: str) -> None:
    for j in recent(kind):
        label = f"job {j.id} · {j.owner} · {j.status}"
        if j.kind == "train":
            label += f" · epoch {j.progress_done} of {j.progress_total}"
            if j.result and j.result.get("val_accuracy") is not None:
                label += f" · validation accuracy {j.result['val_accuracy']:.3f}"
            if j.status == "done" and j.result:
                label += f" · registered {j.result.get('model')}"
        st.text(label + (f" · {j.error}" if j.error else ""))
        if j.status == "running" and j.progress_total:
            st.progress(j.progress_done / j.progress_total)
        if j.status in ("queued", "running") and st.button("Cancel", key=f"cancel_{j.id}"):
            jobs.cancel(factory, j.id, user())
        if j.kind == "evaluate" and j.status == "done" and j.result:
            r = j.result
            st.text(f"  accuracy {r['accuracy']:.3f} · macro F1 {r['macro_f1']:.3f} · ECE {r['ece']:.3f} · n={r['n']}")


with tabs[1]:
    st.markdown("Train a new model version with the paper's recipe on cells sorted by FACS: upload a ZIP whose "
                "folders are named after the classes (LT-HSC, ST-HSC, MPP or young, aged), and/or choose classified "
                "batches and the class each one was sorted as.")
    if not administers:
        st.info("Only administrators train models (a trained model becomes a choice for the whole lab). "
                "Ask one of them, or see the Lab page for who they are.")
    with st.form("train"):
        c = st.columns(3)
        task = c[0].selectbox("Task", list(TASK_TITLES), format_func=lambda t: TASK_TITLES[t])
        name = c[1].text_input("Model name", placeholder="e.g. lsm-lab")
        arch = c[2].selectbox("Architecture", ["resnet50_paper", "resnet18", "small_cnn"])
        c = st.columns(4)
        epochs = c[0].number_input("Epochs", 1, 500, 20)
        batch_size = c[1].number_input("Batch size", 8, 4096, 512)
        lr = c[2].number_input("Learning rate (head)", 1e-6, 1.0, 5e-4, format="%.5f")
        seed = c[3].number_input("Seed", 0, 2**31 - 1, 0)
        upload = st.file_uploader("Labelled ZIP (folders named after the classes)", type=None, accept_multiple_files=True,
                                  key="train_zip")
        batch_labels = st.text_area("Labelled batches (optional): one `batch id: class` per line, e.g. `12: LT-HSC`")
        go = st.form_submit_button("Start training")
    if go:
        try:
            labelled = {}
            for line in batch_labels.splitlines():
                if line.strip():
                    left, _, right = line.partition(":")
                    if not left.strip().isdigit() or not right.strip():
                        raise LsmError(f"cannot read {line!r}: write `batch id: class`")
                    labelled[int(left)] = right.strip()
            uploads = jobs.store_uploads([RawFile(f.name, f.getvalue()) for f in upload or []])
            config = {"architecture": arch, "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
                      "seed": int(seed)}
            job_id = jobs.submit_training(factory, task, name.strip(), config, owner=user(), uploads=uploads,
                                          batches=labelled)
            st.success(f"Training queued as job {job_id}; it runs on a worker and appears below.")
        except LsmError as exc:
            st.error(str(exc))
    job_list("train")

with tabs[2]:
    if rows:
        labels = {f"{TASK_TITLES.get(m.task, m.task)} · {m.label}": m.id for m in rows}
        with st.form("evaluate"):
            chosen = st.selectbox("Model", list(labels))
            test = st.file_uploader("Labelled test ZIP (folders named after the classes)", accept_multiple_files=True,
                                    key="eval_zip")
            go = st.form_submit_button("Start evaluation")
        if go:
            try:
                uploads = jobs.store_uploads([RawFile(f.name, f.getvalue()) for f in test or []])
                job_id = jobs.submit_evaluation(factory, labels[chosen], uploads, owner=user())
                st.success(f"Evaluation queued as job {job_id}.")
            except LsmError as exc:
                st.error(str(exc))
        job_list("evaluate")

with tabs[3]:
    st.markdown("**Import** a PyTorch state_dict (`.pt`, `.pth`; loaded with `weights_only=True`) or a "
                "`.safetensors` file with its `manifest.json` (task, name, classes in output order, architecture).")
    with st.form("import"):
        weights = st.file_uploader("Weights", key="imp_w")
        manifest = st.file_uploader("manifest.json", key="imp_m")
        go = st.form_submit_button("Import")
    if go:
        if not administers:
            st.error("Only administrators import models.")
        elif not weights or not manifest:
            st.error("Choose both the weights and the manifest.")
        else:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    wpath = Path(tmp) / Path(weights.name).name
                    wpath.write_bytes(weights.getvalue())
                    mpath = Path(tmp) / "manifest.json"
                    mpath.write_bytes(manifest.getvalue())
                    row = import_model(factory, wpath, mpath, user())
                st.success(f"Registered {row.label}.")
            except LsmError as exc:
                st.error(str(exc))
    if rows:
        labels = {f"{TASK_TITLES.get(m.task, m.task)} · {m.label}": m for m in rows}
        m = labels[st.selectbox("Export a model package", list(labels), key="export_model")]
        folder = ModelStore().root / m.path
        st.download_button(f"Download {m.name}-v{m.version}.zip (manifest + weights)", lambda: package_zip(folder),
                           file_name=f"{m.name}-v{m.version}.zip", mime="application/zip", on_click="ignore")
        with st.expander("manifest.json"):
            st.code(json.dumps({k: v for k, v in json.loads((folder / "manifest.json").read_text()).items()
                                if k not in ("metrics", "training")}, indent=2), language="json")
