"""How fast the results page of a 10,000-cell batch is usable, in a real browser (target: within 3 s).

Builds a batch of 10,000 cells (9,000 synthetic crops and 10 fields of view of 100 cells each) through
the real path (submit, worker), starts `python -m lsm_core serve`, and in headless chromium measures, after
one warm-up visit, the time from navigating to the batch's results page until the composition figure,
the score and probability figures and the cell table are drawn. Baseline in the same browser: the Models
page until its table is drawn. Prints both and their ratio.

Usage: python bench/results_page.py [--cells N] [--repeat R]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def build(data_dir: Path, n_cells: int) -> int:
    os.environ["LSM_DATA_DIR"] = str(data_dir)
    os.environ.pop("LSM_DATABASE_URL", None)
    import tifffile

    from db import queries
    from lsm_core.imaging import synthetic
    from lsm_core.imaging.readers.archives import RawFile
    from lsm_core.lab.batches import BatchMeta, submit_batch
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.worker import Worker
    from lsm_core.ml import nets
    from lsm_core.ml.models import Manifest, ModelStore

    store = ModelStore(data_dir / "models")
    for task, name, classes in (
        ("lsm", "demo-lsm", ["LT-HSC", "ST-HSC", "MPP"]),
        ("aging", "demo-aging", ["young", "aged"]),
    ):
        store.add(
            nets.create("tiny_cnn", len(classes)),
            Manifest(task=task, name=name, classes=classes, architecture="tiny_cnn", demo=True),
        )
    lab = open_lab()
    n_fields, per_field = 10, 100
    n_crops = max(0, n_cells - n_fields * per_field)
    crops, _ = synthetic.make_crops("lsm", n_crops, seed=1)
    files = []
    for i, c in enumerate(crops):
        buf = io.BytesIO()
        Image.fromarray((c * 255).astype(np.uint8)).save(buf, format="PNG")
        files.append(RawFile(f"crops/c{i:05d}.png", buf.getvalue()))
    for k in range(n_fields):
        field, _ = synthetic.make_field("lsm", seed=k, shape=(2048, 2048), n_cells=per_field, n_debris=0)
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.round(field * 4095).astype(np.uint16))
        files.append(RawFile(f"fields/f{k}.tif", buf.getvalue()))
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    sub = submit_batch(lab, files, model_id, "10k cells", owner="bench", meta=BatchMeta(age_days=70))
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        n = queries.count_cells(s, sub.batch_id)
    lab.dispose()
    print(f"batch {sub.batch_id}: {n:,} cells in {len(files):,} images")
    return sub.batch_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        batch_id = build(data_dir, args.cells)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
        server = subprocess.Popen(
            [sys.executable, "-m", "lsm_core", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=[
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--no-first-run",
                    ],
                )
                page = browser.new_page(viewport={"width": 1400, "height": 1000})

                def results() -> float:
                    t0 = time.perf_counter()
                    page.goto(f"{url}/batch-results?batch={batch_id}")
                    expect(page.get_by_role("heading", name="Composition")).to_be_visible(timeout=60_000)
                    expect(page.locator(".js-plotly-plot")).to_have_count(4, timeout=60_000)  # with the field of view
                    expect(page.locator("[data-testid=stDataFrame]").nth(1)).to_be_visible(timeout=60_000)
                    return time.perf_counter() - t0

                def models() -> float:
                    t0 = time.perf_counter()
                    page.goto(f"{url}/model-registry")
                    expect(page.locator("[data-testid=stDataFrame]")).to_be_visible(timeout=60_000)
                    return time.perf_counter() - t0

                results()  # warm-up: the server's first session, caches
                models()
                r = sorted(results() for _ in range(args.repeat))
                m = sorted(models() for _ in range(args.repeat))
                browser.close()
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
    print(f"models page (baseline): median {m[len(m) // 2]:.2f} s")
    print(
        f"results page, {args.cells:,}-cell batch: median {r[len(r) // 2]:.2f} s "
        f"(runs: {', '.join(f'{v:.2f}' for v in r)})"
    )
    print(f"ratio results/models: {r[len(r) // 2] / m[len(m) // 2]:.2f}")


if __name__ == "__main__":
    main()
