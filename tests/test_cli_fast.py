"""The command line answers at once (issue #26 item 7): ``lsm --help``, ``jobs``, ``review``, ``label``,
``cancel`` and ``export`` import neither torch nor torchvision (the architecture and saliency method names
are read from lsm_core.ml.names, which the registries agree with), and ``lsm label BATCH --from FILE.csv``
gives many labels at once, in one transaction, refused whole with the line numbers of rows that name no cell,
on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.schema import AuditEvent, Cell, CellLabel, Image
from lsm_core.errors import LsmError
from lsm_core.lab import batches, cell_labels
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files, with_settings

ROOT = Path(__file__).resolve().parents[1]


# --- no torch -------------------------------------------------------------------------------------------------
# runs each command in one process, after each saying which of torch and torchvision it has imported
PROBE = """
import contextlib, io, json, sys
from lsm_core.cli import main

out = []
for argv in json.loads(sys.argv[1]):
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        try:
            rc = main(argv)
        except SystemExit as exc:  # --help
            rc = exc.code
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    out.append({"argv": argv, "rc": rc, "said": said.getvalue(), "heavy": heavy[:5]})
print(json.dumps(out))
"""


def probe(*commands: list[str], env: dict[str, str]) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(commands))],
        cwd=ROOT,
        env=dict(env, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_help_and_jobs_import_no_torch(tmp_path):
    """In a fresh data dir: `lsm --help` and `lsm jobs` (which creates and upgrades the database)."""
    env = dict(os.environ, LSM_DATA_DIR=str(tmp_path), LSM_USER="ana")
    env.pop("LSM_DATABASE_URL", None)
    done = probe(["--help"], ["jobs"], ["jobs", "--json"], env=env)
    assert [(d["rc"], d["heavy"]) for d in done] == [(0, [])] * 3, done
    assert "label" in done[0]["said"] and "id\tbatch\towner" in done[1]["said"] and done[2]["said"].strip() == "[]"


def test_the_history_commands_import_no_torch_with_models_in_the_store(with_batch, app_env, tmp_path):
    """A lab whose store holds models (registering them reads the packages with torch) and a classified batch:
    review, label (one cell and a table), export (CSV and xlsx) and cancel run without torch."""
    from db import queries
    from lsm_core.lab.open_lab import open_lab

    lab = open_lab()
    with lab() as s:
        file, idx = s.execute(
            select(Image.file, Cell.idx).join(Cell, Cell.image_id == Image.id).order_by(Cell.id).limit(1)
        ).one()
        model_id = queries.model_by_name(s, "demo-lsm").id
    queued = batches.submit_batch(lab, crop_files(1, seed=3), model_id, "to cancel", owner="ana")
    lab.dispose()
    table = tmp_path / "labels.csv"
    table.write_text(f"file,cell,label\n{file},{idx},ST-HSC\n")
    b = str(with_batch.batch_id)
    done = probe(
        ["review", b],
        ["label", b, f"{file}:{idx}", "MPP"],
        ["label", b, "--from", str(table)],
        ["export", b, "--out", str(tmp_path / "cells.csv")],
        ["export", b, "--out", str(tmp_path / "cells.xlsx")],
        ["cancel", str(queued.job_id)],
        env=dict(os.environ),
    )
    assert [(d["argv"][0], d["rc"], d["heavy"]) for d in done] == [(d["argv"][0], 0, []) for d in done], done
    assert "1 cell(s) labelled" in done[2]["said"]
    assert "cancelled" in done[5]["said"]
    rows = list(csv.DictReader(open(tmp_path / "cells.csv", encoding="utf-8")))
    assert [r["label"] for r in rows if r["file"] == file and r["cell"] == str(idx)] == ["ST-HSC"]


def test_the_names_the_command_line_offers_are_the_registries():
    """lsm_core.ml.names (read without torch) lists exactly the registered architectures and saliency methods,
    and an architecture that is not listed there cannot be registered."""
    from lsm_core.ml import names, nets, saliency

    assert tuple(nets.REGISTRY) == names.ARCHITECTURES
    assert tuple(saliency.METHODS) == names.SALIENCY_METHODS
    with pytest.raises(LsmError, match="lsm_core.ml.names"):

        @nets.register("backbone", "not listed")
        def unlisted_net(num_classes: int):  # pragma: no cover - never built
            raise AssertionError

    assert "unlisted_net" not in nets.REGISTRY


def test_every_subcommand_still_parses_its_arguments():
    """Only the subcommand run gets its arguments (the others' choices are not imported), and each parses as
    it did."""
    from lsm_core.cli import COMMANDS, build_parser

    args = build_parser("train").parse_args(["train", "x", "--task", "lsm", "--register", "m", "--arch", "resnet18"])
    assert (args.arch, args.task) == ("resnet18", "lsm")
    args = build_parser("compare").parse_args(["compare", "1", "2", "--by", "sex", "--out", "c.xlsx"])
    assert args.by == "sex"
    assert build_parser("saliency").parse_args(["saliency", "a.png", "--model", "m", "--out", "o"]).method == "scorecam"
    with pytest.raises(SystemExit):
        build_parser("saliency").parse_args(["saliency", "a.png", "--model", "m", "--out", "o", "--method", "x"])
    full = build_parser()
    for name in COMMANDS:
        only = build_parser(name)
        assert only._subparsers is not None and full._subparsers is not None
    assert full.parse_args(["label", "3", "--from", "t.csv"]).table == "t.csv"


# --- many labels at once --------------------------------------------------------------------------------------
@pytest.fixture
def classified(history, monkeypatch, tmp_path):
    """(lab, batch id, [(file, cell idx)]) of a classified batch of 6 crops owned by ana (one file's name starts
    with '-': the export writes it with a leading apostrophe); LSM_ADMINS=boss."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LSM_ADMINS", "boss")  # for the command lines a test runs
    lab, _, model_id = history
    lab = with_settings(lab, admins=frozenset({"boss"}))
    files = crop_files(5, seed=2601, prefix="imp") + crop_files(1, seed=2602, prefix="-minus")
    sub = batches.submit_batch(lab, files, model_id, "to import", owner="ana")
    assert Worker(lab, device="cpu").run(drain=True) == 1
    with lab() as s:
        cells = s.execute(
            select(Image.file, Cell.idx).join(Cell, Cell.image_id == Image.id).where(Cell.batch_id == sub.batch_id)
        ).all()
    assert len(cells) == 6
    return lab, sub.batch_id, sorted((c.file, c.idx) for c in cells)


def table(path: Path, header: str, *lines: str) -> str:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path.read_text(encoding="utf-8")


def current(lab, batch_id: int) -> dict[tuple[str, int], tuple[str, str | None, str | None]]:
    with lab() as s:
        rows = s.execute(
            select(Image.file, Cell.idx, CellLabel.labelled_by, CellLabel.label, CellLabel.excluded)
            .join(Cell, Cell.id == CellLabel.cell_id)
            .join(Image, Image.id == Cell.image_id)
            .where(CellLabel.batch_id == batch_id, CellLabel.current.is_(True))
        ).all()
    return {(r.file, r.idx): (r.labelled_by, r.label, r.excluded) for r in rows}


def audited(lab) -> int:
    with lab() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "label")) or 0


def test_a_table_labels_many_cells_in_one_go(classified, tmp_path):
    lab, batch_id, cells = classified
    (f0, c0), (f1, c1), (f2, c2), (f3, c3) = cells[1:5]
    text = table(
        tmp_path / "t.csv",
        "File, Cell ,label,page",  # names matched ignoring case and spaces
        f"{f0},{c0},MPP,1",
        f"{f1},{c1},lt-hsc,",  # a class in another case; no page: 1
        f"{f2},{c2}.0,not-a-cell:doublet,1",  # a spreadsheet program's 3.0
        f"{f3},{c3},,1",  # no label: says nothing
        f"{f0},{c0},MPP,1",  # the same again: harmless
    )
    done = cell_labels.import_labels(lab, batch_id, "ana", cell_labels.read_label_table(text), source="t.csv")
    assert done == cell_labels.Imported(labelled=3, taken_back=0, unchanged=0, empty=1, other_batches=0)
    assert current(lab, batch_id) == {
        (f0, c0): ("ana", "MPP", None),
        (f1, c1): ("ana", "LT-HSC", None),
        (f2, c2): ("ana", None, "doublet"),
    }
    with lab() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "label").order_by(AuditEvent.id)).all()
    assert len(events) == 3 and {e.detail["source"] for e in events} == {"t.csv"}
    assert {e.detail["label"] for e in events} == {"MPP", "LT-HSC", "not a cell (doublet)"}
    # again, changed: one kept, one changed (the old row stays in the history), one taken back
    text = table(tmp_path / "t.csv", "file,cell,label", f"{f0},{c0},MPP", f"{f1},{c1},ST-HSC", f"{f2},{c2},none")
    done = cell_labels.import_labels(lab, batch_id, "ana", cell_labels.read_label_table(text))
    assert done == cell_labels.Imported(labelled=1, taken_back=1, unchanged=1, empty=0, other_batches=0)
    assert current(lab, batch_id) == {
        (f0, c0): ("ana", "MPP", None),
        (f1, c1): ("ana", "ST-HSC", None),
        (f2, c2): ("ana", None, None),
    }
    cell_id = cell_labels.find_cell(lab, batch_id, f1, c1)
    assert [(x.label, x.current) for x in cell_labels.history(lab, cell_id)] == [("LT-HSC", False), ("ST-HSC", True)]
    assert audited(lab) == 5


def test_a_table_is_refused_whole_with_the_lines_of_its_bad_rows(classified, tmp_path):
    lab, batch_id, cells = classified
    (f0, c0), (f1, c1) = cells[1:3]
    text = table(
        tmp_path / "t.csv",
        "file,cell,label",
        f"{f0},{c0},MPP",  # line 2: good
        f"{f0},99,MPP",  # 3: no such cell
        "nowhere.png,1,MPP",  # 4: no such file
        f"{f1},{c1},granulocyte",  # 5: not a class
        f"{f1},,MPP",  # 6: no cell named
        f"{f0},{c0},ST-HSC",  # 7: the cell of line 2, labelled otherwise
        f"{f1},{c1},not-a-cell:ugly",  # 8: not a reason
        "nowhere.png,2,MPP",  # 9: no such file, again
    )
    with pytest.raises(LsmError) as refused:
        cell_labels.import_labels(lab, batch_id, "ana", cell_labels.read_label_table(text))
    message = str(refused.value)
    assert "nothing was labelled: 7 row(s) refused (lines 3-9)" in message
    assert f"line 3: batch {batch_id} has no cell 99 in {f0!r} (page 1)" in message
    assert f"lines 4, 9: batch {batch_id} has no file 'nowhere.png'" in message
    assert "line 5: 'granulocyte' is not a class" in message
    assert "line 6: the cell (and page) must be numbers" in message
    assert "line 7: names a cell that line 2 labels otherwise" in message
    assert "line 8: unknown reason 'ugly'" in message
    assert current(lab, batch_id) == {} and audited(lab) == 0  # not even line 2
    with pytest.raises(LsmError, match="needs the columns file, cell, label .* it has no label"):
        cell_labels.read_label_table("file,cell,class\nx.png,1,MPP\n")


def test_members_import_labels_into_their_own_batches_only(classified, tmp_path):
    lab, batch_id, cells = classified
    f0, c0 = cells[1]
    rows = cell_labels.read_label_table(table(tmp_path / "t.csv", "file,cell,label", f"{f0},{c0},MPP"))
    with pytest.raises(LsmError, match="belongs to ana"):
        cell_labels.import_labels(lab, batch_id, "bob", rows)
    assert current(lab, batch_id) == {}
    assert cell_labels.import_labels(lab, batch_id, "boss", rows).labelled == 1
    assert current(lab, batch_id) == {(f0, c0): ("boss", "MPP", None)}
    with pytest.raises(LsmError, match="batch 999999 does not exist"):
        cell_labels.import_labels(lab, 999_999, "boss", rows)


def test_the_export_comes_back_as_it_is(classified, tmp_path):
    """A batch's CSV export, labels filled in a spreadsheet program (its `label` and `excluded` columns), comes
    back: names that start like a formula carry the export's apostrophe, rows without labels are left out,
    rows of another batch are left alone."""
    from lsm_core.reports.export import batch_rows, write_table

    lab, batch_id, cells = classified
    cell_labels.set_label(lab, cell_labels.find_cell(lab, batch_id, *cells[2]), "ana", excluded="edge")
    out = tmp_path / "cells.csv"
    with lab() as s:
        columns, rows = batch_rows(s, [batch_id])
        write_table(out, columns, rows)
    exported = list(csv.DictReader(open(out, encoding="utf-8")))
    minus = cells[0]
    assert minus[0].startswith("-") and "'" + minus[0] in {r["file"] for r in exported}
    assert minus[0] not in {r["file"] for r in exported}
    for r in exported:
        if (r["file"], r["cell"]) == ("'" + minus[0], str(minus[1])):
            r["label"] = "LT-HSC"
        elif (r["file"], r["cell"]) == (cells[1][0], str(cells[1][1])):
            r["excluded"] = "out of focus"
    other = dict(exported[-1], batch=str(batch_id + 1000), label="MPP")
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(exported[0]))
        writer.writeheader()
        writer.writerows([*exported, other])
    rows = cell_labels.read_label_table(out.read_text(encoding="utf-8"))
    done = cell_labels.import_labels(lab, batch_id, "ana", rows)
    assert done == cell_labels.Imported(labelled=2, taken_back=0, unchanged=1, empty=3, other_batches=1)
    assert current(lab, batch_id) == {
        minus: ("ana", "LT-HSC", None),
        cells[1]: ("ana", None, "out_of_focus"),
        cells[2]: ("ana", None, "edge"),
    }


def test_the_command_line_imports_a_table_and_says_why_it_refuses_one(classified, db_url, data_dir, tmp_path):
    lab, batch_id, cells = classified
    env = dict(os.environ, LSM_DATABASE_URL=db_url, LSM_DATA_DIR=str(data_dir), LSM_USER="ana", PYTHONPATH=str(ROOT))

    def cli(*args, ok=True):
        proc = subprocess.run(
            [sys.executable, "-m", "lsm_core", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert (proc.returncode == 0) == ok, proc.stderr
        return proc

    good = tmp_path / "good.csv"
    good.write_text("\ufefffile,cell,label\n" + "".join(f"{f},{c},MPP\n" for f, c in cells[1:]), encoding="utf-8")
    said = cli("label", str(batch_id), "--from", str(good)).stdout
    assert f"{good}: 5 cell(s) labelled, 0 label(s) taken back" in said
    assert cli("label", str(batch_id), "--from", str(good)).stdout.endswith("rows left alone: 5 unchanged\n")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"file,cell,label\n{cells[1][0]},{cells[1][1]},ST-HSC\nnowhere.png,1,MPP\n", encoding="utf-8")
    err = cli("label", str(batch_id), "--from", str(bad), ok=False).stderr
    assert "nothing was labelled: 1 row(s) refused (line 3)" in err and "no file 'nowhere.png'" in err
    assert set(current(lab, batch_id).values()) == {("ana", "MPP", None)}
    assert "no such file" in cli("label", str(batch_id), "--from", str(tmp_path / "none.csv"), ok=False).stderr
    err = cli("label", str(batch_id), "x.png:1", "MPP", "--from", str(good), ok=False).stderr
    assert "not both" in err
