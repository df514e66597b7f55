"""What the results view of one batch shows, loaded in one go (:func:`load_results`): the report, every cell's
prediction and probabilities, the batch's facts, its images and the fields of view to pick from, the reporter
channels measured, the composition table and what the counts leave out. The page lays it out
(pages/_results_view.py); what depends on a widget (a page of the cell table, a reporter channel, a field of
view, saliency maps) is read when that widget asks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import queries
from db.schema import Image, Job, JobStatus
from lsm_core.imaging.cells import TINY_CELL_UM
from lsm_core.imaging.shape import UNKNOWN_SIZE
from lsm_core.reports.correction import NO_PROFILE
from lsm_core.reports.export import reporter_channels
from lsm_core.reports.report import BatchReport, cell_arrays, load_report
from lsm_core.reports.shift import UNKNOWN
from lsm_core.reports.text import without_server_paths

# the batch's sample metadata as the results view names it, in the order it says it
FACT_LABELS = (
    ("mouse_id", "mouse"),
    ("age", "age"),
    ("sex", "sex"),
    ("strain", "strain/reporter"),
    ("gate", "gate"),
    ("imaging_date", "imaged"),
)


@dataclass(frozen=True)
class ResultsView:
    """One batch's results at a score threshold, as the results view shows them."""

    report: BatchReport
    pred: np.ndarray  # (N,) every counted cell's predicted class index, in upload order
    score: np.ndarray  # (N,)
    probs: np.ndarray  # (N, C)
    images: list[Image]  # the batch's images, in upload order
    fields: list[Image]  # the fields of view with cells found or objects dropped: what the field view offers
    facts: list[tuple[str, str]]  # (what, value): owner, model, the sample's metadata given, how cells were found
    reporter_channels: list[str]  # the reporter channels measured in its cells (multi-channel files)
    shares: list[dict]  # the composition table: class, cells, %, 95% CI
    not_counted: str | None  # what the counts leave out, in one line (None: nothing)
    not_counted_rows: list[dict]  # per image: cells, edge, tiny, dropped as clumps, dropped as debris
    job_failure: str | None = None  # why its classification job failed (None: it did not)
    diameter: np.ndarray | None = None  # (N,) each counted cell's equivalent diameter (µm; NaN: unknown)
    sizes_unknown: int = 0  # cells outlined, but at the model's default pixel size: no size in µm


def _facts(report: BatchReport) -> list[tuple[str, str]]:
    meta = report.meta
    facts = [("owner", report.owner), ("model", report.model.label)]
    facts += [(label, str(getattr(meta, key))) for key, label in FACT_LABELS if getattr(meta, key)]
    if meta.imaging not in (None, "auto"):  # chosen at submit: say how the cells were found
        facts.append(("imaging", meta.imaging))
    return facts


def _n(count: int, what: str) -> str:
    return f"{count:,} {what}{'' if count == 1 else 's'}"


def not_counted(report: BatchReport) -> tuple[str | None, list[dict]]:
    """What the counts leave out, per image: objects dropped as clumps or debris, and the counted cells that are
    cut by the image's edge or tiny (the workbook's ``images`` sheet has the same): one line, and a row per image
    with any of them. (None, []) when nothing is left out."""
    accounts = [a for a in report.accounts if a.done and not a.error]
    clumps, debris, edge = report.dropped_clumps, report.dropped_debris, report.cells_edge
    tiny = sum(a.cells_tiny for a in accounts)
    if not (clumps or debris or edge or tiny):
        return None, []
    parts = []
    if clumps or debris:
        dropped = [f"{_n(k, 'object')} dropped as {why}" for k, why in ((clumps, "clumps"), (debris, "debris")) if k]
        images = sum(1 for a in accounts if a.dropped_clumps or a.dropped_debris)
        parts.append(f"{' and '.join(dropped)}, in {_n(images, 'image')}")
    if edge or tiny:
        counted = [
            f"{k:,} {what}"
            for k, what in ((edge, "cut by the image's edge"), (tiny, f"under {TINY_CELL_UM:g} µm"))
            if k
        ]
        parts.append(f"of the cells counted, {' and '.join(counted)}")
    rows = [
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
    return "; ".join(parts), rows


def _share_rows(report: BatchReport) -> list[dict]:
    corrected = report.correction
    rows = []
    for sh in report.shares:
        row: dict[str, object] = {
            "class": sh.cls,
            "cells": sh.count,
            "%": round(100 * sh.fraction, 1),
            "95% CI": f"{100 * sh.low:.1f} to {100 * sh.high:.1f}",
        }
        if corrected is not None:
            c = corrected.share(sh.cls)
            row["corrected %"] = round(100 * c.fraction, 1)
            row["corrected 95% CI"] = f"{100 * c.low:.1f} to {100 * c.high:.1f}"
        rows.append(row)
    return rows


def correction_caption(report: BatchReport) -> str:
    """What the corrected composition assumed, or why there is none, in a sentence or three."""
    corrected = report.correction
    if corrected is None:
        return NO_PROFILE
    said = (
        f"Corrected: the composition of all {corrected.cells:,} counted cells corrected for the model's own errors, "
        f"measured on {corrected.profile_cells:,} held-out labelled cells ({corrected.profile_source}); the "
        "interval carries both the batch's cells and that finite set. It assumes this batch's cells of each class "
        "look like the held-out cells of that class (only the mix differs)."
    )
    return " ".join([said, *corrected.notes])


def shift_line(report: BatchReport) -> str | None:
    """The batch's shift from its model's training data in a sentence or two (None: the batch has no cells)."""
    shift = report.shift
    if shift is None or not report.cells_total:
        return None
    if shift.level == UNKNOWN:
        return shift.note
    low, high = 100 * (shift.low or 0), 100 * (shift.high or 0)
    score = f"{100 * (shift.score or 0):.0f}% of cells beyond, 95% CI {low:.0f} to {high:.0f}"
    return f"Shift from the training data: {shift.level} ({score}). {shift.note}"


def job_failure(s: Session, batch_id: int) -> str | None:
    """Why the batch's newest classification job failed, when its status says failed; None otherwise. Shown to
    members: the server's paths in the error are shortened (:func:`lsm_core.reports.text.without_server_paths`)."""
    job = s.scalars(
        select(Job).where(Job.batch_id == batch_id, Job.kind == "classify").order_by(Job.id.desc()).limit(1)
    ).first()
    if job is None or job.status != JobStatus.FAILED:
        return None
    tries = f" after {job.attempts} attempt{'s' if job.attempts != 1 else ''}" if job.attempts else ""
    why = without_server_paths(job.error) if job.error else "no reason was recorded"
    return f"The classification job (job {job.id}) failed{tries}: {why}"


def sizes_caption(view: ResultsView) -> str | None:
    """What the size figure shows and leaves out, or why there is none (None: no cell was outlined)."""
    known = int(np.isfinite(view.diameter).sum()) if view.diameter is not None else 0
    if view.sizes_unknown and not known:
        return f"Cell sizes: {UNKNOWN_SIZE}."
    if not known:
        return None
    said = (
        f"{known:,} cells measured from their outlines at the pixel size each image was read at; single-cell crops "
        "(no outline) and cells added by hand have none."
    )
    if view.sizes_unknown:
        said += f" {view.sizes_unknown:,} more were read at the model's default pixel size: their size is unknown."
    return said


def load_results(s: Session, batch_id: int, threshold: float) -> ResultsView:
    """Everything the results view of batch ``batch_id`` shows at score ``threshold``, read in one session;
    raises LsmError when the batch no longer exists."""
    report = load_report(s, batch_id, threshold)
    images = queries.batch_images(s, batch_id)
    dropped = {a.id: a for a in report.accounts}
    fields = [
        im
        for im in images
        if im.kind == "field" and (im.n_cells or (im.id in dropped and dropped[im.id].dropped_boxes))
    ]
    cells = cell_arrays(s, batch_id, report.classes)
    return ResultsView(  # in the order of its fields
        report,
        cells.pred,
        cells.score,
        cells.probs,
        images,
        fields,
        _facts(report),
        reporter_channels(s, [batch_id]),
        _share_rows(report),
        *not_counted(report),
        job_failure(s, batch_id) if report.status == JobStatus.FAILED else None,
        cells.diameter,
        cells.sizes_unknown,
    )
