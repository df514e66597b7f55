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
