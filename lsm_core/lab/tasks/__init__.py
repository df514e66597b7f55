"""What jobs do: one module per job kind, each with a ``run(ctx, payload)`` registered under its kind.

The worker finds a task by the job's kind in :data:`TASKS` (as procrastinate finds tasks by name); adding a
job kind is adding a :class:`lsm_core.lab.jobs.JobKind` member and one module here whose ``run`` is
decorated with ``@task(JobKind.X)``. Every module of this package is imported when the registry is first
read, so nothing else needs to list them. A task module may also hold the ``submit`` function that queues
its jobs (checking what the person may do); heavy imports (torch) stay inside the functions.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from lsm_core.errors import LsmError
from lsm_core.lab.jobs import JobKind
from lsm_core.lab.tasks.context import Context

Task = Callable[[Context, dict[str, Any]], "dict[str, Any] | None"]
_REGISTRY: dict[str, Task] = {}
_loaded = False


def task(kind: JobKind) -> Callable[[Task], Task]:
    """Register the decorated function as the task of jobs of ``kind``."""

    def register(fn: Task) -> Task:
        if kind.value in _REGISTRY and _REGISTRY[kind.value] is not fn:
            raise RuntimeError(f"two tasks for job kind {kind.value!r}")
        _REGISTRY[kind.value] = fn
        return fn

    return register


def tasks() -> dict[str, Task]:
    """Every registered task by kind (the task modules are imported on first use)."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "context":
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return dict(_REGISTRY)


def find(kind: str) -> Task:
    try:
        return tasks()[kind]
    except KeyError:
        raise LsmError(f"no task runs jobs of kind {kind!r}; known: {', '.join(sorted(tasks()))}") from None
