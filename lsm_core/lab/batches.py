"""Batches: what people submit (a batch of files with its mouse's metadata, queued for classification) and
what they do with them afterwards: find, rename, delete, re-run, add files.

Ownership is checked here, not only by hiding buttons: a member changes only their own batches, an
administrator anyone's (see :mod:`lsm_core.lab.accounts`). Everyone may re-run any batch into a new one of their own.

Every action names the batch by id, never by a position in a list, and may name the ``revision`` its user
saw (``Batch.revision`` counts renames and added files): a batch that was deleted or changed since is
refused with a message, so nobody acts on something other than what they looked at.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_dict

from db import audit, bulk
from db.schema import AuditEvent, Base, Batch, Cell, Image, Job, Model, SaliencyRun, utcnow
from lsm_core.errors import FilesRefused, LsmError, as_number
from lsm_core.imaging.calibration import CalibrationSource
from lsm_core.imaging.cells import MODALITIES
from lsm_core.imaging.images import inspect
from lsm_core.imaging.readers.archives import RawFile, clean_name, iter_upload
from lsm_core.imaging.readers.base import Limits, ReadOptions
from lsm_core.lab import accounts
from lsm_core.lab.blobs import BlobStore, human_bytes
from lsm_core.lab.blobwriter import put_many
from lsm_core.lab.gc import unshared_blobs
from lsm_core.lab.jobs import JobKind, JobStatus, new_job
from lsm_core.lab.lab import Lab

SEXES = {"F", "M"}


@dataclass
class BatchMeta:
    """Sample metadata of a batch (what comparisons across mice need)."""

    mouse_id: str | None = None
    age_days: float | None = None
    sex: str | None = None
    strain: str | None = None
    gate: str | None = None
    imaging_date: str | None = None
    notes: str | None = None
    pixel_size_um: float | None = None
    channel: str | None = None  # of a multi-channel file: its name or index; None: the transmitted-light one
    z: int | None = None  # the z plane of a stack (from 0); None: the best-focused
    modality: str | None = None  # dic, brightfield, phase (lsm_core.imaging.cells.MODALITIES); None: auto

    @classmethod
    def of(cls, source: Any, **given: Any) -> BatchMeta:
        """The metadata as ``source`` (a Batch row, the command line's arguments) holds it under the same names,
        but for the fields ``given``."""
        return cls(**{f.name: given[f.name] if f.name in given else getattr(source, f.name) for f in fields(cls)})

    def validated(self) -> BatchMeta:
        if self.modality is not None:
            self.modality = str(self.modality).strip().lower() or None
            if self.modality == "auto":
                self.modality = None
            if self.modality is not None and self.modality not in MODALITIES:
                raise LsmError(f"unknown imaging modality {self.modality!r}; choose {', '.join(MODALITIES)}")
        if isinstance(self.channel, str):
            self.channel = clean_name(self.channel, limit=100_000).strip() or None
        if self.channel is not None and len(str(self.channel)) > 100:
            raise LsmError("the channel name is longer than 100 characters")
        if self.z is not None:
            self.z = as_number(self.z, int, f"z plane {self.z!r} is not a whole number")
            if self.z < 0:
                raise LsmError("the z plane is counted from 0: it cannot be negative")
        if self.age_days is not None:
            self.age_days = as_number(self.age_days, float, f"age {self.age_days!r} is not a number of days")
            if not 0 <= self.age_days <= 365 * 10:
                raise LsmError(f"age {self.age_days:g} days is outside 0 to 3650 days")
        if self.sex is not None and self.sex != "":
            if self.sex.upper() not in SEXES:
                raise LsmError(f"sex {self.sex!r} must be F or M")
            self.sex = self.sex.upper()
        if self.imaging_date:
            try:
                datetime.strptime(self.imaging_date, "%Y-%m-%d")
            except ValueError:
                raise LsmError(f"imaging date {self.imaging_date!r} must be written YYYY-MM-DD") from None
        for name in ("mouse_id", "strain", "gate"):  # one line each: no control characters
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, clean_name(value, limit=100_000).strip() or None)
        if isinstance(self.notes, str):  # lines and tabs kept, other control characters dropped
            self.notes = _NOTE_CONTROL.sub("", self.notes)
        for name, limit in (("mouse_id", 100), ("strain", 200), ("gate", 200), ("notes", 20_000)):
            value = getattr(self, name)
            if value is not None and len(str(value)) > limit:
                raise LsmError(f"{name.replace('_', ' ')} is longer than {limit:,} characters")
        if self.pixel_size_um is not None and not self.pixel_size_um > 0:
            raise LsmError("pixel size must be a positive number of micrometres per pixel")
        return self


@dataclass
class Submitted:
    batch_id: int
    job_id: int
    images: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, message)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why): the same bytes are in the batch already
    note: str | None = None  # what was changed to make it fit (a name cut to length), for the user to read


NAME_MAX = 200  # characters of a batch name (the column's length)
STORE_CHUNK_BYTES = 32 << 20  # an upload's files are stored together up to this many bytes at a time,
STORE_WAIT_S = 0.1  # or as soon as the first of them has waited this long
_NOTE_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass
class ImageRows:
    """Image rows for uploaded files (column values of the ``images`` table, without ``batch_id``: written at
    once by :mod:`db.bulk`, no ORM object made), with the files that failed and those skipped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    lacking: list[tuple[str, str]] = field(default_factory=list)  # images without the channel or z plane asked for
    lacking_files: set[str] = field(default_factory=set)  # the files they are in (a file may hold several)

    @property
    def readable(self) -> int:
        return sum(1 for r in self.rows if r["error"] is None)

    def refuse_lacking(self, options: ReadOptions | None) -> None:
        """FilesRefused naming every file that lacks the channel or z plane asked for (from its headers): a
        batch is never made of files that can only fail."""
        if not self.lacking:
            return
        asked = [
            *([f"channel {options.channel!r}"] if options and options.channel else []),
            *([f"z plane {options.z}"] if options and options.z is not None else []),
        ]
        n, images = len(self.lacking_files), len(self.lacking)
        where = f"{n} file(s)" + (f" ({images} images)" if images != n else "")
        if not asked:  # no channel asked for, and none of the file's is named as transmitted light
            raise FilesRefused(
                f"{where} have no channel named as transmitted light, so nothing was submitted: choose the channel "
                "to classify, or send those files as a batch of their own.",
                self.lacking,
            )
        raise FilesRefused(
            f"{where} do not have the {' and '.join(asked)} asked for, so nothing was submitted: ask for none "
            "(chosen automatically in each file) or for what every file has, or send those files as a batch of "
            "their own.",
            self.lacking,
        )


def image_rows(
    files: Iterable[RawFile],
    blobs: BlobStore,
    limits: Limits,
    present: dict[str, str] | None = None,
    options: ReadOptions | None = None,
) -> ImageRows:
    """Image rows for uploaded files, read one at a time: each file's headers are checked (format, size,
    the memory a page would take, a ZIP's members, their number and declared sizes: nothing is decoded
    here, the workers do that and report a damaged page there, per image) and its bytes stored once, only
    when at least one page can be read (together with the other files', up to STORE_CHUNK_BYTES or
    STORE_WAIT_S at a time: :func:`lsm_core.lab.blobwriter.put_many`; all of them are stored when this returns). A file
    that cannot becomes a row with its error. A file whose bytes are in ``present`` (sha256 -> the file name
    there: the batch's files) or earlier in ``files`` is skipped, never counted twice."""
    out = ImageRows()
    seen = dict(present or {})
    expanded = (
        member for f in files for member in ([f] if f.error or not f.data else iter_upload(f.source, f.data, limits))
    )
    pending: list[tuple[bytes, str]] = []  # files to store, written together (blobwriter.put_many)
    pending_bytes, pending_since = 0, 0.0
    for raw in expanded:  # a ZIP's members one at a time
        raw = RawFile(clean_name(raw.source), raw.data, raw.error)
        records = inspect(raw, limits, options)
        sha = records[0].sha256 if raw.error is None else None
        if sha is not None and sha in seen:
            same = seen[sha]
            out.skipped.append(
                (raw.source, "the same file is in this batch already" + ("" if same == raw.source else f" (as {same})"))
            )
            continue
        if sha is not None and raw.data is not None and any(r.ok for r in records):
            if not pending:
                pending_since = time.monotonic()
            pending.append((raw.data, sha))  # hashed once, by inspect
            pending_bytes += len(raw.data)
            seen[sha] = raw.source
            # a ZIP's members are not all held at once, and files that arrive slowly are stored as they come
            # (an upload cut off half-way leaves those stored: sent again, they are not written again)
            if pending_bytes >= STORE_CHUNK_BYTES or time.monotonic() - pending_since >= STORE_WAIT_S:
                put_many(blobs, pending)
                pending, pending_bytes = [], 0
        for record in records:
            out.rows.append(
                {
                    "position": len(out.rows),
                    "file": record.source,
                    "page": record.page + 1,
                    "sha256": record.sha256,
                    "width": record.width,
                    "height": record.height,
                    "bit_depth": record.bit_depth,
                    "pixel_size_um": record.pixel_size_um,  # what the file states; the worker records what it used
                    "pixel_size_source": CalibrationSource.FILE.value if record.pixel_size_um else None,
                    "channel": record.channel,
                    "error": record.error,
                    "done": not record.ok,
                    "n_cells": None if record.ok else 0,
                }
            )
            if not record.ok:
                out.errors.append((record.source, record.error or ""))
            if record.lacks:
                out.lacking.append((record.source, record.lacks))
                out.lacking_files.add(raw.source)
    put_many(blobs, pending)
    return out


def classify_job(batch: Batch, owner: str, readable: int, priority: int = 0) -> Job:
    """The job that classifies a batch's unread images (to add in the batch's transaction)."""
    status = JobStatus.QUEUED if readable else JobStatus.FAILED
    return new_job(
        JobKind.CLASSIFY,
        {"batch_id": batch.id, "model_id": batch.model_id},
        owner,
        priority,
        readable,
        batch.id,
        status,
        None if readable else "none of the files could be read",
    )


def _columns(row: Base) -> dict[str, Any]:
    """A new ORM object's row, to insert: the columns its constructor was given, except those given None that
    have a default (or are the id): their default fills them. The keys then depend on the code that made the
    object, not on its values (db.bulk.insert_together builds one statement per set of keys)."""
    given = instance_dict(row)
    return {
        c.key: given[c.key]
        for c in row.__table__.columns
        if c.key in given
        and (given[c.key] is not None or not (c.primary_key or c.default is not None or c.server_default is not None))
    }


def submit_batch(
    lab: Lab,
    files: Iterable[RawFile],
    model_id: int,
    name: str,
    owner: str,
    meta: BatchMeta | None = None,
    limits: Limits | None = None,
    priority: int = 0,
    actor: str | None = None,
) -> Submitted:
    """Store the files' bytes, then create the batch, its images, its audit event and its classify job at once.

    Files are checked from their headers and sizes alone (:func:`image_rows`): nothing is decoded here, the
    worker decodes each image and reports one it cannot read as that image's error, the rest of the batch
    going on. A file whose headers refuse it becomes an image row with its error, its bytes not stored.
    On PostgreSQL that is two statements, each committing by itself (Lab.begin_one_statement): the model's
    read with the batch's new id, then every row in one statement (db.bulk.insert_together), atomic on its
    own; elsewhere one transaction. Raises LsmError when nothing at all was uploaded or the model is unknown.
    """
    actor = actor or owner  # who acts: an administrator may submit a batch that belongs to someone else
    if actor != owner:
        with lab() as s:
            accounts.require_admin(lab, s, actor, "submit batches for someone else")
    meta = (meta or BatchMeta()).validated()
    name = clean_name(name or "", limit=100_000).strip()  # control characters break spreadsheets and terminals
    if not name:
        raise LsmError("the batch needs a name")
    if len(name) > NAME_MAX:
        raise LsmError(f"the batch name is longer than {NAME_MAX} characters")
    options = ReadOptions(meta.channel, meta.z)
    found = image_rows(files, lab.blobs, limits or lab.limits, options=options)
    rows, errors, readable = found.rows, found.errors, found.readable
    if not rows:
        raise LsmError("no files were uploaded")
    found.refuse_lacking(options)
    with lab.begin_one_statement() as s:
        # the model, and on PostgreSQL the new batch's id from its sequence: every row below is then known
        # before any is written, and they go as one statement (db.bulk.insert_together)
        model = s.execute(
            select(Model.deleted, Model.name, Model.version, Model.demo, Model.metrics, bulk.next_id(s, Batch)).where(
                Model.id == model_id
            )
        ).first()
        if model is None or model.deleted:
            raise LsmError("the chosen model no longer exists; pick another one")
        batch = Batch(
            id=model[-1],
            name=name,
            owner=owner,
            model_id=model_id,
            status=JobStatus.QUEUED if readable else JobStatus.FAILED,
            **vars(meta),
        )
        parts: list[tuple[type[Base], list[dict[str, Any]]]] = [(Batch, [_columns(batch)])]
        if batch.id is None:  # SQLite: its INSERT gives the id
            batch.id = bulk.insert_together(s, parts, Batch.id)
            parts = []
        audit_event = AuditEvent(
            actor=actor,
            action="submit",
            target=f"batch {batch.id}",
            detail={
                **({"owner": owner} if owner != actor else {}),  # an administrator submitted it for someone
                "name": name,
                "model": Model.label_of(model.name, model.version, model.demo, model.metrics),
                "images": len(rows),
                "failed": len(errors),
                "skipped": len(found.skipped),
            },
        )
        parts += [
            (Image, [{**row, "batch_id": batch.id} for row in rows]),
            (AuditEvent, [_columns(audit_event)]),
            (Job, [_columns(classify_job(batch, owner, readable, priority))]),
        ]
        job_id = bulk.insert_together(s, parts, Job.id)
        return Submitted(batch.id, job_id, len(rows), errors, found.skipped)


def find_by_name(lab: Lab, owner: str, name: str) -> int | None:
    """The id of ``owner``'s batch called ``name`` (newest), or None."""
    with lab() as s:
        return s.scalar(
            select(Batch.id).where(Batch.owner == owner, Batch.name == name.strip()).order_by(Batch.id.desc()).limit(1)
        )


def _get(s: Session, batch_id: int, seen_revision: int | None = None) -> Batch:
    """Within ``s``: the batch (locked for the rest of the transaction on PostgreSQL), refused when it is gone
    or, with ``seen_revision``, changed since its user saw it."""
    batch = s.get(Batch, batch_id, with_for_update=s.get_bind().dialect.name == "postgresql")
    if batch is None:
        raise LsmError(f"batch #{batch_id} no longer exists: someone deleted it. Nothing was done.")
    if seen_revision is not None and batch.revision != seen_revision:
        raise LsmError(
            f"batch #{batch_id} was changed since you selected it (it is now called {batch.name!r}). "
            "Nothing was done: look at it again, then act."
        )
    return batch


def _own(lab: Lab, s: Session, batch_id: int, user: str, seen_revision: int | None = None) -> Batch:
    batch = _get(s, batch_id, seen_revision)
    if not accounts.may_change(lab, s, user, batch.owner):
        raise LsmError(f"batch {batch.name!r} belongs to {batch.owner}; only they or an administrator can change it")
    return batch


def rename(lab: Lab, batch_id: int, new_name: str, user: str, seen_revision: int | None = None) -> None:
    new_name = clean_name(new_name or "", limit=100_000).strip()
    if not new_name or len(new_name) > NAME_MAX:
        raise LsmError(f"a batch name needs 1 to {NAME_MAX} characters")
    with lab.begin() as s:
        batch = _own(lab, s, batch_id, user, seen_revision)
        audit.record(s, user, "rename", f"batch {batch_id}", old=batch.name, new=new_name)
        batch.name = new_name
        batch.revision += 1


@dataclass(frozen=True)
class Deleted:
    """What a delete removed, for the message that confirms it."""

    batch_id: int
    name: str
    images: int
    cells: int
    blobs: int = 0  # stored files only this batch used (its images' bytes, its saliency maps), removed with it
    freed_bytes: int = 0

    @property
    def freed(self) -> str:
        """The disk space freed, as people read it: ``12.3 MB``."""
        return human_bytes(self.freed_bytes)


def _last_stored(s: Session, batch: Batch) -> float:
    """Within ``s``: when (seconds since the epoch) ``batch`` last got stored files: made, files added, saliency
    maps. Its blobs were stored before; one stored again after that belongs to someone else's upload too."""
    times = [
        batch.created,
        s.scalar(
            select(func.max(AuditEvent.at)).where(
                AuditEvent.target == f"batch {batch.id}", AuditEvent.action == "add files"
            )
        ),
        s.scalar(select(func.max(SaliencyRun.created)).where(SaliencyRun.batch_id == batch.id)),
    ]
    return max(t.replace(tzinfo=UTC).timestamp() for t in times if t is not None) + 0.001


def delete(lab: Lab, batch_id: int, user: str, seen_revision: int | None = None) -> Deleted:
    """Delete a batch with its images and cells; its queued or running jobs are cancelled, at once: a running
    one's worker finds it ended at its next step and writes nothing more (its results had nowhere to go). The
    stored files
    only this batch used go too, once the delete has committed (other batches keep the ones they share:
    :func:`lsm_core.lab.gc.unshared_blobs`); a file stored again since the batch got it (an upload of the same
    bytes in progress) or read by a running job is left to :func:`lsm_core.lab.gc.collect_garbage`. Returns what
    went."""
    with lab.begin() as s:
        batch = _own(lab, s, batch_id, user, seen_revision)
        running = s.scalar(
            select(func.count()).select_from(Job).where(Job.batch_id == batch_id, Job.status == JobStatus.RUNNING)
        )
        unshared = set() if running else unshared_blobs(s, batch_id)  # a worker reads them: left to the collection
        stored_before = _last_stored(s, batch)
        gone = Deleted(
            batch.id,
            batch.name,
            s.scalar(select(func.count()).select_from(Image).where(Image.batch_id == batch_id)) or 0,
            s.scalar(select(func.count()).select_from(Cell).where(Cell.batch_id == batch_id)) or 0,
        )
        # ended here, not left to their workers: a worker that was just ending its job as done would otherwise
        # end it so once the batch is gone (lsm_core.lab.jobs.finish ends only a running job)
        s.execute(
            update(Job)
            .where(Job.batch_id == batch_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            .values(status=JobStatus.CANCELLED, cancel_requested=True, lease_expires=None, finished=utcnow())
        )
        audit.record(
            s,
            user,
            "delete",
            f"batch {batch_id}",
            name=batch.name,
            owner=batch.owner,
            images=gone.images,
            cells=gone.cells,
        )
        s.delete(batch)
    freed = 0
    removed = 0
    for sha in sorted(unshared):
        try:
            size = lab.blobs.remove(sha, stored_before)
        except OSError:
            continue  # the delete stands; garbage collection reports a file it cannot remove
        if size is not None:
            removed, freed = removed + 1, freed + size
    return replace(gone, blobs=removed, freed_bytes=freed)


def rerun(
    lab: Lab,
    batch_id: int,
    model_id: int,
    user: str,
    pixel_size_um: float | None = None,
    seen_revision: int | None = None,
) -> Submitted:
    """A new batch with the same images and metadata, classified by another model (version) or at another
    pixel size (``pixel_size_um``; default: the old batch's)."""
    if pixel_size_um is not None and not (pixel_size_um > 0 and pixel_size_um < 100):
        raise LsmError("the pixel size must be a positive number of micrometres per pixel (below 100)")
    with lab.begin() as s:
        old = _get(s, batch_id, seen_revision)
        model = s.get(Model, model_id)
        if model is None or model.deleted:
            raise LsmError("the chosen model no longer exists; pick another one")
        if model.task != old.model.task:
            raise LsmError(
                f"{model.label} is a {model.task} model; this batch was classified with a {old.model.task} model"
            )
        images = s.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.position)).all()
        stated = CalibrationSource.FILE.value  # what a file states is kept; the rest is decided again
        copies = [
            Image(
                position=i,
                file=im.file,
                page=im.page,
                sha256=im.sha256,
                width=im.width,
                height=im.height,
                bit_depth=im.bit_depth,
                pixel_size_um=im.pixel_size_um if im.pixel_size_source == stated else None,
                pixel_size_source=stated if im.pixel_size_source == stated else None,
                channel=im.channel,
                error=im.error if im.width is None else None,
                done=im.width is None,
                n_cells=0 if im.width is None else None,
            )
            for i, im in enumerate(images)
        ]
        readable = sum(1 for c in copies if not c.done)
        pixels = pixel_size_um if pixel_size_um is not None else old.pixel_size_um
        suffix = f" ({model.name} v{model.version}" + (f", {pixels:g} µm/px" if pixel_size_um is not None else "") + ")"
        name, note = old.name + suffix, None
        if len(name) > NAME_MAX:  # the column holds 200 characters: cut the old name, keep what tells them apart
            name = old.name[: NAME_MAX - len(suffix) - 1].rstrip() + "…" + suffix
            note = f"the new batch's name was cut to {NAME_MAX} characters: {name}"
        batch = Batch(
            name=name,
            owner=user,
            model_id=model.id,
            status=JobStatus.QUEUED,
            **vars(BatchMeta.of(old, pixel_size_um=pixels)),
        )
        batch.images = copies
        s.add(batch)
        s.flush()
        job = classify_job(batch, user, readable)
        s.add(job)
        s.flush()
        audit.record(s, user, "rerun", f"batch {batch.id}", source=batch_id, model=model.label, pixel_size_um=pixels)
        return Submitted(batch.id, job.id, len(copies), [], note=note)


def _running_job(s: Session, batch_id: int) -> Job | None:
    """Within ``s``: the batch's queued or running classify job, locked (PostgreSQL) so that its worker cannot
    end it while new images join it (the worker's end takes the same lock, then looks for unread images)."""
    query = (
        select(Job)
        .where(
            Job.batch_id == batch_id,
            Job.kind == JobKind.CLASSIFY,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
            Job.cancel_requested.is_(False),
        )
        .order_by(Job.id.desc())
        .limit(1)
    )
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return s.scalars(query).first()


def add_files(
    lab: Lab,
    batch_id: int,
    files: Iterable[RawFile],
    user: str,
    limits: Limits | None = None,
    seen_revision: int | None = None,
) -> Submitted:
    """Add files to one of ``user``'s batches and have them classified: by the batch's queued or running job
    when it has one (one job per batch: never two workers on the same images), else by a new job. The job is
    the batch's owner's, whoever added the files (an administrator adding to a colleague's batch): its owner
    can cancel it and the queue's fairness counts it as theirs; the audit trail records who added them.

    A file whose bytes are in the batch already (same sha256) is skipped and listed in ``skipped``; when
    every file is, nothing is queued and LsmError says so.
    """
    with lab() as s:
        batch = _own(lab, s, batch_id, user, seen_revision)
        present = {
            sha: file
            for sha, file in s.execute(
                select(Image.sha256, Image.file).where(Image.batch_id == batch_id, Image.sha256.is_not(None))
            )
            if sha is not None  # always: the query leaves out images without one
        }
        options = ReadOptions(batch.channel, batch.z)
    found = image_rows(files, lab.blobs, limits or lab.limits, present, options)
    if not found.rows:
        if found.skipped:
            raise LsmError(f"nothing was added: all {len(found.skipped)} file(s) are in batch {batch.name!r} already")
        raise LsmError("no files were uploaded")
    found.refuse_lacking(options)
    with lab.begin() as s:
        batch = _own(lab, s, batch_id, user, seen_revision)
        start = (s.scalar(select(func.max(Image.position)).where(Image.batch_id == batch_id)) or 0) + 1
        bulk.insert_images(s, batch_id, [{**row, "position": start + i} for i, row in enumerate(found.rows)])
        batch.revision += 1
        job = _running_job(s, batch_id)
        if job is not None:  # one job per batch: the queued or running one takes the new images too
            job.progress_total += found.readable
        else:
            job = classify_job(batch, batch.owner, found.readable)
            if found.readable:
                batch.status = JobStatus.QUEUED
                s.add(job)
            else:  # nothing new to read: the batch keeps its status, its last classify job stands
                last = select(Job).where(Job.batch_id == batch_id, Job.kind == JobKind.CLASSIFY)
                job = s.scalar(last.order_by(Job.id.desc()).limit(1)) or job
                if job.id is None:
                    s.add(job)
        s.flush()
        audit.record(
            s,
            user,
            "add files",
            f"batch {batch_id}",
            images=len(found.rows),
            failed=len(found.errors),
            skipped=len(found.skipped),
        )
        return Submitted(batch_id, job.id, len(found.rows), found.errors, found.skipped)
