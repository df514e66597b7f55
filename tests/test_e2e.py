"""End to end in a real browser: Debian's chromium driven by playwright against `python -m lsm_core serve`.

Uploads a synthetic field of view, two synthetic crops and one broken file, fills the metadata, presses
Classify, waits for the job, checks the composition figure and the broken file's error, downloads the xlsx
and reads it back with openpyxl. A screenshot of every page goes to artifacts/ (git-ignored).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import openpyxl
import pytest

from tests.helpers import ARTIFACTS, add_tiny_demo_models, launch, need_browser, served_app, settle


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m lsm_core serve` (what `make run` runs) on a free port and a fresh data dir."""
    need_browser()
    tmp_path = tmp_path_factory.mktemp("e2e")
    add_tiny_demo_models(tmp_path / "data" / "models", train_epochs=1)
    with served_app(tmp_path / "data", tmp_path / "server.log", LSM_USER="e2e-user") as url:
        yield url, tmp_path / "data"


def upload_files(tmp_path: Path) -> list[Path]:
    import tifffile
    from PIL import Image

    from lsm_core.imaging import synthetic

    folder = tmp_path / "upload"
    folder.mkdir()
    field, truth = synthetic.make_field("lsm", seed=8, shape=(1024, 1024), n_cells=12, n_debris=2)
    tifffile.imwrite(folder / "field_M17.tif", np.round(field * 4095).astype(np.uint16))
    crops, _ = synthetic.make_crops("lsm", 2, seed=9)
    paths = [folder / "field_M17.tif"]
    for i, c in enumerate(crops):
        Image.fromarray((c * 255).astype(np.uint8)).save(folder / f"crop_{i}.png")
        paths.append(folder / f"crop_{i}.png")
    good = (folder / "crop_0.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 3])
    paths.append(folder / "broken.png")
    return paths


@pytest.mark.slow
def test_upload_classify_results_and_download_in_chromium(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    server, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    files = upload_files(tmp_path)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2200}, accept_downloads=True)
        page.goto(server)
        expect(page.get_by_role("heading", name="Classify")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "e2e-1-classify.png"), full_page=True)
        page.locator("input[type=file]").set_input_files([str(f) for f in files])
        for f in files:
            expect(page.get_by_text(f.name).first).to_be_visible(timeout=30_000)
        page.get_by_label("Batch name").fill("M17 e2e batch")
        page.get_by_label("Mouse id").fill("M17")
        page.get_by_label("Age", exact=True).fill("10")
        page.get_by_label("Strain or reporter").fill("C57BL/6")
        page.get_by_label("Sorting gate").fill("LSK CD150+CD48-")
        page.get_by_label("Notes").fill("<b>shown as text</b>")
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_text("broken.png").first).to_be_visible(timeout=60_000)
        expect(page.get_by_role("heading", name="Composition")).to_be_visible(timeout=180_000)
        expect(page.get_by_text(re.compile("damaged or incomplete")).first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "e2e-2-classified.png"), full_page=True)
        with page.expect_download(timeout=60_000) as info:
            page.get_by_role("button", name=re.compile("^Download xlsx")).first.click()
        xlsx = tmp_path / "download.xlsx"
        info.value.save_as(xlsx)

        for title, name in (
            ("Results", "e2e-3-results.png"),
            ("History", "e2e-4-history.png"),
            ("Models", "e2e-5-models.png"),
        ):
            page.get_by_role("link", name=title).click()
            expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / name), full_page=True)
        browser.close()

    book = openpyxl.load_workbook(xlsx)
    assert book.sheetnames == ["cells", "summary", "batch", "model", "images", "review", "review_confusion"]
    cells = list(book["cells"].iter_rows(values_only=True))
    header, body = cells[0], cells[1:]
    assert header[:9] == ("file", "page", "cell", "x", "y", "w", "h", "predicted", "score")
    field_rows = [r for r in body if r[0] == "field_M17.tif"]
    crop_rows = [r for r in body if str(r[0]).startswith("crop_")]
    broken = [r for r in body if r[0] == "broken.png"]
    assert 10 <= len(field_rows) <= 14 and len(crop_rows) == 2 and len(broken) == 1
    assert "damaged" in broken[0][header.index("error")]
    summary = list(book["summary"].iter_rows(values_only=True))
    assert [r[0] for r in summary[1:]] == ["LT-HSC", "ST-HSC", "MPP"]
    assert sum(r[1] for r in summary[1:]) == len(field_rows) + len(crop_rows)
    batch = dict(book["batch"].iter_rows(min_row=2, values_only=True))
    assert batch["mouse_id"] == "M17" and batch["age_days"] == 70 and batch["owner"] == "e2e-user"
    model = dict(book["model"].iter_rows(min_row=2, values_only=True))
    assert model["name"] == "demo-lsm" and len(model["sha256"]) == 64


@pytest.mark.slow
def test_compare_page_and_its_workbook_in_chromium(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from db import queries
    from db.session import make_engine, session_factory
    from tests.test_compare import make_six_batches

    url, data_dir = server
    lab = session_factory(make_engine(f"sqlite:///{data_dir / 'lsm.db'}"))
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    make_six_batches(lab, model_id)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2400}, accept_downloads=True)
        page.goto(url)
        page.get_by_role("link", name="Compare").click()
        expect(page.get_by_role("heading", name="Compare")).to_be_visible(timeout=60_000)
        bins = page.get_by_role("textbox", name="Age groups (label:range; units d, w, m, y)")
        bins.fill("young:<6m, middle:6m-18m, aged:>=18m")
        bins.press("Enter")
        expect(page.get_by_text(re.compile(r"[67] mice in 3 groups"))).to_be_visible(
            timeout=60_000
        )  # + the upload test's
        expect(page.get_by_role("heading", name="Tests (mouse as the unit)")).to_be_visible()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "e2e-6-compare.png"), full_page=True)
        with page.expect_download(timeout=60_000) as info:
            page.get_by_role("button", name="Download comparison xlsx").click()
        out = tmp_path / "comparison.xlsx"
        info.value.save_as(out)
        with page.expect_download(timeout=60_000) as info:
            page.get_by_role("button", name="Download methods text").click()
        methods = tmp_path / "methods.txt"
        info.value.save_as(methods)
        # the per-mouse figure for a paper: a PDF, drawn by kaleido in the server's chromium
        page.get_by_role("button", name="Download figure").first.click()
        page.get_by_text("PDF", exact=True).click()
        settle(page)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "e2e-6-compare-figure-popover.png"))
        with page.expect_download(timeout=90_000) as info:
            page.get_by_role("button", name="Download per_mouse.pdf").click()
        pdf = tmp_path / "per_mouse.pdf"
        info.value.save_as(pdf)
        browser.close()
    assert pdf.read_bytes().startswith(b"%PDF-") and b"/FontFile2" in pdf.read_bytes()
    assert methods.read_text(encoding="utf-8").startswith("Images and cell finding.")
    book = openpyxl.load_workbook(out)
    assert book.sheetnames == ["per_mouse", "groups", "tests", "odds_model", "methods", "cells"]
    per_mouse = list(book["per_mouse"].iter_rows(min_row=2, values_only=True))
    header = [c.value for c in book["per_mouse"][1]]
    groups = [r[header.index("group")] for r in per_mouse]
    assert len(per_mouse) >= 6 and groups.count("aged") >= 2 and groups.count("middle") >= 2


@pytest.mark.slow
def test_the_channel_to_classify_is_picked_from_the_first_files_channels_in_chromium(server, tmp_path):
    """A 2-channel OME-TIFF that names no transmitted-light channel: the Classify page lists its channels as soon
    as it is chosen, the one picked is classified and the other is measured as reporter signal."""
    import io

    import tifffile
    from playwright.sync_api import expect, sync_playwright

    from tests.test_microscope_files import two_channel_stack

    url, _ = server
    data, _ = two_channel_stack(seed=6)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        stack = tif.series[0].asarray()
    stack = stack.reshape(1, 2, 3, *stack.shape[-2:])  # T C Z Y X: GFP, DIC
    path = tmp_path / "two_cameras.ome.tif"
    tifffile.imwrite(
        path,
        stack,
        ome=True,
        metadata={
            "axes": "TCZYX",
            "Channel": {"Name": ["GFP", "camera 2"]},
            "PhysicalSizeX": 0.1,
            "PhysicalSizeY": 0.1,
        },
    )
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(url)
        expect(page.get_by_role("heading", name="Classify")).to_be_visible(timeout=60_000)
        page.locator("input[type=file]").set_input_files([str(path)])
        picker = page.get_by_role("combobox", name="Channel to classify")
        expect(picker).to_have_value("choose one: none is named as transmitted light", timeout=60_000)
        picker.click()
        expect(page.get_by_role("option", name="0: GFP")).to_be_visible()
        page.get_by_role("option", name="1: camera 2").click()
        expect(picker).to_have_value("1: camera 2")
        page.get_by_label("Batch name").fill("two cameras")
        page.screenshot(path=str(ARTIFACTS / "e2e-7-channel-picked.png"), full_page=True)
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_role("heading", name="Composition")).to_be_visible(timeout=180_000)
        expect(page.get_by_role("heading", name="Reporter signal")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("heading", name="Field of view")).to_be_visible()
        expect(page.get_by_text("could not be read back")).to_have_count(0)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "e2e-8-reporter.png"), full_page=True)
        browser.close()
