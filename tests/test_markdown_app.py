"""What people type is shown as text, never as Markdown (issue #14, item 7).

Batch names, sample metadata, file names and owners reach the History, Results, Compare and Classify pages.
Rendered as Markdown, ``![x](http://host/x.png)`` in a batch name would make every viewer's browser fetch an
image, and ``[Session expired: sign in again](http://host/)`` would show a link that is not the app's. The
pages pass such text through lsm_core.reports.text.escape_markdown (or show it with st.text / in table cells);
this checks every element that Streamlit renders as Markdown (streamlit.testing.v1.AppTest); tests/test_text.py
checks the function itself."""

from __future__ import annotations

import re

import pytest

from tests.helpers import crop_files, field_file, history_page, run_page
from tests.test_text import ICONS, IMG, LINK, unescaped

# node types whose strings are shown as they are (not Markdown)
PLAIN_TYPES = {"text", "code", "json", "arrow_data_frame", "dataframe", "plotly_chart", "exception", "html"}
# proto fields that Streamlit renders as Markdown: element bodies, labels, tooltips, radio options and captions
MARKDOWN_FIELDS = {"body", "label", "help", "caption", "captions"}


def _strings(message, fields=MARKDOWN_FIELDS):
    """Every string of ``fields`` in a protobuf message, nested messages included."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                yield from _strings(item, fields)
        elif field.type == field.TYPE_STRING and field.name in fields:
            yield from value if field.is_repeated else [value]


def markdown_sources(at) -> list[str]:
    """The Markdown source of every element of the page that Streamlit renders as Markdown."""
    out = []
    for node in at._tree:
        proto = getattr(node, "proto", None)
        if proto is None or getattr(node, "type", "") in PLAIN_TYPES or not hasattr(proto, "ListFields"):
            continue
        fields = MARKDOWN_FIELDS | ({"options"} if node.type == "radio" else set())
        out += [s for s in _strings(proto, fields) if s]
    return out


def plain_texts(at) -> list[str]:
    """What st.text shows (always as text)."""
    return [t.value for t in at.text]


LINK_SYNTAX = re.compile(r"(?<!\\)(?:\\\\)*(\]\(|!\[|<https?:)")  # an unescaped ]( , ![ or <http: autolink


def assert_inert(at, *names: str) -> None:
    """No Markdown element renders a link or image, and each of ``names`` is still shown (as text)."""
    sources = markdown_sources(at)
    assert sources, "no Markdown element found: the checker sees nothing"
    bad = [s for s in sources if LINK_SYNTAX.search(s)]
    assert not bad, bad
    bad = [s for s in sources if re.search(r"https?:/", s.replace("\\", ""))]  # an autolink, escapes or not
    assert not bad, bad
    shown = "\n".join([unescaped(s) for s in sources] + plain_texts(at))
    for name in names:
        assert name in shown, f"{name!r} is not shown"


# --- the pages ------------------------------------------------------------------------------------------------
@pytest.fixture
def hostile(app_env, monkeypatch):
    """Classified batches whose name, metadata, owner and file names are Markdown links and images; the
    first has saliency maps. ana is a member, not an administrator (so History names the owner)."""
    from db import queries
    from lsm_core.imaging.readers.archives import RawFile
    from lsm_core.lab.batches import BatchMeta, submit_batch
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.tasks.saliency import submit as submit_saliency
    from lsm_core.lab.worker import Worker

    monkeypatch.setenv("LSM_ADMINS", "boss")
    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    ids = {}
    for key, name, owner, mouse, age, seed in (
        ("img", IMG, "ana", IMG, 70, 700),
        ("link", LINK, LINK, LINK, 700, 710),
        ("plain", "plain young", "ana", "M3", 80, 720),
        ("no_age", f"{IMG} no age", "ana", f"{IMG} 4", None, 730),
    ):
        crops = crop_files(4, seed=seed)
        files = [RawFile(f"{IMG}{i}.png" if i % 2 else f"{LINK}{i}.png", c.data) for i, c in enumerate(crops)]
        if key == "img":
            field = field_file(seed)
            files += [RawFile(f"{LINK}.tif", field.data), RawFile(f"{IMG} broken.png", b"\x89PNG\r\n\x1a\nbroken")]
        meta = BatchMeta(mouse_id=mouse, age_days=age, strain=LINK, gate=ICONS, notes=LINK)
        ids[key] = submit_batch(lab, files, model_id, name, owner=owner, meta=meta).batch_id
    Worker(lab, device="cpu").run(drain=True)
    submit_saliency(lab, ids["img"], "scorecam", top=12, owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    yield lab, ids
    lab.dispose()


def test_history_shows_names_owners_and_metadata_as_text(hostile):
    lab, ids = hostile
    assert_inert(history_page(lab, ids["img"]), IMG)
    at = history_page(lab, ids["link"])  # someone else's batch: the page names its owner
    assert any("or an administrator can rename or delete" in s for s in markdown_sources(at))
    assert_inert(at, LINK)


def test_results_show_names_metadata_and_file_names_as_text(hostile):
    lab, ids = hostile
    at = run_page("pages/results.py", {"batch": str(ids["img"])})
    sources = markdown_sources(at)
    assert any(", p = " in s for s in sources), "the saliency gallery is not shown"
    assert any(s.startswith("Download") for s in sources)
    assert_inert(at, IMG, LINK, ICONS, f"{IMG}1.png", f"{LINK}0.png")
    at = run_page("pages/results.py", {"batch": str(ids["link"])})
    assert_inert(at, LINK)


def test_compare_shows_batch_names_as_text(hostile):
    lab, ids = hostile
    at = run_page("pages/compare.py")
    assert any("fall in no group" in w.value for w in at.warning)
    assert_inert(at, f"{IMG} no age")


def test_classify_refusal_naming_a_batch_is_text(hostile):
    """Adding only files a batch has already is refused with a message that names the batch."""
    from lsm_core.imaging.readers.archives import RawFile

    lab, ids = hostile
    crops = crop_files(4, seed=700)
    files = [RawFile(f"{IMG}{i}.png" if i % 2 else f"{LINK}{i}.png", c.data) for i, c in enumerate(crops)]
    at = run_page()
    at.file_uploader[0].set_value([(f.source, f.data, "image/png") for f in files])
    next(w for w in at.text_input if w.label == "Batch name").set_value(IMG)
    next(b for b in at.button if b.label == "Classify").click()
    at.run()
    next(r for r in at.radio if r.label == "What should happen").set_value("Add the files to the existing batch")
    at.run()
    next(b for b in at.button if b.label == "Add and classify").click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("nothing was added" in e.value for e in at.error)
    assert_inert(at, IMG)


def test_figures_show_user_text_as_text(hostile):
    """Plotly reads <a href>, <b> and friends in trace names and hover text: user text is escaped there too."""
    from lsm_core.reports import compare
    from lsm_core.reports.stats import parse_bins

    lab, ids = hostile
    tag = '<a href="http://127.0.0.1:9/">Session expired</a>'
    from db.schema import Batch

    with lab.begin() as s:
        for key in ("img", "plain"):
            s.get(Batch, ids[key]).strain = tag
            s.get(Batch, ids[key]).mouse_id = f"{tag} {key}"  # two mice (one mouse id would pool them into one)
    chosen = [ids["img"], ids["link"], ids["plain"]]
    with lab() as s:
        by_strain = compare.build(s, chosen, by="strain")
        by_age = compare.build(s, chosen, by="age", bins=parse_bins(compare.DEFAULT_BINS))
        figures = [
            compare.per_mouse_figure(by_strain),
            compare.score_figure(s, by_strain),
            compare.age_figure(by_age, "LT-HSC"),
            compare.per_mouse_figure(by_age),
        ]
    shown = []
    for fig in figures:
        for trace in fig.data:
            shown += [str(trace.name or "")]
            text = getattr(trace, "text", None)
            shown += [str(t) for t in (text if isinstance(text, (list, tuple)) else [text or ""])]
    assert any("&lt;a href" in t for t in shown)  # the tag is shown, as text
    assert not [t for t in shown if "<a" in t], shown
