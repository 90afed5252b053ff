"""Which workers and dbt versions a run accepts, decided from the worker's first message.

The worker says hello before it imports dbt, so an interpreter with a dbt we cannot drive is
turned away in a fraction of a second, with the version found and what to do, instead of a
traceback or, worse, decisions made from events that never arrived.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The worker is started by path and imports nothing of this package, so the number lives in
# its file; this parent sends the same number in "start" and accepts only a hello announcing it.
from airflow_provider_orchestra_dbt.worker.dbt_worker import PROTOCOL_VERSION

OLDEST_DBT = (1, 10)
# The newest minor tested; a newer 1.x runs with a warning (dbt keeps 1.x compatible).
NEWEST_TESTED_DBT = (1, 12)
SUPPORTED_RANGE = "dbt-core 1.10 to 1.12"
INSTALL_HINT = "pip install 'dbt-core>=1.10,<1.13' <your dbt adapter>"


class IncompatibleWorker(Exception):
    """The worker's interpreter has no dbt this provider can drive."""


@dataclass(frozen=True)
class WorkerHello:
    """The worker's first message: its protocol and kind, its python and the dbt it found."""

    protocol: int
    worker: str
    python: str
    dbt_distribution: str | None
    dbt_version: str | None

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> WorkerHello:
        return cls(
            protocol=int(message.get("protocol", 0)),
            worker=str(message.get("worker", "")),
            python=str(message.get("python", "")),
            dbt_distribution=message.get("dbt_distribution"),
            dbt_version=message.get("dbt_version"),
        )


def _release(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise IncompatibleWorker(f"unreadable dbt version {version!r}")
    return int(match.group(1)), int(match.group(2))


def check_worker(hello: WorkerHello) -> str | None:
    """Raise IncompatibleWorker with what to do, or return a warning (or None) and go on."""
    if hello.protocol != PROTOCOL_VERSION:
        raise IncompatibleWorker(
            f"the dbt worker ({hello.worker or 'unknown kind'}, python {hello.python}) speaks "
            f"protocol {hello.protocol}, this provider speaks {PROTOCOL_VERSION}: install the "
            "same airflow-provider-orchestra-dbt version where the worker runs"
        )
    if hello.dbt_version is None:
        return None  # nothing installed: the worker's import reports it in dbt's own words
    found = f"{hello.dbt_distribution or 'dbt'} {hello.dbt_version}"
    release = _release(hello.dbt_version)
    if release[0] >= 2:
        raise IncompatibleWorker(
            f"{found} found for python {hello.python}: dbt 2 (the Rust engine) has no Python "
            "API with per-node events, which this provider needs to record what it built. "
            f"Point dbt_python (CLI: --dbt-python) at a virtualenv with {SUPPORTED_RANGE}, "
            f"e.g. python3 -m venv /opt/dbt1 && /opt/dbt1/bin/{INSTALL_HINT}"
        )
    if release < OLDEST_DBT:
        raise IncompatibleWorker(
            f"{found} found for python {hello.python} is older than {SUPPORTED_RANGE}: "
            f"upgrade it there ({INSTALL_HINT}) or point dbt_python (CLI: --dbt-python) at "
            "an interpreter that has a supported dbt-core"
        )
    if release > NEWEST_TESTED_DBT:
        return (
            f"{found} is newer than the newest version this provider was tested with "
            f"({SUPPORTED_RANGE}); going on"
        )
    return None
