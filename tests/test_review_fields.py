"""Fixing detection on a field of view (issue #17 item 3), on SQLite and PostgreSQL: a cell the finder missed
is added where a reviewer points (a small job cuts and classifies it; it counts like any other, flagged
``added``, audited), a point on a cell, outside the image or on a single-cell crop is refused, and only the
batch's owner or an administrator may add. What a click or a rectangle on the field view means is tested apart."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sqlalchemy import select

from db.schema import AuditEvent, Cell, Image, Job
from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.lab.worker import Worker


def empty_point(lab, image) -> tuple[float, float]:
    """A point of the field at least 60 pixels from every cell's box."""
    with lab() as s:
        boxes = s.execute(select(Cell.x, Cell.y, Cell.w, Cell.h).where(Cell.image_id == image.id)).all()
    for y in range(40, image.height - 40, 16):
        for x in range(40, image.width - 40, 16):
            if all(x < bx - 60 or x > bx + bw + 60 or y < by - 60 or y > by + bh + 60 for bx, by, bw, bh in boxes):
                return float(x), float(y)
    raise AssertionError("no empty point in the field")


def test_a_missed_cell_is_added_where_the_reviewer_points_and_counts(field_batch):
    from lsm_core.lab.tasks import add_cell
    from lsm_core.reports.export import batch_rows
    from lsm_core.reports.report import load_report

    lab, batch_id, field = field_batch
    with lab() as s:
        before = load_report(s, batch_id).cells_total
    x, y = empty_point(lab, field)
    job_id = add_cell.submit(lab, field.id, x, y, "ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        job = s.get(Job, job_id)
        assert job.status == "done", job.errors
        cells = s.scalars(select(Cell).where(Cell.image_id == field.id).order_by(Cell.idx)).all()
        added = cells[-1]
        assert (added.idx, added.flags, job.result["cell_id"]) == (len(cells), "added", added.id)
        assert added.x <= x < added.x + added.w and added.y <= y < added.y + added.h
        assert added.predicted in ("LT-HSC", "ST-HSC", "MPP") and len(added.probs) == 3
        assert abs(sum(added.probs) - 1) < 1e-5 and added.score == max(added.probs)
        assert s.get(Image, field.id).n_cells == field.n_cells + 1
        assert load_report(s, batch_id).cells_total == before + 1
        columns, rows = batch_rows(s, [batch_id])
        flagged = [r for r in rows if r[columns.index("cell")] == added.idx and r[0] == field.file]
        assert len(flagged) == 1 and flagged[0][columns.index("flags")] == "added"
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "add cell")).one()
        assert event.actor == "ana" and event.detail["job"] == job_id and event.detail["image"] == field.file
    with pytest.raises(LsmError, match=f"cell {added.idx} of {field.file} is there already"):
        add_cell.submit(lab, field.id, x, y, "ana")  # the same point again


def test_points_that_cannot_take_a_cell_are_refused(field_batch):
    from lsm_core.lab.tasks import add_cell

    lab, batch_id, field = field_batch
    with lab() as s:
        first = s.scalars(select(Cell).where(Cell.image_id == field.id).order_by(Cell.idx)).first()
        crop = s.scalars(select(Image).where(Image.batch_id == batch_id, Image.kind == "single")).one()
    with pytest.raises(LsmError, match=f"cell {first.idx} of {field.file} is there already"):
        add_cell.submit(lab, field.id, first.x + first.w / 2, first.y + first.h / 2, "ana")
    with pytest.raises(LsmError, match="is outside"):
        add_cell.submit(lab, field.id, field.width + 5, 10, "ana")
    with pytest.raises(LsmError, match="classified fields of view only"):
        add_cell.submit(lab, crop.id, 5, 5, "ana")
    x, y = empty_point(lab, field)
    with pytest.raises(LsmError, match="only they or an administrator can add cells"):
        add_cell.submit(lab, field.id, x, y, "bob")
    assert add_cell.submit(lab, field.id, x, y, "boss") > 0  # an administrator may
    with lab() as s:
        assert s.scalars(select(Job).where(Job.kind == "add_cell")).one().owner == "boss"


def test_a_click_on_background_is_told_apart_from_a_missed_cell(field_batch):
    """Issue 26 item 6: before a cell is added, add_cell.looks_like_a_cell says whether the crop it would be
    classified on holds anything cell-like at the point (the page asks "add anyway?" when not): not on empty
    background, read from the stored file or given; yes where a cell lies that the finder did not report (a cell
    of the field copied there); a point on a found cell is refused as submit refuses it."""
    from lsm_core.imaging.images import decode_page
    from lsm_core.imaging.readers.base import ReadOptions
    from lsm_core.lab.tasks import add_cell

    lab, _, field = field_batch
    x, y = empty_point(lab, field)
    assert not add_cell.looks_like_a_cell(lab, field.id, x, y)
    pixels = decode_page(field.file, lab.blobs.file(field.sha256), field.page, lab.limits, ReadOptions(None, None))
    assert not add_cell.looks_like_a_cell(lab, field.id, x, y, pixels)
    _, truth = synthetic.make_field("lsm", seed=11, shape=(768, 768), n_cells=8, n_debris=2)  # field_file(11)
    r, (cx, cy), (px, py) = 35, (round(truth[0].cx), round(truth[0].cy)), (round(x), round(y))
    missed = pixels.copy()
    missed[py - r : py + r, px - r : px + r] = pixels[cy - r : cy + r, cx - r : cx + r]
    assert add_cell.looks_like_a_cell(lab, field.id, x, y, missed)
    with lab() as s:
        first = s.scalars(select(Cell).where(Cell.image_id == field.id).order_by(Cell.idx)).first()
    with pytest.raises(LsmError, match=f"cell {first.idx} of {field.file} is there already"):
        add_cell.looks_like_a_cell(lab, field.id, first.x + first.w / 2, first.y + first.h / 2)
    with lab() as s:  # asking queues nothing
        assert not s.scalars(select(Job).where(Job.kind == "add_cell")).all()


def test_what_a_click_or_a_rectangle_on_the_field_view_means():
    """pages/_review_queue.field_pick: a click on a box's handle picks that cell, a click elsewhere a point to
    add a cell at; a rectangle around one or several handles picks those cells, around none gives its centre;
    nothing picked, nothing."""
    from pages._review_queue import field_pick

    handle = {"curve_number": 3, "x": 40.0, "y": 50.0, "customdata": 17}
    grid = {"curve_number": 2, "x": 300.0, "y": 200.0, "customdata": -1}
    assert field_pick({"points": [handle], "box": []}) == ([17], None)
    assert field_pick({"points": [grid], "box": []}) == ([], (300.0, 200.0))
    assert field_pick({"points": [grid, handle], "box": []}) == ([17], None)  # a box wins over the point under it
    around = [{"x": [30, 50], "y": [60, 40]}]
    assert field_pick({"points": [handle], "box": around}) == ([17], None)
    both = {"points": [handle, {**handle, "customdata": [18]}], "box": [{"x": [0, 400], "y": [0, 400]}]}
    assert field_pick(both) == ([17, 18], None)
    assert field_pick({"points": [], "box": [{"x": [310, 290], "y": [190, 210]}]}) == ([], (300.0, 200.0))
    assert field_pick({"points": [], "box": []}) == ([], None)
    assert field_pick(None) == ([], None)


def test_the_editable_field_figure_carries_a_handle_per_cell(field_batch):
    from db import queries
    from lsm_core.reports.report import field_figure

    lab, _, field = field_batch
    with lab() as s:
        cells = queries.image_cells(s, field.id)
    pixels = np.zeros((field.height, field.width), np.float32) + synthetic.DEFAULT_PIXEL_SIZE_UM
    fig = field_figure(pixels, cells, ["LT-HSC", "ST-HSC", "MPP"], 0.0, editable=True)
    handles = next(t for t in fig.data if t.name == "cells")
    assert [int(c) for c in handles.customdata] == [c.id for c in cells]
    grid = next(t for t in fig.data if t.name == "add a cell here")
    assert set(int(c) for c in grid.customdata) == {-1} and len(grid.x) > 1000
    assert max(grid.x) < field.width and max(grid.y) < field.height
    assert fig.layout.dragmode is None  # left to Streamlit: in the select drag mode clicks select nothing
    plain = field_figure(pixels, cells, ["LT-HSC", "ST-HSC", "MPP"], 0.0)
    assert not any(t.name in ("cells", "add a cell here") for t in plain.data)


def test_fixing_a_field_of_view_in_chromium(app_env, with_batch, tmp_path):
    """Chromium, through the app's own server (with its worker): a click on a box opens its cell's review, a
    click on empty background says there is nothing like a cell there and offers to add one anyway, and the
    added cell appears, and a rectangle drawn with the box-select tool around several boxes offers to mark
    exactly those as not cells."""
    from playwright.sync_api import expect, sync_playwright

    from lsm_core.lab.open_lab import open_lab
    from tests.helpers import ARTIFACTS, launch, need_browser, served_app, settle

    need_browser()
    lab = open_lab()
    with lab() as s:
        field = s.scalars(select(Image).where(Image.batch_id == with_batch.batch_id, Image.kind == "field")).one()
        cells = s.scalars(select(Cell).where(Cell.image_id == field.id).order_by(Cell.idx)).all()
    x, y = empty_point(lab, field)
    ARTIFACTS.mkdir(exist_ok=True)
    with (
        served_app(app_env, tmp_path / "server.log", LSM_USER="ana", LSM_PREP_WORKERS="0") as url,
        sync_playwright() as p,
    ):
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"{url}/batch-results?batch={with_batch.batch_id}")
        expect(page.get_by_role("heading", name="Field of view")).to_be_visible(timeout=90_000)
        settle(page)

        def plot_area():
            chart = page.get_by_test_id("stPlotlyChart").last
            chart.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            return page.locator("[data-testid=stPlotlyChart] .nsewdrag").last.bounding_box()

        def at(px: float, py: float) -> tuple[float, float]:  # the image's square fills the plot area
            return area["x"] + area["width"] * px / field.width, area["y"] + area["height"] * py / field.height

        area = plot_area()
        first = cells[0]
        page.mouse.click(*at(first.x + first.w / 2, first.y + first.h / 2))
        settle(page)
        expect(page.get_by_text(f"cell {first.idx} of {field.file}").first).to_be_visible(timeout=30_000)
        area = plot_area()  # the rerun may have moved the page (on a busy machine it scrolls late): measured again
        page.mouse.click(*at(x, y))
        settle(page)
        add = page.get_by_role("button", name=re.compile(r"^Add a cell at \(.*\) anyway$"))
        expect(add).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Nothing like a cell here")).to_be_visible()
        with lab() as s:  # asked first: nothing is queued before the click
            assert not s.scalars(select(Job).where(Job.kind == "add_cell")).all()
        add.click()
        expect(page.get_by_text("is being added (job")).to_be_visible(timeout=30_000)
        with lab() as s:
            job = s.scalars(select(Job).where(Job.kind == "add_cell")).one()
        for _ in range(120):  # the app's own worker runs it
            with lab() as s:
                if s.get(Job, job.id).status == "done":
                    break
            page.wait_for_timeout(500)
        with lab() as s:
            assert s.get(Job, job.id).status == "done"
            added = s.scalars(select(Cell).where(Cell.image_id == field.id, Cell.flags == "added")).one()
        assert abs(added.x + added.w / 2 - x) <= 16 and abs(added.y + added.h / 2 - y) <= 16

        page.reload()
        expect(page.get_by_role("heading", name="Field of view")).to_be_visible(timeout=90_000)
        settle(page)
        area = plot_area()
        two = sorted(cells, key=lambda c: (c.y, c.x))[:2]
        x0, y0 = min(c.x for c in two) - 4, min(c.y for c in two) - 4
        x1, y1 = max(c.x + c.w for c in two) + 4, max(c.y + c.h for c in two) + 4
        inside = [c for c in [*cells, added] if x0 <= c.x + c.w / 2 <= x1 and y0 <= c.y + c.h / 2 <= y1]
        page.mouse.move(*at(x0, y0))
        page.locator("[data-testid=stPlotlyChart] .modebar-btn[data-title='Box Select']").last.click()
        page.mouse.move(*at(x0, y0))
        page.mouse.down()
        page.mouse.move(*at(x1, y1), steps=8)
        page.mouse.up()
        settle(page)
        expect(page.get_by_role("button", name=f"Mark the {len(inside)} selected boxes as not cells")).to_be_visible(
            timeout=30_000
        )
        page.screenshot(path=str(ARTIFACTS / "field-fixes.png"))
        browser.close()
    assert len(inside) >= 2
    lab.dispose()
