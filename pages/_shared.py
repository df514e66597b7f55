"""What pages share: widgets (model pickers, messages after a rerun, figure downloads, a job list) and the
results view of one batch.

Imported by pages; not a page itself. Widgets only: data and figures come from lsm_core and db.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from db import queries
from lsm_core.classes import TASK_TITLES
from lsm_core.errors import LsmError
from lsm_core.lab import jobs, settings
from lsm_core.lab.registry import offered_models
from lsm_core.reports.report import (
    SOURCE_WORDS,
    cell_arrays,
    cell_table,
    cells_csv,
    composition_figure,
    field_figure,
    load_report,
    probability_figure,
    score_histogram,
    thumbnail,
    workbook,
)
from lsm_core.reports.stats import PAPER_THRESHOLDS
from lsm_core.reports.text import escape_markdown
from pages._common import admin, image_pixels, the_lab, user
from pages._review_queue import Scope, field_section, flagged, review_section

PAGE_SIZE = 50
THUMB_PX = 64  # cell thumbnails in the table: large enough to see the cell


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
    return st.selectbox(label, ids, format_func=names.get, key=key, **kwargs)


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


def render_results(batch_id: int, key: str = "results") -> None:
    """The whole results view of one batch: summary, figures, cell table, field of view, downloads."""
    lab = the_lab()
    threshold = threshold_picker(key)
    with lab() as s:
        try:
            report = load_report(s, batch_id, threshold)
        except LsmError as exc:
            st.error(escape_markdown(exc))
            return
        pred, score, probs = cell_arrays(s, batch_id, report.classes)
        images = queries.batch_images(s, batch_id)
    model = report.model
    st.subheader(escape_markdown(report.name))
    meta = report.meta
    facts = [f"owner **{escape_markdown(report.owner)}**", f"model **{escape_markdown(model.label)}**"]
    facts += [
        f"{label} **{escape_markdown(getattr(meta, k))}**"
        for k, label in (
            ("mouse_id", "mouse"),
            ("age", "age"),
            ("sex", "sex"),
            ("strain", "strain/reporter"),
            ("gate", "gate"),
            ("imaging_date", "imaged"),
        )
        if getattr(meta, k)
    ]
    if meta.imaging not in (None, "auto"):  # chosen at submit: say how the cells were found
        facts.append(f"imaging **{escape_markdown(meta.imaging)}**")
    st.markdown(" · ".join(facts))
    if model.demo:
        st.warning(
            "Classified by a **synthetic demo** model, trained on generated cells only: "
            "these numbers say nothing about real cells."
        )
    if meta.notes:
        st.caption("Notes:")
        st.text(meta.notes)  # always shown as text, never as HTML or markdown
    c = st.columns(4)
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
                f"{size:g} µm/px {SOURCE_WORDS.get(source, source)} ({n} image{'s' if n != 1 else ''})"
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
    not_counted_section(report)
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
            field_of_view_section(report, images, threshold, key)
        return
    if doubt:
        rerun_with_pixel_size(report, key)

    st.subheader("Composition")
    left, right = st.columns([3, 2])
    chart(composition_figure(report), f"batch-{batch_id}-composition", f"{key}_composition", left)
    right.dataframe(
        pd.DataFrame(
            [
                {
                    "class": sh.cls,
                    "cells": sh.count,
                    "%": round(100 * sh.fraction, 1),
                    "95% CI": f"{100 * sh.low:.1f} to {100 * sh.high:.1f}",
                }
                for sh in report.shares
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    left, right = st.columns(2)
    left.markdown("**Scores by predicted class**")
    chart(score_histogram(pred, score, report.classes, threshold), f"batch-{batch_id}-scores", f"{key}_scores", left)
    right.markdown("**Per-cell probabilities**")
    chart(probability_figure(pred, probs, report.classes), f"batch-{batch_id}-probabilities", f"{key}_probs", right)

    reporter_section(batch_id, report.classes, key)
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
    by_image = {im.id: im for im in images}

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

    field_of_view_section(report, images, threshold, key)
    saliency_section(batch_id, report, key)
    download_buttons(batch_id, threshold, key)


def not_counted_section(report) -> None:
    """What the counts leave out, per image: objects dropped as clumps or debris, and the counted cells that
    are cut by the image's edge or tiny (the workbook's ``images`` sheet has the same)."""
    from lsm_core.imaging.cells import TINY_CELL_UM

    accounts = [a for a in report.accounts if a.done and not a.error]
    clumps, debris, edge = report.dropped_clumps, report.dropped_debris, report.cells_edge
    tiny = sum(a.cells_tiny for a in accounts)
    if not (clumps or debris or edge or tiny):
        return

    def n(count: int, what: str) -> str:
        return f"{count:,} {what}{'' if count == 1 else 's'}"

    parts = []
    if clumps or debris:
        dropped = [f"{n(k, 'object')} dropped as {why}" for k, why in ((clumps, "clumps"), (debris, "debris")) if k]
        images = sum(1 for a in accounts if a.dropped_clumps or a.dropped_debris)
        parts.append(f"{' and '.join(dropped)}, in {n(images, 'image')}")
    if edge or tiny:
        counted = [
            f"{k:,} {what}"
            for k, what in ((edge, "cut by the image's edge"), (tiny, f"under {TINY_CELL_UM:g} µm"))
            if k
        ]
        parts.append(f"of the cells counted, {' and '.join(counted)}")
    with st.expander("What was not counted: " + "; ".join(parts), expanded=bool(report.calibration_doubt)):
        st.caption(
            "Per image. Dropped objects are drawn as dashed outlines in the field of view below; edge and tiny "
            "cells are counted, and flagged in the downloads. Images classified before dropped objects were "
            "recorded show them empty."
        )
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "image": a.name,
                        "cells": a.n_cells,
                        "edge": a.cells_edge,
                        "tiny": a.cells_tiny,
                        "dropped as clumps": a.dropped_clumps,
                        "dropped as debris": a.dropped_debris,
                    }
                    for a in accounts
                    if a.cells_edge or a.cells_tiny or a.dropped_clumps or a.dropped_debris
                ]
            ),
            hide_index=True,
            width="stretch",
        )


def field_of_view_section(report, images, threshold: float, key: str) -> None:
    """A field of view of the batch, chosen from its fields: its cells' boxes by class (reviewed and edited in
    place, see pages._review_queue.field_section) and the objects not counted, dashed, with why."""
    lab = the_lab()
    dropped = {a.id: a for a in report.accounts}

    def counts(im) -> str:
        a = dropped.get(im.id)
        parts = [f"{im.n_cells} cells found"]
        if a is not None and (a.dropped_clumps or a.dropped_debris):
            parts.append(f"{(a.dropped_clumps or 0) + (a.dropped_debris or 0)} objects dropped")
        return ", ".join(parts)

    fields = [
        im
        for im in images
        if im.kind == "field" and (im.n_cells or (im.id in dropped and dropped[im.id].dropped_boxes))
    ]
    if not fields:
        return
    st.subheader("Field of view")
    # Streamlit keeps a choice by its label: the label holds nothing that changes as cells are added or dropped
    # (a count did: the choice came back as a label no option has), the counts are said beside it
    by_id = {im.id: im for im in fields}
    names = {im.id: im.file + (f" (page {im.page})" if im.page > 1 else "") for im in fields}
    picked = st.selectbox("Image", list(names), format_func=names.get, key=f"{key}_field")
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


def reporter_section(batch_id: int, classes: list[str], key: str) -> None:
    """The reporter channels measured in the cells (multi-channel files): a channel's signal against each class
    probability, and the reporter-positive fraction per predicted class at a threshold (default: Otsu's)."""
    from lsm_core.imaging.reporters import BACKGROUND_MARGIN_UM
    from lsm_core.reports.export import reporter_channels
    from lsm_core.reports.report import positive_fractions, reporter_figure, reporter_view

    lab = the_lab()
    with lab() as s:
        channels = reporter_channels(s, [batch_id])
    if not channels:
        return
    st.subheader("Reporter signal")
    c = st.columns([1, 1, 2])
    channel = c[0].selectbox("Channel", channels, key=f"{key}_reporter")
    with lab() as s:
        view = reporter_view(s, batch_id, classes, channel)
    if not len(view.means):
        st.info("No cell of this batch has a value for this channel.")
        return
    default = view.otsu if view.otsu is not None else float(np.median(view.means))
    threshold = c[1].number_input(
        "Positive above",
        value=round(default, 3),
        key=f"{key}_reporter_threshold_{channel}",
        help="Default: Otsu's threshold of this batch's cell means.",
    )
    c[2].caption(
        f"Mean intensity inside each cell's mask minus the background: the median of the channel outside every "
        f"cell grown by {BACKGROUND_MARGIN_UM:g} µm. Otsu's threshold of this batch: "
        + (f"{view.otsu:.4g}." if view.otsu is not None else "none (too few distinct values).")
    )
    left, right = st.columns([3, 2])
    chart(reporter_figure(view, classes, threshold), f"batch-{batch_id}-reporter", f"{key}_reporter_fig", left)
    right.dataframe(
        pd.DataFrame(positive_fractions(view, classes, threshold)),
        hide_index=True,
        column_config={"fraction positive": st.column_config.NumberColumn(format="percent")},
    )


def rerun_with_pixel_size(report, key: str) -> None:
    """Offer to classify the batch's images again at another pixel size (a new batch; the cells found depend on it)."""
    from lsm_core.lab import batches

    used, source = report.pixel_size_read
    others = [(size, src, n) for size, src, n in report.calibration if (size, src) != (float(f"{used:.6g}"), source)]
    with st.form(f"{key}_pixel_rerun"):
        st.markdown(
            "**Classify these images again at another pixel size?** Cells are looked for at their size in "
            "micrometres, so a wrong calibration finds none or counts the wrong objects. "
            + (
                f"The images were read at {used:g} µm/px, {SOURCE_WORDS.get(source, source)}."
                if not others
                else f"The images in doubt were read at {used:g} µm/px, {SOURCE_WORDS.get(source, source)}. A "
                "re-run sets one pixel size for every image of the batch, also for "
                + "; ".join(f"the {n} read at {size:g} µm/px, {SOURCE_WORDS.get(src, src)}" for size, src, n in others)
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


def saliency_section(batch_id: int, report, key: str) -> None:
    """Saliency maps of the batch: compute them on a worker, then a gallery per class, means, a ZIP of overlays."""
    from lsm_core.lab.tasks.saliency import submit as submit_saliency
    from lsm_core.ml.saliency import METHODS, overlay
    from lsm_core.reports.report import mass_sentence, overlays_zip, saliency_gallery

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
    from lsm_core.lab.jobs import cancel, queue_info

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

    c = st.columns(2)
    c[0].download_button(
        "Download xlsx (cells, summary, batch, model, images, review)",
        xlsx,
        file_name=f"batch-{batch_id}.xlsx",
        mime="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        key=f"{key}_xlsx",
        on_click="ignore",
    )
    c[1].download_button(
        "Download csv (cells)",
        csv,
        file_name=f"batch-{batch_id}.csv",
        mime="text/csv",
        key=f"{key}_csv",
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
