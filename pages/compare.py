"""Compare page: batches (one per mouse) grouped by age or a metadata field, with per-mouse statistics."""

from collections.abc import Sequence

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from db import queries
from lsm_core.classes import TASK_TITLES
from lsm_core.errors import LsmError
from lsm_core.lab.registry import offered_models
from lsm_core.reports import compare
from lsm_core.reports.report import age_text
from lsm_core.reports.stats import UNIT_BATCH, parse_bins
from lsm_core.reports.text import escape_markdown
from pages._common import the_lab
from pages._shared import chart, known_choices, threshold_picker

st.title("Compare")
st.caption(
    "The mouse is the unit of replication: batches of one mouse id (sessions, or sorted populations) are pooled "
    "into one mouse, a batch without a mouse id counts as a mouse of its own, and groups are compared on "
    "per-mouse fractions. Pooled cells appear only as a secondary view."
)
lab = the_lab()
with lab() as s:
    models = offered_models(s, include_failed=True, include_deleted=True)
    owners = queries.owners(s)

with st.expander("Which batches", expanded=True):
    c: Sequence[DeltaGenerator] = st.columns(4)  # each row of widgets in turn
    task = c[0].selectbox("Classifier", list(TASK_TITLES), format_func=lambda t: TASK_TITLES[t])
    of_task = [m for m in models if m.task == task]
    versions = {m.label: m.id for m in of_task}
    default = next((i + 1 for i, m in enumerate(of_task) if m.is_default and not m.deleted), 0)
    version = c[1].selectbox(
        "Model version",
        ["any"] + list(versions),
        index=default,
        key=f"cmp_version_{task}",
        help="One model by default (the task's default): cells of different models are not "
        "comparable. 'any' mixes them.",
    )
    owner = c[2].selectbox("Owner", ["everyone"] + owners)
    text = c[3].text_input("Text (name, mouse, strain, notes)")
    c = st.columns(4)
    strain = c[0].text_input("Strain or reporter (exact)")
    gate = c[1].text_input("Sorting gate (exact)")
    date_from = c[2].date_input("Uploaded from", value=None)
    date_to = c[3].date_input("Uploaded to", value=None)

f = queries.BatchFilter.chosen(
    task=task,
    model_id=None if version == "any" else versions[version],
    owner=None if owner == "everyone" else owner,
    text=text,
    strain=strain,
    gate=gate,
    uploaded=(date_from, date_to),
)
with lab() as s:
    found = [b for b in queries.batches(s, f, limit=2000) if b.cells > 0]
if len(found) < 2:
    st.info("Fewer than two classified batches match: widen the filters, or classify more batches.")
    st.stop()

labels = {
    b.id: f"#{b.id} {b.name} · mouse {b.mouse_id or '?'} · {age_text(b.age_days) or 'age ?'} · {b.model}" for b in found
}
start = compare.one_batch_per_mouse(found)
chosen = known_choices(
    st.multiselect(
        "Batches (mice)",
        list(labels),
        default=start,
        format_func=lambda i: labels.get(i, str(i)),  # a stale choice is dropped by known_choices
        help="At first the newest batch of each mouse: re-runs of one mouse are not more mice.",
    ),
    labels,
)
if len(start) < len(found):
    st.caption(
        f"{len(found) - len(start)} older batch(es) of mice already chosen are not selected (re-runs or repeats "
        "of the same mouse id); add them above if they are other samples of that mouse: its batches are pooled."
    )
c = st.columns([1, 3])
by = c[0].selectbox("Group by", compare.GROUP_FIELDS)
bins_text = c[1].text_input(
    "Age groups (label:range; units d, w, m, y)",
    value=compare.DEFAULT_BINS,
    disabled=by != "age",
    help="e.g. young:8w-12w, middle:12w-18m, aged:>=18m",
)
threshold = threshold_picker("compare")
mixed = st.checkbox(
    "Allow batches classified by different models or model versions",
    key="cmp_mixed",
    help="Their numbers are not comparable as such: each mouse's model is then named in every table.",
)
counted_only = st.checkbox(
    "Test counted fractions (not corrected for the model's errors)",
    key="cmp_counted",
    help="By default the per-mouse tests run on fractions corrected with each model's confusion matrix on "
    "held-out labelled cells, when every model has one; counted fractions are pulled towards the model's "
    "confusions.",
)

try:
    bins = parse_bins(bins_text) if by == "age" else None
    with lab() as s:
        result = compare.build(
            s,
            list(chosen),
            by=by,
            bins=bins,
            threshold=threshold,
            allow_mixed_models=mixed,
            fractions="counted" if counted_only else "auto",
        )
except LsmError as exc:
    st.error(escape_markdown(exc))
    st.stop()

grouped = result.table.dropna(subset=["group"])
outside = result.table[result.table["group"].isna()]
for warning in result.warnings:
    st.warning(escape_markdown(warning))
if result.excluded:
    st.caption(
        f"{result.excluded:,} found object(s) of these batches that reviewers marked as not a cell are counted "
        "nowhere in this comparison."
    )
if len(outside):
    st.warning(
        f"{len(outside)} batch(es) fall in no group (no age, or outside every bin) and are left out: "
        + ", ".join(escape_markdown(name) for name in outside["batch_name"].astype(str).head(10))
    )
alone = int((grouped["unit"] == UNIT_BATCH).sum())
st.markdown(
    f"**{len(grouped)} mice in {grouped['group'].nunique()} groups** (from {int(grouped['n_batches'].sum())} "
    f"batches) · cells with score ≥ {threshold:.2f}"
)
if alone:
    st.caption(f"{alone} of them are batches without a mouse id, each counted as a mouse of its own.")

st.subheader("Per mouse")
st.caption(escape_markdown(compare.fractions_note(result)))
st.caption(escape_markdown(compare.shift_note(result)))
chart(compare.per_mouse_figure(result), "per_mouse", "cmp_mice")
st.subheader("Tests (mouse as the unit)")
limit = compare.design_limit(result)
if limit:
    st.warning(escape_markdown(limit))
one_test = compare.one_test_note(result)
if one_test:
    st.caption(escape_markdown(one_test))
st.dataframe(compare.tests_table(result), hide_index=True, width="stretch")
st.subheader("Model of cells within mice")
whose = "Each class's odds" if result.corrected else f"The odds of {result.tested[0]} cells"
st.caption(
    f"{escape_markdown(whose)} among a mouse's cells, "
    + ("by age group and by age in months" if by == "age" else f"by {by}")
    + ", with sex as a covariate where every mouse has one: a binomial GLM whose errors are robust to the "
    "cells of one mouse being alike (cluster-robust by mouse, small-sample corrected). An odds ratio above 1: "
    + (
        "that class is more common in the named group (or with each month of age)."
        if result.corrected
        else escape_markdown(
            f"{result.tested[0]} cells are more common in the named group (or with each month of age); the odds "
            f"ratio of {result.classes[0]} cells is its inverse."
        )
    )
)
if result.odds.empty:
    st.info("Too few groups or ages with mice for the model.")
else:
    st.dataframe(compare.odds_table(result), hide_index=True, width="stretch")
st.subheader("Cell size (mouse as the unit)")
st.caption(escape_markdown(compare.size_note(result)))
if len(result.size_tests):
    st.dataframe(compare.size_tests_table(result), hide_index=True, width="stretch")
    st.dataframe(result.size_model.round(4), hide_index=True, width="stretch")
with st.expander("Group summaries"):
    st.dataframe(result.groups.round(4), hide_index=True, width="stretch")
with st.expander("Secondary view: all cells pooled (pseudo-replication)"):
    pooled = result.pooled
    st.write(f"{pooled['test']}: statistic {pooled['statistic']:.4g}, p = {compare.three_digits(pooled['p_value'])}")
    st.caption(result.pooled["note"])

c = st.columns(2)
c[0].markdown("**Score distributions**")
with lab() as s:
    scores_fig = compare.score_figure(s, result)
chart(scores_fig, "scores", "cmp_scores", c[0])
focus = result.classes[-1] if result.task == "aging" else result.classes[0]
focus = c[1].selectbox("Class against age", result.classes, index=result.classes.index(focus))
chart(compare.age_figure(result, focus), f"age_{focus}", "cmp_age", c[1])
if result.task == "aging":
    st.caption("For the aging model: the fraction of aged-like cells per mouse against age.")

with st.expander("Per-mouse table"):
    st.dataframe(result.table, hide_index=True, width="stretch")


def workbook() -> bytes:
    with lab() as s:
        return compare.workbook(s, result)


def methods() -> bytes:
    from lsm_core.reports.methods import methods_text

    with lab() as s:
        return methods_text(s, result).encode("utf-8")


c = st.columns(2)
c[0].download_button(
    "Download comparison xlsx",
    workbook,
    file_name="comparison.xlsx",
    mime="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    on_click="ignore",
)
c[1].download_button(
    "Download methods text",
    methods,
    file_name="methods.txt",
    mime="text/plain",
    on_click="ignore",
    help="A methods paragraph for this comparison: images, calibration, model and its training, counting, "
    "tests, software versions (also the workbook's methods sheet)",
)
