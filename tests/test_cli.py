"""The command line end to end, in subprocesses, on synthetic data written to disk."""

import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import openpyxl
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, data_dir, check=True):
    env = dict(os.environ, LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "lsm_core", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("synth")
    run("synth", "--task", "lsm", "--n", "30", "--out", str(out), "--fields", "1", "--seed", "3", data_dir=data_dir)
    return out


def test_synth_writes_class_folders_and_fields(synth_dir):
    assert sorted(p.name for p in synth_dir.iterdir()) == ["LT-HSC", "MPP", "ST-HSC", "fields"]
    assert sum(1 for _ in synth_dir.glob("*/*.png")) == 30
    assert (synth_dir / "fields" / "truth.csv").is_file()


def test_classify_folder_zip_and_bad_file_to_csv(synth_dir, tiny_lsm_package, data_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for png in sorted(synth_dir.glob("MPP/*.png"))[:3]:
            zf.write(png, f"mouse1/{png.name}")
    out = tmp_path / "cells.csv"
    proc = run(
        "classify", str(synth_dir), str(archive), str(bad), "--model", "tiny-lsm", "--out", str(out), data_dir=data_dir
    )
    rows = list(csv.DictReader(open(out)))
    header = next(csv.reader(open(out)))
    assert header[:9] == ["file", "page", "cell", "x", "y", "w", "h", "predicted", "score"]
    assert header[9:13] == ["p_LT-HSC", "p_ST-HSC", "p_MPP", "error"]
    truth = list(csv.DictReader(open(synth_dir / "fields" / "truth.csv")))
    field_rows = [r for r in rows if r["file"].endswith(".tif")]
    assert abs(len(field_rows) - len(truth)) <= 2
    assert len([r for r in rows if "/mouse1/" in r["file"] and r["file"].startswith(str(archive))]) == 3
    crop_rows = [r for r in rows if r["file"].endswith(".png") and not r["error"]]
    assert len(crop_rows) == 30 + 3
    for r in crop_rows + field_rows:
        probs = [float(r[c]) for c in ("p_LT-HSC", "p_ST-HSC", "p_MPP")]
        assert abs(sum(probs) - 1) < 1e-4 and r["predicted"] in ("LT-HSC", "ST-HSC", "MPP")
        assert abs(float(r["score"]) - max(probs)) < 1e-6
    broken = [r for r in rows if r["file"] == str(bad)]
    assert len(broken) == 1 and "damaged" in broken[0]["error"] and broken[0]["cell"] == ""
    assert "1 failed" in proc.stderr


def test_classify_to_xlsx_and_exit_status(synth_dir, tiny_lsm_package, data_dir, tmp_path):
    out = tmp_path / "cells.xlsx"
    run("classify", str(synth_dir / "LT-HSC"), "--model", "tiny-lsm", "--out", str(out), data_dir=data_dir)
    sheet = openpyxl.load_workbook(out).active
    assert sheet.max_row == 1 + 10
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    proc = run("classify", str(empty), "--model", "tiny-lsm", data_dir=data_dir, check=False)
    assert proc.returncode != 0 and "empty" in proc.stdout
    proc = run("classify", str(empty), "--model", "no-such-model", data_dir=data_dir, check=False)
    assert proc.returncode != 0 and "no model named" in proc.stderr


def test_models_list_and_import(tiny_lsm_package, data_dir, tmp_path):
    import json

    import torch

    proc = run("models", "list", data_dir=data_dir)
    assert "tiny-lsm" in proc.stdout
    weights = tmp_path / "w.pt"
    torch.save(tiny_lsm_package.load().state_dict(), weights)
    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps(
            {"task": "lsm", "name": "imported", "classes": ["LT-HSC", "ST-HSC", "MPP"], "architecture": "tiny_cnn"}
        )
    )
    run("models", "import", str(weights), "--manifest", str(manifest), data_dir=data_dir)
    assert "imported" in run("models", "list", data_dir=data_dir).stdout


def test_blank_and_cell_free_images_are_reported_and_others_kept(tiny_lsm_package, data_dir, tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(np.zeros((400, 400), np.uint8)).save(tmp_path / "black.png")
    empty = (100 + 2 * rng.standard_normal((400, 400))).clip(0, 255).astype(np.uint8)
    Image.fromarray(empty).save(tmp_path / "no_cells.png")
    from lsm_core.imaging import synthetic

    crop, _ = synthetic.make_crops("lsm", 1, seed=0)
    Image.fromarray((crop[0] * 255).astype(np.uint8)).save(tmp_path / "cell.png")
    out = tmp_path / "out.csv"
    proc = run("classify", str(tmp_path), "--model", "tiny-lsm", "--out", str(out), data_dir=data_dir)
    rows = {Path(r["file"]).name: r for r in csv.DictReader(open(out))}
    assert "blank" in rows["black.png"]["error"]
    assert rows["no_cells.png"]["error"] == "" and "no cells" in rows["no_cells.png"]["note"]
    assert rows["cell.png"]["predicted"] in ("LT-HSC", "ST-HSC", "MPP")
    assert "1 without cells" in proc.stderr
