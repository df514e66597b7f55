"""Microscope files as uploads (issue #15): a zipped OME-Zarr is one image (not a ZIP of files to unpack), an
OME-Zarr folder is one input on the command line, the Classify page lists the channels of the first file,
reporter channels are bounded in number and memory before they are decoded, and a vendor file's reporter
channels become columns of `classify`'s table."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
import tifffile
from sqlalchemy import select

from db.schema import Cell, Image
from lsm_core.imaging import synthetic
from lsm_core.imaging.images import decode_bytes, file_channels, read_inputs
from lsm_core.imaging.readers.archives import RawFile, iter_upload
from lsm_core.imaging.readers.base import MAX_REPORTER_CHANNELS, Limits, ReadOptions
from lsm_core.lab import batches
from lsm_core.lab.worker import Worker
from tests.helpers import png_bytes
from tests.test_microscope_files import PIXEL_UM, shared, two_channel_stack
from tests.test_readers import write_ome_zarr, zip_folder


def zarr_field(folder, seed: int = 4) -> int:
    """An OME-Zarr (zarr v2, NGFF 0.4) of one synthetic field: channels Hoechst and Brightfield, one z plane,
    square pixels of PIXEL_UM (stated in nanometres). Returns the number of cells."""
    import zarr

    field, truth = synthetic.make_field("lsm", seed=seed, shape=(700, 700), n_cells=5, n_debris=0, pixel_size=PIXEL_UM)
    dic = np.round(field * 4095).astype(np.uint16)
    data = np.stack([np.full_like(dic, 50), dic])[np.newaxis, :, np.newaxis]  # T C Z Y X
    write_ome_zarr(folder, data, 2, chunks=(1, 1, 1, 350, 350))
    group = zarr.open_group(str(folder), mode="r+")
    attrs = dict(group.attrs)
    scale = [1.0, 1.0, 1.0, PIXEL_UM * 1000, PIXEL_UM * 1000]  # nanometres, as the axes say
    attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = scale
    group.attrs.update(attrs)
    return len(truth)


def test_a_zipped_ome_zarr_upload_is_one_image_read_on_its_transmitted_channel(tmp_path):
    folder = tmp_path / "field.ome.zarr"
    n_cells = zarr_field(folder)
    data = zip_folder(folder, tmp_path / "field.zip").read_bytes()
    raws = list(iter_upload("field.zip", data))
    assert len(raws) == 1 and raws[0].error is None and raws[0].data == data  # not unpacked into its chunks
    (record,) = decode_bytes("field.zip", data)
    assert record.ok, record.error
    assert record.channel == "Brightfield" and record.pixel_size_um == pytest.approx(PIXEL_UM)
    assert record.pixels is not None and record.pixels.shape == (700, 700)
    assert list(record.others) == ["Hoechst"]
    assert n_cells == 5


def test_a_zipped_ome_zarr_submitted_through_the_library_is_classified_once(history, tmp_path):
    lab, _, model_id = history
    folder = tmp_path / "field.ome.zarr"
    n_cells = zarr_field(folder)
    data = zip_folder(folder, tmp_path / "field.zip").read_bytes()
    sub = batches.submit_batch(lab, [RawFile("field.zip", data)], model_id, "zarr", owner="ana")
    assert not sub.errors
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        (image,) = s.scalars(select(Image).where(Image.batch_id == sub.batch_id))
        cells = s.scalars(select(Cell).where(Cell.image_id == image.id)).all()
    assert image.error is None and image.channel == "Brightfield"
    assert image.pixel_size_source == "file" and image.pixel_size_um == pytest.approx(PIXEL_UM)
    assert len(cells) == n_cells
    assert all(set(c.signal) == {"Hoechst"} for c in cells)


def test_an_ome_zarr_folder_is_one_input_on_the_command_line_alone_or_inside_a_folder(tmp_path):
    outer = tmp_path / "run"
    outer.mkdir()
    zarr_field(outer / "field.ome.zarr")
    (outer / "crop.png").write_bytes(png_bytes(synthetic.make_crops("lsm", 1, seed=2)[0][0]))
    alone = list(read_inputs([outer / "field.ome.zarr"]))
    assert [r.ok for r in alone] == [True] and alone[0].channel == "Brightfield"
    inside = list(read_inputs([outer]))
    assert sorted(r.source.rsplit("/", 1)[-1] for r in inside) == ["crop.png", "field.ome.zarr"]
    assert all(r.ok for r in inside)


def test_an_ome_zarr_folder_larger_than_a_file_may_be_is_refused_by_name(tmp_path):
    zarr_field(tmp_path / "big.ome.zarr")
    (record,) = read_inputs([tmp_path / "big.ome.zarr"], Limits(max_file_bytes=10_000))
    assert not record.ok and "LSM_MAX_FILE_BYTES" in (record.error or "")


def test_a_zipped_ome_zarr_whose_member_claims_too_much_is_refused_before_unpacking(tmp_path):
    folder = tmp_path / "field.ome.zarr"
    zarr_field(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(zip_folder(folder, tmp_path / "a.zip")) as src, zipfile.ZipFile(buf, "w") as dst:
        for m in src.infolist():
            dst.writestr(m, src.read(m))
        dst.writestr("field.ome.zarr/0/0/0/0/9/9", b"\0" * 2_000_000)  # compresses to almost nothing
    (record,) = decode_bytes("bomb.zip", buf.getvalue(), Limits(max_file_bytes=1_000_000))
    assert not record.ok and "LSM_MAX_FILE_BYTES" in (record.error or "")


def test_the_channels_of_the_first_file_are_listed_from_its_headers():
    data, _ = two_channel_stack()
    found = file_channels(RawFile("stack.ome.tif", data))
    assert found is not None and found.names == ["GFP", "DIC"] and found.automatic == 1
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("a/stack.ome.tif", data)
    inside = file_channels(RawFile("batch.zip", zipped.getvalue()))
    assert inside is not None and inside.names == ["GFP", "DIC"] and inside.file == "batch.zip/a/stack.ome.tif"
    assert file_channels(RawFile("crop.png", png_bytes(np.zeros((40, 40), np.float32)))) is None
    assert file_channels(RawFile("broken.ome.tif", data[:200])) is None


def many_channel_file(n_channels: int) -> bytes:
    """An OME-TIFF of one 64 x 64 plane per channel: DIC, then reporters R1..R(n-1) of level 10 x index."""
    planes = np.stack([np.full((64, 64), 10 * c, np.uint16) for c in range(n_channels)])
    names = ["DIC"] + [f"R{c}" for c in range(1, n_channels)]
    buf = io.BytesIO()
    tifffile.imwrite(buf, planes, ome=True, metadata={"axes": "CYX", "Channel": {"Name": names}})
    return buf.getvalue()


def test_reporter_channels_are_bounded_in_number_and_the_rest_named_in_a_note():
    (record,) = decode_bytes("many.ome.tif", many_channel_file(MAX_REPORTER_CHANNELS + 4))
    assert record.ok
    assert list(record.others) == [f"R{c}" for c in range(1, MAX_REPORTER_CHANNELS + 1)]
    assert float(record.others["R3"][0, 0]) == 30.0
    (note,) = [n for n in record.notes if "not measured" in n]
    assert f"R{MAX_REPORTER_CHANNELS + 1}" in note and f"at most {MAX_REPORTER_CHANNELS}" in note


def test_reporter_channels_that_would_pass_the_memory_limit_are_not_decoded():
    # the page itself takes 64 x 64 x (2 + 4) bytes; room for two reporter planes more, not three
    limits = Limits(max_image_bytes=64 * 64 * 6 * 3 + 100)
    (record,) = decode_bytes("four.ome.tif", many_channel_file(4), limits)
    assert record.ok and list(record.others) == ["R1", "R2"]
    (note,) = [n for n in record.notes if "not measured" in n]
    assert "R3" in note and "LSM_MAX_IMAGE_BYTES" in note


def test_classify_writes_the_reporter_columns_of_a_vendor_file(tmp_path, data_dir, tiny_lsm_package):
    from lsm_core import cli

    out = tmp_path / "cells.csv"
    nd2 = shared("vendor/pims_cluster.nd2")
    args = ["classify", str(nd2), "--model", str(tiny_lsm_package.path), "--channel", "0", "--out", str(out)]
    args += ["--pixel-size", "0.5"]
    assert cli.main(args) == 0
    with out.open() as fh:
        header = next(csv.reader(fh))
    assert "ch_FM_4_64_2_CHAPS_mean" in header and "ch_FM_4_64_2_CHAPS_integrated" in header


def write_stack(kind: str, folder, seed: int):
    """The synthetic reporter stack of tests.test_microscope_files (channels GFP and DIC, 3 z planes of which the
    middle one is sharp, PIXEL_UM) written by one format's own writer: (path, --channel, reporter column)."""
    data, _ = two_channel_stack(seed=seed)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        stack = tif.series[0].asarray()
    stack = stack.reshape(1, 2, 3, *stack.shape[-2:])  # T C Z Y X
    if kind == "OME-TIFF":
        path = folder / "stack.ome.tif"
        path.write_bytes(data)
        return path, None, "ch_GFP"
    if kind == "ImageJ":  # ImageJ names no channels: the DIC one is chosen by index, the other is "#0"
        path = folder / "stack_imagej.tif"
        tifffile.imwrite(
            path,
            np.ascontiguousarray(stack.transpose(0, 2, 1, 3, 4)),
            imagej=True,
            resolution=(1 / PIXEL_UM, 1 / PIXEL_UM),
            metadata={"axes": "TZCYX", "unit": "um"},
        )
        return path, "1", "ch_0"
    path = folder / "stack.ome.zarr"
    write_ome_zarr(path, stack, 3, chunks=(1, 1, 1, 450, 450))
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs)
    ms = attrs["ome"]["multiscales"][0]
    ms["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0, 1.0, 1.0, PIXEL_UM * 1000, PIXEL_UM * 1000]
    attrs["ome"]["omero"] = {"channels": [{"label": "GFP"}, {"label": "DIC"}]}
    group.attrs.update(attrs)
    return path, None, "ch_GFP"


@pytest.mark.parametrize("kind", ["OME-TIFF", "ImageJ", "OME-Zarr"])
def test_each_writers_stack_is_classified_at_its_sharp_plane_once_per_cell_with_its_reporter(
    kind, tmp_path, data_dir, tiny_lsm_package
):
    from lsm_core import cli
    from tests.test_microscope_files import GFP_BACKGROUND, gfp_level

    path, channel, column = write_stack(kind, tmp_path, seed=5)
    (record,) = read_inputs([path], options=ReadOptions(channel))
    assert record.ok, record.error
    assert "z plane 2 of 3 (best focus)" in record.notes
    out = tmp_path / "cells.csv"
    args = ["classify", str(path), "--model", str(tiny_lsm_package.path), "--out", str(out)]
    args += ["--channel", channel] if channel else []
    assert cli.main(args) == 0
    rows = list(csv.DictReader(out.open()))
    _, n_cells = two_channel_stack(seed=5)
    assert len(rows) == n_cells  # once per cell, not once per plane
    assert [float(r["pixel_size_um"]) for r in rows] == pytest.approx([PIXEL_UM] * n_cells)
    assert {r["pixel_size_source"] for r in rows} == {"file"}
    means = sorted(float(r[f"{column}_mean"]) for r in rows)
    assert means == pytest.approx(sorted(gfp_level(i) - GFP_BACKGROUND for i in range(n_cells)), rel=0.02)


def two_cameras_file(seed: int = 6) -> bytes:
    """The reporter stack with channels named GFP and "camera 2" (no transmitted-light name): its DIC channel
    must be chosen, and everything that reads it again must read that channel."""
    data, _ = two_channel_stack(seed=seed)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        stack = tif.series[0].asarray()
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        stack.reshape(1, 2, 3, *stack.shape[-2:]),
        ome=True,
        metadata={
            "axes": "TCZYX",
            "Channel": {"Name": ["GFP", "camera 2"]},
            "PhysicalSizeX": PIXEL_UM,
            "PhysicalSizeY": PIXEL_UM,
        },
    )
    return buf.getvalue()


def test_the_results_page_reads_a_batch_again_on_the_channel_it_chose(app_env):
    """Thumbnails and the field of view are cut from the channel the batch was classified on (they were read
    with the automatic choice, which a file naming no transmitted channel refuses: blank thumbnails)."""
    from db import queries
    from lsm_core.lab.batches import BatchMeta
    from lsm_core.lab.open_lab import open_lab
    from tests.helpers import run_page, texts

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    meta = BatchMeta(channel="camera 2")
    sub = batches.submit_batch(lab, [RawFile("cams.ome.tif", two_cameras_file())], model_id, "cams", "ana", meta=meta)
    Worker(lab, device="cpu").run(drain=True)
    lab.dispose()
    at = run_page("pages/results.py", {"batch": str(sub.batch_id)})
    shown = texts(at)
    assert "Field of view" in shown
    assert "could not be read back" not in shown
    table = next(d.value for d in at.dataframe if "cell" in d.value.columns and "predicted" in d.value.columns)
    assert len(table) > 0 and table["cell"].notna().all()  # every thumbnail drawn


def test_saliency_maps_of_a_batch_are_cut_from_the_channel_it_chose(app_env):
    """The saliency task cut its crops with the automatic channel: on a file that names no transmitted channel
    it failed ('none of its channels is named as transmitted light') for a batch classified on a chosen one."""
    from db import queries
    from db.schema import Job, SaliencyRun
    from lsm_core.lab.batches import BatchMeta
    from lsm_core.lab.open_lab import open_lab
    from lsm_core.lab.tasks import saliency as saliency_task

    lab = open_lab()
    with lab() as s:
        model_id = queries.model_by_name(s, "demo-lsm").id
    meta = BatchMeta(channel="camera 2")
    sub = batches.submit_batch(lab, [RawFile("cams.ome.tif", two_cameras_file())], model_id, "maps", "ana", meta=meta)
    Worker(lab, device="cpu").run(drain=True)
    job = saliency_task.submit(lab, sub.batch_id, "gradcam", top=2, owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        done = s.get(Job, job)
        assert done.status == "done", done.error
        assert s.scalars(select(SaliencyRun).where(SaliencyRun.batch_id == sub.batch_id)).first() is not None
    lab.dispose()
