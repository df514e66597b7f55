"""Review page: one queue over several batches, most uncertain first (issue #17 item 6): what to label next."""

import streamlit as st

from db import queries
from db.schema import Batch
from lsm_core.classes import TASK_TITLES
from pages._common import the_lab, user
from pages._review_queue import Scope, review_section
from pages._shared import known_choices, show_flash

st.title("Review")
st.caption(
    "Label the cells the model is least sure of first, across your batches: each label says what a cell "
    "really is (kept beside the prediction), and the labelled cells can train the next model version "
    "(Models → Train: batches whose labelled cells to train on)."
)
lab = the_lab()
me = user()
show_flash()
with lab() as s:
    rows = [b for b in queries.batches(s, limit=1000) if b.cells > 0]
if not rows:
    st.info("No classified batches yet. Upload one on the Classify page.")
    st.stop()
c = st.columns([1, 1])
tasks = [t for t in TASK_TITLES if any(b.task == t for b in rows)]
task = c[0].selectbox("Classifier", tasks, format_func=TASK_TITLES.__getitem__, key="review_task")
only_mine = c[1].toggle("Only my batches", value=True, key="review_mine", help=f"Batches whose owner is {me}.")
if task is None:  # never: a task is listed for every batch (Streamlit types every selectbox's value as optional)
    st.stop()
offered = [b for b in rows if b.task == task and (b.owner == me or not only_mine)]
if not offered:
    st.info(f"You have no classified {TASK_TITLES[task]} batches; switch off “Only my batches” to see the lab's.")
    st.stop()
# Streamlit keeps a multiselect's choice by its label: nothing in a label may change as cells are reviewed (a
# count of counted cells did, and the next run got a label where a batch id belongs)
names = {b.id: f"#{b.id} {b.name} · {b.owner} · {b.model}" for b in offered}
chosen = known_choices(
    st.multiselect(
        "Batches",
        list(names),
        default=list(names)[:20],
        format_func=lambda i: names.get(i, str(i)),  # a stale choice is dropped by known_choices
        key=f"review_batches_{task}_{only_mine}",
    ),
    names,
)
if not chosen:
    st.info("Choose the batches to review.")
    st.stop()
with lab() as s:
    batches = [b for b in (s.get(Batch, i) for i in chosen) if b is not None]
    class_sets = {tuple(b.model.classes) for b in batches}
    if len(class_sets) != 1:
        st.error("These batches were classified by models with different classes: review them separately.")
        st.stop()
    scope = Scope(
        [b.id for b in batches],
        list(class_sets.pop()),
        {b.id: b.owner for b in batches},
        {b.id: (b.channel, b.z) for b in batches},
        {b.id: b.name for b in batches},
    )
review_section(lab, scope, me, "review", heading=False)
