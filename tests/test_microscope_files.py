"""Microscope files through the whole path (issue #15, first part): a 2-channel z-stack OME-TIFF classified
with no options is read on its transmitted-light channel, at its best-focused plane, at the pixel size the
file states, once per field (never once per plane); a file that names no transmitted channel asks for one;
the shared vendor files carry their calibration into the history and the exports, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from sqlalchemy import select

from db.schema import Batch, Cell, Image
from lsm_core.errors import FilesRefused
from lsm_core.imaging import synthetic
from lsm_core.imaging.images import decode_bytes
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.imaging.readers.base import ReadOptions
from lsm_core.lab import batches
from lsm_core.lab.worker import Worker

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PIXEL_UM = 0.1  # the file's calibration: half the demo models' 0.2, so the model's default would be wrong
GFP_BACKGROUND = 100


def gfp_level(i: int) -> int:
    """The reporter level of the i-th cell of the synthetic stack (the background is GFP_BACKGROUND)."""
    return 1000 + 400 * i


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: the shared microscope files are needed under CI")
        pytest.skip(f"{path} is missing (the shared microscope files are not on this machine)")
    return path


def two_channel_stack(seed: int = 3) -> tuple[bytes, int]:
    """An OME-TIFF of one field: channels GFP (a reporter: bright where the cells are) and DIC, three z planes
    of which the middle one is sharp, 0.1 um per pixel stated in nanometres. Returns (bytes, cells in it)."""
    field, truth = synthetic.make_field("lsm", seed=seed, shape=(900, 900), n_cells=6, n_debris=0, pixel_size=PIXEL_UM)
    dic = np.round(field * 4095).astype(np.uint16)
    gfp = np.full_like(dic, GFP_BACKGROUND)
    yy, xx = np.mgrid[: dic.shape[0], : dic.shape[1]]
    for i, cell in enumerate(truth):  # a disk that covers the whole cell, brighter for each next cell
        inside = (xx - cell.cx) ** 2 + (yy - cell.cy) ** 2 <= (0.8 * max(cell.w, cell.h)) ** 2
        gfp[inside] = gfp_level(i)
    planes = []
    for z in range(3):
        blur = 0 if z == 1 else 6
        planes.append(
            [
                ndimage.gaussian_filter(gfp, blur) if blur else gfp,
                ndimage.gaussian_filter(dic, blur) if blur else dic,
            ]
        )
    stack = np.array(planes)[np.newaxis]  # T Z C Y X
    stack = np.moveaxis(stack, 2, 1)  # T C Z Y X
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        stack,
        ome=True,
        metadata={
            "axes": "TCZYX",
            "Channel": {"Name": ["GFP", "DIC"]},
            "PhysicalSizeX": PIXEL_UM * 1000,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": PIXEL_UM * 1000,
            "PhysicalSizeYUnit": "nm",
        },
    )
    return buf.getvalue(), len(truth)


def test_a_two_channel_stack_is_read_on_its_dic_channel_at_its_best_plane_and_its_pixel_size():
    data, _ = two_channel_stack()
    (record,) = decode_bytes("stack.ome.tif", data)  # one image: the planes are one field, not three
    assert record.ok, record.error
    assert record.channel == "DIC" and record.pixel_size_um == pytest.approx(PIXEL_UM)
    assert record.pixel_size_origin and "OME" in record.pixel_size_origin
    assert record.notes == ["z plane 2 of 3 (best focus)"]
    (gfp,) = decode_bytes("stack.ome.tif", data, options=ReadOptions(channel="gfp", z=0))
    assert gfp.channel == "GFP" and gfp.notes == ["z plane 1 of 3 (chosen)"]
    assert not np.allclose(gfp.pixels, record.pixels)


def test_a_file_that_names_no_transmitted_channel_asks_for_one():
    data, _ = two_channel_stack()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        xml = tif.ome_metadata
    renamed = data.replace(b'Name="DIC"', b'Name="RFP"')
    assert xml and renamed != data
    (record,) = decode_bytes("two-reporters.ome.tif", renamed)
    assert not record.ok
    assert "none of its channels is named as transmitted light" in record.error
    assert "0: GFP, 1: RFP" in record.error and "--channel" in record.error
    (chosen,) = decode_bytes("two-reporters.ome.tif", renamed, options=ReadOptions(channel="1"))
    assert chosen.ok and chosen.channel == "RFP"


def test_classify_on_the_command_line_uses_the_files_calibration(tmp_path, data_dir, tiny_lsm_package):
    from lsm_core import cli

    data, _ = two_channel_stack()
    (tmp_path / "stack.ome.tif").write_bytes(data)
    out = tmp_path / "cells.csv"
    model = str(tiny_lsm_package.path)
    assert cli.main(["classify", str(tmp_path / "stack.ome.tif"), "--model", model, "--out", str(out)]) == 0

    rows = list(csv.DictReader(out.open()))
    assert rows and all(r["pixel_size_source"] == "file" for r in rows), rows[:2]
    assert all(float(r["pixel_size_um"]) == pytest.approx(PIXEL_UM) for r in rows)
    assert {r["page"] for r in rows} == {"1"}  # one field, whatever the number of planes
    given = tmp_path / "given.csv"
    argv = ["classify", str(tmp_path / "stack.ome.tif"), "--model", str(tiny_lsm_package.path), "--pixel-size", "0.12"]
    assert cli.main([*argv, "--out", str(given)]) == 0
    assert {r["pixel_size_source"] for r in csv.DictReader(given.open())} == {"user"}


def test_a_stack_submitted_with_no_options_is_classified_once_per_field_at_the_files_pixel_size(history):
    lab, _, model_id = history
    data, n_cells = two_channel_stack(seed=4)
    sub = batches.submit_batch(lab, [RawFile("stack.ome.tif", data)], model_id, "stack", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        (image,) = s.scalars(select(Image).where(Image.batch_id == sub.batch_id))
        cells = s.scalars(select(Cell).where(Cell.image_id == image.id)).all()
    assert image.error is None and image.channel == "DIC"
    assert (image.pixel_size_um, image.pixel_size_source) == (pytest.approx(PIXEL_UM), "file")
    assert len(cells) == n_cells  # found on the DIC relief at 0.1 um/px, each once (at 0.2, none are found)
    again = batches.rerun(lab, sub.batch_id, model_id, "ana", pixel_size_um=0.15)  # the user's value wins
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        (image,) = s.scalars(select(Image).where(Image.batch_id == again.batch_id))
        assert (image.pixel_size_um, image.pixel_size_source) == (0.15, "user")


def test_every_exported_row_says_which_model_app_plane_channel_and_pixel_size_produced_it(history):
    """Issue #17 item 7: each cell row carries the model's name, version and the first 12 hex of its weights'
    sha256, the app version, the pixel size used and its source, the channel and the z plane read (from 0, as
    --z takes it; the best-focused one here, also when the cells are copied from an identical earlier run);
    the workbook's batch and model sheets carry the full record."""
    import io

    from openpyxl import load_workbook

    import lsm_core
    from db.schema import Model
    from lsm_core.reports.export import batch_rows
    from lsm_core.reports.report import workbook

    lab, _, model_id = history
    data, n_cells = two_channel_stack(seed=4)
    first = batches.submit_batch(lab, [RawFile("stack.ome.tif", data)], model_id, "stack", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    again = batches.submit_batch(lab, [RawFile("same.ome.tif", data)], model_id, "same stack", owner="ana")
    Worker(lab, device="cpu").run(drain=True)  # the same bytes, weights and options: cells copied
    with lab() as s:
        model = s.get(Model, model_id)
        for sub in (first, again):
            columns, rows = batch_rows(s, [sub.batch_id])
            rows = [dict(zip(columns, r)) for r in rows]
            assert len(rows) == n_cells
            for r in rows:
                assert (r["model"], r["model_version"], r["weights_sha12"]) == (
                    model.name,
                    model.version,
                    model.weights_sha256[:12],
                )
                assert r["app_version"] == lsm_core.__version__
                assert (r["channel"], r["z_plane"]) == ("DIC", 1)  # the sharp middle plane of three
                assert (r["pixel_size_um"], r["pixel_size_source"]) == (pytest.approx(PIXEL_UM), "file")
        book = load_workbook(io.BytesIO(workbook(s, first.batch_id, 0.0)))
    batch = dict(book["batch"].iter_rows(min_row=2, values_only=True))
    assert batch["channel"] == "automatic (the transmitted-light one)" and batch["z_plane"] == "automatic (best focus)"
    assert batch["app_version"] == lsm_core.__version__
    assert batch["imaging"] == "auto"
    model_sheet = dict(book["model"].iter_rows(min_row=2, values_only=True))
    assert model_sheet["sha256"] == model.weights_sha256
    for key in ("input_size", "pixel_size_um", "crop_um", "normalisation", "temperature", "training"):
        assert key in model_sheet, key


def test_the_shared_czi_and_nd2_carry_their_calibration_into_the_history_and_the_export(history):
    from lsm_core.reports.export import batch_rows

    lab, _, model_id = history
    czi = shared("vendor/aicsimageio_s_1_t_1_c_1_z_1.czi")
    nd2 = shared("vendor/pims_cluster.nd2")
    files = [RawFile(czi.name, czi.read_bytes()), RawFile(nd2.name, nd2.read_bytes())]
    # two fluorescence channels, neither transmitted: refused at submit, each time point saying which to choose
    with pytest.raises(FilesRefused, match=r"1 file\(s\) \(3 images\) have no channel named as transmitted light"):
        batches.submit_batch(lab, files, model_id, "vendor", owner="ana")
    sub = batches.submit_batch(lab, files[:1], model_id, "vendor", owner="ana")
    with lab() as s:
        images = {im.file: im for im in s.scalars(select(Image).where(Image.batch_id == sub.batch_id))}
    assert set(images) == {czi.name}
    assert images[czi.name].error is None and images[czi.name].pixel_size_um == pytest.approx(1.0833333, rel=1e-6)
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        columns, rows = batch_rows(s, [sub.batch_id])
        rows = [dict(zip(columns, r)) for r in rows]
        assert s.get(Batch, sub.batch_id) is not None
    czi_rows = [r for r in rows if r["file"] == czi.name]
    assert czi_rows and all(r["pixel_size_source"] == "file" for r in czi_rows)
    assert all(r["pixel_size_um"] == pytest.approx(1.0833333, rel=1e-6) for r in czi_rows)

    chosen = batches.submit_batch(
        lab, [files[1]], model_id, "nd2 FM", owner="ana", meta=batches.BatchMeta(channel="FM 4-64/2% CHAPS")
    )
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        images = s.scalars(select(Image).where(Image.batch_id == chosen.batch_id)).all()
    assert len(images) == 3 and all(im.error is None and im.done for im in images), [im.error for im in images]
    assert all(im.channel == "FM 4-64/2% CHAPS" and im.pixel_size_source == "file" for im in images)


def test_the_results_page_says_which_pixel_size_was_used_and_warns_when_none_was_stated(app_env):
    from db import queries
    from lsm_core.lab.open_lab import open_lab
    from tests.helpers import crop_files, run_page, texts

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    data, _ = two_channel_stack()
    stated = batches.submit_batch(lab, [RawFile("stack.ome.tif", data)], model_id, "stated", owner="ana")
    guessed = batches.submit_batch(lab, crop_files(2, seed=970), model_id, "guessed", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    shown = texts(run_page("pages/results.py", {"batch": str(stated.batch_id)}))
    assert "Pixel size: 0.1 µm/px stated in the file (1 image)" in shown
    assert "Neither you nor these files stated" not in shown
    shown = texts(run_page("pages/results.py", {"batch": str(guessed.batch_id)}))
    assert "Pixel size: 0.2 µm/px the model's default (2 images)" in shown
    assert "Neither you nor these files stated the microscope's pixel size" in shown
    assert "cell0000.png: no pixel size in the file" in shown


def test_the_reporter_channel_is_measured_in_each_cell_within_two_percent_and_exported(history):
    from lsm_core.reports.export import batch_rows

    lab, _, model_id = history
    data, n_cells = two_channel_stack(seed=5)
    field, truth = synthetic.make_field("lsm", seed=5, shape=(900, 900), n_cells=6, n_debris=0, pixel_size=PIXEL_UM)
    sub = batches.submit_batch(lab, [RawFile("reporter.ome.tif", data)], model_id, "reporter", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        (image,) = s.scalars(select(Image).where(Image.batch_id == sub.batch_id))
        cells = s.scalars(select(Cell).where(Cell.image_id == image.id)).all()
        columns, rows = batch_rows(s, [sub.batch_id])
        rows = [dict(zip(columns, r)) for r in rows]
    assert image.reporters["GFP"]["method"] == "median outside the cells"
    assert image.reporters["GFP"]["background"] == pytest.approx(GFP_BACKGROUND)
    assert len(cells) == n_cells
    for cell in cells:  # the truth cell whose centre is in this cell's box
        (i,) = [i for i, t in enumerate(truth) if cell.x <= t.cx < cell.x + cell.w and cell.y <= t.cy < cell.y + cell.h]
        mean, integrated = cell.signal["GFP"]
        assert mean == pytest.approx(gfp_level(i) - GFP_BACKGROUND, rel=0.02)
        assert integrated > mean
    assert {"ch_GFP_mean", "ch_GFP_integrated"} <= set(columns)
    assert sorted(round(r["ch_GFP_mean"]) for r in rows) == sorted(round(c.signal["GFP"][0]) for c in cells)


def test_the_results_page_plots_the_reporter_and_its_positive_fraction_per_class(app_env):
    from db import queries
    from lsm_core.lab.open_lab import open_lab
    from tests.helpers import run_page, texts

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    data, n_cells = two_channel_stack(seed=5)
    sub = batches.submit_batch(lab, [RawFile("reporter.ome.tif", data)], model_id, "reporter", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    at = run_page("pages/results.py", {"batch": str(sub.batch_id)})
    shown = texts(at)
    assert "Reporter signal" in shown and "Otsu's threshold of this batch: " in shown
    table = next(d.value for d in at.dataframe if "fraction positive" in d.value.columns)
    assert int(table["cells"].sum()) == n_cells
    threshold = next(n for n in at.number_input if n.label == "Positive above")
    threshold.set_value(0.0).run()  # every cell is brighter than the background: all positive
    table = next(d.value for d in at.dataframe if "fraction positive" in d.value.columns)
    assert int(table["GFP-positive"].sum()) == n_cells


def test_classify_on_the_command_line_writes_the_reporter_columns(tmp_path, data_dir, tiny_lsm_package):
    from lsm_core import cli

    data, n_cells = two_channel_stack(seed=5)
    (tmp_path / "reporter.ome.tif").write_bytes(data)
    out = tmp_path / "cells.csv"
    model = str(tiny_lsm_package.path)
    assert cli.main(["classify", str(tmp_path / "reporter.ome.tif"), "--model", model, "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == n_cells
    means = sorted(float(r["ch_GFP_mean"]) for r in rows)
    expected = sorted(gfp_level(i) - GFP_BACKGROUND for i in range(n_cells))
    assert means == pytest.approx(expected, rel=0.02)
    assert all(float(r["ch_GFP_integrated"]) > float(r["ch_GFP_mean"]) for r in rows)
