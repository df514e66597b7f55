"""Spreadsheets: rows streamed to CSV or XLSX (openpyxl's write-only mode keeps memory flat)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from openpyxl import Workbook

from lsm_core.errors import LsmError

FORMATS = (".csv", ".xlsx")


def spreadsheet_text(value):
    # Spreadsheet programs run text that starts with = + - @ as a formula: keep file names inert.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def add_sheet(book: Workbook, name: str, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """A sheet ``name`` of a write-only workbook: the header, then ``rows`` (text made inert, NaN left empty);
    returns the number of rows. The one loop every xlsx of the app is written with."""
    sheet = book.create_sheet(name)
    sheet.append(list(columns))
    n = 0
    for row in rows:
        sheet.append([None if isinstance(v, float) and math.isnan(v) else spreadsheet_text(v) for v in row])
        n += 1
    return n


def workbook_bytes(book: Workbook) -> bytes:
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def write_csv(fh, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Write ``columns`` and ``rows`` as CSV to an open text file (None becomes an empty field)."""
    writer = csv.writer(fh)
    writer.writerow(columns)
    n = 0
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
        n += 1
    return n


def write_table(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence], sheet: str = "cells") -> int:
    """Write ``rows`` under ``columns`` to ``path`` (.csv or .xlsx); returns the number of rows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise LsmError(f"{path.name}: the output must end in .csv or .xlsx")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            return write_csv(fh, columns, rows)
    book = Workbook(write_only=True)
    n = add_sheet(book, sheet, columns, rows)
    book.save(path)
    return n


BATCH_COLUMNS = [
    "batch",
    "batch_name",
    "owner",
    "mouse_id",
    "age_days",
    "sex",
    "strain",
    "gate",
    "imaging_date",
    "notes",
]


def batch_rows(s, batch_ids: Sequence[int]) -> tuple[list[str], Iterable[list]]:
    """Columns and rows of ``batch_ids``' cells: the ``classify`` columns, then ``batch`` and its metadata.

    All batches must share one model's classes. ``s`` is an open database session.
    """
    from db.queries import export_rows
    from db.schema import Batch, Model
    from lsm_core.ml.classify import NO_CELLS_NOTE, result_columns

    batches = []
    for batch_id in batch_ids:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise LsmError(f"no batch {batch_id}")
        batches.append(batch)
    class_sets = {tuple(s.get(Model, b.model_id).classes) for b in batches}
    if len(class_sets) != 1:
        raise LsmError("these batches were classified by models with different classes; export them separately")
    classes = list(class_sets.pop())
    columns = result_columns(classes) + BATCH_COLUMNS

    def rows() -> Iterable[list]:
        for b in batches:
            meta = [b.id, b.name, b.owner, b.mouse_id, b.age_days, b.sex, b.strain, b.gate, b.imaging_date, b.notes]
            for image, cells in export_rows(s, b.id):
                if image.error or not cells:
                    note = (
                        "" if image.error else (image.note or (NO_CELLS_NOTE if image.done else "not classified yet"))
                    )
                    yield [
                        image.file,
                        image.page,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        *[None] * len(classes),
                        image.error or "",
                        "",
                        note,
                        *meta,
                    ]
                    continue
                for c in cells:
                    yield [
                        image.file,
                        image.page,
                        c.idx,
                        c.x,
                        c.y,
                        c.w,
                        c.h,
                        c.predicted,
                        c.score,
                        *c.probs,
                        "",
                        c.flags,
                        "",
                        *meta,
                    ]

    return columns, rows()
