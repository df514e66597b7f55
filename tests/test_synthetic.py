import csv

import numpy as np
import tifffile
from PIL import Image

from lsm_core.classes import TASKS
from lsm_core.imaging import synthetic


def test_same_seed_same_images_other_seed_other_images():
    a, la = synthetic.make_crops("lsm", 12, seed=3)
    b, lb = synthetic.make_crops("lsm", 12, seed=3)
    c, _ = synthetic.make_crops("lsm", 12, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.allclose(a, c)
    f1, t1 = synthetic.make_field("aging", seed=1, shape=(512, 512), n_cells=5)
    f2, t2 = synthetic.make_field("aging", seed=1, shape=(512, 512), n_cells=5)
    np.testing.assert_array_equal(f1, f2)
    assert t1 == t2


def test_crops_are_balanced_and_in_range():
    for task, classes in TASKS.items():
        crops, labels = synthetic.make_crops(task, 31, seed=0)
        counts = np.bincount(labels, minlength=len(classes))
        assert counts.max() - counts.min() <= 1
        assert crops.dtype == np.float32 and crops.min() >= 0 and crops.max() <= 1


def test_classes_differ_in_size():
    crops, labels = synthetic.make_crops("lsm", 300, seed=0)
    contrast = np.abs(crops - np.median(crops, axis=(1, 2), keepdims=True)) > 0.05
    area = contrast.sum(axis=(1, 2))
    lt, mpp = area[labels == 0].mean(), area[labels == 2].mean()
    assert mpp > lt * 1.1  # MPP are larger than LT-HSC on average, with overlap


def test_write_dataset_layout_and_labels(tmp_path):
    counts = synthetic.write_dataset("lsm", 9, tmp_path, fields=1, seed=2, cells_per_field=5)
    assert counts == {"LT-HSC": 3, "ST-HSC": 3, "MPP": 3, "fields": 1}
    pngs = sorted(tmp_path.glob("*/synthetic_*.png"))
    assert len(pngs) == 9
    with Image.open(pngs[0]) as im:
        assert "synthetic" in im.text["Source"]
    rows = list(csv.DictReader(open(tmp_path / "fields" / "truth.csv")))
    assert list(rows[0]) == ["file", "x", "y", "w", "h", "class"] and len(rows) == 5
    tif = tmp_path / "fields" / rows[0]["file"]
    with tifffile.TiffFile(tif) as t:
        assert t.pages[0].dtype == np.uint16 and t.pages[0].shape == (2048, 2048)
        assert "synthetic" in t.pages[0].description
