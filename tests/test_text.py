"""lsm_core.reports.text.escape_markdown: the one rule by which people's text reaches Markdown (the pages'
Streamlit Markdown, a model card, an exported package's README), checked against what Streamlit's Markdown
dialect acts on, including what it finds after escapes are read (icons, emoji shortcodes, autolinks)."""

from __future__ import annotations

import html
import re

import pytest

from lsm_core.reports.text import escape_markdown

IMG = "![x](http://127.0.0.1:9/x.png)"
LINK = "[Session expired: sign in again](http://127.0.0.1:9/)"
ICONS = ":material/lock: :streamlit: :smile: :red[red] $x^2$ <b>bold</b> &amp; ~~gone~~ www.example.org a@example.org"
ENTITY = re.compile(r"&(?:amp|lt|gt);")  # what escape_markdown writes for &, < and >


def unescaped(source: str) -> str:
    """The text of a Markdown source as a reader sees it: escapes and entities read, the invisible word joiner
    dropped."""
    return html.unescape(re.sub(r"\\(.)", r"\1", source)).replace("\u2060", "")


@pytest.mark.parametrize("text", [IMG, LINK, ICONS, "# heading\n> quote\n- item\n1. one\n| a | b |\n---", "a\\](b)"])
def test_escape_markdown_leaves_nothing_for_markdown_to_act_on(text):
    out = escape_markdown(text)
    assert unescaped(out) == text  # the reader sees exactly the text
    # <, > and & only as the entities it wrote (Python-Markdown reads \< as HTML); every other ASCII punctuation
    # character is escaped (an odd number of backslashes before it)
    rest = ENTITY.sub("E", out)
    assert not re.search(r"[<>&]", rest), rest
    for m in re.finditer(r"[!-/:-@\[-`{-~]", rest):
        if m.group() == "\\":
            continue
        backslashes = len(rest[: m.start()]) - len(rest[: m.start()].rstrip("\\"))
        assert backslashes % 2 == 1, (rest, m.start())
    # what Streamlit's Markdown finds in the text after the escapes are read (so escapes alone cannot stop it):
    # icons (:material/x: is rewritten :material_x: before parsing), the logo, emoji shortcodes, GFM autolinks
    read = re.sub(r"\\(.)", r"\1", out).replace(":material/", ":material_")
    for pattern in (
        r":material_\w+:",
        r":streamlit:",
        r":\+1:|:-1:|:[\w-]+:",
        r"(https?://|www(?=\.))[-.\w]+",
        r"[-.\w+]+@[-\w]+(\.[-\w]+)+",
    ):
        assert not re.search(pattern, read), (pattern, read)


def test_escape_markdown_keeps_ordinary_messages_readable():
    message = "nothing was added: all 3 file(s) are in batch 'M17' already; use label:range"
    assert unescaped(escape_markdown(message)) == message
    assert "\u2060" not in escape_markdown(message)  # a word joiner only where Markdown would act


def test_html_is_written_as_entities_that_every_renderer_shows_as_text():
    """An HTML tag in a name reaches no renderer as HTML, Python-Markdown's (a package README) included."""
    import markdown

    out = escape_markdown('<img src="http://127.0.0.1:9/x.png"> & <b>M1</b>')
    assert out.startswith("&lt;img")
    rendered = markdown.markdown(out)
    assert "<img" not in rendered and "<b>" not in rendered
    assert "&lt;img" in rendered and "&lt;b&gt;M1" in rendered  # shown as the characters typed


def test_a_jobs_error_shown_to_members_names_no_server_directory():
    """The examples of without_server_paths (a model store's path shortened, ratios and URLs left), and a
    path of two parts stays whole (it says nothing of the server's layout)."""
    import doctest

    from lsm_core.reports import text as text_module
    from lsm_core.reports.text import without_server_paths

    assert doctest.testmod(text_module).failed == 0
    message = "read /var/lib/lsm/blobs/ab/abcdef: gone; /tmp/x stays; see /a/b/c/d.tif and /e/f/g"
    assert without_server_paths(message) == "read …/ab/abcdef: gone; /tmp/x stays; see …/c/d.tif and …/f/g"
