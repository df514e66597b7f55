"""Looks (issue 26 item 9): the composition's labels clear of its error bars, the ternary plot's corner titles
inside the figure, the field of view's legend clear of plotly's toolbar, the Models table's columns readable;
on the page (Streamlit in chromium) and in exported figures (kaleido). The Zoo package's citations are in
tests/test_bioimageio.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from lsm_core.reports import report
from lsm_core.reports.stats import composition
from tests.helpers import ARTIFACTS, CHROMIUM, need_browser

LSM = ["LT-HSC", "ST-HSC", "MPP"]
COUNTS = [
    {"LT-HSC": 12, "ST-HSC": 61, "MPP": 27},
    {"LT-HSC": 4, "ST-HSC": 44, "MPP": 0},
    {"LT-HSC": 48, "ST-HSC": 0, "MPP": 0},  # a whisker at 100%
    {"LT-HSC": 1, "ST-HSC": 1, "MPP": 1},  # wide intervals
]


def composition_of(counts: dict[str, int]):
    return report.composition_figure(SimpleNamespace(shares=composition(counts, LSM), threshold=0.0, correction=None))


def ternary_of(n: int = 300, seed: int = 1):
    probs = np.random.default_rng(seed).dirichlet([1, 1, 1], n)
    return report.probability_figure(probs.argmax(1), probs, LSM)


# --- the figures as plotly describes them ------------------------------------------------------------------------
@pytest.mark.parametrize("counts", COUNTS)
def test_each_composition_label_stands_above_its_error_bar(counts):
    fig = composition_of(counts)
    (bar,) = fig.data
    assert not bar.text and bar.textposition is None  # no label on the bar, where the whisker runs through it
    tops = {cls: y + up for cls, y, up in zip(bar.x, bar.y, bar.error_y.array)}
    labels = {a.x: a for a in fig.layout.annotations}
    assert set(labels) == set(LSM)
    for cls, share in zip(LSM, composition(counts, LSM)):
        label = labels[cls]
        assert label.text == f"{100 * share.fraction:.1f}% (n={share.count})"
        assert label.y >= tops[cls] - 1e-9 and label.yanchor == "bottom" and not label.showarrow
        assert label.yshift is None or label.yshift >= 0
    low, high = fig.layout.yaxis.range
    assert low == 0 and high >= max(a.y for a in fig.layout.annotations) + 10  # room for the label in the plot
    assert list(fig.layout.yaxis.tickvals) == [0, 20, 40, 60, 80, 100]  # no tick above 100%


def test_the_ternary_plot_gives_every_margin_room_for_a_corner_title():
    """Streamlit's plotly theme sets no left and right margin: the figure gives each, wide enough for a class
    name beside a bottom corner (about 50 px at the page's font), and room above the top corner's title."""
    margin = ternary_of().layout.margin
    assert margin.l >= 60 and margin.r >= 60 and margin.t >= 50 and margin.b >= 40
    many = ternary_of(5000)  # "4,000 of 5,000 cells shown" stands above the plot, inside the top margin
    (note,) = many.layout.annotations
    assert note.yref == "paper" and note.y > 1


def test_the_field_legend_lies_in_a_row_under_the_image():
    """At the top right the legend lay under plotly's toolbar; the outlines of what was not counted are in it too."""
    pixels = np.random.default_rng(0).random((300, 400)).astype(np.float32)
    dropped = [[10, 10, 40, 40, "clump"], [200, 100, 8, 8, "debris"]]
    fig = report.field_figure(pixels, [], LSM, 0.0, dropped=dropped)
    legend = fig.layout.legend
    assert legend.orientation == "h" and legend.yanchor == "top" and legend.y < 0  # below the plot area
    assert legend.xanchor == "left" and legend.x == 0 and legend.title.text == "predicted"
    shown = [t.name for t in fig.data if t.type == "scatter" and t.showlegend is not False and t.name]
    assert any(n.startswith("not counted: dropped as a clump") for n in shown)


# --- the Models table (AppTest) ----------------------------------------------------------------------------------
@pytest.fixture
def models_env(tmp_path, monkeypatch):
    """A data dir with the tiny demo models and `lab-lsm`, whose manifest carries validation and test metrics."""
    import torch

    from lsm_core.ml import nets
    from lsm_core.ml.models import Manifest, ModelStore
    from tests.helpers import add_tiny_demo_models

    monkeypatch.setenv("LSM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LSM_DATABASE_URL", raising=False)
    add_tiny_demo_models(tmp_path / "models")
    torch.manual_seed(0)
    metrics = {
        "accuracy": 0.81234,
        "ece": 0.04567,
        "macro_f1": 0.8,
        "n": 1234,
        "quality_check": {"passed": True},
        "test": {"accuracy": 0.7777, "ece": 0.061, "n": 456},
    }
    manifest = Manifest(task="lsm", name="lab-lsm-fine-tuned", classes=LSM, architecture="tiny_cnn", metrics=metrics)
    ModelStore(tmp_path / "models").add(nets.create("tiny_cnn", 3), manifest)
    return tmp_path


def test_the_models_table_has_short_explained_headers_formatted_numbers_and_the_model_in_view(models_env):
    from lsm_core.classes import TASK_TITLES
    from tests.helpers import run_page

    at = run_page("pages/models.py")
    table = at.dataframe[0]
    frame = table.value
    assert set(frame["task"]) == {"LSM", "aging"}  # the full titles are the header's help
    config = {k: v for k, v in json.loads(table.proto.columns).items() if k != "_index"}  # the index: hidden
    assert set(config) == set(frame.columns)  # every column configured
    assert config["model"]["pinned"] is True  # stays in view when the table scrolls sideways
    for name, column in config.items():
        label = column.get("label", name)
        assert len(label) <= 14, (name, label)  # a header fits its column
        assert column.get("help") and isinstance(column.get("width"), int), name
        if name.startswith(("validation", "test")):  # every number still names its set
            assert label.startswith(("val. ", "test ")), (name, label)
    for name in ("validation accuracy", "validation ECE", "validation macro F1", "test accuracy", "test ECE"):
        assert config[name]["type_config"]["format"] == "%.3f", name
    for name in ("validation cells", "test cells"):
        assert config[name]["type_config"]["format"] == "%d", name
    assert "held out from the training data" in config["validation accuracy"]["help"]
    assert all(title in config["task"]["help"] for title in TASK_TITLES.values())
    assert table.proto.placeholder == "–"  # a missing number is a dash, not "None"
    row = frame[frame["model"] == "lab-lsm-fine-tuned"].iloc[0]
    assert row["validation cells"] == 1234 and row["test accuracy"] == pytest.approx(0.778)


# --- what chromium draws -----------------------------------------------------------------------------------------
# every text's box, every error bar's box, the legend's and the toolbar's, in CSS px from the drawing's top left
_BOXES = """(root) => {
  const r0 = root.getBoundingClientRect();
  const box = (e) => { const r = e.getBoundingClientRect();
    return [r.left - r0.left, r.top - r0.top, r.right - r0.left, r.bottom - r0.top]; };
  const seen = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const texts = Array.from(root.querySelectorAll('svg text')).filter(t => t.textContent.trim() && seen(t))
    .map(t => ({text: t.textContent, cls: t.getAttribute('class') || '', box: box(t)}));
  const bars = Array.from(root.querySelectorAll('g.errorbar path')).filter(seen).map(box);
  const legend = root.querySelector('g.legend');
  const modebar = root.querySelector('.modebar');
  return {size: [r0.width, r0.height], texts, bars, legend: legend && seen(legend) ? box(legend) : null,
          modebar: modebar && seen(modebar) ? box(modebar) : null};
}"""


def _overlap(a, b, slack: float = 0.5) -> bool:
    return a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


def _outside(drawn: dict, slack: float = 0.5) -> list[str]:
    width, height = drawn["size"]
    return [
        f"{t['text']!r} at {[round(v) for v in t['box']]} in {width:.0f} x {height:.0f}"
        for t in drawn["texts"]
        if t["box"][0] < -slack or t["box"][1] < -slack or t["box"][2] > width + slack or t["box"][3] > height + slack
    ]


def _labels_clear_of_whiskers(drawn: dict) -> list[str]:
    """Each composition label above its error bar's top, touching no error bar."""
    labels = [t for t in drawn["texts"] if "annotation" in t["cls"] or "bartext" in t["cls"]]  # now, and before
    assert labels and drawn["bars"], drawn
    problems = []
    for label in labels:
        centre = (label["box"][0] + label["box"][2]) / 2
        own = min(drawn["bars"], key=lambda b: abs((b[0] + b[2]) / 2 - centre))
        if label["box"][3] > own[1] + 0.5:
            problems.append(f"{label['text']!r} reaches below the top of its error bar")
        problems += [f"{label['text']!r} overlaps an error bar" for b in drawn["bars"] if _overlap(label["box"], b)]
    return problems


@pytest.mark.slow
def test_exported_figures_keep_every_text_inside_and_the_labels_clear_of_the_error_bars():
    """SVGs drawn by kaleido at a journal's sizes and fonts, measured by chromium."""
    need_browser()
    from playwright.sync_api import sync_playwright

    from lsm_core.reports.figure_export import FigureSize, figure_bytes
    from tests.helpers import launch

    figures = {f"composition-{i}": composition_of(c) for i, c in enumerate(COUNTS)} | {"ternary": ternary_of()}
    sizes = [FigureSize(89, 70, 7), FigureSize(120, 90, 8), FigureSize(183, 90, 10), FigureSize(60, 80, 8)]
    problems: list[str] = []
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        for name, fig in figures.items():
            for size in sizes:
                svg = figure_bytes(fig, "svg", size, CHROMIUM).decode("utf-8")
                width, height = size.css_px
                svg = svg.replace(f'width="{size.width_mm:g}mm"', f'width="{width}"', 1)
                svg = svg.replace(f'height="{size.height_mm:g}mm"', f'height="{height}"', 1)
                page.set_content(f"<html><body style='margin:0'>{svg}</body></html>")
                drawn = page.locator("svg").first.evaluate(_BOXES)
                where = f"{name} at {size.width_mm:g} x {size.height_mm:g} mm, {size.font_pt:g} pt"
                problems += [f"{where}: {p} is outside" for p in _outside(drawn)]
                if name.startswith("composition"):
                    problems += [f"{where}: {p}" for p in _labels_clear_of_whiskers(drawn)]
        browser.close()
    assert problems == []


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """A data dir with tiny demo models (trained a little) and one classified batch: a field of view and 40
    crops, so that every figure of the results page has something to draw."""
    import getpass
    import os

    from db import queries
    from lsm_core.lab import batches
    from lsm_core.lab.worker import Worker
    from tests.helpers import add_tiny_demo_models, crop_files, field_file, lab_at

    data = tmp_path_factory.mktemp("looks")
    add_tiny_demo_models(data / "models", train_epochs=4)
    lab = lab_at(data, sync=True)
    with lab() as s:
        model = queries.model_by_name(s, "demo-lsm:1")
    user = os.environ.get("LSM_USER") or getpass.getuser()  # who the served app (lab mode) acts as
    sub = batches.submit_batch(lab, [field_file(11), *crop_files(40, seed=3)], model.id, "looks", owner=user)
    assert Worker(lab, device="cpu").run(drain=True) == 1
    lab.dispose()
    return data, sub.batch_id


@pytest.mark.slow
def test_on_the_results_page_labels_titles_and_legend_are_where_they_can_be_read(classified, tmp_path):
    """Streamlit's own chart at the page's column width in chromium: the composition labels above and clear of
    the error bars, every text of the ternary plot inside its chart, the field's legend clear of the toolbar;
    screenshots in artifacts/."""
    need_browser()
    from playwright.sync_api import sync_playwright

    from tests.helpers import launch, served_app, settle

    data, batch_id = classified
    ARTIFACTS.mkdir(exist_ok=True)
    with served_app(data, tmp_path / "serve.log") as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/batch-results?batch={batch_id}")
        page.locator(".stPlotlyChart").first.wait_for(timeout=180_000)
        settle(page)
        charts = page.locator(".stPlotlyChart")
        found = {}
        for i in range(charts.count()):
            chart = charts.nth(i)
            chart.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            if chart.locator("g.errorbar").count():
                found["composition"] = chart
            elif chart.locator("g.ternary").count():
                found["ternary"] = chart
            elif chart.locator("g.imagelayer image, g.layer-below image").count():
                found["field"] = chart
        assert set(found) == {"composition", "ternary", "field"}, list(found)
        drawn = {}
        for name, chart in found.items():
            chart.scroll_into_view_if_needed()
            chart.hover()  # the toolbar shows while the pointer is over the chart
            page.wait_for_timeout(600)
            chart.screenshot(path=str(ARTIFACTS / f"looks-{name}.png"))
            drawn[name] = chart.evaluate(_BOXES)
        page.goto(f"{url}/model-registry")
        settle(page)
        page.get_by_test_id("stDataFrame").first.screenshot(path=str(ARTIFACTS / "looks-models-table.png"))
        browser.close()
    problems = [f"composition: {p}" for p in _labels_clear_of_whiskers(drawn["composition"])]
    problems += [f"ternary: {p} is cut off" for p in _outside(drawn["ternary"])]
    assert set(LSM) <= {t["text"] for t in drawn["ternary"]["texts"]}  # the corner titles are drawn
    field = drawn["field"]
    assert field["legend"] and field["modebar"], field
    if _overlap(field["legend"], field["modebar"]):
        problems.append(f"field: the legend {field['legend']} lies under the toolbar {field['modebar']}")
    legend = {**field, "texts": [t for t in field["texts"] if t["cls"].startswith("legend")]}
    assert legend["texts"]
    problems += [f"field: {p} is cut off" for p in _outside(legend)]
    assert problems == []
