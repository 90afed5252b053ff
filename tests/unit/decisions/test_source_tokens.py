"""Implicit source freshness: the planner's token rule, what outcomes record, the protocol,
the state field, the worker's meta option and dbt's metadata path (through a stub adapter:
no warehouse with metadata freshness runs here)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from dbt.adapters.base.relation import BaseRelation
from dbt.adapters.capability import Capability
from dbt.adapters.contracts.relation import RelationType
from dbt.artifacts.resources import SourceConfig
from dbt.contracts.graph.nodes import SourceDefinition
from dbt.node_types import NodeType
from support.synthetic_graph import (
    LOADED,
    M1,
    NOW,
    SRC_A,
    SRC_B,
    STG,
    base_graph,
    clean_state,
    fingerprints,
    key,
)

from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult, state_updates
from airflow_provider_orchestra_dbt.decisions.planner import (
    SOURCE_METHODS,
    Action,
    PlanOptions,
    Probe,
    SourceFreshness,
    plan,
)
from airflow_provider_orchestra_dbt.state.errors import StateFormatError
from airflow_provider_orchestra_dbt.state.model import (
    StateEntry,
    entries_to_json,
    validate_entries,
)
from airflow_provider_orchestra_dbt.worker import dbt_worker as worker


def pg_token(token: str) -> SourceFreshness:
    return SourceFreshness(None, None, "postgres_stats", token)


def decide(source_a: SourceFreshness, **entry_fields: Any) -> tuple[Action, str]:
    """STG's decision; STG reads source a only."""
    graph = base_graph()
    state = clean_state(graph)
    state[key(STG)].update(entry_fields)
    parsed = {k: StateEntry.from_json(e) for k, e in state.items()}
    probe = Probe({SRC_A: source_a, SRC_B: SourceFreshness(LOADED)}, {})
    decision = plan(graph, [STG], parsed, fingerprints(), probe, PlanOptions(now=NOW)).by_id[STG]
    return decision.action, decision.reason


# -- planner ----------------------------------------------------------------------------------


def test_a_token_equal_to_the_consumed_one_is_no_new_data() -> None:
    action, reason = decide(pg_token("t1"), source_tokens={SRC_A: "postgres_stats:t1"})
    assert (action, reason) == (Action.REUSE, "up to date: code unchanged and no new upstream data")


def test_any_other_token_is_a_change_named_by_its_method() -> None:
    # A counter that went down (reset) is as much a change as one that went up.
    action, reason = decide(pg_token("ins=0"), source_tokens={SRC_A: "postgres_stats:ins=9"})
    assert action is Action.BUILD
    assert reason == "source raw.a changed since last consumed (postgres table statistics)"


def test_a_token_never_consumed_builds() -> None:
    action, reason = decide(SourceFreshness(None, None, "duckdb_hash", "t1"), source_tokens={})
    assert action is Action.BUILD
    assert reason == (
        "source raw.a was never consumed by this node (no duckdb content hash recorded)"
    )


def test_a_token_of_another_method_is_a_change() -> None:
    fresh = SourceFreshness(None, None, "duckdb_hash", "t1")
    action, reason = decide(fresh, source_tokens={SRC_A: "postgres_stats:t1"})
    assert (action, reason) == (
        Action.BUILD,
        "source raw.a changed since last consumed (duckdb content hash)",
    )


def test_a_consumed_timestamp_does_not_stand_for_a_token() -> None:
    action, reason = decide(pg_token("t1"))  # the entry has only sources: {SRC_A: LOADED}
    assert action is Action.BUILD and "was never consumed by this node" in reason


def test_metadata_freshness_is_a_timestamp_named_by_its_method() -> None:
    modified = LOADED + timedelta(hours=1)
    action, reason = decide(SourceFreshness(modified, None, "metadata"))
    assert action is Action.BUILD
    assert reason == (
        f"new data in source raw.a (warehouse metadata: modified at {modified.isoformat()}, "
        f"consumed up to {LOADED.isoformat()})"
    )
    assert decide(SourceFreshness(LOADED, None, "metadata"))[0] is Action.REUSE


def test_unknown_stays_new_data_with_the_workers_reason() -> None:
    action, reason = decide(SourceFreshness(None, "it is a view: hashing it runs its query"))
    assert action is Action.BUILD
    assert (
        reason == "freshness of source raw.a is unknown (it is a view: hashing it runs its query)"
    )


def test_every_worker_method_has_a_label() -> None:
    methods = {worker.METHOD_METADATA, worker.METHOD_POSTGRES, worker.METHOD_DUCKDB}
    assert methods == set(SOURCE_METHODS)


# -- protocol, outcomes, state ----------------------------------------------------------------


def test_probe_message_carries_method_and_token_and_old_messages_still_parse() -> None:
    probe = Probe.from_message(
        {
            "freshness": {
                SRC_A: {
                    "max_loaded_at": None,
                    "error": None,
                    "method": "duckdb_hash",
                    "token": "x",
                },
                SRC_B: {"max_loaded_at": LOADED.isoformat(), "error": None},
            }
        }
    )
    assert probe.freshness[SRC_A] == SourceFreshness(None, None, "duckdb_hash", "x")
    assert probe.freshness[SRC_A].consumed_token == "duckdb_hash:x"
    assert probe.freshness[SRC_B] == SourceFreshness(LOADED)
    assert probe.freshness[SRC_B].consumed_token is None


def test_built_nodes_record_tokens_apart_from_timestamps() -> None:
    graph = base_graph()
    probe = Probe({SRC_A: pg_token("t1"), SRC_B: SourceFreshness(LOADED)}, {})
    the_plan = plan(graph, [STG, M1], {}, fingerprints(), probe, PlanOptions(now=NOW))
    results = {u: NodeResult(u, "success", 1.0, NOW.isoformat()) for u in (STG, M1)}
    updates = state_updates(graph, the_plan, results, {}, probe).updates
    stg, m1 = updates[key(STG)], updates[key(M1)]
    assert (stg.sources, stg.source_tokens) == ({}, {SRC_A: "postgres_stats:t1"})
    # Written even when empty, so a merge cannot keep a stale token under a new entry.
    assert (m1.sources, m1.source_tokens) == ({SRC_B: LOADED.isoformat()}, {})
    assert entries_to_json(updates)[key(M1)]["source_tokens"] == {}
    validate_entries(entries_to_json(updates), origin="test")


def test_state_rejects_source_tokens_that_are_not_strings() -> None:
    entry = {"checksum": "c", "source_tokens": {SRC_A: 3}}
    with pytest.raises(StateFormatError, match="'source_tokens' must be an object of strings"):
        validate_entries({"k": entry}, origin="state file s.json")


# -- the worker: options and dbt's metadata path ----------------------------------------------


def source(name: str, meta: dict[str, Any] | None = None) -> SourceDefinition:
    return SourceDefinition(
        database="db",
        schema="raw",
        name=name,
        identifier=name,
        resource_type=NodeType.Source,
        package_name="p",
        path="models/sources.yml",
        original_file_path="models/sources.yml",
        unique_id=f"source.p.raw.{name}",
        fqn=["p", "raw", name],
        source_name="raw",
        source_description="",
        loader="",
        meta=meta or {},
        config=SourceConfig(),
    )


def opt(value: Any) -> dict[str, Any]:
    return {"orchestra_dbt": {"implicit_freshness": value}}


@pytest.mark.parametrize(
    ("meta", "expected"),
    [({}, None), ({"orchestra_dbt": {}}, None), (opt(True), True), (opt(False), False)],
)
def test_the_implicit_freshness_option(meta: dict[str, Any], expected: bool | None) -> None:
    assert worker.source_option(source("a", meta), worker.IMPLICIT_FRESHNESS) is expected


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        (opt("yes"), "meta orchestra_dbt.implicit_freshness must be true or false, got 'yes'"),
        (opt(1), "meta orchestra_dbt.implicit_freshness must be true or false, got 1"),
        ({"orchestra_dbt": "off"}, "meta orchestra_dbt must be a mapping, got 'off'"),
    ],
)
def test_a_bad_option_leaves_that_source_unknown(meta: dict[str, Any], error: str) -> None:
    result = worker.implicit_freshness(None, [source("a", meta)], manifest=None)
    assert result == {"source.p.raw.a": {"max_loaded_at": None, "error": error}}


class MetadataAdapter:
    """Stands in for an adapter with dbt's metadata freshness (Snowflake, BigQuery, ...)."""

    Relation = BaseRelation

    def __init__(
        self,
        modified: dict[str, datetime | None],
        views: tuple[str, ...] = (),
        batch: bool = True,
        batch_fails: bool = False,
        unreadable: tuple[str, ...] = (),
    ) -> None:
        self.config = SimpleNamespace(quoting={})
        self.modified = modified
        self.views = views
        self.batch = batch
        self.batch_fails = batch_fails
        self.unreadable = unreadable
        self.calls: list[tuple[str, list[str]]] = []

    def supports(self, capability: Capability) -> bool:
        if capability is Capability.TableLastModifiedMetadataBatch:
            return self.batch
        return capability is Capability.TableLastModifiedMetadata

    def type(self) -> str:
        return "snowflake"

    @contextmanager
    def connection_named(self, name: str) -> Iterator[None]:
        yield

    def list_relations_without_caching(self, schema: BaseRelation) -> list[BaseRelation]:
        def listed(name: str, kind: RelationType) -> BaseRelation:
            return BaseRelation.create(schema.database, schema.schema, name, type=kind)

        tables = [listed(n, RelationType.Table) for n in self.modified]
        return tables + [listed(n, RelationType.View) for n in self.views]

    def calculate_freshness_from_metadata_batch(
        self, sources: list[BaseRelation], macro_resolver: Any = None
    ) -> tuple[list[None], dict[BaseRelation, dict[str, Any]]]:
        self.calls.append(("batch", [str(r.identifier) for r in sources]))
        if self.batch_fails:
            raise RuntimeError("batch metadata query failed")
        return [None], {r: self._response(r) for r in sources}

    def calculate_freshness_from_metadata(
        self, source: BaseRelation, macro_resolver: Any = None
    ) -> tuple[None, dict[str, Any]]:
        self.calls.append(("single", [str(source.identifier)]))
        if source.identifier in self.unreadable:
            raise RuntimeError("permission denied for table")
        return None, self._response(source)

    def _response(self, relation: BaseRelation) -> dict[str, Any]:
        # dbt's own convention: no last-modified time becomes the year 1.
        modified = self.modified[str(relation.identifier)] or datetime(1, 1, 1, tzinfo=UTC)
        return {"max_loaded_at": modified, "snapshotted_at": NOW, "age": 0.0}


def errors(result: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    return {uid.rsplit(".", 1)[-1]: r["error"] for uid, r in result.items()}


def test_metadata_freshness_measures_tables_in_one_batch() -> None:
    adapter = MetadataAdapter({"a": LOADED, "b": None}, views=("v",))
    sources = [source(n) for n in ("a", "b", "v", "gone")] + [source("off", opt(False))]
    result = worker.implicit_freshness(adapter, sources, manifest=None)
    assert result["source.p.raw.a"] == {
        "max_loaded_at": LOADED.isoformat(),
        "error": None,
        "method": "metadata",
    }
    assert errors(result) == {
        "a": None,
        "b": "the warehouse metadata has no last-modified time for it",
        "v": "it is a view: its metadata does not show its data change",
        "gone": '"db"."raw"."gone" was not found in the warehouse',
        "off": "it has no loaded_at_field and meta orchestra_dbt.implicit_freshness is false",
    }
    assert adapter.calls == [("batch", ["a", "b"])]


@pytest.mark.parametrize("batch", ["fails", "unsupported"])
def test_metadata_freshness_falls_back_to_one_query_per_source(batch: str) -> None:
    adapter = MetadataAdapter(
        {"a": LOADED, "b": LOADED},
        batch=batch == "fails",
        batch_fails=batch == "fails",
        unreadable=("b",),
    )
    result = worker.implicit_freshness(adapter, [source("a"), source("b")], manifest=None)
    assert errors(result) == {
        "a": None,
        "b": "warehouse metadata unreadable: permission denied for table",
    }
    assert [c for c in adapter.calls if c[0] == "single"] == [("single", ["a"]), ("single", ["b"])]


def test_a_failing_listing_leaves_every_source_unknown_and_the_run_goes_on() -> None:
    adapter = MetadataAdapter({"a": LOADED})

    def refuse(schema: BaseRelation) -> list[BaseRelation]:
        raise RuntimeError("insufficient privileges on schema raw")

    adapter.list_relations_without_caching = refuse  # type: ignore[method-assign]
    result = worker.implicit_freshness(adapter, [source("a")], manifest=None)
    assert errors(result) == {
        "a": "implicit freshness failed: insufficient privileges on schema raw"
    }


def test_adapters_without_a_method_say_so() -> None:
    class Sqlite(MetadataAdapter):
        def supports(self, capability: Capability) -> bool:
            return False

        def type(self) -> str:
            return "sqlite"

    result = worker.implicit_freshness(Sqlite({}), [source("a")], manifest=None)
    assert errors(result)["a"] == (
        "it has no loaded_at_field, and implicit freshness is not available on sqlite"
        " (no warehouse metadata for it in dbt)"
    )
    assert errors(worker.implicit_freshness(None, [source("a")], None)) == {
        "a": "no dbt adapter registered"
    }


# -- the worker: turning catalog rows into tokens ---------------------------------------------

RELATION = BaseRelation.create("db", "raw", "a")


def pg_row(kind: str | None = "r", database: str = "db", track: str = "on") -> tuple[Any, ...]:
    return (1, database, track, kind, 16384, 8192, 10, 2, 1, "id integer, name text")


def test_postgres_token_is_the_catalog_and_counters() -> None:
    result = worker._postgres_result(RELATION, pg_row())
    assert result["method"] == "postgres_stats" and result["error"] is None
    assert result["token"].startswith("relfilenode=16384;size=8192;ins=10;upd=2;del=1;columns=")
    renamed = worker._postgres_result(RELATION, (*pg_row()[:-1], "id integer, label text"))
    assert renamed["token"] != result["token"]


@pytest.mark.parametrize(
    ("row", "error"),
    [
        (pg_row("v"), "it is a view: table statistics do not show its data change"),
        (pg_row("p"), "it is a partitioned table: table statistics do not show its data change"),
        (pg_row(None), '"db"."raw"."a" was not found in the warehouse'),
        (pg_row(database="other"), "it is in database db, not other"),
        (pg_row(track="off"), "the server's track_counts is off, so table statistics never change"),
    ],
)
def test_postgres_cannot_measure(row: tuple[Any, ...], error: str) -> None:
    assert worker._postgres_result(RELATION, row) == {"max_loaded_at": None, "error": error}


@pytest.mark.parametrize(
    ("found", "error"),
    [
        (None, '"db"."raw"."a" was not found in the warehouse'),
        (
            ("view", None, "id INTEGER"),
            "it is a view: hashing it runs its query, so only with "
            "meta orchestra_dbt.implicit_freshness: true",
        ),
        (
            ("table", worker.DUCKDB_HASH_MAX_ROWS + 1, "id INTEGER"),
            f"about {worker.DUCKDB_HASH_MAX_ROWS + 1} rows, more than the "
            f"{worker.DUCKDB_HASH_MAX_ROWS} a content hash reads without "
            "meta orchestra_dbt.implicit_freshness: true",
        ),
    ],
)
def test_duckdb_cannot_measure_without_opt_in(found: tuple[Any, ...] | None, error: str) -> None:
    # No query is made: the adapter is never touched.
    result = worker._duckdb_result(None, RELATION, found, opted_in=False)
    assert result == {"max_loaded_at": None, "error": error}
