"""The quality check of a new model (issue #12): a model not clearly above chance is registered as "failed
quality check", never made a default and not offered by default; a temperature at its fitting bound is a
warning; every set of metrics says which cells it comes from; one order of models everywhere."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.ml.datasets import LabelledData
from lsm_core.ml.metrics import (
    QUALITY_MAX_P,
    QUALITY_MIN_MARGIN,
    TEMPERATURE_MAX,
    TEMPERATURE_MIN,
    evaluate_probs,
    fit_temperature,
    quality_check,
    softmax,
    temperature_warning,
)
from lsm_core.ml.models import Manifest, ModelStore, model_quality
from lsm_core.ml.train import TrainConfig, train_and_register

LSM = ["LT-HSC", "ST-HSC", "MPP"]


def labelled(task: str, n: int, seed: int, shuffle: bool = False) -> LabelledData:
    x, y = synthetic.make_crops(task, n, seed=seed)
    if shuffle:  # labels that say nothing about the cells: nothing can be learned
        y = np.random.default_rng(seed).permutation(y)
    return LabelledData(list(synthetic.task_classes(task)), x, y, np.arange(n), [f"cell {i}" for i in range(n)])


_TRAINED: dict[str, Path] = {}  # trained once per test session (tests/test_model_quality_app.py uses them too)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Two packages trained through train_and_register, in a store of their own: `useless-lsm` (random labels)
    and `good-aging` (synthetic cells, with a test set of another seed; a "lab" model, not a demo). Tests copy
    them; none changes them."""
    if _TRAINED:
        return dict(_TRAINED)
    store = ModelStore(tmp_path_factory.mktemp("quality-store"))
    useless = train_and_register(
        labelled("lsm", 150, seed=21, shuffle=True),
        "lsm",
        TrainConfig(architecture="tiny_cnn", epochs=1, batch_size=32, lr=3e-3),
        "useless-lsm",
        store,
        patience=None,
    )
    good = train_and_register(
        labelled("aging", 400, seed=22),
        "aging",
        TrainConfig(architecture="tiny_cnn", epochs=3, batch_size=16, lr=1e-2, weight_decay=0.0),
        "good-aging",
        store,
        test=labelled("aging", 100, seed=23),
        patience=None,
        test_name="test set (synthetic cells of another seed)",
    )
    _TRAINED.update({"useless-lsm": useless.path, "good-aging": good.path})
    return dict(_TRAINED)


@pytest.fixture
def history_here(tmp_path, monkeypatch):
    """A fresh data dir with its own SQLite history; returns (engine, lab, store)."""
    monkeypatch.setenv("LSM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LSM_DATABASE_URL", raising=False)
    monkeypatch.delenv("LSM_ADMINS", raising=False)  # lab mode: everyone administers
    from lsm_core.lab.open_lab import open_lab

    lab = open_lab()
    yield lab.engine, lab, lab.store
    lab.dispose()


def copy_in(store: ModelStore, package_path: Path) -> None:
    shutil.copytree(package_path, store.root / package_path.parent.name / package_path.name)


def add_model(store: ModelStore, task: str, name: str, demo: bool = False, failed: bool | None = None):
    """An untrained tiny_cnn package whose manifest records a quality check (or none)."""
    from lsm_core.ml import nets

    classes = LSM if task == "lsm" else ["young", "aged"]
    metrics = (
        {}
        if failed is None
        else {"quality_check": {"passed": not failed, "reasons": ["made up"] if failed else [], "warnings": []}}
    )
    return store.add(
        nets.create("tiny_cnn", len(classes)),
        Manifest(task=task, name=name, classes=classes, architecture="tiny_cnn", demo=demo, metrics=metrics),
    )


# --- the check itself, on fixed confusion matrices ----------------------------------------------------
def metrics_of(cm: list[list[int]], classes: list[str]) -> dict:
    cm = np.asarray(cm)
    return {
        "classes": classes,
        "confusion_matrix": cm.tolist(),
        "n": int(cm.sum()),
        "accuracy": float(np.trace(cm) / cm.sum()),
    }


def test_majority_answer_is_chance_even_when_classes_are_unequal():
    # 60% of the cells are LT-HSC; a model that calls every cell LT-HSC is 0.6 accurate and useless
    check = quality_check(metrics_of([[60, 0, 0], [25, 0, 0], [15, 0, 0]], LSM))
    assert check["chance"] == pytest.approx(0.6) and check["accuracy"] == pytest.approx(0.6)
    assert check["passed"] is False and check["n"] == 100
    text = " ".join(check["reasons"])
    assert "not clearly above chance" in text and "0.600" in text
    assert "predicts LT-HSC for 100 of the 100 cells" in text


def test_clearly_better_than_chance_passes_with_the_exact_binomial_p_value():
    check = quality_check(metrics_of([[30, 3, 2], [4, 28, 3], [2, 3, 25]], LSM))
    assert check["passed"] is True and check["reasons"] == []
    assert check["chance"] == pytest.approx(35 / 100)
    assert check["p_value"] == pytest.approx(binomtest(83, 100, 0.35, alternative="greater").pvalue)
    assert check["margin"] == pytest.approx(0.83 - 0.35)


def test_too_few_cells_or_too_small_a_margin_fail():
    # 8 of 12 right (0.667 against 1/3): a big margin, but p = 0.019 could be luck
    few = quality_check(metrics_of([[3, 1, 0], [1, 3, 0], [1, 1, 2]], LSM))
    assert few["margin"] >= QUALITY_MIN_MARGIN and few["p_value"] >= QUALITY_MAX_P
    assert few["passed"] is False and "could be luck" in few["reasons"][0]
    # 1000 cells at 0.37 against 1/3: p < 0.01, but 0.037 above chance is too little to offer the model
    cm = [[130, 100, 103], [100, 120, 114], [100, 113, 120]]
    small = quality_check(metrics_of(cm, LSM))
    assert small["p_value"] < QUALITY_MAX_P and small["margin"] < QUALITY_MIN_MARGIN
    assert small["passed"] is False and "at least +0.05 is required" in small["reasons"][0]


def test_no_check_recorded_reads_back_as_none():
    assert model_quality(None) == (None, [], [])
    assert model_quality({"accuracy": 0.9}) == (None, [], [])
    check = quality_check(metrics_of([[60, 0, 0], [25, 0, 0], [15, 0, 0]], LSM), TEMPERATURE_MAX)
    passed, reasons, warnings = model_quality({"quality_check": check})
    assert passed is False and reasons == check["reasons"] and "bound of 20" in warnings[0]


# --- the temperature -----------------------------------------------------------------------------------
def test_temperature_at_its_bound_is_a_warning():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 600)
    noise = rng.normal(size=(600, 3))  # logits that carry no information about the labels
    t = fit_temperature(noise, labels)
    assert t == pytest.approx(TEMPERATURE_MAX, rel=1e-3)
    metrics = evaluate_probs(softmax(noise, t), labels, LSM)
    assert metrics["ece"] < 0.05  # looks excellent, means nothing: hence the warning
    warning = quality_check(metrics, t)["warnings"]
    assert len(warning) == 1 and "bound of 20" in warning[0] and "not meaningful" in warning[0]
    assert temperature_warning(TEMPERATURE_MIN * 1.001) is not None and "0.05" in temperature_warning(TEMPERATURE_MIN)
    honest = rng.normal(size=(600, 3)) + 2.0 * np.eye(3)[labels]
    assert temperature_warning(fit_temperature(honest, labels)) is None
    assert temperature_warning(1.0) is None and temperature_warning(TEMPERATURE_MAX * 0.9) is None


# --- through train_and_register and the registry -----------------------------------------------------
def test_useless_model_is_registered_as_failed_never_default_and_not_offered(trained, history_here):
    from db import queries
    from lsm_core.lab.registry import offered_models, set_default, sync_models

    _, lab, store = history_here
    copy_in(store, trained["useless-lsm"])
    package = store.get("useless-lsm")
    check = package.manifest.metrics["quality_check"]
    assert check["passed"] is False and check["n"] == package.manifest.training["split"]["validation"]
    assert any("not clearly above chance" in r for r in check["reasons"])
    assert check["chance"] >= 1 / 3 and check["accuracy"] == pytest.approx(package.manifest.metrics["accuracy"])
    # the model: one class for everything, temperature 20 and a tiny ECE
    assert package.manifest.temperature == pytest.approx(TEMPERATURE_MAX, rel=1e-2)
    assert any("bound of 20" in w for w in check["warnings"])
    assert package.manifest.label == "useless-lsm v1 (failed quality check)"

    sync_models(lab)  # the only LSM model there is: still not made the default
    with lab() as s:
        row = queries.model_by_name(s, "useless-lsm")
        assert row.label == "useless-lsm v1 (failed quality check)"
        assert not row.is_default
        assert [m.name for m in offered_models(s, "lsm")] == []
        assert [m.name for m in offered_models(s, "lsm", include_failed=True)] == ["useless-lsm"]
        row_id = row.id
    with pytest.raises(LsmError, match="failed its quality check") as refused:
        set_default(lab, row_id, "ana")
    assert "not clearly above chance" in str(refused.value)
    with lab() as s:
        assert not s.get(type(row), row_id).is_default


def test_learnable_model_passes_and_every_set_says_what_it_is(trained, history_here):
    from lsm_core.lab.registry import offered_models, sync_models

    _, lab, store = history_here
    add_model(store, "aging", "demo-aging", demo=True)
    sync_models(lab)
    copy_in(store, trained["good-aging"])
    m = store.get("good-aging").manifest
    check = m.metrics["quality_check"]
    assert check["passed"] is True and check["reasons"] == [], check
    assert check["accuracy"] - check["chance"] >= QUALITY_MIN_MARGIN and check["p_value"] < QUALITY_MAX_P
    assert "failed" not in m.label
    assert m.metrics["evaluated_on"].startswith("validation set (") and m.metrics["evaluated_on"].endswith(
        f": {m.training['split']['validation']} cells"
    )
    assert m.metrics["test"]["evaluated_on"] == "test set (synthetic cells of another seed): 100 cells"
    assert m.metrics["test"]["quality_check"]["set"] == "test set"
    sync_models(lab)
    with lab() as s:
        # the demo was the default before: it stays (sync only fills a task without one)
        assert [(r.name, r.is_default) for r in offered_models(s, "aging")] == [
            ("demo-aging", True),
            ("good-aging", False),
        ]


def test_sync_never_keeps_a_failed_default_when_another_can_take_its_place(history_here):
    from db.schema import Model
    from lsm_core.lab.registry import offered_models, sync_models

    _, lab, store = history_here
    add_model(store, "lsm", "broken-lsm", failed=True)
    sync_models(lab)
    with lab.begin() as s:
        assert not any(r.is_default for r in offered_models(s, "lsm", include_failed=True))
        s.query(Model).filter(Model.name == "broken-lsm").update({"is_default": True})  # as an older database might say
    add_model(store, "lsm", "fine-lsm", failed=False)
    sync_models(lab)
    with lab() as s:
        assert [(r.name, r.is_default) for r in offered_models(s, "lsm", include_failed=True)] == [
            ("fine-lsm", True),
            ("broken-lsm", False),
        ]


def test_one_order_everywhere_lsm_first_default_first(history_here):
    from lsm_core.lab.registry import TASK_ORDER, model_sort_key, offered_models, set_default, sync_models

    _, lab, store = history_here
    assert TASK_ORDER == ("lsm", "aging")
    add_model(store, "aging", "a-aging", demo=True)  # sorts first by name: the task order must win
    add_model(store, "lsm", "demo-lsm", demo=True)
    add_model(store, "lsm", "b-lsm", failed=False)
    add_model(store, "lsm", "b-lsm", failed=False)  # v2
    add_model(store, "lsm", "c-lsm")  # no check recorded (imported weights, older models): offered
    add_model(store, "lsm", "a-bad", failed=True)
    sync_models(lab)
    with lab() as s:
        ids = {(m.name, m.version): m.id for m in offered_models(s, include_failed=True)}
        assert [m.name for m in offered_models(s)][0] == next(m.name for m in offered_models(s) if m.is_default)
    set_default(lab, ids[("b-lsm", 1)], "ana")
    with lab() as s:
        offered = [(m.task, m.name, m.version) for m in offered_models(s)]
    # the LSM default first, then by name with the newest version first, failed ones left out; aging after
    assert offered == [
        ("lsm", "b-lsm", 1),
        ("lsm", "b-lsm", 2),
        ("lsm", "c-lsm", 1),
        ("lsm", "demo-lsm", 1),
        ("aging", "a-aging", 1),
    ]
    set_default(lab, ids[("demo-lsm", 1)], "ana")
    with lab() as s:
        everything = offered_models(s, include_failed=True)
        assert [(m.name, m.version) for m in everything] == [
            ("demo-lsm", 1),
            ("b-lsm", 2),
            ("b-lsm", 1),
            ("c-lsm", 1),
            ("a-bad", 1),
            ("a-aging", 1),
        ]
        assert everything == sorted(everything, key=model_sort_key)
        assert everything[4].label == "a-bad v1 (failed quality check)"
        assert [m.name for m in offered_models(s, "aging")] == ["a-aging"]


# --- the model card --------------------------------------------------------------------------------------
def test_training_figure_accuracy_axis_is_zero_to_one_in_fifths():
    from lsm_core.reports.model_card import training_figure

    history = {
        "train_loss": [1.1, 0.9, 0.7, 0.6],
        "val_loss": [1.2, 1.0, 0.8, 0.75],
        "val_accuracy": [0.032, 0.243, 0.454, 0.665],
    }
    layout = training_figure({"history": history}).layout
    assert list(layout.yaxis2.range) == [0, 1]
    assert layout.yaxis2.tickmode == "linear" and layout.yaxis2.tick0 == 0 and layout.yaxis2.dtick == 0.2
    assert layout.yaxis2.overlaying == "y" and layout.yaxis.rangemode == "tozero"
    ticks = [round(layout.yaxis2.tick0 + i * layout.yaxis2.dtick, 6) for i in range(6)]
    assert ticks == [0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_cards_name_their_set_and_show_ece_beside_accuracy(trained):
    from lsm_core.reports.model_card import evaluation_card, model_cards

    m = Manifest.from_dict(__import__("json").loads((trained["good-aging"] / "manifest.json").read_text()))
    cards = model_cards(m.metrics)
    assert [c.heading.split(" (")[0] for c in cards] == ["Validation set", "Test set"]
    assert cards[1].heading == "Test set (synthetic cells of another seed): 100 cells"
    for card in cards:
        labels = [label for label, _, _ in card.numbers]
        assert labels[:2] == ["Accuracy (consistency)", "ECE"]
        assert {"confusion", "roc", "reliability"} <= set(card.figures)
        assert "accuracy" in card.figures["reliability"].layout.title.text
    # a demo model registered before the test set was named: the card names it all the same
    before = {**m.metrics, "test": {k: v for k, v in m.metrics["test"].items() if k != "evaluated_on"}}
    assert model_cards(before, demo=True)[1].heading == "Test set (synthetic cells of another seed): 100 cells"
    assert model_cards(before)[1].heading == "Test set: 100 cells"
    # models registered before the check: the card says so, and their old heading is kept
    old = {k: v for k, v in m.metrics.items() if k not in ("quality_check", "test")}
    old["evaluated_on"] = "validation set: 80 cells"
    (card,) = model_cards(old)
    assert card.heading == "Validation set: 80 cells" and "No quality check was recorded" in card.notes[0]
    # an evaluation job's result: model, files, cells; a chance-level result is said
    useless = Manifest.from_dict(__import__("json").loads((trained["useless-lsm"] / "manifest.json").read_text()))
    result = {k: v for k, v in useless.metrics.items() if k != "quality_check"}
    card = evaluation_card(result, useless.label, ["plate 3.zip", "plate 4.zip"])
    assert card.heading == f"useless-lsm v1 (failed quality check) on plate 3.zip, plate 4.zip: {result['n']} cells"
    assert card.errors == [] and any("not clearly above chance" in w for w in card.warnings)
    assert "confusion" in card.figures
