"""The model of cells within mice (lsm_core.reports.stats.odds_model): a binomial GLM of per-mouse counts with
cluster-robust errors by mouse, checked against simulations with a known effect and against closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from lsm_core.reports.stats import DAYS_PER_MONTH, ODDS_COLUMNS, cluster_robust_se, odds_model

CLASSES = ["young", "aged"]


LOG_2 = float(np.log(2.0))


def simulated(rng, log_or=LOG_2, sex_log_or=0.4, mice=12, sigma=0.35, age_slope=None) -> pd.DataFrame:
    """Mice of two groups (young, aged) whose cells are aged-like with probability logit^-1(b0 + b1 aged +
    b2 male + u), u ~ N(0, sigma) per mouse (mice differ beyond their group: the cells of one mouse are not
    independent); 80-400 cells per mouse. With ``age_slope`` (log odds per month) ages are continuous instead."""
    rows = []
    for i in range(2 * mice):
        aged = i >= mice
        male = i % 2 == 1
        months = rng.uniform(2, 24) if age_slope is not None else (20.0 if aged else 3.0)
        eta = -0.8 + sex_log_or * male + rng.normal(0, sigma)
        eta += age_slope * (months - 12) if age_slope is not None else log_or * aged
        n = int(rng.integers(80, 400))
        k = int(rng.binomial(n, 1 / (1 + np.exp(-eta))))
        rows.append(
            {
                "group": "aged" if aged else "young",
                "age_days": months * DAYS_PER_MONTH,
                "sex": "M" if male else "F",
                "cells": n,
                "n_aged": k,
                "n_young": n - k,
            }
        )
    return pd.DataFrame(rows)


def test_known_odds_ratios_are_recovered_and_their_intervals_cover_them():
    rng = np.random.default_rng(7)
    hits, naive_hits, estimates, sex_estimates = 0, 0, [], []
    runs = 120
    for _ in range(runs):
        table = simulated(rng)
        out = odds_model(table, CLASSES)
        row = out[(out["class"] == "aged") & (out["term"] == "aged vs young")].iloc[0]
        sex = out[(out["class"] == "aged") & (out["term"] == "sex M vs F")].iloc[0]
        estimates.append(np.log(row["odds_ratio"]))
        sex_estimates.append(np.log(sex["odds_ratio"]))
        hits += row["ci95_low"] <= 2.0 <= row["ci95_high"]
        # the same model counting every cell as independent (what the robust errors correct)
        x = sm.add_constant(np.column_stack([table["group"] == "aged", table["sex"] == "M"]).astype(float))
        naive = sm.GLM(table[["n_aged", "n_young"]].to_numpy(float), x, family=sm.families.Binomial()).fit()
        low, high = np.exp(naive.conf_int()[1])
        naive_hits += low <= 2.0 <= high
    # a mouse effect of sd 0.35 shrinks the population-averaged log odds ratio by about 1.5% only
    assert np.mean(estimates) == pytest.approx(np.log(2.0), abs=0.08)
    assert np.mean(sex_estimates) == pytest.approx(0.4, abs=0.08)
    assert hits / runs >= 0.88, hits / runs  # nominal 0.95; t intervals on 24 clusters
    assert naive_hits / runs < 0.8, naive_hits / runs  # pseudo-replication: far too narrow
    assert {"class", "odds_ratio", "ci95_low", "ci95_high", "p_value", "p_holm"} <= set(out.columns)


def test_without_an_effect_the_model_rarely_calls_one():
    rng = np.random.default_rng(11)
    calls = 0
    runs = 200
    for _ in range(runs):
        out = odds_model(simulated(rng, log_or=0.0), CLASSES)
        calls += out.loc[out["term"] == "aged vs young", "p_value"].iloc[0] < 0.05
    assert calls / runs <= 0.09, calls / runs  # nominal 0.05 (binomial sd over 200 runs: 0.015)


def test_the_robust_errors_are_statsmodels_sandwich_with_the_small_sample_adjustment():
    rng = np.random.default_rng(2)
    table = simulated(rng, mice=8)
    k, n = table["n_aged"].to_numpy(float), table["cells"].to_numpy(float)
    x = sm.add_constant(np.column_stack([table["group"] == "aged", table["sex"] == "M"]).astype(float))
    fit = sm.GLM(np.column_stack([k, n - k]), x, family=sm.families.Binomial()).fit()
    plain = sm.GLM(np.column_stack([k, n - k]), x, family=sm.families.Binomial()).fit(cov_type="HC0").bse
    ours = cluster_robust_se(x, k, n, np.asarray(fit.predict(x)))
    assert (ours > plain).all() and (ours < 1.5 * plain).all(), (ours, plain)


def test_age_as_a_continuous_covariate_gives_the_odds_ratio_per_month():
    rng = np.random.default_rng(3)
    slopes = []
    for _ in range(60):
        out = odds_model(simulated(rng, age_slope=0.08, mice=10), CLASSES, term="age")
        row = out[(out["class"] == "aged") & (out["term"] == "per month of age")].iloc[0]
        slopes.append(np.log(row["odds_ratio"]))
        assert row["covariates"] == "sex"
    assert np.mean(slopes) == pytest.approx(0.08, abs=0.01)


def test_two_groups_without_covariates_give_the_pooled_odds_ratio_of_the_counts():
    """With only the group, the GLM's odds ratio is the ratio of the groups' pooled odds (a closed form); the
    robust interval is wider than the naive one when mice differ."""
    table = pd.DataFrame(
        {
            "group": ["young"] * 3 + ["aged"] * 3,
            "age_days": [90.0] * 3 + [600.0] * 3,
            "sex": [None] * 6,
            "cells": [100, 200, 150, 120, 180, 100],
            "n_aged": [20, 60, 30, 50, 90, 30],
        }
    )
    table["n_young"] = table["cells"] - table["n_aged"]
    out = odds_model(table, CLASSES)
    row = out[out["class"] == "aged"].iloc[0]
    young, aged = table[table.group == "young"], table[table.group == "aged"]
    expected = (aged.n_aged.sum() / aged.n_young.sum()) / (young.n_aged.sum() / young.n_young.sum())
    assert row["odds_ratio"] == pytest.approx(expected, rel=1e-6)
    assert row["ci95_low"] < row["odds_ratio"] < row["ci95_high"]
    assert row["mice"] == 6 and row["cells"] == table["cells"].sum() and row["covariates"] == "none"
    # the young class is the complement (its odds ratio the inverse): one model, not a second row
    assert list(out["class"]) == ["aged"]
    assert list(out.columns) == ODDS_COLUMNS


def test_designs_the_data_cannot_estimate_are_said_not_fitted():
    table = pd.DataFrame(
        {
            "group": ["young", "young", "aged", "aged"],
            "age_days": [90.0, 90.0, 600.0, 600.0],
            "sex": ["F", "F", "M", "M"],  # sex confounded with the group
            "cells": [100, 100, 100, 100],
            "n_aged": [0, 0, 40, 30],  # and no aged-like cell in any young mouse
        }
    )
    table["n_young"] = table["cells"] - table["n_aged"]
    out = odds_model(table, CLASSES)
    assert out["odds_ratio"].isna().all()
    assert out["note"].str.contains("confounded").all()
    out = odds_model(table.assign(sex=None), CLASSES)
    assert out["odds_ratio"].isna().all()
    assert out["note"].str.contains("young have no aged cells").any()
    one_group = odds_model(table[table.group == "aged"], CLASSES)
    assert one_group.empty and list(one_group.columns) == ODDS_COLUMNS


def test_sex_missing_for_some_mice_is_left_out_and_said():
    rng = np.random.default_rng(5)
    table = simulated(rng, mice=6)
    table.loc[0, "sex"] = None
    out = odds_model(table, CLASSES)
    assert out["covariates"].str.startswith("none (sex left out: 1 of the mice").all()
    assert not out["term"].str.startswith("sex").any()


def test_two_classes_are_one_model_whose_p_value_is_the_glms_uncorrected_one():
    """Issue #26 item 4: young and aged are complementary, so one odds ratio (of aged) per term, and its
    p-value is the model's own, not Holm-corrected over two classes (which doubled it: 0.0034 read 0.0068)."""
    from scipy import stats as sps

    rng = np.random.default_rng(4)
    table = simulated(rng, mice=6)
    out = odds_model(table, CLASSES)
    assert list(out["class"]) == ["aged", "aged"] and list(out["term"]) == ["aged vs young", "sex M vs F"]
    k, n = table["n_aged"].to_numpy(float), table["cells"].to_numpy(float)
    x = sm.add_constant(np.column_stack([table["group"] == "aged", table["sex"] == "M"]).astype(float))
    fit = sm.GLM(np.column_stack([k, n - k]), x, family=sm.families.Binomial()).fit()
    se = cluster_robust_se(x, k, n, np.asarray(fit.predict(x)))
    p = 2 * sps.t.sf(np.abs(fit.params[1] / se[1]), len(table) - 3)
    row = out.iloc[0]
    assert row["p_value"] == pytest.approx(p, rel=1e-6) and row["p_holm"] == pytest.approx(p, rel=1e-6)
    assert row["odds_ratio"] == pytest.approx(np.exp(fit.params[1]), rel=1e-6)
    three = odds_model(table.assign(n_other=0), ["young", "aged", "other"])  # three classes: Holm over them
    assert list(dict.fromkeys(three["class"])) == ["young", "aged", "other"]  # "other" has no cells: not fitted
    aged = three[(three["class"] == "aged") & (three["term"] == "aged vs young")].iloc[0]
    assert aged["p_holm"] == pytest.approx(min(1.0, 2 * aged["p_value"]))
