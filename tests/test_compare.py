"""Comparisons across ages: the statistics against scipy, the workbook, the page and the command line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import openpyxl
import pandas as pd
import pytest
from scipy import stats as sps

from lsm_core.reports import stats
from lsm_core.reports.comparison import batches_of

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["LT-HSC", "ST-HSC", "MPP"]


def table_from(fractions_by_group: dict[str, list[list[int]]], classes: list[str] = CLASSES) -> pd.DataFrame:
    batches, counts, groups, i = [], {}, [], 0
    for g, mice in fractions_by_group.items():
        for n in mice:
            i += 1
            batches.append(
                SimpleNamespace(
                    id=i,
                    name=f"b{i}",
                    owner="ana",
                    age_days=70.0 if g == "young" else 600.0,
                    mouse_id=None,
                    sex=None,
                    strain=None,
                    gate=None,
                    imaging_date=None,
                    model="m v1",
                )
            )
            counts[i] = dict(zip(classes, n))
            groups.append(g)
    t = stats.per_mouse(batches, counts, classes)
    t["group"] = groups
    return t


FIXED = {
    "young": [[50, 30, 20], [45, 35, 20], [60, 25, 15], [55, 30, 15]],
    "aged": [[30, 40, 30], [25, 45, 30], [35, 35, 30], [20, 50, 30], [28, 42, 30]],
}


def test_two_groups_match_scipy_mann_whitney_with_holm():
    t = table_from(FIXED)
    res = stats.compare_groups(t, CLASSES)
    for k in CLASSES:
        a = t.loc[t.group == "young", f"fraction_{k}"]
        b = t.loc[t.group == "aged", f"fraction_{k}"]
        ref = sps.mannwhitneyu(a, b, alternative="two-sided")
        row = res[res["class"] == k].iloc[0]
        assert row["statistic"] == pytest.approx(ref.statistic) and row["p_value"] == pytest.approx(ref.pvalue)
        assert row["effect_size"] == pytest.approx(2 * ref.statistic / (len(a) * len(b)) - 1)
    p = res["p_value"].to_numpy()
    order = np.argsort(p)
    expected = np.maximum.accumulate([min(1, (3 - r) * p[i]) for r, i in enumerate(order)])
    assert res["p_holm"].to_numpy()[order] == pytest.approx(expected)
    lt = res[res["class"] == "LT-HSC"].iloc[0]
    assert lt["effect_size"] == pytest.approx(1.0)  # every young mouse above every aged one
    assert lt["test"].startswith("Mann-Whitney") and lt["mice"] == 9


def test_three_groups_match_scipy_kruskal():
    data = dict(FIXED, middle=[[40, 35, 25], [38, 37, 25], [42, 33, 25]])
    t = table_from(data)
    res = stats.compare_groups(t, CLASSES)
    for k in CLASSES:
        samples = [t.loc[t.group == g, f"fraction_{k}"] for g in ("young", "aged", "middle")]
        ref = sps.kruskal(*samples)
        row = res[res["class"] == k].iloc[0]
        assert row["statistic"] == pytest.approx(ref.statistic) and row["p_value"] == pytest.approx(ref.pvalue)
        assert row["effect_size"] == pytest.approx(ref.statistic / (len(t) - 1))


def test_group_summary_and_pooled_chi_square_match_scipy():
    t = table_from(FIXED)
    summary = stats.group_summary(t, CLASSES)
    young = t.loc[t.group == "young", "fraction_LT-HSC"].to_numpy()
    row = summary[(summary.group == "young") & (summary["class"] == "LT-HSC")].iloc[0]
    lo, hi = sps.t.interval(0.95, len(young) - 1, loc=young.mean(), scale=sps.sem(young))
    assert row["mean_fraction"] == pytest.approx(young.mean()) and row["ci95_low"] == pytest.approx(lo)
    assert row["ci95_high"] == pytest.approx(hi) and row["mice"] == 4
    pooled = stats.pooled_chi_square(t, CLASSES)
    table = np.array([np.sum(FIXED["young"], axis=0), np.sum(FIXED["aged"], axis=0)])
    ref = sps.chi2_contingency(table)
    assert pooled["p_value"] == pytest.approx(ref.pvalue) and "pseudo-replication" in pooled["note"]


def test_age_bins_are_parsed_with_units_and_refused_when_unreadable():
    bins = stats.parse_bins("young:8w-12w, middle:12w-18m, aged:>=18m")
    assert [stats.age_group(d, bins) for d in (56, 83.9, 84, 600, 20)] == ["young", "young", "middle", "aged", None]
    from lsm_core.errors import LsmError

    for bad in ("young 8w-12w", "young:ten-twelve", "x:12w-8w", ""):
        with pytest.raises(LsmError):
            stats.parse_bins(bad)


def test_trend_is_least_squares_on_months():
    t = table_from(FIXED)
    res = stats.trend(t, "LT-HSC")
    ref = sps.linregress(t["age_days"] / 30.44, t["fraction_LT-HSC"])
    assert res["slope_per_month"] == pytest.approx(ref.slope) and res["slope_per_month"] < 0


# --- with a database: six batches (mice) at three ages -------------------------------------------------
AGES = {"young": 70, "middle": 365, "aged": 600}


def make_six_batches(lab, model_id: int) -> list[int]:
    """Six batches with cells written directly: LT-HSC fraction falls with age."""
    from db.schema import Batch, Cell, Image

    rng = np.random.default_rng(0)
    ids = []
    with lab.begin() as s:
        for i, (group, age) in enumerate([(g, a) for g, a in AGES.items() for _ in range(2)]):
            batch = Batch(
                name=f"{group} mouse {i}",
                owner="ana",
                model_id=model_id,
                status="done",
                mouse_id=f"M{i}",
                age_days=float(age + i),
                sex="F",
                strain="C57BL/6",
                gate="LSK",
            )
            s.add(batch)
            s.flush()
            image = Image(batch_id=batch.id, position=0, file=f"m{i}.png", page=1, done=True, n_cells=40, kind="field")
            s.add(image)
            s.flush()
            p_lt = {"young": 0.6, "middle": 0.4, "aged": 0.2}[group]
            for j in range(40):
                cls = rng.choice(3, p=[p_lt, (1 - p_lt) / 2, (1 - p_lt) / 2])
                probs = [0.1, 0.1, 0.1]
                probs[cls] = 0.8
                s.add(
                    Cell(
                        batch_id=batch.id,
                        image_id=image.id,
                        idx=j + 1,
                        x=0,
                        y=0,
                        w=10,
                        h=10,
                        predicted=CLASSES[cls],
                        score=0.8,
                        probs=probs,
                        flags="",
                    )
                )
            ids.append(batch.id)
    return ids


def test_build_and_workbook_from_the_database(history):
    from lsm_core.reports import compare

    lab, _, model_id = history
    ids = make_six_batches(lab, model_id)
    bins = stats.parse_bins("young:<6m, middle:6m-18m, aged:>=18m")
    with lab() as s:
        c = compare.build(s, ids, by="age", bins=bins, threshold=0.5)
        data = compare.workbook(s, c)
    assert list(c.table["group"]) == ["young", "young", "middle", "middle", "aged", "aged"]
    assert c.tests.iloc[0]["test"] == "Kruskal-Wallis H"
    book = openpyxl.load_workbook(io.BytesIO(data))
    assert book.sheetnames == ["per_mouse", "groups", "tests", "odds_model", "methods", "cells"]
    per_mouse = pd.DataFrame(
        list(book["per_mouse"].iter_rows(min_row=2, values_only=True)), columns=[c.value for c in book["per_mouse"][1]]
    )
    assert len(per_mouse) == 6 and (per_mouse["cells"] == 40).all()
    # every number is reproducible from the workbook: redo the Kruskal-Wallis test from per_mouse
    samples = [per_mouse.loc[per_mouse.group == g, "fraction_LT-HSC"] for g in ("young", "middle", "aged")]
    tests = list(book["tests"].iter_rows(min_row=2, values_only=True))
    assert tests[0][0] == "LT-HSC" and tests[0][5] == pytest.approx(sps.kruskal(*samples).pvalue)
    assert "pseudo-replication" in tests[-1][1]
    assert [cell.value for cell in book["tests"][1]][6] == "p_holm"  # three classes: Holm over the three
    assert list(c.tests["class"]) == CLASSES
    methods = " ".join(str(row[1]) for row in book["methods"].iter_rows(min_row=2, values_only=True))
    assert "p-values were corrected for the 3 classes by Holm's method" in methods
    assert "Each class's odds among a mouse's cells" in methods and "Holm-corrected p-values" in methods
    fig = compare.per_mouse_figure(c)  # issue #26 item 4: the axes and the legend say what they hold
    assert fig.layout.xaxis.title.text == "predicted class" and fig.layout.legend.title.text == "Group (age)"
    assert fig.layout.yaxis.title.text == "% of cells with score ≥ 0.50 (per mouse)"
    assert c.tested == CLASSES and c.corrected
    assert book["cells"].max_row == 1 + 240
    # the model of cells within mice (issue #18 item 4): each older group against the youngest, and age in months
    odds = pd.DataFrame(list(book["odds_model"].iter_rows(min_row=2, values_only=True)), columns=stats.ODDS_COLUMNS)
    lt = odds[odds["class"] == "LT-HSC"].set_index("term")
    assert list(lt.index) == ["middle vs young", "aged vs young", "per month of age"]
    assert lt.loc["aged vs young", "odds_ratio"] < lt.loc["middle vs young", "odds_ratio"] < 1  # LT-HSC fall
    assert (lt["ci95_low"] < lt["odds_ratio"]).all() and (lt["odds_ratio"] < lt["ci95_high"]).all()
    assert lt.loc["aged vs young", "odds_ratio"] < 0.5 and lt.loc["per month of age", "odds_ratio"] < 1
    assert (odds["mice"] == 6).all() and (odds["covariates"] == "none").all()  # every mouse is female
    with lab() as s:
        by_sex = compare.build(s, ids, by="sex")
    assert list(by_sex.groups["group"].unique()) == ["F"]


@pytest.mark.slow
def test_command_line_compare_writes_the_workbook(history, db_url, data_dir, tmp_path):
    lab, _, model_id = history
    ids = make_six_batches(lab, model_id)
    env = dict(os.environ, LSM_DATABASE_URL=db_url, LSM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    out = tmp_path / "cmp.xlsx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lsm_core",
            "compare",
            *map(str, ids),
            "--by",
            "age",
            "--bins",
            "young:<6m, middle:6m-18m, aged:>=18m",
            "--threshold",
            "0.5",
            "--out",
            str(out),
            "--methods",
            str(tmp_path / "methods.txt"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 mice in 3 groups" in proc.stderr and "Kruskal-Wallis" in proc.stdout
    assert "LT-HSC\taged vs young\todds ratio" in proc.stdout
    methods = (tmp_path / "methods.txt").read_text(encoding="utf-8")
    assert methods.startswith("Images and cell finding.") and "6 mice from 6 batches" in methods
    assert openpyxl.load_workbook(out).sheetnames == ["per_mouse", "groups", "tests", "odds_model", "methods", "cells"]


def _batch(i, mouse, age=70.0, sex="F", strain="B6", gate=None, model="m v1"):
    return SimpleNamespace(
        id=i, name=f"b{i}", owner="ana", age_days=age, mouse_id=mouse, sex=sex, strain=strain, gate=gate,
        imaging_date=None, model=model,
    )  # fmt: skip


def test_batches_of_one_mouse_are_pooled_into_one_unit_and_a_batch_without_a_mouse_id_stands_alone():
    """Issue #18 item 1: the mouse is the unit: batches sharing a mouse id (spaces trimmed) are one row with
    their cells summed and their batches listed; a batch without a mouse id is its own unit, flagged."""
    batches = [_batch(1, "M1", gate="LT"), _batch(2, " M1 ", gate="MPP"), _batch(3, "M2"), _batch(4, None)]
    counts = {1: {"LT-HSC": 10, "ST-HSC": 5, "MPP": 5}, 2: {"LT-HSC": 0, "ST-HSC": 5, "MPP": 15}}
    counts |= {3: {"LT-HSC": 4, "ST-HSC": 4, "MPP": 2}, 4: {"LT-HSC": 1, "ST-HSC": 1, "MPP": 1}}
    t = stats.per_mouse(batches, counts, CLASSES)
    assert list(t["mouse_id"].fillna("-")) == ["M1", "M2", "-"] and list(t["batches"]) == ["1, 2", "3", "4"]
    assert list(t["n_batches"]) == [2, 1, 1] and stats.units_of(t) == [[1, 2], [3], [4]]
    assert batches_of(t) == dict.fromkeys([1, 2, 3, 4]) and stats.units_of(pd.DataFrame()) == []
    assert list(t["unit"]) == ["mouse", "mouse", "batch without a mouse id"]
    first = t.iloc[0]
    assert (first["cells"], first["n_LT-HSC"], first["n_MPP"]) == (40, 10, 20)
    assert first["fraction_MPP"] == pytest.approx(0.5) and first["gate"] == "LT, MPP"
    assert first["ci95_low_MPP"] < 0.5 < first["ci95_high_MPP"]


@pytest.mark.parametrize(
    ("field", "other", "said"),
    [("age", 600.0, "age"), ("sex", "M", "sex"), ("strain", "Evi1-GFP", "strain")],
)
def test_batches_of_one_mouse_that_disagree_on_its_age_sex_or_strain_are_refused(field, other, said):
    from lsm_core.errors import LsmError

    batches = [_batch(1, "M1"), _batch(2, "M1", **{field: other}), _batch(3, "M2")]
    counts = {i: {"LT-HSC": 1, "ST-HSC": 1, "MPP": 1} for i in (1, 2, 3)}
    with pytest.raises(LsmError, match=f"batches 1 and 2 of mouse M1 disagree on its {said} \\(batch 1: "):
        stats.per_mouse(batches, counts, CLASSES)
    if field == "age":
        with pytest.raises(LsmError, match="batch 1: 70 days; batch 2: 600 days"):
            stats.per_mouse(batches, counts, CLASSES)


def second_session(s, first, model_id: int, pixel_size_source: str | None = None, **cell_fields):
    """A second batch of mouse M0 (``first``'s age; one field of 10 MPP cells, ``cell_fields`` set on each):
    (batch, image, cells), flushed."""
    from db.schema import Batch, Cell, Image

    again = Batch(name="young mouse 0, second session", owner="ana", model_id=model_id, status="done")
    again.mouse_id, again.age_days, again.sex, again.strain = "M0", first.age_days, "F", "C57BL/6"
    s.add(again)
    s.flush()
    image = Image(batch_id=again.id, position=0, file="m0-b.png", page=1, done=True, n_cells=10, kind="field")
    if pixel_size_source is not None:
        image.pixel_size_source = pixel_size_source
    s.add(image)
    s.flush()
    cells = [
        Cell(batch_id=again.id, image_id=image.id, idx=j + 1, x=0, y=0, w=10, h=10, predicted="MPP", score=0.8,
             probs=[0.1, 0.1, 0.8], flags="", **cell_fields)
        for j in range(10)
    ]  # fmt: skip
    s.add_all(cells)
    s.flush()
    return again, image, cells


def test_a_comparison_counts_mice_not_batches_and_refuses_a_mouse_counted_twice(history):
    """Issue #18 item 1 on both engines: a second batch of one mouse joins that mouse (6 mice from 7 batches:
    its cells summed, both batches listed, the workbook's cells sheet holds both); two batches of one mouse
    that hold the same image (a re-run) are refused, naming them."""
    from db.schema import Batch, Image
    from lsm_core.errors import LsmError
    from lsm_core.reports import compare

    lab, _, model_id = history
    ids = make_six_batches(lab, model_id)
    with lab.begin() as s:
        again, _, _ = second_session(s, s.get(Batch, ids[0]), model_id)
        second = again.id
    bins = stats.parse_bins("young:<6m, middle:6m-18m, aged:>=18m")
    with lab() as s:
        c = compare.build(s, [*ids, second], by="age", bins=bins)
        data = compare.workbook(s, c)
    assert len(c.table) == 6 and int(c.table["n_batches"].sum()) == 7
    m0 = c.table[c.table["mouse_id"] == "M0"].iloc[0]
    assert m0["batches"] == f"{ids[0]}, {second}" and m0["cells"] == 50 and m0["n_MPP"] >= 10
    assert c.tests.iloc[0]["mice"] == 6
    book = openpyxl.load_workbook(io.BytesIO(data))
    header = [cell.value for cell in book["per_mouse"][1]]
    assert "batches" in header and "unit" in header and book["per_mouse"].max_row == 1 + 6
    assert book["cells"].max_row == 1 + 250

    with lab.begin() as s:  # the second batch is a re-run: it holds the first one's image
        for batch_id in (ids[0], second):
            s.query(Image).filter(Image.batch_id == batch_id).update({"sha256": "ab" * 32})
    with lab() as s, pytest.raises(LsmError, match=f"batches {ids[0]} and {second} of mouse M0 hold the same 1 image"):
        compare.build(s, [*ids, second], by="age", bins=bins)


def test_a_mouse_pooled_from_two_batches_keeps_both_batches_cells_in_shift_size_and_correction(history):
    """Both engines: a mouse of two batches is one unit in every per-mouse column, whichever way it is read:
    its shift from the training data (each cell's distance), its cell sizes (median, sized cells) and its
    corrected fractions pool both batches' cells, and a cell of the second batch that a reviewer said is not a
    cell counts in none of them. The other mice keep their own cells only."""
    from db import queries
    from db.schema import Batch, Cell, CellLabel, Image, Model
    from lsm_core.ml.shift import SHIFT_KEY
    from lsm_core.reports import compare
    from lsm_core.reports.correction import ErrorProfile, correct

    lab, _, model_id = history
    ids = make_six_batches(lab, model_id)
    matrix = [[70, 20, 10], [15, 70, 15], [5, 25, 70]]
    with lab.begin() as s:
        model = s.get(Model, model_id)
        model.training = {**(model.training or {}), SHIFT_KEY: {"threshold": 1.0, "calibration_cells": 100}}
        model.metrics = {"classes": CLASSES, "confusion_matrix": matrix, "evaluated_on": "t: 300 cells"}
        s.query(Image).filter(Image.batch_id.in_(ids)).update({"pixel_size_source": "user"})
        for n, cell in enumerate(s.query(Cell).filter(Cell.batch_id.in_(ids)).order_by(Cell.id)):
            cell.feature_distance = None if n == 40 else 0.5  # near the training cells; M1's first not measured
            cell.diameter_um = 10.0 if cell.batch_id == ids[0] and n % 8 == 0 else None  # 5 of M0's 40 sized
        again, _, added = second_session(
            s, s.get(Batch, ids[0]), model_id, pixel_size_source="user", feature_distance=2.0, diameter_um=30.0
        )
        s.add(CellLabel(cell_id=added[0].id, batch_id=again.id, labelled_by="ana", excluded="debris",
                        predicted="MPP", score=0.8))  # fmt: skip
        second = again.id
    bins = stats.parse_bins("young:<6m, middle:6m-18m, aged:>=18m")
    with lab() as s:
        c = compare.build(s, [*ids, second], by="age", bins=bins)
        read = queries.feature_distances(s, [second, ids[1]])
        assert queries.feature_distances(s, []) == {}
    assert read[second] == [2.0] * 9 and sorted(read[ids[1]], key=str) == [0.5] * 39 + [None]
    m0 = c.table[c.table["mouse_id"] == "M0"].iloc[0]
    others = c.table[c.table["mouse_id"] != "M0"]
    assert m0["batches"] == f"{ids[0]}, {second}" and m0["cells"] == 49
    assert m0["shift_score"] == pytest.approx(9 / 49)  # the second session's 9 counted cells lie beyond
    assert (others["shift_score"] == 0.0).all() and set(others["shift"]) == {"none"}
    assert m0["sized_cells"] == 5 + 9 and m0["median_diameter_um_all"] == pytest.approx(30.0)
    assert (others["sized_cells"] == 0).all() and others["median_diameter_um_all"].isna().all()
    assert c.sized_cells == 14 and c.sizes_unknown == 0
    profile = ErrorProfile(tuple(CLASSES), np.array(matrix, float), "t")
    pooled = correct({k: int(m0[f"n_{k}"]) for k in CLASSES}, CLASSES, profile)
    assert m0["n_MPP"] >= 9 and m0["corrected_MPP"] == pytest.approx(pooled.share("MPP").fraction)


def test_mixed_models_are_refused_unless_allowed_and_mixed_pixel_sizes_and_channels_are_said(
    history, monkeypatch, capsys, tmp_path
):
    """Issue #18 item 2: batches of different models or versions are not mixed unless the user says so (then
    each mouse's model is named and a warning says it); different pixel sizes or channels are named."""
    from db.schema import Batch, Image, Model
    from lsm_core.errors import LsmError
    from lsm_core.reports import compare

    lab, _, model_id = history
    ids = make_six_batches(lab, model_id)
    bins = stats.parse_bins("young:<6m, middle:6m-18m, aged:>=18m")
    with lab() as s:
        assert compare.build(s, ids, by="age", bins=bins).warnings == []
    with lab.begin() as s:
        model = s.get(Model, model_id)
        other = Model(task=model.task, name=model.name, version=model.version + 1, classes=list(model.classes))
        other.architecture, other.input_size, other.pixel_size_um, other.crop_um = "tiny_cnn", 64, 0.2, 12.8
        other.weights_sha256, other.path = "cd" * 32, "nowhere"
        s.add(other)
        s.flush()
        s.get(Batch, ids[5]).model_id = other.id
        label = other.label
        for batch_id, size, channel in ((ids[0], 0.1, "DIC"), (ids[1], 0.2, "TD")):
            s.query(Image).filter(Image.batch_id == batch_id).update({"pixel_size_um": size, "channel": channel})
    with lab() as s, pytest.raises(LsmError, match="classified by different models or model versions"):
        compare.build(s, ids, by="age", bins=bins)
    with lab() as s:
        c = compare.build(s, ids, by="age", bins=bins, allow_mixed_models=True)
    mixed, sizes, channels = c.warnings
    assert mixed.startswith("Mixed models, allowed:") and f"{label}: batch(es) {ids[5]}" in mixed
    assert c.table.loc[c.table["batch"] == ids[5], "model"].item() == label
    assert f"0.1 µm/px: batch(es) {ids[0]}" in sizes and f"0.2 µm/px: batch(es) {ids[1]}" in sizes
    assert f"DIC: batch(es) {ids[0]}" in channels and f"TD: batch(es) {ids[1]}" in channels

    from lsm_core import cli  # the command line agrees

    monkeypatch.setenv("LSM_DATABASE_URL", lab.settings.database_url)
    bins_text = "young:<6m, middle:6m-18m, aged:>=18m"
    argv = ["compare", *map(str, ids), "--bins", bins_text, "--out", str(tmp_path / "c.xlsx")]
    assert cli.main(argv) == 2
    assert "classified by different models or model versions" in capsys.readouterr().err
    assert cli.main([*argv, "--allow-mixed-models"]) == 0
    err = capsys.readouterr().err
    assert "Mixed models, allowed:" in err and "different pixel sizes" in err and "6 mice in 3 groups" in err


def test_the_smallest_p_a_design_can_give_is_said_before_the_test():
    """Issue #18 item 3: 3 vs 3 mice cannot reach p < 0.05 with Mann-Whitney (smallest two-sided p 0.1); the
    comparison says so and gives the difference of the means with its 95% interval."""
    from types import SimpleNamespace as NS

    from lsm_core.reports import compare

    assert stats.smallest_p([3, 3]) == pytest.approx(0.1)
    assert stats.smallest_p([4, 5]) == pytest.approx(2 / 126)  # 2 / C(9, 4)
    assert stats.smallest_p([2, 2, 2]) > 0.05 and stats.smallest_p([6, 6, 6]) < 0.001
    few = table_from({"young": FIXED["young"][:3], "aged": FIXED["aged"][:3]})
    res = stats.compare_groups(few, CLASSES)
    lt = res[res["class"] == "LT-HSC"].iloc[0]
    assert lt["smallest_p"] == pytest.approx(0.1) and lt["p_value"] >= 0.1
    a = few.loc[few.group == "young", "fraction_LT-HSC"].to_numpy()
    b = few.loc[few.group == "aged", "fraction_LT-HSC"].to_numpy()
    welch = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert lt["difference"] == pytest.approx(a.mean() - b.mean())
    assert (lt["diff_ci95_low"], lt["diff_ci95_high"]) == (pytest.approx(welch.low), pytest.approx(welch.high))
    said = compare.design_limit(NS(tests=res, table=few))
    assert said is not None and "With 3 (young) and 3 (aged) mice, the smallest p a Mann-Whitney test can give" in said
    assert "0.1" in said and "difference of the mean fractions and its 95% interval" in said
    enough = stats.compare_groups(table_from(FIXED), CLASSES)
    assert compare.design_limit(NS(tests=enough, table=table_from(FIXED))) is None


# --- two classes (the aging model): one test, one odds ratio, no correction over the two (issue #26 item 4) ---
AGING = ["young", "aged"]
AGED_CELLS = {"young": [8, 12, 10, 18], "aged": [20, 24, 14, 26]}  # aged-like cells of 40, per mouse
AGING_AGES = {"young": 70, "aged": 610}


def test_two_classes_are_one_test_whose_p_value_is_mann_whitneys_own():
    """young = 1 - aged for every mouse: one Mann-Whitney test, on the fraction aged, its p not doubled by a
    Holm correction over the two classes (3 vs 3 mice apart: p 0.1, once read 0.2)."""
    t = table_from({"young": [[30, 10], [28, 12], [33, 7]], "aged": [[15, 25], [12, 28], [18, 22]]}, AGING)
    res = stats.compare_groups(t, AGING)
    young, aged = t.loc[t.group == "young", "fraction_aged"], t.loc[t.group == "aged", "fraction_aged"]
    ref = sps.mannwhitneyu(young, aged, alternative="two-sided")
    assert ref.pvalue == pytest.approx(0.1)
    assert len(res) == 1
    row = res.iloc[0]
    assert row["class"] == "aged" and row["test"] == "Mann-Whitney U (two-sided), fraction aged; young = 1 - aged"
    assert row["p_value"] == pytest.approx(ref.pvalue) and row["p_holm"] == pytest.approx(ref.pvalue)
    assert row["statistic"] == pytest.approx(ref.statistic) and row["effect_size"] == pytest.approx(-1.0)
    three = table_from({**{"young": [[30, 10]] * 2, "aged": [[10, 30]] * 2}, "middle": [[20, 20]] * 2}, AGING)
    res = stats.compare_groups(three, AGING)  # three groups, two classes: one Kruskal-Wallis test
    assert list(res["test"]) == ["Kruskal-Wallis H, fraction aged; young = 1 - aged"]


def make_aging_batches(lab, model_id: int | None = None) -> list[int]:
    """Eight mice classified by an aging model (young / aged; ``model_id``, or one registered here): four young
    (10 weeks) and four aged (20 months), 40 cells each, AGED_CELLS of them aged-like. One batch per mouse."""
    from db.schema import Batch, Cell, Image, Model

    ids = []
    with lab.begin() as s:
        if model_id is None:
            model = Model(task="aging", name="tiny-aging", version=1, classes=AGING, architecture="tiny_cnn")
            model.input_size, model.pixel_size_um, model.crop_um = 64, 0.2, 12.8
            model.weights_sha256, model.path = "ef" * 32, "nowhere"
            s.add(model)
            s.flush()
            model_id = model.id
        for group, aged_cells in AGED_CELLS.items():
            for i, k in enumerate(aged_cells):
                name = f"{group} mouse {i}"
                batch = Batch(name=name, owner="ana", model_id=model_id, status="done", mouse_id=f"{group[0]}{i}")
                batch.age_days, batch.sex, batch.strain = float(AGING_AGES[group] + i), "F", "C57BL/6"
                s.add(batch)
                s.flush()
                image = Image(batch_id=batch.id, position=0, file=f"{name}.png", page=1, done=True, n_cells=40)
                image.kind = "field"
                s.add(image)
                s.flush()
                for j in range(40):
                    cls = int(j < k)  # 1: aged
                    s.add(Cell(batch_id=batch.id, image_id=image.id, idx=j + 1, x=0, y=0, w=10, h=10,
                               predicted=AGING[cls], score=0.8, probs=[0.2, 0.8] if cls else [0.8, 0.2],
                               flags=""))  # fmt: skip
                ids.append(batch.id)
    return ids


def _sheet_frame(book, name: str) -> pd.DataFrame:
    rows = list(book[name].iter_rows(values_only=True))
    return pd.DataFrame(rows[1:], columns=rows[0])


def test_the_aging_model_is_compared_by_one_test_in_every_output(history, monkeypatch, capsys, tmp_path):
    """Issue #26 item 4 on both engines: with young / aged, the comparison, its workbook, its methods text,
    its per-mouse figure and the command line all give one test and one odds ratio (of aged), p-values as the
    tests give them (no Holm over the two classes), and the figure cannot mistake the class for a group."""
    from lsm_core import cli
    from lsm_core.reports import compare
    from lsm_core.reports.methods import methods_text

    lab, _, _ = history
    ids = make_aging_batches(lab)
    with lab() as s:
        c = compare.build(s, ids, by="age", bins=stats.parse_bins(compare.DEFAULT_BINS))
        data = compare.workbook(s, c)
        text = methods_text(s, c)
    young = np.array(AGED_CELLS["young"]) / 40
    aged = np.array(AGED_CELLS["aged"]) / 40
    p = sps.mannwhitneyu(young, aged, alternative="two-sided").pvalue
    assert 0.05 < p < 0.5
    assert list(c.tests["class"]) == ["aged"] and c.tests.iloc[0]["p_value"] == pytest.approx(p)
    assert c.tests.iloc[0]["p_holm"] == pytest.approx(p)  # Holm over one test: the identity, not 2p
    assert c.tested == ["aged"] and not c.corrected
    assert list(c.odds["class"]) == ["aged", "aged"] and list(c.odds["term"]) == ["aged vs young", "per month of age"]
    assert c.odds["p_value"].notna().all() and (c.odds["p_holm"] == c.odds["p_value"]).all()
    assert c.odds.iloc[0]["odds_ratio"] > 1  # aged-like cells more common in the aged mice

    book = openpyxl.load_workbook(io.BytesIO(data))
    tests = _sheet_frame(book, "tests")
    assert "p_holm" not in tests.columns and list(tests["class"]) == ["aged", "all classes"]
    assert tests.iloc[0]["p_value"] == pytest.approx(p)
    assert tests.iloc[0]["test"] == "Mann-Whitney U (two-sided), fraction aged; young = 1 - aged"
    odds = _sheet_frame(book, "odds_model")
    assert "p_holm" not in odds.columns and list(odds["class"]) == ["aged", "aged"]
    assert list(odds["p_value"]) == pytest.approx(list(c.odds["p_value"]))
    sheet = " ".join(str(row[1]) for row in book["methods"].iter_rows(min_row=2, values_only=True))
    for said in (text, sheet):
        assert "Holm" not in said and "corrected for the 2 classes" not in said
        assert "so one test was run, on the fraction of aged cells, and its p-value is not corrected" in said
        assert "The odds of aged cells among a mouse's cells were also modelled" in said

    fig = compare.per_mouse_figure(c)
    assert fig.layout.title.text == "aged cells per mouse (young = 100% − aged)"
    assert fig.layout.xaxis.title.text == "group (age)" and fig.layout.legend.title.text == "Group"
    assert fig.layout.yaxis.title.text == "% of cells called aged, score ≥ 0.00 (per mouse)"
    for trace in fig.data:  # along x the groups, each trace at its own group; the class is the figure's
        assert set(trace.x) == {trace.legendgroup}
    mice = [trace for trace in fig.data if trace.name.endswith(": mice")]
    assert [t.name for t in mice] == ["young: mice", "aged: mice"]
    assert list(mice[0].y) == pytest.approx(100 * young) and list(mice[1].y) == pytest.approx(100 * aged)

    monkeypatch.setenv("LSM_DATABASE_URL", lab.settings.database_url)
    assert cli.main(["compare", *map(str, ids), "--out", str(tmp_path / "c.xlsx")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if "Holm" in line]
    assert len(lines) == 3 and lines[0].startswith(
        "aged\tMann-Whitney U (two-sided), fraction aged; young = 1 - aged\t"
    )
    assert f"\tp {p:.4g}\t" in lines[0]
    assert [line.split("\t")[:2] for line in lines[1:]] == [["aged", "aged vs young"], ["aged", "per month of age"]]


def test_compare_page_with_the_aging_model_shows_one_test_and_a_figure_that_names_its_axes(app_env):
    """Issue #26 item 4 on the page: one test and one odds ratio (of aged, no p_holm column), a caption saying
    why, and the per-mouse figure titled by the class with the groups along x and in the legend."""
    import json

    from db import queries
    from lsm_core.lab.open_lab import open_lab
    from tests.helpers import run_page, texts

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-aging").id
    make_aging_batches(lab, model_id)
    lab.dispose()
    at = run_page("pages/compare.py")
    next(w for w in at.selectbox if w.label == "Classifier").set_value("aging")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    shown = texts(at)
    assert "8 mice in 2 groups" in shown
    assert "one test and one odds ratio, on the fraction aged; young = 1 - aged" in shown
    assert "not corrected for multiple classes" in shown and "The odds of aged cells among" in shown
    p = sps.mannwhitneyu(np.array(AGED_CELLS["young"]) / 40, np.array(AGED_CELLS["aged"]) / 40).pvalue
    tests = at.dataframe[0].value
    assert list(tests["class"]) == ["aged"] and "p_holm" not in tests.columns
    assert tests.iloc[0]["p_value"] == f"{p:.3g}"
    odds = at.dataframe[1].value
    assert list(odds["class"]) == ["aged", "aged"] and "p_holm" not in odds.columns
    layout = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]
    assert layout["title"]["text"] == "aged cells per mouse (young = 100% − aged)"
    assert layout["xaxis"]["title"]["text"] == "group (age)" and layout["legend"]["title"]["text"] == "Group"
    assert layout["yaxis"]["title"]["text"].startswith("% of cells called aged")


def test_statistics_and_differences_are_shown_to_three_digits_and_in_percentage_points():
    from lsm_core.reports.compare import points, three_digits

    assert [three_digits(v) for v in (0.000123456, 12.3456, 1.0, float("nan"), None)] == [
        "0.000123",
        "12.3",
        "1",
        "",
        "",
    ]
    assert [points(v) for v in (0.0423, -0.1, 0.0, float("nan"), None)] == ["+4.2 pp", "-10.0 pp", "+0.0 pp", "", ""]


def test_comparisons_test_corrected_fractions_when_every_model_has_an_error_profile(history):
    """Issue #29 item 4: with an error profile on the model, per-mouse tests run on corrected fractions by
    default (a switch for counted ones), the figure shows both, the methods say which was tested and with
    what confusion matrix, and the odds model stays on counts and says so."""
    from db.schema import Model
    from lsm_core.errors import LsmError
    from lsm_core.reports import compare
    from lsm_core.reports.correction import ErrorProfile, correct

    lab, _, model_id = history
    ids = make_six_batches(lab, model_id)
    bins = stats.parse_bins("young:<6m, middle:6m-18m, aged:>=18m")
    with lab() as s:
        counted = compare.build(s, ids, by="age", bins=bins)
    assert not counted.on_corrected and counted.profiles == []  # tiny-lsm carries no confusion matrix
    assert "corrected_LT-HSC" in counted.table and counted.table["corrected_LT-HSC"].isna().all()
    with lab() as s:
        with pytest.raises(LsmError, match="fractions must be one of"):
            compare.build(s, ids, by="age", bins=bins, fractions="adjusted")
        asked = compare.build(s, ids, by="age", bins=bins, fractions="corrected")
    assert not asked.on_corrected and "counted, not corrected" in " ".join(asked.warnings)

    matrix = [[70, 20, 10], [15, 70, 15], [5, 25, 70]]
    with lab.begin() as s:
        s.get(Model, model_id).metrics = {
            "classes": CLASSES,
            "confusion_matrix": matrix,
            "evaluated_on": "t: 300 cells",
        }
    with lab() as s:
        c = compare.build(s, ids, by="age", bins=bins, threshold=0.5)
        plain = compare.build(s, ids, by="age", bins=bins, threshold=0.5, fractions="counted")
        methods = " ".join(text for _, text in compare.methods_paragraphs(s, c))
        plain_methods = " ".join(text for _, text in compare.methods_paragraphs(s, plain))
        book = openpyxl.load_workbook(io.BytesIO(compare.workbook(s, c)))
    assert c.on_corrected and not plain.on_corrected
    assert "corrected for its model's errors" in compare.fractions_note(c) and "Open points: corrected" in (
        compare.fractions_note(plain)
    )
    assert "no model here carries" in compare.fractions_note(counted)
    assert c.profiles == ["tiny-lsm v1: 300 held-out cells (t: 300 cells)"]
    profile = ErrorProfile(tuple(CLASSES), np.array(matrix, float), "t")
    first = c.table.iloc[0]
    redone = correct({k: int(first[f"n_{k}"]) for k in CLASSES}, CLASSES, profile)
    assert first["corrected_LT-HSC"] == pytest.approx(redone.share("LT-HSC").fraction)
    samples = [c.table.loc[c.table.group == g, "corrected_LT-HSC"] for g in ("young", "middle", "aged")]
    assert c.tests.iloc[0]["p_value"] == pytest.approx(sps.kruskal(*samples).pvalue)
    counted_samples = [plain.table.loc[plain.table.group == g, "fraction_LT-HSC"] for g in ("young", "middle", "aged")]
    assert plain.tests.iloc[0]["p_value"] == pytest.approx(sps.kruskal(*counted_samples).pvalue)
    young = c.groups[(c.groups.group == "young") & (c.groups["class"] == "LT-HSC")].iloc[0]
    assert young["mean_fraction"] == pytest.approx(c.table.loc[c.table.group == "young", "corrected_LT-HSC"].mean())
    assert "Per-mouse corrected fractions were compared" in methods and "300 held-out cells" in methods
    assert "The model works on counted cells, not on corrected fractions." in methods
    assert "Per-mouse fractions (counted) were compared" in plain_methods
    fig = compare.per_mouse_figure(c)
    names = [t.name for t in fig.data]
    assert "young: mice, corrected" in names and "young: mice, counted" in names
    assert fig.layout.yaxis.title.text == "% of cells corrected for the model's errors (per mouse)"
    header = [cell.value for cell in book["per_mouse"][1]]
    assert {"corrected_LT-HSC", "corrected_low_LT-HSC", "corrected_high_LT-HSC"} <= set(header)
