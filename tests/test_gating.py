"""Reporter as label (issue #15 item 5): a gate on the reporter channel measured in each cell labels the cells
of classified multi-channel batches for training; the gate's rule and counts go into the model's manifest and
card. The synthetic 2-channel stacks of tests/test_microscope_files.py give cell i a known GFP level."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import select

from db.schema import Batch, Cell, Image, Job, Model
from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.imaging.cells import FindParams, crops_at
from lsm_core.imaging.images import decode_page
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.imaging.readers.base import ReadOptions
from lsm_core.imaging.reporters import otsu_threshold
from lsm_core.lab import batches
from lsm_core.lab.gating import parse_batch_ids, parse_gate
from lsm_core.lab.training_data import from_batches, from_gate, gate_batches
from lsm_core.lab.worker import Worker
from tests.helpers import crop_files
from tests.test_microscope_files import GFP_BACKGROUND, PIXEL_UM, gfp_level, two_channel_stack

NUMBERS = "GFP > 2000 -> LT-HSC; GFP < 1500 -> MPP"  # measured levels 900, 1300, [1700], 2100, 2500, 2900
OTSU = "GFP high -> LT-HSC, GFP low -> MPP"
TINY = {"architecture": "tiny_cnn", "epochs": 2, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.0}


def level(i: int) -> float:
    """What the reporter measures in cell i of a stack: its level above the background."""
    return gfp_level(i) - GFP_BACKGROUND


def stacks(seeds) -> list[RawFile]:
    return [RawFile(f"stack{seed}.ome.tif", two_channel_stack(seed=seed)[0]) for seed in seeds]


def truth_index(cell, seed: int) -> int:
    """Which cell of the synthetic stack ``seed`` a stored cell is (the truth centre inside its box)."""
    _, truth = synthetic.make_field("lsm", seed=seed, shape=(900, 900), n_cells=6, n_debris=0, pixel_size=PIXEL_UM)
    (i,) = [i for i, t in enumerate(truth) if cell.x <= t.cx < cell.x + cell.w and cell.y <= t.cy < cell.y + cell.h]
    return i


def classified(lab, model_id, files, name, **meta) -> int:
    sub = batches.submit_batch(lab, files, model_id, name, owner="ana", meta=batches.BatchMeta(**meta))
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        assert s.get(Batch, sub.batch_id).status == "done"
    return sub.batch_id


# --- the rule ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,canonical,measure,values,labels",
    [
        (NUMBERS, NUMBERS, "mean", [900, 1700, 2100, math.nan], ["MPP", None, "LT-HSC", None]),
        (
            "gfp >= 2000 -> lt-hsc\n400 < GFP < 2000 -> ST-HSC; GFP <= 400 -> MPP",
            "gfp >= 2000 -> LT-HSC; 400 < gfp < 2000 -> ST-HSC; gfp <= 400 -> MPP",
            "mean",
            [400, 401, 1999, 2000],
            ["MPP", "ST-HSC", "ST-HSC", "LT-HSC"],
        ),
        (
            "GFP.integrated > 2e5 -> LT-HSC; GFP.integrated < -10 -> MPP",
            "GFP.integrated > 200000 -> LT-HSC; GFP.integrated < -10 -> MPP",
            "integrated",
            [3e5, 2e5, -11],
            ["LT-HSC", None, "MPP"],
        ),
        (
            '"FM 4-64" ≥ 300 → MPP; "FM 4-64" < 100 -> LT-HSC',
            '"FM 4-64" >= 300 -> MPP; "FM 4-64" < 100 -> LT-HSC',
            "mean",
            [300, 99, 200],
            ["MPP", "LT-HSC", None],
        ),
    ],
)
def test_the_parser_accepts_thresholds_ranges_measures_and_quoted_channels(text, canonical, measure, values, labels):
    gate = parse_gate(text, "lsm")
    assert gate.text == canonical and gate.measure == measure and not gate.uses_otsu
    assert gate.assign(np.array(values, np.float64)) == labels


def test_high_and_low_are_above_and_at_or_below_otsus_threshold():
    gate = parse_gate(OTSU, "lsm")
    assert gate.uses_otsu and gate.text == "GFP high -> LT-HSC; GFP low -> MPP" and gate.classes == ["LT-HSC", "MPP"]
    assert gate.assign(np.array([999.0, 1000.0, 1000.5]), 1000.0) == ["MPP", "MPP", "LT-HSC"]
    mixed = parse_gate("GFP high -> LT-HSC; GFP < 400 -> MPP", "lsm")
    mixed.check(900.0)  # apart at this batch's threshold
    with pytest.raises(LsmError, match=r"overlap \(in batch 7, Otsu's threshold of GFP is 300\)"):
        mixed.check(300.0, "batch 7")


@pytest.mark.parametrize(
    "text,words",
    [
        ("", "write a gate, e.g. `GFP > 1500 -> LT-HSC; GFP < 400 -> MPP`"),
        (
            "GFP > 1500 -> HSC; GFP < 400 -> MPP",
            "`GFP > 1500 -> HSC`: 'HSC' is not one of the lsm classes (LT-HSC, ST-HSC, MPP)",
        ),
        ("GFP > 1500 -> young; GFP < 400 -> MPP", "'young' is not one of the lsm classes"),
        ("GFP > 1500 -> LT-HSC; GFP > 400 -> MPP", "`GFP > 1500 -> LT-HSC` and `GFP > 400 -> MPP` overlap"),
        ("GFP >= 400 -> LT-HSC; GFP <= 400 -> MPP", "`GFP >= 400 -> LT-HSC` and `GFP <= 400 -> MPP` overlap"),
        ("GFP high -> LT-HSC; GFP high -> MPP", "`GFP high -> LT-HSC` and `GFP high -> MPP` overlap"),
        ("GFP > 1500 -> LT-HSC; RFP < 400 -> MPP", "a gate reads one channel: `GFP > 1500 -> LT-HSC` reads GFP, `RFP"),
        ("GFP > 1500 -> LT-HSC; GFP.integrated < 4 -> MPP", "a gate reads one measure of its channel"),
        ("GFP > 1500 -> LT-HSC", "the gate names only LT-HSC"),
        ("GFP > 1500; GFP < 400 -> MPP", "cannot read the gate clause `GFP > 1500`: it names no class"),
        ("GFP > 1,500 -> LT-HSC; GFP < 400 -> MPP", "`GFP > 1,500 -> LT-HSC`: write numbers without thousands"),
        ("GFP high 1500 -> LT-HSC; GFP low -> MPP", "`high` and `low` take no number"),
        ("GFP is bright -> LT-HSC; GFP < 400 -> MPP", "cannot read the gate clause `GFP is bright -> LT-HSC`"),
        ("2000 < GFP < 400 -> ST-HSC; GFP > 3000 -> LT-HSC", "`2000 < GFP < 400 -> ST-HSC`: no value is between"),
    ],
)
def test_the_parser_refuses_with_a_message_naming_the_bad_part(text, words):
    with pytest.raises(LsmError) as caught:
        parse_gate(text, "lsm")
    assert words in str(caught.value)


def test_batch_ids_are_read_from_commas_and_spaces():
    assert parse_batch_ids("12, 13 14;12") == [12, 13, 14]
    assert parse_batch_ids("  ") == []
    with pytest.raises(LsmError, match="'M17' is not a batch id"):
        parse_batch_ids("12 M17")


# --- the labelled set ---------------------------------------------------------------------------------------
def test_the_gated_set_has_exactly_the_expected_label_of_every_cell(history):
    lab, _, model_id = history
    seeds = (31, 33, 34, 38)
    files = stacks(seeds) + crop_files(2, seed=35)  # the two PNG crops have no GFP channel: no value
    batch_id = classified(lab, model_id, files, "reporter", mouse_id="M1")

    with lab() as s:
        (gated,) = gate_batches(s, [batch_id], parse_gate(NUMBERS, "lsm"))
        cells = {c.id: c for c in s.scalars(select(Cell).where(Cell.batch_id == batch_id))}
        files_of = {im.id: im.file for im in s.scalars(select(Image).where(Image.batch_id == batch_id))}
    assert gated.channel == "GFP" and gated.threshold is None and len(gated.cells) == 4 * 6 + 2
    expected: dict[int, str | None] = {}
    for g in gated.cells:
        name = files_of[g.image_id]
        if name.endswith(".png"):
            assert g.value is None and g.cls is None
            continue
        i = truth_index(cells[g.cell_id], int(name.removeprefix("stack").split(".")[0]))
        assert g.value == pytest.approx(level(i), rel=0.02)
        expected[g.cell_id] = "LT-HSC" if level(i) > 2000 else "MPP" if level(i) < 1500 else None
    assert {g.cell_id: g.cls for g in gated.cells if g.cell_id in expected} == expected
    assert gated.counts() == {"labelled": {"LT-HSC": 12, "MPP": 8}, "between": 4, "no_value": 2}

    with lab() as s:
        data = from_gate(s, lab, [batch_id], OTSU, "lsm")
    (summary,) = data.provenance
    threshold = summary["thresholds"][str(batch_id)]  # the batch's own: Otsu's of its cells' values
    assert threshold == pytest.approx(otsu_threshold(np.array([g.value for g in gated.cells if g.value is not None])))
    assert level(2) * 0.98 <= threshold < level(3) * 0.98  # it splits the six levels three and three
    with lab() as s:
        (by_otsu,) = gate_batches(s, [batch_id], parse_gate(OTSU, "lsm"))
    for g in by_otsu.cells:  # high: above the threshold; low: at or below it
        assert g.cls == (None if g.value is None else "LT-HSC" if g.value > threshold else "MPP")
    assert data.class_counts == {"LT-HSC": 12, "ST-HSC": 0, "MPP": 12}
    assert summary["counts"] == {"labelled": {"LT-HSC": 12, "MPP": 12}, "between": 0, "no_value": 2, "unusable": 0}
    assert summary["rule"] == "GFP high -> LT-HSC; GFP low -> MPP" and summary["batches"] == [batch_id]
    order = [g.cls for g in by_otsu.cells if g.cls is not None]  # the crops come in the cells' order
    assert [data.classes[k] for k in data.labels] == order
    assert data.sources == ["mouse M1"] and set(data.groups.tolist()) == {0}
    assert data.crops.shape == (24, 64, 64) and np.isfinite(data.crops).all()


def test_a_gate_on_a_channel_the_batches_lack_names_the_channels_they_have(history):
    lab, _, model_id = history
    with_gfp = classified(lab, model_id, stacks([40]), "reporter")
    one_channel = classified(lab, model_id, crop_files(2, seed=37), "plain")
    with lab() as s:
        with pytest.raises(LsmError, match=f"batch {with_gfp} has no channel 'RFP'; its channels: GFP"):
            gate_batches(s, [with_gfp], parse_gate("RFP high -> LT-HSC; RFP low -> MPP", "lsm"))
        with pytest.raises(LsmError, match=f"batch {one_channel} has no channel 'GFP': its files have one channel"):
            gate_batches(s, [with_gfp, one_channel], parse_gate(NUMBERS, "lsm"))
        with pytest.raises(LsmError, match="batch 999999 does not exist"):
            gate_batches(s, [999999], parse_gate(NUMBERS, "lsm"))
        (lower,) = gate_batches(s, [with_gfp], parse_gate("gfp > 2000 -> LT-HSC; gfp < 1500 -> MPP", "lsm"))
        assert lower.channel == "GFP" and lower.counts()["labelled"] == {"LT-HSC": 3, "MPP": 2}
        # a number that overlaps this batch's Otsu threshold (between 1700 and 2100) is refused for this batch
        with pytest.raises(LsmError, match=f"overlap \\(in batch {with_gfp}, Otsu's threshold of GFP is"):
            gate_batches(s, [with_gfp], parse_gate("GFP high -> LT-HSC; GFP < 2500 -> MPP", "lsm"))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cells_are_cut_again_from_the_channel_and_z_plane_their_batch_was_classified_on(history):
    """The defect fixed in labels.stored_crops: the crops of a batch classified on z plane 0 were cut again from
    the file's best-focused plane (and at the model's pixel size instead of the file's)."""
    lab, _, model_id = history
    sorted_as = {}
    for cls, seeds in (("LT-HSC", (33, 35)), ("MPP", (50, 52))):
        sorted_as[classified(lab, model_id, stacks(seeds), cls, channel="DIC", z=0)] = cls
    with lab() as s:
        data = from_batches(s, lab, sorted_as, "lsm")
    assert data.class_counts == {"LT-HSC": 12, "ST-HSC": 0, "MPP": 12}

    chosen, default = [], []
    with lab() as s:
        for batch_id in sorted_as:
            for image in s.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.position)):
                assert image.pixel_size_um == pytest.approx(PIXEL_UM)
                boxes = s.execute(
                    select(Cell.x, Cell.y, Cell.w, Cell.h).where(Cell.image_id == image.id).order_by(Cell.idx)
                ).all()
                data_bytes = lab.blobs.get(image.sha256)
                params = FindParams(pixel_size_um=PIXEL_UM)
                plane0 = decode_page(image.file, data_bytes, image.page, options=ReadOptions("DIC", 0))
                chosen.append(crops_at(plane0, boxes, params))
                default.append(crops_at(decode_page(image.file, data_bytes, image.page), boxes, params))
    chosen_crops, default_crops = np.concatenate(chosen), np.concatenate(default)
    assert np.allclose(data.crops, chosen_crops, atol=1e-6)
    assert not np.allclose(chosen_crops, default_crops, atol=1e-2)  # the planes differ: the test can tell


# --- training -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_gated_training_job_and_command_line_record_the_rule_and_counts(history, monkeypatch, capsys):
    from lsm_core import cli
    from lsm_core.lab.tasks import train as train_task
    from lsm_core.reports.model_card import training_labels

    lab, _, model_id = history
    ids = [classified(lab, model_id, stacks((57, 58)), f"mouse {m}", mouse_id=m) for m in ("M1", "M2", "M3")]
    job_id = train_task.submit(lab, "lsm", "gated-job", dict(TINY), owner="ana", gated={"batches": ids, "rule": OTSU})
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        job = s.get(Job, job_id)
        assert job.status == "done", job.errors
        assert job.payload["gated"] == {"batches": ids, "rule": OTSU}
        model = s.get(Model, job.result["model_id"])
        training = model.training
    (gate,) = training["labels"]
    assert gate["kind"] == "gate" and gate["rule"] == "GFP high -> LT-HSC; GFP low -> MPP"
    assert gate["channel"] == "GFP" and gate["measure"] == "mean" and gate["batches"] == ids
    assert gate["counts"] == {"labelled": {"LT-HSC": 18, "MPP": 18}, "between": 0, "no_value": 0, "unusable": 0}
    assert set(gate["thresholds"]) == {str(b) for b in ids}
    assert training["class_counts"] == {"LT-HSC": 18, "ST-HSC": 0, "MPP": 18}
    split = training["split"]  # the sources are the three mice, each on one side
    assert split["sources_train"] + split["sources_validation"] == 3 and split["sources_validation"] >= 1
    manifest = lab.store.get("gated-job", model.version).manifest  # the package on disk says the same
    assert manifest.training["labels"] == training["labels"]
    card = training_labels(training)
    assert card is not None
    shown = "\n".join(card.lines)
    assert (
        "Reporter gate on GFP (the mean intensity inside each cell minus the background) of batch(es) "
        f"{', '.join(map(str, ids))}: GFP high -> LT-HSC; GFP low -> MPP" in shown
    )
    assert "Otsu's threshold (high / low) of each batch: batch" in shown
    assert "Left out: 0 cell(s) between the thresholds (no clause covers them), 0 with no GFP value." in shown
    assert {(r["class"], r["cells"]) for r in card.counts} >= {("LT-HSC", 18), ("MPP", 18)}

    # the same batches through the command line, with numbers: the cells between them are left out
    monkeypatch.setenv("LSM_DATABASE_URL", lab.settings.database_url)
    monkeypatch.delenv("LSM_ADMINS", raising=False)
    argv = ["train", "--task", "lsm", "--arch", "tiny_cnn", "--epochs", "1", "--batch-size", "16", "--register"]
    assert cli.main([*argv, "gated-cli", "--batches", *map(str, ids), "--gate", NUMBERS]) == 0
    err = capsys.readouterr().err
    assert f"gate {NUMBERS} on batches {', '.join(map(str, ids))}: LT-HSC 18, MPP 12; left out: 6 between" in err
    assert "registered gated-cli v" in err
    package = lab.store.resolve("gated-cli")
    (gate,) = package.manifest.training["labels"]
    assert gate["rule"] == NUMBERS and gate["thresholds"] == {}
    assert gate["counts"] == {"labelled": {"LT-HSC": 18, "MPP": 12}, "between": 6, "no_value": 0, "unusable": 0}
    assert "Left out: 6 cell(s) between the thresholds" in "\n".join(training_labels(package.manifest.training).lines)


def test_the_command_line_refuses_a_gate_without_batches_and_a_bad_rule(data_dir, capsys):
    from lsm_core import cli

    argv = ["train", "--task", "lsm", "--register", "never"]
    assert cli.main([*argv, "--batches", "1", "2"]) == 2
    assert "--batches needs --gate RULE" in capsys.readouterr().err
    assert cli.main([*argv, "--gate", NUMBERS]) == 2
    assert "--gate needs --batches" in capsys.readouterr().err
    assert cli.main(argv) == 2
    assert "give training data" in capsys.readouterr().err
    assert cli.main([*argv, "--batches", "1", "--gate", "GFP > 1500 -> HSC; GFP < 3 -> MPP"]) == 2
    assert "'HSC' is not one of the lsm classes" in capsys.readouterr().err


def test_submit_refuses_a_gate_that_cannot_be_applied(history):
    from lsm_core.lab.tasks import train as train_task

    lab, _, model_id = history
    batch_id = classified(lab, model_id, stacks([40]), "reporter")

    def submit(**gated):
        return train_task.submit(lab, "lsm", "never", dict(TINY), owner="ana", gated=gated)

    with pytest.raises(LsmError, match="no gate: write one"):
        submit(batches=[batch_id], rule=" ")
    with pytest.raises(LsmError, match="no batches chosen"):
        submit(batches="", rule=NUMBERS)
    with pytest.raises(LsmError, match="choose training data"):
        submit(batches="", rule="")
    with pytest.raises(LsmError, match="its channels: GFP"):
        submit(batches=str(batch_id), rule="RFP > 1 -> LT-HSC; RFP < 0 -> MPP")
    with pytest.raises(LsmError, match="labels no cell of batch"):
        submit(batches=[batch_id], rule="GFP > 5000 -> LT-HSC; GFP < 0 -> MPP")
    with lab() as s:
        assert s.scalars(select(Job).where(Job.kind == "train")).first() is None


# --- the Models page ----------------------------------------------------------------------------------------
def test_the_models_page_refuses_a_bad_gate_with_a_message_and_shows_a_gated_models_labels(app_env):
    from db import queries
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.registry import sync_models
    from lsm_core.ml import nets
    from lsm_core.ml.models import Manifest
    from tests.helpers import run_page, texts

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    batch_id = classified(lab, model_id, stacks([40]), "reporter")
    summary = {
        "kind": "gate",
        "rule": "GFP high -> LT-HSC; GFP low -> MPP",
        "channel": "GFP",
        "measure": "mean",
        "classes": ["LT-HSC", "MPP"],
        "batches": [batch_id],
        "thresholds": {str(batch_id): 1843.25},
        "counts": {"labelled": {"LT-HSC": 31, "MPP": 29}, "between": 0, "no_value": 4, "unusable": 0},
    }
    manifest = Manifest(
        task="lsm",
        name="gated-card",
        classes=["LT-HSC", "ST-HSC", "MPP"],
        architecture="tiny_cnn",
        training={"labels": [summary], "class_counts": {"LT-HSC": 31, "ST-HSC": 0, "MPP": 29}},
    )
    lab.store.add(nets.create("tiny_cnn", 3), manifest)
    sync_models(lab)
    lab.dispose()

    at = run_page("pages/models.py")
    assert "Training labels" not in texts(at)  # the demo model's manifest records none: nothing is made up
    next(w for w in at.text_input if w.label == "Model name").set_value("gated-lsm")
    next(w for w in at.text_input if w.label.startswith("Batches to label by a reporter gate")).set_value(str(batch_id))
    rule = next(w for w in at.text_area if w.label == "Reporter gate")
    assert "GFP > 1500 -> LT-HSC; GFP < 400 -> MPP" in (rule.help or "")
    for text, words in (
        ("GFP > 1500 -> HSC; GFP < 400 -> MPP", "'HSC' is not one of the lsm classes (LT-HSC, ST-HSC, MPP)"),
        ("RFP high -> LT-HSC; RFP low -> MPP", f"batch {batch_id} has no channel 'RFP'; its channels: GFP"),
        ("GFP > 1500 -> LT-HSC; GFP > 400 -> MPP", "`GFP > 1500 -> LT-HSC` and `GFP > 400 -> MPP` overlap"),
    ):
        next(w for w in at.text_area if w.label == "Reporter gate").set_value(text)
        next(b for b in at.button if b.label == "Start training").click()
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        assert words in "\n".join(texts(at).splitlines()), texts(at)[-2000:]
        assert not any("Training queued" in m.value for m in at.success)

    card = next(s for s in at.selectbox if s.label == "Model")
    card.set_value(next(o for o in card.options if "gated-card" in o)).run()
    assert not at.exception, [e.message for e in at.exception]
    shown = texts(at)
    assert "Training labels" in shown
    assert (
        "Reporter gate on GFP (the mean intensity inside each cell minus the background) of batch(es) "
        f"{batch_id}: GFP high -> LT-HSC; GFP low -> MPP" in shown
    )
    assert f"Otsu's threshold (high / low) of each batch: batch {batch_id}: 1,843.2" in shown
    assert "Left out: 0 cell(s) between the thresholds (no clause covers them), 4 with no GFP value." in shown
    table = next(d.value for d in at.dataframe if "labels from" in d.value.columns)
    assert dict(zip(table["class"], table["cells"])) == {
        "LT-HSC": 31,
        "MPP": 29,
        "left out: between the thresholds": 0,
        "left out: no GFP value": 4,
    }
