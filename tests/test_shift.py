"""A batch unlike the model's training data is flagged (issue #29 item 5): the feature reference a model carries
(lsm_core.ml.shift), each cell's distance from it (the predictor, the pipeline, the worker), the batch's verdict
(lsm_core.reports.shift) on the Results page's report, in the workbook's batch sheet and per mouse in Compare.

The model is the synthetic demo model's quick first version, trained here; its own kind is synthetic cells of
another seed (must read "none"), and real cells are the 900 brightfield Jurkat cells of ../shared/data (must read
"strong"), on both database engines where the history is involved."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from openpyxl import load_workbook
from sqlalchemy import select

from db import queries
from db.schema import Cell
from lsm_core.imaging import synthetic
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.lab import batches
from lsm_core.lab.registry import sync_models
from lsm_core.lab.worker import Worker
from lsm_core.ml import nets
from lsm_core.ml.shift import SHIFT_KEY, FeatureReference, summary
from lsm_core.reports import compare
from lsm_core.reports.report import load_report, workbook
from lsm_core.reports.results import shift_line
from lsm_core.reports.shift import NO_REFERENCE, NOT_MEASURED, assess
from tests.helpers import crop_files, lab_at

MONTAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brightfield" / "jurkat_G1_montage.tif"
MONTAGE_UM_PER_PX = 0.5  # its README: about 0.5 um per pixel, no pixel size in the file


def montage_cells(package) -> np.ndarray:
    """The montage's cells cut as classification cuts them for ``package``, at the montage's pixel size."""
    from lsm_core.imaging.calibration import resolve
    from lsm_core.imaging.cells import FindParams, find_cells

    image = tifffile.imread(MONTAGE).astype(np.float32)
    params = FindParams.for_model(package.manifest, resolve(user=MONTAGE_UM_PER_PX, model_default=0.5), None)
    return find_cells(image / image.max(), params).crops


# --- the reference: numbers only ---------------------------------------------------------------------------
def test_a_reference_passes_about_one_percent_of_its_own_kind_and_flags_a_shifted_kind():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(40, 64))  # correlated features, as a network's are
    own = rng.normal(size=(6000, 40)) @ mixing
    ref = FeatureReference.build(own[:4000], own[4000:5000])
    beyond = np.mean(ref.distances(own[5000:]) > ref.threshold)
    assert 0.0 <= beyond <= 0.03
    # the same features in another combination: each feature's own spread is unchanged, their relation is not
    other = rng.normal(size=(1000, 40)) @ rng.permutation(mixing, axis=1)
    assert np.mean(ref.distances(other) > ref.threshold) > 0.5
    assert ref.fit_cells == 4000 and ref.calibration_cells == 1000


def test_a_reference_survives_json_and_a_broken_one_is_none():
    rng = np.random.default_rng(1)
    ref = FeatureReference.build(rng.normal(size=(300, 48)), rng.normal(size=(100, 48)))
    again = FeatureReference.from_dict(ref.to_dict())
    assert again is not None
    probe = rng.normal(size=(20, 48))
    np.testing.assert_allclose(again.distances(probe), ref.distances(probe), rtol=1e-4)
    assert again.threshold == pytest.approx(ref.threshold, rel=1e-5)
    good = ref.to_dict()
    for broken in (
        None,
        "text",
        {},
        {**good, "mean": good["mean"][:-1]},  # the axes no longer fit the mean
        {**good, "spread": [0.0] * len(good["spread"])},
        {**good, "threshold": float("nan")},
        {**good, "axes": [[float("inf")] * 48] * len(good["axes"])},
        {**good, "residual": "a lot"},
    ):
        assert FeatureReference.from_dict(broken) is None


def test_the_training_summary_a_person_reads_keeps_the_facts_not_the_vectors():
    rng = np.random.default_rng(2)
    ref = FeatureReference.build(rng.normal(size=(100, 8)), rng.normal(size=(50, 8))).to_dict()
    shown = summary({"seed": 0, SHIFT_KEY: ref})
    assert shown["seed"] == 0
    assert set(shown[SHIFT_KEY]) == {"method", "threshold", "fit_cells", "calibration_cells"}
    assert summary(None) == {}


# --- the verdict -------------------------------------------------------------------------------------------
def training_with(threshold: float = 1.0, cells: int = 500) -> dict:
    return {SHIFT_KEY: {"threshold": threshold, "calibration_cells": cells}}


@pytest.mark.parametrize(
    ("beyond", "n", "level"),
    [
        (2, 200, "none"),  # about what the model's own cells give
        (2, 10, "none"),  # 20% of ten cells: too few to say
        (40, 200, "moderate"),  # 20%, lower bound above 10%
        (150, 200, "strong"),
        (10, 10, "strong"),  # every one of ten cells: lower bound 72%
    ],
)
def test_the_verdict_reads_the_lower_bound_of_the_share_beyond(beyond, n, level):
    distances = [2.0] * beyond + [0.5] * (n - beyond)
    shift = assess(distances, training_with())
    assert shift.level == level
    assert shift.score == pytest.approx(beyond / n) and shift.beyond == beyond and shift.cells == n
    assert shift.low is not None and shift.high is not None and shift.low <= beyond / n <= shift.high
    assert f"{beyond:,} of {n:,} cells" in shift.note and "500 held-out cells" in shift.note
    assert shift.warns == (level != "none")


def test_no_reference_or_no_measured_cell_is_unknown_and_says_why():
    assert assess([1.0, 2.0], {}).level == "unknown" and assess([1.0], None).note == NO_REFERENCE
    assert assess([1.0], {SHIFT_KEY: {"threshold": "x"}}).level == "unknown"
    unmeasured = assess([None, None], training_with())
    assert (unmeasured.level, unmeasured.note, unmeasured.score) == ("unknown", NOT_MEASURED, None)
    partly = assess([None, 0.5, 0.5], training_with())
    assert partly.cells == 2 and "1 cells classified before the shift was measured are not in it" in partly.note


# --- the network's features --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(nets.REGISTRY))
def test_every_architecture_splits_before_its_last_linear_layer(name):
    import torch

    net = nets.create(name, 3).eval()
    body, last = nets.split_head(net)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        features = body(x)
        assert features.ndim == 2 and features.shape[1] == last.in_features
        torch.testing.assert_close(last(features), net(x))


def test_training_records_the_reference_and_the_predictor_measures_every_cell(demo_lsm_package):
    from lsm_core.ml.predict import make_predictor

    ref = demo_lsm_package.manifest.training[SHIFT_KEY]
    split = demo_lsm_package.manifest.training["split"]
    assert ref["fit_cells"] == split["train"] and ref["calibration_cells"] == split["validation"]
    assert FeatureReference.from_dict(ref) is not None
    crops, _ = synthetic.make_crops("lsm", 300, seed=3)
    by_runtime = {}
    for runtime in ("torch", "onnx"):
        predictor = make_predictor(demo_lsm_package, "cpu", "fp32", runtime=runtime)
        prediction = predictor(crops)
        assert prediction.distance is not None and prediction.distance.shape == (300,)
        assert prediction[10:20].distance is not None and len(prediction[10:20].distance) == 10
        by_runtime[runtime] = prediction
    np.testing.assert_allclose(by_runtime["torch"].distance, by_runtime["onnx"].distance, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(by_runtime["torch"].probs, by_runtime["onnx"].probs, atol=1e-4)


def test_held_out_cells_of_its_own_kind_read_none_and_real_cells_read_strong(demo_lsm_package):
    """The issue's two checks: a synthetic demo model given synthetic cells it never saw (another seed), and
    given the real brightfield cells of ../shared/data."""
    from lsm_core.ml.predict import make_predictor

    predictor = make_predictor(demo_lsm_package, "cpu", "fp32", runtime="torch")
    own, _ = synthetic.make_crops("lsm", 1000, seed=3)
    mine = assess(predictor(own).distance.tolist(), demo_lsm_package.manifest.training)
    assert mine.level == "none", mine.note
    assert mine.score is not None and mine.score < 0.05
    real = montage_cells(demo_lsm_package)
    assert len(real) >= 850  # the montage's 900 cells, found (the cell finder's own test asks 0.998)
    theirs = assess(predictor(real).distance.tolist(), demo_lsm_package.manifest.training)
    assert theirs.level == "strong", theirs.note
    assert theirs.score is not None and theirs.score > 0.6 and "cannot be trusted" in theirs.note


def test_a_model_without_a_reference_classifies_as_before(tiny_lsm_package):
    from lsm_core.ml.predict import make_predictor

    assert SHIFT_KEY not in tiny_lsm_package.manifest.training
    crops, _ = synthetic.make_crops("lsm", 5, seed=4)
    for runtime in ("torch", "onnx"):
        prediction = make_predictor(tiny_lsm_package, "cpu", "fp32", runtime=runtime)(crops)
        assert prediction.distance is None and prediction.probs.shape == (5, 3)


def test_the_pipeline_writes_each_cells_distance_and_sums_the_batch_up(demo_lsm_package):
    """`lsm classify`'s pipeline: the feature_distance column of every cell row, and the summary's distances."""
    from lsm_core.imaging.images import read_inputs
    from lsm_core.ml.classify import Summary, classify_records, find_params_for, result_columns
    from lsm_core.ml.predict import make_predictor

    predictor = make_predictor(demo_lsm_package, "cpu", "fp32", runtime="torch")
    summary = Summary()
    rows = list(
        classify_records(
            read_inputs([str(MONTAGE)]),
            predictor,
            find_params_for(predictor, MONTAGE_UM_PER_PX),
            summary,
        )
    )
    columns = result_columns(predictor.classes)
    at = columns.index("feature_distance")
    values = [row.values(len(predictor.classes))[at] for row in rows]
    assert len(values) == summary.cells >= 850 and all(isinstance(v, float) and v > 0 for v in values)
    assert summary.distances == values
    assert assess(summary.distances, demo_lsm_package.manifest.training).level == "strong"


def sheet_facts(book) -> dict:
    """The workbook's batch sheet as {field: value} (a row whose value is empty is read back shorter)."""
    return {row[0]: (row[1] if len(row) > 1 else None) for row in book["batch"].iter_rows(min_row=2, values_only=True)}


# --- the history: both engines -----------------------------------------------------------------------------
def montage_file() -> RawFile:
    return RawFile(MONTAGE.name, MONTAGE.read_bytes())


def test_the_worker_stores_each_cells_distance_and_every_view_reads_the_batchs_shift(
    db_url, tmp_path, demo_lsm_package
):
    lab = lab_at(tmp_path, db_url)
    lab.store.add(demo_lsm_package.load(), demo_lsm_package.manifest)
    sync_models(lab)
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    own = batches.submit_batch(
        lab, crop_files(60, seed=5), model_id, "synthetic", "ana", batches.BatchMeta(mouse_id="s1", sex="F")
    )
    real = batches.submit_batch(
        lab,
        [montage_file()],
        model_id,
        "jurkat",
        "ana",
        batches.BatchMeta(mouse_id="j1", sex="M", pixel_size_um=MONTAGE_UM_PER_PX),
    )
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        stored = s.scalars(select(Cell.feature_distance).where(Cell.batch_id == real.batch_id)).all()
        assert len(stored) >= 850 and all(d is not None and d > 0 for d in stored)
        mine, theirs = load_report(s, own.batch_id), load_report(s, real.batch_id)
        book = load_workbook(io.BytesIO(workbook(s, real.batch_id, 0.0)), read_only=True)
        facts = sheet_facts(book)
        cells_sheet = list(book["cells"].iter_rows(values_only=True))
        compared = compare.build(s, [own.batch_id, real.batch_id], by="sex")
    assert mine.shift is not None and mine.shift.level == "none" and mine.shift.cells == 60
    assert theirs.shift is not None and theirs.shift.level == "strong" and theirs.shift.cells == len(stored)
    line = shift_line(theirs)
    assert line is not None and line.startswith("Shift from the training data: strong")
    assert facts["shift"] == "strong" and facts["shift_score"] == pytest.approx(theirs.shift.score)
    assert facts["shift_cells"] == len(stored) and "cannot be trusted" in facts["shift_note"]
    at = cells_sheet[0].index("feature_distance")
    assert sorted(r[at] for r in cells_sheet[1:]) == pytest.approx(sorted(stored), rel=1e-5)
    per_mouse = dict(zip(compared.table["mouse_id"], compared.table["shift"]))
    assert per_mouse == {"s1": "none", "j1": "strong"}
    assert any("strong in mouse j1" in w for w in compared.warnings)
    assert compare.shift_note(compared) == "Shift from the training data, per mouse: 1 none, 1 strong."


def test_a_batch_classified_by_a_model_without_a_reference_says_so(history):
    lab, _, model_id = history
    sub = batches.submit_batch(lab, crop_files(3, seed=6), model_id, "tiny", "ana")
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        report = load_report(s, sub.batch_id)
        book = load_workbook(io.BytesIO(workbook(s, sub.batch_id, 0.0)), read_only=True)
        facts = sheet_facts(book)
    assert report.shift is not None and report.shift.level == "unknown"
    assert shift_line(report) == NO_REFERENCE
    assert facts["shift"] == "unknown" and facts["shift_score"] is None and facts["shift_note"] == NO_REFERENCE
