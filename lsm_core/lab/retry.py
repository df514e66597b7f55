"""The worker's retry policy: a lost connection to the database is waited out; nothing else is.

When PostgreSQL restarts or the network drops a connection, a worker keeps its job and tries each
transaction again with backoff for up to ``seconds`` (5 minutes). Any other error (a bug, a constraint, a
bad value) is raised at once: retrying it would only hide it. SQLite's errors are never retried (a locked
file already waits 30 s in the driver).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger("lsm_core.worker")
T = TypeVar("T")
DEFAULT_SECONDS = 300.0


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or dropped the connection (a server restart, a
    network cut): worth trying again."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        inner = exc.orig if isinstance(exc, (OperationalError, InterfaceError)) else None
        if inner is None:
            return False
        exc = inner
    if not type(exc).__module__.startswith("psycopg"):
        return False
    import psycopg

    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


class Retry:
    """``retry(what, fn)``: ``fn(attempt)`` (attempt counts from 0), tried again with backoff while the database
    is unreachable, for up to ``seconds``. A retried write checks first whether the commit it lost the answer
    to landed after all (the attempt number says it is a retry)."""

    def __init__(self, seconds: float = DEFAULT_SECONDS, sleep: Callable[[float], None] = time.sleep) -> None:
        self.seconds = seconds
        self.sleep = sleep

    def __call__(self, what: str, fn: Callable[[int], T]) -> T:
        deadline = time.monotonic() + self.seconds
        delay, attempt = 0.25, 0
        while True:
            try:
                return fn(attempt)
            except Exception as exc:
                if not connection_lost(exc) or time.monotonic() + delay > deadline:
                    raise
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.warning("database unreachable while %s (%s); trying again in %.2g s", what, first, delay)
            self.sleep(delay)
            delay, attempt = min(delay * 2, 5.0), attempt + 1
