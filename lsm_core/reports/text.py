"""People's text put in Markdown as literal text: one rule for the pages (Streamlit's Markdown) and for the
Markdown this library writes (a model card, the README of an exported package).

Batch names, sample metadata, file names, owners, a package's description and authors are people's text: shown
through :func:`escape_markdown`, a link or an image in them is shown as the characters typed, never fetched or
followed, and no emphasis, heading, table, icon or HTML of them stays live.
"""

from __future__ import annotations

import re

# Every ASCII punctuation character: CommonMark lets a backslash escape each of them, and together they are all
# the syntax of Streamlit's Markdown (GFM links, images, emphasis, code, tables, headings, quotes, lists, HTML,
# entities, <autolinks>; remark-math's $; remark-directive's :red[...] and :help[...]).
_MARKDOWN_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")
# What Markdown looks for in the text *after* the escapes are read, so that escaping cannot stop it: Streamlit's
# :material/...: icons, :streamlit:, :emoji: shortcodes, and GFM's bare http://, www. and e-mail autolinks. An
# invisible word joiner (U+2060) inside each breaks the pattern and changes nothing a person reads.
_AFTER_ESCAPES = re.compile(r"(?<=:)(?=[\w+\-/]+:|//)|(?<=@)(?=[\w\-]+\.[\w\-])|(?i:(?<=www)(?=\.))")
_WORD_JOINER = "\u2060"
# ``<``, ``>`` and ``&`` as entities, not backslash escapes: a renderer that is not CommonMark (Python-Markdown,
# which reads a package's README) takes ``\<span ...>`` for HTML; every CommonMark renderer, Streamlit's included,
# shows an entity as its character.
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape_markdown(text: object) -> str:
    """``text`` as Markdown shows it literally: in any element of Streamlit that renders Markdown (st.markdown,
    st.caption, st.info / warning / error / success, headers, widget labels and help) and in the Markdown this
    library writes. The one function through which user text reaches Markdown.

    Every ASCII punctuation character gets a backslash (``<``, ``>`` and ``&`` become entities), and a word joiner
    goes where a renderer would still find an icon, an emoji shortcode or an autolink once the escapes are read.
    """
    joined = _AFTER_ESCAPES.sub(_WORD_JOINER, str(text))
    return _MARKDOWN_PUNCTUATION.sub(lambda m: _ENTITIES.get(m.group(), "\\" + m.group()), joined)


# An absolute POSIX path of three or more parts (a server's file: /srv/lsm/models/demo-lsm/1).
_SERVER_PATH = re.compile(r"(?<![\w.~/-])/(?:[\w.+@-]+/){2,}[\w.+@-]+")


def without_server_paths(text: str) -> str:
    """``text`` with each absolute path of the server shortened to its last two parts (``…/demo-lsm/1``): what a
    job's error says to the member who reads it on a page, without where the server keeps its files (the worker's
    log and ``lsm jobs`` keep the whole message for administrators).

    >>> without_server_paths("/srv/lsm/models/demo-lsm/1: the package has no weights.safetensors")
    '…/demo-lsm/1: the package has no weights.safetensors'
    >>> without_server_paths("a 1/2/3 ratio and a URL https://example.org/a/b/c stay")
    'a 1/2/3 ratio and a URL https://example.org/a/b/c stay'
    """
    return _SERVER_PATH.sub(lambda m: "…/" + "/".join(m.group(0).rsplit("/", 2)[-2:]), text)
