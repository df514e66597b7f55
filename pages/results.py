"""Results page: one batch's summary, figures, cells and downloads (?batch=ID opens a given batch)."""

import streamlit as st

from db import queries
from pages._common import the_lab
from pages._results_view import render_results
from pages._shared import show_flash

st.title("Results")
lab = the_lab()
with lab() as s:
    rows = queries.batches(s, limit=1000)
show_flash()
labels = {
    b.id: f"#{b.id} {b.name} · {b.owner} · {b.model} · {b.counted:,} cells"
    + (f" ({b.excluded:,} not cells)" if b.excluded else "")
    for b in rows
}
wanted = st.query_params.get("batch")
# only ASCII digits: str.isdigit() also accepts "²", which int() refuses
asked = int(wanted) if wanted and wanted.isascii() and wanted.isdigit() else None
ids = list(labels)
if asked is not None and asked not in ids:
    st.warning(
        f"Batch #{asked} no longer exists: someone deleted it."
        + (" The newest batch is shown instead." if rows else "")
    )
if not rows:
    st.info("No batches yet. Upload one on the Classify page.")
    st.stop()
index = ids.index(asked) if asked in ids else 0
# options are batch ids (stable while colleagues add batches); the label is only what is shown
chosen = st.selectbox("Batch", ids, index=index, format_func=labels.__getitem__, key=f"results_batch_{wanted}")
if chosen is None:  # never with batches to choose from (Streamlit types every selectbox's value as optional)
    st.stop()
st.query_params["batch"] = str(chosen)
render_results(chosen, key="results")
