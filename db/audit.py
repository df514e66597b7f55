"""The audit trail: one row per action that changes what the lab sees. Written inside the action's own
transaction, so an action and its record commit together."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.schema import AuditEvent


def record(s: Session, actor: str, action: str, target: str, **detail) -> None:
    s.add(AuditEvent(actor=actor, action=action, target=target, detail=detail))


def events(s: Session, limit: int = 500) -> list[AuditEvent]:
    return list(s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)))


def describe(detail: dict | None) -> str:
    """An event's detail as text people read: ``name: M17 · images: 20 · model: demo-lsm v1``."""
    parts = []
    for key, value in (detail or {}).items():
        if value is None or value == "":
            continue
        if isinstance(value, float):
            value = f"{value:g}"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        parts.append(f"{key.replace('_', ' ')}: {value}")
    return " · ".join(parts)
