"""Bulk writes, inside the caller's transaction: cells through PostgreSQL's COPY where available (executemany
elsewhere); an upload's rows (its batch, images, job and audit event) in as few round trips as the database
allows (:func:`insert_together`)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    JSON,
    ColumnElement,
    Connection,
    Insert,
    Table,
    bindparam,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.schema import Base, Cell, Image

CELL_COLUMNS = (
    *("batch_id", "image_id", "idx", "x", "y", "w", "h", "predicted", "score", "probs", "flags", "signal"),
    "feature_distance",
    *("outline", "area_um2", "diameter_um", "perimeter_um", "circularity", "eccentricity"),
)
JSON_COLUMNS = ("probs", "signal", "outline")


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


def insert_images(s: Session, batch_id: int, rows: Sequence[dict[str, Any]]) -> int:
    """Insert image rows (dicts of ``images`` columns, every row the same keys) of batch ``batch_id`` within
    ``s``'s transaction, as multi-row INSERTs; returns the number written."""
    return _insert_many(s.connection(), _table(Image), [{**r, "batch_id": batch_id} for r in rows])


def next_id(s: Session, model: type[Base]) -> ColumnElement[Any]:
    """A column expression that takes a new id of ``model``'s table from its sequence on PostgreSQL, to be
    selected beside another query (no round trip of its own); NULL elsewhere, where the row's INSERT gives
    its id."""
    if s.get_bind().dialect.name == "postgresql":
        return func.nextval(func.pg_get_serial_sequence(_table(model).name, "id"))
    return null()


def insert_together(
    s: Session, parts: Sequence[tuple[type[Base], Sequence[dict[str, Any]]]], returning: InstrumentedAttribute
) -> Any:
    """Insert rows (column values; the rows of a part have the same keys) of several mapped classes' tables
    within ``s``'s transaction, in order, and return the ``returning`` column of the last part's one row.

    No part may need another's result (every id a row refers to is given, see :func:`next_id`), so on
    PostgreSQL they go as one statement, one round trip instead of one per table: the parts before the last
    are data-modifying CTEs (foreign keys are checked at the statement's end), a part of many rows an
    ``INSERT ... SELECT FROM unnest(<one array per column>)``. That statement is built once per shape (the
    tables, their keys, one row or many) with a named parameter per column, so neither building it nor
    compiling it costs anything the next time, whatever the number of rows (and no limit on parameters).
    Elsewhere (SQLite runs in process: no round trip to save) one statement per table. The columns'
    Python-side defaults are filled in here, for both."""
    given = [frozenset(rows[0]) for _, rows in parts if rows]  # the keys the caller gave, before defaults
    done = [(_table(m), [_with_defaults(_table(m), row) for row in rows]) for m, rows in parts if rows]
    *before, (last, (row, *more)) = done
    assert not more, "the last part is one row"
    assert all(tuple(r) == tuple(rows[0]) for _, rows in done for r in rows), "keys differ"
    conn = s.connection()
    # one statement per table on SQLite, and where many rows hold JSON (no array of JSON values is sent)
    if conn.dialect.name != "postgresql" or any(len(rows) > 1 and _json_columns(t, list(rows[0])) for t, rows in done):
        if len(done) > 1 and conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            raise AssertionError("these rows need several statements: not atomic on a connection in autocommit")
        for table, rows in before:
            _insert_many(conn, table, rows)
        return conn.execute(insert(last).returning(returning), row).scalar_one()
    # a constant default the caller left out (a count's 0, a flag's False) goes into the statement's text, not
    # as a parameter: fewer parameters, so that psycopg keeps the statement's conversion (up to 50 of them)
    shape = []
    params: dict[str, Any] = {}
    for i, ((table, rows), keys_given) in enumerate(zip(done, given)):
        constants = _constant_defaults(table, keys_given)
        keys = tuple(k for k in rows[0] if k not in constants)
        shape.append((table, keys, len(rows) > 1, tuple(constants.items())))
        if len(rows) > 1:
            params.update({f"p{i}_{k}": [r[k] for r in rows] for k in keys})
        else:
            params.update({f"p{i}_{k}": rows[0][k] for k in keys})
    return conn.execute(_together(tuple(shape), returning.key), params).scalar_one()


def _constant_defaults(table: Table, given: frozenset[str]) -> dict[str, Any]:
    """The scalar Python-side defaults of ``table``'s columns that the caller left out."""
    out = {}
    for column in table.columns:
        default = column.default
        if column.key not in given and default is not None and default.is_scalar:
            out[column.key] = default.arg  # type: ignore[attr-defined]
    return out


@functools.lru_cache(maxsize=64)
def _together(
    shape: tuple[tuple[Table, tuple[str, ...], bool, tuple[tuple[str, Any], ...]], ...], returning: str
) -> Insert:
    """:func:`insert_together`'s statement for PostgreSQL: the parts but the last as CTEs, their values the
    parameters ``p<part>_<column>`` (an array per column for a part of many rows) and the constants given
    (rendered in the text)."""
    inserts = []
    for i, (table, keys, many, constants) in enumerate(shape):
        fixed = {k: literal_column(_sql_literal(table.c[k], v), table.c[k].type) for k, v in constants}
        if many:
            arrays = [bindparam(f"p{i}_{k}", type_=ARRAY(table.c[k].type)) for k in keys]
            unnested = func.unnest(*arrays).table_valued(*keys).render_derived()
            columns = [*unnested.c, *(value.label(k) for k, value in fixed.items())]
            inserts.append(insert(table).from_select([*keys, *fixed], select(*columns), include_defaults=False))
        else:
            values = {k: bindparam(f"p{i}_{k}", type_=table.c[k].type) for k in keys}
            inserts.append(insert(table).values({**values, **fixed}))
    *ctes, last = inserts
    named = [stmt.cte(f"new_{table.name}") for stmt, (table, *_rest) in zip(ctes, shape)]
    return last.returning(shape[-1][0].c[returning]).add_cte(*named)


def _sql_literal(column, value: Any) -> str:
    """``value`` as PostgreSQL writes it in a statement's text (a column's constant default)."""
    from sqlalchemy.dialects import postgresql

    return str(
        literal(value, column.type).compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    )


def _json_columns(table: Table, keys: Sequence[str]) -> list[str]:
    return [k for k in keys if isinstance(table.c[k].type, JSON)]


def _insert_many(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows (the same keys each) as multi-row INSERTs: SQLAlchemy sends an executemany with RETURNING
    that way ("insertmanyvalues", at most 1,000 rows a statement) on every dialect; without RETURNING, psycopg
    would send one INSERT per row."""
    if not rows:
        return 0
    return len(conn.execute(insert(table).returning(table.c.id), list(rows)).all())


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


def _with_defaults(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the Python-side defaults of the columns it leaves out (a CTE's INSERT gets none of its own)."""
    out = dict(row)
    for column in table.columns:
        default = column.default
        if column.key in out or default is None:
            continue
        if default.is_scalar:
            out[column.key] = default.arg  # type: ignore[attr-defined]
        elif default.is_callable:
            out[column.key] = default.arg(None)  # type: ignore[attr-defined]
    return out


def _copied(column: str, value):
    if column in JSON_COLUMNS:
        return None if value is None else json.dumps(value)
    return value
