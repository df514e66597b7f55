"""The imaging modality (issue #16 item 2): phase-contrast cells are found by their dark body when the batch says
"phase"; auto (DIC and brightfield relief) takes the bright halo with the cell. Chosen on the Classify page, in
`classify` and `submit` (--modality), kept by a batch and its re-runs, part of the cell cache's key."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from sqlalchemy import func, select

from db.schema import Batch, Cell, Image
from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.imaging.cells import MODALITIES, FindParams, find_cells, matched_boxes
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.lab import batches
from lsm_core.lab.worker import Worker
from tests.helpers import run_page


def matched(truth, boxes) -> int:
    return matched_boxes([(c.x, c.y, c.w, c.h) for c in truth], [tuple(b) for b in boxes])


def phase_field(seed: int, shape=(1024, 1024), n_cells=16):
    return synthetic.make_field("lsm", seed=seed, shape=shape, n_cells=n_cells, n_debris=4, modality="phase")


def test_phase_contrast_cells_are_found_by_their_dark_body():
    truth_n = hits_phase = hits_auto = reported_phase = 0
    for seed in range(3):
        field, truth = phase_field(700 + seed)
        phase = find_cells(field, FindParams(modality="phase"))
        auto = find_cells(field, FindParams())
        truth_n += len(truth)
        reported_phase += len(phase)
        hits_phase += matched(truth, phase.boxes.tolist())
        hits_auto += matched(truth, auto.boxes.tolist())
    assert hits_phase / truth_n >= 0.98 and hits_phase / reported_phase >= 0.98, (hits_phase, reported_phase)
    # the relief detector takes each cell with its halo: boxes half again as wide, IoU below 0.5
    assert hits_auto / truth_n < 0.5


def test_the_same_cells_seen_in_dic_are_unchanged_by_the_option():
    field, truth = synthetic.make_field("lsm", seed=710, shape=(1024, 1024), n_cells=16, n_debris=4)
    auto, dic, bright = (find_cells(field, FindParams(modality=m)) for m in ("auto", "dic", "brightfield"))
    assert np.array_equal(auto.boxes, dic.boxes) and np.array_equal(auto.boxes, bright.boxes)
    assert matched(truth, auto.boxes.tolist()) == len(truth)


def test_an_unknown_modality_is_refused_with_the_choices():
    with pytest.raises(LsmError, match="unknown imaging modality 'fluorescence'; choose auto, dic, brightfield, phase"):
        FindParams(modality="fluorescence")
    with pytest.raises(LsmError, match="unknown imaging modality"):
        batches.BatchMeta(modality="<b>phase</b>").validated()
    assert batches.BatchMeta(modality=" Phase ").validated().modality == "phase"
    assert batches.BatchMeta(modality="auto").validated().modality is None
    assert list(MODALITIES) == ["auto", "dic", "brightfield", "phase"]


def _tiff(field: np.ndarray, name: str) -> RawFile:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.round(field * 4095).astype(np.uint16))
    return RawFile(name, buf.getvalue())


def test_a_phase_batch_finds_its_cells_and_its_modality_keys_the_cell_cache(history):
    lab, _, model_id = history
    field, truth = phase_field(720)
    upload = _tiff(field, "phase.tif")
    meta = batches.BatchMeta(modality="phase")
    phase = batches.submit_batch(lab, [upload], model_id, "phase", owner="ana", meta=meta)
    Worker(lab, device="cpu").run(drain=True)
    auto = batches.submit_batch(lab, [upload], model_id, "same file, auto", owner="ana")
    Worker(lab, device="cpu").run(drain=True)
    rerun = batches.rerun(lab, phase.batch_id, model_id, "ana")
    Worker(lab, device="cpu").run(drain=True)

    def boxes(batch_id):
        with lab() as s:
            rows = s.execute(
                select(Cell.x, Cell.y, Cell.w, Cell.h).where(Cell.batch_id == batch_id).order_by(Cell.idx)
            ).all()
            return [tuple(r) for r in rows]

    with lab() as s:
        assert s.get(Batch, phase.batch_id).modality == "phase" and s.get(Batch, auto.batch_id).modality is None
        assert s.get(Batch, rerun.batch_id).modality == "phase"  # a re-run finds the cells as the batch said
        assert s.scalar(select(func.count()).select_from(Image).where(Image.batch_id == auto.batch_id)) == 1
    found = boxes(phase.batch_id)
    assert matched(truth, found) >= 0.95 * len(truth) and len(found) <= len(truth) + 1
    # the file's cells found in phase are not copied into the auto batch: found again, with their halos
    assert boxes(auto.batch_id) != found and matched(truth, boxes(auto.batch_id)) < 0.5 * len(truth)
    assert boxes(rerun.batch_id) == found
    from lsm_core.reports.report import load_report

    with lab() as s:
        assert load_report(s, phase.batch_id).meta.imaging == "phase"
        assert load_report(s, auto.batch_id).meta.imaging == "auto"


def test_the_command_line_classifies_with_the_modality_given(tiny_lsm_package, tmp_path):
    from lsm_core import cli

    field, truth = phase_field(730)
    path = tmp_path / "phase.tif"
    path.write_bytes(_tiff(field, "phase.tif").data or b"")
    counts = {}
    for modality in ("phase", "auto"):
        out = tmp_path / f"{modality}.csv"
        assert cli.main(["classify", str(path), "--model", "tiny-lsm", "--modality", modality, "--out", str(out)]) == 0
        counts[modality] = len(out.read_text(encoding="utf-8").splitlines()) - 1
    assert abs(counts["phase"] - len(truth)) <= 1, counts
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["classify", str(path), "--model", "tiny-lsm", "--modality", "confocal"])


def test_the_classify_page_offers_the_modalities(app_env):
    at = run_page()
    imaging = next(s for s in at.selectbox if s.label == "Imaging")
    assert imaging.options == ["DIC or brightfield", "DIC", "Brightfield", "Phase contrast"]
    assert imaging.value == "auto" and "a cell's dark body, without its bright halo" in imaging.help
