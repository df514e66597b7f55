"""The model registry (lsm_core.lab.registry): recording a model's error profile from an evaluation on labelled
cells (issue #29 item 1), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.schema import AuditEvent, Model
from lsm_core.errors import LsmError
from lsm_core.lab.registry import record_error_profile
from lsm_core.reports.correction import model_profile
from tests.helpers import with_settings

EVALUATION = {
    "classes": ["LT-HSC", "ST-HSC", "MPP"],
    "confusion_matrix": [[40, 8, 2], [5, 60, 15], [1, 20, 49]],
    "evaluated_on": "test set sorted_cells.zip: 200 cells",
    "accuracy": 0.745,
}


def test_an_administrator_records_an_evaluation_as_the_model_s_error_profile(history):
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
    with pytest.raises(LsmError, match="administrator"):
        record_error_profile(lab, model_id, EVALUATION, "ana")
    with lab() as s:
        assert model_profile(s.get(Model, model_id).metrics) is None  # tiny-lsm was registered without metrics
    record_error_profile(lab, model_id, EVALUATION, "boss")
    with lab() as s:
        row = s.get(Model, model_id)
        profile = model_profile(row.metrics)
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "error profile")).one()
    assert profile is not None and profile.cells == 200 and profile.source == EVALUATION["evaluated_on"]
    assert row.metrics["error_profile"]["recorded_by"] == "boss"
    assert event.actor == "boss" and "tiny-lsm" in event.target


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes": ["young", "aged"]}, "are not"),
        ({"confusion_matrix": [[1, 2], [3, 4]]}, "3 by 3"),
        ({"confusion_matrix": [[1, 2, 3], [4, 5, 6], [7, 8, -1]]}, "3 by 3"),
        ({"confusion_matrix": [[1, 2, 3], [4, 5, 6], [7, 8, 0.5]]}, "3 by 3"),
        ({"confusion_matrix": None}, "3 by 3"),
    ],
)
def test_an_evaluation_that_is_not_a_confusion_of_the_model_s_classes_is_refused(history, change, message):
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
    with pytest.raises(LsmError, match=message):
        record_error_profile(lab, model_id, {**EVALUATION, **change}, "boss")
    with lab() as s:
        assert "error_profile" not in (s.get(Model, model_id).metrics or {})
