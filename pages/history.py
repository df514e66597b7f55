"""History page: every batch of the lab, with filters; open, rename, delete, re-run, download."""
import datetime as dt

import pandas as pd
import streamlit as st

from db import queries
from lsm_core import batches
from lsm_core.errors import LsmError
from lsm_core.report import age_text
from lsm_core.tasks import TASK_TITLES
from pages._shared import admin, download_buttons, model_options, sessions, user

st.title("History")
factory = sessions()
with factory() as s:
    owners = queries.owners(s)
    models = {m.label: m.id for m in queries.models(s, include_deleted=True)}

with st.expander("Filters", expanded=True):
    c = st.columns(4)
    owner = c[0].selectbox("Owner", ["everyone"] + owners)
    task = c[1].selectbox("Classifier", ["any"] + list(TASK_TITLES), format_func=lambda t: TASK_TITLES.get(t, t))
    model = c[2].selectbox("Model version", ["any"] + list(models))
    text = c[3].text_input("Text (name, mouse, strain, notes)")
    c = st.columns(4)
    age_min = c[0].number_input("Age from (weeks)", min_value=0.0, value=None, step=1.0)
    age_max = c[1].number_input("Age to (weeks)", min_value=0.0, value=None, step=1.0)
    date_from = c[2].date_input("Uploaded from", value=None)
    date_to = c[3].date_input("Uploaded to", value=None)

f = queries.BatchFilter(
    owner=None if owner == "everyone" else owner, task=None if task == "any" else task,
    model_id=None if model == "any" else models[model], text=text or None,
    age_min_days=age_min * 7 if age_min is not None else None, age_max_days=age_max * 7 if age_max is not None else None,
    created_from=dt.datetime.combine(date_from, dt.time.min) if date_from else None,
    created_to=dt.datetime.combine(date_to, dt.time.max) if date_to else None,
)
with factory() as s:
    rows = queries.batches(s, f, limit=1000)


if not rows:
    st.info("No batches match." if owners else "No batches yet. Upload one on the Classify page.")
    st.stop()

table = pd.DataFrame([{
    "id": b["id"], "name": b["name"], "owner": b["owner"], "uploaded": b["created"].strftime("%Y-%m-%d %H:%M"),
    "status": b["status"], "model": b["model"], "mouse": b["mouse_id"], "age": age_text(b["age_days"]),
    "sex": b["sex"], "strain": b["strain"], "gate": b["gate"], "images": b["images"], "failed": b["errors"],
    "cells": b["cells"],
} for b in rows])
st.caption(f"{len(rows)} batch(es). Select a row to act on it.")
picked = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row", key="table")
selected = picked.selection.rows if picked and picked.selection else []
if not selected:
    st.stop()
batch = rows[selected[0]]
st.markdown(f"#### #{batch['id']} {batch['name']}")
c = st.columns(3)
if c[0].button("Open results", type="primary"):
    st.query_params["batch"] = str(batch["id"])
    st.switch_page("pages/results.py", query_params={"batch": str(batch["id"])})

mine = batch["owner"] == user() or admin()  # lsm_core.batches checks again
with c[1].popover("Rename", disabled=not mine):
    new_name = st.text_input("New name", value=batch["name"], key="rename_to")
    if st.button("Save the new name"):
        try:
            batches.rename(factory, batch["id"], new_name, user())
            st.rerun()
        except LsmError as exc:
            st.error(str(exc))
with c[2].popover("Delete", disabled=not mine):
    st.write(f"Delete **{batch['name']}** with its {batch['cells']:,} cells? This cannot be undone.")
    sure = st.checkbox("Yes, delete this batch", key="delete_sure")
    if st.button("Delete for good", disabled=not sure):
        try:
            batches.delete(factory, batch["id"], user())
            st.rerun()
        except LsmError as exc:
            st.error(str(exc))
if not mine:
    st.caption(f"Only {batch['owner']} or an administrator can rename or delete this batch.")

with st.expander("Re-run with another model version"):
    choices = model_options(batch["task"])
    label = st.selectbox("Model", list(choices), key="rerun_model")
    if st.button("Re-run"):
        try:
            result = batches.rerun(factory, batch["id"], choices[label], user())
            st.success(f"Queued as batch #{result.batch_id}; follow it in Results.")
        except LsmError as exc:
            st.error(str(exc))

download_buttons(batch["id"], 0.0, key="history")
