"""Entry point of the web app: `python -m lsm_core serve` (or `make run`) starts it with a worker."""
import streamlit as st

from db import queries
from lsm_core.jobs import current_user
from pages._shared import sessions

st.set_page_config(page_title="LSM classifier", page_icon=":microscope:", layout="wide")

# Streamlit still reads a folder called pages/ the legacy way until st.navigation has run: it would list
# every file there in the sidebar and serve /results straight from pages/results.py, outside this frame.
# So the sidebar menu is ours (client.showSidebarNavigation = false in .streamlit/config.toml, page links
# below) and the URL paths differ from the file names.
pages = [
    st.Page("pages/classify.py", title="Classify", icon=":material/upload:", default=True),
    st.Page("pages/results.py", title="Results", icon=":material/bar_chart:", url_path="batch-results"),
    st.Page("pages/history.py", title="History", icon=":material/history:", url_path="batch-history"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare-ages"),
    st.Page("pages/models.py", title="Models", icon=":material/model_training:", url_path="model-registry"),
]
navigation = st.navigation(pages, position="hidden")

factory = sessions()  # upgrades the database on first use

with st.sidebar:
    for page in pages:
        st.page_link(page)
    st.divider()
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
