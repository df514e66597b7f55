"""What the results of one batch look like: summary at a score threshold, aggregated figures, workbook.

Figures are plotly objects built from arrays (never one trace per cell); pages only display them.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import plotly.graph_objects as go
from openpyxl import Workbook
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import queries
from db.schema import Batch, Cell, Image, Model, SaliencyRun
from lsm_core.errors import LsmError
from lsm_core.imaging.calibration import CalibrationSource, resolve
from lsm_core.imaging.cells import TINY_CELL_UM, calibration_doubt
from lsm_core.imaging.shape import mask_in_crop, outline_array, sizes_known
from lsm_core.lab.blobs import BlobStore
from lsm_core.lab.cell_labels import agreement
from lsm_core.ml.shift import summary as shift_summary
from lsm_core.reports.correction import NO_PROFILE, CorrectedShare, Correction, correct, model_profile
from lsm_core.reports.export import BATCH_COLUMNS, add_sheet, batch_rows, workbook_bytes, write_csv
from lsm_core.reports.shift import Shift, assess
from lsm_core.reports.stats import DAYS_PER_MONTH, ClassShare, composition

CLASS_COLOURS = {
    "LT-HSC": "#1b9e77",
    "ST-HSC": "#d95f02",
    "MPP": "#7570b3",
    "young": "#1f78b4",
    "aged": "#e31a1c",
}
FALLBACK_COLOURS = ["#66a61e", "#e6ab02", "#a6761d", "#666666"]


def colour(cls: str, i: int = 0) -> str:
    return CLASS_COLOURS.get(cls, FALLBACK_COLOURS[i % len(FALLBACK_COLOURS)])


def plot_text(value: object) -> str:
    """User text (a batch name, a mouse id, a group) as a plotly figure shows it literally: plotly reads a subset
    of HTML in trace names, hover and axis texts (``<a href>``, ``<b>``, ``<br>``, ``<span style>``) and decodes
    entities, so ``&``, ``<`` and ``>`` are written as entities.

    >>> plot_text('<a href="http://x">M1</a> & co')
    '&lt;a href="http://x"&gt;M1&lt;/a&gt; &amp; co'
    """
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def age_text(days: float | None) -> str:
    """An age as people say it: weeks below six months, months above."""
    if days is None:
        return ""
    if days < 183:
        return f"{days / 7:.1f} weeks"
    return f"{days / DAYS_PER_MONTH:.1f} months"


@dataclass(frozen=True)
class SampleFacts:
    """A batch's sample metadata as a report says it (its age also as people say it), with when it was made,
    the pixel size set for it (None: as given) and how its cells were found (``auto``: by the picture)."""

    mouse_id: str | None
    age_days: float | None
    age: str  # age_text(age_days); "" when unknown
    sex: str | None
    strain: str | None
    gate: str | None
    imaging_date: str | None
    notes: str | None
    created: datetime
    pixel_size_um: float | None
    imaging: str  # lsm_core.imaging.cells.MODALITIES, or "auto"


@dataclass(frozen=True)
class ModelFacts:
    """The model that classified a batch, as a report names and describes it."""

    id: int
    name: str
    version: int
    label: str
    task: str
    sha256: str
    classes: list[str]
    demo: bool
    architecture: str
    pixel_size_um: float
    input_size: int
    crop_um: float
    normalisation: str
    temperature: float
    created: datetime
    training: dict[str, Any]


@dataclass
class BatchReport:
    batch_id: int
    name: str
    owner: str
    status: str
    meta: SampleFacts
    model: ModelFacts
    classes: list[str]
    threshold: float
    cells_total: int  # counted as cells: those reviewers said are not cells are left out (cells_excluded)
    cells_kept: int
    shares: list[ClassShare]
    images: int
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, why it could not be read)
    without_cells: list[tuple[str, str]] = field(default_factory=list)  # (file, why no cell was found)
    # the pixel sizes the cells were found at: (um per pixel, where it came from, images)
    calibration: list[tuple[float, CalibrationSource, int]] = field(default_factory=list)
    # images classified at the model's default pixel size: neither the user nor the file stated one
    uncalibrated: list[str] = field(default_factory=list)
    channel: str | None = None  # the channel and z plane the batch asked for (None: automatic), for reading again
    z: int | None = None
    cells_excluded: int = 0  # cells that reviewers said are not cells (lsm_core.lab.cell_labels), counted nowhere
    app_versions: list[str] = field(default_factory=list)  # the app versions that classified its images
    # per image, what was counted and what was not (cells cut by the edge or tiny, objects dropped)
    accounts: list[queries.ImageAccount] = field(default_factory=list)
    # the composition of every counted cell (no score threshold: the model's confusion was measured without one)
    # corrected for the model's errors; None where the model carries no error profile (correction.NO_PROFILE)
    correction: Correction | None = None
    # whether its cells look like the model's training cells (lsm_core.reports.shift); every counted cell
    shift: Shift | None = None

    @property
    def dropped_clumps(self) -> int:
        return sum(a.dropped_clumps or 0 for a in self.accounts)

    @property
    def dropped_debris(self) -> int:
        return sum(a.dropped_debris or 0 for a in self.accounts)

    @property
    def cells_edge(self) -> int:
        return sum(a.cells_edge for a in self.accounts)

    def _groups(self) -> dict[tuple[float, CalibrationSource], list[queries.ImageAccount]]:
        """The images that were classified, by the calibration they were read at (value to 6 digits, source)."""
        groups: dict[tuple[float, CalibrationSource], list[queries.ImageAccount]] = {}
        for a in self.accounts:
            if a.pixel_size_um and a.pixel_size_source and a.done and not a.error:
                key = (float(f"{a.pixel_size_um:.6g}"), CalibrationSource(a.pixel_size_source))
                groups.setdefault(key, []).append(a)
        return groups

    def _doubted(self) -> tuple[tuple[float, CalibrationSource] | None, str | None]:
        """The calibration whose images' cells suggest a wrong pixel size, and why (None, None: none does).
        Each calibration of a batch is judged on its own images: in a batch of files stating their pixel size
        and pictures read at the model's default, the pictures' tiny cells say nothing of the files'."""
        groups = self._groups()
        if len(groups) <= 1:
            return (next(iter(groups), None), self._doubt(self.accounts))
        worst = None
        for calibration, members in sorted(groups.items(), key=lambda kv: -sum(a.n_cells for a in kv[1])):
            why = self._doubt(members)
            if why and worst is None:
                size, source = calibration
                names = ", ".join(a.name for a in members[:3]) + (
                    f" and {len(members) - 3} more" if len(members) > 3 else ""
                )
                worst = (
                    calibration,
                    f"The {len(members)} image(s) read at {size:g} µm/px, {source.words} ({names}): {why}",
                )
        return worst or (None, None)

    @staticmethod
    def _doubt(accounts: list[queries.ImageAccount]) -> str | None:
        return calibration_doubt(
            sum(a.n_cells for a in accounts),
            sum(a.dropped_clumps or 0 for a in accounts),
            sum(a.cells_edge_or_tiny for a in accounts),
        )

    @property
    def calibration_doubt(self) -> str | None:
        """Why the cells found suggest a wrong pixel size (more clumps dropped than cells kept, or most cells
        kept cut by the edge or tiny), or None; in a batch read at several pixel sizes, which images it is."""
        return self._doubted()[1]

    @property
    def pixel_size_read(self) -> tuple[float, CalibrationSource]:
        """The pixel size the images were read at and where it came from: what a re-run starts from. Where the
        cells of one calibration's images raise a doubt, that one; else the one most images were read at; else
        (none read yet) the batch's or the model's."""
        doubted, _ = self._doubted()
        if doubted is not None:
            return doubted
        if self.calibration:
            size, source, _ = self.calibration[0]
            return size, source
        expected = resolve(user=self.meta.pixel_size_um, model_default=self.model.pixel_size_um)
        return expected.um_per_px, expected.source

    @property
    def images_read(self) -> int:
        """Images that could be read: what the job's progress counts."""
        return self.images - len(self.failed)

    @property
    def running(self) -> bool:
        return self.status in ("queued", "running")


def load_report(s: Session, batch_id: int, threshold: float = 0.0) -> BatchReport:
    batch = s.get(Batch, batch_id)
    if batch is None:
        raise LsmError(f"batch {batch_id} no longer exists (it may have been deleted)")
    model = s.get(Model, batch.model_id)
    assert model is not None  # batches.model_id is a foreign key, and model rows are never removed (only flagged)
    classes = list(model.classes)
    counts_all = queries.class_counts(s, [batch_id])[batch_id]
    counts = queries.class_counts(s, [batch_id], threshold)[batch_id]
    images = s.execute(
        select(
            Image.file,
            Image.page,
            Image.error,
            Image.n_cells,
            Image.done,
            Image.note,
            Image.pixel_size_um,
            Image.pixel_size_source,
            Image.app_version,
        )
        .where(Image.batch_id == batch_id)
        .order_by(Image.position)
    ).all()
    classified = [im for im in images if im.done and not im.error]
    # one group per pixel size as it is written (float noise between files is not another calibration)
    used = Counter(
        (float(f"{im.pixel_size_um:.6g}"), CalibrationSource(im.pixel_size_source))
        for im in classified
        if im.pixel_size_source
    )
    return BatchReport(
        batch_id=batch.id,
        name=batch.name,
        owner=batch.owner,
        status=batch.status,
        channel=batch.channel,
        z=batch.z,
        meta=SampleFacts(
            mouse_id=batch.mouse_id,
            age_days=batch.age_days,
            age=age_text(batch.age_days),
            sex=batch.sex,
            strain=batch.strain,
            gate=batch.gate,
            imaging_date=batch.imaging_date,
            notes=batch.notes,
            created=batch.created,
            pixel_size_um=batch.pixel_size_um,
            imaging=batch.modality or "auto",  # how its cells were found (lsm_core.imaging.cells.MODALITIES)
        ),
        model=ModelFacts(
            id=model.id,
            name=model.name,
            version=model.version,
            label=model.label,
            task=model.task,
            sha256=model.weights_sha256,
            classes=classes,
            demo=model.demo,
            architecture=model.architecture,
            pixel_size_um=model.pixel_size_um,
            input_size=model.input_size,
            crop_um=model.crop_um,
            normalisation=model.normalisation,
            temperature=model.temperature,
            created=model.created,
            training=model.training or {},
        ),
        classes=classes,
        threshold=threshold,
        cells_total=sum(counts_all.values()),
        cells_kept=sum(counts.values()),
        shares=composition(counts, classes),
        images=len(images),
        failed=[(im.file, im.error) for im in images if im.error],
        without_cells=[
            (im.file + (f" (page {im.page})" if im.page > 1 else ""), im.note or "no cells found")
            for im in images
            if not im.error and im.done and im.n_cells == 0
        ],
        calibration=[(size, source, n) for (size, source), n in used.most_common()],
        uncalibrated=[im.file for im in classified if im.pixel_size_source == CalibrationSource.MODEL_DEFAULT],
        cells_excluded=queries.excluded_counts(s, [batch_id])[batch_id],
        app_versions=sorted({im.app_version for im in classified if im.app_version}),
        accounts=queries.image_accounts(s, batch_id, TINY_CELL_UM),
        correction=_corrected(counts_all, classes, model.metrics),
        shift=assess(queries.feature_distances(s, [batch_id])[batch_id], model.training),
    )


def _corrected(counts: dict[str, int], classes: list[str], metrics: dict | None) -> Correction | None:
    profile = model_profile(metrics)
    if profile is None or set(profile.classes) != set(classes) or len(profile.classes) != len(classes):
        return None
    return correct(counts, classes, profile)


class CellArrays(NamedTuple):
    """Every counted cell of a batch (those reviewers said are not cells left out), in upload order."""

    pred: np.ndarray  # (N,) predicted class index (-1: not one of the classes)
    score: np.ndarray  # (N,) float32
    probs: np.ndarray  # (N, C) float32
    # (N,) equivalent diameter in µm; NaN where the cell has no outline, or where its image's pixel size was only
    # the model's default (lsm_core.imaging.shape.sizes_known)
    diameter: np.ndarray
    sizes_unknown: int  # cells outlined but left without a size for that reason


def cell_arrays(s: Session, batch_id: int, classes: list[str]) -> CellArrays:
    """Every counted cell's class, score, probabilities and size (:class:`CellArrays`), read in one query."""
    rows = s.execute(
        select(Cell.predicted, Cell.score, Cell.probs, Cell.diameter_um, Image.pixel_size_source)
        .join(Image, Image.id == Cell.image_id)
        .where(Cell.batch_id == batch_id, Cell.id.not_in(queries.excluded_cells([batch_id])))
        .order_by(Cell.image_id, Cell.idx)
    ).all()
    index = {c: i for i, c in enumerate(classes)}
    pred = np.array([index.get(r[0], -1) for r in rows], dtype=np.int64)
    score = np.array([r[1] for r in rows], dtype=np.float32)
    probs = np.array([r[2] for r in rows], dtype=np.float32).reshape(len(rows), len(classes))
    known = {source: sizes_known(source) for source in {r[4] for r in rows}}
    diameter = np.array([r[3] if r[3] is not None and known[r[4]] else np.nan for r in rows], np.float64)
    unknown = sum(1 for r in rows if r[3] is not None and not known[r[4]])
    return CellArrays(pred, score, probs, diameter, unknown)


def _share_bars(shares: Sequence[ClassShare | CorrectedShare], name: str, hover: str, **style: Any) -> go.Bar:
    """One bar per class at its fraction (%), with its 95% interval as an asymmetric error bar."""
    return go.Bar(
        x=[sh.cls for sh in shares],
        y=[100 * sh.fraction for sh in shares],
        marker_color=[colour(sh.cls, i) for i, sh in enumerate(shares)],
        error_y={
            "type": "data",
            "symmetric": False,
            "array": [100 * (sh.high - sh.fraction) for sh in shares],
            "arrayminus": [100 * (sh.fraction - sh.low) for sh in shares],
        },
        hovertemplate=hover,
        name=name,
        **style,
    )


def composition_figure(report: BatchReport) -> go.Figure:
    """Each class's share of the cells as a bar with its 95% Wilson interval; each bar's label ("12.0% (n=12)")
    stands above the upper end of its interval, clear of the error bar, and the y axis reaches above the highest
    label (on the page and in exported figures, whose font size differs: the label is anchored at its bottom)."""
    shares = report.shares
    counted = f"counted (score ≥ {report.threshold:.2f})" if report.threshold > 0 else "counted"
    fig = go.Figure(_share_bars(shares, counted, "%{x}: %{y:.1f}%<extra></extra>"))
    corrected = report.correction
    if corrected is not None:
        fig.add_trace(
            _share_bars(
                [corrected.share(sh.cls) for sh in shares],
                "corrected for the model's errors (all cells)",
                "%{x}: %{y:.1f}% corrected<extra></extra>",
                marker_pattern_shape="/",
                opacity=0.6,
            )
        )
        fig.update_layout(barmode="group", showlegend=True, legend={"orientation": "h", "y": -0.15})
    for sh in shares:
        fig.add_annotation(
            x=sh.cls,
            y=100 * sh.high,
            text=f"{100 * sh.fraction:.1f}% (n={sh.count})",
            showarrow=False,
            yanchor="bottom",
            yshift=2,
            xshift=-18 if corrected is not None else 0,
        )
    top = max([100 * sh.high for sh in shares] + ([100 * c.high for c in corrected.shares] if corrected else []))
    fig.update_layout(
        yaxis_title="% of cells (95% interval)",
        yaxis_range=[0, max(105.0, top + 15)],
        yaxis_tickvals=[0, 20, 40, 60, 80, 100],
        height=380 if corrected is not None else 360,
        margin={"t": 30, "b": 40},
    )
    if corrected is None:
        fig.update_layout(showlegend=False)
    return fig


def size_figure(pred: np.ndarray, diameter: np.ndarray, classes: list[str]) -> go.Figure:
    """The cells' equivalent diameters (µm) per predicted class: one histogram per class over the same bins, with
    each class's median and cells in the legend."""
    known = np.isfinite(diameter)
    fig = go.Figure()
    if known.any():
        lo, hi = np.floor(np.nanmin(diameter)), np.ceil(np.nanmax(diameter))
        edges = np.linspace(lo, max(hi, lo + 1), 31)
        for i, cls in enumerate(classes):
            d = diameter[known & (pred == i)]
            if not len(d):
                continue
            counts, _ = np.histogram(d, bins=edges)
            fig.add_trace(
                go.Bar(
                    x=(edges[:-1] + edges[1:]) / 2,
                    y=counts,
                    width=np.diff(edges) * 0.95,
                    name=f"{plot_text(cls)}: median {np.median(d):.1f} µm ({len(d):,} cells)",
                    marker_color=colour(cls, i),
                    opacity=0.6,
                )
            )
    fig.update_layout(
        barmode="overlay",
        xaxis_title="equivalent diameter (µm, from each cell's outline)",
        yaxis_title="cells",
        height=320,
        margin={"t": 30, "b": 40},
        legend={"orientation": "h", "y": -0.3},
    )
    return fig


def score_histogram(pred: np.ndarray, score: np.ndarray, classes: list[str], threshold: float) -> go.Figure:
    """Binned counts per predicted class (one bar trace per class, 20 bins from 1/C to 1)."""
    edges = np.linspace(1 / len(classes), 1.0, 21)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for i, cls in enumerate(classes):
        counts, _ = np.histogram(score[pred == i], bins=edges)
        fig.add_trace(go.Bar(x=centres, y=counts, name=cls, marker_color=colour(cls, i), width=np.diff(edges) * 0.95))
    fig.add_vline(x=threshold, line_dash="dash", line_color="#444", annotation_text=f"threshold {threshold:.2f}")
    fig.update_layout(
        barmode="stack",
        xaxis_title="score (largest probability)",
        yaxis_title="cells",
        height=360,
        margin={"t": 30, "b": 40},
        legend_title_text="predicted",
    )
    return fig


def probability_figure(pred: np.ndarray, probs: np.ndarray, classes: list[str], max_points: int = 4000) -> go.Figure:
    """A ternary plot of the three LSM probabilities (a random subset above ``max_points``), or for two
    classes a histogram of the second class's probability (P(aged) for the aging model)."""
    if len(classes) == 3:
        idx = np.arange(len(pred))
        if len(idx) > max_points:
            idx = np.sort(np.random.default_rng(0).choice(idx, max_points, replace=False))
        fig = go.Figure()
        for i, cls in enumerate(classes):
            sel = idx[pred[idx] == i]
            fig.add_trace(
                go.Scatterternary(
                    a=probs[sel, 0],
                    b=probs[sel, 1],
                    c=probs[sel, 2],
                    mode="markers",
                    name=cls,
                    marker={"size": 4, "color": colour(cls, i), "opacity": 0.6},
                )
            )
        # the corner titles stand outside the triangle, beyond its corners, where plotly makes no room for them: every
        # margin is given (Streamlit's theme sets none left or right), wide enough for a class name beside each corner
        fig.update_layout(
            ternary={"aaxis": {"title": classes[0]}, "baxis": {"title": classes[1]}, "caxis": {"title": classes[2]}},
            height=420,
            margin={"l": 70, "r": 70, "t": 60, "b": 50},
            legend_title_text="predicted",
        )
        if len(pred) > max_points:
            fig.add_annotation(
                text=f"{max_points:,} of {len(pred):,} cells shown",
                showarrow=False,
                x=0,
                y=1.08,
                xref="paper",
                yref="paper",
            )
        return fig
    edges = np.linspace(0, 1, 41)
    counts, _ = np.histogram(probs[:, -1], bins=edges)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=0.024, marker_color=colour(classes[-1], 1)))
    fig.update_layout(xaxis_title=f"P({classes[-1]})", yaxis_title="cells", height=360, margin={"t": 30, "b": 40})
    return fig


def outline_ring(c: queries.CellRow) -> tuple[list[float | None], list[float | None]]:
    """The closed path (xs, ys, ending in None: plotly's break between shapes) around a cell: its outline, else
    its box."""
    outline = outline_array(c.outline)
    if outline is None:
        x0, y0, x1, y1 = c.x, c.y, c.x + c.w, c.y + c.h
        return [x0, x1, x1, x0, x0, None], [y0, y0, y1, y1, y0, None]
    xs: list[float | None] = [float(v) for v in outline[:, 0]]
    ys: list[float | None] = [float(v) for v in outline[:, 1]]
    return [*xs, xs[0], None], [*ys, ys[0], None]


def field_figure(
    pixels: np.ndarray,
    cells: list[queries.CellRow],
    classes: list[str],
    threshold: float,
    max_side: int = 1024,
    editable: bool = False,
    dropped: list[list] | None = None,
) -> go.Figure:
    """The field of view with each cell's outline (its box where it has none: a cell added by hand, or classified
    before outlines were stored) coloured by predicted class, its score on hover (Figure 6A).

    ``dropped``: the objects cell finding did not keep (``[x, y, w, h, why]``, why ``clump`` or ``debris``;
    :attr:`db.queries.ImageAccount.dropped_boxes`), drawn as dashed outlines, one trace per reason, saying why.

    One outline trace and one marker trace per class, not per cell. Cells under the threshold are faded.
    ``editable``: also a handle at each box's centre (trace "cells", customdata: the cell's id) to click, or
    to enclose with the box-select tool, and a grid of clear points (trace "add a cell here", customdata -1)
    to click where a cell was missed (pages/_review_queue.field_pick reads what was picked). The drag mode
    is left to Streamlit (pan): in the select drag mode plotly's clicks select nothing.
    """
    h, w = pixels.shape
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    small = pixels[::step, ::step]
    lo, hi = np.percentile(small, [0.5, 99.5])
    grey = np.clip((small - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(grey).save(buf, format="PNG")  # sent as one PNG, not as a JSON array of pixels
    source = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    fig = go.Figure(go.Image(source=source, dx=step, dy=step, hoverinfo="skip"))
    for i, cls in enumerate(classes):
        for kept in (True, False):
            mine = [c for c in cells if c.predicted == cls and (c.score >= threshold) == kept]
            if not mine:
                continue
            xs, ys = [], []
            for c in mine:
                ring = outline_ring(c)
                xs += ring[0]
                ys += ring[1]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"color": colour(cls, i), "width": 2 if kept else 1},
                    opacity=1.0 if kept else 0.35,
                    name=cls if kept else f"{cls} (below threshold)",
                    hoverinfo="skip",
                    legendgroup=cls,
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=[c.x + c.w / 2 for c in mine],
                    y=[c.y for c in mine],
                    mode="text",
                    text=[f"{c.score:.2f}" for c in mine],
                    textposition="top center",
                    textfont={"color": colour(cls, i), "size": 10},
                    showlegend=False,
                    legendgroup=cls,
                    hovertext=[f"cell {c.cell}: {cls}, score {c.score:.3f}" for c in mine],
                    hoverinfo="text",
                    opacity=1.0 if kept else 0.35,
                )
            )
    for why, words, dash_colour in DROPPED_STYLE:
        boxes = [d for d in dropped or [] if len(d) == 5 and d[4] == why]
        if not boxes:
            continue
        xs, ys = [], []
        for x, y, bw, bh, _ in boxes:
            xs += [x, x + bw, x + bw, x, x, None]
            ys += [y, y, y + bh, y + bh, y, None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": dash_colour, "width": 1.5, "dash": "dash"},
                name=f"not counted: {words}",
                hovertext=f"not counted: {words}",
                hoverinfo="text",
            )
        )
    if editable:
        # clear points to click where a cell was missed (Scattergl: thousands of them stay fast)
        spacing = max(4, int(np.ceil(max(h, w) / 96)))
        gx, gy = np.meshgrid(np.arange(spacing // 2, w, spacing), np.arange(spacing // 2, h, spacing))
        fig.add_trace(
            go.Scattergl(
                x=gx.ravel(),
                y=gy.ravel(),
                mode="markers",
                marker={"size": spacing, "color": "rgba(0,0,0,0)"},
                customdata=np.full(gx.size, -1),
                name="add a cell here",
                hovertemplate="click to add a cell at (%{x}, %{y})<extra></extra>",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[c.x + c.w / 2 for c in cells],
                y=[c.y + c.h / 2 for c in cells],
                mode="markers",
                marker={"size": 14, "symbol": "square-open", "color": "rgba(255,255,255,0.6)"},
                customdata=[c.id for c in cells],
                name="cells",
                hovertext=[f"cell {c.cell}: {c.predicted} {c.score:.2f}" for c in cells],
                hoverinfo="text",
                showlegend=False,
            )
        )
    # the legend in a row under the image: at the top right it lay under plotly's toolbar (the modebar)
    fig.update_layout(
        height=700,
        margin={"t": 10, "b": 10, "l": 10, "r": 10},
        legend={
            "title": {"text": "predicted", "side": "left"},
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "y": -0.01,
            "yanchor": "top",
        },
        xaxis={"visible": False, "range": [0, w]},
        yaxis={"visible": False, "range": [h, 0], "scaleanchor": "x"},
    )
    return fig


# how the objects cell finding dropped are drawn in a field of view: (reason, what it means, colour)
DROPPED_STYLE = (
    ("clump", "dropped as a clump (too large or not round)", "#ff7f0e"),
    ("debris", "dropped as debris (too small)", "#bbbbbb"),
)


def cell_picture(pixels: np.ndarray, box: tuple[int, int, int, int], size: int = 56) -> PILImage.Image:
    """A ``size`` x ``size`` grey picture of a square around a cell's box, its contrast stretched."""
    x, y, w, h = box
    side = max(1, int(max(w, h) * 1.3))
    cx, cy = x + w // 2, y + h // 2
    y0, x0 = max(0, cy - side // 2), max(0, cx - side // 2)
    patch = pixels[y0 : y0 + side, x0 : x0 + side]
    lo, hi = float(patch.min()), float(patch.max())
    grey = ((patch - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
    return PILImage.fromarray(grey).resize((size, size), PILImage.Resampling.BILINEAR)


def thumbnail(pixels: np.ndarray, box: tuple[int, int, int, int], size: int = 56) -> str:
    """A PNG data URI of a square around a cell's box (for tables)."""
    buf = io.BytesIO()
    cell_picture(pixels, box, size).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def workbook(s: Session, batch_id: int, threshold: float) -> bytes:
    """The batch's xlsx: sheets ``cells`` (as the export command), ``summary`` (at ``threshold``), ``batch``,
    ``model``, ``images`` (per image: its cells, those cut by the edge or tiny, the objects dropped),
    ``review`` (how often each reviewer, and their consensus, agreed with the model) and
    ``review_confusion`` (model said x reviewer said, cells)."""
    report = load_report(s, batch_id, threshold)
    book = Workbook(write_only=True)
    add_sheet(book, "cells", *batch_rows(s, [batch_id]))
    corrected = report.correction
    add_sheet(
        book,
        "summary",
        ["class", "cells", "fraction", "ci95_low", "ci95_high", "score_threshold", "cells_counted", "cells_total"]
        + ["corrected_fraction", "corrected_ci95_low", "corrected_ci95_high"],
        (
            [sh.cls, sh.count, sh.fraction, sh.low, sh.high, threshold, report.cells_kept, report.cells_total]
            + ([c.fraction, c.low, c.high] if (c := corrected and corrected.share(sh.cls)) else [None, None, None])
            for sh in report.shares
        ),
    )
    batch_values = {
        "batch": report.batch_id,
        "batch_name": report.name,
        "owner": report.owner,
        **asdict(report.meta),
        "status": report.status,
        "images": report.images,
        "images_failed": len(report.failed),
        # what the batch asked for; each cell row says what was read (channel, z_plane, pixel size)
        "channel": report.channel if report.channel is not None else "automatic (the transmitted-light one)",
        "z_plane": report.z if report.z is not None else "automatic (best focus)",
        "app_version": ", ".join(report.app_versions),
        "cells_excluded": report.cells_excluded,
        **correction_facts(corrected),
        **shift_facts(report.shift),
    }
    keys = BATCH_COLUMNS + ["created", "pixel_size_um", "channel", "z_plane", "imaging", "app_version", "status"]
    keys += ["images", "images_failed", "cells_excluded", *CORRECTION_FIELDS, *SHIFT_FIELDS]
    add_sheet(
        book,
        "batch",
        ["field", "value"],
        (
            [key, v if v is None or isinstance(v, (int, float)) else str(v)]
            for key in keys
            for v in [batch_values.get(key)]
        ),
    )
    fields = ("name", "version", "task", "architecture", "sha256", "input_size", "pixel_size_um", "crop_um")
    model = [[key, getattr(report.model, key)] for key in (*fields, "normalisation", "temperature")]
    model += [
        ["created", str(report.model.created)],
        ["classes", ", ".join(report.classes)],
        ["synthetic demo", "yes: trained on synthetic cells only" if report.model.demo else "no"],
        # how it was trained: its configuration, its data and labels (with their sha256), its parent model
        ["training", json.dumps(shift_summary(report.model.training), sort_keys=True, default=str)],
    ]
    add_sheet(book, "model", ["field", "value"], model)
    add_sheet(book, "images", IMAGE_COLUMNS, (image_row(a) for a in report.accounts))
    agreed = agreement(s, [batch_id])
    add_sheet(
        book,
        "review",
        ["batch", "reviewer", "cells_labelled", "agreed_with_model", "agreement", "not_a_cell"],
        ([a.batch_id, a.reviewer, a.labelled, a.agreed, a.rate, a.not_a_cell] for a in agreed),
    )
    add_sheet(
        book,
        "review_confusion",
        ["batch", "reviewer", "model_said", "reviewer_said", "cells"],
        (
            [a.batch_id, a.reviewer, model, said, n]
            for a in agreed
            for (model, said), n in sorted(a.confusion.items(), key=lambda kv: _confusion_order(kv[0], report.classes))
        ),
    )
    return workbook_bytes(book)


CORRECTION_FIELDS = ["corrected_cells", "correction_method", "error_profile", "error_profile_cells", "correction_note"]


def correction_facts(corrected: Correction | None) -> dict[str, object]:
    """What a corrected composition assumed, for a workbook: which cells, which method, which confusion matrix."""
    if corrected is None:
        return dict.fromkeys(CORRECTION_FIELDS[:-1]) | {"correction_note": NO_PROFILE}
    return {
        "corrected_cells": corrected.cells,
        "correction_method": corrected.method,
        "error_profile": corrected.profile_source,
        "error_profile_cells": corrected.profile_cells,
        "correction_note": " ".join(corrected.notes)
        or "every counted cell, whatever its score (the confusion matrix was measured without a threshold)",
    }


SHIFT_FIELDS = ["shift", "shift_score", "shift_ci95_low", "shift_ci95_high", "shift_cells", "shift_note"]


def shift_facts(shift: Shift | None) -> dict[str, object]:
    """A batch's shift from its model's training data, for a workbook (lsm_core.reports.shift)."""
    if shift is None:
        return dict.fromkeys(SHIFT_FIELDS)
    return dict(zip(SHIFT_FIELDS, [shift.level, shift.score, shift.low, shift.high, shift.cells, shift.note]))


IMAGE_COLUMNS = [
    "file",
    "page",
    "kind",
    "cells",
    "edge",
    "tiny",
    "dropped_clumps",
    "dropped_debris",
    "pixel_size_um",
    "pixel_size_source",
    "error",
    "note",
]


def image_row(a: queries.ImageAccount) -> list:
    """One image's row of the workbook's ``images`` sheet (:data:`IMAGE_COLUMNS`): its cells, those cut by the
    edge (``edge``) or smaller than TINY_CELL_UM (``tiny``), both counted among its cells, and the objects
    dropped as clumps or debris (empty where it was classified before they were recorded)."""
    return [
        a.file,
        a.page,
        a.kind,
        a.n_cells,
        a.cells_edge,
        a.cells_tiny,
        a.dropped_clumps,
        a.dropped_debris,
        a.pixel_size_um,
        a.pixel_size_source,
        a.error,
        a.note,
    ]


def _confusion_order(pair: tuple[str, str], classes: list[str]) -> tuple[int, int]:
    rank = {c: i for i, c in enumerate(classes)}
    return rank.get(pair[0], len(rank)), rank.get(pair[1], len(rank))


def cells_csv(s: Session, batch_id: int) -> bytes:
    columns, rows = batch_rows(s, [batch_id])
    buf = io.StringIO()
    write_csv(buf, columns, rows)
    return buf.getvalue().encode("utf-8")


# --- saliency ------------------------------------------------------------------------------------------
@dataclass
class SaliencyView:
    """One stored saliency run: its cells (:class:`db.queries.CellRow`) and their maps (N, H, W) in [0, 1]."""

    method: str
    scope: str
    cells: list[queries.CellRow]
    maps: np.ndarray

    def mean_maps(self, classes: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for c in classes:
            sel = [i for i, cell in enumerate(self.cells) if cell.predicted == c]
            if sel:
                out[c] = self.maps[sel].mean(axis=0)
        return out


def load_saliency(s: Session, run_id: int, blobs: BlobStore) -> SaliencyView:
    run = s.get(SaliencyRun, run_id)
    if run is None:
        raise LsmError("those saliency maps no longer exist")
    data = np.load(io.BytesIO(blobs.get(run.blob)))
    ids = data["cell_ids"].tolist()
    rows = {c.id: c for c in queries.cells_by_id(s, ids)}
    keep = [i for i, cid in enumerate(ids) if cid in rows]
    return SaliencyView(
        run.method, run.scope, [rows[ids[i]] for i in keep], data["maps"][keep].astype(np.float32) / 255.0
    )


@dataclass
class SaliencyGallery:
    """A stored saliency run ready to show: the view, each cell's crop (cut again from its stored image), and
    per class the cells to show (indices into ``view.cells``, highest score first). The view holds the cells
    that count: those reviewers said are not cells are left out (``left_out`` of the run's)."""

    view: SaliencyView
    crops: list[np.ndarray]
    by_class: dict[str, list[int]]
    # per class: the mean share of a map's mass inside the cell's outline over the cells shown (None: no
    # outline traced), and how many cells it is measured on (lsm_core.imaging.cells.cell_mask)
    inside: dict[str, tuple[float | None, int]] = field(default_factory=dict)
    left_out: int = 0  # the run's cells that reviewers said are not cells (lsm_core.lab.cell_labels): shown nowhere


def mass_sentence(cls: str, share: float | None, cells: int) -> str:
    """Where a saliency map's mass lies for one class, and what that means, in one sentence for a biologist."""
    if share is None or cells == 0:
        return f"{cls}: the cells' outlines could not be traced in these crops, so where the map points is not said."
    pct = round(100 * share)
    if share >= 0.6:
        return (
            f"{cls}: {pct}% of the map lies inside the cells ({cells} measured): the evidence for {cls} is the "
            "cell itself, its outline, size and inner texture."
        )
    if share <= 0.4:
        return (
            f"{cls}: {100 - pct}% of the map lies outside the cells, in the background around them ({cells} "
            f"measured): the evidence for {cls} is the cell's size and outline against empty background (a small "
            "cell leaves an empty ring), not what is inside it. Deleting pixels cannot confirm such a map (an "
            "empty ring cannot be deleted); Integrated Gradients shows which of the cell's own pixels count."
        )
    return (
        f"{cls}: the map is split between the cells ({pct}%) and the background around them ({cells} measured): "
        "the cell's outline and size count as much as its inside."
    )


def saliency_gallery(
    s: Session, run_id: int, classes: list[str], blobs: BlobStore, per_class: int = 12, limits=None
) -> SaliencyGallery:
    """The gallery of a saliency run: up to ``per_class`` cells of each predicted class (highest score first),
    of the cells that count (those reviewers said are not cells are left out, as from every count)."""
    from lsm_core.imaging.cells import FindParams
    from lsm_core.lab.training_data import read_options, stored_crops

    view = load_saliency(s, run_id, blobs)
    run = s.get(SaliencyRun, run_id)
    if run is None:  # deleted (with its batch) since load_saliency read it
        raise LsmError("those saliency maps no longer exist")
    excluded = set(s.scalars(queries.excluded_cells([run.batch_id])))
    keep = [i for i, cell in enumerate(view.cells) if cell.id not in excluded]
    left_out = len(view.cells) - len(keep)
    view = SaliencyView(view.method, view.scope, [view.cells[i] for i in keep], view.maps[keep])
    batch = s.get(Batch, run.batch_id)
    if batch is None:
        raise LsmError(f"batch {run.batch_id} no longer exists (it may have been deleted)")
    model = s.get(Model, batch.model_id)
    if model is None:
        raise LsmError(f"the model of batch {batch.id} no longer exists")
    params = FindParams.for_model(model, resolve(user=batch.pixel_size_um, model_default=model.pixel_size_um))
    images = {im.id: im for im in s.scalars(select(Image).where(Image.id.in_({c.image_id for c in view.cells})))}
    crops = []
    for cell in view.cells:
        try:
            image = images[cell.image_id]
            crops.append(stored_crops(blobs, image, [cell.box], params, read_options(batch), limits)[0])
        except (LsmError, KeyError):  # the stored image is gone: the map alone is still shown
            crops.append(np.zeros(view.maps.shape[1:], np.float32))
    from lsm_core.imaging.cells import cell_mask
    from lsm_core.ml.saliency import mass_inside

    by_class, inside = {}, {}
    um_per_px = params.crop_um / params.output_size
    for cls in classes:
        members = sorted(
            (i for i, cell in enumerate(view.cells) if cell.predicted == cls), key=lambda i: -view.cells[i].score
        )
        by_class[cls] = members[:per_class]
        shares = []
        for i in by_class[cls]:
            mask = None
            outline = outline_array(view.cells[i].outline)
            if outline is not None:  # the cell's own outline, mapped into its crop
                mask = mask_in_crop(outline, view.cells[i].box, params.crop_px, view.maps.shape[1])
                mask = mask if mask.any() else None
            elif crops[i].shape == view.maps.shape[1:]:  # none stored: traced in the crop
                mask = cell_mask(crops[i], um_per_px)
            if mask is not None:
                shares.append(float(mass_inside(view.maps[i : i + 1], mask[None])[0]))
        shares = [v for v in shares if np.isfinite(v)]
        inside[cls] = (float(np.mean(shares)) if shares else None, len(shares))
    return SaliencyGallery(view, crops, by_class, inside, left_out)


def cell_table(
    rows: list[queries.CellRow], classes: list[str], thumb_of: Callable[[queries.CellRow], str | None]
) -> list[dict]:
    """The rows of the results page's cell table: a thumbnail (``thumb_of(cell)``: a data URI), file, cell,
    prediction, score and every class's probability."""
    return [
        {
            "cell": thumb_of(r),
            "file": r.file,
            "#": r.cell,
            "predicted": r.predicted,
            "score": round(r.score, 3),
            **{f"p({c})": round(p, 3) for c, p in zip(classes, r.probs)},
            "flags": r.flags,
        }
        for r in rows
    ]


def png_bytes(rgb_or_grey: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(rgb_or_grey).save(buf, format="PNG")
    return buf.getvalue()


def _member_part(text: str) -> str:
    """``text`` as one part of a ZIP member's name: no folder separators, nothing Windows refuses, no leading dot."""
    import re

    return re.sub(r'[\x00-\x1f\x7f/\\:*?"<>|]', "_", text).lstrip(". ") or "_"


def overlay_name(method: str, cell: queries.CellRow) -> str:
    """A cell's overlay in the ZIP: ``class/file[_pageN]_cellN[_added]_method_score.png``, the cell named by its
    file, page and number as the gallery and the exports name it (``file``, ``page``, ``cell``), and ``added``
    when a person added it (lsm_core.lab.tasks.add_cell), as its flags say there.

    >>> from db.queries import CellRow
    >>> overlay_name("gradcam", CellRow(7, 1, "a/field 1.tif", 2, 3, 0, 0, 9, 9, "MPP", 0.91234, [], "added"))
    'MPP/a_field 1.tif_page2_cell3_added_gradcam_score0.912.png'
    """
    where = _member_part(cell.file) + (f"_page{cell.page}" if cell.page > 1 else "") + f"_cell{cell.cell}"
    added = "_added" if "added" in (f.strip() for f in cell.flags.split(",")) else ""
    return f"{_member_part(cell.predicted)}/{where}{added}_{_member_part(method)}_score{cell.score:.3f}.png"


def overlays_zip(view: SaliencyView, crops: list[np.ndarray], opacity: float = 0.5) -> bytes:
    """Every cell's overlay as a PNG (named by :func:`overlay_name`), in one ZIP."""
    import zipfile

    from lsm_core.ml.saliency import overlay

    buf = io.BytesIO()
    seen: Counter[str] = Counter()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for cell, crop, m in zip(view.cells, crops, view.maps):
            name = overlay_name(view.method, cell)
            seen[name] += 1
            if seen[name] > 1:  # two images of one name in a batch: each overlay still has a file of its own
                name = f"{name.removesuffix('.png')}_{seen[name]}.png"
            zf.writestr(name, png_bytes(overlay(crop, m, opacity)))
    return buf.getvalue()


# --- reporter channels ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReporterView:
    """One reporter channel over a batch's cells: its background-subtracted mean per cell (N,), with each
    cell's predicted class index (N,) and probabilities (N, C); Otsu's threshold of the means (the default
    for "reporter-positive")."""

    channel: str
    means: np.ndarray
    predicted: np.ndarray
    probs: np.ndarray
    otsu: float | None


def reporter_view(s: Session, batch_id: int, classes: list[str], channel: str) -> ReporterView:
    from lsm_core.imaging.reporters import otsu_threshold

    rows = s.execute(
        select(Cell.predicted, Cell.probs, Cell.signal)
        .where(Cell.batch_id == batch_id)
        .order_by(Cell.image_id, Cell.idx)
    ).all()
    index = {c: i for i, c in enumerate(classes)}
    kept = [r for r in rows if r.signal and r.signal.get(channel)]
    means = np.array([r.signal[channel][0] for r in kept], dtype=np.float64)
    predicted = np.array([index.get(r.predicted, -1) for r in kept], dtype=np.int64)
    probs = np.array([r.probs for r in kept], dtype=np.float32).reshape(len(kept), len(classes))
    return ReporterView(channel, means, predicted, probs, otsu_threshold(means))


def positive_fractions(view: ReporterView, classes: list[str], threshold: float) -> list[dict]:
    """Per predicted class: cells, reporter-positive cells (mean above ``threshold``) and their fraction."""
    out = []
    for i, cls in enumerate(classes):
        mine = view.means[view.predicted == i]
        positive = int((mine > threshold).sum())
        out.append(
            {
                "predicted class": cls,
                "cells": int(mine.size),
                f"{view.channel}-positive": positive,
                "fraction positive": positive / mine.size if mine.size else float("nan"),
            }
        )
    return out


def reporter_figure(view: ReporterView, classes: list[str], threshold: float) -> go.Figure:
    """The channel's mean per cell against each class probability (one panel per class), the threshold drawn."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(classes), shared_yaxes=True, subplot_titles=[plot_text(c) for c in classes])
    for i, cls in enumerate(classes):
        fig.add_trace(
            go.Scattergl(
                x=view.probs[:, i] if len(view.means) else [],
                y=view.means,
                mode="markers",
                marker={"size": 5, "opacity": 0.6, "color": colour(cls, i)},
                name=plot_text(cls),
                showlegend=False,
            ),
            row=1,
            col=i + 1,
        )
        fig.update_xaxes(title_text=f"p({plot_text(cls)})", range=[0, 1], row=1, col=i + 1)
    fig.add_hline(y=threshold, line_dash="dash", line_color="#555")
    fig.update_yaxes(title_text=f"{plot_text(view.channel)} mean (background subtracted)", row=1, col=1)
    fig.update_layout(height=320, margin={"l": 40, "r": 10, "t": 30, "b": 40})
    return fig
