"""The SQL history at lab scale: bulk insert of 1,000,000 cells and the aggregates the pages run.

On each engine (a fresh SQLite file; a fresh PostgreSQL database at LSM_BENCH_PG, default
postgresql://postgres@127.0.0.1:5432/postgres), with 100 batches of 10,000 cells over 10 mouse ages:
- bulk insert through the worker's own function (COPY on PostgreSQL), in chunks of 10,000 rows (cells/s);
- per-batch counts per class above a score threshold (one batch, and all 100);
- the by-age aggregate over every cell.
Each timing is also printed as a ratio to `SELECT count(*) FROM cells` on the same engine, in this process.
Targets: insert >= 50,000 cells/s; by-age aggregate < 1 s on PostgreSQL.

Usage: python bench/history.py [--cells N] [--engines sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from db import queries  # noqa: E402
from db.bulk import insert_cells  # noqa: E402
from db.schema import Batch, Cell, Image, Model  # noqa: E402
from db.session import make_engine, session_factory, upgrade  # noqa: E402

CLASSES = ["LT-HSC", "ST-HSC", "MPP"]


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(url: str, n_cells: int, n_batches: int = 100) -> dict[str, float]:
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    per_batch = n_cells // n_batches
    with sessions.begin() as s:
        model = Model(
            task="lsm",
            name="bench",
            version=1,
            classes=CLASSES,
            architecture="tiny_cnn",
            input_size=64,
            pixel_size_um=0.2,
            crop_um=12.8,
            weights_sha256="0" * 64,
            path="bench/1",
        )
        s.add(model)
        s.flush()
        batch_ids, image_ids = [], []
        for b in range(n_batches):
            batch = Batch(
                name=f"b{b}", owner="bench", model_id=model.id, status="done", age_days=float(56 + 60 * (b % 10))
            )
            s.add(batch)
            s.flush()
            image = Image(batch_id=batch.id, position=0, file=f"b{b}.tif", page=1, done=True, n_cells=per_batch)
            s.add(image)
            s.flush()
            batch_ids.append(batch.id)
            image_ids.append(image.id)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=per_batch).astype(np.float32)
    pred = probs.argmax(1)
    score = probs.max(1)
    chunk = 10_000
    t0 = time.perf_counter()
    for batch_id, image_id in zip(batch_ids, image_ids):
        for start in range(0, per_batch, chunk):
            rows = [
                {
                    "batch_id": batch_id,
                    "image_id": image_id,
                    "idx": i + 1,
                    "x": 10,
                    "y": 20,
                    "w": 40,
                    "h": 40,
                    "predicted": CLASSES[pred[i]],
                    "score": float(score[i]),
                    "probs": probs[i].tolist(),
                    "flags": "",
                }
                for i in range(start, min(start + chunk, per_batch))
            ]
            with sessions.begin() as s:
                insert_cells(s, rows)
    insert_s = time.perf_counter() - t0
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    with sessions() as s:
        total = s.scalar(select(func.count()).select_from(Cell))
        assert total == per_batch * n_batches, total
        count_s = timed(lambda: s.scalar(select(func.count()).select_from(Cell)))
        one_s = timed(lambda: queries.class_counts(s, [batch_ids[0]], threshold=0.5))
        all_s = timed(lambda: queries.class_counts(s, batch_ids, threshold=0.5))
        age_s = timed(lambda: queries.counts_by_age(s, "lsm", threshold=0.5))
        ages = queries.counts_by_age(s, "lsm", threshold=0.0)
        assert sum(r[2] for r in ages) == total
    engine.dispose()
    return {
        "cells": total,
        "insert_per_s": total / insert_s,
        "count_s": count_s,
        "one_batch_s": one_s,
        "all_batches_s": all_s,
        "by_age_s": age_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--engines", default="sqlite,postgresql")
    args = parser.parse_args()
    for engine_name in args.engines.split(","):
        if engine_name == "sqlite":
            tmp = tempfile.mkdtemp()
            url, cleanup = f"sqlite:///{tmp}/bench.db", None
        else:
            import psycopg

            admin = os.environ.get("LSM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
            name = f"lsm_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"

            def cleanup(admin=admin, name=name):
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        try:
            r = run(url, args.cells)
        finally:
            if cleanup:
                cleanup()
        base = r["count_s"]
        print(f"{engine_name}: {r['cells']:,} cells")
        print(f"  bulk insert: {r['insert_per_s']:,.0f} cells/s")
        print(f"  count(*) baseline: {base * 1000:.0f} ms")
        print(f"  per-class counts, one batch: {r['one_batch_s'] * 1000:.1f} ms (ratio {r['one_batch_s'] / base:.2f})")
        print(
            f"  per-class counts, 100 batches: {r['all_batches_s'] * 1000:.0f} ms "
            f"(ratio {r['all_batches_s'] / base:.2f})"
        )
        print(f"  by-age aggregate: {r['by_age_s'] * 1000:.0f} ms (ratio {r['by_age_s'] / base:.2f})")


if __name__ == "__main__":
    main()
