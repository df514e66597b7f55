"""Results page: one batch's summary, figures, cells and downloads (?batch=ID opens a given batch)."""
import streamlit as st

from db import queries
from pages._shared import render_results, sessions

st.title("Results")
factory = sessions()
with factory() as s:
    rows = queries.batches(s, limit=1000)
if not rows:
    st.info("No batches yet. Upload one on the Classify page.")
    st.stop()
labels = {f"#{b['id']} {b['name']} · {b['owner']} · {b['model']} · {b['cells']:,} cells": b["id"] for b in rows}
wanted = st.query_params.get("batch")
ids = list(labels.values())
index = ids.index(int(wanted)) if wanted and wanted.isdigit() and int(wanted) in ids else 0
chosen = labels[st.selectbox("Batch", list(labels), index=index)]
st.query_params["batch"] = str(chosen)
render_results(chosen, key="results")
