"""LocalFileStateStore against real files."""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from support.state_samples import ORCHESTRA_DOCUMENT

from airflow_provider_orchestra_dbt.state import (
    LocalFileStateStore,
    StateDocument,
    StateError,
    StateFormatError,
    StateStore,
)
from airflow_provider_orchestra_dbt.state.model import entries_to_json

T0 = "2025-01-01T00:00:00+00:00"
T1 = "2025-01-01T01:00:00+00:00"


def _entry(checksum: str, last_updated: str = T0, **fields: object) -> dict[str, Any]:
    return {"checksum": checksum, "last_updated": last_updated, **fields}


def test_is_a_state_store(tmp_path: Path) -> None:
    store = LocalFileStateStore(tmp_path / "state.json")
    assert isinstance(store, StateStore)
    assert store.description == f"local file {tmp_path / 'state.json'}"


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = LocalFileStateStore("state.json")
    assert store.path == tmp_path / "state.json"


def test_missing_file_loads_empty(tmp_path: Path) -> None:
    store = LocalFileStateStore(tmp_path / "missing" / "state.json")
    assert store.load() == StateDocument.empty()
    assert not (tmp_path / "missing").exists()


def test_first_save_creates_file_and_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    store = LocalFileStateStore(path)

    returned = store.save({"k": _entry("abc")})

    assert json.loads(path.read_bytes()) == {"state": {"k": _entry("abc")}}
    assert entries_to_json(returned.entries) == {"k": _entry("abc")}
    assert store.load() == returned
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_save_leaves_only_data_and_lock_file(tmp_path: Path) -> None:
    store = LocalFileStateStore(tmp_path / "state.json")
    for index in range(3):
        store.save({f"k{index}": _entry(str(index))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.lock"]


def test_save_merges_with_stored_document(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "source_relation_types": {"DB.raw.orders": "view"},
                "state": {
                    "newer": _entry("stored", T1, future=1),
                    "older": _entry("stored", T0, future=2),
                    "other": _entry("stored", T0),
                },
            }
        )
    )
    store = LocalFileStateStore(path)

    store.save({"newer": _entry("update", T0), "older": _entry("update", T1), "new": _entry("n")})

    on_disk = json.loads(path.read_bytes())
    assert on_disk == {
        "source_relation_types": {"DB.raw.orders": "view"},
        "state": {
            "newer": _entry("stored", T1, future=1),
            "older": _entry("update", T1, future=2),
            "other": _entry("stored", T0),
            "new": _entry("n"),
        },
    }


def test_save_keeps_existing_permission_bits(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"state": {}}')
    path.chmod(0o600)
    LocalFileStateStore(path).save({"k": _entry("abc")})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_new_file_mode_ignores_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        LocalFileStateStore(tmp_path / "state.json").save({"k": _entry("abc")})
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o644


def test_orchestra_file_loads_and_survives_a_save(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(ORCHESTRA_DOCUMENT))
    store = LocalFileStateStore(path)
    assert entries_to_json(store.load().entries) == ORCHESTRA_DOCUMENT["state"]

    store.save({"db.sch.other": _entry("x")})
    stored = json.loads(path.read_bytes())["state"]
    assert stored["db.sch.m"] == ORCHESTRA_DOCUMENT["state"]["db.sch.m"]


INVALID_FILES = [
    pytest.param(b'{"state": {"a": ,}}', "is not valid JSON (line 1 column", id="not-json"),
    pytest.param(b"[1, 2]", "top level must be a JSON object", id="array"),
    pytest.param(b'{"state": []}', "'state' must be an object", id="state-array"),
    pytest.param(
        b'{"state": {"db.main.orders": {"checksum": "a", "last_updated": 5}}}',
        "entry 'db.main.orders': 'last_updated' must be an ISO-8601 string",
        id="bad-last-updated",
    ),
]


@pytest.mark.parametrize(("content", "problem"), INVALID_FILES)
def test_invalid_file_fails_load_and_save_without_being_touched(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    store = LocalFileStateStore(path)

    with pytest.raises(StateFormatError) as on_load:
        store.load()
    assert f"state file {path}" in str(on_load.value)
    assert problem in str(on_load.value)

    mtime = path.stat().st_mtime_ns
    with pytest.raises(StateFormatError) as on_save:
        store.save({"k": _entry("abc")})
    assert f"state file {path}" in str(on_save.value)
    assert problem in str(on_save.value)

    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.lock"]


@pytest.mark.parametrize(
    ("updates", "problem"),
    [
        pytest.param({"k": "abc"}, "entry 'k' must be an object", id="entry-not-object"),
        pytest.param({"k": {"last_updated": T0}}, "'checksum' is missing", id="no-checksum"),
        pytest.param(
            {"k": _entry("abc", "later")}, "'last_updated' must be an ISO-8601", id="bad-time"
        ),
        pytest.param(
            {"k": _entry("abc", execution_time=float("nan"))},
            "is not JSON-serialisable",
            id="nan",
        ),
        pytest.param(
            {"k": _entry("abc", run={"ids": {1, 2}})}, "is not JSON-serialisable", id="set"
        ),
        pytest.param(
            {"k": _entry("abc", run={"note": "\ud800"})},
            "is not JSON-serialisable",
            id="lone-surrogate",
        ),
        pytest.param(
            {"k": _entry("abc", run={1: "a", "b": "c"})},
            "is not JSON-serialisable",
            id="keys-that-do-not-sort",
        ),
    ],
)
def test_invalid_update_is_rejected_before_writing(
    tmp_path: Path, updates: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "state.json"
    store = LocalFileStateStore(path)
    store.save({"existing": _entry("abc")})
    before = path.read_bytes()

    with pytest.raises(StateFormatError) as info:
        store.save(updates)
    assert str(info.value).startswith(f"state update for local file {path}")
    assert problem in str(info.value)
    assert path.read_bytes() == before


def test_lock_timeout_names_the_lock_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = LocalFileStateStore(path, lock_timeout=0.2)
    store.save({"k": _entry("abc")})
    before = path.read_bytes()

    # flock locks belong to an open file description, so a second descriptor
    # in this same process contends exactly like another process would.
    fd = os.open(store.lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(StateError, match="waiting for lock file") as info:
            store.save({"k2": _entry("def")})
        elapsed = time.monotonic() - started
    finally:
        os.close(fd)

    assert str(store.lock_path) in str(info.value)
    assert not isinstance(info.value, StateFormatError)
    assert 0.2 <= elapsed < 5
    assert path.read_bytes() == before
    # Once the holder lets go, saving works again.
    store.save({"k2": _entry("def")})
    assert set(store.load().entries) == {"k", "k2"}


def test_load_does_not_need_the_lock(tmp_path: Path) -> None:
    store = LocalFileStateStore(tmp_path / "state.json")
    store.save({"k": _entry("abc")})
    fd = os.open(store.lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert set(store.load().entries) == {"k"}
    finally:
        os.close(fd)


def test_negative_lock_timeout_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lock_timeout"):
        LocalFileStateStore(tmp_path / "state.json", lock_timeout=-1)


def test_unreadable_location_raises_state_error_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()
    with pytest.raises(StateError, match=re.escape(str(path))):
        LocalFileStateStore(path).load()


def test_symlinked_state_file_is_updated_in_place(tmp_path: Path) -> None:
    real = tmp_path / "real" / "state.json"
    real.parent.mkdir()
    real.write_text('{"state": {}}')
    link = tmp_path / "state.json"
    link.symlink_to(real)
    store = LocalFileStateStore(link)

    store.save({"k": _entry("abc")})

    assert link.is_symlink()
    assert set(json.loads(real.read_bytes())["state"]) == {"k"}
    assert store.lock_path == real.with_name("state.json.lock")
