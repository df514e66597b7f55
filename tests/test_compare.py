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

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["LT-HSC", "ST-HSC", "MPP"]


def table_from(fractions_by_group: dict[str, list[list[int]]]) -> pd.DataFrame:
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
            counts[i] = dict(zip(CLASSES, n))
            groups.append(g)
    t = stats.per_mouse(batches, counts, CLASSES)
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
    assert book.sheetnames == ["per_mouse", "groups", "tests", "cells"]
    per_mouse = pd.DataFrame(
        list(book["per_mouse"].iter_rows(min_row=2, values_only=True)), columns=[c.value for c in book["per_mouse"][1]]
    )
    assert len(per_mouse) == 6 and (per_mouse["cells"] == 40).all()
    # every number is reproducible from the workbook: redo the Kruskal-Wallis test from per_mouse
    samples = [per_mouse.loc[per_mouse.group == g, "fraction_LT-HSC"] for g in ("young", "middle", "aged")]
    tests = list(book["tests"].iter_rows(min_row=2, values_only=True))
    assert tests[0][0] == "LT-HSC" and tests[0][5] == pytest.approx(sps.kruskal(*samples).pvalue)
    assert "pseudo-replication" in tests[-1][1]
    assert book["cells"].max_row == 1 + 240
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
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 mice in 3 groups" in proc.stderr and "Kruskal-Wallis" in proc.stdout
    assert openpyxl.load_workbook(out).sheetnames == ["per_mouse", "groups", "tests", "cells"]
