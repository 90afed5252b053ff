"""Exceptions raised by the state layer.

Every message names the store or file at fault, because state problems are
usually diagnosed from a task log long after the fact and "invalid state"
alone does not tell an operator which of several state files to look at.
"""

from __future__ import annotations

import importlib.util

__all__ = [
    "MissingExtraError",
    "StateConflictError",
    "StateError",
    "StateFormatError",
    "require_extra",
]

DISTRIBUTION = "airflow-provider-orchestra-dbt"


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


class MissingExtraError(StateError):
    """A store needs a library that is only installed with one of the package's extras."""


def require_extra(who: str, extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` naming the extra to install unless ``modules`` are
    installed. Looks them up without importing them (importing boto3 takes a while)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{who} needs {' and '.join(missing)}, which is not installed: "
            f"pip install '{DISTRIBUTION}[{extra}]'"
        )
