"""The results view of one batch (the Results page, and the Classify page once a batch is done): its facts,
composition, figures, cell table, review queue, field of view, reporter signal, saliency maps and downloads.
What it shows is loaded in one go by lsm_core.reports.results.load_results; this module lays out widgets.

Imported by pages; not a page itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from db import queries
from db.schema import Image
from lsm_core.errors import LsmError
from lsm_core.imaging.reporters import BACKGROUND_MARGIN_UM
from lsm_core.lab import batches
from lsm_core.lab.jobs import cancel, queue_info
from lsm_core.ml.names import SALIENCY_METHODS as METHODS
from lsm_core.reports.report import (
    BatchReport,
    cell_table,
    composition_figure,
    field_figure,
    mass_sentence,
    overlays_zip,
    positive_fractions,
    probability_figure,
    reporter_figure,
    reporter_view,
    saliency_gallery,
    score_histogram,
    size_figure,
    thumbnail,
)
from lsm_core.reports.results import ResultsView, correction_caption, load_results, shift_line, sizes_caption
from lsm_core.reports.text import escape_markdown
from pages._common import admin, image_pixels, the_lab, user
from pages._review_queue import Scope, field_section, flagged, review_section
from pages._shared import chart, download_buttons, figure_downloads, file_errors, flash, threshold_picker

PAGE_SIZE = 50
THUMB_PX = 64  # cell thumbnails in the table: large enough to see the cell


def render_results(batch_id: int, key: str = "results") -> None:
    """The whole results view of one batch: summary, figures, cell table, field of view, downloads."""
    lab = the_lab()
    threshold = threshold_picker(key)
    with lab() as s:
        try:
            view = load_results(s, batch_id, threshold)
        except LsmError as exc:
            st.error(escape_markdown(exc))
            return
    report, meta = view.report, view.report.meta
    st.subheader(escape_markdown(report.name))
    if view.job_failure:
        st.error(escape_markdown(view.job_failure), icon=":material/error:")
    st.markdown(" · ".join(f"{what} **{escape_markdown(value)}**" for what, value in view.facts))
    if report.model.demo:
        st.warning(
            "Classified by a **synthetic demo** model, trained on generated cells only: "
            "these numbers say nothing about real cells."
        )
    if meta.notes:
        st.caption("Notes:")
        st.text(meta.notes)  # always shown as text, never as HTML or markdown
    c: Sequence[DeltaGenerator] = st.columns(4)  # the numbers, then the cell table's controls
    c[0].metric("Cells", f"{report.cells_total:,}")
    c[1].metric(f"Cells with score ≥ {threshold:.2f}", f"{report.cells_kept:,}")
    c[2].metric("Images read", f"{report.images_read:,}", help="Images that could be read: what the progress counts.")
    c[3].metric("Files that could not be read", f"{len(report.failed):,}")
    if report.cells_excluded:
        st.caption(
            f"{report.cells_excluded:,} found object(s) that reviewers marked as not a cell (debris, a doublet, out "
            "of focus, cut by the edge) are counted nowhere on this page nor in its downloads' summaries."
        )
    if report.calibration:
        st.caption(
            "Pixel size: "
            + "; ".join(
                f"{size:g} µm/px {source.words} ({n} image{'s' if n != 1 else ''})"
                for size, source, n in report.calibration
            )
        )
    if report.uncalibrated:
        with st.expander(
            f"{len(report.uncalibrated)} image(s) state no pixel size: the model's default was assumed", expanded=False
        ):
            st.warning(
                "Neither you nor these files stated the microscope's pixel size, so the model's default "
                f"({report.model.pixel_size_um:g} µm/px) was assumed: cells are cut at the wrong physical size "
                "if it differs. Re-run the batch at your microscope's pixel size (below) if it does."
            )
            file_errors([(f, "no pixel size in the file") for f in report.uncalibrated], mark="!")
    if report.failed:
        with st.expander(f"{len(report.failed)} file(s) could not be read", expanded=True):
            file_errors(report.failed)
    if report.without_cells:
        with st.expander(f"No cells were found in {len(report.without_cells)} image(s)", expanded=True):
            file_errors(report.without_cells, mark="○")
    not_counted_section(view)
    doubt = None if report.running else report.calibration_doubt
    if doubt:
        st.warning(escape_markdown(doubt), icon=":material/straighten:")
    if report.cells_total == 0:
        if report.running:
            st.info("This batch is still being classified: its cells appear here when its job is done.")
        else:
            st.info("No cells were classified in this batch.")
            if report.without_cells:
                rerun_with_pixel_size(report, key)
            field_of_view_section(view, threshold, key)
        return
    if doubt:
        rerun_with_pixel_size(report, key)
    shifted = shift_line(report)
    if shifted and report.shift is not None and report.shift.warns:
        st.warning(escape_markdown(shifted), icon=":material/difference:")

    st.subheader("Composition")
    if report.correction is not None:  # counted and corrected columns: the table takes the page's width
        chart(composition_figure(report), f"batch-{batch_id}-composition", f"{key}_composition")
        table = st.container()
    else:
        left, table = st.columns([3, 2])
        chart(composition_figure(report), f"batch-{batch_id}-composition", f"{key}_composition", left)
    table.dataframe(pd.DataFrame(view.shares), hide_index=True, width="stretch")
    table.caption(escape_markdown(correction_caption(report)))
    if shifted and report.shift is not None and not report.shift.warns:
        table.caption(escape_markdown(shifted))
    left, right = st.columns(2)
    left.markdown("**Scores by predicted class**")
    chart(
        score_histogram(view.pred, view.score, report.classes, threshold),
        f"batch-{batch_id}-scores",
        f"{key}_scores",
        left,
    )
    right.markdown("**Per-cell probabilities**")
    chart(
        probability_figure(view.pred, view.probs, report.classes),
        f"batch-{batch_id}-probabilities",
        f"{key}_probs",
        right,
    )

    sizes = sizes_caption(view)
    if sizes:
        st.markdown("**Cell size by predicted class**")
        if view.diameter is not None and np.isfinite(view.diameter).any():
            chart(size_figure(view.pred, view.diameter, report.classes), f"batch-{batch_id}-sizes", f"{key}_sizes")
        st.caption(escape_markdown(sizes))

    reporter_section(view, key)
    st.subheader("Cells")
    n = report.cells_kept
    c = st.columns([2, 1, 1])
    order = c[0].radio("Sort by", ["upload order", "score", "class"], horizontal=True, key=f"{key}_order")
    pages = max(1, -(-n // PAGE_SIZE))
    page = c[1].number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page")
    c[2].caption(f"{n:,} cells at this threshold, {PAGE_SIZE} per page")
    with lab() as s:
        rows = queries.batch_cells(
            s,
            batch_id,
            offset=(page - 1) * PAGE_SIZE,
            limit=PAGE_SIZE,
            min_score=threshold,
            order={"upload order": "position"}.get(order, order),
        )
    by_image = {im.id: im for im in view.images}

    def thumb(cell) -> str | None:
        im = by_image.get(cell.image_id)
        pixels = image_pixels(im.sha256, im.page, report.channel, report.z) if im is not None and im.sha256 else None
        return thumbnail(pixels, cell.box, size=THUMB_PX) if pixels is not None else None

    st.dataframe(
        pd.DataFrame(cell_table(rows, report.classes, thumb)),
        hide_index=True,
        width="stretch",
        row_height=THUMB_PX + 8,
        column_config={"cell": st.column_config.ImageColumn("cell", width=THUMB_PX + 16)},
    )

    review_section(lab, Scope.of_report(report), user(), key)

    field_of_view_section(view, threshold, key)
    saliency_section(batch_id, report, key)
    download_buttons(batch_id, threshold, key)


def not_counted_section(view: ResultsView) -> None:
    """What the counts leave out, per image (lsm_core.reports.results.not_counted)."""
    if view.not_counted is None:
        return
    with st.expander("What was not counted: " + view.not_counted, expanded=bool(view.report.calibration_doubt)):
        st.caption(
            "Per image. Dropped objects are drawn as dashed outlines in the field of view below; edge and tiny "
            "cells are counted, and flagged in the downloads. Images classified before dropped objects were "
            "recorded show them empty."
        )
        st.dataframe(pd.DataFrame(view.not_counted_rows), hide_index=True, width="stretch")


def field_of_view_section(view: ResultsView, threshold: float, key: str) -> None:
    """A field of view of the batch, chosen from its fields: its cells' boxes by class (reviewed and edited in
    place, see pages._review_queue.field_section) and the objects not counted, dashed, with why."""
    lab = the_lab()
    report, fields = view.report, view.fields
    dropped = {a.id: a for a in report.accounts}

    def counts(im: Image) -> str:
        a = dropped.get(im.id)
        parts = [f"{im.n_cells} cells found"]
        if a is not None and (a.dropped_clumps or a.dropped_debris):
            parts.append(f"{(a.dropped_clumps or 0) + (a.dropped_debris or 0)} objects dropped")
        return ", ".join(parts)

    if not fields:
        return
    st.subheader("Field of view")
    # Streamlit keeps a choice by its label: the label holds nothing that changes as cells are added or dropped
    # (a count did: the choice came back as a label no option has), the counts are said beside it
    by_id = {im.id: im for im in fields}
    names = {im.id: im.file + (f" (page {im.page})" if im.page > 1 else "") for im in fields}
    picked = st.selectbox("Image", list(names), format_func=names.__getitem__, key=f"{key}_field")
    chosen = by_id.get(picked, fields[0]) if isinstance(picked, int) else fields[0]
    st.caption(counts(chosen))
    pixels = image_pixels(chosen.sha256, chosen.page, report.channel, report.z)
    if pixels is None:
        st.error("The stored image could not be read back.")
        return
    with lab() as s:
        cells = queries.image_cells(s, chosen.id)
    boxes = dropped[chosen.id].dropped_boxes if chosen.id in dropped else []
    field_section(
        lab,
        chosen,
        cells,
        Scope.of_report(report),
        user(),
        key,
        lambda editable: field_figure(pixels, cells, report.classes, threshold, editable=editable, dropped=boxes),
    )
    figure_downloads(
        field_figure(pixels, cells, report.classes, threshold, dropped=boxes),
        f"batch-{report.batch_id}-image-{chosen.id}-field",
        f"{key}_fov_{chosen.id}",
    )


def reporter_section(view: ResultsView, key: str) -> None:
    """The reporter channels measured in the cells (multi-channel files): a channel's signal against each class
    probability, and the reporter-positive fraction per predicted class at a threshold (default: Otsu's)."""
    lab = the_lab()
    batch_id, classes, channels = view.report.batch_id, view.report.classes, view.reporter_channels
    if not channels:
        return
    st.subheader("Reporter signal")
    c = st.columns([1, 1, 2])
    channel = c[0].selectbox("Channel", channels, key=f"{key}_reporter")
    with lab() as s:
        signal = reporter_view(s, batch_id, classes, channel)
    if not len(signal.means):
        st.info("No cell of this batch has a value for this channel.")
        return
    default = signal.otsu if signal.otsu is not None else float(np.median(signal.means))
    threshold = c[1].number_input(
        "Positive above",
        value=round(default, 3),
        key=f"{key}_reporter_threshold_{channel}",
        help="Default: Otsu's threshold of this batch's cell means.",
    )
    c[2].caption(
        f"Mean intensity inside each cell's mask minus the background: the median of the channel outside every "
        f"cell grown by {BACKGROUND_MARGIN_UM:g} µm. Otsu's threshold of this batch: "
        + (f"{signal.otsu:.4g}." if signal.otsu is not None else "none (too few distinct values).")
    )
    left, right = st.columns([3, 2])
    chart(reporter_figure(signal, classes, threshold), f"batch-{batch_id}-reporter", f"{key}_reporter_fig", left)
    right.dataframe(
        pd.DataFrame(positive_fractions(signal, classes, threshold)),
        hide_index=True,
        column_config={"fraction positive": st.column_config.NumberColumn(format="percent")},
    )


def rerun_with_pixel_size(report: BatchReport, key: str) -> None:
    """Offer to classify the batch's images again at another pixel size (a new batch; the cells found depend on it)."""
    used, source = report.pixel_size_read
    others = [(size, src, n) for size, src, n in report.calibration if (size, src) != (float(f"{used:.6g}"), source)]
    with st.form(f"{key}_pixel_rerun"):
        st.markdown(
            "**Classify these images again at another pixel size?** Cells are looked for at their size in "
            "micrometres, so a wrong calibration finds none or counts the wrong objects. "
            + (
                f"The images were read at {used:g} µm/px, {source.words}."
                if not others
                else f"The images in doubt were read at {used:g} µm/px, {source.words}. A "
                "re-run sets one pixel size for every image of the batch, also for "
                + "; ".join(f"the {n} read at {size:g} µm/px, {src.words}" for size, src, n in others)
                + ": to re-run only some files, classify them as a batch of their own."
            )
        )
        pixel = st.number_input(
            "Pixel size (µm/px)", min_value=0.001, max_value=50.0, value=float(used), step=0.01, format="%.6g"
        )
        go = st.form_submit_button("Re-run at this pixel size")
    if go:
        try:
            result = batches.rerun(the_lab(), report.batch_id, report.model.id, user(), pixel_size_um=pixel)
        except LsmError as exc:
            st.error(escape_markdown(exc))
            return
        st.session_state["current"] = {"batch": result.batch_id, "job": result.job_id, "errors": []}
        st.query_params["batch"] = str(result.batch_id)
        flash(
            f"Re-running as batch #{result.batch_id} at {pixel:g} µm/px."
            + (f" Note: {result.note}." if result.note else "")
        )
        st.rerun()


SALIENCY_NAMES = {"scorecam": "Score-CAM (the paper's)", "gradcam": "Grad-CAM", "ig": "Integrated Gradients"}
SALIENCY_TOP = 12  # cells per class when the top cells are asked for; the gallery shows as many


def saliency_section(batch_id: int, report: BatchReport, key: str) -> None:
    """Saliency maps of the batch: compute them on a worker, then a gallery per class, means, a ZIP of overlays."""
    from lsm_core.lab.tasks.saliency import submit as submit_saliency
    from lsm_core.ml.saliency import overlay  # torch: imported when a batch's saliency is shown

    st.subheader("Saliency: where the network looks")
    lab = the_lab()
    c = st.columns([2, 2, 1])
    method = c[0].radio("Method", METHODS, format_func=SALIENCY_NAMES.get, horizontal=True, key=f"{key}_sal_method")
    opacity = c[1].slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key=f"{key}_sal_opacity")
    name = SALIENCY_NAMES[method]
    with lab() as s:
        runs = [r for r in queries.saliency_runs(s, batch_id) if r.method == method]
        pending = queries.pending_saliency(s, batch_id, method)
    if not runs:
        if pending is not None:
            saliency_progress(pending.id, name)
        else:
            b = st.columns(2)
            top = b[0].button(f"Compute {name} for the top {SALIENCY_TOP} cells of each class", key=f"{key}_sal_top")
            every = b[1].button(f"Compute {name} for every cell", key=f"{key}_sal_all")
            if top or every:
                try:
                    submit_saliency(lab, batch_id, method, top=SALIENCY_TOP if top else None, owner=user())
                    st.rerun()
                except LsmError as exc:
                    st.error(escape_markdown(exc))
        return
    with lab() as s:
        gallery = saliency_gallery(s, runs[0].id, report.classes, lab.blobs, SALIENCY_TOP, lab.limits)
    view = gallery.view
    left_out = (
        f" {gallery.left_out} {'cells' if gallery.left_out != 1 else 'cell'} that reviewers marked as not a cell "
        f"{'are' if gallery.left_out != 1 else 'is'} left out."
        if gallery.left_out
        else ""
    )
    st.caption(
        f"{name}, {escape_markdown(view.scope)}: {len(view.cells)} cells.{left_out} Bright = evidence for the "
        "predicted class."
    )
    means = view.mean_maps(report.classes)
    cols = st.columns(max(1, len(means)))
    for col, (cls, m) in zip(cols, means.items()):
        col.image(overlay(np.zeros_like(m), m, 1.0), caption=f"mean map: {cls}", width=160)
    per_row = 4  # pairs (cell | overlay) per row
    for cls, members in gallery.by_class.items():
        if not members:
            continue
        total = sum(1 for cell in view.cells if cell.predicted == cls)
        st.markdown(f"**{escape_markdown(cls)}**: {len(members)} of {total} cells, highest score first")
        st.caption(escape_markdown(mass_sentence(cls, *gallery.inside.get(cls, (None, 0)))))
        for start in range(0, len(members), per_row):
            row = st.columns(per_row)
            for slot, i in zip(row, members[start : start + per_row]):
                cell = view.cells[i]
                slot.image(
                    [overlay(gallery.crops[i], view.maps[i], 0.0), overlay(gallery.crops[i], view.maps[i], opacity)],
                    width=96,
                )
                where = flagged(
                    f"cell {cell.cell} of {cell.file}" + (f" (page {cell.page})" if cell.page > 1 else ""), cell.flags
                )
                slot.caption(f"{escape_markdown(cls)}, p = {cell.score:.2f} · {escape_markdown(where)}")
    st.download_button(
        f"Download {name} overlays (ZIP of PNGs)",
        lambda: overlays_zip(view, gallery.crops, opacity),
        file_name=f"batch-{batch_id}-{method}.zip",
        mime="application/zip",
        on_click="ignore",
        key=f"{key}_sal_zip",
    )


def saliency_progress(job_id: int, name: str) -> None:
    """A saliency job's progress, polled every 2 s, with a Cancel button for its owner and administrators; the
    page reruns by itself when the job has ended."""

    @st.fragment(run_every=2.0)
    def poll() -> None:
        info = queue_info(the_lab(), job_id)
        if info.status not in ("queued", "running"):
            st.rerun()
        where = (
            f"waiting in the queue, position {info.position}"
            if info.status == "queued" and info.position
            else info.status
        )
        st.progress(
            info.done / info.total if info.total else 0.0,
            text=f"{name} maps are being computed (job {job_id}, {where}): {info.done:,} of {info.total:,} cells",
        )
        st.caption("This section shows the maps by itself when they are ready.")
        if info.owner == user() or admin():  # jobs.cancel checks again
            if st.button("Cancel these maps", key=f"cancel_saliency_{job_id}"):
                try:
                    status = cancel(the_lab(), job_id, user())
                    st.success("Cancelled." if status == "cancelled" else "The worker stops at its next step.")
                except LsmError as exc:
                    st.error(escape_markdown(str(exc)))

    poll()
