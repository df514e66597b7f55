"""The methods text of a comparison (issue #18 item 6), written from a real comparison: batches uploaded,
classified by the worker and compared, one mouse imaged in two sessions."""

from __future__ import annotations

import io

import numpy as np
import openpyxl
import pytest

from lsm_core.lab import batches
from lsm_core.lab.batches import BatchMeta
from lsm_core.lab.worker import Worker
from lsm_core.reports import compare, stats
from lsm_core.reports.methods import methods_paragraphs, methods_text, software_versions
from tests.helpers import crop_files, field_file


@pytest.fixture
def compared(history):
    """Four batches of three mice (M2 imaged twice: fields at 0.22 µm/px set for the batch, and crops), classified
    by tiny-lsm, then compared young against aged every cell counted."""
    lab, _, model_id = history
    made = [
        ("M1 young", [field_file(401)], BatchMeta(mouse_id="M1", age_days=70, sex="F", pixel_size_um=0.22)),
        ("M2 aged a", [field_file(402)], BatchMeta(mouse_id="M2", age_days=600, sex="M", pixel_size_um=0.22)),
        ("M2 aged b", crop_files(5, 403), BatchMeta(mouse_id="M2 ", age_days=600, sex="M")),
        ("M3 aged", [field_file(404)], BatchMeta(mouse_id="M3", age_days=610, sex="F", pixel_size_um=0.22)),
    ]
    submit = batches.submit_batch
    ids = [submit(lab, files, model_id, name, owner="ana", meta=meta).batch_id for name, files, meta in made]
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        c = compare.build(s, ids, by="age", bins=stats.parse_bins("young:<26w, aged:>=18m"), threshold=0.0)
        yield lab, s, c, ids


def test_the_methods_text_says_what_was_done_with_the_numbers_of_this_comparison(compared):
    from db.schema import Model

    lab, s, c, ids = compared
    text = methods_text(s, c)
    sections = [h for h, _ in methods_paragraphs(s, c)]
    assert sections == [
        *("Images and cell finding", "Classification", "Counting", "Statistics", "Cell size", "Notes", "Software")
    ]
    # cell size: the fields' cells, at the pixel size set for them (the crops have no outline)
    size = dict(methods_paragraphs(s, c))["Cell size"]
    assert f"({c.sized_cells:,} cells)" in size and c.sized_cells > 0 and "random intercept per mouse" in size
    model = s.query(Model).filter_by(name="tiny-lsm").one()
    # the model, its version and weights, its crop and calibration
    assert f"model tiny-lsm version {model.version}" in text and model.weights_sha256 in text
    assert f"{model.crop_um:.3g} µm square" in text and f"{model.input_size} x {model.input_size} pixels" in text
    # what was analysed: 3 fields at 0.22 µm/px set for the batch, 5 crops at the model's default
    assert "8 images (5 single-cell crops and 3 fields of view) of 4 batches" in text
    assert "0.22 µm/px (set for the batch) for 3 images" in text
    assert f"{model.pixel_size_um:.4g} µm/px (the model default) for 5 images" in text
    # counting and the unit: four batches, three mice (M2's two sessions pooled)
    assert "every cell was counted, whatever its score" in text and "no temperature scaling" in text
    assert "3 mice from 4 batches" in text
    assert "young, under 26.0 weeks (1 mouse) and aged, from 18.0 months (2 mice)" in text
    assert "Mann-Whitney U" in text and "Holm's method" in text and "Welch" in text
    assert "smallest attainable p-value is 0.67" in text  # 1 vs 2 mice: 2 / C(3, 1)
    assert "could not be estimated with these mice" in text and "CR2" not in text  # 3 mice, 3 coefficients
    assert "Cells were found at different pixel sizes" in text  # the comparison's warning, in Notes
    versions = software_versions()
    assert f"numpy {np.__version__}" in text and f"statsmodels {versions['statsmodels']}" in text
    assert "10.1186/s13287-024-03682-8" in text
    assert "synthetic" not in text  # tiny-lsm is not registered as a demo


def test_the_workbook_carries_the_methods_and_a_demo_model_is_said_unpublishable(compared):
    from db.schema import Model

    lab, s, c, ids = compared
    book = openpyxl.load_workbook(io.BytesIO(compare.workbook(s, c)))
    assert book.sheetnames == [
        *("per_mouse", "groups", "tests", "odds_model", "size_tests", "size_model", "methods", "cells")
    ]
    rows = list(book["methods"].iter_rows(values_only=True))
    assert rows[0] == ("section", "text") and [r[0] for r in rows[1:]] == [h for h, _ in methods_paragraphs(s, c)]
    s.query(Model).filter_by(name="tiny-lsm").one().demo = True
    s.flush()
    assert "must not be published" in methods_text(s, c)
