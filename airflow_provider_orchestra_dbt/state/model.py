"""The state document: its JSON shape, validation and the merge rule.

The document looks like::

    {"state": {"<key>": {"checksum": "...", "last_updated": "<ISO-8601>",
                         "sources": {"<source unique_id>": "<ISO-8601>"}}}}

which is the shape the ``dbt-orchestra`` tool writes, so both tools can keep their
entries in one document (under different keys: neither reuses the other's entries, see
decisions/planner.py). Entries may carry more fields (``upstream``, ``status``,
``execution_time``, ``run``, ``checksum_parts``, ``source_tokens``, ``unique_id``); fields and
top-level keys this version does not know about are carried through untouched
so that a newer writer's data survives a round trip through an older one.

A document is parsed once, where it is read (``StateDocument.from_json_bytes``): each entry
becomes a ``StateEntry`` (typed fields, unknown fields in ``extra``), written back as the same
JSON by ``StateDocument.to_json_bytes``. The statuses this package records are ``EntryStatus``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn

from airflow_provider_orchestra_dbt.state.errors import StateFormatError

__all__ = [
    "EntryStatus",
    "EntryUpdates",
    "StateDocument",
    "StateEntries",
    "StateEntry",
    "entries_to_json",
    "entry_timestamp",
    "format_timestamp",
    "is_newer",
    "merge_entries",
    "parse_timestamp",
    "validate_entries",
    "validate_update",
]

STATE_KEY = "state"


class EntryStatus(StrEnum):
    """The ``status`` this package records in an entry (the JSON values are these strings)."""

    SUCCESS = "success"
    """Built, and its tests passed or were not selected by a ``dbt build``."""
    UNTESTED = "untested"
    """Built by ``dbt run``: its tests have not run since."""
    TEST_FAILED = "test_failed"
    """An error-severity test failed after its last build: rebuilt on the next run."""


class StateEntry:
    """One node's entry in the state document, parsed once when the document is read.

    The attributes are the state format's fields; ``None`` means the field is absent from the
    JSON (a validated entry never holds ``null`` in them). ``extra`` holds every field this
    version does not know, e.g. ones a newer version or the dbt-orchestra tool writes, so they
    survive a round trip. ``status`` is an ``EntryStatus`` when it is one of ours, else the
    string as written.

    An entry is immutable. It keeps its validated JSON object and reads the fields from it on
    access: a state of many thousand entries is loaded, merged and saved on every run, and
    building typed copies of each entry there and back cost more than the whole plan's merge
    (design §4).
    """

    __slots__ = ("_json",)
    _json: dict[str, Any]

    def __init__(
        self,
        checksum: str,
        *,
        last_updated: str | None = None,
        unique_id: str | None = None,
        status: EntryStatus | str | None = None,
        sources: Mapping[str, str] | None = None,
        source_tokens: Mapping[str, str] | None = None,
        upstream: Mapping[str, str] | None = None,
        checksum_parts: Mapping[str, str] | None = None,
        execution_time: float | None = None,
        run: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        # Field by field rather than in a loop: outcomes build one entry per node built.
        raw: dict[str, Any] = dict(extra) if extra else {}
        raw["checksum"] = checksum
        if last_updated is not None:
            raw["last_updated"] = last_updated
        if unique_id is not None:
            raw["unique_id"] = unique_id
        if status is not None:
            raw["status"] = str(status)
        if sources is not None:
            raw["sources"] = dict(sources)
        if source_tokens is not None:
            raw["source_tokens"] = dict(source_tokens)
        if upstream is not None:
            raw["upstream"] = dict(upstream)
        if checksum_parts is not None:
            raw["checksum_parts"] = dict(checksum_parts)
        if execution_time is not None:
            raw["execution_time"] = execution_time
        if run is not None:
            raw["run"] = dict(run)
        object.__setattr__(self, "_json", raw)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StateEntry:
        """Parse a validated JSON entry (see ``validate_entries``); nothing is shared with it."""
        return cls._parse(_copy_json(dict(raw)))

    @classmethod
    def _parse(cls, raw: dict[str, Any]) -> StateEntry:
        # Takes ``raw`` over: only for validated objects nobody else holds.
        entry = object.__new__(cls)
        object.__setattr__(entry, "_json", raw)
        return entry

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"StateEntry is immutable: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StateEntry):
            return NotImplemented
        return self._json == other._json

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StateEntry({self._json!r})"

    def __reduce__(self) -> tuple[Callable[[dict[str, Any]], StateEntry], tuple[dict[str, Any]]]:
        # copy, deepcopy and pickle rebuild the entry from its JSON, not slot by slot
        # (which __setattr__ refuses).
        return StateEntry._parse, (self._json,)

    @property
    def checksum(self) -> str:
        value: str = self._json["checksum"]
        return value

    @property
    def last_updated(self) -> str | None:
        return self._json.get("last_updated")

    @property
    def unique_id(self) -> str | None:
        return self._json.get("unique_id")

    @property
    def status(self) -> EntryStatus | str | None:
        value = self._json.get("status")
        return _ENTRY_STATUSES.get(value, value) if value is not None else None

    @property
    def sources(self) -> Mapping[str, str] | None:
        """Source unique_id -> ISO-8601 freshness consumed (read by dbt-orchestra as well)."""
        return self._json.get("sources")

    @property
    def source_tokens(self) -> Mapping[str, str] | None:
        """Source unique_id -> ``"<method>:<token>"`` consumed (sources without loaded_at_field)."""
        return self._json.get("source_tokens")

    @property
    def upstream(self) -> Mapping[str, str] | None:
        """Parent state key -> the parent's ``last_updated`` this node consumed."""
        return self._json.get("upstream")

    @property
    def checksum_parts(self) -> Mapping[str, str] | None:
        return self._json.get("checksum_parts")

    @property
    def execution_time(self) -> float | None:
        return self._json.get("execution_time")

    @property
    def run(self) -> Mapping[str, Any] | None:
        return self._json.get("run")

    @property
    def extra(self) -> Mapping[str, Any]:
        """The fields this version does not know, as read."""
        return {name: value for name, value in self._json.items() if name not in _FIELD_NAMES}

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object, with the fields it was read with; a fresh copy."""
        result: dict[str, Any] = _copy_json(self._json)
        return result

    def updated_by(self, update: StateEntry) -> StateEntry:
        """``update``, keeping the fields of this entry that ``update`` does not carry."""
        return StateEntry._parse({**self._json, **update._json})

    def with_status(self, status: EntryStatus, *, checksum: str | None = None) -> StateEntry:
        """This entry with another status (and checksum, if given)."""
        changed = {**self._json, "status": str(status)}
        if checksum is not None:
            changed["checksum"] = checksum
        return StateEntry._parse(changed)


_FIELD_NAMES = frozenset(
    (
        "checksum",
        "last_updated",
        "unique_id",
        "status",
        "sources",
        "source_tokens",
        "upstream",
        "checksum_parts",
        "execution_time",
        "run",
    )
)
_ENTRY_STATUSES: dict[str | None, EntryStatus] = {str(status): status for status in EntryStatus}

StateEntries = dict[str, StateEntry]
"""Entries keyed by state key (e.g. ``"db.schema.model"``)."""

EntryUpdates = Mapping[str, StateEntry | Mapping[str, Any]]
"""What a store saves: ``StateEntry`` objects, or entries in their JSON form, by state key."""


def entries_to_json(entries: Mapping[str, StateEntry]) -> dict[str, dict[str, Any]]:
    """The JSON form of ``entries`` (the document's ``state`` object); a fresh copy."""
    return {key: entry.to_json() for key, entry in entries.items()}


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp into an aware ``datetime``.

    A trailing ``Z`` is accepted (the dbt-orchestra tool writes UTC that way)
    and a value without an offset is taken to be UTC, because comparing aware
    with naive datetimes raises and every timestamp here is compared.

    Raises:
        ValueError: ``value`` is not an ISO-8601 timestamp.
        TypeError: ``value`` is not a string.
    """
    if not isinstance(value, str):
        raise TypeError(f"timestamp must be a string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def format_timestamp(dt: datetime) -> str:
    """Render ``dt`` in UTC as ISO-8601 with an explicit ``+00:00`` offset.

    A naive ``dt`` is taken to be UTC, mirroring ``parse_timestamp``; calling
    ``astimezone`` on it directly would assume the host's local zone instead.
    """
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat()


def entry_timestamp(entry: StateEntry) -> datetime | None:
    """Return an entry's ``last_updated`` time, or ``None`` if absent or unusable."""
    value = entry.last_updated
    if not isinstance(value, str):
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def is_newer(a: StateEntry, b: StateEntry) -> bool:
    """Whether entry ``a`` was updated strictly later than entry ``b``.

    An entry without a usable ``last_updated`` counts as older than any entry
    that has one, so a damaged timestamp can never block a real update.
    """
    time_a = entry_timestamp(a)
    if time_a is None:
        return False
    time_b = entry_timestamp(b)
    return time_b is None or time_a > time_b


def merge_entries(
    current: Mapping[str, StateEntry], updates: Mapping[str, StateEntry]
) -> StateEntries:
    """Merge ``updates`` into ``current`` and return the result as a new mapping.

    Per key the entry with the newer ``last_updated`` wins, so a writer that
    finishes late with stale results can never roll state back. On a tie the
    update wins. When the update wins, stored fields it does not carry are
    kept, so fields added by other writers or newer versions are not dropped.

    Neither argument is modified; entries are immutable, so the result may share them.
    """
    merged = dict(current)
    for key, update in updates.items():
        stored = merged.get(key)
        if stored is None:
            merged[key] = update
        elif not is_newer(stored, update):
            merged[key] = stored.updated_by(update)
    return merged


def _copy_json(value: Any) -> Any:
    # State is plain JSON data: copying only dicts and lists is several times faster than
    # copy.deepcopy (no memo, no dispatch), which matters for states of many thousand nodes.
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    # bool before number: bool is an int subclass but a distinct JSON type.
    (bool, "boolean"),
    (int, "number"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def _json_type(value: object) -> str:
    # Errors describe values in JSON terms because the reader is looking at a
    # JSON file, not at Python objects.
    if value is None:
        return "null"
    for python_type, name in _JSON_TYPES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _check_timestamp_map(where: str, name: str, value: object) -> None:
    if not isinstance(value, dict):
        raise StateFormatError(
            f"{where}: {name!r} must be an object of ISO-8601 strings, got {_json_type(value)}"
        )
    for item_key, item in value.items():
        _check_iso(where, f"{name}[{item_key!r}]", item)


def _check_iso(where: str, label: str, value: object) -> None:
    if not isinstance(value, str):
        raise StateFormatError(
            f"{where}: {label} must be an ISO-8601 string, got {_json_type(value)}"
        )
    try:
        parse_timestamp(value)
    except ValueError:
        raise StateFormatError(
            f"{where}: {label} must be an ISO-8601 string, got {value!r}"
        ) from None


def _check_required(where: str, entry: dict[str, Any]) -> None:
    if "checksum" not in entry:
        raise StateFormatError(f"{where}: 'checksum' is missing")
    if not isinstance(entry["checksum"], str):
        raise StateFormatError(
            f"{where}: 'checksum' must be a string, got {_json_type(entry['checksum'])}"
        )

    # A missing last_updated is tolerated (the entry merely loses every merge)
    # but a present, garbled one points at corruption worth reporting.
    if "last_updated" in entry:
        _check_iso(where, "'last_updated'", entry["last_updated"])


def _check_optional(where: str, entry: dict[str, Any]) -> None:
    for name in ("sources", "upstream"):
        if name in entry:
            _check_timestamp_map(where, name, entry[name])

    for name in ("status", "unique_id"):
        if name in entry and not isinstance(entry[name], str):
            raise StateFormatError(
                f"{where}: {name!r} must be a string, got {_json_type(entry[name])}"
            )

    if "execution_time" in entry:
        value = entry["execution_time"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StateFormatError(
                f"{where}: 'execution_time' must be a number, got {_json_type(value)}"
            )

    if "run" in entry and not isinstance(entry["run"], dict):
        raise StateFormatError(f"{where}: 'run' must be an object, got {_json_type(entry['run'])}")

    # source_tokens: source unique_id -> "<method>:<token>" consumed (implicit freshness).
    for name in ("checksum_parts", "source_tokens"):
        parts = entry.get(name, {})
        if not isinstance(parts, dict) or not all(isinstance(v, str) for v in parts.values()):
            raise StateFormatError(f"{where}: {name!r} must be an object of strings")


def _check_entry(origin: str, key: str, entry: object) -> None:
    where = f"{origin}: entry {key!r}"
    if not isinstance(entry, dict):
        raise StateFormatError(f"{where} must be an object, got {_json_type(entry)}")
    _check_required(where, entry)
    _check_optional(where, entry)


def validate_entries(entries: object, *, origin: str) -> StateEntries:
    """Check that ``entries`` has the shape of the document's ``state`` object, and parse it.

    Only the fields this package relies on are checked; anything else in an
    entry is left alone so newer writers can add fields freely (``StateEntry.extra``).

    Raises:
        StateFormatError: naming ``origin`` and the offending entry and field.
    """
    checked = _check_entries(entries, origin=origin)
    return {key: StateEntry.from_json(entry) for key, entry in checked.items()}


def _check_entries(entries: object, *, origin: str) -> dict[str, dict[str, Any]]:
    if not isinstance(entries, dict):
        raise StateFormatError(f"{origin}: 'state' must be an object, got {_json_type(entries)}")
    for key, entry in entries.items():
        if not isinstance(key, str):
            raise StateFormatError(f"{origin}: entry key {key!r} must be a string")
        _check_entry(origin, key, entry)
    return entries


def validate_update(updates: object, *, origin: str) -> StateEntries:
    """Check, before any lock is taken or request made, that ``updates`` can be saved.

    ``updates`` maps state keys to ``StateEntry`` objects or to entries in their JSON form.
    Besides the shape, this catches values JSON cannot hold (NaN, a set, a
    lone surrogate, ...) so the error names the update rather than the store.

    Returns the updates as parsed entries.

    Raises:
        StateFormatError: naming ``origin`` and the problem.
    """
    owned: dict[str, StateEntry] = {}
    if isinstance(updates, Mapping):
        owned = {key: entry for key, entry in updates.items() if isinstance(entry, StateEntry)}
        updates = {
            key: entry._json if isinstance(entry, StateEntry) else entry
            for key, entry in updates.items()
        }
    raw = _check_entries(updates, origin=origin)
    try:
        # Same checks as the write but compact: without indent, json uses its
        # C encoder, many times faster for an update as large as a whole state.
        _encode(raw, indent=None)
    except (TypeError, ValueError) as exc:
        # json's own message names neither the entry nor the field, so the
        # culprit is looked for only now, keeping the common path fast.
        culprit = _find_non_json(raw)
        detail = culprit if culprit is not None else str(exc)
        raise StateFormatError(f"{origin} is not JSON-serialisable: {detail}") from None
    # Entries are immutable, so one that is already a StateEntry is kept as it is; a caller's
    # JSON object is copied, since the caller may change it later.
    return {
        key: owned[key] if key in owned else StateEntry.from_json(entry)
        for key, entry in raw.items()
    }


def _find_non_json(updates: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Describe the first value JSON cannot hold: ``entry 'k', field 'a.b[0]': why``."""
    for key, entry in updates.items():
        for path, problem in _non_json_values(entry, ""):
            field_name = path or "(the entry itself)"
            return f"entry {key!r}, field {field_name!r}: {problem}"
    return None


def _non_json_values(value: object, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield path, f"{value!r} is not a finite number, which JSON cannot hold"
    elif isinstance(value, str):
        if not _is_utf8_encodable(value):
            yield path, "string contains a lone surrogate and cannot be encoded as UTF-8"
    elif isinstance(value, dict):
        kinds = {type(item) for item in value}
        if len(kinds) > 1 and not kinds <= {str}:
            # Sorting the keys (for stable files) fails on mixed key types.
            names = ", ".join(sorted(kind.__name__ for kind in kinds))
            yield path, f"keys of mixed types ({names}) cannot be sorted"
        for name, item in value.items():
            if not isinstance(name, str | int | float | bool) and name is not None:
                yield path, f"key {name!r} of type {type(name).__name__} is not allowed in JSON"
            elif isinstance(name, str) and not _is_utf8_encodable(name):
                yield path, "a key contains a lone surrogate and cannot be encoded as UTF-8"
            yield from _non_json_values(item, f"{path}.{name}" if path else str(name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _non_json_values(item, f"{path}[{index}]")
    elif value is not None and not isinstance(value, bool | int | float):
        yield path, f"a value of type {type(value).__name__!r} cannot be stored in JSON"


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encode(value: object, *, indent: int | None) -> bytes:
    # Sorted keys so rewrites give small diffs; this is also what fails on
    # keys of mixed types, so the up-front check must sort as well.
    text = json.dumps(value, sort_keys=True, indent=indent, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _reject_constant(name: str) -> NoReturn:
    # NaN and Infinity are Python extensions to JSON that other readers (the
    # dbt-orchestra tool among them) reject, so they are not accepted either.
    raise ValueError(f"non-standard JSON constant {name}")


@dataclass(frozen=True)
class StateDocument:
    """A parsed state document: what a ``StateStore`` loads and saves.

    ``entries`` is the ``state`` object, parsed into ``StateEntry`` objects; ``extra`` holds
    every other top-level field, kept only so it can be written back unchanged.
    """

    entries: StateEntries = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> StateDocument:
        """A document with no entries, as used for a store that holds nothing yet."""
        return cls(entries={}, extra={})

    def merged(self, updates: Mapping[str, StateEntry]) -> StateDocument:
        """A new document with ``updates`` applied under the merge rule."""
        return StateDocument(
            entries=merge_entries(self.entries, updates), extra=copy.deepcopy(self.extra)
        )

    def to_json_bytes(self, *, compact: bool = False) -> bytes:
        """Serialise as indented UTF-8 JSON with sorted keys, so rewrites give small diffs.

        ``compact`` drops the indentation: about a third of the encoding time and size of a
        large document, for stores nobody reads by eye and whose writers race (S3, where a
        shorter read-merge-write round loses fewer conditional writes).

        Raises:
            ValueError: a value is NaN or infinite.
            TypeError: a value is not representable in JSON.
        """
        state = {key: entry._json for key, entry in self.entries.items()}
        return _encode({**self.extra, STATE_KEY: state}, indent=None if compact else 2)

    @classmethod
    def from_json_bytes(
        cls,
        data: bytes,
        *,
        origin: str,
        required: bool = False,
        keep: Callable[[str], bool] | None = None,
    ) -> StateDocument:
        """Parse and validate a document.

        ``origin`` describes where ``data`` came from (e.g. ``"state file
        /x/state.json"``) and starts every error message. An empty object, or
        input that is empty or only whitespace, is an empty state: neither
        holds anything a rewrite could lose. With ``required`` both are errors
        instead, for a source that always answers with a whole document, where
        an empty answer means something broke.

        ``keep`` selects by key the entries to keep. The others are dropped
        before validation, so entries the caller never uses cannot fail it.

        Raises:
            StateFormatError: ``data`` is not JSON or not shaped like a document.
        """
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise StateFormatError(f"{origin} is not valid UTF-8: {exc}") from None
        if not text.strip():
            if required:
                raise StateFormatError(f"{origin} is empty")
            return cls.empty()
        try:
            raw = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise StateFormatError(
                f"{origin} is not valid JSON (line {exc.lineno} column {exc.colno}): {exc.msg}"
            ) from None
        except ValueError as exc:
            raise StateFormatError(f"{origin} is not valid JSON: {exc}") from None

        if not isinstance(raw, dict):
            raise StateFormatError(
                f"{origin}: top level must be a JSON object, got {_json_type(raw)}"
            )
        if not raw and not required:
            return cls.empty()
        if STATE_KEY not in raw:
            raise StateFormatError(f"{origin}: top-level 'state' object is missing")
        entries = raw[STATE_KEY]
        if keep is not None and isinstance(entries, dict):
            entries = {key: entry for key, entry in entries.items() if keep(key)}
        # Freshly decoded, so owned by nobody else: parsed without the copy validate_entries
        # makes of a caller's dicts (a third of the load time of a large state).
        entries = {
            key: StateEntry._parse(entry)
            for key, entry in _check_entries(entries, origin=origin).items()
        }
        extra = {key: value for key, value in raw.items() if key != STATE_KEY}
        return cls(entries=entries, extra=extra)
