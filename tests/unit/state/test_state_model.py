"""Timestamps, document parsing/serialisation and the merge rule."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from support.state_samples import ORCHESTRA_DOCUMENT

from airflow_provider_orchestra_dbt.state import (
    StateDocument,
    StateEntries,
    StateFormatError,
    format_timestamp,
    is_newer,
    merge_entries,
    parse_timestamp,
)
from airflow_provider_orchestra_dbt.state.model import StateEntry, entries_to_json

ORIGIN = "state file /x/state.json"


def _bytes(document: object) -> bytes:
    return json.dumps(document).encode()


# --- timestamps -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-01T00:00:00Z", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-01-01T00:00:00+00:00", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-01-01T00:00:00", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-01-01T00:00:00.123456Z", datetime(2025, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2025-01-01T02:00:00+02:00", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2024-12-31T19:00:00-05:00", datetime(2025, 1, 1, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_is_aware_and_equal_across_notations(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed.tzinfo is not None
    assert parsed == expected


def test_parse_timestamp_keeps_the_given_offset() -> None:
    parsed = parse_timestamp("2025-01-01T02:00:00+02:00")
    assert parsed.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("text", ["", "yesterday", "2025-13-01T00:00:00Z", "1735689600"])
def test_parse_timestamp_rejects_non_iso(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_timestamp(text)


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        (datetime(2025, 1, 1, tzinfo=UTC), "2025-01-01T00:00:00+00:00"),
        (datetime(2025, 1, 1), "2025-01-01T00:00:00+00:00"),
        (
            datetime(2025, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2))),
            "2025-01-01T00:00:00+00:00",
        ),
        (datetime(2025, 1, 1, 0, 0, 0, 500, tzinfo=UTC), "2025-01-01T00:00:00.000500+00:00"),
    ],
)
def test_format_timestamp_renders_utc(dt: datetime, expected: str) -> None:
    assert format_timestamp(dt) == expected


def test_format_then_parse_round_trips() -> None:
    now = datetime.now(UTC)
    assert parse_timestamp(format_timestamp(now)) == now


# --- documents ------------------------------------------------------------


def test_orchestra_document_loads() -> None:
    document = StateDocument.from_json_bytes(_bytes(ORCHESTRA_DOCUMENT), origin=ORIGIN)
    assert entries_to_json(document.entries) == ORCHESTRA_DOCUMENT["state"]
    assert document.extra == {}


def test_round_trip_preserves_unknown_top_level_and_entry_fields() -> None:
    raw: dict[str, Any] = copy.deepcopy(ORCHESTRA_DOCUMENT)
    raw["source_relation_types"] = {"DB.raw.orders": "view"}
    raw["version"] = 7
    entry = raw["state"]["db.sch.m"]
    entry["future_field"] = {"nested": [1, 2, 3]}
    entry.update(
        upstream={"db.sch.parent": "2025-01-01T00:00:00+00:00"},
        status="success",
        execution_time=1.5,
        run={"run_id": "manual__1", "try": 2},
        checksum_parts={"sql": "x", "config": "y"},
        unique_id="model.p.m",
    )

    document = StateDocument.from_json_bytes(_bytes(raw), origin=ORIGIN)
    assert document.extra == {"source_relation_types": {"DB.raw.orders": "view"}, "version": 7}
    again = StateDocument.from_json_bytes(document.to_json_bytes(), origin=ORIGIN)
    assert json.loads(again.to_json_bytes()) == raw


def test_to_json_bytes_is_sorted_indented_utf8_with_trailing_newline() -> None:
    document = StateDocument(
        entries={"b": StateEntry("é", last_updated="2025-01-01T00:00:00+00:00")},
        extra={"z": 1, "a": 2},
    )
    data = document.to_json_bytes()
    assert data.endswith(b"}\n")
    assert "é".encode() in data
    text = data.decode("utf-8")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert text.index('"a"') < text.index('"state"') < text.index('"z"')


def test_compact_json_bytes_are_one_line_with_the_same_content() -> None:
    document = StateDocument(
        entries={"b": StateEntry("é", last_updated="2025-01-01T00:00:00+00:00")},
        extra={"z": 1},
    )
    compact = document.to_json_bytes(compact=True)
    assert compact.count(b"\n") == 1 and compact.endswith(b"}\n")
    assert len(compact) < len(document.to_json_bytes())
    assert StateDocument.from_json_bytes(compact, origin=ORIGIN) == document


@pytest.mark.parametrize("data", [b"{}", b"", b"  \n", b'{"state": {}}'])
def test_empty_documents_are_empty_state(data: bytes) -> None:
    document = StateDocument.from_json_bytes(data, origin=ORIGIN)
    assert document.entries == {}


def test_utf8_bom_is_tolerated() -> None:
    data = b"\xef\xbb\xbf" + _bytes(ORCHESTRA_DOCUMENT)
    document = StateDocument.from_json_bytes(data, origin=ORIGIN)
    assert entries_to_json(document.entries) == ORCHESTRA_DOCUMENT["state"]


def test_entry_without_last_updated_loads() -> None:
    raw = {"state": {"k": {"checksum": "abc"}}}
    document = StateDocument.from_json_bytes(_bytes(raw), origin=ORIGIN)
    assert document.entries == {"k": StateEntry("abc")}
    assert document.entries["k"].last_updated is None


def _with_entry(**fields: object) -> bytes:
    entry: dict[str, Any] = {"checksum": "abc", "last_updated": "2025-01-01T00:00:00Z"}
    entry.update(fields)
    return _bytes({"state": {"db.main.orders": entry}})


INVALID_DOCUMENTS: list[tuple[str, bytes, str]] = [
    ("not-json", b'{"state": {\n  "a": ,\n}', "is not valid JSON (line 2 column"),
    ("truncated", b'{"state": {"a": {"checksum": "x"', "is not valid JSON"),
    ("nan", b'{"state": {}, "x": NaN}', "is not valid JSON: non-standard JSON constant NaN"),
    ("not-utf8", b'{"state": {"\xff": 1}}', "is not valid UTF-8"),
    ("top-level-array", b"[]", "top level must be a JSON object, got array"),
    ("top-level-string", b'"state"', "top level must be a JSON object, got string"),
    ("state-missing", b'{"version": 1}', "'state' object is missing"),
    ("state-array", b'{"state": []}', "'state' must be an object, got array"),
    ("state-null", b'{"state": null}', "'state' must be an object, got null"),
    ("entry-string", b'{"state": {"db.main.orders": "abc"}}', "entry 'db.main.orders' must be"),
    ("checksum-missing", _bytes({"state": {"db.main.orders": {}}}), "'checksum' is missing"),
    ("checksum-number", _with_entry(checksum=3), "'checksum' must be a string, got number"),
    ("checksum-null", _with_entry(checksum=None), "'checksum' must be a string, got null"),
    (
        "last-updated-number",
        _with_entry(last_updated=1735689600),
        "entry 'db.main.orders': 'last_updated' must be an ISO-8601 string, got number",
    ),
    (
        "last-updated-garbage",
        _with_entry(last_updated="yesterday"),
        "entry 'db.main.orders': 'last_updated' must be an ISO-8601 string, got 'yesterday'",
    ),
    ("sources-array", _with_entry(sources=["a"]), "'sources' must be an object"),
    (
        "sources-value-number",
        _with_entry(sources={"source.p.raw.orders": 5}),
        "sources['source.p.raw.orders'] must be an ISO-8601 string, got number",
    ),
    (
        "sources-value-garbage",
        _with_entry(sources={"source.p.raw.orders": "soon"}),
        "sources['source.p.raw.orders'] must be an ISO-8601 string, got 'soon'",
    ),
    ("upstream-string", _with_entry(upstream="x"), "'upstream' must be an object"),
    (
        "upstream-value-null",
        _with_entry(upstream={"db.main.parent": None}),
        "upstream['db.main.parent'] must be an ISO-8601 string, got null",
    ),
    ("status-number", _with_entry(status=1), "'status' must be a string"),
    ("unique-id-array", _with_entry(unique_id=[]), "'unique_id' must be a string"),
    ("execution-time-string", _with_entry(execution_time="1s"), "'execution_time' must be a num"),
    ("execution-time-bool", _with_entry(execution_time=True), "'execution_time' must be a num"),
    ("run-array", _with_entry(run=[]), "'run' must be an object"),
    ("checksum-parts-mixed", _with_entry(checksum_parts={"a": 1}), "'checksum_parts' must be"),
]


@pytest.mark.parametrize(
    ("data", "problem"),
    [pytest.param(data, problem, id=name) for name, data, problem in INVALID_DOCUMENTS],
)
def test_invalid_documents_raise_naming_origin_and_problem(data: bytes, problem: str) -> None:
    with pytest.raises(StateFormatError) as info:
        StateDocument.from_json_bytes(data, origin=ORIGIN)
    message = str(info.value)
    assert message.startswith(ORIGIN)
    assert problem in message


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"{}", "top-level 'state' object is missing"),
    ],
)
def test_required_document_may_not_be_empty(data: bytes, problem: str) -> None:
    with pytest.raises(StateFormatError, match=f"^{re.escape(ORIGIN)}.*{problem}"):
        StateDocument.from_json_bytes(data, origin=ORIGIN, required=True)


def test_keep_drops_entries_before_validation() -> None:
    raw = {"state": {"mine.a": {"checksum": "a"}, "theirs.b": {"checksum": 7}}, "version": 1}
    document = StateDocument.from_json_bytes(
        _bytes(raw), origin=ORIGIN, keep=lambda key: key.startswith("mine.")
    )
    assert document == StateDocument(entries={"mine.a": StateEntry("a")}, extra={"version": 1})


def test_merged_document_keeps_extra_and_does_not_mutate_original() -> None:
    document = StateDocument.from_json_bytes(
        _bytes({**ORCHESTRA_DOCUMENT, "version": 1}), origin=ORIGIN
    )
    before = document.to_json_bytes()
    update = {"new": StateEntry("n", last_updated="2025-02-01T00:00:00Z")}
    merged = document.merged(update)
    assert merged.extra == {"version": 1}
    assert set(merged.entries) == {"db.sch.m", "new"}
    assert document.to_json_bytes() == before


# --- merge rule -----------------------------------------------------------

T0 = "2025-01-01T00:00:00+00:00"
T1 = "2025-01-01T01:00:00+00:00"
T1_OTHER_ZONE = "2025-01-01T03:00:00+02:00"  # same instant as T1


def _entry(checksum: str, last_updated: str | None, **fields: object) -> dict[str, Any]:
    entry: dict[str, Any] = {"checksum": checksum, **fields}
    if last_updated is not None:
        entry["last_updated"] = last_updated
    return entry


def _parsed(entries: dict[str, dict[str, Any]]) -> StateEntries:
    return {key: StateEntry.from_json(entry) for key, entry in entries.items()}


MERGE_CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # (id, stored entry "s", update "u", entry after the merge)
    ("newer-update-wins", _entry("s", T0), _entry("u", T1), _entry("u", T1)),
    ("older-update-never-replaces", _entry("s", T1), _entry("u", T0), _entry("s", T1)),
    ("tie-update-wins", _entry("s", T1), _entry("u", T1), _entry("u", T1)),
    ("tie-across-zones", _entry("s", T1), _entry("u", T1_OTHER_ZONE), _entry("u", T1_OTHER_ZONE)),
    ("stored-missing-timestamp-is-oldest", _entry("s", None), _entry("u", T0), _entry("u", T0)),
    ("stored-garbage-timestamp-is-oldest", _entry("s", "junk"), _entry("u", T0), _entry("u", T0)),
    ("update-missing-timestamp-loses", _entry("s", T0), _entry("u", None), _entry("s", T0)),
    ("both-missing-is-a-tie", _entry("s", None, a=1), _entry("u", None), _entry("u", None, a=1)),
    (
        "unknown-stored-fields-kept",
        _entry("s", T0, future={"x": 1}, status="success"),
        _entry("u", T1, status="test_failed"),
        _entry("u", T1, future={"x": 1}, status="test_failed"),
    ),
]


@pytest.mark.parametrize(
    ("stored", "update", "expected"),
    [pytest.param(*case, id=name) for name, *case in MERGE_CASES],
)
def test_merge_rule(
    stored: dict[str, Any], update: dict[str, Any], expected: dict[str, Any]
) -> None:
    current = _parsed({"k": stored, "untouched": _entry("u", T0)})
    merged = merge_entries(current, _parsed({"k": update}))
    assert {key: entry.to_json() for key, entry in merged.items()} == {
        "k": expected,
        "untouched": _entry("u", T0),
    }


def test_merge_adds_new_keys() -> None:
    merged = merge_entries(_parsed({"a": _entry("a", T0)}), _parsed({"b": _entry("b", T0)}))
    assert entries_to_json(merged) == {"a": _entry("a", T0), "b": _entry("b", T0)}


def test_merge_is_pure() -> None:
    current = _parsed({"k": _entry("old", T0, sources={"s": T0})})
    updates = _parsed({"k": _entry("new", T1, sources={"s": T1}), "n": _entry("n", T0)})
    current_before, updates_before = entries_to_json(current), entries_to_json(updates)

    merged = merge_entries(current, updates)
    merged["k"] = StateEntry("mutated")

    assert entries_to_json(current) == current_before
    assert entries_to_json(updates) == updates_before


def test_is_newer() -> None:
    def entry(checksum: str, last_updated: str | None) -> StateEntry:
        return StateEntry(checksum, last_updated=last_updated)

    assert is_newer(entry("a", T1), entry("b", T0))
    assert not is_newer(entry("a", T0), entry("b", T1))
    assert not is_newer(entry("a", T1), entry("b", T1_OTHER_ZONE))
    assert is_newer(entry("a", T0), entry("b", None))
    assert not is_newer(entry("a", None), entry("b", T0))
    assert not is_newer(entry("a", None), entry("b", None))


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("run", "field", "problem"),
    [
        ({"x": float("nan")}, "run.x", "nan is not a finite number"),
        ({"x": [1, {"y": float("inf")}]}, "run.x[1].y", "inf is not a finite number"),
        ({"ids": {1, 2}}, "run.ids", "a value of type 'set' cannot be stored in JSON"),
        ({"raw": b"x"}, "run.raw", "a value of type 'bytes' cannot be stored in JSON"),
        ({"obj": _Opaque()}, "run.obj", "a value of type '_Opaque' cannot be stored in JSON"),
        ({"note": "\ud800"}, "run.note", "lone surrogate"),
        ({"m": {1: "a", "b": "c"}}, "run.m", "keys of mixed types (int, str) cannot be sorted"),
    ],
)
def test_a_value_json_cannot_hold_is_named_by_entry_and_field(
    run: dict[str, Any], field: str, problem: str
) -> None:
    from airflow_provider_orchestra_dbt.state.model import validate_update

    update = {"db.main.m": {"checksum": "c", "last_updated": T0, "run": run}}
    with pytest.raises(StateFormatError) as info:
        validate_update(update, origin="state update for X")
    message = str(info.value)
    assert message.startswith(
        f"state update for X is not JSON-serialisable: entry 'db.main.m', field {field!r}: "
    )
    assert problem in message


def test_nan_in_a_checked_field_is_named_too() -> None:
    from airflow_provider_orchestra_dbt.state.model import validate_update

    update = {"db.main.m": {"checksum": "c", "execution_time": float("nan")}}
    with pytest.raises(StateFormatError, match=r"entry 'db.main.m', field 'execution_time': nan"):
        validate_update(update, origin="u")
