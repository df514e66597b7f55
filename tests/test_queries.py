"""db.queries: the filters the History and Compare pages choose (BatchFilter.chosen), on both engines."""

from __future__ import annotations

import datetime as dt

from db import queries
from db.schema import Batch


def test_a_filter_from_the_pages_widgets_says_ages_in_weeks_and_dates_as_whole_days():
    f = queries.BatchFilter.chosen(
        owner="", text="", strain="", gate="", age_weeks=(8, 12.5), uploaded=(dt.date(2026, 3, 1), dt.date(2026, 3, 2))
    )
    assert (f.owner, f.text, f.strain, f.gate) == (None, None, None, None)  # an empty box filters nothing
    assert (f.age_min_days, f.age_max_days) == (56, 87.5)
    assert f.created_from == dt.datetime(2026, 3, 1, 0, 0)
    assert f.created_to == dt.datetime(2026, 3, 2, 23, 59, 59, 999999)  # the last day to its end
    open_ended = queries.BatchFilter.chosen(age_weeks=(None, 10), uploaded=(None, None))
    assert (open_ended.age_min_days, open_ended.age_max_days) == (None, 70)
    assert open_ended.created_from is None and open_ended.created_to is None


def test_the_chosen_filter_finds_the_batches_of_those_ages_and_that_day(history):
    from lsm_core.lab.batches import BatchMeta, submit_batch
    from tests.helpers import crop_files

    lab, _, model_id = history
    ids = {
        weeks: submit_batch(
            lab,
            crop_files(1, seed=weeks, prefix=f"w{weeks}_"),
            model_id,
            f"w{weeks}",
            meta=BatchMeta(age_days=weeks * 7),
            owner="ana",
        ).batch_id
        for weeks in (8, 10, 12)
    }
    with lab() as s:
        day = s.get(Batch, ids[10]).created.date()
        found = [b.id for b in queries.batches(s, queries.BatchFilter.chosen(age_weeks=(9, 12), uploaded=(day, day)))]
        before = queries.batches(s, queries.BatchFilter.chosen(uploaded=(None, day - dt.timedelta(days=1))))
    assert sorted(found) == [ids[10], ids[12]]  # 12 weeks included: "to" is inclusive
    assert before == []
