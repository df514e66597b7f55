import numpy as np
import pytest

from lsm_core.errors import LsmError
from lsm_core.reports.stats import DAYS_PER_MONTH, age_in_days, composition, wilson_interval


def test_wilson_interval_matches_the_closed_form():
    # reference values computed from the formula by hand (z = 1.959964)
    lo, hi = wilson_interval(5, 10)
    assert (round(float(lo), 4), round(float(hi), 4)) == (0.2366, 0.7634)
    lo, hi = wilson_interval(0, 20)
    assert float(lo) == 0 and round(float(hi), 4) == 0.1611
    lo, hi = wilson_interval(np.array([3, 0]), np.array([3, 0]))
    assert round(float(lo[0]), 4) == 0.4385 and float(hi[0]) == 1.0 and float(hi[1]) == 0.0


def test_composition_fractions_sum_to_one_and_bracket():
    shares = composition({"LT-HSC": 30, "MPP": 70}, ["LT-HSC", "ST-HSC", "MPP"])
    assert [s.count for s in shares] == [30, 0, 70]
    assert sum(s.fraction for s in shares) == pytest.approx(1.0)
    assert all(s.low <= s.fraction <= s.high for s in shares)
    assert composition({}, ["young", "aged"])[0].fraction == 0.0


def test_an_age_as_typed_is_read_in_days():
    assert age_in_days("10", "weeks") == 70
    assert age_in_days(" 2,5 ", "months") == pytest.approx(2.5 * DAYS_PER_MONTH)  # a decimal comma too
    assert age_in_days("", "days") is None and age_in_days(None, "weeks") is None  # not given
    with pytest.raises(LsmError, match="'ten' is not a number"):
        age_in_days("ten", "weeks")
