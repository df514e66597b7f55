"""Bulk writes of cells: PostgreSQL's COPY where available, executemany elsewhere, inside the caller's transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import insert
from sqlalchemy.orm import Session

from db.schema import Cell

CELL_COLUMNS = ("batch_id", "image_id", "idx", "x", "y", "w", "h", "predicted", "score", "probs", "flags", "signal")
JSON_COLUMNS = ("probs", "signal")


def insert_cells(s: Session, rows: Sequence[dict]) -> int:
    """Insert cell rows (dicts with CELL_COLUMNS) within ``s``'s transaction; returns the number written."""
    if not rows:
        return 0
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection  # psycopg 3, same transaction as the session
        assert raw is not None  # the session's connection is checked out and open, so its driver connection exists
        with raw.cursor() as cur:
            with cur.copy(f"COPY cells ({', '.join(CELL_COLUMNS)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row([_copied(c, r.get(c)) for c in CELL_COLUMNS])
        return len(rows)
    conn.execute(insert(Cell), [{c: r.get(c) for c in CELL_COLUMNS} for r in rows])
    return len(rows)


def _copied(column: str, value):
    if column in JSON_COLUMNS:
        return None if value is None else json.dumps(value)
    return value
