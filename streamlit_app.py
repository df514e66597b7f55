"""Entry point of the web app: `python -m lsm_core serve` (or `make run`) starts it with a worker."""

import time

import streamlit as st

from db import queries
from lsm_core.errors import LsmError
from lsm_core.lab import accounts, settings
from lsm_core.lab.serve import open_lab_warning, worker_restarts
from lsm_core.reports.text import escape_markdown
from pages._common import signed_in_mode, the_lab, user

st.set_page_config(page_title="LSM classifier", page_icon=":microscope:", layout="wide")

# A cookie_secret anyone could know (short, or an example) lets a visitor sign a sign-in cookie of their own and
# be anyone, an administrator included: then nobody uses the app, and the administrator reads why.
problem = settings.auth_problem()
if problem:
    st.error(escape_markdown(problem), icon=":material/lock:")
    st.stop()

# Streamlit still reads a folder called pages/ the legacy way until st.navigation has run: it would list
# every file there in the sidebar and serve /results straight from pages/results.py, outside this frame.
# So the sidebar menu is ours (client.showSidebarNavigation = false in .streamlit/config.toml, page links
# below) and the URL paths differ from the file names.
pages = [
    st.Page("pages/classify.py", title="Classify", icon=":material/upload:", default=True),
    st.Page("pages/results.py", title="Results", icon=":material/bar_chart:", url_path="batch-results"),
    st.Page("pages/review.py", title="Review", icon=":material/rule:", url_path="review-cells"),
    st.Page("pages/history.py", title="History", icon=":material/history:", url_path="batch-history"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare-ages"),
    st.Page("pages/models.py", title="Models", icon=":material/model_training:", url_path="model-registry"),
    st.Page("pages/lab.py", title="Lab", icon=":material/group:", url_path="lab-admin"),
]

lab = the_lab()  # upgrades the database on first use

if signed_in_mode():
    # [auth] in .streamlit/secrets.toml: nobody sees anything before the lab's identity provider knows them
    if not st.user.is_logged_in:
        st.title("LSM classifier")
        st.write("Sign in with your lab account to classify images and see the lab's results.")
        st.button("Sign in", type="primary", on_click=st.login)
        st.stop()
    try:
        user()  # once per account and session: lsm_core.lab.accounts.sign_in (verified e-mail, allowed domains)
    except LsmError as exc:
        st.error(escape_markdown(str(exc)))
        st.button("Sign out", on_click=st.logout)
        st.stop()

with lab() as s:
    role = accounts.role_of(lab, s, user())
navigation = st.navigation(pages, position="hidden")


@st.fragment(run_every=5.0)
def status() -> None:
    """Workers and queue, redrawn every 5 s (a worker's row changes when it claims or ends a job)."""
    with lab() as s:
        workers = queries.live_workers(s)
        queued = queries.queue_length(s)
        refused = queries.refused_models(s, [w.id for w in workers])
    restarts = worker_restarts(lab.settings.data_dir)  # serve's record: a worker that died and was started again
    if restarts is not None:
        when = time.strftime("%H:%M UTC", time.gmtime(restarts.died_at)) if restarts.died_at else "lately"
        st.warning(
            f"The worker stopped at {when} (exit status {restarts.last_exit}) and "
            + (
                f"was started again ({restarts.restarts} restart{'s' if restarts.restarts != 1 else ''} so far)."
                if restarts.running
                else "is started again in a moment."
            )
            + " A file that needs more memory than the machine has can cause this; the server's log says more.",
            icon=":material/restart_alt:",
        )
    if workers:
        st.markdown("**Workers**")
        for w in workers:  # host and device come from the workers' own rows: shown as text
            st.caption(
                escape_markdown(f"{w.host} · {w.device}")
                + (f" · job {w.current_job_id}" if w.current_job_id else " · idle")
            )
            for label, message in refused.get(w.id, []):  # its self-test failed there: other workers take the jobs
                st.error(escape_markdown(f"{w.host} refuses {label}: {message}"), icon=":material/block:")
    else:
        st.warning("No worker is running: jobs wait in the queue. Start one with `python -m lsm_core worker`.")
    st.caption(f"Queue: {queued} job{'s' if queued != 1 else ''} waiting")


with st.sidebar:
    for page in pages:
        if page.title != "Lab" or role == accounts.ADMIN:
            st.page_link(page)
    st.divider()
    st.markdown("**Signed in as**")
    st.text(f"{user()} ({role})")  # as text: names come from the identity provider
    if signed_in_mode():
        st.button("Sign out", on_click=st.logout)
    else:
        st.caption("Lab mode: no sign-in on this machine (unauthenticated).")
    status()

opened = open_lab_warning(lab.settings)
if opened:
    st.error(f"**Open to the network.** {escape_markdown(opened[0].upper() + opened[1:])}.", icon=":material/warning:")
# the secrets file readable by other accounts of the machine: whoever reads the cookie_secret can be anyone
exposed = settings.auth_warning() if signed_in_mode() and role == accounts.ADMIN else None
if exposed:
    st.warning(f"**The sign-in secret is exposed.** {escape_markdown(exposed)}.", icon=":material/key:")
if not signed_in_mode():
    rights = ", as an administrator: able to change or delete every batch" if role == accounts.ADMIN else ""
    st.warning(
        f"**Lab mode: unauthenticated, no sign-in.** Anyone who can open this page works as "
        f"{escape_markdown(user())}{rights}.",
        icon=":material/lock_open:",
    )
    with st.expander("For the administrator: how to require sign-in"):
        st.markdown(
            "Add an `[auth]` section for the lab's OpenID Connect provider to `.streamlit/secrets.toml` and "
            "restart the app; name the first administrators in `LSM_ADMINS`. See the README, 'Sign-in and "
            "roles'."
        )
navigation.run()
