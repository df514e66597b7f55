"""The review queue on the results page (issue #17 items 1 and 9), in Streamlit's AppTest: the framed cell is
the most uncertain one, a class button (keys 1/2/3) or "not a cell" (X) labels it and moves on, the grid
labels a cell in one click, a label can be taken back, exclusions change the counts at once, and someone
else's batch can be looked at but not labelled."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from db.schema import CellLabel
from lsm_core.lab import cell_labels
from lsm_core.lab.open_lab import open_lab
from tests.helpers import run_page, texts


def _current(lab, batch_id):
    with lab() as s:
        rows = s.scalars(select(CellLabel).where(CellLabel.batch_id == batch_id, CellLabel.current.is_(True)))
        return {r.cell_id: (r.labelled_by, r.label, r.excluded) for r in rows if r.label or r.excluded}


def _metric(at, label):
    return next(m for m in at.metric if m.label == label).value


def test_the_keys_label_the_framed_cell_most_uncertain_first_and_the_counts_follow(with_batch):
    lab = open_lab()
    batch_id = with_batch.batch_id
    order = [q.cell_id for q in cell_labels.queue(lab, [batch_id], "ana")]
    at = run_page("pages/results.py", {"batch": str(batch_id)})
    total = int(_metric(at, "Cells").replace(",", ""))
    assert total == len(order)
    assert f"Cell 1 of {len(order)} in this order" in texts(at)
    one = at.button(key="results_review_class_0")
    assert one.proto.shortcut.lower() == "1" and at.button(key="results_review_not").proto.shortcut.lower() == "x"
    first_class = one.label
    one.click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert _current(lab, batch_id) == {order[0]: ("ana", first_class, None)}
    assert f"Cell 2 of {len(order)} in this order" in texts(at)  # moved on to the next most uncertain cell
    assert _metric(at, "Cells") == f"{total:,}"  # a class label does not change what counts

    at.selectbox(key="results_review_reason").set_value("doublet").run()
    at.button(key="results_review_not").click().run()
    assert _current(lab, batch_id)[order[1]] == ("ana", None, "doublet")
    assert _metric(at, "Cells") == f"{total - 1:,}"  # the composition leaves it out at once
    assert "1 found object(s) that reviewers marked as not a cell" in texts(at)

    at.button(key="results_review_prev").click().run()  # back to the doublet: take it back
    assert f"Cell 2 of {len(order)} in this order" in texts(at)
    assert "Your label: not a cell (doublet)" in texts(at)
    at.button(key="results_review_back").click().run()
    assert order[1] not in _current(lab, batch_id)
    assert _metric(at, "Cells") == f"{total:,}"
    assert [x.text for x in cell_labels.history(lab, order[1])] == ["not a cell (doublet)", "no label"]
    lab.dispose()


def test_only_unlabelled_cells_and_a_grid_tile_labels_its_cell_in_one_click(with_batch):
    lab = open_lab()
    batch_id = with_batch.batch_id
    order = cell_labels.queue(lab, [batch_id], "ana")
    at = run_page("pages/results.py", {"batch": str(batch_id)})
    third = order[2]
    at.segmented_control(key=f"results_tile_{third.cell_id}_None_0").set_value("not a cell").run()
    assert not at.exception, [e.message for e in at.exception]
    assert _current(lab, batch_id) == {third.cell_id: ("ana", None, "debris")}
    at.toggle(key="results_review_new").set_value(True).run()
    assert f"Cell 1 of {len(order) - 1} in this order" in texts(at)
    at.button(key="results_review_class_1").click().run()  # labelled cells leave the queue: the next slides in
    assert f"Cell 1 of {len(order) - 2} in this order" in texts(at)
    assert set(_current(lab, batch_id)) == {third.cell_id, order[0].cell_id}
    lab.dispose()


def test_a_tiles_label_clicked_again_stays_and_taking_it_back_is_its_own_button(with_batch):
    """Issue 26 item 6: clicking the class a tile's cell is labelled with keeps the label (the segmented control
    deselects it: the tile is drawn again with the label); "Take my label back" under the tile takes it back."""
    lab = open_lab()
    batch_id = with_batch.batch_id
    q = cell_labels.queue(lab, [batch_id], "ana")[2]
    at = run_page("pages/results.py", {"batch": str(batch_id)})
    assert not any(b.key == f"results_tile_back_{q.cell_id}" for b in at.button)  # nothing to take back yet
    at.segmented_control(key=f"results_tile_{q.cell_id}_None_0").set_value("MPP").run()
    assert _current(lab, batch_id) == {q.cell_id: ("ana", "MPP", None)}
    tile = at.segmented_control(key=f"results_tile_{q.cell_id}_MPP_0")
    assert tile.value == "MPP"
    tile.set_value(None).run()  # MPP clicked again
    assert not at.exception, [e.message for e in at.exception]
    assert _current(lab, batch_id) == {q.cell_id: ("ana", "MPP", None)}  # kept
    assert at.segmented_control(key=f"results_tile_{q.cell_id}_MPP_1").value == "MPP"  # and shown again
    assert [x.text for x in cell_labels.history(lab, q.cell_id)] == ["MPP"]
    at.button(key=f"results_tile_back_{q.cell_id}").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert _current(lab, batch_id) == {}
    assert [x.text for x in cell_labels.history(lab, q.cell_id)] == ["MPP", "no label"]
    (tile,) = [w for w in at.get("button_group") if w.key.startswith(f"results_tile_{q.cell_id}_None_")]
    assert tile.value is None
    lab.dispose()


def test_an_added_cell_says_added_in_the_review_queue_and_the_cell_table(with_batch):
    """Issue 26 item 6: a cell a person added carries ``added`` in the review queue (the framed cell and its
    tile) as in the results page's cell table."""
    from db.schema import Cell, Image
    from lsm_core.lab.tasks import add_cell
    from lsm_core.lab.worker import Worker
    from tests.test_review_fields import empty_point

    lab = open_lab()
    batch_id = with_batch.batch_id
    with lab() as s:
        field = s.scalars(select(Image).where(Image.batch_id == batch_id, Image.kind == "field")).one()
    add_cell.submit(lab, field.id, *empty_point(lab, field), "ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        added = s.scalars(select(Cell).where(Cell.image_id == field.id, Cell.flags == "added")).one()
    at = run_page("pages/results.py", {"batch": str(batch_id)})
    table = next(d.value for d in at.dataframe if "flags" in d.value.columns)
    row = table[(table["file"] == field.file) & (table["#"] == added.idx)]
    assert list(row["flags"]) == ["added"]
    at.session_state["results_review_cell"] = added.id  # the added cell framed (as "Look closer" does)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert f"cell {added.idx} of {field.file} · added · model:" in texts(at)  # the framed cell
    tiles = [c.value for c in at.caption if f"cell {added.idx} of {field.file}" in c.value.replace("\\", "")]
    assert tiles and all(c.endswith("· added") for c in tiles), tiles
    lab.dispose()


def test_someone_elses_batch_can_be_looked_at_but_not_labelled(with_batch, monkeypatch):
    lab = open_lab()
    monkeypatch.setenv("LSM_ADMINS", "boss")
    monkeypatch.setenv("LSM_USER", "bob")
    at = run_page("pages/results.py", {"batch": str(with_batch.batch_id)})
    assert "only they or an administrator can label its cells" in texts(at)
    assert at.button(key="results_review_class_0").disabled and at.button(key="results_review_not").disabled
    assert not at.button(key="results_review_next").disabled  # looking is allowed
    lab.dispose()


def press(page, key: str, then: str, done) -> None:
    """Press ``key`` on the idle page and wait for ``then``. The first key pressed after the page is drawn is
    dropped in about one run in three, though Streamlit's status widget says the page is idle (cause not found;
    a second press always worked): it is pressed again only when ``done()`` (the database) says the press
    stored nothing, so a key that labels twice still fails the test."""
    from playwright.sync_api import expect

    from tests.helpers import settle

    for attempt in range(3):
        settle(page)
        page.keyboard.press(key)
        try:
            expect(page.get_by_text(then)).to_be_visible(timeout=15_000)
            return
        except AssertionError:
            if done() or attempt == 2:
                raise


def test_labelling_with_the_keyboard_in_chromium_changes_the_composition(app_env, with_batch, tmp_path):
    """Chromium, through the app's own server: keys X and 1 label the framed cells, the Cells metric (the
    composition's total) loses the cell marked as not a cell, and the database holds both labels."""
    from playwright.sync_api import expect, sync_playwright

    from tests.helpers import ARTIFACTS, launch, need_browser, served_app

    need_browser()
    lab = open_lab()
    batch_id = with_batch.batch_id
    order = [q.cell_id for q in cell_labels.queue(lab, [batch_id], "ana")]
    total = len(order)
    ARTIFACTS.mkdir(exist_ok=True)
    with (
        served_app(app_env, tmp_path / "server.log", LSM_USER="ana", LSM_PREP_WORKERS="0") as url,
        sync_playwright() as p,
    ):
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{url}/batch-results?batch={batch_id}")
        expect(page.get_by_text(f"Cell 1 of {total} in this order")).to_be_visible(timeout=90_000)
        cells = page.get_by_test_id("stMetric").filter(has_text="Cells").first
        expect(cells).to_contain_text(f"{total:,}", timeout=60_000)
        page.get_by_role("heading", name="Results").click()  # the keys go to the page, not to a widget
        press(page, "x", f"Cell 2 of {total} in this order", lambda: len(_current(lab, batch_id)) == 1)
        expect(cells).to_contain_text(f"{total - 1:,}", timeout=60_000)
        expect(page.get_by_text("1 found object(s) that reviewers marked as not a cell")).to_be_visible()
        press(page, "1", f"Cell 3 of {total} in this order", lambda: len(_current(lab, batch_id)) == 2)
        page.get_by_text("Review", exact=True).first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "review-keys.png"))
        browser.close()
    labels = _current(lab, batch_id)
    assert labels[order[0]] == ("ana", None, "debris")
    assert labels[order[1]][:2] == ("ana", "LT-HSC") and set(labels) == {order[0], order[1]}
    lab.dispose()


def test_the_review_page_queues_a_persons_batches_together_most_uncertain_first(app_env, monkeypatch):
    """Item 6: one queue over several batches (by default the person's own), the most uncertain cell of any of
    them first; a colleague's batch joins when asked, read-only for a member."""
    from db import queries
    from lsm_core.lab.batches import submit_batch
    from lsm_core.lab.worker import Worker
    from tests.helpers import crop_files

    monkeypatch.setenv("LSM_ADMINS", "boss")
    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    mine = [submit_batch(lab, crop_files(5, seed=s, prefix=f"a{s}_"), model_id, f"ana {s}", owner="ana").batch_id
            for s in (1, 2)]  # fmt: skip
    theirs = submit_batch(lab, crop_files(4, seed=3, prefix="b_"), model_id, "bob's", owner="bob").batch_id
    Worker(lab, device="cpu").run(drain=True)
    order = cell_labels.queue(lab, mine, "ana")
    assert {q.batch_id for q in order} == set(mine) and len(order) == 10
    at = run_page("pages/review.py")
    assert f"Cell 1 of {len(order)} in this order" in texts(at)
    first = order[0]
    assert f"cell {first.idx} of {first.file}, batch #{first.batch_id} ana" in texts(at)
    at.button(key="review_review_class_2").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert _current(lab, first.batch_id) == {first.cell_id: ("ana", "MPP", None)}

    at.toggle(key="review_mine").set_value(False).run()  # the lab's batches: bob's joins the queue
    everyone = cell_labels.queue(lab, [*mine, theirs], "ana")
    assert f"of {len(everyone)} in this order" in texts(at)
    bobs = next(i for i, q in enumerate(everyone) if q.batch_id == theirs)
    # walk to bob's first cell from where the page stands (after ana's label: cell 2). The demo networks have
    # random weights, so bob's cell may come before or after it: the walk goes either way
    here = int(re.search(r"Cell (\d+) of", texts(at)).group(1)) - 1
    step = "review_review_next" if bobs > here else "review_review_prev"
    for _ in range(abs(bobs - here)):
        at.button(key=step).click().run()
    assert f"Cell {bobs + 1} of" in texts(at)
    assert at.button(key="review_review_class_0").disabled  # ana is a member: bob's cells are read-only
    lab.dispose()


@pytest.mark.slow
def test_marking_a_cell_not_a_cell_keeps_the_review_page_standing_in_chromium(app_env, with_batch, tmp_path):
    """The walk-through's crash: the Batches choice was labelled with the batch's counted cells, and Streamlit
    keeps a multiselect's choice by its label, so after X (one cell fewer counted) the next run got a label
    where a batch id belongs ("bad argument type for built-in operation") and the page showed only an error."""
    from playwright.sync_api import expect, sync_playwright

    from tests.helpers import launch, need_browser, served_app

    need_browser()
    lab = open_lab()
    batch_id = with_batch.batch_id
    total = len(cell_labels.queue(lab, [batch_id], "ana"))
    with (
        served_app(app_env, tmp_path / "server.log", LSM_USER="ana", LSM_PREP_WORKERS="0") as url,
        sync_playwright() as p,
    ):
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{url}/review-cells")
        expect(page.get_by_text(f"Cell 1 of {total} in this order")).to_be_visible(timeout=90_000)
        page.get_by_role("heading").first.click()  # the keys go to the page, not to a widget
        press(page, "x", f"Cell 2 of {total} in this order", lambda: len(_current(lab, batch_id)) == 1)
        press(page, "ArrowRight", f"Cell 3 of {total} in this order", lambda: False)
        expect(page.get_by_text("This app has encountered an error")).to_have_count(0)
        browser.close()
    lab.dispose()
