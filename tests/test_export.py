"""Spreadsheets never carry live formulas or characters that break them (issue #14, items 6 and 12).

Text that a spreadsheet program reads as a formula (a cell starting with = + - @, a tab or a carriage return)
gets a leading apostrophe; control characters are removed (openpyxl refuses them: IllegalCharacterError).
Every writer goes through one function, export.spreadsheet_text: the batch's xlsx and CSV downloads, the
Compare workbook, and the command line's `export` and `classify --out`."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import openpyxl
import pytest
from openpyxl import Workbook

from lsm_core.reports.export import add_sheet, spreadsheet_text, workbook_bytes, write_csv, write_table
from tests.helpers import crop_files, png_bytes

FORMULA_NAMES = ['=HYPERLINK("http://x")', "=1+2", "-2+3", "+1-1", "@SUM(A1)", "\t=1+2", "\r=1+2"]
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def unsafe(value, csv_field: bool = False) -> str | None:
    """Why a cell's value (as read back) is not inert text, or None. A CSV field that is a number (-0.5) is one."""
    if not isinstance(value, str):
        return None
    if csv_field and re.fullmatch(r"-?\d+(\.\d*)?(e[-+]?\d+)?", value):
        return None
    if CONTROL.search(value):
        return "control character"
    if value[:1] in ("=", "+", "-", "@", "\t", "\r") or value.lstrip()[:1] in ("=", "+", "-", "@"):
        return "formula start"
    return None


def check_csv(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    bad = [(v, unsafe(v, csv_field=True)) for row in rows for v in row if unsafe(v, csv_field=True)]
    assert not bad, bad
    return rows


def check_xlsx(data: bytes) -> dict[str, list[list]]:
    book = openpyxl.load_workbook(io.BytesIO(data))
    sheets = {}
    for sheet in book.worksheets:
        formulas = [c.coordinate for row in sheet.iter_rows() for c in row if c.data_type == "f"]
        assert not formulas, f"{sheet.title}: formulas in {formulas}"
        values = [list(row) for row in sheet.iter_rows(values_only=True)]
        bad = [(v, unsafe(v)) for row in values for v in row if unsafe(v)]
        assert not bad, f"{sheet.title}: {bad}"
        sheets[sheet.title] = values
    return sheets


# --- the one function ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=1+2", "'=1+2"),
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("-2+3", "'-2+3"),
        ("+1", "'+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1+2", "'\t=1+2"),
        ("\r=1+2", "'\r=1+2"),
        (" =1+2", "' =1+2"),
        ("\x01=1+2", "'=1+2"),  # the control character goes first: what is left is still a formula
        ("a\x01b\x1bc\x7fd\x85e", "abcde"),
        ("two\nlines\tand a tab", "two\nlines\tand a tab"),
        ("surrogate \udcff", "surrogate "),
        ("M17 LT-HSC", "M17 LT-HSC"),
        ("", ""),
        (-1.5, -1.5),
        (-3, -3),
        (0.25, 0.25),
        (None, None),
    ],
)
def test_spreadsheet_text_makes_text_inert_and_leaves_numbers(value, written):
    out = spreadsheet_text(value)
    assert out == written and type(out) is type(written)


def test_every_writer_uses_it_and_numbers_stay_numbers(tmp_path):
    columns = ["file", "score", "=header"]
    rows = [[name + "\x01\x1b.png", -0.5, name] for name in FORMULA_NAMES]
    buf = io.StringIO()
    write_csv(buf, columns, rows)
    read = check_csv(buf.getvalue())
    assert read[0][2] == "'=header"
    assert read[1][0] == '\'=HYPERLINK("http://x").png' and read[1][1] == "-0.5"

    book = Workbook(write_only=True)
    add_sheet(book, "cells", columns, rows)
    sheet = check_xlsx(workbook_bytes(book))["cells"]
    assert sheet[0][2] == "'=header"
    assert [r[1] for r in sheet[1:]] == [-0.5] * len(FORMULA_NAMES)  # a number, not text

    for suffix in (".csv", ".xlsx"):
        path = tmp_path / f"t{suffix}"
        assert write_table(path, columns, rows) == len(rows)
        if suffix == ".csv":
            check_csv(path.read_text(encoding="utf-8"))
        else:
            check_xlsx(path.read_bytes())


# --- a real batch, its downloads, the comparison and the command line -----------------------------------------
def _hostile_uploads(seed: int):
    """What the Classify page hands to submit_batch: single files whose names are formulas, and a ZIP whose
    member names hold control characters (and formulas, below the archive's name)."""
    from lsm_core.imaging.readers.archives import RawFile, iter_upload

    crops = crop_files(8, seed=seed)
    files = [RawFile(f"{name}.png", crops[i].data) for i, name in enumerate(FORMULA_NAMES[:5])]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ctl\x01name\x1b.png", crops[5].data)
        zf.writestr("=1+2.png", crops[6].data)
        zf.writestr("-2+3/@SUM(A1).png", crops[7].data)
    files.append(RawFile("=cells.zip", archive.getvalue()))
    return [raw for f in files for raw in iter_upload(f.source, f.data)]


@pytest.fixture
def hostile_batches(app_env):
    """Two classified batches (a young and an aged mouse) with formulas in every text a user gives."""
    from db import queries
    from lsm_core.lab.batches import BatchMeta, submit_batch
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.worker import Worker

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    ids = []
    for i, age in enumerate((70, 700)):
        meta = BatchMeta(
            mouse_id=f"-M{i}", age_days=age, strain="+C57BL/6", gate="=LSK", notes='@SUM(A1)\n=HYPERLINK("x")'
        )
        ids.append(submit_batch(lab, _hostile_uploads(90 + i), model_id, f"=batch{i}+1", owner="-ana", meta=meta))
    Worker(lab, device="cpu").run(drain=True)
    yield lab, [sub.batch_id for sub in ids]
    lab.dispose()


def _comparison_xlsx(lab, batch_ids):
    from lsm_core.reports import compare
    from lsm_core.reports.stats import parse_bins

    with lab() as s:
        result = compare.build(s, batch_ids, by="age", bins=parse_bins(compare.DEFAULT_BINS))
        return compare.workbook(s, result)


def test_batch_downloads_and_comparison_hold_no_formula(hostile_batches):
    from lsm_core.reports.report import cells_csv, workbook

    lab, ids = hostile_batches
    with lab() as s:
        sheets = check_xlsx(workbook(s, ids[0], 0.0))
        rows = check_csv(cells_csv(s, ids[0]).decode("utf-8"))
    files = {r[0] for r in rows[1:]}
    assert '\'=HYPERLINK("http://x").png' in files and "'-2+3.png" in files and "'@SUM(A1).png" in files
    cells = sheets["cells"]
    header = cells[0]
    assert {r[header.index("batch_name")] for r in cells[1:]} == {"'=batch0+1"}
    assert all(isinstance(r[header.index("score")], float) for r in cells[1:] if r[header.index("cell")])
    assert ["batch_name", "'=batch0+1"] in sheets["batch"] and ["mouse_id", "'-M0"] in sheets["batch"]
    comparison = check_xlsx(_comparison_xlsx(lab, ids))
    per_mouse = comparison["per_mouse"]
    assert "'-M0" in per_mouse[1] + per_mouse[2] and "'=batch1+1" in per_mouse[1] + per_mouse[2]


def test_a_control_character_stored_before_names_were_cleaned_still_exports(hostile_batches):
    """Old rows may hold names with control characters (stored before images.clean_name): every writer copes."""
    from db.schema import Batch, Image
    from lsm_core.reports.report import cells_csv, workbook

    lab, ids = hostile_batches
    with lab.begin() as s:
        s.add(Image(batch_id=ids[0], position=99, file="old\x01name\x1b.png", page=1, done=True, n_cells=0))
        s.get(Batch, ids[0]).notes = "bell\x07 and escape\x1b[31m"
        s.get(Batch, ids[1]).mouse_id = "\x02M1"
    with lab() as s:
        sheets = check_xlsx(workbook(s, ids[0], 0.0))
        rows = check_csv(cells_csv(s, ids[0]).decode("utf-8"))
    assert "oldname.png" in [r[0] for r in sheets["cells"]] and "oldname.png" in [r[0] for r in rows]
    assert ["notes", "bell and escape[31m"] in sheets["batch"]
    check_xlsx(_comparison_xlsx(lab, ids))


def test_command_line_export_and_classify_write_no_formula(hostile_batches, tmp_path, monkeypatch):
    from lsm_core import cli

    lab, ids = hostile_batches
    for suffix in (".csv", ".xlsx"):
        out = tmp_path / f"export{suffix}"
        assert cli.main(["export", *map(str, ids), "--out", str(out)]) == 0
        if suffix == ".csv":
            rows = check_csv(out.read_text(encoding="utf-8"))
            assert "'=batch1+1" in {r[rows[0].index("batch_name")] for r in rows[1:]}
        else:
            check_xlsx(out.read_bytes())

    # files on disk whose names are formulas or hold control characters, given as they are (relative names)
    folder = tmp_path / "images"
    folder.mkdir()
    names = ['=HYPERLINK("x","y").png', "-2+3.png", "@SUM(A1).png", "+1.png", "ctl\x01name\x1b.png"]
    crops = crop_files(len(names), seed=97)
    for name, crop in zip(names, crops):
        (folder / name).write_bytes(crop.data)
    with zipfile.ZipFile(folder / "=cells.zip", "w") as zf:
        zf.writestr("ctl\x01member\x1b.png", png_bytes(__import__("numpy").full((64, 64), 0.5)))
    monkeypatch.chdir(folder)
    out = tmp_path / "classified.csv"
    assert cli.main(["classify", "--model", "demo-lsm", "--out", str(out), "--", *names, "=cells.zip"]) == 0
    rows = check_csv(out.read_text(encoding="utf-8"))
    files = {r[0] for r in rows[1:]}
    assert {'\'=HYPERLINK("x","y").png', "'-2+3.png", "'@SUM(A1).png", "'+1.png"} <= files
    xlsx = tmp_path / "classified.xlsx"
    assert cli.main(["classify", "--model", "demo-lsm", "--out", str(xlsx), "--", *names]) == 0
    check_xlsx(Path(xlsx).read_bytes())


def test_text_longer_than_a_spreadsheet_cell_holds_is_cut_and_says_so():
    """Excel refuses a workbook whose cell holds more than 32,767 characters (a long batch note, a model's
    training record): the xlsx cell is cut, and ends saying so; the CSV keeps the whole text."""
    book = Workbook(write_only=True)
    add_sheet(book, "notes", ["note"], [["x" * 40_000], ["short"]])
    sheet = openpyxl.load_workbook(io.BytesIO(workbook_bytes(book)))["notes"]
    long_cell, short = sheet["A2"].value, sheet["A3"].value
    assert len(long_cell) <= 32_767 and long_cell.endswith("(cut: 40,000 characters in all)") and short == "short"
    out = io.StringIO()
    write_csv(out, ["note"], [["x" * 40_000]])
    assert ("x" * 40_000) in out.getvalue()
