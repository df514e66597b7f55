"""Comparing batches across groups of mice (ages or any metadata field): tables, tests, figures, workbook.

The unit of replication is the mouse: the batches of one mouse id are pooled into one mouse before any
per-mouse figure or test (lsm_core.reports.stats.per_mouse), a batch without a mouse id counts as a mouse of
its own; per-mouse fractions are compared; pooled cells appear only as a secondary view. Every number is
reproducible from the workbook: ``per_mouse`` holds the counts each test starts from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from openpyxl import Workbook
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import queries
from db.schema import Batch, Cell, Image, Model
from lsm_core.errors import LsmError
from lsm_core.imaging.shape import UNKNOWN_SIZE, sizes_known
from lsm_core.reports.comparison import Comparison, batches_of
from lsm_core.reports.correction import NO_PROFILE, model_profile
from lsm_core.reports.export import add_sheet, batch_rows, workbook_bytes
from lsm_core.reports.methods import methods_paragraphs
from lsm_core.reports.report import age_text, colour, plot_text
from lsm_core.reports.shift import UNKNOWN, assess
from lsm_core.reports.stats import (
    DAYS_PER_MONTH,
    AgeBin,
    age_group,
    compare_groups,
    complement,
    corrected_per_mouse,
    group_summary,
    odds_model,
    per_mouse,
    pooled_chi_square,
    size_mixed_model,
    trend,
    units_of,
)

FRACTIONS = ("auto", "corrected", "counted")  # what per-mouse tests run on (build's ``fractions``)
GROUP_FIELDS = ("age", "sex", "strain", "gate", "mouse_id", "owner", "imaging_date", "model")
DEFAULT_BINS = "young:<26w, aged:>=18m"


def one_batch_per_mouse(batches: list[queries.BatchRow]) -> list[int]:
    """The ids a comparison starts from: for each mouse id the newest batch (re-runs of one mouse are not two
    mice); a batch without a mouse id stands for itself. ``batches`` are rows of :func:`db.queries.batches`."""
    newest: dict[str, queries.BatchRow] = {}
    alone = []
    for b in batches:
        mouse = (b.mouse_id or "").strip()
        if not mouse:
            alone.append(b.id)
        elif mouse not in newest or (b.created, b.id) > (newest[mouse].created, newest[mouse].id):
            newest[mouse] = b
    chosen = set(alone) | {b.id for b in newest.values()}
    return [b.id for b in batches if b.id in chosen]


def fractions_note(c: Comparison) -> str:
    """Which per-mouse fractions the groups, tests and trends use, and what the correction rests on."""
    if c.on_corrected:
        return (
            "Tested: each mouse's fractions corrected for its model's errors (every cell, whatever its score), "
            f"with the confusion matrix of {'; '.join(c.profiles)}. Open points: the fractions as counted. The "
            "model of cells within mice works on counted cells."
        )
    if c.profiles:
        return (
            "Tested: the fractions as counted (asked for, or a mouse's model cannot correct). Open points: corrected."
        )
    return (
        "Tested: the fractions as counted; no model here carries a confusion matrix of held-out cells to correct them."
    )


def one_test_note(c: Comparison) -> str | None:
    """For two classes, the sentence that says why there is one test and one odds ratio (None for more)."""
    said = complement(c.classes)
    if said is None:
        return None
    first, last = c.classes
    return (
        f"Two classes are complementary (a mouse's fraction {first} is 1 minus its fraction {last}): one test and "
        f"one odds ratio, on the {said}. Their p-values are not corrected for multiple classes: one class is tested."
    )


def shown(c: Comparison, frame: pd.DataFrame) -> pd.DataFrame:
    """A table of tests or odds as people read it (page, workbook): without the ``p_holm`` column where one
    class is tested (Holm's correction of one p-value is that p-value: a second column of it would suggest a
    correction that is not there)."""
    return frame if c.corrected else frame.drop(columns=["p_holm"], errors="ignore")


def three_digits(value: float | None) -> str:
    """A statistic, p-value or odds ratio as the page shows it: three significant digits; "" where there is none."""
    return "" if value is None or pd.isna(value) else f"{value:.3g}"


def points(value: float | None) -> str:
    """A difference of per-mouse fractions in percentage points, signed (``+4.2 pp``); "" where there is none."""
    return "" if value is None or pd.isna(value) else f"{100 * value:+.1f} pp"


def tests_table(c: Comparison) -> pd.DataFrame:
    """The tests (mouse as the unit) as the page shows them (:func:`shown`): statistics, p-values and effect sizes
    to three significant digits, differences of per-mouse fractions and their interval in percentage points."""
    tests = shown(c, c.tests).copy()
    for col in ("statistic", "p_value", "p_holm", "effect_size", "smallest_p"):
        if col in tests:
            tests[col] = tests[col].map(three_digits)
    for col in ("difference", "diff_ci95_low", "diff_ci95_high"):
        if col in tests:
            tests[col] = tests[col].map(points)
    return tests


def odds_table(c: Comparison) -> pd.DataFrame:
    """The model of cells within mice as the page shows it (:func:`shown`): odds ratios, their interval and
    p-values to three significant digits, without the model's name (the page says it above the table)."""
    odds = shown(c, c.odds).copy()
    for col in ("odds_ratio", "ci95_low", "ci95_high", "p_value", "p_holm"):
        if col in odds:
            odds[col] = odds[col].map(three_digits)
    return odds.drop(columns=["model"], errors="ignore")


def build(
    s: Session,
    batch_ids: list[int],
    by: str = "age",
    bins: list[AgeBin] | None = None,
    threshold: float = 0.0,
    allow_mixed_models: bool = False,
    fractions: str = "auto",
) -> Comparison:
    """The comparison of ``batch_ids`` grouped ``by`` a field (age: in ``bins``), at a score threshold.
    Batches classified by different models or model versions are refused unless ``allow_mixed_models``
    (then each mouse's model is in every table, and a warning says so); images read at different pixel sizes
    or from different channels are named in ``warnings``. ``fractions``: what the per-mouse tests run on:
    "corrected" for the models' errors (lsm_core.reports.correction), "counted", or "auto" (corrected where every
    mouse's model carries an error profile that can correct, else counted; the comparison says which)."""
    if fractions not in FRACTIONS:
        raise LsmError(f"fractions must be one of {', '.join(FRACTIONS)}, not {fractions!r}")
    if not batch_ids:
        raise LsmError("choose at least two batches to compare")
    if by not in GROUP_FIELDS:
        raise LsmError(f"cannot group by {by!r}; choose one of {', '.join(GROUP_FIELDS)}")
    if by == "age" and not bins:
        raise LsmError("grouping by age needs age bins, e.g. young:8w-12w, aged:>=18m")
    models = {
        m.id: m for m in s.scalars(select(Model).join(Batch, Batch.model_id == Model.id).where(Batch.id.in_(batch_ids)))
    }
    tasks = {m.task for m in models.values()}
    class_sets = {tuple(m.classes) for m in models.values()}
    if len(tasks) != 1 or len(class_sets) != 1:
        raise LsmError(
            "these batches were classified by different classifiers (LSM and aging); compare one kind at a time"
        )
    classes = list(class_sets.pop())
    listed = queries.batches(s, queries.BatchFilter(batch_ids=batch_ids), limit=len(batch_ids))
    missing = set(batch_ids) - {b.id for b in listed}
    if missing:
        raise LsmError(f"no batch {', '.join(map(str, sorted(missing)))}")
    warnings = _mixed(s, listed, allow_mixed_models)
    _no_images_twice(s, listed)
    counts = queries.class_counts(s, batch_ids, threshold)
    table = per_mouse(listed, counts, classes)
    warnings += shift_per_mouse(s, table, {b.id: b.model_id for b in listed}, models)
    profiles = {m.id: model_profile(m.metrics) for m in models.values()}
    every = corrected_per_mouse(
        table,
        queries.class_counts(s, batch_ids) if threshold else counts,
        {b.id: b.model_id for b in listed},
        profiles,
        classes,
    )
    measure = "corrected" if every and fractions != "counted" else "fraction"
    if fractions == "corrected" and not every:
        warnings.append(
            "The fractions tested are counted, not corrected: "
            + (
                "; ".join(f"{models[i].label}: {NO_PROFILE}" for i, p in profiles.items() if p is None)
                or "a mouse's model cannot correct its composition (see its model card)"
            )
        )
    if by == "age":
        assert bins is not None  # refused above when grouping by age without bins
        table["group"] = [age_group(a, bins) for a in table["age_days"]]
        order = [b.label for b in bins]
    else:
        table["group"] = table[by].astype("string").where(table[by].notna(), None)
        order = sorted(table["group"].dropna().unique().tolist())
    table["age"] = [age_text(a) for a in table["age_days"]]
    table["group"] = pd.Categorical(table["group"], categories=[g for g in order if g in set(table["group"].dropna())])
    table = table.sort_values(["group", "age_days", "batch"], na_position="last").reset_index(drop=True)
    table["group"] = table["group"].astype(object).where(table["group"].notna(), None)
    cells, unknown = sized_cells(s, table, classes)
    grouped = table.dropna(subset=["group"])
    summary = group_summary(grouped, classes, measure=measure)
    tests = compare_groups(grouped, classes, measure=measure)
    odds = odds_model(grouped, classes)
    if by == "age":  # and age in months as a continuous covariate, over every mouse of known age
        odds = pd.concat([odds, odds_model(table, classes, term="age")], ignore_index=True)
    return Comparison(
        classes,
        tasks.pop(),
        by,
        threshold,
        table,
        summary,
        tests,
        pooled_chi_square(grouped, classes),
        {k: trend(table, k, measure) for k in classes},
        bins,
        sum(queries.excluded_counts(s, batch_ids).values()),
        warnings,
        odds,
        measure,
        [
            f"{models[i].label}: {p.cells:,} held-out cells ({p.source})"
            for i, p in sorted(profiles.items())
            if p is not None
        ],
        compare_groups(grouped, [SIZE_CLASS], measure=SIZE_MEASURE) if len(cells) else pd.DataFrame(),
        size_mixed_model(cells) if len(cells) else pd.DataFrame(),
        len(cells),
        unknown,
    )


SIZE_MEASURE = "median_diameter_um"  # per-mouse columns median_diameter_um_<class> and _all (every sized cell)
SIZE_CLASS = "all"


def size_note(c: Comparison) -> str:
    """What the cell-size section shows, or why it shows nothing."""
    if not c.sized_cells:
        if c.sizes_unknown:
            return f"No cell of these batches has a size in µm: {c.sizes_unknown:,} were outlined, {UNKNOWN_SIZE}."
        return (
            "No cell of these batches has an outline (single-cell crops, or batches classified before outlines "
            "were measured): re-run them to measure sizes."
        )
    said = (
        f"{c.sized_cells:,} cells sized from their outlines (equivalent diameter). Per-mouse median diameters are "
        "tested as the fractions are; the linear mixed model below models every cell's diameter with the mouse "
        "as a random effect (the difference from the first group, µm)."
    )
    if c.sizes_unknown:
        said += f" {c.sizes_unknown:,} cells read at the model's default pixel size are left out: {UNKNOWN_SIZE}."
    return said


def size_tests_table(c: Comparison) -> pd.DataFrame:
    """The per-mouse test of median diameter as the page shows it: the ``class`` column says what was tested."""
    out = c.size_tests.drop(columns=["p_holm"], errors="ignore").copy()
    out["class"] = "median diameter (µm), all cells"
    return out


def sized_cells(s: Session, table: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame, int]:
    """Each sized cell of the table's batches (its equivalent diameter in µm, lsm_core.imaging.shape; those
    reviewers said are not cells left out, and those read at the model's default pixel size, whose size is
    unknown) as rows (unit, group, predicted, diameter_um); adds to the per-mouse table each mouse's median
    diameter (``median_diameter_um_all``, and per predicted class) and its sized cells (``sized_cells``).
    Returns the cells and how many were outlined but left unsized for their pixel size."""
    unit_of = {b: row for row, ids in enumerate(units_of(table)) for b in ids}
    rows = s.execute(
        select(Cell.batch_id, Cell.predicted, Cell.diameter_um, Image.pixel_size_source)
        .join(Image, Image.id == Cell.image_id)
        .where(
            Cell.batch_id.in_(list(unit_of)),
            Cell.diameter_um.is_not(None),
            Cell.id.not_in(queries.excluded_cells(list(unit_of))),
        )
    ).all()
    known = [r for r in rows if sizes_known(r.pixel_size_source)]
    cells = pd.DataFrame(
        {
            "unit": [unit_of[r.batch_id] for r in known],
            "group": [table["group"].iloc[unit_of[r.batch_id]] for r in known],
            "predicted": [r.predicted for r in known],
            "diameter_um": [float(r.diameter_um) for r in known],
        }
    )
    medians = cells.groupby("unit")["diameter_um"].median() if len(cells) else pd.Series(dtype=float)
    table[f"{SIZE_MEASURE}_{SIZE_CLASS}"] = [medians.get(i, np.nan) for i in range(len(table))]
    for k in classes:
        per = cells[cells["predicted"] == k].groupby("unit")["diameter_um"].median() if len(cells) else medians
        table[f"{SIZE_MEASURE}_{k}"] = [per.get(i, np.nan) for i in range(len(table))]
    counts = cells.groupby("unit").size() if len(cells) else pd.Series(dtype=int)
    table["sized_cells"] = [int(counts.get(i, 0)) for i in range(len(table))]
    return cells.dropna(subset=["group"]), len(rows) - len(known)


def shift_per_mouse(s: Session, table: pd.DataFrame, model_of: dict[int, int], models: dict[int, Model]) -> list[str]:
    """Adds to a per-mouse table each mouse's shift from its model's training data (lsm_core.reports.shift: its
    batches' cells pooled): columns ``shift`` and ``shift_score``; returns a warning per mouse that reads
    moderate or strong (:func:`shift_note` sums the rest up)."""
    levels: list[str] = []
    scores: list[float | None] = []
    warnings: list[str] = []
    units = units_of(table)
    distances = queries.feature_distances(s, [b for ids in units for b in ids])  # one query for every mouse
    for unit, ids, listed in zip(table["mouse_id"], units, table["batches"]):
        used = {model_of.get(b) for b in ids}
        model = models.get(next(iter(used)) or -1) if len(used) == 1 else None
        shift = assess([d for b in ids for d in distances[b]], model.training if model is not None else None)
        levels.append(shift.level)
        scores.append(shift.score)
        if shift.warns:
            who = f"mouse {unit}" if unit else f"batch {ids[0]}"
            warnings.append(f"Shift from the training data is {shift.level} in {who} (batches {listed}): {shift.note}")
    table["shift"] = levels
    table["shift_score"] = scores
    return warnings


def shift_note(c: Comparison) -> str:
    """The mice's shift from their models' training data in one line (the warnings name each shifted mouse)."""
    levels = c.table["shift"].value_counts().to_dict() if "shift" in c.table and len(c.table) else {}
    said = ", ".join(f"{levels[k]} {k}" for k in ("none", "moderate", "strong") if levels.get(k))
    unknown = levels.get(UNKNOWN, 0)
    parts = [f"Shift from the training data, per mouse: {said}." if said else ""]
    if unknown:
        parts.append(
            f"Not measured for {unknown} of {len(c.table)} mice (their model carries no reference, or their cells "
            "were classified before it was measured)."
        )
    return " ".join(p for p in parts if p)


def _listing(by_value: dict, unit: str = "") -> str:
    return "; ".join(f"{value}{unit}: batch(es) {', '.join(map(str, sorted(ids)))}" for value, ids in by_value.items())


def _mixed(s: Session, listed: list[queries.BatchRow], allow_models: bool) -> list[str]:
    """What the batches do not share: their models (refused unless allowed), the pixel sizes and the channels
    their images were read at (said)."""
    from db.schema import Image

    warnings = []
    models: dict[str, list[int]] = {}
    for b in listed:
        models.setdefault(b.model, []).append(b.id)
    if len(models) > 1:
        said = _listing(models)
        if not allow_models:
            raise LsmError(
                f"these batches were classified by different models or model versions ({said}): their numbers "
                "are not comparable. Re-run them with one model, or allow mixed models (each mouse's model is "
                "then named in every table)"
            )
        warnings.append(f"Mixed models, allowed: {said}. Each mouse's model is in the per-mouse table.")
    sizes: dict[object, set[int]] = {}
    channels: dict[object, set[int]] = {}
    for batch_id, size, channel in s.execute(
        select(Image.batch_id, Image.pixel_size_um, Image.channel)
        .where(Image.batch_id.in_([b.id for b in listed]), Image.done.is_(True), Image.error.is_(None))
        .distinct()
    ):
        if size is not None:
            sizes.setdefault(f"{size:g}", set()).add(batch_id)
        channels.setdefault(channel or "(the only one)", set()).add(batch_id)
    if len(sizes) > 1:
        warnings.append(f"Cells were found at different pixel sizes: {_listing(sizes, ' µm/px')}.")
    if len(channels) > 1:
        warnings.append(f"Cells were read from different channels: {_listing(channels)}.")
    return warnings


def _no_images_twice(s: Session, listed: list[queries.BatchRow]) -> None:
    """LsmError when two batches of one mouse hold the same images (a re-run): pooled, that mouse's cells would
    count twice."""
    from db.schema import Image

    mice: dict[str, list[int]] = {}
    for row in listed:
        if mouse := (row.mouse_id or "").strip():
            mice.setdefault(mouse, []).append(row.id)
    pooled = {m: ids for m, ids in mice.items() if len(ids) > 1}
    if not pooled:
        return
    held: dict[int, set[tuple[str | None, int]]] = {}
    ids = [i for group in pooled.values() for i in group]
    for batch_id, sha, page in s.execute(
        select(Image.batch_id, Image.sha256, Image.page).where(Image.batch_id.in_(ids), Image.sha256.is_not(None))
    ):
        held.setdefault(batch_id, set()).add((sha, page))
    for mouse, unsorted in pooled.items():
        group = sorted(unsorted)
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                same = held.get(a, set()) & held.get(b, set())
                if same:
                    raise LsmError(
                        f"batches {a} and {b} of mouse {mouse} hold the same {len(same)} image(s) (a re-run?): "
                        "pooled into one mouse its cells would count twice; choose one of them"
                    )


def design_limit(c: Comparison) -> str | None:
    """A plain sentence when these numbers of mice cannot reach p < 0.05 whatever their cells show (the
    smallest p their test can give is above it), pointing at the effect size and its interval; else None."""
    tests = c.tests.dropna(subset=["smallest_p"])
    if tests.empty or float(tests["smallest_p"].min()) <= 0.05:
        return None
    sizes = c.table.dropna(subset=["group"]).groupby("group", sort=False).size()
    mice = " and ".join(f"{n} ({g})" for g, n in sizes.items())
    test = "Mann-Whitney" if len(sizes) == 2 else "Kruskal-Wallis"
    read = (
        "the difference of the mean fractions and its 95% interval"
        if len(sizes) == 2
        else "the group means and their intervals (Group summaries)"
    )
    return (
        f"With {mice} mice, the smallest p a {test} test can give is {float(tests['smallest_p'].min()):.2g}: no "
        f"difference can reach p < 0.05 with these mice, however clear it is. Read {read} instead of the p-values, "
        "or add mice."
    )


def _words(measure: str) -> str:
    return "corrected" if measure == "corrected" else "counted"


def _other(c: Comparison) -> str | None:
    """The per-mouse fractions not tested, where the table has them: shown beside the tested ones."""
    other = "fraction" if c.on_corrected else "corrected"
    column = f"{other}_{c.classes[0]}"
    return other if column in c.table and c.table[column].notna().any() else None


def _untested_points(
    c: Comparison, part: pd.DataFrame, classes: list[str], x: list, g: object, gi: int
) -> go.Scatter | None:
    """Group ``g``'s mice (``part``) at the fractions not tested, open points beside the tested ones (None where
    the table has no such fractions)."""
    other = _other(c)
    if other is None:
        return None
    return go.Scatter(
        x=x,
        y=[100 * v for k in classes for v in part[f"{other}_{k}"]],
        mode="markers",
        name=f"{plot_text(g)}: mice, {_words(other)}",
        legendgroup=str(g),
        marker={"size": 7, "symbol": "circle-open", "color": colour(str(g), gi + 2)},
        hovertemplate=f"%{{y:.1f}}% {_words(other)}<extra></extra>",
    )


def _suffix(c: Comparison) -> str:
    """Which fractions the points are, where both are drawn."""
    return f", {_words(c.measure)}" if _other(c) is not None else ""


def _axis(c: Comparison, cls: str | None = None) -> str:
    cells = f"% of cells called {cls}, " if cls else "% of cells with "
    if c.on_corrected:
        return f"{cells.removesuffix(' with ').removesuffix(', ')} corrected for the model's errors (per mouse)"
    return f"{cells}score ≥ {c.threshold:.2f} (per mouse)"


def per_mouse_figure(c: Comparison) -> go.Figure:
    """Per-mouse fraction of each class tested as points, with each group's mean and 95% interval; axes and
    legend titled. Three classes or more: the classes along x, the groups in the legend. Two classes: one panel
    of the class tested (the other is 1 minus it), titled by it ("aged cells per mouse"), the groups along x
    and in the legend ("Group"), so that a class and a group of one name ("aged") cannot be mistaken."""
    if len(c.tested) == 1:
        return _one_class_figure(c, c.tested[0])
    fig = go.Figure()
    data = c.table.dropna(subset=["group"])
    groups = list(dict.fromkeys(data["group"]))
    for gi, g in enumerate(groups):
        part = data[data["group"] == g]
        summ = c.groups[c.groups["group"] == g]
        fig.add_trace(
            go.Scatter(
                x=[k for k in c.classes for _ in range(len(part))],
                y=[100 * v for k in c.classes for v in part[f"{c.measure}_{k}"]],
                mode="markers",
                name=f"{plot_text(g)}: mice{_suffix(c)}",
                legendgroup=str(g),
                offsetgroup=str(gi),
                marker={"size": 9, "opacity": 0.75, "color": colour(str(g), gi + 2)},
                text=[
                    f"{plot_text(m or b)} ({a})"
                    for _ in c.classes
                    for m, b, a in zip(part["mouse_id"], part["batch_name"], part["age"])
                ],
                hovertemplate="%{text}: %{y:.1f}%<extra></extra>",
            )
        )
        untested = _untested_points(c, part, c.classes, [k for k in c.classes for _ in range(len(part))], g, gi)
        if untested is not None:
            fig.add_trace(untested.update(offsetgroup=str(gi)))
        fig.add_trace(
            go.Scatter(
                x=list(summ["class"]),
                y=list(100 * summ["mean_fraction"]),
                mode="markers",
                name=f"{plot_text(g)}: mean, 95% CI",
                legendgroup=str(g),
                offsetgroup=str(gi),
                marker={"symbol": "line-ew-open", "size": 28, "color": "#222"},
                error_y=_error_bars(summ),
            )
        )
    fig.update_layout(
        scattermode="group",
        xaxis_title="predicted class",
        yaxis_title=_axis(c),
        yaxis_range=[0, 100],
        height=420,
        margin={"t": 30},
        legend_title_text=f"Group ({c.by})",
    )
    return fig


def _error_bars(summ: pd.DataFrame) -> dict:
    return {
        "type": "data",
        "symmetric": False,
        "array": list(100 * (summ["ci95_high"] - summ["mean_fraction"]).fillna(0)),
        "arrayminus": list(100 * (summ["mean_fraction"] - summ["ci95_low"]).fillna(0)),
    }


def _one_class_figure(c: Comparison, cls: str) -> go.Figure:
    """The per-mouse figure of a two-class task: the fraction of ``cls`` per mouse, a column per group."""
    fig = go.Figure()
    data = c.table.dropna(subset=["group"])
    other = plot_text(next(k for k in c.classes if k != cls))
    for gi, g in enumerate(dict.fromkeys(data["group"])):
        part = data[data["group"] == g]
        summ = c.groups[(c.groups["group"] == g) & (c.groups["class"] == cls)]
        label = plot_text(g)
        fig.add_trace(
            go.Scatter(
                x=[label] * len(part),
                y=list(100 * part[f"{c.measure}_{cls}"]),
                mode="markers",
                name=f"{label}: mice{_suffix(c)}",
                legendgroup=str(g),
                marker={"size": 9, "opacity": 0.75, "color": colour(str(g), gi + 2)},
                text=[
                    f"{plot_text(m or b)} ({a})" for m, b, a in zip(part["mouse_id"], part["batch_name"], part["age"])
                ],
                hovertemplate="%{text}: %{y:.1f}%<extra></extra>",
            )
        )
        untested = _untested_points(c, part, [cls], [label] * len(part), g, gi)
        if untested is not None:
            fig.add_trace(untested)
        fig.add_trace(
            go.Scatter(
                x=[label] * len(summ),
                y=list(100 * summ["mean_fraction"]),
                mode="markers",
                name=f"{label}: mean, 95% CI",
                legendgroup=str(g),
                marker={"symbol": "line-ew-open", "size": 28, "color": "#222"},
                error_y=_error_bars(summ),
            )
        )
    said = plot_text(cls)
    fig.update_layout(
        title_text=f"{said} cells per mouse ({other} = 100% − {said})",
        xaxis_title=f"group ({c.by})",
        xaxis_type="category",
        yaxis_title=_axis(c, said),
        yaxis_range=[0, 100],
        height=420,
        margin={"t": 50},
        legend_title_text="Group",
    )
    return fig


def score_figure(s: Session, c: Comparison, max_cells: int = 50_000) -> go.Figure:
    """Score distributions of the cells of each group (box plots; a random subset above ``max_cells``)."""
    data = c.table.dropna(subset=["group"])
    group_of = batches_of(data)
    batch, score = _scores(s, list(group_of))
    if len(score) > max_cells:
        keep = np.random.default_rng(0).choice(len(score), max_cells, replace=False)
        batch, score = batch[keep], score[keep]
    fig = go.Figure()
    for gi, g in enumerate(dict.fromkeys(data["group"])):
        y = score[np.isin(batch, [b for b, of in group_of.items() if of == g])]
        fig.add_trace(go.Box(y=y, name=plot_text(g), boxmean=True, marker_color=colour(str(g), gi + 2)))
    fig.add_hline(y=c.threshold, line_dash="dash", line_color="#444")
    fig.update_layout(yaxis_title="score of each cell", height=380, margin={"t": 30}, showlegend=False)
    return fig


def _scores(s: Session, batch_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The batch id and score of every cell of these batches, as arrays.

    Read as plain floats in batch order beside each batch's count, not as one row object per cell: 50,000
    rows cost a second in a busy app process, and plotly checks a list value by value where it takes an array
    at once (bench/history_pages.py). float32 (7 digits) is plenty for a box plot."""
    in_batches = Cell.batch_id.in_(batch_ids)
    counts = s.execute(
        select(Cell.batch_id, func.count()).where(in_batches).group_by(Cell.batch_id).order_by(Cell.batch_id)
    ).all()
    score = np.fromiter(s.scalars(select(Cell.score).where(in_batches).order_by(Cell.batch_id)), dtype=np.float32)
    if len(score) == sum(n for _, n in counts):
        return np.repeat(np.array([b for b, _ in counts], dtype=np.int64), [n for _, n in counts]), score
    # cells were written or deleted between the two reads: one read of rows, slower but consistent
    rows = s.execute(select(Cell.batch_id, Cell.score).where(in_batches)).all()
    return np.array([b for b, _ in rows], dtype=np.int64), np.array([sc for _, sc in rows], dtype=np.float32)


def age_figure(c: Comparison, cls: str) -> go.Figure:
    """Per-mouse fraction of ``cls`` against age (months), with the fitted least-squares line."""
    data = c.table.dropna(subset=["age_days"])
    months = data["age_days"] / DAYS_PER_MONTH
    fig = go.Figure(
        go.Scatter(
            x=months,
            y=100 * data[f"fraction_{cls}"],
            mode="markers",
            name="mice",
            marker={"size": 10, "color": colour(cls)},
            text=[plot_text(m or b) for m, b in zip(data["mouse_id"], data["batch_name"])],
            hovertemplate="%{text}: %{x:.1f} months, %{y:.1f}%<extra></extra>",
        )
    )
    t = c.trends.get(cls)
    if t:
        xs = np.linspace(months.min(), months.max(), 20)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=100 * (t["intercept"] + t["slope_per_month"] * xs),
                mode="lines",
                name=f"trend {100 * t['slope_per_month']:+.2f} points/month (p={t['p_value']:.2g})",
            )
        )
    fig.update_layout(xaxis_title="age (months)", yaxis_title=f"% {cls} (per mouse)", height=380, margin={"t": 30})
    return fig


def _sheet(book: Workbook, name: str, frame: pd.DataFrame) -> None:
    add_sheet(book, name, list(frame.columns), frame.itertuples(index=False))


def workbook(s: Session, c: Comparison) -> bytes:
    """Sheets per_mouse, groups, tests (with the pooled-cell test and its note last), odds_model (the model of
    cells within mice), size_tests and size_model (cell size, where cells were sized), methods (the methods
    text, a paragraph a row: lsm_core.reports.methods) and cells. With two classes the tests and odds_model
    sheets hold one class's rows and no p_holm column (:func:`shown`)."""
    book = Workbook(write_only=True)
    _sheet(book, "per_mouse", c.table)
    _sheet(book, "groups", c.groups)
    tests = c.tests.copy()
    pooled = pd.DataFrame(
        [
            {
                "class": "all classes",
                "test": c.pooled["test"] + " (secondary: pseudo-replication)",
                "groups": "",
                "mice": int(c.table["group"].notna().sum()),
                "statistic": c.pooled["statistic"],
                "p_value": c.pooled["p_value"],
                "p_holm": np.nan,
                "effect_size": np.nan,
                "effect_size_name": c.pooled["note"],
            }
        ]
    )
    _sheet(book, "tests", shown(c, pd.concat([tests, pooled], ignore_index=True)))
    _sheet(book, "odds_model", shown(c, c.odds))
    if len(c.size_tests):
        _sheet(book, "size_tests", c.size_tests)
        _sheet(book, "size_model", c.size_model)
    _sheet(book, "methods", pd.DataFrame(methods_paragraphs(s, c), columns=["section", "text"]))
    add_sheet(book, "cells", *batch_rows(s, list(batches_of(c.table))))
    return workbook_bytes(book)
