"""Spreadsheets: rows streamed to CSV or XLSX (openpyxl's write-only mode keeps memory flat)."""
from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from openpyxl import Workbook

from lsm_core.errors import LsmError

FORMATS = (".csv", ".xlsx")


def _cell_text(value):
    # Spreadsheet programs run text that starts with = + - @ as a formula: keep file names inert.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def write_table(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence], sheet: str = "cells") -> int:
    """Write ``rows`` under ``columns`` to ``path`` (.csv or .xlsx); returns the number of rows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise LsmError(f"{path.name}: the output must end in .csv or .xlsx")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    if suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if v is None else v for v in row])
                n += 1
        return n
    book = Workbook(write_only=True)
    ws = book.create_sheet(sheet)
    ws.append(list(columns))
    for row in rows:
        ws.append([_cell_text(v) for v in row])
        n += 1
    book.save(path)
    return n
