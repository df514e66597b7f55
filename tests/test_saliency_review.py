"""Saliency maps agree with the review (issue 26 item 6), on SQLite and PostgreSQL: cells that reviewers marked
as not a cell leave the gallery and its ZIP (the gallery says how many), each overlay in the ZIP is named by
file, page and cell number as the gallery and the exports name the cell, and an added cell carries ``added``
there too. The page's side is in AppTest."""

from __future__ import annotations

import io
import re
import zipfile

from sqlalchemy import select

from db.schema import Cell, Image, SaliencyRun
from lsm_core.lab import batches, cell_labels
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files, field_file, run_page, texts
from tests.test_review_fields import empty_point

CLASSES = ["LT-HSC", "ST-HSC", "MPP"]


def _added_cell(lab, batch_id: int) -> Cell:
    """Add a cell at an empty point of the batch's field of view (a job, run here); the new Cell row."""
    from lsm_core.lab.tasks import add_cell

    with lab() as s:
        field = s.scalars(select(Image).where(Image.batch_id == batch_id, Image.kind == "field")).one()
    add_cell.submit(lab, field.id, *empty_point(lab, field), "ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        return s.scalars(select(Cell).where(Cell.image_id == field.id, Cell.flags == "added")).one()


def _maps_of_every_cell(lab, batch_id: int, method: str) -> int:
    """Compute ``method`` maps of every cell of the batch (a job, run here); the saliency run's id."""
    from lsm_core.lab.tasks.saliency import submit

    submit(lab, batch_id, method, owner="ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        return s.scalars(select(SaliencyRun.id).where(SaliencyRun.batch_id == batch_id)).one()


def test_not_a_cell_leaves_the_gallery_and_the_zip_names_cells_as_the_exports_do(history):
    from lsm_core.reports.export import batch_rows
    from lsm_core.reports.report import overlays_zip, saliency_gallery

    lab, _, model_id = history
    sub = batches.submit_batch(lab, [field_file(11), *crop_files(2, seed=3)], model_id, "maps", owner="ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    added = _added_cell(lab, sub.batch_id)
    run_id = _maps_of_every_cell(lab, sub.batch_id, "gradcam")
    with lab() as s:
        every = saliency_gallery(s, run_id, CLASSES, lab.blobs, per_class=100)
        assert every.left_out == 0 and s.get(SaliencyRun, run_id).cells == len(every.view.cells)
    debris = next(c for c in every.view.cells if c.id != added.id)
    cell_labels.set_label(lab, debris.id, "ana", excluded="debris")

    with lab() as s:
        gallery = saliency_gallery(s, run_id, CLASSES, lab.blobs, per_class=100)
        exported = {(r[0], r[1], r[2]) for r in batch_rows(s, [sub.batch_id])[1]}  # file, page, cell
    shown = gallery.view.cells
    assert gallery.left_out == 1 and debris.id not in {c.id for c in shown}
    assert len(shown) == len(every.view.cells) - 1 == len(gallery.crops) == len(gallery.view.maps)
    assert sorted(i for members in gallery.by_class.values() for i in members) == list(range(len(shown)))
    assert next(c for c in shown if c.id == added.id).flags == "added"

    names = zipfile.ZipFile(io.BytesIO(overlays_zip(gallery.view, gallery.crops))).namelist()
    assert len(names) == len(set(names)) == len(shown)
    expected = {
        f"{c.predicted}/{c.file}_cell{c.cell}{'_added' if c.id == added.id else ''}_gradcam_score{c.score:.3f}.png"
        for c in shown
    }
    assert set(names) == expected
    named = {(m.group(1), 1, int(m.group(2))) for m in (re.match(r"[^/]+/(.+)_cell(\d+)", n) for n in names) if m}
    assert len(named) == len(names) and named <= exported  # every overlay is a row of the exports
    assert (debris.file, debris.page, debris.cell) not in named

    cell_labels.set_label(lab, debris.id, "ana")  # the label taken back: the cell counts, and shows, again
    with lab() as s:
        assert saliency_gallery(s, run_id, CLASSES, lab.blobs, per_class=100).left_out == 0


def test_an_overlay_name_stays_one_file_in_its_class_folder():
    from db.queries import CellRow
    from lsm_core.reports.report import overlay_name

    cell = CellRow(1, 1, "../up/C:\\x?.tif", 3, 5, 0, 0, 9, 9, "MPP", 0.5, [], "edge,added")
    name = overlay_name("ig", cell)
    assert name == "MPP/_up_C__x_.tif_page3_cell5_added_ig_score0.500.png"
    assert name.count("/") == 1 and ".." not in name


def test_the_results_page_gallery_says_what_it_left_out_and_which_cell_was_added(with_batch):
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.reports.report import saliency_gallery

    lab = open_lab()
    batch_id = with_batch.batch_id
    added = _added_cell(lab, batch_id)
    run_id = _maps_of_every_cell(lab, batch_id, "scorecam")  # the page's first method
    with lab() as s:
        every = saliency_gallery(s, run_id, CLASSES, lab.blobs, per_class=12).view.cells
    debris = [c for c in every if c.id != added.id][:2]
    for c in debris:
        cell_labels.set_label(lab, c.id, "ana", excluded="debris")
    with lab() as s:
        gallery = saliency_gallery(s, run_id, CLASSES, lab.blobs, per_class=12)
    shown = {gallery.view.cells[i].id for members in gallery.by_class.values() for i in members}
    assert added.id in shown  # (the demo networks' weights are seeded: the same every run)
    at = run_page("pages/results.py", {"batch": str(batch_id)})
    said = texts(at)
    assert f": {len(every) - 2} cells. 2 cells that reviewers marked as not a cell are left out." in said
    captions = [re.sub(r"\\(.)", r"\1", c.value) for c in at.caption]
    assert any(c.endswith(f"cell {added.idx} of field.tif · added") for c in captions), captions
    gallery_captions = [c for c in captions if ", p = " in c]  # the review grid lists every cell
    for c in debris:
        assert not any(x.endswith(f"· cell {c.cell} of {c.file}") for x in gallery_captions)
    lab.dispose()
