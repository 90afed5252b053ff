"""Exceptions raised by the state layer.

Every message names the store or file at fault, because state problems are
usually diagnosed from a task log long after the fact and "invalid state"
alone does not tell an operator which of several state files to look at.
"""

from __future__ import annotations

__all__ = ["StateConflictError", "StateError", "StateFormatError"]


class StateError(Exception):
    """Base class for state failures; the message names the store or file."""


class StateFormatError(StateError):
    """A state document is not valid JSON or does not have the expected shape.

    Raised both for stored documents and for updates handed to ``save``; in
    either case nothing is written, so a damaged file is left for a human to
    inspect instead of being silently replaced.
    """


class StateConflictError(StateError):
    """A store could not apply an update because of competing writers.

    Stores that use optimistic concurrency (compare-and-swap) raise this once
    they give up retrying; the local file store serialises writers with a lock
    and reports a lock timeout as a plain ``StateError`` instead.
    """
