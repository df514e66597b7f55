"""Lab page (administrators): who uses the app with which role, and the audit trail."""

import pandas as pd
import streamlit as st

from lsm_core.errors import LsmError
from lsm_core.lab import accounts
from lsm_core.reports.text import escape_markdown
from pages._common import admin, signed_in_mode, the_lab, user
from pages._shared import flash, show_flash

ROLE_NAMES = {accounts.ADMIN: "administrator", accounts.MEMBER: "member"}


def a_role(role: str) -> str:
    """'an administrator', 'a member'."""
    return f"{'an' if role == accounts.ADMIN else 'a'} {ROLE_NAMES.get(role, role)}"


st.title("Lab")
lab = the_lab()
show_flash()  # what "Set role" changed (before the check: someone who stepped down reads it too)
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
everyone = not signed_in_mode() and not accounts.configured_admins(lab)  # lab mode, nobody named: all administer
if everyone:
    st.caption(
        "Lab mode without LSM_ADMINS: everyone on this machine administers, so the roles set here (the last "
        "column) take effect only once LSM_ADMINS names the administrators or sign-in is configured."
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
                **({"role set here": p.stored_role} if everyone else {}),
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
            was = accounts.set_role(lab, who, role, user())
        except LsmError as exc:
            st.error(escape_markdown(str(exc)))
        else:
            if was == role:
                flash(f"{who} is {a_role(role)} already: nothing changed.", "info")
            else:
                flash(
                    f"{who} is now {a_role(role)} (was {a_role(was)})."
                    + (
                        " In lab mode without LSM_ADMINS everyone administers: this takes effect once LSM_ADMINS "
                        "names the administrators or sign-in is configured."
                        if everyone
                        else ""
                    )
                )
            st.rerun()

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
