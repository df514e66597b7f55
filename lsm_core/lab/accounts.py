"""Who is who: identities, roles and the checks every action makes.

Two roles. A **member** runs batches, changes and deletes their own, and reads every result of the lab. An
**admin** also manages models (trains, imports, chooses defaults), people's roles, and may change or delete
anyone's batch. The checks live here and in the functions that act (:mod:`lsm_core.lab.batches`,
:mod:`lsm_core.lab.jobs`, :mod:`lsm_core.lab.registry`), so a page that forgot to hide a button still cannot do harm.

How people are known depends on the deployment:

* **Signed in** (``.streamlit/secrets.toml`` has an ``[auth]`` section): the web app asks the lab's OpenID
  Connect provider (``st.login``); a person is their e-mail address. Newcomers are members. Administrators
  are those listed in ``LSM_ADMINS`` (comma-separated: how the first one is made) and those an administrator
  promoted on the Lab page.
* **Lab mode** (no ``[auth]``: the embedded default for one trusted machine): nobody signs in; the user is
  ``LSM_USER`` or the login name, and every page says the app is unauthenticated. Everyone administers unless
  ``LSM_ADMINS`` names who does; then the rest are members (or what the users table says).

The command line acts as ``LSM_USER`` / the login name under the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import audit
from db.schema import User, utcnow
from lsm_core.errors import LsmError
from lsm_core.lab import settings
from lsm_core.lab.history import Lab

MEMBER, ADMIN = "member", "admin"
SYSTEM = "system"  # the actor of what the app does by itself (registering models found in the store)
ROLES = (MEMBER, ADMIN)


def auth_configured() -> bool:
    """True when an ``[auth]`` section is configured: the web app then requires OpenID Connect sign-in."""
    return settings.current().signed_in


def configured_admins() -> frozenset[str]:
    """The administrators LSM_ADMINS names."""
    return settings.current().admins


def current_user() -> str:
    """Who is acting on the command line and in lab mode: LSM_USER, else the operating-system user."""
    return settings.current().user


def role_of(s: Session, user: str) -> str:
    """The role ``user`` acts with now (see the module's docstring for the rules)."""
    admins = configured_admins()
    if user in admins:
        return ADMIN
    if not admins and not auth_configured():
        return ADMIN  # lab mode on a trusted machine with nobody named: everyone administers
    row = s.scalar(select(User).where(User.name == user))
    return row.role if row is not None and row.role in ROLES else MEMBER


def is_admin(s: Session, user: str) -> bool:
    return role_of(s, user) == ADMIN


def require_admin(s: Session, user: str, doing: str) -> None:
    """Raise LsmError unless ``user`` is an administrator; ``doing`` completes 'only administrators ...'."""
    if not is_admin(s, user):
        raise LsmError(f"{user} is not an administrator; only administrators {doing}")


def may_change(s: Session, user: str, owner: str) -> bool:
    """Whether ``user`` may change or delete something that belongs to ``owner``."""
    return user == owner or is_admin(s, user)


def sign_in(lab: Lab, name: str, display_name: str | None = None) -> str:
    """Note that ``name`` is here (a users row, made on first sign-in with the member role); returns their role."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise LsmError("the identity provider gave no usable name or e-mail for this account")
    with lab.begin() as s:
        row = s.scalar(select(User).where(User.name == name))
        if row is None:
            row = User(name=name, role=ADMIN if name in configured_admins() else MEMBER)
            s.add(row)
            audit.record(s, name, "first sign-in", f"user {name}", role=row.role)
        row.display_name = (display_name or "")[:200] or None
        row.last_seen = utcnow()
        s.flush()
        return role_of(s, name)


@dataclass(frozen=True)
class Person:
    name: str
    display_name: str | None
    role: str  # what they act with now
    stored_role: str  # what the users table says
    fixed: bool  # named in LSM_ADMINS: changed there, not here
    last_seen: datetime | None


def people(lab: Lab) -> list[Person]:
    """Everyone who has signed in, owns a batch or a job, or acted (the audit trail), and everyone named in
    LSM_ADMINS, by name. In lab mode nobody signs in, so acting is how people appear."""
    from db.schema import AuditEvent, Batch, Job

    with lab() as s:
        rows = {r.name: r for r in s.scalars(select(User))}
        acted = set(s.scalars(select(Batch.owner).distinct())) | set(s.scalars(select(Job.owner).distinct()))
        acted |= set(s.scalars(select(AuditEvent.actor).distinct())) - {SYSTEM}
        last = dict(s.execute(select(AuditEvent.actor, func.max(AuditEvent.at)).group_by(AuditEvent.actor)).all())
        names = sorted(set(rows) | acted | configured_admins())
        return [
            Person(
                n,
                rows[n].display_name if n in rows else None,
                role_of(s, n),
                rows[n].role if n in rows else MEMBER,
                n in configured_admins(),
                max(filter(None, [rows[n].last_seen if n in rows else None, last.get(n)]), default=None),
            )
            for n in names
        ]


def set_role(lab: Lab, name: str, role: str, by: str) -> None:
    """Give ``name`` the role ``role`` (administrators only). The last administrator cannot step down."""
    if role not in ROLES:
        raise LsmError(f"unknown role {role!r}; choose {' or '.join(ROLES)}")
    with lab.begin() as s:
        require_admin(s, by, "change people's roles")
        if name in configured_admins() and role != ADMIN:
            raise LsmError(f"{name} is named in LSM_ADMINS; remove them there to change their role")
        row = s.scalar(select(User).where(User.name == name).with_for_update())
        if row is None:
            row = User(name=name, role=MEMBER)
            s.add(row)
        if row.role == ADMIN and role == MEMBER and not configured_admins():
            others = s.scalar(select(func.count()).select_from(User).where(User.role == ADMIN, User.name != name))
            if not others:
                raise LsmError(f"{name} is the lab's last administrator; make someone else one first")
        audit.record(s, by, "set role", f"user {name}", old=row.role, new=role)
        row.role = role


def audit_trail(lab: Lab, user: str, limit: int = 500) -> list[dict]:
    """The newest audit events, for administrators only."""
    with lab() as s:
        require_admin(s, user, "read the audit trail")
        return [
            {"when (UTC)": e.at, "who": e.actor, "did": e.action, "to": e.target, "detail": audit.describe(e.detail)}
            for e in audit.events(s, limit=limit)
        ]
