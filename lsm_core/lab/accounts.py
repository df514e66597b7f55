"""Who is who: identities, roles and the checks every action makes.

Two roles. A **member** runs batches, changes and deletes their own, and reads every result of the lab. An
**admin** also manages models (trains, imports, chooses defaults), people's roles, and may change or delete
anyone's batch. The checks live here and in the functions that act (:mod:`lsm_core.lab.batches`,
:mod:`lsm_core.lab.jobs`, :mod:`lsm_core.lab.registry`), so a page that forgot to hide a button still cannot do harm.

How people are known depends on the deployment:

* **Signed in** (``.streamlit/secrets.toml`` has an ``[auth]`` section): the web app asks the lab's OpenID
  Connect provider (``st.login``) and :func:`sign_in` decides who that is. A person is their account at the
  provider (the ID token's issuer and subject); their name is the e-mail address the provider verified when they
  first came, and stays so. Only verified addresses, and only those ``LSM_ALLOWED_DOMAINS`` admits (when set),
  sign in; another account with a known address is refused. Newcomers are members. Administrators are those
  listed in ``LSM_ADMINS`` (comma-separated: how the first one is made) and those an administrator promoted on
  the Lab page. The ``[auth]`` section's ``cookie_secret`` must be long and random
  (:func:`lsm_core.lab.settings.auth_problem`): it signs the cookie that says who is signed in.
* **Lab mode** (no ``[auth]``: the embedded default for one trusted machine): nobody signs in; the user is
  ``LSM_USER`` or the login name, and every page says the app is unauthenticated. Everyone administers unless
  ``LSM_ADMINS`` names who does; then the rest are members (or what the users table says).

The command line acts as ``LSM_USER`` / the login name under the same rules.

Every rule here reads the settings of the :class:`~lsm_core.lab.lab.Lab` it is given (``lab.settings``: LSM_ADMINS,
LSM_ALLOWED_DOMAINS, LSM_USER, whether sign-in is configured, as they were when the lab was opened), never the
process's environment: two labs of one process answer each by its own settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import audit
from db.schema import User, utcnow
from lsm_core.errors import LsmError
from lsm_core.lab.lab import Lab

MEMBER, ADMIN = "member", "admin"
SYSTEM = "system"  # the actor of what the app does by itself (registering models found in the store)
ROLES = (MEMBER, ADMIN)


def auth_configured(lab: Lab) -> bool:
    """True when the lab's settings have an ``[auth]`` section: its web app then requires OpenID Connect sign-in."""
    return lab.settings.signed_in


def configured_admins(lab: Lab) -> frozenset[str]:
    """The administrators the lab's LSM_ADMINS names."""
    return lab.settings.admins


def allowed_domains(lab: Lab) -> frozenset[str]:
    """Who the lab's LSM_ALLOWED_DOMAINS lets sign in: e-mail domains and whole addresses, lower case; empty:
    anyone."""
    return lab.settings.allowed_domains


def current_user(lab: Lab) -> str:
    """Who is acting on the command line and in lab mode: the lab's LSM_USER, else the operating-system user
    (:attr:`lsm_core.lab.settings.Settings.user`, read once with the rest of the settings)."""
    return lab.settings.user


def role_of(lab: Lab, s: Session, user: str) -> str:
    """Within ``s`` (a session of ``lab``): the role ``user`` acts with now (see the module's docstring for the
    rules; LSM_ADMINS and sign-in are ``lab``'s settings)."""
    admins = configured_admins(lab)
    if user in admins:
        return ADMIN
    if not admins and not auth_configured(lab):
        return ADMIN  # lab mode on a trusted machine with nobody named: everyone administers
    row = s.scalar(select(User).where(User.name == user))
    return row.role if row is not None and row.role in ROLES else MEMBER


def is_admin(lab: Lab, s: Session, user: str) -> bool:
    return role_of(lab, s, user) == ADMIN


def require_admin(lab: Lab, s: Session, user: str, doing: str) -> None:
    """Raise LsmError unless ``user`` is an administrator; ``doing`` completes 'only administrators ...'."""
    if not is_admin(lab, s, user):
        raise LsmError(f"{user} is not an administrator; only administrators {doing}")


def may_change(lab: Lab, s: Session, user: str, owner: str) -> bool:
    """Whether ``user`` may change or delete something that belongs to ``owner``."""
    return user == owner or is_admin(lab, s, user)


def _claim(claims: Mapping[str, Any], key: str) -> str:
    value = claims.get(key)
    return value.strip() if isinstance(value, str) else ""


def _verified(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def admitted(email: str, allowed: frozenset[str]) -> bool:
    """Whether LSM_ALLOWED_DOMAINS (``allowed``: domains and whole addresses, lower case) lets ``email`` in;
    an empty ``allowed`` lets everyone in. A domain admits its own addresses only, not its subdomains'."""
    email = email.lower()
    return not allowed or email in allowed or email.rpartition("@")[2] in allowed


def sign_in(lab: Lab, claims: Mapping[str, Any]) -> str:
    """Let in the person whom the identity provider vouches for in ``claims`` (the ID token's claims, as
    ``st.user`` holds them) and return the name they act under; raise LsmError, with a message for them, when
    they may not sign in.

    A person is their account at the provider, ``iss`` + ``sub``. The account's ``email`` must be verified
    (``email_verified`` true) and admitted by LSM_ALLOWED_DOMAINS (:func:`admitted`). Their name is the e-mail
    of their first sign-in (a users row, made then with the member role, or the administrator role when
    LSM_ADMINS names them) and stays so when the provider later gives them another address. A users row known
    by name alone (from before issuer and subject were kept, or promoted before ever signing in) becomes the
    first account that signs in with its e-mail; any other account whose e-mail is the name of someone known
    is refused, never merged into them.
    """
    issuer, subject, email = _claim(claims, "iss"), _claim(claims, "sub"), _claim(claims, "email")
    if not issuer or not subject or len(issuer) > 300 or len(subject) > 255:
        raise LsmError(
            "the identity provider did not say who this account is (no issuer or subject in its answer); "
            "the lab's administrator should check the app's [auth] settings"
        )
    if not email:
        raise LsmError(
            "the identity provider gave no e-mail address for this account; the app needs one (the 'email' "
            "scope): ask the lab's administrator"
        )
    if len(email) > 200 or email.count("@") != 1 or not all(email.split("@")):
        raise LsmError(f"the identity provider gave {email[:200]!r} as this account's e-mail, not an e-mail address")
    if not _verified(claims.get("email_verified")):
        raise LsmError(
            f"the identity provider has not verified that {email} is this account's e-mail address; verify it "
            "with the provider (or ask the lab's administrator), then sign in again"
        )
    allowed = allowed_domains(lab)
    if not admitted(email, allowed):
        domains = sorted(d for d in allowed if "@" not in d)  # whole addresses are not shown to outsiders
        parts = [f"accounts of {', '.join(domains)}"] if domains else []
        if len(domains) < len(allowed):
            parts.append("some people named one by one")
        who = " and ".join(parts)
        raise LsmError(
            f"{email} may not sign in to this lab's app: it lets in {who} only. Sign out and sign in with your lab "
            "account, or ask the lab's administrator."
        )
    display_name = _claim(claims, "name")[:200] or None
    try:
        return _known_as(lab, issuer, subject, email, display_name)
    except IntegrityError:  # the same person's first sign-in in two tabs at once: the other one made the row
        return _known_as(lab, issuer, subject, email, display_name)


def _known_as(lab: Lab, issuer: str, subject: str, email: str, display_name: str | None) -> str:
    """The users row of the account (``issuer``, ``subject``), found, linked or made (see :func:`sign_in`); its name."""
    with lab.begin() as s:
        row = s.scalar(select(User).where(User.issuer == issuer, User.subject == subject).with_for_update())
        if row is None:
            known = s.scalars(select(User).where(func.lower(User.name) == email.lower()).with_for_update()).all()
            if any(u.subject is not None for u in known):
                raise LsmError(
                    f"{email} is already the e-mail address of another account, which signs in here as that "
                    "person; this account is not them and may not sign in. Sign out and sign in with the account "
                    "you used before, or ask the lab's administrator."
                )
            row = next((u for u in known if u.name == email), known[0] if known else None)
            if row is None:
                row = User(name=email, role=ADMIN if email in configured_admins(lab) else MEMBER)
                s.add(row)
                audit.record(s, email, "first sign-in", f"user {email}", role=row.role, issuer=issuer, subject=subject)
            else:
                audit.record(s, row.name, "linked account", f"user {row.name}", issuer=issuer, subject=subject)
            row.issuer, row.subject = issuer, subject
        row.display_name = display_name
        row.last_seen = utcnow()
        return row.name


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
        names = sorted(set(rows) | acted | configured_admins(lab))
        return [
            Person(
                n,
                rows[n].display_name if n in rows else None,
                role_of(lab, s, n),
                rows[n].role if n in rows else MEMBER,
                n in configured_admins(lab),
                max(filter(None, [rows[n].last_seen if n in rows else None, last.get(n)]), default=None),
            )
            for n in names
        ]


def set_role(lab: Lab, name: str, role: str, by: str) -> str:
    """Give ``name`` the role ``role`` (administrators only) and return the role the users table gave them
    before (member when they had no row): nothing is written when it is the same. The last administrator
    cannot step down: the last one as :func:`role_of` (and the Lab page's People table) counts them, so in lab
    mode without LSM_ADMINS, where everyone administers, anyone may be made a member again."""
    if role not in ROLES:
        raise LsmError(f"unknown role {role!r}; choose {' or '.join(ROLES)}")
    with lab.begin() as s:
        # every administrator's row locked first, in one order: two administrators demoting each other at once
        # run one after the other, and the second sees the first's change (PostgreSQL; SQLite's writes are
        # serialised by BEGIN IMMEDIATE)
        s.scalars(select(User.id).where(User.role == ADMIN).order_by(User.id).with_for_update()).all()
        require_admin(lab, s, by, "change people's roles")
        if name in configured_admins(lab) and role != ADMIN:
            raise LsmError(f"{name} is named in LSM_ADMINS; remove them there to change their role")
        row = s.scalar(select(User).where(User.name == name).with_for_update())
        old = row.role if row is not None and row.role in ROLES else MEMBER
        if old == role:
            return old
        if row is None:
            row = User(name=name, role=MEMBER)
            s.add(row)
        if old == ADMIN and role == MEMBER and not _administered_without(lab, s, name):
            raise LsmError(f"{name} is the lab's last administrator; make someone else one first")
        audit.record(s, by, "set role", f"user {name}", old=old, new=role)
        row.role = role
        return old


def _administered_without(lab: Lab, s: Session, name: str) -> bool:
    """Whether someone besides ``name`` acts as an administrator (:func:`role_of`): always where LSM_ADMINS
    names administrators (no role set here removes them) or in lab mode without it (everyone administers);
    else (signed in, nobody named) whether the users table makes someone else one."""
    if configured_admins(lab) or not auth_configured(lab):
        return True
    others = s.scalar(select(func.count()).select_from(User).where(User.role == ADMIN, User.name != name))
    return bool(others)


def audit_trail(lab: Lab, user: str, limit: int = 500) -> list[dict]:
    """The newest audit events, for administrators only."""
    with lab() as s:
        require_admin(lab, s, user, "read the audit trail")
        return [
            {"when (UTC)": e.at, "who": e.actor, "did": e.action, "to": e.target, "detail": audit.describe(e.detail)}
            for e in audit.events(s, limit=limit)
        ]
