"""History page: every batch of the lab, with filters; open, rename, delete, re-run, download.

Every action is bound to the batch id (and revision) the user selected, never to a row position: the list
may change under the user (a colleague submits, renames or deletes), and lsm_core.lab.batches refuses an action
on a batch that is gone or changed since. After an action the selection and any confirmation are reset.
"""

from collections.abc import Sequence

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from db import queries
from lsm_core.classes import TASK_TITLES
from lsm_core.errors import LsmError
from lsm_core.lab import batches
from lsm_core.lab.registry import offered_models
from lsm_core.reports.report import age_text
from lsm_core.reports.text import escape_markdown
from pages._common import admin, the_lab, user
from pages._shared import download_buttons, flash, job_list, model_options, model_picker, show_flash

st.title("History")
lab = the_lab()
state = st.session_state
state.setdefault("history_table", 0)  # a new number makes a new table: no row highlighted
state.setdefault("history_action", 0)  # a new number makes new confirmations: nothing ticked


def reset_selection(message: str | None = None, kind: str = "success") -> None:
    """After an action: no batch selected, no confirmation ticked, and a message saying what was done."""
    state["history_table"] += 1
    state["history_action"] += 1
    state.pop("history_batch", None)
    if message:
        flash(message, kind)


def remember_selection() -> None:
    """on_select: bind the selected row to the batch shown in it when the user clicked (ids shown last run).

    A table made anew (the list changed under the user) reports an empty selection; that clears the bound
    batch only when it comes from the table the batch was selected in (the user unticked the row)."""
    table = state["history_table"]
    picked = state.get(f"history_table_{table}")
    rows = picked.selection.rows if picked is not None and picked.selection else []
    shown = state.get("history_shown", [])
    if rows and rows[0] < len(shown):
        state["history_batch"], state["history_selected_in"] = shown[rows[0]], table
    elif state.get("history_selected_in") == table:
        state["history_batch"] = None


with lab() as s:
    owners = queries.owners(s)
    models = {m.label: m.id for m in offered_models(s, include_failed=True, include_deleted=True)}

with st.expander("Saliency map jobs (they hold the GPU: cancel what is no longer needed)"):
    job_list("saliency")

with st.expander("Filters", expanded=True):
    c: Sequence[DeltaGenerator] = st.columns(4)  # each row of widgets in turn
    owner = c[0].selectbox("Owner", ["everyone"] + owners)
    task = c[1].selectbox("Classifier", ["any"] + list(TASK_TITLES), format_func=lambda t: TASK_TITLES.get(t, t))
    model = c[2].selectbox("Model version", ["any"] + list(models))
    text = c[3].text_input("Text (name, mouse, strain, notes)")
    c = st.columns(4)
    age_min = c[0].number_input("Age from (weeks)", min_value=0.0, value=None, step=1.0)
    age_max = c[1].number_input("Age to (weeks)", min_value=0.0, value=None, step=1.0)
    date_from = c[2].date_input("Uploaded from", value=None)
    date_to = c[3].date_input("Uploaded to", value=None)

f = queries.BatchFilter.chosen(
    owner=None if owner == "everyone" else owner,
    task=None if task == "any" else task,
    model_id=None if model == "any" else models[model],
    text=text,
    age_weeks=(age_min, age_max),
    uploaded=(date_from, date_to),
)
SHOWN = 1000  # the newest batches listed; the caption says how many more match
with lab() as s:
    rows = queries.batches(s, f, limit=SHOWN)
    matching = queries.count_batches(s, f) if len(rows) == SHOWN else len(rows)

show_flash()
if not rows:
    st.info("No batches match." if owners else "No batches yet. Upload one on the Classify page.")
    st.stop()

# what the user reads first comes first: which batch, how many cells, whose, then the sample's metadata
table = pd.DataFrame(
    [
        {
            "id": b.id,
            "name": b.name,
            "cells": b.counted,
            "images": b.images,
            "failed": b.errors,
            "not cells": b.excluded,  # found objects that reviewers marked as not cells (counted nowhere)
            "status": b.status,
            "owner": b.owner,
            "uploaded": b.created.strftime("%Y-%m-%d %H:%M"),
            "mouse": b.mouse_id,
            "age": age_text(b.age_days),
            "sex": b.sex,
            "model": b.model,
            "strain": b.strain,
            "gate": b.gate,
        }
        for b in rows
    ]
)
shown = [(b.id, b.revision) for b in rows]
if state.get("history_shown") not in (None, shown) and state.get("history_batch"):
    # the list changed under the user: a fresh table, so no highlighted row points at another batch (the
    # selected batch stays bound by its id, below)
    state["history_table"] += 1
state["history_shown"] = shown
st.caption(
    f"{len(rows)} batch(es). Select a row to act on it."
    if matching == len(rows)
    else f"The newest {len(rows):,} of {matching:,} batches (narrow the filters to list older ones). "
    "Select a row to act on it."
)
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    on_select=remember_selection,
    selection_mode="single-row",
    key=f"history_table_{state['history_table']}",
    column_config={
        "id": st.column_config.NumberColumn("id", width=60, format="%d"),
        "name": st.column_config.TextColumn("name", width="large"),
        "cells": st.column_config.NumberColumn("cells", width=70),
        "images": st.column_config.NumberColumn("images", width=70),
        "failed": st.column_config.NumberColumn("failed", width=60),
    },
)
chosen = state.get("history_batch")
if not chosen:
    st.stop()
batch_id, revision = chosen
batch = next((b for b in rows if b.id == batch_id), None)
if batch is None:
    reset_selection(f"Batch #{batch_id} is no longer in the list (deleted, or outside the filters).", "warning")
    st.rerun()

nonce = state["history_action"]
st.markdown(f"#### Selected: batch #{batch_id}")
st.text(batch.name)  # names are user text: shown as text, never as markdown
if batch.revision != revision:
    st.warning(
        "This batch was changed since you selected it (renamed, or files were added). Select it again to act on it."
    )
    st.stop()
c = st.columns(3)
if c[0].button("Open results", type="primary", key=f"open_{nonce}"):
    st.switch_page("pages/results.py", query_params={"batch": str(batch_id)})

mine = batch.owner == user() or admin()  # lsm_core.lab.batches checks again
with c[1].popover("Rename", disabled=not mine):
    new_name = st.text_input("New name", value=batch.name, key=f"rename_to_{nonce}_{batch_id}")
    if st.button("Save the new name", key=f"rename_{nonce}_{batch_id}"):
        try:
            batches.rename(lab, batch_id, new_name, user(), seen_revision=revision)
            reset_selection(f"Batch #{batch_id} renamed to “{new_name.strip()}”.")
            st.rerun()
        except LsmError as exc:
            st.error(escape_markdown(exc))
with c[2].popover("Delete", disabled=not mine):
    st.write(
        f"Delete batch #{batch_id} with its {batch.images:,} images and {batch.cells:,} cells? "
        "This cannot be undone. Its name:"
    )
    st.text(batch.name)
    sure = st.checkbox(f"Yes, delete batch #{batch_id}", key=f"delete_sure_{nonce}_{batch_id}")
    if st.button("Delete for good", disabled=not sure, key=f"delete_{nonce}_{batch_id}"):
        try:
            gone = batches.delete(lab, batch_id, user(), seen_revision=revision)
            reset_selection(
                f"Deleted batch #{gone.batch_id} “{gone.name}” with its {gone.images:,} images and "
                f"{gone.cells:,} cells; "
                + (
                    f"freed {gone.freed} of stored files."
                    if gone.blobs
                    else "no disk space was freed (its files are shared with other batches or still in use)."
                )
            )
            st.rerun()
        except LsmError as exc:
            reset_selection(str(exc), "error")
            st.rerun()
if not mine:
    st.caption(f"Only {escape_markdown(batch.owner)} or an administrator can rename or delete this batch.")

with st.expander("Re-run with another model version or pixel size"):
    chosen_model = model_picker("Model", model_options(batch.task), f"rerun_model_{nonce}")
    pixel = st.number_input(
        "Pixel size (µm/px; empty: as before)",
        min_value=0.01,
        max_value=50.0,
        value=None,
        step=0.01,
        format="%.4f",
        key=f"rerun_pixel_{nonce}",
    )
    if st.button("Re-run", key=f"rerun_{nonce}_{batch_id}"):
        try:
            if chosen_model is None:
                raise LsmError(f"no {batch.task} model is offered; import or train one on the Models page")
            result = batches.rerun(lab, batch_id, chosen_model, user(), pixel_size_um=pixel, seen_revision=revision)
            reset_selection(
                f"Batch #{batch_id} re-run as batch #{result.batch_id}; open it in Results to follow it."
                + (f" Note: {result.note}." if result.note else "")
            )
            st.rerun()
        except LsmError as exc:
            st.error(escape_markdown(exc))

download_buttons(batch_id, 0.0, key=f"history_{batch_id}")
