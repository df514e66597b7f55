"""lsm_core.reports.results.load_results: what the results view of one batch shows, read in one go."""

from __future__ import annotations

import numpy as np
import pytest

from lsm_core.errors import LsmError
from lsm_core.reports.results import load_results, not_counted


def test_a_batchs_results_are_loaded_in_one_go(history):
    from lsm_core.lab.batches import BatchMeta, submit_batch
    from lsm_core.lab.worker import Worker
    from tests.helpers import crop_files, field_file

    lab, _, model_id = history
    meta = BatchMeta(mouse_id="M7", age_days=70, sex="F", notes="left femur")
    sub = submit_batch(lab, [field_file(11), *crop_files(3, seed=2)], model_id, "M7 sorted", owner="ana", meta=meta)
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        view = load_results(s, sub.batch_id, 0.0)
    report = view.report
    assert report.name == "M7 sorted" and report.meta.notes == "left femur"
    # the facts in the order the page says them; only what was given (no strain, gate, date; imaging automatic)
    assert view.facts == [
        ("owner", "ana"),
        ("model", report.model.label),
        ("mouse", "M7"),
        ("age", "10.0 weeks"),
        ("sex", "F"),
    ]
    n = report.cells_total
    assert n > 3 and view.pred.shape == (n,) and view.score.shape == (n,)
    assert view.probs.shape == (n, len(report.classes))
    assert np.allclose(view.probs.sum(axis=1), 1.0, atol=1e-4)
    assert [im.file for im in view.images][0].startswith("field") and len(view.images) == 4
    assert [im.kind for im in view.fields] == ["field"]  # the crops are no field of view to pick
    assert [row["class"] for row in view.shares] == report.classes
    assert sum(row["cells"] for row in view.shares) == report.cells_kept
    assert view.reporter_channels == []  # one-channel pictures
    assert (view.not_counted is None) == (view.not_counted_rows == [])
    assert (view.not_counted, view.not_counted_rows) == not_counted(report)


def test_a_batch_deleted_meanwhile_is_refused_with_a_message(history):
    lab, _, _ = history
    with lab() as s, pytest.raises(LsmError, match="no longer exists"):
        load_results(s, 987654, 0.0)


def test_each_cells_size_is_read_beside_its_class_score_and_probabilities(history):
    """Both engines: the size figure pairs ``diameter`` with ``pred`` cell by cell, so the view reads every
    counted cell's size in the order of its class, score and probabilities (upload order over several images):
    NaN where the cell has no outline or its image's pixel size was only the model's default (those counted in
    ``sizes_unknown``), and a cell reviewers said is not a cell is in none of them."""
    from db.schema import Cell, CellLabel, Image
    from lsm_core.lab.batches import submit_batch
    from lsm_core.lab.worker import Worker
    from tests.helpers import crop_files, field_file

    lab, _, model_id = history
    sub = submit_batch(lab, [field_file(12), *crop_files(4, seed=3), field_file(13)], model_id, "sizes", owner="ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab.begin() as s:
        images = s.query(Image).filter(Image.batch_id == sub.batch_id).order_by(Image.position).all()
        images[0].pixel_size_source = "user"
        images[-1].pixel_size_source = "model default"
        # each cell's size from its score: a size read beside another cell's score would not match
        cells = s.query(Cell).filter(Cell.batch_id == sub.batch_id).order_by(Cell.id).all()
        for c in cells:
            c.diameter_um = None if c.image_id not in (images[0].id, images[-1].id) else 5.0 + 10.0 * c.score
        s.add(CellLabel(cell_id=cells[0].id, batch_id=sub.batch_id, labelled_by="ana", excluded="debris",
                        predicted=cells[0].predicted, score=cells[0].score))  # fmt: skip
        last = sum(1 for c in cells if c.image_id == images[-1].id)
        first = sum(1 for c in cells[1:] if c.image_id == images[0].id)
    assert first > 1 and last > 1
    with lab() as s:
        view = load_results(s, sub.batch_id, 0.0)
    n = view.report.cells_total
    assert view.diameter is not None and view.diameter.shape == (n,) == view.pred.shape
    known = np.isfinite(view.diameter)
    assert int(known.sum()) == first and view.sizes_unknown == last
    assert np.allclose(view.diameter[known], 5.0 + 10.0 * view.score[known], atol=1e-4)
    assert known[: len(known) - last - 4].all() and not known[-(last + 4) :].any()  # the field first, then 4 crops
