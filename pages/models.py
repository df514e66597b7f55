"""Models page: the registered classifiers, their model cards, defaults, import, export, training, evaluation."""

from collections.abc import Sequence

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from db import queries
from db.schema import Model
from lsm_core.classes import TASK_TITLES
from lsm_core.errors import LsmError
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.lab.gating import EXAMPLE as GATE_EXAMPLE
from lsm_core.lab.gating import parse_batch_ids
from lsm_core.lab.registry import (
    import_model_bytes,
    import_zoo_package,
    lineage,
    offered_models,
    record_error_profile,
    set_default,
)
from lsm_core.lab.tasks import evaluate, train
from lsm_core.lab.training_data import parse_labelled_batches
from lsm_core.ml import nets
from lsm_core.ml.models import model_quality
from lsm_core.ml.shift import summary as shift_summary
from lsm_core.reports.model_card import (
    MetricsCard,
    error_profile_text,
    evaluation_card,
    lineage_text,
    model_cards,
    models_table,
    models_table_columns,
    origin_text,
    package_zip,
    training_figure,
    training_labels,
)
from lsm_core.reports.text import escape_markdown
from lsm_core.reports.zoo import export_for_zoo
from pages._common import admin, the_lab, user
from pages._shared import chart, job_list

ZOO_LICENSES = ["CC-BY-4.0", "MIT", "Apache-2.0", "BSD-3-Clause", "CC0-1.0"]
ARCHITECTURES = [a for a in nets.REGISTRY if a != "tiny_cnn"]  # the registry's, less the tests' toy network
ARCHITECTURES.sort(key=lambda a: a != "resnet50_paper")  # the paper's first: the default

st.title("Models")
st.caption(
    "Classifiers of this lab. Demo models are trained on synthetic cells only and say nothing about real cells. "
    "Every figure says which cells it comes from: the validation set (held out from the training data) or a "
    "test set."
)
lab = the_lab()
with lab() as s:
    rows = offered_models(s, include_failed=True)  # LSM first, each task's default first (lsm_core.lab.registry)
administers = admin()  # what the page offers; the functions it calls check again
me = user()


def option(m: Model) -> str:
    return f"{TASK_TITLES.get(m.task, m.task)} · {m.label}"


def show_card(card: MetricsCard, key: str) -> None:
    """Draw a card built by lsm_core.reports.model_card: which cells, verdicts, numbers, per-class table, figures."""
    st.markdown(f"**{escape_markdown(card.heading)}**")
    for message in card.errors:  # may name evaluation files: text, never Markdown
        st.error(escape_markdown(message))
    for message in card.warnings:
        st.warning(escape_markdown(message))
    for message in card.notes:
        st.caption(escape_markdown(message))
    cols = st.columns(len(card.numbers))
    for col, (label, value, help_text) in zip(cols, card.numbers):  # a help is Markdown; it may say a package's n
        col.metric(label, value, help=escape_markdown(help_text) if help_text else None)
    if card.per_class:
        st.dataframe(pd.DataFrame(card.per_class), hide_index=True, width="stretch")
    cols = st.columns(max(1, len(card.figures)))
    for col, (name, fig) in zip(cols, card.figures.items()):
        chart(fig, name.lower().replace(" ", "_"), f"{key}_{name}", col)


if not rows:
    st.info(
        "No models are registered yet. `python -m lsm_core serve` registers the synthetic demo models; "
        "below you can import weights or train a model."
    )
else:
    table = pd.DataFrame(models_table(rows))
    shown = {  # short headers, each explained on hover; numbers to three places; the model's name stays in view
        name: st.column_config.NumberColumn(c.label, help=c.help, width=c.width, format=c.number_format)
        if c.number_format
        else st.column_config.TextColumn(c.label, help=c.help, width=c.width, pinned=c.pinned)
        for name, c in models_table_columns(list(table.columns)).items()
    }
    st.dataframe(table, hide_index=True, width="stretch", column_config=shown, placeholder="–")

tabs = st.tabs(["Model card", "Train", "Evaluate", "Import / export"])

with tabs[0]:
    if rows:
        labels = {option(m): m for m in rows}
        m = labels[st.selectbox("Model", list(labels), key="card_model")]
        if m.demo:
            st.warning("A **synthetic demo** model: its figures describe synthetic cells only.")
        passed, reasons, warnings = model_quality(m.metrics)
        if passed is False:
            st.error(
                "This model **failed its quality check**: it is not offered for classification by default "
                "and cannot be made the default. " + escape_markdown(" ".join(reasons))
            )
        for message in warnings:
            st.warning(escape_markdown(message))
        with lab() as s:
            chain = lineage(s, m)
        if len(chain) > 1:  # trained on reviewers' corrections of its parent's predictions
            st.markdown("**Lineage** (each trained on reviewed cells of batches its parent classified): ")
            st.text(lineage_text(chain))
        origin = origin_text(m.training)
        if origin:  # an imported package's name, authors, citations and licence: the package's own text
            st.markdown("**Origin**")
            st.text(origin)
        cards = model_cards(m.metrics, m.demo)
        if cards:
            st.caption(f"Temperature {m.temperature:.2f} (fitted on the validation set, applied at inference).")
            for i, card in enumerate(cards):
                show_card(card, f"card_{i}")
        else:
            st.info("This model carries no evaluation yet; evaluate it on a labelled test set (tab Evaluate).")
        st.caption(escape_markdown(error_profile_text(m.metrics)))
        training = m.training or {}
        if training.get("history"):
            st.markdown(
                "**Training curves** (loss on the training data and on the validation set; validation accuracy)"
            )
            chart(training_figure(training), f"{m.name}-v{m.version}-training", "card_train")
        section = training_labels(training)
        if section:
            st.markdown("**Training labels**")
            for line in section.lines:  # rules and channel names are the user's text: never Markdown
                st.markdown(escape_markdown(line))
            st.dataframe(pd.DataFrame(section.counts), hide_index=True, width="stretch")
        if training:
            st.markdown("**Training summary**")
            st.json({k: v for k, v in shift_summary(training).items() if k != "history"}, expanded=False)
        if not m.is_default:
            why = (
                "A model that failed its quality check cannot be the default."
                if passed is False
                else None
                if administers
                else "Only administrators choose default models."
            )
            if st.button(
                f"Make {m.name} v{m.version} the default {m.task} model",  # model names: letters, digits, . _ -
                disabled=why is not None,
                help=why,
            ):
                try:
                    set_default(lab, m.id, me)
                    st.rerun()
                except LsmError as exc:
                    st.error(escape_markdown(str(exc)))
            if why and passed is False:
                st.caption(escape_markdown(why))
        else:
            st.caption("This is the default model for its task.")


with tabs[1]:
    st.markdown(
        "Train a new model version with the paper's recipe on cells sorted by FACS: upload a ZIP whose "
        "folders are named after the classes (LT-HSC, ST-HSC, MPP or young, aged), and/or choose classified "
        "batches and the class each one was sorted as, and/or batches of multi-channel files whose cells a "
        "reporter gate labels (e.g. `GFP high -> LT-HSC; GFP low -> MPP`), and/or batches whose cells reviewers "
        "labelled on their results page. A fifth of the sources is held out as the "
        "validation set; a model whose validation accuracy is not clearly above chance is registered as "
        "**failed quality check**, never made the default and not offered for classification by default."
    )
    if not administers:
        st.info(
            "Only administrators train models (a trained model becomes a choice for the whole lab). "
            "Ask one of them, or see the Lab page for who they are."
        )
    with st.form("train"):
        c: Sequence[DeltaGenerator] = st.columns(3)  # each row of widgets in turn
        task = c[0].selectbox("Task", list(TASK_TITLES), format_func=lambda t: TASK_TITLES[t])
        name = c[1].text_input("Model name", placeholder="e.g. lsm-lab")
        arch = c[2].selectbox(
            "Architecture", ARCHITECTURES, format_func=lambda a: f"{a}: {nets.REGISTRY[a].description}"
        )
        c = st.columns(4)
        epochs = c[0].number_input("Epochs", 1, 500, 20)
        batch_size = c[1].number_input("Batch size", 8, 4096, 512)
        lr = c[2].number_input("Learning rate (head)", 1e-6, 1.0, 5e-4, format="%.5f")
        seed = c[3].number_input("Seed", 0, 2**31 - 1, 0)
        keep_size = st.checkbox(
            "Single-cell crops keep the cell's size",
            help=(
                "Cut each single-cell image as the model's square of micrometres around its centre, at the image's "
                "calibration, instead of resizing it to fill the input: the network then sees each cell's size "
                "(cells in fields of view keep it either way). Use it when the single-cell crops are cut tightly "
                "around cells of different sizes and their pixel size is known; the model is given its cells the "
                "same way when it classifies."
            ),
        )
        upload = st.file_uploader(
            "Labelled ZIP (folders named after the classes)", type=None, accept_multiple_files=True, key="train_zip"
        )
        batch_labels = st.text_area("Labelled batches (optional): one `batch id: class` per line, e.g. `12: LT-HSC`")
        c = st.columns([1, 2])
        gated_batches = c[0].text_input(
            "Batches to label by a reporter gate (optional)",
            placeholder="e.g. 12, 13",
            help="Ids of classified batches of multi-channel files whose reporter channel was measured in each cell.",
        )
        gate_rule = c[1].text_area(
            "Reporter gate",
            placeholder=f"e.g. {GATE_EXAMPLE}",
            help=(
                "One `TEST -> CLASS` per clause, separated by `;`, on each cell's mean reporter intensity minus the "
                f"background: `{GATE_EXAMPLE}`; `GFP high -> LT-HSC; GFP low -> MPP` (above / at or below each "
                "batch's Otsu threshold); `400 < GFP < 1500 -> ST-HSC`; `GFP.integrated > 2e5 -> LT-HSC` for the "
                "integrated signal; quote names with spaces. Cells that no clause covers, or with no value, are "
                "left out and counted in the model card."
            ),
        )
        reviewed_batches = st.text_input(
            "Batches whose labelled cells to train on (optional)",
            placeholder="e.g. 12, 13",
            help=(
                "Ids of classified batches whose cells reviewers gave a class on their results page (Review): "
                "each cell counts as its reviewers' consensus; cells marked as not a cell are left out. The new "
                "model records the model that classified them as its parent, and the label set."
            ),
        )
        go = st.form_submit_button("Start training")
    if go:
        try:
            labelled = parse_labelled_batches(batch_labels)
            uploads = lab.blobs.put_uploads([RawFile(f.name, f.getvalue()) for f in upload or []])
            config = {
                "architecture": arch,
                "epochs": int(epochs),
                "batch_size": int(batch_size),
                "lr": float(lr),
                "seed": int(seed),
                "keep_size": bool(keep_size),
            }
            gated = {"batches": gated_batches, "rule": gate_rule}
            job_id = train.submit(
                lab,
                task,
                name.strip(),
                config,
                owner=me,
                uploads=uploads,
                batches=labelled,
                gated=gated,
                reviewed=parse_batch_ids(reviewed_batches),
            )
            st.success(f"Training queued as job {job_id}; it runs on a worker and appears below.")
        except LsmError as exc:
            st.error(escape_markdown(str(exc)))
    job_list("train")

with tabs[2]:
    if rows:
        ids = {option(m): m.id for m in rows}  # the first is the default LSM model
        with st.form("evaluate"):
            evaluated = st.selectbox("Model", list(ids), index=0, key="eval_model")
            test = st.file_uploader(
                "Labelled test ZIP (folders named after the classes)", accept_multiple_files=True, key="eval_zip"
            )
            go = st.form_submit_button("Start evaluation")
        if go:
            try:
                uploads = lab.blobs.put_uploads([RawFile(f.name, f.getvalue()) for f in test or []])
                job_id = evaluate.submit(lab, ids[evaluated], uploads, owner=me)
                st.success(f"Evaluation queued as job {job_id}.")
            except LsmError as exc:
                st.error(escape_markdown(str(exc)))
        job_list("evaluate")
        with lab() as s:
            finished = queries.evaluations(s, limit=5)
        if finished:
            results = {f"job {e.job_id} · {e.model_label} · {', '.join(e.files)}": e for e in finished}
            e = results[st.selectbox("Evaluation result", list(results), key="eval_result")]
            show_card(evaluation_card(e.result, e.model_label, e.files), f"eval_{e.job_id}")
            if administers and e.model_id is not None and e.result.get("confusion_matrix"):
                if st.button(
                    "Use as this model's error profile",
                    key=f"eval_profile_{e.job_id}",
                    help="Compositions of the model's batches are then corrected with this evaluation's confusion "
                    "matrix (what its model card says it does).",
                ):
                    try:
                        record_error_profile(lab, e.model_id, e.result, me)
                        st.success(f"Recorded as {escape_markdown(e.model_label)}'s error profile.")
                    except LsmError as exc:
                        st.error(escape_markdown(str(exc)))


with tabs[3]:
    st.markdown(
        "**Import** a PyTorch state_dict (`.pt`, `.pth`; loaded with `weights_only=True`) or a "
        "`.safetensors` file with its `manifest.json` (task, name, classes in output order, architecture)."
    )
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
                row = import_model_bytes(lab, weights.name, weights.getvalue(), manifest.getvalue(), me)
                st.success(escape_markdown(f"Registered {row.label}."))
            except LsmError as exc:
                st.error(escape_markdown(str(exc)))
    st.markdown(
        "**Import a BioImage Model Zoo package** (`.zip` with `rdf.yaml`): a classifier of the LSM or the aging "
        "task, one grey channel in, the classes out. It is validated, its test tensors must reproduce here, and "
        "its origin (name, authors, citations, licence) stays on its model card."
    )
    with st.form("import_zoo"):
        zoo = st.file_uploader("bioimage.io package", type=["zip"], key="imp_zoo")
        zoo_name = st.text_input("Name here (optional)", key="imp_zoo_name", help="default: the package's own name")
        go_zoo = st.form_submit_button("Import package")
    if go_zoo:
        if not administers:
            st.error("Only administrators import models.")
        elif not zoo:
            st.error("Choose a package.")
        else:
            try:
                with st.spinner("Validating the package and reproducing its test tensors..."):
                    row = import_zoo_package(lab, zoo.getvalue(), me, zoo_name.strip() or None, zoo.name)
                st.success(escape_markdown(f"Registered {row.label}."))
            except LsmError as exc:
                st.error(escape_markdown(str(exc)))
    if rows:
        labels = {option(m): m for m in rows}
        m = labels[st.selectbox("Export a model package", list(labels), key="export_model")]
        package = lab.store.get(m.name, m.version)
        st.download_button(
            f"Download {m.name}-v{m.version}.zip (manifest + weights)",  # names: letters, digits, . _ -
            lambda: package_zip(package.path),
            file_name=f"{m.name}-v{m.version}.zip",
            mime="application/zip",
            on_click="ignore",
        )
        with st.expander("manifest.json"):
            st.json({k: v for k, v in package.manifest.to_dict().items() if k not in ("metrics", "training")})
        c = st.columns([2, 1, 2], vertical_alignment="bottom")
        authors = c[0].text_input("Authors (comma-separated)", value=me, key="zoo_authors")
        licence = c[1].selectbox("Licence (SPDX)", ZOO_LICENSES, key="zoo_license")
        names = [a.strip() for a in authors.split(",") if a.strip()]
        c[2].download_button(
            "Export for BioImage Model Zoo",
            lambda: export_for_zoo(lab, m.id, names, licence)[1],
            file_name=f"{m.name}-v{m.version}.bioimageio.zip",
            mime="application/zip",
            on_click="ignore",
            disabled=not names,
            help="A bioimage.io model package (format 0.5): rdf.yaml, the weights as a PyTorch state dict, "
            "TorchScript and ONNX, test tensors and this model card; validated by bioimageio.spec. It opens in "
            "bioimageio.core, ilastik, deepImageJ and QuPath. It cites the paper as the source of the method, and "
            "this app by its name and version at the lab's address (the administrator's LSM_APP_URL; without it, "
            "the package names the app but cannot cite it). Takes a few seconds.",
        )
