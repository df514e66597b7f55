"""Names as they are stored (hardening issue, items 12 and 13), on SQLite and PostgreSQL: control characters
are taken out where a name or a metadata field is stored, and a re-run of a batch with a long name is cut to
the column's 200 characters with a message, never a database error."""

from __future__ import annotations

from db.schema import Batch
from lsm_core.lab import batches
from lsm_core.lab.batches import BatchMeta
from tests.helpers import crop_files


def test_rerunning_a_batch_with_a_long_name_cuts_the_new_name_and_says_so(history):
    lab, _, model_id = history
    long_name = "M17 aged LT-HSC sorted " + "x" * 172  # 195 characters: the suffix makes it longer than 200
    sub = batches.submit_batch(lab, crop_files(1, seed=950), model_id, long_name, owner="ana")
    again = batches.rerun(lab, sub.batch_id, model_id, "ana", pixel_size_um=0.25)
    with lab() as s:
        name = s.get(Batch, again.batch_id).name
    assert len(name) <= batches.NAME_MAX
    assert name.startswith("M17 aged LT-HSC sorted ") and name.endswith("v1, 0.25 µm/px)")  # what tells them apart
    assert again.note is not None and "cut to 200 characters" in again.note
    # without a pixel size the suffix is shorter, " (tiny-lsm v1)", but 195 + 14 is still over 200: cut too
    plain = batches.rerun(lab, sub.batch_id, model_id, "ana")
    with lab() as s:
        name = s.get(Batch, plain.batch_id).name
    assert len(name) == batches.NAME_MAX and name.endswith("… (tiny-lsm v1)")
    assert plain.note == f"the new batch's name was cut to 200 characters: {name}"
    # a name that fits with its suffix is kept whole, and nothing is said
    fits = batches.submit_batch(lab, crop_files(1, seed=952), model_id, "M17 aged", owner="ana")
    short = batches.rerun(lab, fits.batch_id, model_id, "ana")
    with lab() as s:
        assert s.get(Batch, short.batch_id).name == "M17 aged (tiny-lsm v1)"
    assert short.note is None


def test_control_characters_are_taken_out_of_names_and_metadata_where_they_are_stored(history):
    lab, _, model_id = history
    meta = BatchMeta(
        mouse_id="M\x1b[31m17", strain="C57BL/6\x00", gate="LSK\r\nCD150+", notes="line 1\nline\x07 2\tend"
    )
    sub = batches.submit_batch(
        lab, crop_files(1, seed=951), model_id, "aged\x1b]0;pwned\x07 mice", meta=meta, owner="ana"
    )
    with lab() as s:
        batch = s.get(Batch, sub.batch_id)
        stored = (batch.name, batch.mouse_id, batch.strain, batch.gate, batch.notes)
    for value in stored[:4]:
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value), repr(value)
    assert stored[0].startswith("aged") and stored[0].endswith(" mice")
    assert stored[4] == "line 1\nline 2\tend"  # lines and tabs of notes kept
    batches.rename(lab, sub.batch_id, "renamed\x00\x1b", "ana")
    with lab() as s:
        assert s.get(Batch, sub.batch_id).name == "renamed??"
