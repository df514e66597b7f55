"""One calibration value (issue #28 item 4): the pixel size cells are found at, and where it came from, decided by
one rule (:func:`lsm_core.imaging.calibration.resolve`: what the user set, then what the file states, then the
lab's LSM_PIXEL_SIZE_UM, then the model's default) and recorded as one of four stored values; words only where
people read them. A pixel size taken from LSM_PIXEL_SIZE_UM was recorded as "model default"."""

from __future__ import annotations

import csv
import doctest
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from sqlalchemy import select

from db.schema import Image
from lsm_core.imaging import calibration as calibration_module
from lsm_core.imaging import synthetic
from lsm_core.imaging.calibration import SOURCE_WORDS, Calibration, CalibrationSource, recorded, resolve
from lsm_core.imaging.cells import FindParams, no_cells_note
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.lab import batches
from lsm_core.lab import settings as lab_settings
from lsm_core.lab.open_lab import open_lab
from lsm_core.lab.worker import Worker
from lsm_core.reports.methods import SOURCES
from tests.helpers import crop_files

SETTING_UM = 0.25  # the lab's LSM_PIXEL_SIZE_UM in these tests: neither the file's nor the model's (0.2)
FILE_UM = 0.1


USER, FILE, SETTING, MODEL_DEFAULT = CalibrationSource


def test_the_module_examples_hold():
    assert doctest.testmod(calibration_module).failed == 0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"user": 0.15, "file": 0.1, "setting": 0.25}, (0.15, USER)),  # the user's value wins over everything
        ({"file": 0.1, "setting": 0.25}, (0.1, FILE)),  # then what the file states
        ({"setting": 0.25}, (0.25, SETTING)),  # then LSM_PIXEL_SIZE_UM
        ({}, (0.2, MODEL_DEFAULT)),  # then the model's
        ({"user": None, "file": 0.0, "setting": None}, (0.2, MODEL_DEFAULT)),  # None and 0 state nothing
        ({"user": 0.15}, (0.15, USER)),
        ({"user": 0.15, "setting": 0.25}, (0.15, USER)),
        ({"file": 0.1}, (0.1, FILE)),
    ],
)
def test_one_rule_decides_the_pixel_size_and_says_where_it_came_from(given, expected):
    assert resolve(**given, model_default=0.2) == Calibration(*expected)


@pytest.mark.parametrize(
    ("before", "file", "expected"),
    [
        (resolve(user=0.15, model_default=0.2), 0.1, (0.15, USER)),  # the user's value stays
        (resolve(setting=0.25, model_default=0.2), 0.1, (0.1, FILE)),  # the file's replaces the setting
        (resolve(model_default=0.2), 0.1, (0.1, FILE)),  # and the model's
        (resolve(setting=0.25, model_default=0.2), None, (0.25, SETTING)),  # a file stating nothing changes nothing
        (resolve(model_default=0.2), None, (0.2, MODEL_DEFAULT)),
    ],
)
def test_what_the_file_states_comes_in_its_place(before, file, expected):
    assert before.with_file(file) == Calibration(*expected)


def test_the_stored_values_are_the_ones_the_history_holds_and_read_back():
    # rows written since migration 0009 hold "user", "file" or "model default"; "setting" is new
    assert [s.value for s in CalibrationSource] == ["user", "file", "setting", "model default"]
    for stored in ("user", "file", "model default", "setting"):
        assert recorded(0.3, stored, model_default=0.2) == Calibration(0.3, CalibrationSource(stored))
    assert recorded(None, None, model_default=0.2) == Calibration(0.2, MODEL_DEFAULT)  # not classified yet


def test_each_source_has_its_words_and_cell_finding_says_them():
    assert SOURCE_WORDS == {
        "user": "set for this batch",
        "file": "stated in the file",
        "setting": "from LSM_PIXEL_SIZE_UM",
        "model default": "the model's default",
    }
    params = FindParams().at(resolve(setting=0.25, model_default=0.2))
    assert params.pixel_size_um == 0.25 and params.calibration == Calibration(0.25, SETTING)
    assert no_cells_note({}, params).endswith("It is 0.25 µm/px, from LSM_PIXEL_SIZE_UM.")
    assert FindParams().pixel_size_source is MODEL_DEFAULT
    # the methods text says it of several batches, in its own words, for every source (a setting was "the model
    # default" there)
    assert set(SOURCES) == set(CalibrationSource) and SOURCES[SETTING] == "the lab's LSM_PIXEL_SIZE_UM setting"


def stated_file(name: str = "stated.ome.tif") -> RawFile:
    """A synthetic single-cell crop as an OME-TIFF that states FILE_UM µm per pixel."""
    crops, _ = synthetic.make_crops("lsm", 1, seed=9)
    data = np.round(crops[0] * 4095).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, ome=True, metadata={"axes": "YX", "PhysicalSizeX": FILE_UM, "PhysicalSizeY": FILE_UM})
    return RawFile(name, buf.getvalue())


def test_a_batch_classified_by_a_worker_at_the_labs_setting_records_setting(db_url, data_dir, tiny_lsm_package):
    lab = open_lab(lab_settings.current().with_(database_url=db_url, pixel_size_um=SETTING_UM))
    try:
        with lab() as s:
            from db import queries

            model_id = queries.model_by_name(s, "tiny-lsm").id
        files = [*crop_files(2, seed=7), stated_file()]  # the PNGs state no pixel size, the OME-TIFF does
        sub = batches.submit_batch(lab, files, model_id, "at the setting", owner="ana")
        assert Worker(lab, device="cpu").run(drain=True) == 1
        with lab() as s:
            read = {
                im.file: (im.pixel_size_um, im.pixel_size_source)
                for im in s.scalars(select(Image).where(Image.batch_id == sub.batch_id))
            }
        assert read == {
            "cell0000.png": (SETTING_UM, "setting"),
            "cell0001.png": (SETTING_UM, "setting"),
            "stated.ome.tif": (pytest.approx(FILE_UM), "file"),  # what the file states comes before the setting
        }
        again = batches.rerun(lab, sub.batch_id, model_id, "ana", pixel_size_um=0.15)  # the user's value wins
        assert Worker(lab, device="cpu").run(drain=True) == 1
        with lab() as s:
            rows = s.execute(
                select(Image.pixel_size_um, Image.pixel_size_source).where(Image.batch_id == again.batch_id)
            )
            assert set(rows) == {(0.15, "user")}
    finally:
        lab.dispose()


def test_classify_on_the_command_line_at_the_setting_records_setting(tmp_path, monkeypatch, tiny_lsm_package):
    from lsm_core import cli

    for f in [*crop_files(1, seed=8), stated_file()]:
        (tmp_path / f.source).write_bytes(f.data or b"")
    monkeypatch.setenv("LSM_PIXEL_SIZE_UM", str(SETTING_UM))
    out = tmp_path / "cells.csv"
    argv = ["classify", str(tmp_path / "cell0000.png"), str(tmp_path / "stated.ome.tif")]
    assert cli.main([*argv, "--model", str(tiny_lsm_package.path), "--out", str(out)]) == 0
    read = list(csv.DictReader(out.open()))
    rows = {Path(r["file"]).name: (float(r["pixel_size_um"]), r["pixel_size_source"]) for r in read}
    assert rows == {"cell0000.png": (SETTING_UM, "setting"), "stated.ome.tif": (pytest.approx(FILE_UM), "file")}
