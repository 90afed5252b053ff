"""Many processes saving to one LocalFileStateStore at the same time.

Real processes (spawned, so nothing is inherited from the test process) are
used because the guarantee under test is about OS-level locking and atomic
replacement, which mocks or threads would not exercise faithfully.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from support.concurrency import run_in_processes

from airflow_provider_orchestra_dbt.state import LocalFileStateStore, format_timestamp
from airflow_provider_orchestra_dbt.state.model import entries_to_json

PROCESSES = 8
KEYS_PER_PROCESS = 50
SHARED_WRITES_PER_PROCESS = 25
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


def _save_distinct_keys(path: str, worker: int, start: Barrier) -> None:
    store = LocalFileStateStore(path)
    start.wait()
    for index in range(KEYS_PER_PROCESS):
        store.save(
            {
                f"db.w{worker}.k{index}": {
                    "checksum": f"{worker}-{index}",
                    "last_updated": format_timestamp(BASE_TIME),
                }
            }
        )


def _shared_key_time(worker: int, write: int) -> datetime:
    # Distinct instant for every (worker, write) pair; the overall newest is
    # written by the last worker on its last write index.
    return BASE_TIME + timedelta(seconds=write * PROCESSES + worker)


def _save_shared_key(path: str, worker: int, start: Barrier) -> None:
    store = LocalFileStateStore(path)
    # Shuffled so each worker mixes newer and older writes, and the newest
    # write is likely to be followed by stale ones from other workers.
    order = list(range(SHARED_WRITES_PER_PROCESS))
    random.Random(worker).shuffle(order)
    start.wait()
    for write in order:
        store.save(
            {
                "db.main.shared": {
                    "checksum": f"{worker}-{write}",
                    "last_updated": format_timestamp(_shared_key_time(worker, write)),
                }
            }
        )


def _run_workers(target: Callable[[str, int, Barrier], None], path: Path) -> None:
    run_in_processes(
        target, lambda worker, start: (str(path), worker, start), processes=PROCESSES, timeout=120
    )


@pytest.mark.timeout(180)
def test_concurrent_saves_of_distinct_keys_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _run_workers(_save_distinct_keys, path)

    document = json.loads(path.read_bytes())
    expected = {
        f"db.w{worker}.k{index}" for worker in range(PROCESSES) for index in range(KEYS_PER_PROCESS)
    }
    assert set(document["state"]) == expected
    assert len(expected) == PROCESSES * KEYS_PER_PROCESS
    assert entries_to_json(LocalFileStateStore(path).load().entries) == document["state"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.lock"]


@pytest.mark.timeout(180)
def test_concurrent_saves_of_one_key_keep_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _run_workers(_save_shared_key, path)

    entry = LocalFileStateStore(path).load().entries["db.main.shared"]
    newest_worker, newest_write = PROCESSES - 1, SHARED_WRITES_PER_PROCESS - 1
    assert entry.checksum == f"{newest_worker}-{newest_write}"
    assert entry.last_updated == format_timestamp(_shared_key_time(newest_worker, newest_write))
