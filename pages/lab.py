"""Lab page (administrators): who uses the app with which role, and the audit trail."""

import pandas as pd
import streamlit as st

from lsm_core.errors import LsmError
from lsm_core.lab import accounts
from pages._shared import admin, escape_markdown, signed_in_mode, the_lab, user

st.title("Lab")
lab = the_lab()
if not admin():
    st.info("This page is for the lab's administrators: people's roles and the audit trail.")
    st.stop()

st.subheader("People")
if signed_in_mode():
    st.caption(
        "Everyone who has signed in. Newcomers are members; LSM_ADMINS names administrators that only the "
        "server's configuration can change."
    )
else:
    st.caption("Everyone who has used the app: who submitted, classified or acted (lab mode has no sign-in).")
if not signed_in_mode() and not accounts.configured_admins():
    st.caption(
        "Lab mode without LSM_ADMINS: everyone on this machine administers, so roles below take effect only "
        "once LSM_ADMINS names the administrators or sign-in is configured."
    )
people = accounts.people(lab)
st.dataframe(
    pd.DataFrame(
        [
            {
                "name": p.name,
                "shown as": p.display_name or "",
                "role": p.role + (" (LSM_ADMINS)" if p.fixed else ""),
                "last seen (UTC)": p.last_seen.strftime("%Y-%m-%d %H:%M") if p.last_seen else "",
            }
            for p in people
        ]
    ),
    hide_index=True,
    width="stretch",
)
changeable = [p.name for p in people if not p.fixed]
if changeable:
    with st.form("role"):
        c = st.columns([3, 2, 1], vertical_alignment="bottom")
        who = c[0].selectbox("Person", changeable)
        role = c[1].selectbox("Role", accounts.ROLES)
        go = c[2].form_submit_button("Set role")
    if go:
        try:
            accounts.set_role(lab, who, role, user())
            st.success(escape_markdown(f"{who} is now {'an' if role == accounts.ADMIN else 'a'} {role}."))
            st.rerun()
        except LsmError as exc:
            st.error(escape_markdown(str(exc)))

st.subheader("Audit trail")
st.caption(
    "Who submitted, renamed, deleted, re-ran, trained, imported, cancelled, changed a default or a role; newest first."
)
events = accounts.audit_trail(lab, user())
st.dataframe(
    pd.DataFrame([{**e, "when (UTC)": e["when (UTC)"].strftime("%Y-%m-%d %H:%M:%S")} for e in events]),
    hide_index=True,
    width="stretch",
    column_config={"detail": st.column_config.TextColumn("detail", width="large")},
)
