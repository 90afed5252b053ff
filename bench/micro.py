"""Micro-benchmark of the parent side (planner, state merge, report) on synthetic manifests.

    python bench/micro.py --nodes 10000 [--with-airflow] [--repeat 3]

Prints one JSON object: the median seconds of each phase over ``--repeat`` fresh runs (wall
time, and this process's CPU time as ``<phase>_cpu``, which other load on the machine barely
moves), and the process's memory (VmRSS after imports, VmHWM at the end). Run one process per
size so the high-water mark belongs to that size. ``--with-airflow`` imports the operator module
(and so
Airflow) first, as the Airflow task process does; dbt is never imported (it lives in the worker).

The graph is what the worker would send for a project of that size: sources, four layers of
models with dbt-like configs, raw SQL and macros, and generic tests. The phases are the parent's
real code paths, in the order a run takes them:

* ``decode``: ``json.loads`` of the worker's graph message (one JSON line);
* ``graph``: ``Graph.from_message``; ``probe_targets``: which sources and schemas to probe;
* ``plan_cold``: fingerprints + ``plan()`` with no state (everything builds);
* ``outcomes``: ``state_updates()`` after a full build (every node succeeded);
* ``merge``: ``merge_entries()`` of those updates into a full state;
* ``plan_noop``: fingerprints + ``plan()`` on that state, nothing changed (everything reused);
* ``plan_one_source``: the same with new data in one source;
* ``state_save`` / ``state_load``: ``LocalFileStateStore`` save (lock, re-read, merge, write,
  fsync) and load of the whole document;
* ``report``: ``summary()`` (the XCom return_value), ``node_details()`` and the plan table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT = "bench_big"
LOADED = datetime(2026, 1, 1, tzinfo=UTC)
# (prefix, schema, materialization, share of models, parents per model)
LAYERS = (
    ("stg", "staging", "view", 0.30, 1),
    ("int", "intermediate", "table", 0.35, 2),
    ("fct", "marts", "incremental", 0.15, 2),
    ("mart", "reporting", "table", 0.20, 3),
)
MACROS = 300


def _config(materialized: str, schema: str) -> dict[str, Any]:
    """Roughly what dbt's ``config.to_dict(omit_none=True)`` holds for a model."""
    return {
        "enabled": True,
        "alias": None,
        "schema": schema,
        "database": None,
        "tags": ["nightly"],
        "meta": {"owner": "data-platform"},
        "group": None,
        "materialized": materialized,
        "incremental_strategy": "merge" if materialized == "incremental" else None,
        "batch_size": None,
        "lookback": 1,
        "begin": None,
        "persist_docs": {},
        "post-hook": [],
        "pre-hook": [],
        "quoting": {},
        "column_types": {},
        "full_refresh": None,
        "unique_key": "id" if materialized == "incremental" else None,
        "on_schema_change": "ignore",
        "on_configuration_change": "apply",
        "grants": {},
        "packages": [],
        "docs": {"show": True, "node_color": None},
        "contract": {"enforced": False, "alias_types": True},
        "event_time": None,
        "concurrent_batches": None,
        "access": "protected",
    }


def _sql(name: str, j: int, refs: str) -> str:
    """About 1 KB of model SQL, typical of a real project."""
    columns = ",\n".join(f"        base.col_{c:02d} as {name}_col_{c:02d}" for c in range(12))
    return (
        f"-- {name}: one row per id, see the docs\n"
        "with base as (\n    select * from {{ ref('upstream') }}\n),\n\nfinal as (\n"
        "    select\n        base.id,\n"
        f"        {{{{ helper_{j % MACROS:03d}('base.amount') }}}} as amount,\n"
        f"{columns}\n    from base\n    {refs}\n    where base.amount > {j % 100}"
        " and base.status != 'deleted'\n)\n\nselect * from final\n"
    )


def graph_message(total_nodes: int) -> dict[str, Any]:
    """A worker ``graph`` message with ``total_nodes`` nodes (2 % sources, 28 % tests)."""
    n_sources = max(10, total_nodes // 50)
    n_tests = int(total_nodes * 0.28)
    n_models = total_nodes - n_sources - n_tests
    macros = {
        f"macro.{PROJECT}.helper_{i:03d}": {
            "sql": f"{{% macro helper_{i:03d}(x) %}} coalesce({{{{ x }}}}, {i}) {{% endmacro %}}",
            "depends_on": [f"macro.{PROJECT}.helper_{(i * 7) % MACROS:03d}"] if i % 3 else [],
        }
        for i in range(MACROS)
    }
    nodes: list[dict[str, Any]] = []
    parents: list[str] = []
    for i in range(n_sources):
        name = f"table_{i:05d}"
        uid = f"source.{PROJECT}.raw_{i % 20:02d}.{name}"
        nodes.append(
            {
                "unique_id": uid,
                "resource_type": "source",
                "name": name,
                "source_name": f"raw_{i % 20:02d}",
                "package_name": PROJECT,
                "database": "analytics",
                "schema": f"raw_{i % 20:02d}",
                "alias": name,
                "relation_name": f'"analytics"."raw_{i % 20:02d}"."{name}"',
                "depends_on": [],
                "macros": [],
                "has_loaded_at": True,
            }
        )
        parents.append(uid)
    models: list[str] = []
    for prefix, schema, materialized, share, fan_in in LAYERS:
        layer: list[str] = []
        for j in range(int(n_models * share)):
            name = f"{prefix}_{j:06d}"
            uid = f"model.{PROJECT}.{name}"
            deps = sorted({parents[(j * (k + 3) * 7 + k) % len(parents)] for k in range(fan_in)})
            refs = "\n".join(
                f"join {{{{ ref('{d.rsplit('.', 1)[-1]}') }}}} using (id)" for d in deps
            )
            nodes.append(
                {
                    "unique_id": uid,
                    "resource_type": "model",
                    "name": name,
                    "package_name": PROJECT,
                    "original_file_path": f"models/{schema}/{name}.sql",
                    "database": "analytics",
                    "schema": schema,
                    "alias": name,
                    "relation_name": f'"analytics"."{schema}"."{name}"',
                    "materialized": materialized,
                    "depends_on": deps,
                    "macros": [f"macro.{PROJECT}.helper_{(j + k) % MACROS:03d}" for k in range(2)],
                    "raw_code": _sql(name, j, refs),
                    "config": _config(materialized, schema),
                    "build_after": (
                        {"count": 1, "period": "day", "updates_on": "any"} if j % 97 == 0 else None
                    ),
                }
            )
            layer.append(uid)
        models += layer
        parents = layer
    for t in range(n_tests):
        tested = models[(t * 13) % len(models)]
        kind = ("not_null", "unique", "accepted_values")[t % 3]
        name = f"{kind}_{tested.rsplit('.', 1)[-1]}_id_{t}"
        uid = f"test.{PROJECT}.{name}.{hashlib.sha256(name.encode()).hexdigest()[:10]}"
        nodes.append(
            {
                "unique_id": uid,
                "resource_type": "test",
                "name": name,
                "package_name": PROJECT,
                "depends_on": [tested],
                "macros": [f"macro.dbt.test_{kind}"],
                "raw_code": "{{ test_" + kind + "(**_dbt_generic_test_kwargs) }}",
                "config": {"enabled": True, "severity": "ERROR", "materialized": "test"},
                "severity": "error",
                "attached_node": tested,
            }
        )
    return {
        "type": "graph",
        "protocol": 1,
        "dbt_version": "1.11.16",
        "python": sys.executable,
        "adapter_type": "duckdb",
        "project_name": PROJECT,
        "project_vars": {},
        "nodes": nodes,
        "macros": macros,
        "selected": [n["unique_id"] for n in nodes if n["resource_type"] != "source"],
    }


def _memory() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def run_once(message_line: str, state_dir: Path) -> dict[str, float]:
    from airflow_provider_orchestra_dbt.decisions.fingerprint import Fingerprinter
    from airflow_provider_orchestra_dbt.decisions.graph import Graph
    from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult, state_updates
    from airflow_provider_orchestra_dbt.decisions.planner import (
        PlanOptions,
        Probe,
        SourceFreshness,
        plan,
        probe_targets,
    )
    from airflow_provider_orchestra_dbt.presentation.report import RunReport
    from airflow_provider_orchestra_dbt.state import LocalFileStateStore
    from airflow_provider_orchestra_dbt.state.model import merge_entries

    times: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        value = fn()
        times[name] = time.perf_counter() - started
        times[f"{name}_cpu"] = time.process_time() - cpu
        return value

    message = timed("decode", lambda: json.loads(message_line))
    graph = timed("graph", lambda: Graph.from_message(message))
    selected = message["selected"]
    sources, _schemas = timed("probe_targets", lambda: probe_targets(graph, selected))
    relations = {}
    for node in graph.nodes.values():
        if node.is_stateful:
            relations.setdefault(node.schema_key, set()).add(str(node.alias).lower())
    probe = Probe(
        {uid: SourceFreshness(LOADED) for uid in sources},
        {k: frozenset(v) for k, v in relations.items()},
    )
    options = PlanOptions(command="build")

    def fingerprints() -> Fingerprinter:
        return Fingerprinter(graph, cli_vars={}, env={})

    cold = timed("plan_cold", lambda: plan(graph, selected, {}, fingerprints(), probe, options))
    finished = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    results = {
        d.unique_id: NodeResult(
            d.unique_id, "pass" if d.resource_type == "test" else "success", 1.5, finished
        )
        for d in cold.decisions
    }
    outcome = timed("outcomes", lambda: state_updates(graph, cold, results, {}, probe))
    full_state = outcome.updates
    timed("merge", lambda: merge_entries(full_state, outcome.updates))
    noop = timed(
        "plan_noop", lambda: plan(graph, selected, full_state, fingerprints(), probe, options)
    )
    assert not noop.to_execute(), "the no-op plan should reuse everything"
    first_source = sorted(sources)[0]
    newer = Probe(
        {**probe.freshness, first_source: SourceFreshness(LOADED + timedelta(hours=1))},
        probe.relations,
    )
    one = timed(
        "plan_one_source",
        lambda: plan(graph, selected, full_state, fingerprints(), newer, options),
    )
    store = LocalFileStateStore(state_dir / "state.json")
    timed("state_save", lambda: store.save(full_state))
    timed("state_load", store.load)
    report = RunReport(command="build", target=None, exit_code=0, graph=graph, plan=one)
    timed("report", lambda: (report.summary(), report.node_details(), report.plan_table()))
    times["planned_nodes"] = float(len(noop.decisions))
    times["one_source_builds"] = float(len(one.to_execute()))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--with-airflow", action="store_true")
    args = parser.parse_args(argv)

    if args.with_airflow:
        import airflow_provider_orchestra_dbt.operators.orchestra_dbt
    import airflow_provider_orchestra_dbt.execution.session
    import airflow_provider_orchestra_dbt.state  # noqa: F401

    after_imports = _memory()
    message_line = json.dumps(graph_message(args.nodes))
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="orchestra-dbt-micro-") as tmp:
            runs.append(run_once(message_line, Path(tmp)))
    phases = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
    end = _memory()
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "with_airflow": args.with_airflow,
                "repeat": args.repeat,
                "message_bytes": len(message_line),
                "phases": phases,
                "rss_after_imports": after_imports["VmRSS"],
                "peak_rss": end["VmHWM"],
                "dbt_imported": "dbt" in sys.modules,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
