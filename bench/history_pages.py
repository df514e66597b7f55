"""A big history stays fast: the History and Compare pages over 2,000 batches and 1,000,000 cells, in chromium.

Fills a fresh PostgreSQL database (LSM_BENCH_PG, default postgresql://postgres@127.0.0.1:5432/postgres, is
where it is created) with a lab's history: 2,000 batches of 400 mice (5 sorted populations each, a few hundred
ages, 200 owners, two strains), 1,000,000 cells in fields of view of up to 60 cells (bulk insert through
db.bulk.insert_cells, COPY), one demo LSM model; then VACUUM (ANALYZE), as autovacuum would. Serves the app
on it (`python -m lsm_core serve`) and, in headless chromium, after one warm-up visit each, times (median of
--repeat rounds, each round visiting every page in turn):
- the Models page until its table is drawn (the baseline);
- the History page until its batch table is drawn;
- the Compare page as it opens (every batch of the default model; one per mouse: 400 batches) until its
  three figures and its tests table are drawn;
- the Compare page over 100 batches: the 100 mice of one strain, chosen with the page's own "Strain or
  reporter (exact)" filter (500 batches, the newest of each mouse), from pressing Enter until the page has
  redrawn for them.
Prints the absolute times and their ratios to the Models page. Goal: History and Compare (100 batches) < 2 s.

Usage: python bench/history_pages.py [--batches N] [--cells N] [--repeat R] [--keep | --reuse NAME --data-dir D]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CLASSES = ["LT-HSC", "ST-HSC", "MPP"]
GATES = ["LT-HSC", "ST-HSC", "MPP", "LSK", "LSK re-run"]  # the five batches of each mouse
STRAIN, OTHER_STRAIN = "Hoxb5-tri-mCherry", "C57BL/6J"
PER_IMAGE = 60


def strain_mice(n_batches: int) -> int:
    """How many mice are of the strain compared (100 at full size)."""
    return min(100, n_batches // len(GATES) // 2)


def fill(url: str, data_dir: Path, n_batches: int, n_cells: int) -> None:
    """The history: batches, their images and cells, on the lab of ``url`` whose model store is ``data_dir``."""
    from sqlalchemy import insert

    from db.bulk import insert_cells
    from db.schema import Batch, Image
    from lsm_core.lab import settings
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.ml import nets
    from lsm_core.ml.models import Manifest, ModelStore

    store = ModelStore(data_dir / "models")
    for task, name, classes in (("lsm", "demo-lsm", CLASSES), ("aging", "demo-aging", ["young", "aged"])):
        # both demo names present: serve trains no demo model in the background
        store.add(
            nets.create("tiny_cnn", len(classes)),
            Manifest(task=task, name=name, classes=classes, architecture="tiny_cnn", demo=True),
        )
    lab = open_lab(settings.current().with_(data_dir=data_dir, blob_dir=data_dir / "blobs", database_url=url))
    from db import queries

    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id

    rng = np.random.default_rng(0)
    n_mice = n_batches // len(GATES)
    # the first 100 mice are the strain compared (half young, half aged); the others span every age
    ages = np.where(
        np.arange(n_mice) < strain_mice(n_batches),
        np.where(np.arange(n_mice) % 2 == 0, rng.integers(56, 175, n_mice), rng.integers(560, 800, n_mice)),
        rng.integers(42, 900, n_mice),
    ).astype(float)
    sizes = rng.integers(100, 901, n_batches)
    sizes = np.maximum(1, np.round(sizes * n_cells / sizes.sum())).astype(int)
    sizes[-1] += n_cells - sizes.sum()
    start = datetime(2023, 1, 1)
    batch_rows = []
    for b in range(n_batches):
        mouse = b % n_mice  # the populations of one mouse are a few hundred batches apart, as uploads are
        gate = GATES[b // n_mice % len(GATES)]
        batch_rows.append(
            {
                "name": f"M{mouse + 1:04d} {gate} {'sorted' if b % 3 else 'run'} {b + 1}",
                "owner": f"user{(b * 7) % 200:03d}@lab.example",
                "created": start + timedelta(hours=8 * b, minutes=b % 60),
                "model_id": model_id,
                "status": "done",
                "mouse_id": f"M{mouse + 1:04d}",
                "age_days": float(ages[mouse]),
                "sex": "F" if mouse % 2 else "M",
                "strain": STRAIN if mouse < strain_mice(n_batches) else OTHER_STRAIN,
                "gate": gate,
                "imaging_date": (start + timedelta(hours=8 * b)).date().isoformat(),
                "notes": f"bench batch {b + 1}",
                "revision": 0,
            }
        )
    t0 = time.perf_counter()
    with lab.begin() as s:
        batch_ids = list(s.scalars(insert(Batch).returning(Batch.id, sort_by_parameter_order=True), batch_rows))
        image_rows = []
        for b, (batch_id, n) in enumerate(zip(batch_ids, sizes)):
            k = -1
            for k, first in enumerate(range(0, int(n), PER_IMAGE)):
                image_rows.append(
                    {
                        "batch_id": batch_id,
                        "position": k,
                        "file": f"fields/f{k:03d}.tif",
                        "page": 1,
                        "width": 2048,
                        "height": 2048,
                        "bit_depth": 16,
                        "kind": "field",
                        "n_cells": min(PER_IMAGE, int(n) - first),
                        "done": True,
                        "pixel_size_um": 0.2,
                        "pixel_size_source": "model default",
                    }
                )
            if b % 50 == 0:  # now and then a file that could not be read
                image_rows.append(
                    {
                        "batch_id": batch_id,
                        "position": k + 1,
                        "file": "broken.png",
                        "error": "not an image",
                        "done": True,
                    }
                )
        image_ids = list(s.scalars(insert(Image).returning(Image.id, sort_by_parameter_order=True), image_rows))
    images_of: dict[int, list[tuple[int, int]]] = {}
    for row, image_id in zip(image_rows, image_ids):
        if row.get("error") is None:
            images_of.setdefault(row["batch_id"], []).append((image_id, row["n_cells"]))
    rows: list[dict] = []
    written = 0
    for b, batch_id in enumerate(batch_ids):
        young = batch_rows[b]["age_days"] < 182
        alpha = [3.0, 2.0, 1.5] if young else [1.5, 2.0, 3.0]
        probs = rng.dirichlet(alpha, size=int(sizes[b])).astype(np.float32)
        pred, score = probs.argmax(1), probs.max(1)
        i = 0
        for image_id, n in images_of[batch_id]:
            for idx in range(1, n + 1):
                rows.append(
                    {
                        "batch_id": batch_id,
                        "image_id": image_id,
                        "idx": idx,
                        "x": 30 * idx,
                        "y": 20 + idx,
                        "w": 48,
                        "h": 48,
                        "predicted": CLASSES[pred[i]],
                        "score": round(float(score[i]), 6),
                        "probs": [round(float(p), 6) for p in probs[i]],
                        "flags": "",
                    }
                )
                i += 1
        if len(rows) >= 20_000 or b == len(batch_ids) - 1:
            with lab.begin() as s:
                written += insert_cells(s, rows)
            rows = []
    with lab.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE)")  # as autovacuum would soon: the planner's statistics
    lab.dispose()
    print(
        f"filled: {len(batch_ids):,} batches, {len(image_rows):,} images, {written:,} cells "
        f"in {time.perf_counter() - t0:.0f} s"
    )


# Whether a page is drawn, checked in the page at every animation frame (playwright's expect polls ever more
# slowly, up to once a second, and its text matching walks the whole page, the browser's largest cost here):
# the script run is over (no element left over from the run before), the figures and tables are there, and
# each pattern matches the text of some markdown or caption.
DRAWN = """([patterns, plots, tables]) => {
    if (document.querySelector("[data-testid=stElementContainer][data-stale=true]")) return false;
    if (document.querySelectorAll(".js-plotly-plot").length < plots) return false;
    if (document.querySelectorAll("[data-testid=stDataFrame] canvas").length < tables) return false;
    const shown = Array.from(
        document.querySelectorAll("[data-testid=stMarkdownContainer], [data-testid=stCaptionContainer]"),
        (e) => e.textContent,
    );
    return patterns.every((p) => shown.some((t) => new RegExp(p).test(t)));
}"""


def measure(url: str, data_dir: Path, repeat: int, log: Path, n_batches: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    from tests.helpers import launch, served_app

    timeout = 120_000
    with served_app(data_dir, log, LSM_DATABASE_URL=url, LSM_USER="bench", LSM_ADMINS=None) as app:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            def drawn(patterns: list[str], plots: int = 0, tables: int = 0) -> None:
                page.wait_for_function(DRAWN, arg=[patterns, plots, tables], polling="raf", timeout=timeout)

            def visit(path: str, patterns: list[str], plots: int = 0, tables: int = 0) -> float:
                t0 = time.perf_counter()
                page.goto(f"{app}/{path}")
                drawn(patterns, plots, tables)
                return time.perf_counter() - t0

            def models() -> float:
                return visit("model-registry", [], tables=1)

            def history() -> float:
                return visit("batch-history", [r"Select a row to act on it"], tables=1)

            def compare_open() -> float:
                return visit("compare-ages", [r"^\d+ mice in \d+ groups"], plots=3, tables=1)

            mice = strain_mice(n_batches)
            chosen = [f"^{mice} mice in 2 groups", rf"^{(len(GATES) - 1) * mice} older batch\(es\)"]

            def compare_100() -> float:
                compare_open()
                assert not page.evaluate(DRAWN, [chosen[:1], 0, 0]), "the strain's mice are shown before the filter"
                field = page.get_by_label("Strain or reporter (exact)")
                field.fill(STRAIN)
                t0 = time.perf_counter()
                field.press("Enter")
                drawn(chosen, plots=3, tables=1)
                return time.perf_counter() - t0

            pages = {"models": models, "history": history, "compare_open": compare_open, "compare_100": compare_100}
            for fn in pages.values():
                fn()  # warm-up: the server's caches, the browser's
            runs: dict[str, list[float]] = {name: [] for name in pages}
            for _ in range(repeat):  # in turn, so that a busy moment of the machine slows every page alike
                for name, fn in pages.items():
                    runs[name].append(fn())
            browser.close()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database and data dir, and say where")
    parser.add_argument("--reuse", metavar="NAME", help="a database (and --data-dir) kept by an earlier --keep run")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    import psycopg

    admin = os.environ.get("LSM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = args.reuse or f"lsm_bench_pages_{uuid.uuid4().hex[:8]}"
    url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="lsm-bench-pages-"))
    if not args.reuse:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        if not args.reuse:
            fill(url, data_dir, args.batches, args.cells)
        runs = measure(url, data_dir, args.repeat, data_dir / "serve.log", args.batches)
    finally:
        if args.keep or args.reuse:
            print(f"kept: --reuse {name} --data-dir {data_dir}")
        else:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    median = {k: statistics.median(v) for k, v in runs.items()}
    base = median["models"]
    what = {
        "models": "Models page (baseline)",
        "history": "History page",
        "compare_open": f"Compare page as opened ({args.batches // len(GATES)} batches, one per mouse)",
        "compare_100": f"Compare page over {strain_mice(args.batches)} batches (strain filter to redrawn)",
    }
    print(f"{args.batches:,} batches, {args.cells:,} cells in PostgreSQL; median of {args.repeat} after a warm-up")
    for key, label in what.items():
        runs_text = ", ".join(f"{v:.2f}" for v in sorted(runs[key]))
        print(f"  {label}: {median[key]:.2f} s, ratio {median[key] / base:.2f} (runs: {runs_text})")
    for key in ("history", "compare_100"):
        print(f"  goal {what[key]} < 2 s: {'met' if median[key] < 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
