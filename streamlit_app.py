"""Entry point of the web app: `python -m lsm_core serve` (or `make run`) starts it with a worker."""
import streamlit as st

from db import queries
from lsm_core.jobs import current_user
from pages._shared import sessions

st.set_page_config(page_title="LSM classifier", page_icon=":microscope:", layout="wide")

pages = [st.Page("pages/models.py", title="Models", icon=":material/model_training:", default=True)]
navigation = st.navigation(pages)

factory = sessions()  # upgrades the database on first use

with st.sidebar:
    st.markdown(f"**Signed in as** {current_user()}")
    st.caption("Lab mode: no sign-in on this machine (unauthenticated).")
    with factory() as s:
        workers = queries.live_workers(s)
        queued = queries.queue_length(s)
    if workers:
        st.markdown("**Workers**")
        for w in workers:
            st.caption(f"{w.host} · {w.device}" + (f" · job {w.current_job_id}" if w.current_job_id else " · idle"))
    else:
        st.warning("No worker is running: jobs wait in the queue. Start one with `python -m lsm_core worker`.")
    st.caption(f"Queue: {queued} job{'s' if queued != 1 else ''} waiting")

navigation.run()
