"""Each cell's size and shape from its outline (issue #30 item 3): the polygon measures against exact figures and
scikit-image, the real Jurkat cells' diameters, and the history on both engines: stored per cell, in the
exports (unknown where the pixel size was only the model's default), on the Results view, in the review queue
and in Compare (per-mouse medians tested, a linear mixed model with the mouse as a random effect)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from openpyxl import load_workbook
from skimage.draw import ellipse
from skimage.measure import regionprops
from sqlalchemy import select

from db import queries
from db.schema import Cell
from lsm_core.imaging.calibration import CalibrationSource
from lsm_core.imaging.shape import (
    outline_array,
    outline_list,
    shape_of,
    size_words,
    sizes_known,
)
from lsm_core.lab import batches, cell_labels
from lsm_core.lab.worker import Worker
from lsm_core.reports import compare
from lsm_core.reports.methods import methods_paragraphs
from lsm_core.reports.report import field_figure, workbook
from lsm_core.reports.results import load_results, sizes_caption
from lsm_core.reports.stats import size_mixed_model
from tests.helpers import field_file

MONTAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brightfield" / "jurkat_G1_montage.tif"


def circle(radius: float, n: int = 720, centre=(50.0, 40.0)) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1)


def test_the_measures_of_exact_figures():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    s = shape_of(square, 0.5)
    assert s is not None
    assert s.area_um2 == pytest.approx(25.0) and s.perimeter_um == pytest.approx(20.0)
    assert s.circularity == pytest.approx(math.pi / 4) and s.eccentricity == pytest.approx(0.0, abs=1e-9)
    assert s.diameter_um == pytest.approx(math.sqrt(4 * 25 / math.pi))
    round_ = shape_of(circle(20.0), 0.25)
    assert round_ is not None and round_.diameter_um == pytest.approx(10.0, rel=1e-4)
    assert round_.circularity == pytest.approx(1.0, abs=1e-4) and round_.eccentricity < 0.01
    stretched = circle(10.0) * np.array([2.0, 1.0])  # an ellipse with axes 2:1, in either winding
    for polygon in (stretched, stretched[::-1]):
        e = shape_of(polygon, 1.0)
        assert e is not None and e.eccentricity == pytest.approx(math.sqrt(1 - 1 / 4), abs=1e-3)
        assert e.area_um2 == pytest.approx(math.pi * 40 * 10 / 2, rel=1e-3)
    assert shape_of(np.zeros((2, 2)), 1.0) is None and shape_of(square, 0.0) is None
    assert shape_of(np.array([[0, 0], [1, 1], [2, 2]], float), 1.0) is None  # no area


def test_outlines_of_cells_found_measure_as_scikit_image_does():
    """The outlines the finder gives (here of cells whose labels are given: CellCrops.labels) measured as
    regionprops measures the same masks; a cell of a single-cell crop and cells without masks have none."""
    from lsm_core.imaging.cells import CellCrops
    from lsm_core.imaging.shape import outlines_of

    labels = np.zeros((200, 200), np.int32)
    rr, cc = ellipse(100, 90, 40, 20, rotation=0.5)
    labels[rr, cc] = 1
    rr, cc = ellipse(30, 30, 12, 12)
    labels[rr, cc] = 2
    found = CellCrops(np.zeros((2, 8, 8), np.float32), np.zeros((2, 4), np.int32), np.zeros((2, 2)), ["", "edge"])
    found.labels = labels
    outlines = outlines_of(found)
    assert len(outlines) == 2 and all(o is not None for o in outlines)
    for outline, region in zip(outlines, regionprops(labels)):
        assert outline is not None
        s = shape_of(outline, 1.0)
        assert s is not None
        assert s.area_um2 == pytest.approx(region.area, rel=0.02)
        assert s.eccentricity == pytest.approx(region.eccentricity, abs=0.05)
        xs, ys = outline[:, 0], outline[:, 1]
        r0, c0, r1, c1 = region.bbox
        assert c0 - 1 <= xs.min() and xs.max() <= c1 and r0 - 1 <= ys.min() and ys.max() <= r1
    assert outline_array(outline_list(outlines[0])) == pytest.approx(outlines[0], abs=0.051)
    assert outline_array(None) is None and outline_array([1.0, 2.0]) is None
    single = CellCrops(np.zeros((1, 8, 8), np.float32), np.zeros((1, 4), np.int32), np.zeros((1, 2)), ["single"])
    single.labels = np.ones((8, 8), np.int32)
    assert outlines_of(single) == [None]
    bare = CellCrops(np.zeros((1, 8, 8), np.float32), np.zeros((1, 4), np.int32), np.zeros((1, 2)), [""])
    assert outlines_of(bare) == [None]


def test_sizes_need_a_stated_pixel_size():
    assert sizes_known(CalibrationSource.USER) and sizes_known("file") and sizes_known("setting")
    assert not sizes_known(CalibrationSource.MODEL_DEFAULT) and not sizes_known("model default")
    assert not sizes_known(None) and not sizes_known("")
    assert "unknown" in size_words(None, 0.9) and "12.0 µm across" in size_words(12.0, 0.9)
    assert "no outline" in size_words(None, None)


def test_real_jurkat_cells_measure_about_eleven_micrometres_across():
    """The montage's cells are about 22 px across at about 0.5 um/px (its README)."""
    from lsm_core.imaging.calibration import resolve
    from lsm_core.imaging.cells import FindParams, find_cells
    from lsm_core.imaging.shape import measured

    image = tifffile.imread(MONTAGE).astype(np.float32)
    params = FindParams(output_size=64).at(resolve(user=0.5, model_default=0.2))
    found = find_cells(image / image.max(), params)
    shapes = [shape for _, shape in measured(found, 0.5)]
    diameters = np.array([s.diameter_um for s in shapes if s is not None])
    assert len(diameters) >= 0.95 * len(found) >= 850
    assert 9.0 <= float(np.median(diameters)) <= 13.5
    circularity = np.array([s.circularity for s in shapes if s is not None])
    assert float(np.median(circularity)) > 0.7  # round cells


def test_the_mixed_model_finds_a_size_difference_between_groups_of_mice():
    rng = np.random.default_rng(0)
    rows = []
    for group, shift in (("young", 0.0), ("aged", 1.0)):
        for mouse in range(4):
            centre = 10 + shift + rng.normal(0, 0.3)
            rows += [(group, f"{group}{mouse}", d) for d in rng.normal(centre, 1.0, 150)]
    cells = pd.DataFrame(rows, columns=["group", "unit", "diameter_um"])
    fit = size_mixed_model(cells)
    (row,) = fit.itertuples()
    assert row.term == "aged vs young" and row.ci95_low < 1.0 < row.ci95_high and row.p_value < 0.01
    assert row.cells == 1200 and row.mice == 8
    few = size_mixed_model(cells[cells["unit"].isin(["young0", "aged0"])])
    assert math.isnan(few["estimate_um"].iloc[0]) and "three mice" in few["note"].iloc[0]


# --- the history: both engines -----------------------------------------------------------------------------
def test_sizes_are_stored_exported_shown_reviewed_and_compared(history):
    lab, _, model_id = history
    ids = []
    for i, sex in enumerate(["F", "F", "M", "M"]):
        meta = batches.BatchMeta(mouse_id=f"m{i}", sex=sex, pixel_size_um=0.2)  # stated: sizes in µm
        ids.append(batches.submit_batch(lab, [field_file(40 + i)], model_id, f"field {i}", "ana", meta).batch_id)
    default = batches.submit_batch(lab, [field_file(44)], model_id, "no pixel size", "ana").batch_id
    Worker(lab, device="cpu").run(drain=True)
    with lab() as s:
        stored = s.scalars(select(Cell).where(Cell.batch_id == ids[0])).all()
        assert stored and all(c.outline and len(c.outline) >= 6 and c.diameter_um for c in stored)
        assert all(0 < c.circularity <= 1 and 0 <= c.eccentricity < 1 for c in stored)
        view = load_results(s, ids[0], 0.0)
        unsized = load_results(s, default, 0.0)
        book = load_workbook(io.BytesIO(workbook(s, ids[0], 0.0)), read_only=True)
        rows = list(book["cells"].iter_rows(values_only=True))
        book_default = load_workbook(io.BytesIO(workbook(s, default, 0.0)), read_only=True)
        rows_default = list(book_default["cells"].iter_rows(values_only=True))
        compared = compare.build(s, ids, by="sex")
        listed = queries.batch_cells(s, ids[0], limit=1000)
        methods = dict(methods_paragraphs(s, compared))
    # synthetic cells are 5-16 um across (lsm_core.imaging.synthetic)
    assert view.diameter is not None and np.isfinite(view.diameter).all() and len(view.diameter) == len(stored)
    assert 3 < float(np.median(view.diameter)) < 20 and "measured from their outlines" in sizes_caption(view)
    assert unsized.diameter is not None and not np.isfinite(unsized.diameter).any() and unsized.sizes_unknown > 0
    assert "unknown" in (sizes_caption(unsized) or "")
    at = rows[0].index("diameter_um")
    assert all(isinstance(r[at], float) and r[at] > 0 for r in rows[1:] if r[2] is not None)
    assert rows[0].index("circularity") == rows_default[0].index("circularity")
    assert all(r[at] is None for r in rows_default[1:])  # the model's default: unknown, not a wrong number
    circ = rows_default[0].index("circularity")
    assert any(isinstance(r[circ], float) for r in rows_default[1:])  # a shape needs no unit
    assert set(compared.table["sized_cells"]) and (compared.table["median_diameter_um_all"] > 0).all()
    assert compared.sized_cells == sum(compared.table["sized_cells"]) and compared.sizes_unknown == 0
    (tested,) = compared.size_tests.itertuples()
    assert tested.test.startswith("Mann-Whitney") and tested.mice == 4
    assert compared.size_model["term"].tolist() == ["M vs F"]
    assert "linear mixed model" in methods["Cell size"] and f"{compared.sized_cells:,} cells" in methods["Cell size"]
    # the field of view draws each cell's outline, not its box
    assert all(c.outline for c in listed)
    figure = field_figure(np.zeros((768, 768), np.float32), listed, list(view.report.classes), 0.0)
    drawn = [t for t in figure.data if getattr(t, "mode", None) == "lines"]
    xs = [x for t in drawn for x in t.x if x is not None]
    expected = [v for c in listed for v in [*c.outline[0::2], c.outline[0]]]
    assert sorted(xs) == pytest.approx(sorted(expected))
    queued = cell_labels.queue(lab, [ids[0], default], "ana")
    by_batch = {q.batch_id: q for q in queued}
    assert by_batch[ids[0]].diameter_um is not None and by_batch[ids[0]].circularity is not None
    assert by_batch[default].diameter_um is None and by_batch[default].circularity is not None


def test_an_outline_maps_into_the_crop_cut_around_its_cell():
    """Saliency's "mass inside the cell" reads the cell's own outline in its crop (cells.cut_crops' geometry)."""
    from lsm_core.imaging.cells import FindParams, cut_crops
    from lsm_core.imaging.shape import mask_in_crop

    image = np.zeros((120, 120), np.float32)
    yy, xx = np.mgrid[:120, :120]
    image[(xx - 50) ** 2 + (yy - 47) ** 2 <= 10**2] = 1.0  # a bright disk of radius 10 at (50, 47)
    outline = circle(10.0, centre=(50.0, 47.0))
    box = (40, 37, 21, 21)
    params = FindParams(pixel_size_um=0.5, crop_um=32.0, output_size=32)  # 64 image pixels resized to 32
    crop = cut_crops(image, np.array([[box[0] + box[2] / 2 - 0.5, box[1] + box[3] / 2 - 0.5]]), params)[0]
    mask = mask_in_crop(outline, box, params.crop_px, params.output_size)
    assert mask.shape == (32, 32) and mask.sum() == pytest.approx(np.pi * 5**2, rel=0.15)
    assert (crop[mask] > 0.5).mean() > 0.9 and (crop[~mask] > 0.5).mean() < 0.05  # the mask lies on the disk
