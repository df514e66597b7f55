"""The everyday path in a real browser, with two people at once: ana in chromium, bob through the library
(as the command line does). Items of the everyday-path issue that only a browser shows: the History page
acts on the batch ana chose even when bob's new batch shifts the rows; a delete resets its confirmation and
says what it deleted; adding files to a batch adds only new ones; saliency maps appear by themselves.
Screenshots go to artifacts/ (git-ignored).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image as PILImage

from lsm_core.lab import batches
from tests.helpers import ARTIFACTS, add_tiny_demo_models, crop_files, lab_at, launch, need_browser, served_app, settle

ROW_PX = 35  # st.dataframe's default row height (header and rows)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    tmp_path = tmp_path_factory.mktemp("everyday")
    add_tiny_demo_models(tmp_path / "data" / "models", train_epochs=1)
    with served_app(tmp_path / "data", tmp_path / "server.log", LSM_USER="ana") as url:
        yield url, tmp_path / "data"


@pytest.fixture(scope="module")
def library(server):
    """What bob uses: the library on the app's own database and blob store."""
    from db import queries

    _, data = server
    lab = lab_at(data)
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    yield lab, model_id
    lab.dispose()


def submit(library, name, n, seed, owner):

    lab, model_id = library
    return batches.submit_batch(lab, crop_files(n, seed=seed, prefix=f"{name}-"), model_id, name, owner=owner)


def wait_done(library, batch_id, timeout=120):
    import time

    from db.schema import Batch

    lab = library[0]
    deadline = time.time() + timeout
    while time.time() < deadline:
        with lab() as s:
            if s.get(Batch, batch_id).status == "done":
                return
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} was not done within {timeout} s")


def select_row(page, row: int) -> None:
    """Tick the row marker of the ``row``-th row (0 = top) of the page's first table."""
    box = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    page.mouse.click(box["x"] + 14, box["y"] + ROW_PX * (row + 1) + ROW_PX / 2)


@pytest.mark.slow
def test_history_acts_on_the_batch_chosen_while_a_colleague_submits(server, library):
    from playwright.sync_api import expect, sync_playwright

    from db.schema import AuditEvent, Batch

    url, _ = server
    lab = library[0]
    older = submit(library, "A1 8w", 3, seed=1, owner="ana")
    chosen = submit(library, "A2 20m", 3, seed=2, owner="ana")
    wait_done(library, chosen.batch_id)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(url)
        page.get_by_role("link", name="History").click()
        expect(page.get_by_role("heading", name="History")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("2 batch(es)")).to_be_visible(timeout=30_000)
        select_row(page, 0)  # the top row: A2 20m
        expect(page.get_by_text(f"Selected: batch #{chosen.batch_id}")).to_be_visible(timeout=30_000)

        theirs = submit(library, "bob's", 2, seed=3, owner="bob")  # now the top row

        # "Open results" opens what ana chose, not what is now in the row she ticked
        page.get_by_role("button", name="Open results").click()
        expect(page.get_by_role("heading", name="Results")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("heading", name="A2 20m")).to_be_visible(timeout=60_000)
        assert f"batch={chosen.batch_id}" in page.url
        page.get_by_role("link", name="History").click()
        expect(page.get_by_text("3 batch(es)")).to_be_visible(timeout=30_000)
        select_row(page, 1)  # rows now: bob's, A2 20m, A1 8w
        expect(page.get_by_text(f"Selected: batch #{chosen.batch_id}")).to_be_visible(timeout=30_000)

        page.get_by_role("button", name="Delete").click()
        page.get_by_text(f"Yes, delete batch #{chosen.batch_id}").click()
        expect(page.get_by_role("button", name="Delete for good")).to_be_enabled(timeout=30_000)
        page.get_by_role("button", name="Delete for good").click()
        expect(
            page.get_by_text(re.compile(rf"Deleted batch #{chosen.batch_id} .A2 20m. with its 3 images"))
        ).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "everyday-1-deleted.png"), full_page=True)
        # the confirmation is gone with the selection: one more click cannot delete the next batch
        expect(page.get_by_role("button", name="Delete for good")).to_have_count(0)
        expect(page.get_by_text(re.compile(r"^Selected: batch"))).to_have_count(0)

        # a rename bound to a batch that a colleague deletes meanwhile is refused, not applied elsewhere
        expect(page.get_by_text("2 batch(es)")).to_be_visible(timeout=30_000)
        select_row(page, 1)  # rows now: bob's, A1 8w
        expect(page.get_by_text(f"Selected: batch #{older.batch_id}")).to_be_visible(timeout=30_000)
        from lsm_core.lab import batches

        batches.delete(lab, older.batch_id, "ana")  # (ana, in another tab)
        page.get_by_role("button", name="Rename").click()
        page.get_by_role("textbox", name="New name").fill("renamed")
        page.get_by_role("button", name="Save the new name").click()
        expect(
            page.get_by_text(
                re.compile(rf"batch #{older.batch_id} (no longer exists|is no longer in the list)", re.IGNORECASE)
            )
        ).to_be_visible(timeout=30_000)
        browser.close()

    with lab() as s:
        assert s.get(Batch, chosen.batch_id) is None  # what ana chose is gone
        assert s.get(Batch, theirs.batch_id).name == "bob's"  # bob's batch untouched, not renamed
        deletes = [e.target for e in s.query(AuditEvent).filter(AuditEvent.action == "delete")]
    assert deletes == [f"batch {chosen.batch_id}", f"batch {older.batch_id}"]


@pytest.mark.slow
def test_adding_files_to_a_batch_adds_only_the_new_ones(server, library, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    from sqlalchemy import select

    from db.schema import Batch, Image
    from lsm_core.imaging import synthetic

    url, _ = server
    lab = library[0]
    crops, _ = synthetic.make_crops("lsm", 21, seed=60)
    paths = []
    for i, c in enumerate(crops):
        path = tmp_path / f"crop{i:02d}.png"
        PILImage.fromarray(np.round(c * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.goto(url)
        expect(page.get_by_role("heading", name="Classify")).to_be_visible(timeout=60_000)
        page.locator("input[type=file]").set_input_files(paths[:20])
        expect(page.get_by_text("crop19.png")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stFileUploader").get_by_text("crop00.png")).to_have_count(1)
        settle(page)
        page.get_by_label("Batch name").fill("twenty crops")
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_role("heading", name="Composition")).to_be_visible(timeout=180_000)
        expect(page.locator("input[type=file]")).to_have_count(1, timeout=30_000)  # the new, empty uploader
        assert page.locator("input[type=file]").evaluate("el => el.files.length") == 0
        # no file left in the uploader (the results below may name the files: "crop00.png: no pixel size ...")
        expect(page.get_by_test_id("stFileUploader").get_by_text("crop00.png")).to_have_count(0)
        submit(library, "bob's own batch", 3, seed=61, owner="bob")  # a colleague at the same time

        page.locator("input[type=file]").set_input_files(paths)  # the 20 again, and one new
        expect(page.get_by_text("crop20.png")).to_be_visible(timeout=30_000)
        settle(page)
        page.get_by_label("Batch name").fill("twenty crops")
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_text(re.compile("You already have a batch called"))).to_be_visible(timeout=30_000)
        page.get_by_text("Add the files to the existing batch").click()
        page.get_by_role("button", name="Add and classify").click()
        expect(page.get_by_text(re.compile(r"1 new image\(s\) added to batch #\d+"))).to_be_visible(timeout=60_000)
        expect(page.get_by_text(re.compile(r"20 file\(s\) skipped"))).to_be_visible()
        expect(page.get_by_role("heading", name="Composition")).to_be_visible(timeout=180_000)
        page.screenshot(path=str(ARTIFACTS / "everyday-2-added.png"), full_page=True)
        browser.close()
    with lab() as s:
        batch = s.scalars(select(Batch).where(Batch.name == "twenty crops")).one()
        shas = s.scalars(select(Image.sha256).where(Image.batch_id == batch.id)).all()
        bobs = s.scalars(select(Batch).where(Batch.name == "bob's own batch")).one()
        n_bob = len(s.scalars(select(Image.id).where(Image.batch_id == bobs.id)).all())
    assert len(shas) == len(set(shas)) == 21
    assert n_bob == 3 and bobs.owner == "bob"  # the colleague's batch untouched by the addition


@pytest.mark.slow
def test_saliency_maps_appear_without_a_reload(server, library):
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    sub = submit(library, "for maps", 12, seed=70, owner="ana")
    wait_done(library, sub.batch_id)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 3000})
        page.goto(url)
        page.get_by_role("link", name="Results").click()
        expect(page.get_by_role("heading", name="Results")).to_be_visible(timeout=60_000)
        page.get_by_role("combobox", name="Batch").click()
        page.get_by_role("option", name=re.compile(rf"^#{sub.batch_id} for maps")).click()
        page.get_by_text("Grad-CAM", exact=True).click()
        page.get_by_role("button", name=re.compile("^Compute Grad-CAM for the top 12")).click()
        # no reload, no click: the section polls its job and shows the maps when they are ready
        expect(page.get_by_text(re.compile("Bright = evidence for the predicted class"))).to_be_visible(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "everyday-3-saliency.png"), full_page=True)
        browser.close()


@pytest.mark.slow
def test_a_link_to_a_page_opens_it_on_a_fresh_server_without_page_not_found(tmp_path):
    """The first session after a start used to see Streamlit's old pages/ list: "Page not found" over the page."""
    from playwright.sync_api import expect, sync_playwright

    need_browser()
    add_tiny_demo_models(tmp_path / "data" / "models")
    with served_app(tmp_path / "data", tmp_path / "server.log", LSM_USER="ana") as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(f"{url}/batch-history")  # the very first request of this server
        expect(page.get_by_role("heading", name="History")).to_be_visible(timeout=90_000)
        expect(page.get_by_text("Lab mode: unauthenticated")).to_be_visible()  # inside the app's frame
        page.wait_for_timeout(1500)
        expect(page.get_by_text("Page not found")).to_have_count(0)
        browser.close()
