"""A self-test on every worker (issue #19 item 4): before a worker takes jobs for a model it runs the model's
self-test crops on its own device, precision and runtime and compares with the probabilities recorded where the
model was registered; a mismatch refuses the model on that worker, visibly, and its jobs go to another worker."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lsm_core.lab import batches
from lsm_core.lab.open_lab import open_lab
from lsm_core.lab.worker import Worker
from lsm_core.ml.selftest import CROPS, TOLERANCE
from tests.helpers import crop_files, run_page


def _model(lab, model_id):
    from db.schema import Model

    with lab() as s:
        row = s.get(Model, model_id)
        s.expunge(row)
        return row


def _set_reference(lab, model_id, **changes):
    from db.schema import Model

    with lab.begin() as s:
        row = s.get(Model, model_id)
        row.self_test = {**row.self_test, **changes}


def _checks(lab):
    from db.schema import ModelCheck

    with lab() as s:
        return [(c.worker_id, c.passed, c.precision, c.max_difference, c.message) for c in s.query(ModelCheck)]


def test_registering_a_model_records_its_self_test_reference(history):
    lab, _, model_id = history
    ref = _model(lab, model_id).self_test
    assert ref is not None and ref["computed_on"] == "cpu, fp32, torch" and ref["tolerance"] == TOLERANCE
    probs = np.asarray(ref["probabilities"])
    assert probs.shape == (CROPS, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_a_worker_whose_numbers_match_passes_and_keeps_the_result(history):
    lab, _, model_id = history
    fp32 = open_lab(lab.settings.with_(precision="fp32"))
    try:
        sub = batches.submit_batch(fp32, crop_files(3, 601), model_id, "ok", owner="ana")
        worker = Worker(fp32, device="cpu", worker_id="gpu-box-1")
        worker.run(drain=True)
    finally:
        fp32.dispose()
    with lab() as s:
        from db.schema import Job

        assert s.get(Job, sub.job_id).status == "done"
    ((who, passed, precision, difference, message),) = [c for c in _checks(lab) if c[0] == "gpu-box-1"]
    assert passed and precision == "fp32" and difference <= 1e-5 and "passed" in message


@pytest.mark.slow
def test_a_worker_whose_numbers_differ_refuses_the_model_and_another_worker_takes_the_job(
    history, caplog, db_url, data_dir, monkeypatch
):
    """Worker A autocasts to bf16, whose rounding the model's declared tolerance does not allow (here made
    strict, as a lab would for a model whose numbers must not move); worker B runs fp32 within tolerance."""
    from db import queries
    from db.schema import Job
    from db.schema import Worker as WorkerRow

    lab, _, model_id = history
    _set_reference(lab, model_id, tolerance={"fp32": 1e-4, "bf16": 1e-9})
    a_lab = open_lab(lab.settings.with_(precision="bf16"))
    b_lab = open_lab(lab.settings.with_(precision="fp32"))
    try:
        sub = batches.submit_batch(lab, crop_files(3, 602), model_id, "strict", owner="ana")
        with caplog.at_level(logging.ERROR, logger="lsm_core.worker"):
            ran = Worker(a_lab, device="cpu", worker_id="bf16-box").run(drain=True)
        with lab() as s:
            job = s.get(Job, sub.job_id)
            assert (job.status, job.worker_id, job.attempts) == ("queued", None, 0)  # back in the queue, untouched
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "refused on this worker" in said and "given back to the queue for another worker" in said
        assert ran == 1  # claimed once, given back, and not claimed again
        refused = [c for c in _checks(lab) if c[0] == "bf16-box"]
        assert refused and not refused[0][1] and refused[0][2] == "bf16" and refused[0][3] > 1e-9
        Worker(b_lab, device="cpu", worker_id="fp32-box").run(drain=True)
        with lab() as s:
            job = s.get(Job, sub.job_id)
            assert (job.status, job.worker_id) == ("done", "fp32-box")
            # what the sidebar lists for the refusing worker
            shown = queries.refused_models(s, ["bf16-box", "fp32-box"])
        assert list(shown) == ["bf16-box"] and "tolerance 1e-09" in shown["bf16-box"][0][1]
        # the sidebar of the app says it, next to that worker, while it runs
        from db.schema import utcnow

        with lab.begin() as s:
            row = s.get(WorkerRow, "bf16-box")
            row.stopped, row.last_seen = False, utcnow()
        monkeypatch.setenv("LSM_DATABASE_URL", db_url)
        monkeypatch.setenv("LSM_DATA_DIR", str(data_dir))
        at = run_page()
        errors = [e.value for e in at.sidebar.error]
        assert any("refuses tiny\\-lsm v1" in e and "FAILED" in e for e in errors), errors
    finally:
        a_lab.dispose()
        b_lab.dispose()


def test_a_reference_from_other_numbers_is_refused_with_the_difference_said(history):
    """Probabilities recorded on another machine that gives other numbers (0.2 apart): refused, and the
    message names the size of the difference and the tolerance."""
    from lsm_core.lab.tasks.context import ModelCache, ModelRefused

    lab, _, model_id = history
    ref = _model(lab, model_id).self_test
    moved = (np.clip(np.asarray(ref["probabilities"]) + [0.2, -0.1, -0.1], 0, 1)).tolist()
    _set_reference(lab, model_id, probabilities=moved)
    fp32 = open_lab(lab.settings.with_(precision="fp32"))
    try:
        import torch

        cache = ModelCache(fp32, torch.device("cpu"), worker_id="elsewhere")
        with pytest.raises(ModelRefused, match=r"largest difference 0\.\d+ .* tolerance 0\.0001: FAILED"):
            cache.predictor(_model(lab, model_id))
        with pytest.raises(ModelRefused):  # remembered: not loaded again
            cache.predictor(_model(lab, model_id))
    finally:
        fp32.dispose()
        _set_reference(lab, model_id, probabilities=ref["probabilities"])
