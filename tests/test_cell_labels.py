"""Review labels (lsm_core.lab.cell_labels, issue #17 items 1 and 8), on SQLite and PostgreSQL: a label never
writes over the prediction, a change keeps the history, two people keep their own labels and a consensus
says what counts, members label their own batches and administrators anyone's, every change is audited,
and the review queue puts the most uncertain cells first."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from db.schema import AuditEvent, Batch, Cell, CellLabel, Image
from lsm_core.errors import LsmError
from lsm_core.lab import batches, cell_labels
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files, with_settings


@pytest.fixture
def classified(history, monkeypatch, tmp_path):
    """(lab, batch id, its cells' ids) of a classified batch of 8 crops owned by ana; LSM_ADMINS=boss."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LSM_ADMINS", "boss")  # for the command lines a test runs
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
    sub = batches.submit_batch(lab, crop_files(8, seed=1701, prefix="rev"), model_id, "to review", owner="ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        ids = s.scalars(select(Cell.id).where(Cell.batch_id == sub.batch_id).order_by(Cell.id)).all()
    assert len(ids) == 8
    return lab, sub.batch_id, list(ids)


def test_a_label_is_kept_beside_the_prediction_and_a_change_keeps_the_history(classified):
    lab, batch_id, ids = classified
    with lab() as s:
        before = s.execute(select(Cell.predicted, Cell.score, Cell.probs).where(Cell.id == ids[0])).one()
    first = cell_labels.set_label(lab, ids[0], "ana", label="MPP")
    assert first is not None and first.label == "MPP" and first.predicted == before.predicted
    assert cell_labels.set_label(lab, ids[0], "ana", label="MPP") is None  # the same again: nothing written
    cell_labels.set_label(lab, ids[0], "ana", excluded="debris")
    cell_labels.set_label(lab, ids[0], "ana")  # taken back
    cell_labels.set_label(lab, ids[0], "ana", label="LT-HSC")
    past = cell_labels.history(lab, ids[0])
    assert [(x.label, x.excluded, x.current) for x in past] == [
        ("MPP", None, False),
        (None, "debris", False),
        (None, None, False),
        ("LT-HSC", None, True),
    ]
    assert all(x.labelled_by == "ana" and x.score == pytest.approx(before.score) for x in past)
    with lab() as s:
        assert s.execute(select(Cell.predicted, Cell.score, Cell.probs).where(Cell.id == ids[0])).one() == before
        assert cell_labels.consensus_of(s, [batch_id])[ids[0]].label == "LT-HSC"
        changes = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "label", AuditEvent.target == f"batch {batch_id}")
        ).all()
    assert [e.detail["label"] for e in changes] == ["MPP", "not a cell (debris)", "taken back", "LT-HSC"]
    assert changes[1].detail["was"] == "MPP" and all(e.actor == "ana" for e in changes)


def test_wrong_labels_are_refused(classified):
    lab, _, ids = classified
    with pytest.raises(LsmError, match="not a class of this batch's model"):
        cell_labels.set_label(lab, ids[0], "ana", label="young")
    with pytest.raises(LsmError, match="unknown reason"):
        cell_labels.set_label(lab, ids[0], "ana", excluded="ugly")
    with pytest.raises(LsmError, match="not both"):
        cell_labels.set_label(lab, ids[0], "ana", label="MPP", excluded="debris")
    with pytest.raises(LsmError, match="no longer exists"):
        cell_labels.set_label(lab, 10**9, "ana", label="MPP")
    assert cell_labels.history(lab, ids[0]) == []


def test_a_class_is_said_in_any_case_as_the_readme_says(classified):
    """Found walking the path: `label 3 file:503 lt-hsc` was refused while a label table's `lt-hsc` was taken."""
    lab, _, ids = classified
    assert cell_labels.set_label(lab, ids[1], "ana", label="lt-hsc").label == "LT-HSC"
    assert cell_labels.set_label(lab, ids[1], "ana", label="Mpp").label == "MPP"
    assert [x.label for x in cell_labels.history(lab, ids[1])] == ["LT-HSC", "MPP"]


def test_members_label_their_own_batches_and_administrators_anyones(classified):
    lab, batch_id, ids = classified
    with pytest.raises(LsmError, match="belongs to ana"):
        cell_labels.set_label(lab, ids[1], "bob", label="MPP")
    assert cell_labels.set_label(lab, ids[1], "boss", label="MPP") is not None
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(CellLabel).where(CellLabel.labelled_by == "bob")) == 0


def test_two_people_keep_their_own_labels_and_the_consensus_says_what_counts(classified):
    lab, batch_id, ids = classified
    cell_labels.set_label(lab, ids[2], "ana", label="ST-HSC")
    cell_labels.set_label(lab, ids[2], "boss", label="ST-HSC")
    cell_labels.set_label(lab, ids[3], "ana", label="ST-HSC")
    cell_labels.set_label(lab, ids[3], "boss", excluded="doublet")
    with lab() as s:
        agreed = cell_labels.consensus_of(s, [batch_id])
    assert (agreed[ids[2]].label, agreed[ids[2]].disputed) == ("ST-HSC", False)
    assert set(agreed[ids[2]].labelled_by) == {"ana", "boss"}
    assert (agreed[ids[3]].excluded, agreed[ids[3]].disputed, agreed[ids[3]].last_by) == ("doublet", True, "boss")
    assert agreed[ids[3]].text == "not a cell (doublet)"
    cell_labels.set_label(lab, ids[3], "boss")  # boss takes it back: ana's label alone counts
    with lab() as s:
        agreed = cell_labels.consensus_of(s, [batch_id])
    assert (agreed[ids[3]].label, agreed[ids[3]].disputed, agreed[ids[3]].last_by) == ("ST-HSC", False, "ana")
    queue = {q.cell_id: q for q in cell_labels.queue(lab, [batch_id], "boss")}
    assert queue[ids[2]].mine is not None and queue[ids[2]].mine.label == "ST-HSC"
    assert queue[ids[3]].mine is None and queue[ids[3]].consensus is not None


def test_one_person_labelling_one_cell_from_two_tabs_at_once_leaves_one_current_label(classified):
    lab, _, ids = classified
    errors: list[BaseException] = []

    def tab(label: str) -> None:
        try:
            cell_labels.set_label(lab, ids[4], "ana", label=label)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tab, args=(c,)) for c in ("LT-HSC", "MPP", "ST-HSC", "LT-HSC")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    past = cell_labels.history(lab, ids[4])
    assert sum(x.current for x in past) == 1 and past[-1].current


def test_the_queue_puts_the_most_uncertain_first_and_orders_as_asked(classified):
    lab, batch_id, ids = classified
    items = cell_labels.queue(lab, [batch_id], "ana")
    margins = [q.margin for q in items]
    assert sorted(margins) == margins and len(items) == 8
    for q in items:
        top = sorted(q.probs, reverse=True)
        assert q.margin == pytest.approx(top[0] - top[1])
    by_score = [q.score for q in cell_labels.queue(lab, [batch_id], "ana", order="score")]
    assert by_score == sorted(by_score)
    order = ["LT-HSC", "ST-HSC", "MPP"]
    by_class = [order.index(q.predicted) for q in cell_labels.queue(lab, [batch_id], "ana", order="class")]
    assert by_class == sorted(by_class)
    shuffled = [q.cell_id for q in cell_labels.queue(lab, [batch_id], "ana", order="random", seed=3)]
    assert shuffled == [q.cell_id for q in cell_labels.queue(lab, [batch_id], "ana", order="random", seed=3)]
    assert sorted(shuffled) == sorted(ids)
    cell_labels.set_label(lab, items[0].cell_id, "ana", label="MPP")
    rest = cell_labels.queue(lab, [batch_id], "ana", unlabelled_only=True, limit=3)
    assert len(rest) == 3 and items[0].cell_id not in {q.cell_id for q in rest}
    with pytest.raises(LsmError, match="unknown review order"):
        cell_labels.queue(lab, [batch_id], "ana", order="alphabetical")


def test_labels_go_with_their_batch(classified):
    lab, batch_id, ids = classified
    cell_labels.set_label(lab, ids[5], "ana", label="MPP")
    batches.delete(lab, batch_id, "ana")
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(CellLabel)) == 0
        assert s.get(Batch, batch_id) is None


def test_the_migrated_table_holds_one_current_label_per_person_and_cell_and_migrates_down(classified):
    """Migration 0012 on both engines: the partial unique index is there (a second current row for the same
    person and cell is refused, old rows are not), and the table goes with a downgrade and comes back."""
    from alembic import command
    from sqlalchemy.exc import IntegrityError

    from db.session import _alembic_config, current_revision, upgrade

    lab, batch_id, ids = classified
    row = {"cell_id": ids[6], "batch_id": batch_id, "labelled_by": "ana", "predicted": "MPP", "score": 0.5}
    with lab.begin() as s:
        s.add_all([CellLabel(**row, label="MPP", current=False), CellLabel(**row, label="MPP", current=False)])
        s.add(CellLabel(**row, label="LT-HSC", current=True))
    with pytest.raises(IntegrityError):
        with lab.begin() as s:
            s.add(CellLabel(**row, label="ST-HSC", current=True))
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(CellLabel)) == 3
    lab.dispose()
    command.downgrade(_alembic_config(lab.engine), "0011")
    assert current_revision(lab.engine) == "0011"
    upgrade(lab.engine)
    with lab() as s:
        assert s.scalar(select(func.count()).select_from(CellLabel)) == 0


def test_cells_said_not_to_be_cells_count_nowhere_and_every_export_says_what_reviewers_said(classified):
    """Item 2: composition (at any threshold), the report's figures' arrays, compare's counts and the cells
    export leave excluded cells out or name them; the database's rule is the consensus's."""
    from db import queries
    from lsm_core.reports.export import batch_rows
    from lsm_core.reports.report import cell_arrays, load_report

    lab, batch_id, ids = classified
    with lab() as s:
        before = queries.class_counts(s, [batch_id])[batch_id]
        predicted = dict(s.execute(select(Cell.id, Cell.predicted).where(Cell.batch_id == batch_id)).all())
    cell_labels.set_label(lab, ids[0], "ana", excluded="debris")
    cell_labels.set_label(lab, ids[1], "ana", excluded="edge")
    cell_labels.set_label(lab, ids[1], "boss", label="MPP")  # newer: ids[1] counts as an MPP cell again (disputed)
    cell_labels.set_label(lab, ids[2], "ana", excluded="doublet")
    cell_labels.set_label(lab, ids[2], "ana")  # taken back: counts again
    cell_labels.set_label(lab, ids[3], "boss", label="LT-HSC")
    with lab() as s:
        agreed = cell_labels.consensus_of(s, [batch_id])
        excluded = set(s.scalars(queries.excluded_cells([batch_id])))
        assert excluded == {c for c, x in agreed.items() if x.excluded} == {ids[0]}
        after = queries.class_counts(s, [batch_id])[batch_id]
        expected = dict(before)
        expected[predicted[ids[0]]] -= 1
        assert {k: v for k, v in after.items() if v} == {k: v for k, v in expected.items() if v}
        report = load_report(s, batch_id)
        assert (report.cells_total, report.cells_excluded) == (7, 1)
        pred = cell_arrays(s, batch_id, report.classes).pred
        assert len(pred) == 7
        assert sum(n for _, _, n, _ in queries.counts_by_age(s, "lsm")) == sum(after.values())
        columns, rows = batch_rows(s, [batch_id])
        rows = list(rows)
    col = {c: i for i, c in enumerate(columns)}
    assert columns.index("label") < columns.index("batch")
    by_idx = {(r[col["file"]], r[col["cell"]]): r for r in rows}
    with lab() as s:
        where = {
            c.id: (f, c.idx)
            for c, f in s.execute(select(Cell, Image.file).join(Image, Image.id == Cell.image_id)).all()
        }
    cell = {i: by_idx[where[i]] for i in ids[:4]}
    assert [cell[ids[0]][col[k]] for k in ("label", "labelled_by", "excluded")] == ["", "ana", "debris"]
    assert [cell[ids[1]][col[k]] for k in ("label", "labelled_by", "excluded")] == ["MPP", "ana, boss", ""]
    assert [cell[ids[2]][col[k]] for k in ("label", "labelled_by", "excluded")] == ["", "", ""]
    assert [cell[ids[3]][col[k]] for k in ("label", "labelled_by", "excluded")] == ["LT-HSC", "boss", ""]


def test_the_results_page_says_how_many_cells_reviewers_excluded(with_batch):
    """AppTest: the batch's page counts the excluded cells out of its metrics and says so."""
    from lsm_core.lab.open_lab import open_lab
    from tests.helpers import run_page, texts

    lab = open_lab()
    with lab() as s:
        ids = s.scalars(select(Cell.id).where(Cell.batch_id == with_batch.batch_id).order_by(Cell.id)).all()
    query = {"batch": str(with_batch.batch_id)}
    at = run_page("pages/results.py", query)
    cells = next(m for m in at.metric if m.label == "Cells")
    assert cells.value == f"{len(ids):,}" and "reviewers marked as not a cell" not in texts(at)
    cell_labels.set_label(lab, ids[0], "ana", excluded="debris")
    cell_labels.set_label(lab, ids[1], "ana", excluded="out_of_focus")
    at = run_page("pages/results.py", query)
    assert next(m for m in at.metric if m.label == "Cells").value == f"{len(ids) - 2:,}"
    assert "2 found object(s) that reviewers marked as not a cell" in texts(at)
    # the batch picker and the History table count the same cells as the metrics (they counted every found object)
    picked = at.selectbox(key=f"results_batch_{with_batch.batch_id}")
    assert picked.format_func(picked.value).endswith(f"{len(ids) - 2:,} cells (2 not cells)"), picked.options
    history = run_page("pages/history.py")
    table = history.dataframe[0].value
    row = table[table["id"] == with_batch.batch_id].iloc[0]
    assert (row["cells"], row["not cells"]) == (len(ids) - 2, 2)
    lab.dispose()


def test_agreement_per_reviewer_and_consensus_is_in_the_workbook(classified):
    """Item 5: per batch and person (and the consensus), how often the reviewer agreed with the model, and
    the model-vs-reviewer confusion counts; the results workbook's sheets ``review`` and ``review_confusion``."""
    import io

    from openpyxl import load_workbook

    from lsm_core.reports.report import workbook

    lab, batch_id, ids = classified
    with lab() as s:
        predicted = dict(s.execute(select(Cell.id, Cell.predicted).where(Cell.batch_id == batch_id)).all())
    other = {c: next(k for k in ("LT-HSC", "ST-HSC", "MPP") if k != predicted[c]) for c in ids}
    cell_labels.set_label(lab, ids[0], "ana", label=predicted[ids[0]])
    cell_labels.set_label(lab, ids[1], "ana", label=predicted[ids[1]])
    cell_labels.set_label(lab, ids[2], "ana", label=other[ids[2]])
    cell_labels.set_label(lab, ids[3], "ana", excluded="debris")
    cell_labels.set_label(lab, ids[0], "boss", label=other[ids[0]])  # newer than ana's: the consensus follows boss
    with lab() as s:
        rows = {a.reviewer: a for a in cell_labels.agreement(s, [batch_id])}
        book = load_workbook(io.BytesIO(workbook(s, batch_id, 0.0)), read_only=True)
    ana, boss, both = rows["ana"], rows["boss"], rows[cell_labels.CONSENSUS]
    assert (ana.labelled, ana.agreed, ana.not_a_cell, ana.rate) == (4, 2, 1, 0.5)
    assert (boss.labelled, boss.agreed, boss.rate) == (1, 0, 0.0)
    assert (both.labelled, both.agreed, both.not_a_cell) == (4, 1, 1)
    assert ana.confusion[predicted[ids[3]], cell_labels.NOT_A_CELL] >= 1
    assert sum(ana.confusion.values()) == 4
    sheet = list(book["review"].iter_rows(values_only=True))
    assert sheet[0] == ("batch", "reviewer", "cells_labelled", "agreed_with_model", "agreement", "not_a_cell")
    assert [r[1] for r in sheet[1:]] == ["ana", "boss", cell_labels.CONSENSUS]
    assert sheet[1][2:] == (4, 2, 0.5, 1)
    confusion = list(book["review_confusion"].iter_rows(values_only=True))
    assert sum(r[4] for r in confusion[1:] if r[1] == "ana") == 4


def test_the_command_line_lists_the_queue_and_labels_a_cell(classified, db_url, data_dir):
    """`lsm review` prints the queue (uncertain first) and `lsm label BATCH FILE:CELL LABEL` labels, as the
    acting user (LSM_USER), through the same rules."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    lab, batch_id, ids = classified
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, LSM_DATABASE_URL=db_url, LSM_DATA_DIR=str(data_dir), LSM_USER="ana", PYTHONPATH=str(root))

    def cli(*args, ok=True):
        proc = subprocess.run(
            [sys.executable, "-m", "lsm_core", *args], cwd=root, env=env, capture_output=True, text=True
        )
        assert (proc.returncode == 0) == ok, proc.stderr
        return proc

    lines = cli("review", str(batch_id), "--limit", "3").stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["batch", "file", "cell"] and len(lines) == 4
    first = lines[1].split("\t")
    margins = [float(line.split("\t")[5]) for line in lines[1:]]
    assert margins == sorted(margins)
    ref = f"{first[1]}:{first[2]}"
    assert "not a cell (doublet)" in cli("label", str(batch_id), ref, "not-a-cell:doublet").stdout
    assert "unchanged" in cli("label", str(batch_id), ref, "not-a-cell:doublet").stdout
    assert "not a class" in cli("label", str(batch_id), ref, "granulocyte", ok=False).stderr
    assert "no cell 99" in cli("label", str(batch_id), f"{first[1]}:99", "MPP", ok=False).stderr
    env["LSM_USER"] = "bob"
    assert "belongs to ana" in cli("label", str(batch_id), ref, "MPP", ok=False).stderr
    cell_id = cell_labels.find_cell(lab, batch_id, first[1], int(first[2]))
    assert [(x.labelled_by, x.excluded) for x in cell_labels.history(lab, cell_id)] == [("ana", "doublet")]
    env["LSM_USER"] = "ana"
    lines = cli("review", str(batch_id), "--unlabelled", "--limit", "100").stdout.splitlines()
    assert len(lines) == 1 + len(ids) - 1


def test_a_comparison_leaves_excluded_cells_out_and_says_how_many(classified):
    """Item 2 on the comparison: per-mouse counts without the excluded cells, and their number."""
    from lsm_core.reports import compare

    lab, batch_id, ids = classified
    with lab() as s:
        model_id = s.get(Batch, batch_id).model_id
    other = batches.rerun(lab, batch_id, model_id, "ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        before = compare.build(s, [batch_id, other.batch_id], by="owner")
    assert before.excluded == 0
    cell_labels.set_label(lab, ids[0], "ana", excluded="debris")
    cell_labels.set_label(lab, ids[1], "ana", excluded="doublet")
    with lab() as s:
        after = compare.build(s, [batch_id, other.batch_id], by="owner")
    assert after.excluded == 2
    cells = {r["batch"]: r["cells"] for r in after.table.to_dict("records")}
    was = {r["batch"]: r["cells"] for r in before.table.to_dict("records")}
    assert cells == {batch_id: was[batch_id] - 2, other.batch_id: was[other.batch_id]}
