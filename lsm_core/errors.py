"""The one exception type for errors a user can cause (a bad file, a wrong value, an unknown model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

N = TypeVar("N", int, float)


class LsmError(Exception):
    """An error with a message a biologist can act on.

    Raised for anything the user can cause; pages and the command line show the message next to the
    file or value it concerns and carry on with the rest of the batch.
    """


class FilesRefused(LsmError):
    """A request refused because of some of its files (each with why), before anything was stored: for
    example a z plane or channel asked for that they do not have. ``files`` lists (file name, why)."""

    def __init__(self, message: str, files: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.files = files


def as_number(value: Any, kind: Callable[[Any], N], refusal: str) -> N:
    """``kind(value)`` (``int`` or ``float``), or LsmError with the message ``refusal`` when ``value`` is no such
    number."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise LsmError(refusal) from None
