"""What pages share: widgets (model pickers, messages after a rerun, figure downloads, a score threshold,
file errors, a batch's downloads, a job list).

Imported by pages; not a page itself. Widgets only: data and figures come from lsm_core and db.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from db import queries
from lsm_core.classes import TASK_TITLES
from lsm_core.errors import LsmError
from lsm_core.lab import jobs, settings
from lsm_core.lab.registry import offered_models
from lsm_core.reports.report import (
    cells_csv,
    workbook,
)
from lsm_core.reports.stats import PAPER_THRESHOLDS
from lsm_core.reports.text import escape_markdown
from pages._common import admin, the_lab, user


def model_options(task: str | None = None, include_failed: bool = False) -> dict[str, int]:
    """Model labels to model ids, in the one order of lsm_core.lab.registry (LSM first, each task's default first;
    demo models marked "synthetic demo"); models that failed their quality check only with ``include_failed``."""
    with the_lab()() as s:
        rows = offered_models(s, task, include_failed=include_failed)
    return {f"{TASK_TITLES.get(m.task, m.task)} · {m.label}": m.id for m in rows}


def model_picker(label: str, options: dict[str, int], key: str, **kwargs) -> int | None:
    """A select box of models (``options``: label -> id) whose value is a model id. A model chosen earlier that
    is no longer offered (deleted meanwhile) stays chosen, marked, so that acting with it is refused with a
    message instead of silently using another model."""
    ids = list(options.values())
    names = {i: name for name, i in options.items()}
    chosen = st.session_state.get(key)
    if chosen is not None and chosen not in ids:
        ids.append(chosen)
        names[chosen] = f"model #{chosen} (no longer offered: choose another)"
    if not ids:
        st.selectbox(label, ["no model is offered for this"], disabled=True, key=f"{key}_none")
        return None
    return st.selectbox(label, ids, format_func=names.__getitem__, key=key, **kwargs)


def flash(message: str, kind: str = "success") -> None:
    """A message to show once, at the next run of the page (after st.rerun)."""
    st.session_state["_flash"] = (kind, message)


def show_flash() -> None:
    kind, message = st.session_state.pop("_flash", (None, None))
    if message:
        {"success": st.success, "warning": st.warning, "error": st.error}.get(kind, st.info)(escape_markdown(message))


def known_choices(chosen: list, options: dict) -> list:
    """A multiselect's choice, only the options it still offers: Streamlit keeps a choice by its label, and a
    label that changed (a batch renamed) comes back as the old label's text instead of the option."""
    return [c for c in chosen if c in options]


XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
FIGURE_FORMATS = {"SVG": "svg", "PDF": "pdf", "PNG": "png", "HTML": "html"}


def chart(fig, name: str, key: str, where=None) -> None:
    """A figure on the page (``where``: a column or container; default the page) with its downloads under it."""
    (where or st).plotly_chart(fig, width="stretch", key=key)
    figure_downloads(fig, name, key, where)


def figure_downloads(fig, name: str, key: str, where=None) -> None:
    """A figure's downloads, in a popover: for a paper SVG, PDF or PNG at a size, font size and DPI of one's
    choosing (lsm_core.reports.figure_export), or an interactive HTML file."""
    from lsm_core.reports.figure_export import MIME, FigureSize, export_problem, figure_bytes, figure_html

    with (where or st).popover("Download figure", icon=":material/download:"):
        fmt = FIGURE_FORMATS[st.radio("Format", list(FIGURE_FORMATS), horizontal=True, key=f"{key}_fmt")]
        if fmt == "html":
            st.caption("Interactive, opens offline in any browser (plotly.js inside).")
            data = lambda: figure_html(fig)  # noqa: E731
        else:
            c = st.columns(4)
            width = c[0].number_input("Width (mm)", 20.0, 500.0, 120.0, 1.0, key=f"{key}_w", help="89: one column")
            height = c[1].number_input("Height (mm)", 20.0, 500.0, 90.0, 1.0, key=f"{key}_h")
            font = c[2].number_input("Font (pt)", 4.0, 24.0, 8.0, 0.5, key=f"{key}_pt")
            dpi = c[3].selectbox("DPI", [300, 600, 1200], key=f"{key}_dpi", disabled=fmt != "png")
            size = FigureSize(width, height, font, int(dpi))
            problem = export_problem(settings.current().chromium)
            try:
                size.checked()
            except LsmError as exc:
                problem = str(exc)
            if problem:
                st.caption(escape_markdown(problem))
                return
            data = lambda: figure_bytes(fig, fmt, size, settings.current().chromium)  # noqa: E731
        st.download_button(
            f"Download {name}.{fmt}",
            data,
            file_name=f"{name}.{fmt}",
            mime=MIME[fmt],
            on_click="ignore",
            key=f"{key}_download",
        )


def threshold_picker(key: str) -> float:
    """A score threshold slider with the paper's quick choices."""
    slider_key = f"{key}_threshold"
    if slider_key not in st.session_state:
        st.session_state[slider_key] = 0.0

    def quick():
        choice = st.session_state.get(f"{key}_quick")
        if choice is not None:
            st.session_state[slider_key] = float(choice)

    cols = st.columns([2, 3])
    cols[0].pills(
        "Paper's thresholds",
        PAPER_THRESHOLDS,
        key=f"{key}_quick",
        on_change=quick,
        help="Wang et al. looked at cells above 0.5, 0.7 and 0.9; 0.34 keeps almost every LSM cell.",
    )
    return cols[1].slider(
        "Score threshold: only cells whose largest probability reaches it are counted",
        0.0,
        1.0,
        step=0.01,
        key=slider_key,
    )


def file_errors(errors: list[tuple[str, str]], shown: int = 25, mark: str = "✗") -> None:
    """Each file with its message, as plain text (file names are never read as HTML or markdown)."""
    for file, message in errors[:shown]:
        st.text(f"{mark} {file}: {message}")
    if len(errors) > shown:
        st.dataframe(pd.DataFrame(errors[shown:], columns=["file", "problem"]), hide_index=True, width="stretch")


def download_buttons(batch_id: int, threshold: float, key: str) -> None:
    """Download buttons whose files are made only when pressed (a 100,000-cell workbook takes seconds)."""
    lab = the_lab()

    def xlsx() -> bytes:
        with lab() as s:
            return workbook(s, batch_id, threshold)

    def csv() -> bytes:
        with lab() as s:
            return cells_csv(s, batch_id)

    buttons = (
        ("xlsx", "cells, summary, batch, model, images, review", xlsx, XLSX_MIME),
        ("csv", "cells", csv, "text/csv"),
    )
    for column, (ext, what, make, mime) in zip(st.columns(len(buttons)), buttons):
        column.download_button(
            f"Download {ext} ({what})",
            make,
            file_name=f"batch-{batch_id}.{ext}",
            mime=mime,
            key=f"{key}_{ext}",
            on_click="ignore",
        )


@st.fragment(run_every=2.0)
def job_list(kind: str) -> None:
    """The last five jobs of a kind (train, evaluate, saliency) with their state, progress and a Cancel button
    for their owner and administrators (jobs.cancel checks again: the role may have changed since)."""
    lab = the_lab()
    me = user()
    administers = admin()
    with lab() as s:
        listed = queries.recent_jobs(s, kind, limit=5)
    for j in listed:
        label = f"job {j.id} · {j.owner} · {j.status}"
        if j.kind == "train":
            label += f" · epoch {j.progress_done} of {j.progress_total}"
            if j.result and j.result.get("val_accuracy") is not None:
                label += f" · validation accuracy {j.result['val_accuracy']:.3f}"
            if j.status == "done" and j.result:
                label += f" · registered {j.result.get('model')}"
        if j.kind == "evaluate":
            label += " · " + ", ".join(u.get("name", "?") for u in (j.payload or {}).get("uploads", []))
        if j.kind == "saliency":
            payload = j.payload or {}
            scope = f"top {payload['top']} per class" if payload.get("top") else "every cell"
            label += f" · batch {payload.get('batch_id', j.batch_id)} · {payload.get('method', 'scorecam')} · {scope}"
            label += f" · {j.progress_done} of {j.progress_total} cells" if j.progress_total else ""
        st.text(label + (f" · {j.error}" if j.error else ""))
        if j.status == "running" and j.progress_total:
            st.progress(min(max(j.progress_done / j.progress_total, 0.0), 1.0))
        if j.status in ("queued", "running") and (j.owner == me or administers):
            if st.button("Cancel", key=f"cancel_{j.id}"):
                try:
                    status = jobs.cancel(lab, j.id, me)
                    st.success(f"Job {j.id} {'cancelled' if status == 'cancelled' else 'stops at its next step'}.")
                except LsmError as exc:
                    st.error(escape_markdown(str(exc)))
    # a job that was running and is done now: run the whole page, so that its result appears below
    active = {j.id for j in listed if j.status in ("queued", "running")}
    seen = st.session_state.get(f"active_{kind}", set())
    st.session_state[f"active_{kind}"] = active
    if seen - active:
        st.rerun()
