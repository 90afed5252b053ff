"""The typed state entry: parsed once on load, the same JSON on save, unknown fields kept."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from support.state_samples import ORCHESTRA_DOCUMENT

from airflow_provider_orchestra_dbt.state.errors import StateFormatError
from airflow_provider_orchestra_dbt.state.model import (
    EntryStatus,
    StateDocument,
    StateEntry,
    entries_to_json,
    validate_update,
)

T0 = "2025-01-01T00:00:00+00:00"
T1 = "2025-01-01T01:00:00+00:00"

OURS: dict[str, Any] = {
    "checksum": "sha",
    "checksum_parts": {"code": "a", "config": "b"},
    "execution_time": 1.5,
    "last_updated": T1,
    "run": {"run_id": "manual__1", "try_number": 2},
    "source_tokens": {"source.p.raw.b": "postgres_stats:7"},
    "sources": {"source.p.raw.a": T0},
    "status": "success",
    "unique_id": "model.p.m",
    "upstream": {"db.main.parent": T0},
}


def test_status_values_are_the_strings_written_before() -> None:
    assert [str(s) for s in EntryStatus] == ["success", "untested", "test_failed"]
    assert EntryStatus.SUCCESS == "success"
    assert EntryStatus.UNTESTED == "untested"
    assert EntryStatus.TEST_FAILED == "test_failed"


def test_every_field_is_parsed_into_its_attribute() -> None:
    entry = StateEntry.from_json(OURS)
    assert entry.checksum == "sha"
    assert entry.last_updated == T1
    assert entry.unique_id == "model.p.m"
    assert entry.status is EntryStatus.SUCCESS
    assert entry.sources == {"source.p.raw.a": T0}
    assert entry.source_tokens == {"source.p.raw.b": "postgres_stats:7"}
    assert entry.upstream == {"db.main.parent": T0}
    assert entry.checksum_parts == {"code": "a", "config": "b"}
    assert entry.execution_time == 1.5
    assert entry.run == {"run_id": "manual__1", "try_number": 2}
    assert entry.extra == {}


def test_round_trip_keeps_unknown_fields_and_writes_the_same_json() -> None:
    raw = {**OURS, "future_field": {"nested": [1, 2, 3]}, "orc_only": None}
    entry = StateEntry.from_json(raw)
    assert entry.extra == {"future_field": {"nested": [1, 2, 3]}, "orc_only": None}
    assert entry.to_json() == raw
    assert json.dumps(entry.to_json(), sort_keys=True) == json.dumps(raw, sort_keys=True)


def test_absent_fields_stay_absent() -> None:
    orc = ORCHESTRA_DOCUMENT["state"]["db.sch.m"]
    entry = StateEntry.from_json(orc)
    assert entry.status is None and entry.unique_id is None and entry.upstream is None
    assert entry.to_json() == orc
    assert "status" not in entry.to_json()


def test_a_status_of_another_tool_is_kept_as_written() -> None:
    entry = StateEntry.from_json({"checksum": "c", "status": "error"})
    assert entry.status == "error" and not isinstance(entry.status, EntryStatus)
    assert entry.to_json() == {"checksum": "c", "status": "error"}


def test_the_written_status_is_a_plain_string() -> None:
    entry = StateEntry("c", status=EntryStatus.TEST_FAILED)
    assert type(entry.to_json()["status"]) is str
    assert json.loads(json.dumps(entry.to_json())) == {"checksum": "c", "status": "test_failed"}


def test_entries_share_nothing_with_the_json_they_came_from_or_go_to() -> None:
    raw = copy.deepcopy(OURS)
    entry = StateEntry.from_json(raw)
    raw["sources"]["source.p.raw.a"] = "changed"
    assert entry.sources == {"source.p.raw.a": T0}
    written = entry.to_json()
    written["upstream"]["db.main.parent"] = "changed"
    assert entry.upstream == {"db.main.parent": T0}


def test_entries_are_immutable() -> None:
    entry = StateEntry.from_json(OURS)
    with pytest.raises(AttributeError):
        entry.checksum = "x"  # type: ignore[misc]


def test_with_status_changes_only_status_and_checksum() -> None:
    entry = StateEntry.from_json({**OURS, "future_field": 1})
    failed = entry.with_status(EntryStatus.TEST_FAILED, checksum="test_failed:sha")
    assert failed.to_json() == {
        **OURS,
        "future_field": 1,
        "status": "test_failed",
        "checksum": "test_failed:sha",
    }
    assert entry.with_status(EntryStatus.SUCCESS).checksum == "sha"


def test_an_update_keeps_the_stored_fields_it_lacks_known_or_not() -> None:
    stored = StateEntry.from_json({**OURS, "future_field": 1})
    update = StateEntry("new", last_updated=T1, status=EntryStatus.UNTESTED)
    merged = stored.updated_by(update)
    assert merged.to_json() == {
        **OURS,
        "future_field": 1,
        "checksum": "new",
        "status": "untested",
    }


def test_entries_compare_by_their_json_and_never_equal_a_dict() -> None:
    raw = {**OURS, "future_field": 1}
    entry = StateEntry.from_json(raw)
    assert entry == StateEntry.from_json(copy.deepcopy(raw))
    assert entry != StateEntry.from_json({**raw, "future_field": 2})
    assert entry != raw and raw != entry


def test_a_document_round_trip_is_byte_for_byte() -> None:
    raw = {
        "state": {
            "db.main.m": {**OURS, "future_field": {"x": [1]}},
            "model.p.orc": ORCHESTRA_DOCUMENT["state"]["db.sch.m"],
        },
        "version": 3,
    }
    first = StateDocument.from_json_bytes(json.dumps(raw).encode(), origin="o").to_json_bytes()
    assert json.loads(first) == raw
    again = StateDocument.from_json_bytes(first, origin="o")
    assert again.to_json_bytes() == first
    assert isinstance(again.entries["db.main.m"], StateEntry)
    assert again.entries["db.main.m"].extra == {"future_field": {"x": [1]}}


def test_validate_update_takes_entries_or_their_json_and_returns_entries() -> None:
    typed = StateEntry.from_json(OURS)
    parsed = validate_update({"a": typed, "b": {"checksum": "c"}}, origin="u")
    assert parsed == {"a": typed, "b": StateEntry("c")}
    assert all(isinstance(e, StateEntry) for e in parsed.values())
    assert entries_to_json(parsed) == {"a": OURS, "b": {"checksum": "c"}}


def test_validate_update_checks_typed_entries_too() -> None:
    with pytest.raises(StateFormatError, match="'execution_time': nan"):
        validate_update({"a": StateEntry("c", execution_time=float("nan"))}, origin="u")


def test_copies_and_pickles_are_equal_entries_sharing_nothing() -> None:
    entry = StateEntry.from_json(OURS)
    for other in (copy.copy(entry), copy.deepcopy(entry), pickle.loads(pickle.dumps(entry))):
        assert other == entry and other.status is EntryStatus.SUCCESS
    deep = copy.deepcopy(entry)
    assert deep.to_json() == OURS and deep.sources is not entry.sources
