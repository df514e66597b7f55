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
