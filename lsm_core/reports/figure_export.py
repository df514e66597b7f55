"""Figures for a paper: any of the app's plotly figures as SVG, PDF or PNG at a chosen size, font size and DPI.

Drawn by plotly's own exporter, kaleido 1.x, in a headless chromium (the browser that draws them on screen, so
the file is the figure the page shows); offline: no MathJax, plotly.js from the installed plotly. The text is
set in DejaVu Sans (the font matplotlib ships, so it is there wherever the app is) and travels with the file:
chromium embeds the subset it used in a PDF; an SVG gets the same subset as an ``@font-face`` data URI, so
its text stays text (editable in Inkscape or Illustrator) and looks the same on a machine without the font.
Sizes are physical: millimetres (a journal's single column is about 89 mm, a double one 183 mm), font sizes
in points; a PNG is rendered at the DPI asked and says so in its header.

The chromium that draws has no network, loopback included (:func:`offline_browser`): plotly reads a subset of
HTML in a figure's texts (``<span style>``, ``<a href>``), and a figure's text is people's and packages' text,
escaped where the figures are built (:func:`lsm_core.reports.report.plot_text`); should one slip through, its
``url(...)`` or link is fetched from nowhere.
"""

from __future__ import annotations

import atexit
import base64
import copy
import io
import os
import re
import shlex
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from lsm_core.errors import LsmError

FORMATS = ("svg", "pdf", "png")
MIME = {"svg": "image/svg+xml", "pdf": "application/pdf", "png": "image/png", "html": "text/html"}
FONT = "DejaVu Sans"
CSS_PX_PER_MM = 96 / 25.4  # what chromium lays out in
MAX_SIDE_MM = 500.0
MAX_PNG_PIXELS = 100_000_000  # bound what one PNG may take: 600 DPI on a 400 x 400 mm figure is 89 MP


@dataclass(frozen=True)
class FigureSize:
    """A figure's physical size: width and height in mm, the base font size in points, a PNG's DPI."""

    width_mm: float = 120.0
    height_mm: float = 90.0
    font_pt: float = 8.0
    dpi: int = 300

    def checked(self) -> FigureSize:
        for name, value, low, high in (
            ("width", self.width_mm, 20, MAX_SIDE_MM),
            ("height", self.height_mm, 20, MAX_SIDE_MM),
            ("font size", self.font_pt, 4, 24),
            ("DPI", self.dpi, 72, 2400),
        ):
            if not low <= value <= high:
                raise LsmError(f"figure {name} {value:g} is out of range ({low:g} to {high:g})")
        pixels = (self.width_mm / 25.4 * self.dpi) * (self.height_mm / 25.4 * self.dpi)
        if pixels > MAX_PNG_PIXELS:
            raise LsmError(
                f"a PNG of {self.width_mm:g} x {self.height_mm:g} mm at {self.dpi} DPI would have {pixels / 1e6:.0f} "
                f"million pixels (at most {MAX_PNG_PIXELS / 1e6:.0f}): lower the DPI, or take the SVG or PDF"
            )
        return self

    @property
    def css_px(self) -> tuple[int, int]:
        return round(self.width_mm * CSS_PX_PER_MM), round(self.height_mm * CSS_PX_PER_MM)


def font_file() -> Path:
    """DejaVu Sans as matplotlib ships it."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def browser(setting: str | None = None) -> str | None:
    """The chromium kaleido draws with: ``setting`` (LSM_CHROMIUM) when given, else one on the PATH."""
    if setting:
        return setting if Path(setting).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


# What the exporting chromium runs with, after whatever kaleido and choreographer pass (chromium takes the last of a
# switch given twice, so CHOREO_PROXY_SERVER cannot undo them): every http(s) and ws request goes to a proxy at a
# closed port, loopback included (chromium sends 127.0.0.1, ::1 and localhost past any proxy unless told
# ``<-loopback>``), and no host name or address resolves (so no DNS query leaves either); nor does chromium's own
# background traffic run. kaleido loads its page and plotly.js from files and talks over a pipe: it needs none.
OFFLINE_FLAGS = (
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--disable-background-networking",
)
_wrappers: dict[str, str] = {}
_wrappers_lock = threading.Lock()


def _remove(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # not by a forked child that exits normally: the folder is its parent's
        shutil.rmtree(folder, ignore_errors=True)


def _script_folder(prefix: str) -> str:
    """A new private (0700) folder for the wrapper, where a file may be run: the temporary folder, else the
    user's cache folder (a /tmp mounted noexec cannot run it)."""
    for where in (None, str(Path.home() / ".cache")):
        if where is not None and not Path(where).is_dir():
            continue
        folder = tempfile.mkdtemp(prefix=prefix, dir=where)
        if not os.statvfs(folder).f_flag & getattr(os, "ST_NOEXEC", 0):
            atexit.register(_remove, folder, os.getpid())
            return folder
        shutil.rmtree(folder, ignore_errors=True)
    raise LsmError("figure export needs a folder where it may run a file (the temporary folder is mounted noexec)")


def offline_browser(path: str) -> str:
    """An executable that runs the chromium at ``path`` with :data:`OFFLINE_FLAGS` after the arguments it is given:
    what kaleido is told to start (choreographer cannot pass ``--proxy-bypass-list``). Written once per process, in
    a private folder, the path shell-quoted."""
    if os.name != "posix":
        raise LsmError("figure export runs chromium without network through a shell script: POSIX systems only")
    path = os.path.abspath(path)
    with _wrappers_lock:
        known = _wrappers.get(path)
        if known and Path(known).is_file():
            return known
        # a snap's chromium (Ubuntu) reads only under the home folder: choreographer puts its profile there when
        # the path it runs says "snap", so the wrapper's path says it too
        folder = _script_folder("lsm-snap-chromium-" if "snap" in path else "lsm-chromium-")
        script = Path(folder) / "chromium"
        flags = " ".join(shlex.quote(flag) for flag in OFFLINE_FLAGS)
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(path)} "$@" {flags}\n', encoding="utf-8")
        script.chmod(0o700)
        _wrappers[path] = str(script)
        return str(script)


def export_problem(setting: str | None = None) -> str | None:
    """Why SVG, PDF and PNG cannot be drawn here (None: they can)."""
    if browser(setting) is None:
        where = f"LSM_CHROMIUM={setting} is not a file" if setting else "no chromium or Chrome on the PATH"
        return (
            f"SVG, PDF and PNG figures are drawn by a headless chromium, and there is none ({where}): the "
            "administrator installs it (Debian: apt-get install chromium) or sets LSM_CHROMIUM. The HTML "
            "download works without it."
        )
    return None


def styled(fig: go.Figure, size: FigureSize) -> go.Figure:
    """A copy of ``fig`` laid out for print: its physical size, the embedded font at the asked size, white."""
    out = go.Figure(copy.deepcopy(fig.to_dict()))
    width, height = size.css_px
    px = size.font_pt * 96 / 72
    out.update_layout(
        width=width,
        height=height,
        font={"family": FONT, "size": px, "color": "#000"},
        paper_bgcolor="white",
        plot_bgcolor="white",
        margin={"l": 8 * px, "r": 2 * px, "t": 3 * px, "b": 6 * px},
    )  # the figure's own template kept: its shapes (threshold lines) are drawn as the page draws them
    axes = {"automargin": True, "showline": True, "linecolor": "#000", "gridcolor": "#e6e6e6", "ticks": "outside"}
    out.update_xaxes(zerolinecolor="#bbb", **axes)
    out.update_yaxes(zerolinecolor="#bbb", **axes)
    if "ternary" in out.layout and out.layout.ternary is not None:
        side = {"linecolor": "#000", "gridcolor": "#e6e6e6", "ticks": "outside"}
        out.update_ternaries(bgcolor="white", aaxis=side, baxis=side, caxis=side)
    return out


def figure_bytes(fig: go.Figure, fmt: str, size: FigureSize | None = None, chromium: str | None = None) -> bytes:
    """``fig`` as an SVG, PDF or PNG file of ``size`` (LsmError when it cannot be drawn here, saying why)."""
    if fmt not in FORMATS:
        raise LsmError(f"figure format {fmt!r}: choose {', '.join(FORMATS)}")
    size = (size or FigureSize()).checked()
    found = browser(chromium)
    if found is None:
        raise LsmError(export_problem(chromium) or "no chromium")
    path = offline_browser(found)
    import kaleido

    width, height = size.css_px
    scale = size.dpi / 96 if fmt == "png" else 1.0
    try:
        data = kaleido.calc_fig_sync(
            styled(fig, size),
            opts={"format": fmt, "width": width, "height": height, "scale": scale},
            kopts={"path": path, "mathjax": False, "timeout": 120},
        )
    except Exception as exc:  # kaleido and choreographer raise their own kinds: said, never a crash
        raise LsmError(f"the figure could not be drawn as {fmt.upper()}: {type(exc).__name__}: {exc}") from None
    if fmt == "svg":
        return embed_font(data.decode("utf-8"), size).encode("utf-8")
    if fmt == "png":
        return _with_dpi(data, size.dpi)
    return data


def _with_dpi(png: bytes, dpi: int) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        buf = io.BytesIO()
        image.save(buf, format="PNG", dpi=(dpi, dpi), optimize=True)
    return buf.getvalue()


def _text_of(svg: str) -> str:
    """Every character the SVG's text elements show (entities read)."""
    import html

    return html.unescape("".join(re.findall(r"<text[^>]*>(.*?)</text>", svg, flags=re.S)))


def font_subset(text: str) -> bytes:
    """DejaVu Sans with only the glyphs of ``text`` (and the basic Latin ones), as a TTF."""
    import logging

    from fontTools import subset

    logging.getLogger("fontTools.subset").setLevel(logging.ERROR)  # "FFTM NOT subset": a timestamp table, dropped
    options = subset.Options()
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.notdef_outline = True
    font = subset.load_font(str(font_file()), options)
    subsetter = subset.Subsetter(options)
    chars = {ord(c) for c in text if not c.isspace()} | set(range(0x20, 0x7F))
    subsetter.populate(unicodes=sorted(chars))
    subsetter.subset(font)
    buf = io.BytesIO()
    font.save(buf)
    return buf.getvalue()


def embed_font(svg: str, size: FigureSize) -> str:
    """The SVG with its font subset embedded as an ``@font-face`` and its size said in millimetres."""
    data = base64.b64encode(font_subset(_text_of(svg))).decode("ascii")
    style = (
        f"<style>@font-face {{ font-family: '{FONT}'; src: url(data:font/ttf;base64,{data}) format('truetype'); }}"
        "</style>"
    )
    match = re.match(r"(<svg\b[^>]*>)", svg)
    if match is None:
        raise LsmError("kaleido returned something that is not an SVG")
    head = match.group(1)
    width, height = size.css_px
    sized = re.sub(r'\swidth="[^"]*"', f' width="{size.width_mm:g}mm"', head, count=1)
    sized = re.sub(r'\sheight="[^"]*"', f' height="{size.height_mm:g}mm"', sized, count=1)
    if "viewBox" not in sized:
        sized = sized[:-1] + f' viewBox="0 0 {width} {height}">'
    return sized + f"<defs>{style}</defs>" + svg[len(head) :]


def figure_html(fig: go.Figure) -> bytes:
    """A figure as a self-contained HTML file (plotly.js inline: opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
