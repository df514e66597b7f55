"""The Classify form starts each batch clean (issue: the everyday path, second pass, item 1), in chromium.

Seen: a batch sent with z plane 3 (an ND2 stack), then a CZI, an OME-TIFF and an ImageJ TIFF uploaded: the new
batch silently reused z plane 3 and every file failed, and the previous mouse's id and age went with it. Now
every per-batch field returns to its default after a batch is sent; the mouse's details go on only when
"Keep this mouse's details for the next batch" is ticked; a z plane that a chosen file lacks is refused at
submit, naming the file, and never becomes a failed batch. Screenshots go to artifacts/ (git-ignored).
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tests.helpers import ARTIFACTS, add_tiny_demo_models, lab_at, launch, need_browser, served_app, settle
from tests.test_readers_shared_data import DATA, need

VENDOR = [
    DATA / "vendor" / n
    for n in (
        "aicsimageio_s_1_t_1_c_1_z_1.czi",
        "aicsimageio_s_1_t_1_c_1_z_1.ome.tiff",
        "aicsimageio_s_1_t_1_c_1_z_1_imagej.tiff",
    )
]
ND2 = DATA / "vendor" / "pims_cluster.nd2"
FIELDS = ("Batch name", "Mouse id", "Age", "Strain or reporter", "Sorting gate", "Notes", "Pixel size (µm/px)")


@pytest.mark.slow
def test_each_batch_starts_clean_and_a_missing_z_plane_is_refused_at_submit(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from db.schema import Batch, Image

    need_browser()
    need(ND2, *VENDOR)
    add_tiny_demo_models(tmp_path / "data" / "models")
    ARTIFACTS.mkdir(exist_ok=True)
    with served_app(tmp_path / "data", tmp_path / "server.log", LSM_USER="ana") as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(url)
        expect(page.get_by_role("heading", name="Classify")).to_be_visible(timeout=60_000)

        def field(label: str):
            return page.get_by_role("textbox", name=label, exact=True)

        # the stack: its first channel, z plane 3, with the mouse's details
        page.locator("input[type=file]").set_input_files([str(ND2)])
        picker = page.get_by_role("combobox", name="Channel to classify")
        expect(picker).to_have_value(re.compile("choose one"), timeout=60_000)
        picker.click()
        page.get_by_role("option", name=re.compile("^0: ")).click()
        for label, value in (
            ("Batch name", "M1 stack"),
            ("Mouse id", "M1"),
            ("Age", "10"),
            ("Strain or reporter", "C57BL/6"),
            ("Sorting gate", "LSK"),
            ("Notes", "first"),
            ("Pixel size (µm/px)", "0.1678"),
            ("z plane", "3"),
        ):
            field(label).fill(value)
        settle(page)
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_text(re.compile(r"of 3 images|Done\.|Composition|No cells"))).not_to_have_count(
            0, timeout=120_000
        )
        settle(page)
        page.screenshot(path=str(ARTIFACTS / "classify-form-1-sent.png"), full_page=True)
        # every per-batch field is back at its default
        for label in (*FIELDS, "z plane"):
            expect(field(label)).to_have_value("", timeout=30_000)

        # the next files, sent with a z plane they do not have: refused at submit, each named, nothing stored
        page.locator("input[type=file]").set_input_files([str(p) for p in VENDOR])
        expect(page.get_by_test_id("stFileUploader").get_by_text(re.compile("imagej.tiff"))).to_be_visible(
            timeout=30_000
        )
        settle(page)
        field("Batch name").fill("vendor z3")
        field("z plane").fill("3")
        settle(page)
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_text(re.compile(r"3 file\(s\) do not have the z plane 3 asked for"))).to_be_visible(
            timeout=60_000
        )
        for path in VENDOR:
            expect(page.get_by_text(f"✗ {path.name}: z plane 3 was asked for; this image has 1")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "classify-form-2-refused.png"), full_page=True)

        # the same files without it, keeping this mouse's details for the next batch
        field("z plane").fill("")
        field("Mouse id").fill("M2")
        field("Age").fill("24")
        page.get_by_text("Keep this mouse's details for the next batch").click()
        settle(page)
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_role("heading", name="vendor z3")).to_be_visible(timeout=180_000)
        settle(page)
        expect(field("Mouse id")).to_have_value("M2")
        expect(field("Age")).to_have_value("24")
        for label in ("Batch name", "Notes", "Pixel size (µm/px)", "z plane", "Sorting gate"):
            expect(field(label)).to_have_value("")
        page.screenshot(path=str(ARTIFACTS / "classify-form-3-kept.png"), full_page=True)
        browser.close()

    lab = lab_at(tmp_path / "data")
    with lab() as s:
        sent = {b.name: b for b in s.scalars(select(Batch))}
        assert set(sent) == {"M1 stack", "vendor z3"}  # the refused submission made no batch
        stack, vendor = sent["M1 stack"], sent["vendor z3"]
        assert (stack.z, stack.mouse_id, stack.age_days) == (3, "M1", 70)
        assert (vendor.z, vendor.channel, vendor.mouse_id, vendor.gate, vendor.pixel_size_um) == (
            None,
            None,
            "M2",
            None,
            None,
        )
        errors = s.scalars(select(Image.error).where(Image.batch_id == vendor.id)).all()
    lab.dispose()
    assert errors == [None, None, None]
