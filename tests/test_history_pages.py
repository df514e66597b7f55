"""The reads behind the History and Compare pages on a history of many batches, on SQLite and PostgreSQL.

queries.batches counts cells and images of the listed batches only (in chunks of ids), count_batches says how
many match, and the Compare page's score figure holds every score of each group (bench/history_pages.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from db import queries
from db.bulk import insert_cells
from db.schema import Batch, Image
from lsm_core.reports import compare
from lsm_core.reports.stats import parse_bins

CLASSES = ["LT-HSC", "ST-HSC", "MPP"]


def fill(lab, model_id: int, cells_per_batch: list[int]) -> list[int]:
    """Batches (oldest first, the even ones young, the odd ones aged), each with one image per 4 cells and the
    cells given, and a broken file in every third batch; returns their ids."""
    start = datetime(2024, 1, 1)
    ids = []
    with lab.begin() as s:
        for b, n in enumerate(cells_per_batch):
            batch = Batch(
                name=f"b{b}",
                owner="ana" if b % 2 else "ben",
                model_id=model_id,
                status="done",
                created=start + timedelta(days=b),
                mouse_id=f"M{b}",
                age_days=70.0 if b % 2 == 0 else 600.0,
                strain="Hoxb5" if b < 4 else "C57BL/6J",
            )
            s.add(batch)
            s.flush()
            ids.append(batch.id)
            rows = []
            for k, first in enumerate(range(0, n, 4)):
                image = Image(batch_id=batch.id, position=k, file=f"f{k}.tif", n_cells=min(4, n - first), done=True)
                s.add(image)
                s.flush()
                for idx in range(1, min(4, n - first) + 1):
                    i = first + idx - 1
                    rows.append(
                        {
                            "batch_id": batch.id,
                            "image_id": image.id,
                            "idx": idx,
                            "x": 0,
                            "y": 0,
                            "w": 8,
                            "h": 8,
                            "predicted": CLASSES[i % 3],
                            "score": 0.4 + 0.01 * (i % 50) + 0.001 * b,
                            "probs": [0.4, 0.3, 0.3],
                            "flags": "",
                        }
                    )
            if b % 3 == 0:
                s.add(Image(batch_id=batch.id, position=99, file="broken.png", error="not an image", done=True))
            insert_cells(s, rows)
    return ids


@pytest.fixture
def many(history):
    lab, _, model_id = history
    sizes = [0, 3, 9, 12, 1, 7, 0, 5]
    return lab, fill(lab, model_id, sizes), sizes


def test_batches_count_the_cells_and_images_of_the_listed_batches(many, monkeypatch):
    lab, ids, sizes = many
    expected = {i: (n, -(-n // 4) + (b % 3 == 0), int(b % 3 == 0)) for b, (i, n) in enumerate(zip(ids, sizes))}
    for chunk in (1000, 3):  # ids in one IN (...) list, and in several
        monkeypatch.setattr(queries, "ID_CHUNK", chunk)
        with lab() as s:
            listed = queries.batches(s, limit=100)
            assert [b.id for b in listed] == ids[::-1]  # newest first
            assert {b.id: (b.cells, b.images, b.errors) for b in listed} == expected
            page = queries.batches(s, limit=3, offset=2)
            assert [b.id for b in page] == ids[::-1][2:5]
            assert {b.id: (b.cells, b.images, b.errors) for b in page} == {i: expected[i] for i in ids[::-1][2:5]}
            owned = queries.batches(s, queries.BatchFilter(owner="ana", strain="Hoxb5"))
            assert [(b.id, b.cells) for b in owned] == [(ids[3], 12), (ids[1], 3)]


def test_count_batches_says_how_many_match_beyond_the_limit(many):
    lab, ids, _ = many
    with lab() as s:
        for f in (
            None,
            queries.BatchFilter(owner="ana"),
            queries.BatchFilter(strain="Hoxb5", age_min_days=100),
            queries.BatchFilter(task="lsm", text="B1"),
            queries.BatchFilter(task="aging"),
        ):
            assert queries.count_batches(s, f) == len(queries.batches(s, f, limit=1000))
        assert len(queries.batches(s, limit=5)) == 5 and queries.count_batches(s) == len(ids)


def test_the_score_figure_holds_every_score_of_each_group(many):
    lab, ids, sizes = many
    bins = parse_bins(compare.DEFAULT_BINS)
    chosen = [i for i, n in zip(ids, sizes) if n]
    with lab() as s:
        result = compare.build(s, chosen, by="age", bins=bins)
        fig = compare.score_figure(s, result)
        scores = {b: sorted(c.score for c in queries.batch_cells(s, b, limit=100)) for b in chosen}
        few = compare.score_figure(s, result, max_cells=10)
    young = [i for b, i in enumerate(ids) if b % 2 == 0 and sizes[b]]
    aged = [i for b, i in enumerate(ids) if b % 2 and sizes[b]]
    assert [t.name for t in fig.data] == ["young", "aged"]
    for trace, group in zip(fig.data, (young, aged)):
        assert sorted(np.asarray(trace.y).tolist()) == pytest.approx(sorted(v for b in group for v in scores[b]))
    assert sum(len(t.y) for t in few.data) == 10  # a random subset above max_cells
    everything = {round(v, 5) for values in scores.values() for v in values}
    assert all(round(float(v), 5) in everything for t in few.data for v in t.y)


def test_the_history_page_says_how_many_batches_it_does_not_list(app_env):
    from sqlalchemy import insert

    from lsm_core.lab.open_lab import open_lab
    from tests.helpers import run_page

    lab = open_lab()
    with lab.begin() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
        start = datetime(2024, 1, 1)
        s.execute(
            insert(Batch),
            [
                {
                    "name": f"b{i}",
                    "owner": "ana",
                    "model_id": model_id,
                    "status": "done",
                    "created": start + timedelta(hours=i),
                }
                for i in range(1005)
            ],
        )
    lab.dispose()
    at = run_page("pages/history.py")
    table = next(d.value for d in at.dataframe if "owner" in d.value.columns)
    assert len(table) == 1000 and table["name"].iloc[0] == "b1004"  # the newest
    assert any(c.value.startswith("The newest 1,000 of 1,005 batches") for c in at.caption)


def test_the_score_figure_by_mouse_puts_each_cell_in_its_own_mouse(many):
    lab, ids, sizes = many
    chosen = [i for i, n in zip(ids, sizes) if n]
    with lab() as s:
        result = compare.build(s, chosen, by="mouse_id")
        fig = compare.score_figure(s, result)
        scores = {b: sorted(c.score for c in queries.batch_cells(s, b, limit=100)) for b in chosen}
    mouse_of = {f"M{b}": i for b, i in enumerate(ids)}
    assert sorted(t.name for t in fig.data) == sorted(f"M{b}" for b, n in enumerate(sizes) if n)
    for trace in fig.data:
        assert sorted(np.asarray(trace.y).tolist()) == pytest.approx(scores[mouse_of[trace.name]])
