"""What every page shares: the database, cached once per server process (imported by pages, not a page)."""
from __future__ import annotations

import streamlit as st

from lsm_core.service import open_history


@st.cache_resource(show_spinner="Opening the database ...")
def sessions():
    _engine, factory = open_history()
    return factory
