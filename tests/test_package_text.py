"""Text from a package is text (issue 27 item 4).

An imported BioImage Model Zoo package brings its own strings: metric names, ROC curve keys, the classes of its
confusion matrix, a description, authors, citations. Plotly reads a subset of HTML in a figure's texts: a
``<span style="background-image:url(...)">`` in a legend made the server's chromium fetch that URL while it
drew a PNG, and an ``<a href>`` stayed a live link in the SVG and on the Models page. Every such string is
escaped before it reaches a figure (lsm_core.reports.report.plot_text) or Markdown (escape_markdown, and the
model card's own rule for the exported README), and the chromium that exports figures has no network at all,
loopback included (lsm_core.reports.figure_export.offline_browser). A local HTTP server records every request: none
may arrive."""

from __future__ import annotations

import html
import http.server
import io
import json
import re
import stat
import threading
import zipfile
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import CHROMIUM, need_browser

LSM = ["LT-HSC", "ST-HSC", "MPP"]
LIVE = re.compile(r"<\s*(a|span|img|b|i|br|sup|sub|em|s|u)\b", re.I)  # a tag plotly (or Markdown's HTML) acts on


class Listener:
    """An HTTP server on 127.0.0.1 at a free port, in a thread, that records the path of every request."""

    def __init__(self) -> None:
        seen: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                seen.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.requests = seen
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def text(self, what: str = "k") -> str:
        """A string that plotly (and an HTML renderer) would act on: a background image, a link, an image."""
        return (
            f'<span style="background-image:url({self.url}/span-{what})">{what}</span> '
            f'<a href="{self.url}/a-{what}">link</a> <img src="{self.url}/img-{what}">'
        )


@pytest.fixture(scope="module")
def listener():
    server = Listener()
    yield server
    server.server.shutdown()
    server.server.server_close()


def hostile_metrics(listener: Listener, where: str = "val") -> dict:
    """Metrics as evaluate_probs writes them, but every name a package chose is HTML: the first class of the
    confusion matrix, a ROC curve's key, a per-class entry, which cells they come from."""
    evil = listener.text(f"{where}-class")
    return {
        "n": 21,
        "accuracy": 0.714,
        "macro_f1": 0.7,
        "macro_auc": 0.81,
        "micro_auc": 0.8,
        "ece": 0.05,
        "classes": [evil, "ST-HSC", "MPP"],
        "confusion_matrix": [[5, 1, 1], [1, 5, 1], [1, 1, 5]],
        "per_class": {
            evil: {"precision": 0.7, "recall": 0.7, "f1": 0.7, "auc": 0.8, "support": 7},
            "ST-HSC": {"precision": 0.7, "recall": 0.7, "f1": 0.7, "auc": 0.8, "support": 7},
        },
        "roc": {
            evil: {"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1]},
            listener.text(f"{where}-roc"): {"fpr": [0, 0.3, 1], "tpr": [0, 0.6, 1]},
            "micro": {"fpr": [0, 0.25, 1], "tpr": [0, 0.65, 1]},
        },
        "reliability": [
            {"low": 0.4, "high": 0.6, "count": 10, "confidence": 0.5, "accuracy": 0.5},
            {"low": 0.6, "high": 1.0, "count": 11, "confidence": 0.8, "accuracy": 0.8},
        ],
        "evaluated_on": listener.text(f"{where}-heading") + " [cells](http://127.0.0.1:9/h)",
    }


def hostile_training(listener: Listener) -> dict:
    """A package's training record and origin (training["imported_from"], as import_package keeps it)."""
    evil = listener.text("origin")
    return {
        "history": {"train_loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.8, 0.6], "val_accuracy": [0.5, 0.6, 0.7]},
        "class_counts": {evil: listener.text("count")},
        "recipe": {listener.text("recipe-key"): listener.text("recipe")},
        "split": {"train": listener.text("split")},
        "data_sha256": listener.text("sha") + f" [data]({listener.url}/md-link) ![i]({listener.url}/md-img)",
        "imported_from": {
            "format": "bioimageio",
            "name": evil,
            "version": "1",
            "authors": [listener.text("author"), f"[Eve]({listener.url}/eve)"],
            "cite": [{"text": listener.text("cite"), "url": f"{listener.url}/cite"}],
            "license": "MIT",
            "sha256": "0" * 64,
            "file": "evil.zip",
            "exported_from": listener.text("exported"),
            "app": "<b>an app</b>",
            "app_version": "1",
        },
    }


def hostile_manifest(listener: Listener, name: str = "zoo-import"):
    from lsm_core.ml.models import Manifest

    metrics = hostile_metrics(listener) | {"test": hostile_metrics(listener, "test")}
    return Manifest(
        task="lsm",
        name=name,
        classes=LSM,
        architecture="tiny_cnn",
        metrics=metrics,
        training=hostile_training(listener),
        description=listener.text("description") + f" see {listener.url}/bare and www.example.org",
    )


def card_figures(manifest) -> dict:
    """Every figure the Models page draws of ``manifest``, built by the functions the page calls."""
    from lsm_core.reports.model_card import model_cards, training_figure

    figures = {}
    for i, card in enumerate(model_cards(manifest.metrics)):
        figures |= {f"{i}-{name}": fig for name, fig in card.figures.items()}
    figures["training"] = training_figure(manifest.training)
    return figures


def strings(value) -> list[str]:
    """Every string inside a figure's JSON (trace names, texts, categories, titles, hover)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(k) + strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings(v)]
    return []


def live_tags(fig) -> list[str]:
    """The texts of a figure in which plotly would find a tag (our own ``<br>`` in the confusion matrix's cells
    aside)."""
    found = strings(fig.to_plotly_json())
    return [s for s in found if LIVE.search(s.replace("<br>", " "))]


def svg_links(svg: str, url: str) -> list[str]:
    """The SVG's ``<a>`` elements and every attribute (href, src, style) that names ``url``, parsed as XML (the
    text of the SVG may say anything)."""
    import xml.etree.ElementTree as ET

    found = []
    for element in ET.fromstring(svg).iter():
        if element.tag.rsplit("}", 1)[-1] in ("a", "img", "foreignObject"):  # a heatmap is an <image> of data:
            found.append(element.tag)
        found += [f"{k}={v}" for k, v in element.attrib.items() if url in v or "127.0.0.1" in v or "localhost" in v]
    return found


# --- (c) the model card's figures and text, from the functions the Models page and the export call ------------
def test_a_packages_names_reach_the_model_card_figures_as_text(listener):
    manifest = hostile_manifest(listener)
    figures = card_figures(manifest)
    assert {"0-confusion", "0-roc", "0-reliability", "1-confusion", "1-roc", "training"} <= set(figures)
    for name, fig in figures.items():
        assert live_tags(fig) == [], name
    roc = figures["0-roc"]
    shown = [html.unescape(t.name) for t in roc.data if t.name]  # what plotly writes: entities read
    assert listener.text("val-class") + " (AUC 0.80)" in shown and listener.text("val-roc") in shown
    confusion = figures["0-confusion"]
    assert html.unescape(confusion.data[0].x[0]) == listener.text("val-class")  # the axis and hover: the text


def test_text_where_a_package_should_have_numbers_is_not_drawn_and_breaks_nothing(listener):
    """A number field holding text would become an axis of category labels (which plotly reads as HTML), or a
    crash of the Models page: the card draws numbers only and says what it could not draw."""
    from lsm_core.reports.model_card import metrics_card, model_cards, models_table, training_figure

    evil = listener.text("number")
    metrics = {
        "n": evil,
        "accuracy": evil,
        "ece": 0.1,
        "macro_auc": evil,
        "classes": LSM,
        "confusion_matrix": [[5, evil, 1], [1, 5, 1], [1, 1, 5]],
        "per_class": {"LT-HSC": {"precision": evil, "recall": 0.5, "f1": 0.5, "auc": evil, "support": evil}},
        "roc": {"LT-HSC": {"fpr": [0, evil, 1], "tpr": [0, 0.5, 1]}},
        "reliability": [{"low": 0.5, "high": 1.0, "count": evil, "accuracy": evil}, "x", {"low": 0, "high": 0.5}],
        "test": {"n": evil, "confusion_matrix": [[1]], "classes": LSM},
    }
    card, test_card = model_cards(metrics)
    assert "confusion" not in card.figures and any("not a table of counts" in n for n in card.notes)
    history = {"history": {"train_loss": [1.0, evil], "val_accuracy": [evil]}}
    figures = [*card.figures.values(), *test_card.figures.values(), training_figure(history)]
    figures += metrics_card(metrics, "heading").figures.values()
    assert len(figures) >= 3
    for fig in figures:
        assert live_tags(fig) == []
        for trace in fig.data:  # numbers only: text would make an axis of (HTML) category labels
            if trace.type != "heatmap":
                assert not any(isinstance(v, str) for v in [*(trace.x or []), *(trace.y or [])]), trace
    said = [text for _, value, help_text in card.numbers for text in (value, help_text or "")]
    assert all(evil not in text for text in said), said
    assert card.per_class[0]["precision"] is None and card.per_class[0]["cells"] is None
    row = SimpleNamespace(
        name="m",
        version=1,
        task="lsm",
        demo=False,
        is_default=False,
        architecture="tiny_cnn",
        weights_sha256="0",
        created=datetime(2024, 1, 1),
        metrics=metrics,
    )  # a Model row, as the Models table reads it
    (table,) = models_table([row])
    assert table["validation cells"] is None and table["validation accuracy"] is None


def _rendered(markdown: str) -> str:
    """The README as HTML, by two renderers: CommonMark with raw HTML on (markdown-it) and Python-Markdown."""
    import markdown as python_markdown
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True, "linkify": False}).render(markdown) + python_markdown.markdown(
        markdown
    )


def test_the_exported_model_card_shows_a_packages_text_and_links_nothing(listener):
    from lsm_core.reports.model_card import model_card_markdown, origin_text

    manifest = hostile_manifest(listener)
    readme = model_card_markdown(manifest)
    rendered = _rendered(readme)
    assert not re.search(r"<(a|img|span|b)\b", rendered), re.findall(r"<(?:a|img|span|b)\b[^>]*>", rendered)
    assert not re.search(r"<[a-z][^>]*\b(href|src)\s*=", rendered)  # no element that links or loads
    assert "http://" not in readme.replace("\\", "") and "www." not in readme.replace("\\", "")  # no autolink left
    read = html.unescape(re.sub(r"<[^>]*>", "", rendered)).replace("\u2060", "")
    for what in ("description", "origin", "author", "sha", "recipe", "val-heading"):
        assert listener.text(what) in read, what  # shown, as the characters the package wrote
    origin = origin_text(manifest.training)  # the page shows it with st.text: as it is
    assert origin and listener.text("author") in origin and f"[Eve]({listener.url}/eve)" in origin


def test_a_real_imported_package_keeps_its_text_as_text(listener, tmp_path):
    """Through the real path: the app's own export of a tiny model, its rdf.yaml given a hostile description,
    author and metrics, imported again by import_package; the card of what was imported is inert."""
    import torch

    from lsm_core.ml import nets
    from lsm_core.ml.bioimageio import export_package, import_package
    from lsm_core.ml.models import Manifest, ModelStore
    from lsm_core.reports.model_card import model_card_markdown

    torch.manual_seed(0)
    package = ModelStore(tmp_path / "models").add(
        nets.create("tiny_cnn", 3), Manifest(task="lsm", name="zoo", classes=LSM, architecture="tiny_cnn")
    )
    with zipfile.ZipFile(io.BytesIO(export_package(package, ["Ana Researcher"], "MIT"))) as z:
        files = {n: z.read(n) for n in z.namelist()}
    rdf = json.loads(files["rdf.yaml"])
    rdf["authors"].append({"name": "<img src=x> <span style=color:red>Eve<b>"})  # the spec allows no '/' here
    rdf["description"] = listener.text("rdf-description")
    ours = rdf["config"]["lsm_classifier"]["manifest"]
    ours["metrics"] = hostile_metrics(listener)
    ours.pop("description", None)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, content in files.items():
            z.writestr(name, json.dumps(rdf) if name == "rdf.yaml" else content)
    manifest = import_package(out.getvalue(), None, "evil.zip").manifest
    for name, fig in card_figures(manifest).items():
        assert live_tags(fig) == [], name
    rendered = _rendered(model_card_markdown(manifest))
    assert not re.search(r"<(a|img|span|b)\b", rendered), rendered
    assert listener.text("rdf-description") in html.unescape(re.sub(r"<[^>]*>", "", rendered)).replace("\u2060", "")


# --- (a, b) figure export: no request leaves chromium -------------------------------------------------------------
def _export_all(fig, listener: Listener, formats=("png", "svg", "pdf"), chromium: str = CHROMIUM) -> dict:
    from lsm_core.reports.figure_export import FigureSize, figure_bytes

    listener.requests.clear()
    out = {fmt: figure_bytes(fig, fmt, FigureSize(120, 90, 8, 150), chromium) for fmt in formats}
    return out


@pytest.mark.slow
def test_exported_model_card_figures_send_nothing_and_show_the_text(listener):
    """The ROC legend and the confusion matrix's axes of a package's metrics, as PNG, SVG and PDF: no request
    reaches the server, and the SVG holds no link: the tags are characters of its text."""
    need_browser()
    from lsm_core.reports.figure_export import _text_of

    figures = card_figures(hostile_manifest(listener))
    for name in ("0-roc", "0-confusion"):
        files = _export_all(figures[name], listener)
        assert listener.requests == [], (name, listener.requests)
        svg = files["svg"].decode("utf-8")
        assert svg_links(svg, listener.url) == [], name
        assert listener.text("val-class") in _text_of(svg).replace("\u00a0", " "), name
    for name in ("0-reliability", "training"):
        _export_all(figures[name], listener, ("svg",))
        assert listener.requests == [], (name, listener.requests)


@pytest.mark.slow
def test_escaped_text_alone_keeps_a_chromium_with_network_from_fetching(listener):
    """The escaping is enough by itself: the ROC figure drawn by kaleido in a chromium that has the network
    (not the export's) fetches nothing either."""
    need_browser()
    import kaleido

    from lsm_core.reports.figure_export import FigureSize, styled

    fig = card_figures(hostile_manifest(listener))["0-roc"]
    listener.requests.clear()
    kaleido.calc_fig_sync(
        styled(fig, FigureSize()),
        opts={"format": "png", "width": 400, "height": 300, "scale": 1},
        kopts={"path": CHROMIUM, "mathjax": False, "timeout": 120},
    )
    assert listener.requests == []


def raw_figure(listener: Listener):
    """A figure built here with the package's text as it came (no escaping): what a figure the code forgot to
    escape would hand the exporter."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], name=listener.text("raw-legend"), hovertext="x"))
    fig.update_layout(title=listener.text("raw-title"), showlegend=True, xaxis_title=listener.text("raw-axis"))
    fig.add_annotation(x=0.5, y=0.5, text=f'<span style="background-image:url(http://localhost:{listener.port}/lh)">a')
    return fig


@pytest.mark.slow
def test_the_exporting_chromium_has_no_network_even_for_unescaped_text(listener):
    """Unescaped HTML in a figure, exported as PNG, SVG and PDF: chromium would fetch the background images
    (127.0.0.1 and localhost: loopback, which chromium sends past a proxy unless told) and does not."""
    need_browser()
    _export_all(raw_figure(listener), listener)
    assert listener.requests == []


@pytest.mark.slow
def test_no_network_survives_choreographers_proxy_setting_and_an_odd_chromium_path(listener, tmp_path, monkeypatch):
    """CHOREO_PROXY_SERVER (choreographer's own proxy switch, given before ours) cannot open the network again,
    and LSM_CHROMIUM at a path with spaces and quotes still draws."""
    need_browser()
    from lsm_core.reports.figure_export import export_problem

    odd = tmp_path / 'the lab\'s "chromium" $HOME' / "chromium"
    odd.parent.mkdir()
    odd.symlink_to(CHROMIUM)
    assert export_problem(str(odd)) is None
    monkeypatch.setenv("CHOREO_PROXY_SERVER", "direct://")
    files = _export_all(raw_figure(listener), listener, ("png",), chromium=str(odd))
    assert files["png"].startswith(b"\x89PNG") and listener.requests == []


def test_the_offline_wrapper_is_private_and_runs_chromium_with_no_network(tmp_path):
    from lsm_core.reports.figure_export import OFFLINE_FLAGS, offline_browser

    real = tmp_path / "my chromium's" / "chromium"
    real.parent.mkdir()
    real.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    real.chmod(0o755)
    script = Path(offline_browser(str(real)))
    assert offline_browser(str(real)) == str(script)  # written once per process
    assert stat.S_IMODE(script.stat().st_mode) == 0o700 and stat.S_IMODE(script.parent.stat().st_mode) == 0o700
    import subprocess

    said = subprocess.run([str(script), "--headless", "a b"], capture_output=True, text=True, check=True).stdout
    assert said.splitlines() == ["--headless", "a b", *OFFLINE_FLAGS]  # ours last: chromium takes the last one
    assert "--proxy-bypass-list=<-loopback>" in OFFLINE_FLAGS


# --- (d) the Models page -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_lab(tmp_path_factory, listener):
    """A data dir with the tiny demo models and `zoo-import`, whose manifest carries the package's text."""
    import torch

    from lsm_core.ml import nets
    from lsm_core.ml.models import ModelStore
    from tests.helpers import add_tiny_demo_models

    data = tmp_path_factory.mktemp("package-text")
    add_tiny_demo_models(data / "models")
    torch.manual_seed(0)
    ModelStore(data / "models").add(nets.create("tiny_cnn", 3), hostile_manifest(listener))
    return data


def _models_page_with_the_import(monkeypatch, data: Path):
    from tests.helpers import run_page

    monkeypatch.setenv("LSM_DATA_DIR", str(data))
    monkeypatch.delenv("LSM_DATABASE_URL", raising=False)
    at = run_page("pages/models.py")
    picker = at.selectbox(key="card_model")
    (chosen,) = [o for o in picker.options if "zoo-import" in o]
    picker.select(chosen)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_the_models_page_shows_a_packages_text_as_text(hostile_lab, listener, monkeypatch):
    """AppTest: every figure the page sends to the browser has its tags as characters, every Markdown element is
    inert (tests.test_markdown_app's check), and the origin and headings still say the package's words."""
    from tests.test_markdown_app import assert_inert

    at = _models_page_with_the_import(monkeypatch, hostile_lab)
    charts = [node for node in at._tree if getattr(node, "type", "") == "plotly_chart"]
    assert len(charts) >= 6  # two cards of three figures, and the training curves
    for chart in charts:
        spec = json.loads(chart.proto.spec)
        bad = [s for s in strings(spec) if LIVE.search(s.replace("<br>", " "))]
        assert bad == [], bad
    assert_inert(at, listener.text("val-heading"), listener.text("test-heading"))
    assert any(listener.text("author") in t.value for t in at.text)  # the origin: st.text, as written


@pytest.mark.slow
def test_in_a_browser_the_models_page_links_and_fetches_nothing_of_a_package(hostile_lab, listener, tmp_path):
    """The Models page in chromium with the imported model chosen: no element links to the package's address,
    the browser fetches nothing from it, and the legend shows the tags as characters."""
    need_browser()
    from playwright.sync_api import sync_playwright

    from tests.helpers import ARTIFACTS, launch, served_app, settle

    ARTIFACTS.mkdir(exist_ok=True)
    with served_app(hostile_lab, tmp_path / "serve.log") as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        listener.requests.clear()
        page.goto(f"{url}/model-registry")
        settle(page)
        page.get_by_test_id("stSelectbox").filter(has_text="Model").first.click()
        page.get_by_role("option", name=re.compile("zoo-import")).click()
        settle(page)
        page.locator(".stPlotlyChart").nth(5).wait_for(timeout=120_000)
        for chart in page.locator(".stPlotlyChart").all():
            chart.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        links = page.evaluate(
            """() => Array.from(document.querySelectorAll('a')).map(
                 a => a.getAttribute('href') || a.getAttribute('xlink:href') || '')"""
        )
        legend = page.evaluate(
            "() => Array.from(document.querySelectorAll('.stPlotlyChart g.legend text')).map(t => t.textContent)"
        )
        page.screenshot(path=str(ARTIFACTS / "package-text-models.png"), full_page=True)
        browser.close()
    assert [h for h in links if str(listener.port) in h] == []
    assert listener.requests == []
    assert any(listener.text("val-roc").replace(" ", "") in t.replace("\u00a0", "").replace(" ", "") for t in legend)


@pytest.mark.slow
def test_a_plain_figure_still_exports_through_the_wrapper():
    """A normal figure still exports (SVG with its font embedded) through the wrapper."""
    need_browser()
    import plotly.graph_objects as go

    from lsm_core.reports.figure_export import FigureSize, figure_bytes

    fig = go.Figure(go.Bar(x=["LT-HSC", "MPP"], y=[1, 2], name="cells ≥ 0.5"))
    svg = figure_bytes(fig, "svg", FigureSize(), CHROMIUM).decode("utf-8")
    assert "@font-face" in svg and "LT-HSC" in svg
