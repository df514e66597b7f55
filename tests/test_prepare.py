"""Parallel preparation (issue #16 item 1): images read, their cells found and their reporters measured by a
pool of processes give the same results, bit for bit and in input order, as the serial path; a broken file is
that image's error and the rest goes on; the worker classifies a batch the same way with 0 and 2 processes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from sqlalchemy import select

from db.schema import Cell, Image
from lsm_core.imaging import synthetic
from lsm_core.imaging.cells import FindParams
from lsm_core.imaging.prepare import PrepPool, PrepTask, default_workers
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.imaging.readers.base import Limits, ReadOptions
from lsm_core.lab import batches
from lsm_core.lab.worker import Worker
from tests.test_microscope_files import two_channel_stack


def field_tiff(seed: int) -> bytes:
    field, _ = synthetic.make_field("lsm", seed=seed, shape=(768, 768), n_cells=12, n_debris=3)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.round(field * 4095).astype(np.uint16))
    return buf.getvalue()


def tasks(tmp_path) -> list[PrepTask | None]:
    files = {f"f{i}.tif": field_tiff(40 + i) for i in range(4)}
    files["stack.ome.tif"] = two_channel_stack(seed=5)[0]
    files["broken.tif"] = field_tiff(49)[:3000]
    out: list[PrepTask | None] = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        pixel = 0.1 if name.startswith("stack") else 0.2
        out.append(PrepTask(tmp_path / name, 1, ReadOptions(), Limits(), FindParams(pixel_size_um=pixel), 60.0))
        if name == "f1.tif":
            out.append(None)  # an image whose cells are known already: given back in its place
    return out


def summary(prepared):
    if prepared is None:
        return None
    if prepared.error:
        return ("error", prepared.error)
    f = prepared.found
    return (
        f.crops.tobytes(),
        f.boxes.tolist(),
        f.centres.tobytes(),
        f.flags,
        f.dropped,
        prepared.note,
        [(s.name, s.mean.tobytes(), s.integrated.tobytes(), s.background) for s in prepared.signal],
    )


def test_a_pool_gives_the_serial_results_bit_for_bit_in_input_order(tmp_path):
    items = list(enumerate(tasks(tmp_path)))
    with PrepPool(0) as serial:
        expected = [(i, summary(p)) for (i, _), p in serial.ordered(items, lambda item: item[1])]
    with PrepPool(2) as pool:
        got = [(i, summary(p)) for (i, _), p in pool.ordered(items, lambda item: item[1])]
    assert [i for i, _ in got] == list(range(len(items)))
    assert got == expected
    errors = [s for _, s in got if s is not None and s[0] == "error"]
    assert len(errors) == 1 and errors[0][1]  # the broken file, said; the others went on
    stack = next(s for _, s in got if s is not None and s[0] != "error" and s[6])
    assert stack[6][0][0] == "GFP"  # the reporter was measured in the pool too
    assert got[2][1] is None  # the item that needed no preparation, in its place


def test_the_default_leaves_a_core_and_fits_in_memory():
    assert default_workers(Limits(), cores=8, memory=64 * 1024**3) == 7
    assert default_workers(Limits(), cores=1, memory=64 * 1024**3) == 0
    assert default_workers(Limits(max_image_bytes=400_000_000), cores=16, memory=4 * 1024**3) == 2


@pytest.mark.slow
def test_the_worker_classifies_a_batch_the_same_with_and_without_preparation_processes(history):
    lab, _, model_id = history
    files = [RawFile(f"f{i}.tif", field_tiff(60 + i)) for i in range(5)]
    files.append(RawFile("stack.ome.tif", two_channel_stack(seed=5)[0]))
    files.append(RawFile("broken.tif", field_tiff(69)[:3000]))
    rows = {}
    for workers in (0, 2):
        sub = batches.submit_batch(lab, files, model_id, f"same {workers}", owner="ana")
        Worker(lab, device="cpu", prep_workers=workers).run(drain=True)
        with lab() as s:
            images = s.execute(
                select(Image.file, Image.n_cells, Image.error, Image.note, Image.reporters)
                .where(Image.batch_id == sub.batch_id)
                .order_by(Image.position)
            ).all()
            cells = s.execute(
                select(Image.file, Cell.idx, Cell.x, Cell.y, Cell.w, Cell.h, Cell.predicted, Cell.probs, Cell.signal)
                .join(Image, Image.id == Cell.image_id)
                .where(Cell.batch_id == sub.batch_id)
                .order_by(Image.position, Cell.idx)
            ).all()
        rows[workers] = ([tuple(r) for r in images], [tuple(r) for r in cells])
        batches.delete(lab, sub.batch_id, "ana")  # so that the next run finds its cells again, not from this one
    assert len(rows[0][1]) > 40
    assert rows[2] == rows[0]


def test_a_pool_process_that_dies_costs_a_retry_not_the_images(tmp_path):
    """Killed from outside (as the kernel kills a process for memory) while it prepares: the pool is started
    again and the images in it are prepared once more; the results are those of the serial path."""
    import os
    import signal
    import threading

    items = list(enumerate(tasks(tmp_path)[:3]))
    with PrepPool(0) as serial:
        expected = [summary(p) for _, p in serial.ordered(items, lambda item: item[1])]
    killed: list[int] = []
    with PrepPool(1) as pool:

        def kill() -> None:  # the first process, as soon as it exists (the first image was handed to it)
            for _ in range(2000):
                processes = list((getattr(pool._executor, "_processes", None) or {}).values())
                if processes:
                    os.kill(processes[0].pid, signal.SIGKILL)
                    killed.append(processes[0].pid)
                    return
                threading.Event().wait(0.005)

        killer = threading.Thread(target=kill)
        killer.start()
        got = [summary(p) for _, p in pool.ordered(items, lambda item: item[1])]
        killer.join()
    assert killed  # a process was killed while the pool had work
    assert got == expected


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_a_preparation_process_computes_on_one_core():
    """numpy's BLAS starts a thread per core in each process unless told: on two cores, two preparation
    processes then ran at 0.9x one (bench/fields.py)."""
    from lsm_core.imaging import prepare

    executor = prepare._executor(1)
    try:
        threads = executor.submit(_blas_threads).result(timeout=120)
    finally:
        executor.shutdown()
    assert threads and set(threads) == {1}, threads


def test_the_time_limit_holds_when_the_block_swallows_its_signal():
    """Seen as a flaky test: at 0.001 s an image was now and then classified in full, with no error, because
    the alarm's exception landed inside a reader's broad ``except Exception`` and the reading went on. The
    block's end still says it took too long."""
    import time

    from lsm_core.imaging.prepare import TookTooLong, time_limit

    with pytest.raises(TookTooLong, match=r"took longer than 0.01 s"):
        with time_limit(0.01, "this block"):
            try:
                time.sleep(1)
            except Exception:  # noqa: BLE001  (what a library may do)
                pass
    with time_limit(1, "a quick block"):  # within the limit: nothing said
        pass
