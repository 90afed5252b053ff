"""A small synthetic dbt graph with a clean state, shared by the engine's unit tests.

    source a -> stg_a (view) --------\
    source b -> eph (ephemeral) ------> m1 -> m2 <- s1 (seed)
    tests: not_null_m1 (m1), unique_src_a (source a), span_m1_s1 (m1, s1)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprint
from airflow_provider_orchestra_dbt.decisions.graph import BuildAfter, Graph, Node
from airflow_provider_orchestra_dbt.decisions.planner import Probe, SourceFreshness

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
T0 = NOW - timedelta(days=1)  # when everything was last built
LOADED = NOW - timedelta(days=2)  # the source data everything consumed


def iso(dt: datetime) -> str:
    return dt.isoformat()


def model(uid: str, *deps: str, materialized: str = "table", **kw: Any) -> Node:
    name = uid.rsplit(".", 1)[-1]
    return Node(uid, "model", name, "p", "db", "main", name, materialized, depends_on=deps, **kw)


def source(uid: str) -> Node:
    name = uid.rsplit(".", 1)[-1]
    return Node(uid, "source", name, "p", "db", "raw", name, depends_on=())


def dbt_test(uid: str, *deps: str, severity: str = "error") -> Node:
    return Node(uid, "test", uid.rsplit(".", 1)[-1], "p", depends_on=deps, severity=severity)


SRC_A, SRC_B = "source.p.raw.a", "source.p.raw.b"
STG, EPH, M1, M2, SEED = "model.p.stg_a", "model.p.eph", "model.p.m1", "model.p.m2", "seed.p.s1"
T_M1, T_SRC, T_SPAN = "test.p.not_null_m1", "test.p.unique_src_a", "test.p.span_m1_s1"


def base_graph(m2_build_after: BuildAfter | None = None) -> Graph:
    return Graph(
        [
            source(SRC_A),
            source(SRC_B),
            Node(SEED, "seed", "s1", "p", "db", "main", "s1", "seed", file_hash="s1-csv-sha"),
            model(STG, SRC_A, materialized="view"),
            model(EPH, SRC_B, materialized="ephemeral"),
            model(M1, STG, EPH),
            model(M2, M1, SEED, build_after=m2_build_after),
            dbt_test(T_M1, M1),
            dbt_test(T_SRC, SRC_A),
            dbt_test(T_SPAN, M1, SEED),
        ]
    )


def key(uid: str) -> str:
    return f"db.main.{uid.rsplit('.', 1)[-1]}"


def clean_state(graph: Graph) -> dict[str, dict[str, Any]]:
    """Every stateful node built at T0, having consumed everything there was."""
    state: dict[str, dict[str, Any]] = {}
    for node in graph.nodes.values():
        if not node.is_stateful:
            continue
        up = graph.upstream(node.unique_id)
        state[key(node.unique_id)] = {
            "unique_id": node.unique_id,
            "checksum": f"c-{node.unique_id}",
            "checksum_parts": {"code": f"code-{node.unique_id}", "config": "cfg"},
            "last_updated": iso(T0),
            "sources": {s: iso(LOADED) for s in up.sources},
            "upstream": {key(p): iso(T0) for p in up.nodes},
            "status": "success",
            "execution_time": 2.0,
        }
    return state


def fingerprints(changed: dict[str, str] | None = None) -> Callable[[str], Fingerprint]:
    changed = changed or {}

    def fp(uid: str) -> Fingerprint:
        if uid in changed:
            return Fingerprint(f"new-{uid}", {"code": f"code-{uid}", changed[uid]: "other"})
        return Fingerprint(f"c-{uid}", {"code": f"code-{uid}", "config": "cfg"})

    return fp


def fresh_probe(**overrides: SourceFreshness) -> Probe:
    freshness = {SRC_A: SourceFreshness(LOADED), SRC_B: SourceFreshness(LOADED)}
    freshness.update({k.replace("__", "."): v for k, v in overrides.items()})
    return Probe(freshness, {"db.main": frozenset({"stg_a", "m1", "m2", "s1"})})
