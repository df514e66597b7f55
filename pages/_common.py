"""What every page needs: the lab (its database opened once per server process), who is acting and whether
they administer, and the cached pixels of a stored image. No widgets; imported by pages, not a page itself.

People's text goes into Markdown through lsm_core.reports.text.escape_markdown.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from lsm_core.errors import LsmError
from lsm_core.imaging.images import decode_page
from lsm_core.imaging.readers.base import ReadOptions
from lsm_core.lab import accounts, settings
from lsm_core.lab.lab import Lab
from lsm_core.lab.open_lab import open_lab


@st.cache_resource(show_spinner="Opening the database ...")
def _open(settings_now: settings.Settings) -> Lab:
    return open_lab(settings_now)


def the_lab() -> Lab:
    """The lab of this server's settings: its database opened, upgraded and synced once per server process."""
    return _open(settings.current())


def signed_in_mode() -> bool:
    """True when [auth] is configured: people sign in with the lab's identity provider (st.login)."""
    return accounts.auth_configured(the_lab())


def user() -> str:
    """Who is acting. With [auth]: the person the identity provider signed in, by the name
    lsm_core.lab.accounts.sign_in gives them (the e-mail of their first sign-in), decided once per account and
    session; raises LsmError when this account may not sign in. Else LSM_USER / the login name (lab mode)."""
    if not signed_in_mode():
        return accounts.current_user(the_lab())
    account = tuple(st.user.get(claim) for claim in ("iss", "sub", "email", "email_verified"))
    known = st.session_state.get("_signed_in_as")
    if known is None or known[0] != account:
        known = (account, accounts.sign_in(the_lab(), st.user))
        st.session_state["_signed_in_as"] = known
    return known[1]


def admin() -> bool:
    """Whether the person acting administers (lsm_core.lab.accounts; the functions they call check again)."""
    lab = the_lab()
    with lab() as s:
        return accounts.is_admin(lab, s, user())


@st.cache_data(max_entries=16, show_spinner=False)
def image_pixels(sha256: str | None, page: int, channel: str | None = None, z: int | None = None) -> np.ndarray | None:
    """The grey pixels of one stored image page, read as its batch was (its channel and z plane; None:
    automatic) within the lab's limits (cached: thumbnails and field views reuse them); None when it cannot be
    read back, or was never stored (an image row without a sha256)."""
    if sha256 is None:
        return None
    lab = the_lab()
    try:
        return decode_page("stored", lab.blobs.file(sha256), page, lab.limits, ReadOptions(channel, z))
    except LsmError:
        return None
