"""Figures for a paper (issue #18 item 5): SVG, PDF and PNG of the app's figures at a chosen physical size,
font size and DPI, fonts embedded, drawn by kaleido in Debian's chromium."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image

from lsm_core.errors import LsmError
from lsm_core.reports import figure_export, report
from lsm_core.reports.figure_export import FigureSize, export_problem, figure_bytes
from tests.helpers import CHROMIUM, need_browser

CLASSES = ["LT-HSC", "ST-HSC", "MPP"]


@pytest.fixture(scope="module")
def histogram():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], 300)
    return report.score_histogram(probs.argmax(1), probs.max(1), CLASSES, 0.5)  # a "≥"-free title, "µ"-free


@pytest.fixture(scope="module")
def ternary():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1, 1], 100)
    fig = report.probability_figure(probs.argmax(1), probs, CLASSES)
    fig.update_layout(title="cells ≥ 0.5 · 0.2 µm/px")  # characters outside Latin-1 must travel in the font
    return fig


@pytest.mark.slow
def test_svg_is_sized_in_millimetres_and_carries_its_font(ternary):
    need_browser()
    svg = figure_bytes(ternary, "svg", FigureSize(89, 70, 7, 300), CHROMIUM).decode("utf-8")
    root = ET.fromstring(svg)
    assert root.get("width") == "89mm" and root.get("height") == "70mm" and root.get("viewBox")
    face = re.search(r"font-family: 'DejaVu Sans'; src: url\(data:font/ttf;base64,([A-Za-z0-9+/=]+)\)", svg)
    assert face, "no embedded font"
    font = TTFont(io.BytesIO(base64.b64decode(face.group(1))))
    cmap = font.getBestCmap()
    assert {ord("≥"), ord("µ"), ord("·"), ord("A")} <= set(cmap)  # the glyphs the figure shows
    assert len(cmap) < 300  # a subset, not the whole font (6,000 glyphs)
    assert "DejaVu Sans" in svg.split("</defs>", 1)[1]  # the text asks for it
    # 7 pt at 96 CSS px per inch
    sizes = {float(v) for v in re.findall(r"font-size: ([0-9.]+)px", svg)}
    assert any(abs(v - 7 * 96 / 72) < 0.01 for v in sizes), sizes


@pytest.mark.slow
def test_pdf_page_is_the_chosen_size_and_embeds_its_fonts(histogram):
    need_browser()
    pdf = figure_bytes(histogram, "pdf", FigureSize(183, 100, 8, 300), CHROMIUM)
    assert pdf.startswith(b"%PDF-")
    box = [float(v) for v in re.search(rb"/MediaBox\s*\[([^\]]*)\]", pdf).group(1).split()]
    mm = 72 / 25.4
    assert box[2] - box[0] == pytest.approx(183 * mm, abs=1.5) and box[3] - box[1] == pytest.approx(100 * mm, abs=1.5)
    assert b"/FontFile2" in pdf and re.search(rb"/BaseFont\s*/[A-Z]{6}\+DejaVuSans", pdf)  # embedded subset


@pytest.mark.slow
@pytest.mark.parametrize("dpi", [300, 600])
def test_png_has_the_pixels_and_the_dpi_asked(histogram, dpi):
    need_browser()
    png = figure_bytes(histogram, "png", FigureSize(89, 60, 8, dpi), CHROMIUM)
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == pytest.approx((89 / 25.4 * dpi, 60 / 25.4 * dpi), abs=3)
        assert image.info["dpi"] == pytest.approx((dpi, dpi), abs=0.5)
        grey = np.asarray(image.convert("L"))
    assert grey.min() < 60 and np.median(grey) > 200  # dark marks (bars, text) on a white page


def test_sizes_out_of_range_and_huge_pngs_are_refused_before_drawing(histogram):
    with pytest.raises(LsmError, match="width 5 is out of range"):
        figure_bytes(histogram, "svg", FigureSize(5, 50))
    with pytest.raises(LsmError, match="million pixels"):
        figure_bytes(histogram, "png", FigureSize(400, 400, 8, 2400))
    with pytest.raises(LsmError, match="format 'jpg'"):
        figure_bytes(histogram, "jpg")


def test_without_chromium_the_export_says_what_to_install(histogram, tmp_path):
    missing = str(tmp_path / "no-chromium")
    problem = export_problem(missing)
    assert problem and "apt-get install chromium" in problem and "HTML download works" in problem
    with pytest.raises(LsmError, match="LSM_CHROMIUM="):
        figure_bytes(histogram, "pdf", FigureSize(), missing)
    assert figure_export.figure_html(histogram).startswith(b"<!doctype html>")  # the offline HTML needs no browser
