"""One batch's workbook (lsm_core.reports.report.workbook) with its composition corrected for the model's errors
(issue #29 items 2 and 3), on SQLite and PostgreSQL: the summary sheet's corrected columns, the batch sheet's
account of what the correction assumed, a model without an error profile saying so, and ``lsm report`` writing
the workbook the Results page downloads."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from db.schema import Batch, Model
from lsm_core.reports.correction import NO_PROFILE, model_profile
from lsm_core.reports.report import load_report, workbook

ROOT = Path(__file__).resolve().parents[1]


def sheets(data: bytes) -> dict[str, list[tuple]]:
    book = load_workbook(io.BytesIO(data), read_only=True)
    return {ws.title: [tuple(r) for r in ws.iter_rows(values_only=True)] for ws in book.worksheets}


PAPER = [[385, 199, 63], [29, 1206, 339], [9, 429, 1497]]  # the paper's LSM test set (../shared/PAPER.md)


def give_profile(lab, batch_id: int) -> None:
    with lab.begin() as s:
        model = s.get(Model, s.get(Batch, batch_id).model_id)
        model.metrics = {
            "classes": ["LT-HSC", "ST-HSC", "MPP"],
            "confusion_matrix": PAPER,
            "evaluated_on": "test set: 4156 cells",
        }


def fields(rows: list[tuple]) -> dict:
    """A field/value sheet as a dict (a row whose value is empty is read back as the field alone)."""
    return {r[0]: (r[1] if len(r) > 1 else None) for r in rows[1:]}


def test_the_summary_carries_the_corrected_composition(field_batch):
    lab, batch_id, _ = field_batch
    give_profile(lab, batch_id)
    with lab() as s:
        model = s.get(Model, s.get(Batch, batch_id).model_id)
        profile = model_profile(model.metrics)
        report = load_report(s, batch_id, 0.5)
        book = sheets(workbook(s, batch_id, 0.5))
    assert profile is not None and report.correction is not None
    head, *rows = book["summary"]
    assert head[-3:] == ("corrected_fraction", "corrected_ci95_low", "corrected_ci95_high")
    assert [r[0] for r in rows] == report.classes
    assert sum(r[head.index("corrected_fraction")] for r in rows) == pytest.approx(1.0, abs=1e-6)
    for r in rows:
        low, mid, high = (r[head.index(k)] for k in ("corrected_ci95_low", "corrected_fraction", "corrected_ci95_high"))
        assert 0.0 <= low <= mid <= high <= 1.0
    batch = fields(book["batch"])
    assert batch["corrected_cells"] == report.cells_total  # every counted cell, whatever the threshold
    assert batch["error_profile_cells"] == 4156 and batch["error_profile"] == "test set: 4156 cells"
    assert "maximum likelihood" in batch["correction_method"]


def test_a_model_without_an_error_profile_says_so(field_batch):
    """tiny-lsm was registered without metrics, as an imported package may be."""
    lab, batch_id, _ = field_batch
    with lab() as s:
        assert model_profile(s.get(Model, s.get(Batch, batch_id).model_id).metrics) is None
        assert load_report(s, batch_id).correction is None
        book = sheets(workbook(s, batch_id, 0.0))
    head, *rows = book["summary"]
    at = head.index("corrected_fraction")
    assert rows and all(len(r) <= at or r[at] is None for r in rows)
    assert fields(book["batch"])["correction_note"] == NO_PROFILE


def test_lsm_report_writes_the_results_page_s_workbook(field_batch, db_url, data_dir, tmp_path):
    lab, batch_id, _ = field_batch
    give_profile(lab, batch_id)
    out = tmp_path / "batch.xlsx"
    env = dict(os.environ, LSM_DATABASE_URL=db_url, LSM_DATA_DIR=str(data_dir), LSM_USER="ana", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "lsm_core", "report", str(batch_id), "--out", str(out), "--threshold", "0.5"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with lab() as s:
        page = sheets(workbook(s, batch_id, 0.5))
    written = sheets(out.read_bytes())
    assert list(written) == ["cells", "summary", "batch", "model", "images", "review", "review_confusion"]
    assert written == page
    bad = subprocess.run(
        cmd[:-4] + ["--out", str(tmp_path / "x.csv")], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "FILE.xlsx" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "lsm_core", "report", "999999", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "batch 999999" in missing.stderr
    with lab() as s:
        assert s.scalars(select(Batch.id)).all() == [batch_id]
