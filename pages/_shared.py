"""What pages share: the database (cached once per server process) and the results view of one batch.

Imported by pages; not a page itself. Widgets only: data and figures come from lsm_core and db.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from db import queries
from db.schema import Model
from db.session import database_url
from lsm_core import accounts
from lsm_core.blobs import BlobStore
from lsm_core.errors import LsmError
from lsm_core.images import decode_page
from lsm_core.jobs import current_user
from lsm_core.report import (
    cell_arrays,
    cells_csv,
    composition_figure,
    field_figure,
    load_report,
    probability_figure,
    score_histogram,
    thumbnail,
    workbook,
)
from lsm_core.service import open_history
from lsm_core.stats import PAPER_THRESHOLDS
from lsm_core.tasks import TASK_TITLES

PAGE_SIZE = 50


@st.cache_resource(show_spinner="Opening the database ...")
def _open(url: str):
    _engine, factory = open_history(url)
    return factory


def sessions():
    """The session factory of LSM_DATABASE_URL (opened, upgraded and synced once per server process)."""
    return _open(database_url())


def signed_in_mode() -> bool:
    """True when [auth] is configured: people sign in with the lab's identity provider (st.login)."""
    return accounts.auth_configured()


def user() -> str:
    """Who is acting: the signed-in e-mail (or subject) with [auth]; else LSM_USER / the login name (lab mode)."""
    if signed_in_mode():
        return str(st.user.get("email") or st.user.get("sub") or "")
    return current_user()


def admin() -> bool:
    """Whether the person acting administers (lsm_core.accounts; the functions they call check again)."""
    with sessions()() as s:
        return accounts.is_admin(s, user())


@st.cache_data(max_entries=16, show_spinner=False)
def image_pixels(sha256: str, page: int):
    """The grey pixels of one stored image page (cached: thumbnails and field views reuse them)."""
    try:
        return decode_page("stored", BlobStore().get(sha256), page)
    except LsmError:
        return None


def model_options(task: str | None = None) -> dict[str, int]:
    """Model labels (LSM first, each task's default first; demo models marked "synthetic demo") to model ids."""
    with sessions()() as s:
        rows = queries.models(s, task)
    order = list(TASK_TITLES)  # the LSM classifier first, then aging
    rows.sort(key=lambda m: (order.index(m.task) if m.task in order else len(order), not m.is_default, m.name, -m.version))
    return {f"{TASK_TITLES.get(m.task, m.task)} · {m.label}": m.id for m in rows}


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
    cols[0].pills("Paper's thresholds", PAPER_THRESHOLDS, key=f"{key}_quick", on_change=quick,
                  help="Wang et al. looked at cells above 0.5, 0.7 and 0.9; 0.34 keeps almost every LSM cell.")
    return cols[1].slider("Score threshold: only cells whose largest probability reaches it are counted",
                          0.0, 1.0, step=0.01, key=slider_key)


def render_results(batch_id: int, key: str = "results") -> None:
    """The whole results view of one batch: summary, figures, cell table, field of view, downloads."""
    factory = sessions()
    threshold = threshold_picker(key)
    with factory() as s:
        try:
            report = load_report(s, batch_id, threshold)
        except LsmError as exc:
            st.error(str(exc))
            return
        pred, score, probs = cell_arrays(s, batch_id, report.classes)
        images = queries.batch_images(s, batch_id)
    model = report.model
    st.markdown(f"### {report.name}")
    meta = report.meta
    facts = [f"owner **{report.owner}**", f"model **{model['name']} v{model['version']}**"]
    facts += [f"{label} **{meta[k]}**" for k, label in (("mouse_id", "mouse"), ("age", "age"), ("sex", "sex"),
                                                         ("strain", "strain/reporter"), ("gate", "gate"),
                                                         ("imaging_date", "imaged")) if meta.get(k)]
    st.markdown(" · ".join(facts))
    if model["demo"]:
        st.warning("Classified by a **synthetic demo** model, trained on generated cells only: "
                   "these numbers say nothing about real cells.")
    if meta.get("notes"):
        st.caption("Notes:")
        st.text(meta["notes"])  # always shown as text, never as HTML or markdown
    c = st.columns(4)
    c[0].metric("Cells", f"{report.cells_total:,}")
    c[1].metric(f"Cells with score ≥ {threshold:.2f}", f"{report.cells_kept:,}")
    c[2].metric("Images", f"{report.images:,}")
    c[3].metric("Files that failed", f"{len(report.failed):,}")
    if report.failed:
        with st.expander(f"{len(report.failed)} file(s) could not be used", expanded=True):
            file_errors(report.failed)
    if report.without_cells:
        st.info(f"No cells were found in {len(report.without_cells)} image(s): " + ", ".join(report.without_cells[:10])
                + (" ..." if len(report.without_cells) > 10 else ""))
    if report.cells_total == 0:
        st.info("This batch has no classified cells yet.")
        return

    st.subheader("Composition")
    left, right = st.columns([3, 2])
    left.plotly_chart(composition_figure(report), width="stretch", key=f"{key}_composition")
    right.dataframe(
        pd.DataFrame([{"class": sh.cls, "cells": sh.count, "%": round(100 * sh.fraction, 1),
                       "95% CI": f"{100 * sh.low:.1f} to {100 * sh.high:.1f}"} for sh in report.shares]),
        hide_index=True, width="stretch",
    )
    left, right = st.columns(2)
    left.markdown("**Scores by predicted class**")
    left.plotly_chart(score_histogram(pred, score, report.classes, threshold), width="stretch", key=f"{key}_scores")
    right.markdown("**Per-cell probabilities**")
    right.plotly_chart(probability_figure(pred, probs, report.classes), width="stretch", key=f"{key}_probs")

    st.subheader("Cells")
    n = report.cells_kept
    c = st.columns([2, 1, 1])
    order = c[0].radio("Sort by", ["upload order", "score", "class"], horizontal=True, key=f"{key}_order")
    pages = max(1, -(-n // PAGE_SIZE))
    page = c[1].number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page")
    c[2].caption(f"{n:,} cells at this threshold, {PAGE_SIZE} per page")
    with factory() as s:
        rows = queries.batch_cells(s, batch_id, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE, min_score=threshold,
                                   order={"upload order": "position"}.get(order, order))
    by_image = {im.id: im for im in images}
    table = []
    for r in rows:
        im = by_image.get(r["image_id"])
        pixels = image_pixels(im.sha256, im.page) if im is not None and im.sha256 else None
        thumb = thumbnail(pixels, (r["x"], r["y"], r["w"], r["h"])) if pixels is not None else None
        table.append({"cell": thumb, "file": r["file"], "#": r["cell"], "predicted": r["predicted"],
                      "score": round(r["score"], 3), **{f"p({c})": round(p, 3) for c, p in zip(report.classes, r["probs"])},
                      "flags": r["flags"]})
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch",
                 column_config={"cell": st.column_config.ImageColumn("cell", width="small")})

    fields = [im for im in images if im.kind == "field" and im.n_cells]
    if fields:
        st.subheader("Field of view")
        names = {f"{im.file} (page {im.page}, {im.n_cells} cells)" if im.page > 1 else f"{im.file} ({im.n_cells} cells)": im
                 for im in fields}
        chosen = names[st.selectbox("Image", list(names), key=f"{key}_field")]
        pixels = image_pixels(chosen.sha256, chosen.page)
        if pixels is None:
            st.error("The stored image could not be read back.")
        else:
            with factory() as s:
                cells = queries.image_cells(s, chosen.id)
            st.plotly_chart(field_figure(pixels, cells, report.classes, threshold), width="stretch", key=f"{key}_fov")

    saliency_section(batch_id, report, images, key)
    download_buttons(batch_id, threshold, key)


def saliency_section(batch_id: int, report, images, key: str) -> None:
    """Saliency maps of the batch: compute them on a worker, then a gallery per class, means, a ZIP of overlays."""
    from lsm_core.cells import FindParams
    from lsm_core.datasets import recut_crops
    from lsm_core.jobs import submit_saliency
    from lsm_core.report import load_saliency, overlays_zip
    from lsm_core.saliency import METHODS, overlay

    st.subheader("Saliency: where the network looks")
    factory = sessions()
    names = {"scorecam": "Score-CAM (the paper's)", "gradcam": "Grad-CAM", "ig": "Integrated Gradients"}
    c = st.columns([2, 2, 1])
    method = c[0].radio("Method", METHODS, format_func=names.get, horizontal=True, key=f"{key}_sal_method")
    opacity = c[1].slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key=f"{key}_sal_opacity")
    with factory() as s:
        runs = [r for r in queries.saliency_runs(s, batch_id) if r.method == method]
        pending = [j for j in queries.jobs_list(s, limit=100) if j.kind == "saliency"
                   and j.payload.get("batch_id") == batch_id and j.payload.get("method") == method
                   and j.status in ("queued", "running")]
    if not runs:
        if pending:
            st.info(f"{names[method]} maps are being computed (job {pending[0].id}, {pending[0].status}); "
                    "reload in a moment.")
        else:
            b = st.columns(2)
            if b[0].button(f"Compute {names[method]} for the top 12 cells of each class", key=f"{key}_sal_top"):
                submit_saliency(factory, batch_id, method, top=12, owner=user())
                st.rerun()
            if b[1].button(f"Compute {names[method]} for every cell", key=f"{key}_sal_all"):
                submit_saliency(factory, batch_id, method, owner=user())
                st.rerun()
        return
    with factory() as s:
        view = load_saliency(s, runs[0].id)
    st.caption(f"{names[method]}, {view.scope}: {len(view.cells)} cells. Bright = evidence for the predicted class.")
    by_id = {im.id: im for im in images}
    with factory() as s:
        model = s.get(Model, report.model["id"])
        params = FindParams.for_model(model, report.meta.get("pixel_size_um"))
    crops = []
    blobs = BlobStore()
    for cell in view.cells:
        im = by_id.get(cell["image_id"])
        try:
            crops.append(recut_crops(im, [cell["box"]], params, blobs)[0])
        except (LsmError, AttributeError):
            crops.append(np.zeros(view.maps.shape[1:], np.float32))
    means = view.mean_maps(report.classes)
    cols = st.columns(max(1, len(means)))
    for col, (cls, m) in zip(cols, means.items()):
        col.image(overlay(np.zeros_like(m), m, 1.0), caption=f"mean map: {cls}", width=160)
    for cls in report.classes:
        members = [i for i, cell in enumerate(view.cells) if cell["predicted"] == cls][:8]
        if not members:
            continue
        st.markdown(f"**{cls}**")
        row = st.columns(8)
        for slot, i in zip(row, members):
            slot.image([overlay(crops[i], view.maps[i], 0.0), overlay(crops[i], view.maps[i], opacity)], width=72,
                       caption=[f"{view.cells[i]['score']:.2f}", method])
    st.download_button(f"Download {names[method]} overlays (ZIP of PNGs)", lambda: overlays_zip(view, crops, opacity),
                       file_name=f"batch-{batch_id}-{method}.zip", mime="application/zip", on_click="ignore",
                       key=f"{key}_sal_zip")


def file_errors(errors: list[tuple[str, str]], shown: int = 25) -> None:
    """Each failed file with its message, as plain text (file names are never read as HTML or markdown)."""
    for file, message in errors[:shown]:
        st.text(f"✗ {file}: {message}")
    if len(errors) > shown:
        st.dataframe(pd.DataFrame(errors[shown:], columns=["file", "problem"]), hide_index=True, width="stretch")


def download_buttons(batch_id: int, threshold: float, key: str) -> None:
    """Download buttons whose files are made only when pressed (a 100,000-cell workbook takes seconds)."""
    factory = sessions()

    def xlsx() -> bytes:
        with factory() as s:
            return workbook(s, batch_id, threshold)

    def csv() -> bytes:
        with factory() as s:
            return cells_csv(s, batch_id)

    c = st.columns(2)
    c[0].download_button("Download xlsx (cells, summary, batch, model)", xlsx, file_name=f"batch-{batch_id}.xlsx",
                         mime="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", key=f"{key}_xlsx",
                         on_click="ignore")
    c[1].download_button("Download csv (cells)", csv, file_name=f"batch-{batch_id}.csv", mime="text/csv",
                         key=f"{key}_csv", on_click="ignore")
