"""The one exception type for errors a user can cause (a bad file, a wrong value, an unknown model)."""

from __future__ import annotations


class LsmError(Exception):
    """An error with a message a biologist can act on.

    Raised for anything the user can cause; pages and the command line show the message next to the
    file or value it concerns and carry on with the rest of the batch.
    """
