"""The SQL history: SQLAlchemy 2.0 typed ORM. The same schema on SQLite and PostgreSQL (Alembic migrates it).

Never imports torch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class JobStatus(StrEnum):
    """Where a job stands (lsm_core.lab.jobs moves it); a batch's status follows its classify jobs' and takes the
    same values."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    """What a job does: each kind is a task module of lsm_core.lab.tasks."""

    CLASSIFY = "classify"
    TRAIN = "train"
    EVALUATE = "evaluate"
    SALIENCY = "saliency"
    ADD_CELL = "add_cell"  # a cell the finder missed, added where a reviewer clicked


def _stored_as_text(enum: type[StrEnum]) -> Enum:
    """A column of ``enum``'s values as the text they are (VARCHAR(16), no CHECK constraint, no database enum
    type): the rows hold the same strings as before the column was typed, so no migration; read back, a value
    is the enum's member (a ``str`` too). A value the enum lacks cannot be read back (LookupError)."""
    return Enum(
        enum, native_enum=False, create_constraint=False, length=16, values_callable=lambda e: [m.value for m in e]
    )


def utcnow() -> datetime:
    """Now, as a naive UTC datetime: stored the same way on SQLite and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime()}


class User(Base):
    """A person. Signed in, they are their identity provider's account (``issuer`` + ``subject``: the ID token's
    ``iss`` and ``sub``); ``name`` is the e-mail they first signed in with, what batches' owner and the audit trail
    hold, and stays so. Lab mode and rows made before migration 0008 have no issuer or subject."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_users_issuer_subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    issuer: Mapped[str | None] = mapped_column(String(300))
    subject: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="member")  # member | admin (lsm_core.lab.accounts)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    display_name: Mapped[str | None] = mapped_column(String(200))
    last_seen: Mapped[datetime | None]


class Model(Base):
    """A registered model version; its weights live in the model store (``path`` below the store root)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version"), {"sqlite_autoincrement": True})  # ids never reused

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[Any]] = mapped_column(JSON)
    architecture: Mapped[str] = mapped_column(String(64))
    input_size: Mapped[int] = mapped_column(Integer)
    pixel_size_um: Mapped[float] = mapped_column(Float)
    crop_um: Mapped[float] = mapped_column(Float)
    normalisation: Mapped[str] = mapped_column(Text, default="")
    temperature: Mapped[float] = mapped_column(Float, default=1.0)
    weights_sha256: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(300))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    training: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    demo: Mapped[bool] = mapped_column(Boolean, default=False)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    # the probabilities the model gives its self-test crops where it was registered, and the tolerance per
    # precision every worker's own run must meet (lsm_core.ml.selftest); NULL until computed
    self_test: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    @property
    def label(self) -> str:
        """``name v3``, with ``(synthetic demo)`` for demo models and ``(failed quality check)`` for models whose
        recorded quality check failed (lsm_core.ml.models.model_quality)."""
        return self.label_of(self.name, self.version, self.demo, self.metrics)

    @staticmethod
    def label_of(name: str, version: int, demo: bool, metrics: dict[str, Any] | None) -> str:
        """:attr:`label` from the columns it is made of (for a query that selects only those)."""
        check = (metrics or {}).get("quality_check")  # as lsm_core.ml.metrics writes it (db imports no lsm_core)
        failed = isinstance(check, dict) and check.get("passed") is False
        return (
            f"{name} v{version}" + (" (synthetic demo)" if demo else "") + (" (failed quality check)" if failed else "")
        )


class Batch(Base):
    """One uploaded batch: usually one mouse and one sorted population."""

    __tablename__ = "batches"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused, even after a delete

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    status: Mapped[JobStatus] = mapped_column(_stored_as_text(JobStatus), default=JobStatus.QUEUED)  # its jobs'
    mouse_id: Mapped[str | None] = mapped_column(String(100))
    age_days: Mapped[float | None] = mapped_column(Float, index=True)
    sex: Mapped[str | None] = mapped_column(String(8))
    strain: Mapped[str | None] = mapped_column(String(200))
    gate: Mapped[str | None] = mapped_column(String(200))
    imaging_date: Mapped[str | None] = mapped_column(String(10))  # ISO date
    notes: Mapped[str | None] = mapped_column(Text)
    pixel_size_um: Mapped[float | None] = mapped_column(Float)  # set by the user for this batch (wins)
    channel: Mapped[str | None] = mapped_column(String(100))  # the channel to read (name or index); None: by name
    z: Mapped[int | None] = mapped_column(Integer)  # the z plane to read (from 0); None: the best-focused
    # how the cells were imaged (lsm_core.imaging.cells.MODALITIES): dic, brightfield, phase; None: auto
    modality: Mapped[str | None] = mapped_column(String(16))
    # changes people made (rename, files added): an action names the revision its user saw (lsm_core.lab.batches)
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    model: Mapped[Model] = relationship()
    images: Mapped[list[Image]] = relationship(
        back_populates="batch", cascade="all, delete-orphan", passive_deletes=True
    )


class Image(Base):
    """One image (one page of a file) of a batch; ``error`` set when it could not be read."""

    __tablename__ = "images"
    __table_args__ = (Index("ix_images_sha_page", "sha256", "page"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # order within the batch
    file: Mapped[str] = mapped_column(Text)
    page: Mapped[int] = mapped_column(Integer, default=1)
    sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    bit_depth: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str | None] = mapped_column(String(8))  # field | single
    error: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    n_cells: Mapped[int | None] = mapped_column(Integer)  # None until classified
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    # the pixel size the cells were found at, and where it came from: "user" (the batch's), "file" (the
    # file's metadata; set at upload), "model default"; channel: the channel read from a multi-channel file
    pixel_size_um: Mapped[float | None] = mapped_column(Float)
    pixel_size_source: Mapped[str | None] = mapped_column(String(16))
    channel: Mapped[str | None] = mapped_column(String(100))
    # the z plane the cells were found on (from 0; None: no z stack) and the app version that classified it
    z_plane: Mapped[int | None] = mapped_column(Integer)
    app_version: Mapped[str | None] = mapped_column(String(32))
    # the reporter channels measured in its cells: {name: {"background": level, "method": how it was found}}
    reporters: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # what cell finding did not keep: {"debris": n, "clump": n, "boxes": [[x, y, w, h, why], ...]} (the first
    # MAX_REJECTED boxes; None: classified before this was recorded, or not classified)
    dropped: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    batch: Mapped[Batch] = relationship(back_populates="images")


class Cell(Base):
    __tablename__ = "cells"
    __table_args__ = (
        UniqueConstraint("image_id", "idx"),
        Index("ix_cells_batch_pred", "batch_id", "predicted", "score"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)  # 1-based within its image
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    predicted: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    probs: Mapped[list[Any]] = mapped_column(JSON)  # in the model's class order
    flags: Mapped[str] = mapped_column(String(64), default="")
    # the other channels of a multi-channel file in this cell: {name: [mean, integrated]}, background
    # subtracted (lsm_core.imaging.reporters); None for a one-channel image
    signal: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # how far the cell lies from its model's training cells, in the features it classifies by
    # (lsm_core.ml.shift); None: classified before this was measured, or by a model that carries no reference
    feature_distance: Mapped[float | None] = mapped_column(Float)
    # its outline, x0, y0, x1, y1, ... in the image's pixels, and its size and shape from it (lsm_core.imaging.
    # shape; sizes in micrometres at the image's pixel_size_um); None: a single-cell crop, or classified before
    outline: Mapped[list[Any] | None] = mapped_column(JSON)
    area_um2: Mapped[float | None] = mapped_column(Float)
    diameter_um: Mapped[float | None] = mapped_column(Float)
    perimeter_um: Mapped[float | None] = mapped_column(Float)
    circularity: Mapped[float | None] = mapped_column(Float)
    eccentricity: Mapped[float | None] = mapped_column(Float)


class CellLabel(Base):
    """What a person says a cell is: its true class (``label``, one of its model's classes) or not a cell
    (``excluded``: why, lsm_core.lab.cell_labels.EXCLUSIONS); both empty: they took their label back. Never written
    over: each change is a new row, and a person's newest row for a cell is their ``current`` one (at most
    one per person and cell). ``predicted`` and ``score``: what the model said when the label was given."""

    __tablename__ = "cell_labels"
    __table_args__ = (
        Index("ix_cell_labels_batch", "batch_id", "current"),
        Index(
            "uq_cell_labels_current",
            "cell_id",
            "labelled_by",
            unique=True,
            sqlite_where=text("current"),
            postgresql_where=text("current"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), index=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    labelled_by: Mapped[str] = mapped_column(String(200), index=True)
    label: Mapped[str | None] = mapped_column(String(32))
    excluded: Mapped[str | None] = mapped_column(String(16))
    predicted: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    current: Mapped[bool] = mapped_column(Boolean, default=True)


class SaliencyRun(Base):
    """Saliency maps of some cells of a batch by one method, stored as one compressed 8-bit array blob."""

    __tablename__ = "saliency_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(32))  # "all" or "top-K per class"
    cells: Mapped[int] = mapped_column(Integer)
    blob: Mapped[str] = mapped_column(String(64))  # npz: cell_ids (N,), maps (N, H, W) uint8
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_fetch", "status", "kind", "priority", "created"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    # text, not Mapped[JobKind]: a kind this version has no task for (a newer version's, a row written by hand)
    # must still be read, so that the worker can fail that job plainly (lsm_core.lab.worker)
    kind: Mapped[str] = mapped_column(String(16))  # JobKind
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[JobStatus] = mapped_column(_stored_as_text(JobStatus), default=JobStatus.QUEUED)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher first
    owner: Mapped[str] = mapped_column(String(200), index=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_expires: Mapped[datetime | None] = mapped_column()
    worker_id: Mapped[str | None] = mapped_column(String(200))
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    errors: Mapped[list[Any]] = mapped_column(JSON, default=list)  # every attempt's error
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # e.g. an evaluation's metrics, a new model's id
    created: Mapped[datetime] = mapped_column(default=utcnow)
    started: Mapped[datetime | None] = mapped_column()
    finished: Mapped[datetime | None] = mapped_column()


class AuditEvent(Base):
    """Who did what, when: submitted, deleted, renamed, re-ran, trained, imported, changed a default."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(300))  # e.g. "batch 12", "model lsm-lab v3"
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelCheck(Base):
    """A worker's self-test of a model version on its device, precision and runtime: passed, or the model is
    refused on that worker (its jobs go to others)."""

    __tablename__ = "model_checks"
    __table_args__ = (
        UniqueConstraint("worker_id", "model_id", "device", "precision", "runtime", name="uq_model_checks_one"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    device: Mapped[str] = mapped_column(String(64))
    precision: Mapped[str] = mapped_column(String(16))
    runtime: Mapped[str] = mapped_column(String(16))
    passed: Mapped[bool] = mapped_column(Boolean)
    max_difference: Mapped[float] = mapped_column(Float)
    tolerance: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    checked: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A worker's heartbeat row: what the app shows as live workers."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))
    kinds: Mapped[str] = mapped_column(String(100))
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    started: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)
