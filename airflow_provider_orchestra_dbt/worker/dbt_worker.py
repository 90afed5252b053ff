"""The dbt side of a run: one subprocess that parses once and executes what the parent decides.

This file imports only the standard library and dbt, and is started by path
(``python dbt_worker.py``), so it also runs under a separate dbt virtualenv that has neither
Airflow nor this package installed. It speaks JSON lines: requests on stdin, replies and live
events on the original stdout. dbt's own console output is moved to stderr so it can never
corrupt the protocol stream.

Conversation (the parent drives; see ``worker/client.py``)::

    worker -> {"type": "hello", "protocol": 1, "dbt_version": ...}   # before dbt is imported
    parent -> {"type": "start", "protocol": 1, ...RunRequest}
    worker -> {"type": "selection_unmatched", "criterion": ...}*   # dbt's warning, per criterion
    worker -> {"type": "graph", ...}            # after one parse and the selection
    parent -> {"type": "warehouse_lock", "key": ..., "application_name": ...}   # postgres
    worker -> {"type": "warehouse_lock_result", "locked": ..., "holder": ...}    # repeated
    parent -> {"type": "probe", "sources": [...], "schemas": [[db, schema], ...]}
    worker -> {"type": "probe_result", "freshness": {...}, "relations": {...}}
    parent -> {"type": "execute", "nodes": [...]}   or   {"type": "finish"}
    worker -> {"type": "node_start"|"node_finished", ...}*  then {"type": "execute_result", ...}

Any failure is reported as ``{"type": "error", "stage": ..., "message": ...}`` before exiting 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

# Bumped on any change to the messages below; the parent checks it (worker/compat.py).
PROTOCOL_VERSION = 1
WORKER_KIND = "dbt-core-python"
# Where each dbt line is published; dbt 2 ships as dbt-core 2.x as well as under new names.
DBT_DISTRIBUTIONS = ("dbt-core", "dbt-fusion", "dbt", "dbt-oss")
# dbt's warning for a --select/--exclude criterion that matches no enabled node.
UNMATCHED_SELECTION_EVENT = "NoNodesForSelectionCriteria"
PARTIAL_PARSE_FILE = "partial_parse.msgpack"
PARTIAL_PARSE_PREFIX = "partial_parse-"
# dbt keeps these resource types as warehouse objects; everything else is not state-tracked.
SELECTABLE_TYPES = {"model", "seed", "snapshot", "test", "unit_test", "source"}
# A threshold so wide it never warns: it only makes `dbt source freshness` measure sources
# that have a loaded_at_query but no freshness block of their own (dbt skips those otherwise).
_MEASURE_ONLY_DAYS = 1_000_000


class StageError(Exception):
    """A failure at a named stage of the worker's run, reported to the parent as an ``error``
    message before the worker exits 2 (the parent raises its own ``WorkerError`` from it)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message


def _utc_iso(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return str(value.astimezone(UTC).isoformat())


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


class Channel:
    """JSON lines to the parent on a private copy of the original stdout."""

    def __init__(self, out: TextIO, inp: TextIO) -> None:
        self._out = out
        self._inp = inp

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message, default=str) + "\n")
        self._out.flush()

    def receive(self) -> dict[str, Any]:
        line = self._inp.readline()
        if not line:
            raise StageError("protocol", "the parent closed the request stream")
        message: dict[str, Any] = json.loads(line)
        return message


def _take_over_stdout() -> TextIO:
    """Keep fd 1 for the protocol and point everything that prints at stderr."""
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    return io.TextIOWrapper(os.fdopen(protocol_fd, "wb"), encoding="utf-8", write_through=True)


class ManifestSession:
    """One parse, then selection, probes and execution against the same in-memory manifest."""

    def __init__(self, request: dict[str, Any], channel: Channel) -> None:
        self.request = request
        self.channel = channel
        self.manifest: Any = None
        self.run_dir: str = request["run_dir"]
        self.target_path: str = request["target_path"]
        self.log_path = os.path.join(self.run_dir, "logs")

    # -- shared argv -------------------------------------------------------------------------

    def _common_args(self) -> list[str]:
        r = self.request
        args = [
            "--project-dir",
            r["project_dir"],
            "--target-path",
            self.target_path,
            "--log-path",
            self.log_path,
            "--no-use-colors",
        ]
        if not r.get("write_json", True):
            # manifest.json and run_results.json cost a third of a warm parse; only kept
            # artifacts are worth writing (the partial-parse file is written regardless).
            args.append("--no-write-json")
        if r.get("profiles_dir"):
            args += ["--profiles-dir", r["profiles_dir"]]
        if r.get("target"):
            args += ["--target", r["target"]]
        if r.get("vars"):
            args += ["--vars", json.dumps(r["vars"])]
        return args

    def _runner(self, callbacks: list[Callable[[Any], None]] | None = None) -> Any:
        from dbt.cli.main import dbtRunner

        return dbtRunner(manifest=self.manifest, callbacks=callbacks or [])

    def _invoke(self, stage: str, args: list[str], callbacks: list[Any] | None = None) -> Any:
        result = self._runner(callbacks).invoke(args)
        if result.exception is not None:
            raise StageError(stage, _describe_exception(result.exception))
        return result

    # -- parse -------------------------------------------------------------------------------

    def parse(self) -> None:
        cache_file = self._partial_parse_cache()
        os.makedirs(self.target_path, exist_ok=True)
        run_copy = os.path.join(self.target_path, PARTIAL_PARSE_FILE)
        if cache_file:
            with contextlib.suppress(FileNotFoundError):  # a concurrent run replaced it
                shutil.copyfile(cache_file, run_copy)
        from dbt.cli.main import dbtRunner

        # A failed parse's message is our error message: dbt's console would print it first.
        with _held_stdout() as console:
            result = dbtRunner().invoke(["parse", "--quiet", *self._common_args()])
        if result.exception is None:
            console.release()
        if not result.success or result.result is None:
            message = (
                _describe_exception(result.exception)
                if result.exception
                else "dbt parse failed (see dbt's output above)"
            )
            raise StageError("parse", message)
        self.manifest = result.result
        if cache_file and os.path.exists(run_copy):
            # Replace atomically: concurrent runs of the same project share this cache.
            cache_dir = os.path.dirname(cache_file)
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{cache_file}.{os.getpid()}.tmp"
            shutil.copyfile(run_copy, tmp)
            os.replace(tmp, cache_file)
            for name in os.listdir(cache_dir):
                if name.startswith(PARTIAL_PARSE_PREFIX) and name != os.path.basename(cache_file):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(cache_dir, name))

    def _partial_parse_cache(self) -> str | None:
        """Our copy of dbt's partial-parse file, named after the YAML files' times and sizes.

        dbt re-reads a YAML file only when its modification time differs from the one it
        saved, and after an edit it can keep the old time: a file put back with its old time
        (``cp -p``, ``rsync -t``, an unpacked archive) was then parsed as the edited version.
        A cache saved under other YAML times is not used, so dbt parses in full instead.
        """
        cache_dir = self.request.get("cache_dir")
        if not cache_dir:
            return None
        return os.path.join(cache_dir, f"{PARTIAL_PARSE_PREFIX}{_yaml_times(self.request)}.msgpack")

    # -- selection and graph -----------------------------------------------------------------

    def select(self) -> list[str]:
        if self._selects_everything():
            return self._every_node()
        args = ["ls", "--quiet", *self._common_args(), "--output", "json"]
        args += ["--output-keys", "unique_id", *self._user_selection()]
        # With the user's --warn-error, a criterion matching nothing fails here, as in dbt.
        args += _warn_error_args(self.request.get("dbt_args") or [])
        # `ls` prints every match; keep that noise out of the task log.
        with _silenced_stdout():
            result = self._invoke("select", args, [_EventForwarder(self.channel)])
        if not result.success:
            raise StageError("select", "dbt could not resolve the selection")
        return [json.loads(line)["unique_id"] for line in result.result or []]

    def _selects_everything(self) -> bool:
        """True when `dbt ls` would list every enabled node, so asking it is wasted time."""
        if self._user_selection():
            return False
        if any(os.environ.get(v) for v in ("DBT_RESOURCE_TYPES", "DBT_EXCLUDE_RESOURCE_TYPES")):
            return False
        config = _adapter_config()
        default_selector = getattr(config, "get_default_selector_name", None)
        return config is not None and default_selector is not None and not default_selector()

    def _every_node(self) -> list[str]:
        m = self.manifest
        ids = [*m.nodes, *m.sources, *getattr(m, "unit_tests", {})]
        return [uid for uid in ids if uid.split(".", 1)[0] in SELECTABLE_TYPES]

    def graph_message(self, selected: list[str]) -> dict[str, Any]:
        m = self.manifest
        nodes = [_node_facts(n) for n in m.nodes.values()]
        nodes += [_source_facts(s) for s in m.sources.values()]
        nodes += [_unit_test_facts(u) for u in getattr(m, "unit_tests", {}).values()]
        wanted_macros = _macro_closure(m, nodes)
        macros = {
            uid: {
                "sql": m.macros[uid].macro_sql,
                "depends_on": list(m.macros[uid].depends_on.macros),
            }
            for uid in wanted_macros
        }
        config = _adapter_config()
        return {
            "type": "graph",
            "adapter_type": getattr(getattr(config, "credentials", None), "type", None),
            "project_name": getattr(config, "project_name", None),
            "project_vars": _jsonable(getattr(getattr(config, "vars", None), "vars", {}) or {}),
            "nodes": nodes,
            "macros": macros,
            "selected": selected,
        }

    # -- probes ------------------------------------------------------------------------------

    def probe(self, sources: list[str], schemas: list[list[str]]) -> dict[str, Any]:
        return {
            "type": "probe_result",
            "freshness": self._freshness(sources) if sources else {},
            "relations": self._relations(schemas),
        }

    def _freshness(self, source_ids: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        by_field = []
        by_query = []
        implicit = []
        for uid in source_ids:
            src = self.manifest.sources.get(uid)
            if src is None:
                out[uid] = _unknown("source not in the manifest")
            elif getattr(src, "loaded_at_query", None):
                by_query.append(src)
            elif src.loaded_at_field:
                by_field.append(src)
            else:
                implicit.append(src)
        out.update(self._freshness_by_field(by_field))
        out.update(self._freshness_by_dbt(by_query))
        if implicit:
            out.update(implicit_freshness(_adapter(), implicit, self.manifest))
        return out

    def _freshness_by_field(self, sources: list[Any]) -> dict[str, dict[str, Any]]:
        """``max(loaded_at_field)`` through the adapter's own freshness macro.

        The same query `dbt source freshness` runs, minus a whole dbt invocation around it
        (a second of config, graph and thread-pool set-up for a handful of queries), and
        without running the project's on-run-start/end hooks for a mere probe.
        """
        if not sources:
            return {}
        adapter = _adapter()
        if adapter is None:
            return self._freshness_by_dbt(sources)
        threads = max(1, int(getattr(adapter.config, "threads", 1) or 1))

        def measure(src: Any) -> dict[str, Any]:
            try:
                relation = adapter.Relation.create_from(adapter.config, src)
                with adapter.connection_named(f"orchestra_freshness.{src.unique_id}"):
                    adapter.clear_transaction()
                    _response, freshness = adapter.calculate_freshness(
                        relation,
                        src.loaded_at_field,
                        src.freshness.filter if src.freshness else None,
                        macro_resolver=self.manifest,
                    )
            except Exception as exc:  # reported per source: the planner treats it as unknown
                return {"max_loaded_at": None, "error": _first_lines(str(exc))}
            return {"max_loaded_at": _utc_iso(freshness["max_loaded_at"]), "error": None}

        with ThreadPoolExecutor(max_workers=min(threads, len(sources))) as pool:
            results = pool.map(measure, sources)
            return {src.unique_id: res for src, res in zip(sources, results, strict=True)}

    def _freshness_by_dbt(self, sources: list[Any]) -> dict[str, dict[str, Any]]:
        """A `dbt source freshness` invocation, for what only dbt renders (loaded_at_query)."""
        from dbt.artifacts.resources.types import TimePeriod
        from dbt.artifacts.resources.v1.components import FreshnessThreshold, Time

        if not sources:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for src in sources:
            if not src.freshness:
                src.freshness = FreshnessThreshold(
                    warn_after=Time(count=_MEASURE_ONLY_DAYS, period=TimePeriod.day)
                )
        selectors = [f"source:{s.package_name}.{s.source_name}.{s.name}" for s in sources]
        args = ["source", "freshness", "--quiet", *self._common_args(), "--select", *selectors]
        result = self._runner().invoke(args)
        if result.exception is not None or result.result is None:
            reason = _describe_exception(result.exception) if result.exception else "no result"
            for s in sources:
                out[s.unique_id] = {"max_loaded_at": None, "error": f"freshness failed: {reason}"}
            return out
        for res in result.result.results:
            uid = getattr(res, "unique_id", None) or res.node.unique_id
            loaded = getattr(res, "max_loaded_at", None)
            if loaded is None:
                message = (getattr(res, "message", None) or str(res.status)).strip()
                out[uid] = {"max_loaded_at": None, "error": _first_lines(message)}
            else:
                out[uid] = {"max_loaded_at": _utc_iso(loaded), "error": None}
        for s in sources:
            out.setdefault(s.unique_id, {"max_loaded_at": None, "error": "dbt returned no result"})
        return out

    def _relations(self, schemas: list[list[str]]) -> dict[str, Any]:
        adapter = _adapter()
        out: dict[str, Any] = {}
        if adapter is None:
            return {f"{db}.{sch}": {"error": "no dbt adapter registered"} for db, sch in schemas}
        with adapter.connection_named("orchestra_list_relations"):
            for database, schema in schemas:
                key = f"{database}.{schema}"
                try:
                    rel = adapter.Relation.create(database=database, schema=schema)
                    found = adapter.list_relations_without_caching(rel)
                    out[key] = {"names": sorted({str(r.identifier).lower() for r in found})}
                except Exception as exc:  # an unlistable schema only means "unknown"
                    out[key] = {"error": _first_lines(str(exc))}
        return out

    # -- execution ---------------------------------------------------------------------------

    def execute(self, node_ids: list[str]) -> dict[str, Any]:
        r = self.request
        selection_dir = os.path.join(self.run_dir, "selection")
        _write_selection(selection_dir, node_ids)
        args = [r["command"], *self._common_args()]
        args += ["--select", "result:error", "--state", selection_dir]
        args += ["--indirect-selection", "empty", *self._run_options(r["command"])]
        dbt_args = list(r.get("dbt_args") or [])
        if any(a.split("=", 1)[0] in ("--log-level", "-q", "--quiet") for a in dbt_args):
            return self._run_dbt(args + dbt_args)
        # The parent logs one line per node, with dbt's message; dbt's console would print
        # each failure twice more (its result line and its end-of-run summary). Its other
        # warnings and errors come as events instead.
        return self._run_dbt([*args, "--log-level", "none", *dbt_args], forward_logs=True)

    def passthrough(self) -> dict[str, Any]:
        """A command we do not make state-aware runs exactly as the user wrote it."""
        r = self.request
        args = [r["command"], *self._common_args(), *self._user_selection()]
        args += self._run_options(r["command"])
        return self._run_dbt(args + list(r.get("dbt_args") or []))

    def _user_selection(self) -> list[str]:
        r = self.request
        args: list[str] = []
        for flag in ("select", "exclude"):
            if r.get(flag):
                args += [f"--{flag}", *r[flag]]
        if r.get("selector"):
            args += ["--selector", r["selector"]]
        return args

    def _run_options(self, command: str) -> list[str]:
        r = self.request
        args: list[str] = []
        if r.get("full_refresh") and command in ("build", "run", "seed"):
            args.append("--full-refresh")
        if r.get("threads"):
            args += ["--threads", str(r["threads"])]
        return args

    def _run_dbt(self, args: list[str], forward_logs: bool = False) -> dict[str, Any]:
        callback = _EventForwarder(self.channel, forward_logs=forward_logs)
        interrupted = False
        try:
            result = self._runner([callback]).invoke(args)
        except KeyboardInterrupt:
            interrupted = True
            result = None
        results = []
        if result is not None and result.result is not None:
            for res in getattr(result.result, "results", None) or []:
                results.append(_result_facts(res))
        exception = result.exception if result is not None else None
        interrupted = interrupted or isinstance(exception, KeyboardInterrupt)
        if interrupted:
            exit_code = 130
        elif exception is not None:
            exit_code = 2
        else:
            exit_code = 0 if result is not None and result.success else 1
        return {
            "type": "execute_result",
            "invocation_id": _invocation_id(),
            "success": bool(result is not None and result.success),
            "exit_code": exit_code,
            "error": (
                "interrupted"
                if interrupted
                else (_describe_exception(exception) if exception is not None else None)
            ),
            "results": results,
            "args": args,
        }


# dbt events that report a node's result, which the parent's line for the node already says.
NODE_RESULT_EVENTS = frozenset(
    {
        "LogModelResult", "LogTestResult", "LogSeedResult", "LogSnapshotResult",
        "LogNodeNoOpResult", "LogFreshnessResult", "RunResultError", "RunResultFailure",
        "RunResultWarning", "RunResultErrorNoMessage", "RunResultWarningMessage",
        "CheckNodeTestFailure", "SQLCompiledPath",
    }
)  # fmt: skip
LOG_LEVELS = ("warn", "error")


class _EventForwarder:
    """dbt callback: forwards node start/finish and selection criteria that matched nothing
    as compact events, and with ``forward_logs`` dbt's other warnings and errors (its
    console is off). Must never raise."""

    def __init__(self, channel: Channel, *, forward_logs: bool = False) -> None:
        self.channel = channel
        self.forward_logs = forward_logs
        self.warned = False

    def _forward_log(self, name: str, event: Any) -> None:
        level = str(event.info.level)
        if level not in LOG_LEVELS:
            return
        node = getattr(event.data, "node_info", None)
        if name in NODE_RESULT_EVENTS and node is not None and node.unique_id:
            return
        self.channel.send({"type": "dbt_log", "level": level, "message": str(event.info.msg)})

    def __call__(self, event: Any) -> None:
        try:
            name = event.info.name
            if self.forward_logs:
                self._forward_log(name, event)
            if name == "NodeStart":
                info = event.data.node_info
                self.channel.send(
                    {
                        "type": "node_start",
                        "unique_id": info.unique_id,
                        "started_at": _utc_iso(info.node_started_at),
                    }
                )
            elif name == UNMATCHED_SELECTION_EVENT:
                self.channel.send(
                    {"type": "selection_unmatched", "criterion": str(event.data.spec_raw)}
                )
            elif name == "NodeFinished":
                info = event.data.node_info
                rr = event.data.run_result  # a protobuf message, not dbt's RunResult
                rows = dict(rr.adapter_response).get("rows_affected")
                self.channel.send(
                    {
                        "type": "node_finished",
                        "unique_id": info.unique_id,
                        "status": str(rr.status),
                        "execution_time": rr.execution_time,
                        "finished_at": _utc_iso(info.node_finished_at),
                        "message": _first_lines(rr.message or ""),
                        "rows_affected": int(rows) if rows is not None else None,
                        "failures": rr.num_failures,
                    }
                )
        except BaseException as exc:
            if not self.warned:
                self.warned = True
                print(f"orchestra: could not forward a dbt event: {exc!r}", file=sys.stderr)


# -- implicit source freshness -----------------------------------------------------------------
#
# For a source with neither loaded_at_field nor loaded_at_query, change is measured from the
# warehouse itself. A result is either a timestamp (``max_loaded_at``, warehouse metadata), a
# token the planner compares with the one the node consumed (``method`` + ``token``), or
# unknown (``error``), which the planner treats as new data.

# meta: {orchestra_dbt: {<option>: <value>}} on a source or its table (dbt merges both into the
# source's meta, the table winning). The only source options: name -> (type, how to write it).
# Also decisions/volatility.py's META_NAMESPACE, spelled out because this file imports nothing
# of the package (tests/unit/worker/test_worker_constants.py keeps the two equal).
META_NAMESPACE = "orchestra_dbt"
IMPLICIT_FRESHNESS = "implicit_freshness"
SOURCE_OPTIONS: dict[str, tuple[type, str]] = {IMPLICIT_FRESHNESS: (bool, "true or false")}
METHOD_METADATA = "metadata"
METHOD_POSTGRES = "postgres_stats"
METHOD_DUCKDB = "duckdb_hash"
# Hashing reads every row on every run: beyond this estimated size only an opt-in pays for it.
DUCKDB_HASH_MAX_ROWS = 10_000_000
_OPT_IN = f"meta {META_NAMESPACE}.{IMPLICIT_FRESHNESS}: true"
_PG_KINDS = {"v": "view", "p": "partitioned table", "f": "foreign table"}
# One query for every source: the catalog says what the relation is and whether it was
# rewritten (relfilenode: TRUNCATE, VACUUM FULL, ALTER ... TYPE) or resized; the cumulative
# counters say rows were written. Counters reach pg_stat up to a few seconds after the
# writer's commit, the size at once.
_POSTGRES_STATS_SQL = """
select s.i, current_database(), current_setting('track_counts'), c.relkind, c.relfilenode,
       pg_relation_size(c.oid), pg_stat_get_tuples_inserted(c.oid),
       pg_stat_get_tuples_updated(c.oid), pg_stat_get_tuples_deleted(c.oid),
       (select string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                          order by a.attnum)
          from pg_attribute a
         where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped)
from unnest(%s::text[]) with ordinality as s(name, i)
left join pg_class c on c.oid = to_regclass(s.name)
order by s.i
"""
_DUCKDB_CATALOG_SQL = """
with relations as (
    select database_name, schema_name, table_name as name, 'table' as kind, estimated_size
    from duckdb_tables()
    union all
    select database_name, schema_name, view_name, 'view', null
    from duckdb_views() where not internal
), columns as (
    select database_name, schema_name, table_name as name,
           string_agg(column_name || ' ' || data_type, ', ' order by column_index) as columns
    from duckdb_columns() group by all
)
select lower(database_name), lower(schema_name), lower(name), kind, estimated_size, columns
from relations left join columns using (database_name, schema_name, name)
"""
# Row count plus an order-independent sum of row hashes: duplicates count, order does not.
_DUCKDB_HASH_SQL = "select count(*), sum(hash(t)) from {relation} as t"

Measure = Callable[[Any, list[tuple[Any, bool]], Any], dict[str, dict[str, Any]]]


def _unknown(why: str) -> dict[str, Any]:
    return {"max_loaded_at": None, "error": why}


def _token(method: str, token: str) -> dict[str, Any]:
    return {"max_loaded_at": None, "error": None, "method": method, "token": token}


def source_option(source: Any, name: str) -> Any:
    """One of ``SOURCE_OPTIONS`` from the source's meta, None when unset.

    Raises:
        ValueError: the option's value, or the ``orchestra_dbt`` block, has the wrong type.
    """
    block = (getattr(source, "meta", None) or {}).get(META_NAMESPACE)
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ValueError(f"meta {META_NAMESPACE} must be a mapping, got {block!r}")
    value = block.get(name)
    expected, spelled = SOURCE_OPTIONS[name]
    if value is not None and not isinstance(value, expected):
        raise ValueError(f"meta {META_NAMESPACE}.{name} must be {spelled}, got {value!r}")
    return value


def implicit_freshness(adapter: Any, sources: list[Any], manifest: Any) -> dict[str, Any]:
    """Freshness of sources with neither loaded_at_field nor loaded_at_query, per source."""
    out: dict[str, dict[str, Any]] = {}
    wanted: list[tuple[Any, bool]] = []  # (source, opted in)
    for src in sources:
        try:
            choice = source_option(src, IMPLICIT_FRESHNESS)
        except ValueError as exc:
            out[src.unique_id] = _unknown(str(exc))
            continue
        if choice is False:
            out[src.unique_id] = _unknown(
                f"it has no loaded_at_field and meta {META_NAMESPACE}.{IMPLICIT_FRESHNESS} is false"
            )
        else:
            wanted.append((src, choice is True))
    if not wanted:
        return out
    measure, why_not = _implicit_method(adapter)
    if measure is None:
        out.update({src.unique_id: _unknown(why_not) for src, _ in wanted})
        return out
    try:
        out.update(measure(adapter, wanted, manifest))
    except Exception as exc:  # e.g. no permission on the catalog: unknown, the run goes on
        failed = _unknown(f"implicit freshness failed: {_first_lines(str(exc))}")
        out.update({src.unique_id: failed for src, _ in wanted if src.unique_id not in out})
    return out


def _implicit_method(adapter: Any) -> tuple[Measure | None, str]:
    if adapter is None:
        return None, "no dbt adapter registered"
    from dbt.adapters.capability import Capability

    if adapter.supports(Capability.TableLastModifiedMetadata):
        return _metadata_freshness, ""
    kind = adapter.type()
    measure = _IMPLICIT_BY_ADAPTER.get(kind)
    if measure is None:
        return None, (
            f"it has no loaded_at_field, and implicit freshness is not available on {kind}"
            " (no warehouse metadata for it in dbt)"
        )
    return measure, ""


def _fetch(adapter: Any, sql: str, bindings: Any = None) -> list[tuple[Any, ...]]:
    # The DB-API cursor, not adapter.execute: agate would retype the values.
    _, cursor = adapter.connections.add_query(sql, auto_begin=False, bindings=bindings)
    return [tuple(row) for row in cursor.fetchall()]


def _source_relations(adapter: Any, wanted: list[tuple[Any, bool]]) -> dict[str, Any]:
    return {src.unique_id: adapter.Relation.create_from(adapter.config, src) for src, _ in wanted}


def _lowered_path(relation: Any) -> tuple[str, str, str]:
    return (
        str(relation.database or "").lower(),
        str(relation.schema or "").lower(),
        str(relation.identifier or "").lower(),
    )


def _digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


def _metadata_freshness(
    adapter: Any, wanted: list[tuple[Any, bool]], manifest: Any
) -> dict[str, dict[str, Any]]:
    """dbt's own metadata-based freshness (what `dbt source freshness` does without a field)."""
    from dbt.adapters.capability import Capability

    out: dict[str, dict[str, Any]] = {}
    tables: dict[str, Any] = {}
    with adapter.connection_named("orchestra_freshness_metadata"):
        relations = _source_relations(adapter, wanted)
        kinds = _relation_kinds(adapter, list(relations.values()))
        for uid, relation in relations.items():
            kind = kinds.get(_lowered_path(relation), "missing")
            if kind == "table":
                tables[uid] = relation
            elif kind == "missing":
                out[uid] = _unknown(f"{relation} was not found in the warehouse")
            else:
                # A view's last-modified time is its definition's, not its data's.
                out[uid] = _unknown(f"it is a {kind}: its metadata does not show its data change")
        batch: dict[Any, Any] = {}
        if tables and adapter.supports(Capability.TableLastModifiedMetadataBatch):
            try:
                _, batch = adapter.calculate_freshness_from_metadata_batch(
                    list(tables.values()), macro_resolver=manifest
                )
            except Exception:  # as `dbt source freshness` does: fall back to one query each
                batch = {}
        for uid, relation in tables.items():
            try:
                fresh = batch.get(relation)
                if fresh is None:
                    _, fresh = adapter.calculate_freshness_from_metadata(
                        relation, macro_resolver=manifest
                    )
            except Exception as exc:
                out[uid] = _unknown(f"warehouse metadata unreadable: {_first_lines(str(exc))}")
                continue
            out[uid] = _metadata_result(fresh.get("max_loaded_at"))
    return out


def _relation_kinds(adapter: Any, relations: list[Any]) -> dict[tuple[str, str, str], str]:
    kinds: dict[tuple[str, str, str], str] = {}
    for database, schema in sorted({(r.database, r.schema) for r in relations}, key=str):
        listed = adapter.list_relations_without_caching(
            adapter.Relation.create(database=database, schema=schema)
        )
        kinds.update({_lowered_path(r): str(_enum_value(r.type) or "relation") for r in listed})
    return kinds


def _metadata_result(last_modified: Any) -> dict[str, Any]:
    # dbt reports a table the metadata has no time for as modified in the year 1.
    if last_modified is None or last_modified.year <= 1:
        return _unknown("the warehouse metadata has no last-modified time for it")
    return {"max_loaded_at": _utc_iso(last_modified), "error": None, "method": METHOD_METADATA}


def _postgres_tokens(
    adapter: Any, wanted: list[tuple[Any, bool]], manifest: Any
) -> dict[str, dict[str, Any]]:
    relations = _source_relations(adapter, wanted)
    names = [r.include(database=False).render() for r in relations.values()]
    with adapter.connection_named("orchestra_freshness_postgres"):
        rows = _fetch(adapter, _POSTGRES_STATS_SQL, [names])
    return {
        uid: _postgres_result(relation, row)
        for (uid, relation), row in zip(relations.items(), rows, strict=True)
    }


def _postgres_result(relation: Any, row: tuple[Any, ...]) -> dict[str, Any]:
    _, database, track_counts, kind, filenode, size, inserted, updated, deleted, columns = row
    if relation.database and str(relation.database) != database:
        return _unknown(f"it is in database {relation.database}, not {database}")
    if kind is None:
        return _unknown(f"{relation} was not found in the warehouse")
    if kind in _PG_KINDS:
        return _unknown(f"it is a {_PG_KINDS[kind]}: table statistics do not show its data change")
    if track_counts != "on":
        return _unknown("the server's track_counts is off, so table statistics never change")
    token = (
        f"relfilenode={filenode};size={size};ins={inserted};upd={updated};del={deleted};"
        f"columns={_digest(columns)}"
    )
    return _token(METHOD_POSTGRES, token)


def _duckdb_tokens(
    adapter: Any, wanted: list[tuple[Any, bool]], manifest: Any
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with adapter.connection_named("orchestra_freshness_duckdb"):
        catalog = {row[:3]: row[3:] for row in _fetch(adapter, _DUCKDB_CATALOG_SQL)}
        relations = _source_relations(adapter, wanted)
        for src, opted_in in wanted:
            relation = relations[src.unique_id]
            found = catalog.get(_lowered_path(relation))
            out[src.unique_id] = _duckdb_result(adapter, relation, found, opted_in)
    return out


def _duckdb_result(
    adapter: Any, relation: Any, found: tuple[Any, ...] | None, opted_in: bool
) -> dict[str, Any]:
    if found is None:
        return _unknown(f"{relation} was not found in the warehouse")
    kind, estimated_rows, columns = found
    if kind == "view" and not opted_in:
        return _unknown(f"it is a view: hashing it runs its query, so only with {_OPT_IN}")
    if (estimated_rows or 0) > DUCKDB_HASH_MAX_ROWS and not opted_in:
        return _unknown(
            f"about {estimated_rows} rows, more than the {DUCKDB_HASH_MAX_ROWS} a content hash "
            f"reads without {_OPT_IN}"
        )
    try:
        [(rows, total)] = _fetch(adapter, _DUCKDB_HASH_SQL.format(relation=relation))
    except Exception as exc:
        return _unknown(f"its content hash failed: {_first_lines(str(exc))}")
    return _token(METHOD_DUCKDB, f"rows={rows};hash={total or 0};columns={_digest(columns)}")


_IMPLICIT_BY_ADAPTER: dict[str, Measure] = {"postgres": _postgres_tokens, "duckdb": _duckdb_tokens}


# -- facts extraction --------------------------------------------------------------------------


def _warn_error_args(dbt_args: list[str]) -> list[str]:
    """The user's ``--warn-error`` and ``--warn-error-options`` flags, with their values."""
    found: list[str] = []
    for i, arg in enumerate(dbt_args):
        flag = arg.split("=", 1)[0]
        if flag == "--warn-error":
            found.append(arg)
        elif flag == "--warn-error-options":
            found += dbt_args[i : i + 1 if "=" in arg else i + 2]
    return found


def _build_after(config: Any) -> dict[str, Any] | None:
    freshness = getattr(config, "freshness", None)
    build_after = getattr(freshness, "build_after", None)
    if build_after is None or build_after.count is None or build_after.period is None:
        return None
    return {
        "count": build_after.count,
        "period": _enum_value(build_after.period),
        "updates_on": _enum_value(build_after.updates_on),
    }


def _enum_value(value: Any) -> Any:
    return getattr(value, "value", value)


def _node_facts(node: Any) -> dict[str, Any]:
    config = node.config
    facts: dict[str, Any] = {
        "unique_id": node.unique_id,
        "resource_type": _enum_value(node.resource_type),
        "name": node.name,
        "package_name": node.package_name,
        "original_file_path": node.original_file_path,
        "database": node.database,
        "schema": node.schema,
        "alias": getattr(node, "alias", None) or node.name,
        "relation_name": getattr(node, "relation_name", None),
        "materialized": getattr(config, "materialized", None),
        "depends_on": list(getattr(node.depends_on, "nodes", [])),
        "macros": list(node.depends_on.macros),
        "raw_code": getattr(node, "raw_code", "") or "",
        "config": _jsonable(config.to_dict(omit_none=True)),
        "build_after": _build_after(config),
    }
    if facts["resource_type"] == "seed":
        facts["file_hash"] = _seed_file_hash(node)
    if facts["resource_type"] == "test":
        facts["severity"] = str(getattr(config, "severity", "ERROR")).lower()
        facts["attached_node"] = getattr(node, "attached_node", None)
    return facts


def _seed_file_hash(node: Any) -> str | None:
    # dbt's own seed checksum is only the path for large files, so hash the content here.
    path = os.path.join(node.root_path, node.original_file_path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _source_facts(source: Any) -> dict[str, Any]:
    return {
        "unique_id": source.unique_id,
        "resource_type": "source",
        "name": source.name,
        "source_name": source.source_name,
        "package_name": source.package_name,
        "database": source.database,
        "schema": source.schema,
        "alias": source.identifier,
        "relation_name": source.relation_name,
        "depends_on": [],
        "macros": [],
        "has_loaded_at": bool(source.loaded_at_field or getattr(source, "loaded_at_query", None)),
    }


def _unit_test_facts(unit_test: Any) -> dict[str, Any]:
    return {
        "unique_id": unit_test.unique_id,
        "resource_type": "unit_test",
        "name": unit_test.name,
        "package_name": unit_test.package_name,
        "depends_on": list(getattr(unit_test.depends_on, "nodes", [])),
        "macros": list(unit_test.depends_on.macros),
        "raw_code": "",
        "config": {},
        "severity": "error",
    }


def _macro_closure(manifest: Any, nodes: Iterable[dict[str, Any]]) -> set[str]:
    seen: set[str] = set()
    stack = [m for n in nodes for m in n.get("macros", [])]
    while stack:
        uid = stack.pop()
        if uid in seen or uid not in manifest.macros:
            continue
        seen.add(uid)
        stack.extend(manifest.macros[uid].depends_on.macros)
    return seen


def _result_facts(res: Any) -> dict[str, Any]:
    finished = None
    for timing in getattr(res, "timing", None) or []:
        if getattr(timing, "completed_at", None):
            finished = timing.completed_at
    adapter_response = dict(getattr(res, "adapter_response", None) or {})
    return {
        "unique_id": res.node.unique_id,
        "status": str(res.status),
        "execution_time": getattr(res, "execution_time", None),
        "finished_at": _utc_iso(finished),
        "message": _first_lines(getattr(res, "message", None) or ""),
        "rows_affected": adapter_response.get("rows_affected"),
        "failures": getattr(res, "failures", None),
    }


def _write_selection(directory: str, node_ids: list[str]) -> None:
    """Exact selection without argv limits: dbt's `result:error` reads this file."""
    os.makedirs(directory, exist_ok=True)
    now = datetime.now(UTC).isoformat()
    document = {
        "metadata": {
            "dbt_schema_version": "https://schemas.getdbt.com/dbt/run-results/v6.json",
            "dbt_version": _dbt_version(),
            "generated_at": now,
            "invocation_id": "orchestra-selection",
            "env": {},
        },
        "results": [
            {
                "unique_id": uid,
                "status": "error",
                "timing": [],
                "thread_id": "selection",
                "execution_time": 0,
                "adapter_response": {},
                "message": None,
                "failures": None,
                "compiled": None,
                "compiled_code": None,
                "relation_name": None,
                "batch_results": None,
            }
            for uid in node_ids
        ],
        "elapsed_time": 0,
        "args": {},
    }
    with open(os.path.join(directory, "run_results.json"), "w", encoding="utf-8") as fh:
        json.dump(document, fh)


def _yaml_times(request: dict[str, Any]) -> str:
    """A digest of the path, modification time and size of every YAML file dbt may read."""
    project_dir = request["project_dir"]
    skipped = {os.path.realpath(request["target_path"]), os.path.realpath(request["run_dir"])}
    found: list[str] = []
    for root, dirs, files in os.walk(project_dir):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in ("target", "logs", "node_modules", "__pycache__")
            and os.path.realpath(os.path.join(root, d)) not in skipped
        )
        for name in sorted(files):
            if name.endswith((".yml", ".yaml")):
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    info = os.stat(path)
                    found.append(
                        f"{os.path.relpath(path, project_dir)}|{info.st_mtime_ns}|{info.st_size}"
                    )
    return hashlib.sha256("\n".join(found).encode()).hexdigest()[:16]


# -- small helpers -----------------------------------------------------------------------------


def _adapter() -> Any:
    from dbt.adapters.factory import FACTORY

    adapters = list(FACTORY.adapters.values())
    return adapters[0] if adapters else None


def _adapter_config() -> Any:
    adapter = _adapter()
    return getattr(adapter, "config", None)


def _invocation_id() -> str | None:
    try:
        from dbt_common.invocation import get_invocation_id

        return str(get_invocation_id())
    except Exception:  # only metadata: never fail a run over it
        return None


def _dbt_version() -> str:
    from dbt.version import __version__

    return str(__version__)


def _first_lines(text: str, limit: int = 2000) -> str:
    text = str(text).strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def _describe_exception(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    text = str(exc).strip() or type(exc).__name__
    return _first_lines(f"{type(exc).__name__}: {text}")


class _silenced_stdout:
    """Temporarily send fd 1 (dbt's console, already a copy of stderr) to /dev/null."""

    def __enter__(self) -> None:
        sys.stdout.flush()
        self._saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)


class _held_stdout:
    """Hold back what dbt prints on fd 1 (its console) until ``release()``, or drop it."""

    def __enter__(self) -> _held_stdout:
        sys.stdout.flush()
        self._saved = os.dup(1)
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 1)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        with self._file:
            self._file.seek(0)
            self.held = self._file.read().decode("utf-8", errors="replace")

    def release(self) -> None:
        sys.stdout.write(self.held)
        sys.stdout.flush()


def _installed_dbt() -> tuple[str | None, str | None]:
    """The dbt distribution and version this interpreter runs, read without importing dbt.

    dbt 2 wins when present: installed next to dbt-core 1.x, its files replace the `dbt`
    package, so the 1.x metadata would describe code that is no longer there.
    """
    from importlib import metadata

    found: list[tuple[str, str]] = []
    for name in DBT_DISTRIBUTIONS:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    for name, version in found:
        if version.split(".", 1)[0].isdigit() and int(version.split(".", 1)[0]) >= 2:
            return name, version
    return found[0] if found else (None, None)


def hello_message() -> dict[str, Any]:
    distribution, version = _installed_dbt()
    return {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "worker": WORKER_KIND,
        "python": sys.executable,
        "dbt_distribution": distribution,
        "dbt_version": version,
    }


def _import_dbt(channel: Channel) -> None:
    """Import dbt once, and tell the parent which variables dbt took from a `.env` file.

    dbt 1.12 loads the nearest `.env` at or above the working directory (the project) when
    it is imported, without overriding what is set. The parent says so in the task log and
    folds those variables into the fingerprint (as digests: values never leave this process).
    """
    before = set(os.environ)
    try:
        import dbt.cli.main  # noqa: F401  - fail early with a clear message
    except ImportError as exc:
        raise StageError("import", f"dbt is not importable by {sys.executable}: {exc}") from exc
    added = sorted(set(os.environ) - before)
    if not added:
        return
    try:
        from dotenv import find_dotenv

        path = find_dotenv(usecwd=True) or None
    except ImportError:
        path = None
    channel.send(
        {
            "type": "dotenv_loaded",
            "path": path,
            "variables": {
                name: hashlib.sha256(os.environ[name].encode()).hexdigest() for name in added
            },
        }
    )


def _serve(channel: Channel) -> int:
    channel.send(hello_message())
    request = channel.receive()
    if request.get("type") != "start":
        raise StageError("protocol", f"expected a start request, got {request.get('type')!r}")
    if request.get("protocol") != PROTOCOL_VERSION:
        raise StageError(
            "protocol",
            f"the parent speaks protocol {request.get('protocol')!r}, this worker "
            f"{PROTOCOL_VERSION}: install the same airflow-provider-orchestra-dbt version in "
            "both interpreters",
        )
    os.chdir(request["project_dir"])
    session = ManifestSession(request, channel)
    _import_dbt(channel)
    if not request.get("state_aware", True):
        result = session.passthrough()
        channel.send(result)
        return int(result["exit_code"])
    session.parse()
    selected = session.select()
    channel.send(session.graph_message(selected))
    while True:
        message = channel.receive()
        kind = message.get("type")
        if kind == "probe":
            channel.send(session.probe(message.get("sources", []), message.get("schemas", [])))
        elif kind == "warehouse_lock":
            channel.send(_warehouse_lock.attempt(message["key"], message["application_name"]))
        elif kind == "execute":
            _warehouse_lock.check()
            result = session.execute(message["nodes"])
            channel.send(result)
            return int(result["exit_code"])
        elif kind == "finish":
            return 0
        else:
            raise StageError("protocol", f"unknown request {kind!r}")


def main() -> int:
    # Closed, not left to the garbage collector, which would warn of an unclosed file.
    with _take_over_stdout() as protocol_out:
        return _converse(Channel(protocol_out, sys.stdin))


def _converse(channel: Channel) -> int:
    # The parent stops us with SIGINT first: dbt turns that into a clean cancel of open queries.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _serve(channel)
    except StageError as exc:
        channel.send({"type": "error", "stage": exc.stage, "message": exc.message})
        return 2
    except KeyboardInterrupt:
        channel.send({"type": "error", "stage": "interrupted", "message": "interrupted"})
        return 130
    except BaseException as exc:
        channel.send(
            {
                "type": "error",
                "stage": "internal",
                "message": _describe_exception(exc),
                "traceback": traceback.format_exc(),
            }
        )
        return 2


def _exit_now(code: int) -> None:
    """Exit without interpreter teardown: after the last message nothing is left to do, and
    tearing down dbt's modules takes up to two seconds the parent would spend waiting."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    _release_semaphores()
    _stand_down_watchdog()
    os._exit(code)


# -- the warehouse run lock ------------------------------------------------------------------
#
# On PostgreSQL, runs of one project and target take turns on a session-level advisory lock
# (the parent decides when and how long to try: execution/warehouse_lock.py). It lives on a
# connection of its own, opened by dbt-postgres's code from the target's credentials: the
# adapter's connections are keyed by thread and closed by dbt after every invocation, and the
# lock would go with them. Ours stays open until this process exits; then the server sees the
# socket close and frees the lock, however the process ended (SIGKILL too).

# Our session's settings: no idle timeout may end the session (and free the lock) while dbt
# runs, and the server probes an idle client, so the lock of a machine that vanished without
# closing its socket is freed within about a minute rather than TCP's default two hours.
_LOCK_SESSION_SQL = """
select set_config(s.name, v.setting, false)
from pg_settings s
join (values ('idle_session_timeout', '0'), ('idle_in_transaction_session_timeout', '0'),
             ('tcp_keepalives_idle', '30'), ('tcp_keepalives_interval', '10'),
             ('tcp_keepalives_count', '3')) as v(name, setting) using (name)
"""
# pg_locks shows a bigint advisory key as its high and low 32 bits, with objsubid 1.
_LOCK_HOLDER_SQL = """
select a.pid, a.application_name, host(a.client_addr), a.backend_start
from pg_locks l
left join pg_stat_activity a on a.pid = l.pid
where l.locktype = 'advisory' and l.granted and l.objsubid = 1
  and l.database = (select oid from pg_database where datname = current_database())
  and l.classid = %s::bigint::oid and l.objid = %s::bigint::oid
limit 1
"""
_LOCK_HELD_SQL = """
select count(*) from pg_locks
where locktype = 'advisory' and granted and objsubid = 1 and pid = pg_backend_pid()
  and classid = %s::bigint::oid and objid = %s::bigint::oid
"""
# The same as execution/warehouse_lock.py's: this file imports nothing of the package.
LOCKING_ADAPTERS = frozenset({"postgres"})


class WarehouseLock:
    """Tries the advisory lock on a connection kept for this process's whole life."""

    def __init__(self) -> None:
        self._connection: Any = None
        self._key: int | None = None

    def attempt(self, key: int, application_name: str) -> dict[str, Any]:
        """One ``pg_try_advisory_lock``; on contention, who holds the lock."""
        adapter = _adapter()
        kind = adapter.type() if adapter is not None else None
        if kind not in LOCKING_ADAPTERS:
            raise StageError("warehouse_lock", f"the {kind or 'unknown'} adapter keeps no lock")
        try:
            cursor = self._cursor(adapter, application_name)
            cursor.execute("select pg_try_advisory_lock(%s), current_database()", (key,))
            locked, database = cursor.fetchone()
        except Exception as exc:  # the connection, permissions: not contention
            raise StageError("warehouse_lock", _describe_exception(exc)) from exc
        if locked:
            self._key = key
        return {
            "type": "warehouse_lock_result",
            "locked": bool(locked),
            "database": database,
            "holder": None if locked else _lock_holder(cursor, key),
        }

    def check(self) -> None:
        """Before dbt writes: our session must still hold the lock (it may have been ended)."""
        if self._key is None:
            return
        try:
            cursor = self._connection.handle.cursor()
            cursor.execute(_LOCK_HELD_SQL, _key_halves(self._key))
            held = cursor.fetchone()[0] > 0
        except Exception as exc:
            raise StageError(
                "warehouse_lock",
                f"lost the connection holding the PostgreSQL advisory lock: "
                f"{_describe_exception(exc)}",
            ) from exc
        if not held:
            raise StageError("warehouse_lock", "the PostgreSQL advisory lock is no longer held")

    def _cursor(self, adapter: Any, application_name: str) -> Any:
        if self._connection is None:
            import dataclasses

            from dbt.adapters.contracts.connection import Connection

            credentials = dataclasses.replace(
                adapter.config.credentials, application_name=application_name
            )
            connection = Connection(
                type=credentials.type, name="orchestra_dbt_run_lock", credentials=credentials
            )
            # The adapter's own open(): the profile's host, port, SSL, search_path, role,
            # connect timeout and retries, exactly as dbt connects.
            type(adapter.connections).open(connection)
            handle = connection.handle
            handle.commit()  # a role's `set role` opened a transaction; keep it
            # A session lock outlives transactions; autocommit keeps ours from idling in one.
            handle.autocommit = True
            handle.cursor().execute(_LOCK_SESSION_SQL)
            self._connection = connection
        return self._connection.handle.cursor()


def _key_halves(key: int) -> tuple[int, int]:
    return (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF


def _lock_holder(cursor: Any, key: int) -> dict[str, Any] | None:
    """The session holding the lock, or None (it has just been freed, or we may not look)."""
    try:
        cursor.execute(_LOCK_HOLDER_SQL, _key_halves(key))
        row = cursor.fetchone()
    except Exception:  # naming the holder is a courtesy; waiting works without it
        return None
    if row is None:
        return None
    pid, application_name, client_addr, backend_start = row
    return {
        "pid": pid,
        "application_name": application_name,
        "client_addr": client_addr,
        "backend_start": _utc_iso(backend_start),
    }


# Module-level, so that the connection lives until the process exits, not until the last
# reference to a session goes.
_warehouse_lock = WarehouseLock()


# -- dying with the parent -------------------------------------------------------------------
#
# A parent killed outright (SIGKILL: the OOM killer, a lost node) can neither stop dbt nor
# record what it did, so dbt must not go on writing to the warehouse. Two mechanisms, because
# neither covers everything alone:
#
# * Linux: prctl(PR_SET_PDEATHSIG, SIGKILL) has the kernel kill this process the moment the
#   parent thread that started it ends, even while it is deep in a warehouse query.
# * Anywhere: a watchdog forked at start, before dbt is imported, waits on the lifeline (a
#   pipe only the parent writes to, so end-of-file means the parent is gone) and on a pipe
#   from this process. It also ends what dbt started in this process group, which a death
#   signal does not reach. It leaves the group so that the parent's stop() signals meant
#   for dbt miss it and so that it can tell when the group is empty.
#
# The watchdog keeps the run lock's descriptor (the parent's lock, shared, see
# execution/run_lock.py) until the group is empty: the next run starts only once nothing of
# this one can touch the warehouse.

# prctl(2) option: the signal to get when the parent thread ends.
_PR_SET_PDEATHSIG = 1
# Sent to the watchdog just before a normal exit: what is left (multiprocessing's resource
# tracker, on its way out) is to be left alone.
_STAND_DOWN = b"."
# How long what dbt started gets to end on SIGTERM before SIGKILL. multiprocessing's resource
# tracker ignores SIGTERM and exits within milliseconds of dbt, after removing dbt's named
# semaphores, which a SIGKILL would leave behind in /dev/shm. Also the longest the run lock
# outlives the worker: the dead worker counts as a member of its group until reaped, which
# an init that does not reap orphans never does.
_GROUP_GRACE = 0.3
# The longest the watchdog waits for SIGKILLed members to be gone before it lets go.
_KILL_WAIT = 5.0
# The watchdog's pid and the pipe to it.
_watchdog: tuple[int, int] | None = None


def die_with_parent(argv: Sequence[str]) -> None:
    """Arrange to die with the parent named by ``--parent``, whose ``--lifeline`` we read.

    Without them (started by hand, or by a test), does nothing. Call before any thread
    starts: it forks.
    """
    options = dict(zip(argv[::2], argv[1::2], strict=False))
    if "--parent" not in options or "--lifeline" not in options:
        return
    parent, lifeline = int(options["--parent"]), int(options["--lifeline"])
    lock_fd = int(options["--lock-fd"]) if "--lock-fd" in options else None
    if lock_fd is not None:
        # Kept open, not used; but not by what dbt runs: a stray daemon would hold it forever.
        os.set_inheritable(lock_fd, False)
    _parent_death_signal(signal.SIGKILL)
    # The parent may have died before the line above: the kernel would never tell us.
    if os.getppid() != parent:
        os._exit(1)
    global _watchdog
    worker, group = os.getpid(), os.getpgrp()
    watched, tell = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(tell)
        _watch(worker, group if group == worker else None, lifeline, watched)
    os.close(watched)
    os.close(lifeline)
    _watchdog = (pid, tell)


def _parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # no libc to speak of: the watchdog still works
        return False


def _watch(worker: int, group: int | None, lifeline: int, watched: int) -> NoReturn:
    """The watchdog: ends the worker and its group if the parent dies or the worker crashes.

    ``group`` is None when the worker does not lead its own group: then only it is killed.
    """
    try:
        if group is not None:
            # Failing that, we are in the group: end it all the same, ourselves included.
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # pipes the parent reads to their end: not held open by us
            os.dup2(devnull, fd)
        os.close(devnull)
        poller = select.poll()  # not select(): descriptors may be numbered above 1023
        poller.register(watched, select.POLLIN)
        poller.register(lifeline, select.POLLIN)
        ready = {fd for fd, _ in poller.poll()}
        if watched in ready and os.read(watched, 1) == _STAND_DOWN:
            os._exit(0)
        # The parent is gone and the worker lives on (while it is still our parent, that is:
        # once reaped, its pid may be another process's).
        if watched not in ready and os.getppid() == worker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
        if group is not None:
            # Also after a crash of the worker alone: what it started is nobody's now.
            _end_group(group)
    finally:
        os._exit(0)


def _end_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + _GROUP_GRACE
    while time.monotonic() < deadline:
        time.sleep(0.01)
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    # SIGKILL is delivered, not yet done (a loaded machine takes a while to tear a process
    # down): the lock we hold must outlive every member.
    deadline = time.monotonic() + _KILL_WAIT
    while _running_members(group) and time.monotonic() < deadline:
        time.sleep(0.005)


def _running_members(group: int) -> bool:
    """Whether a process of ``group`` still runs (zombies have ended); False without /proc."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(group) and fields[0] != "Z":
            return True
    return False


def _stand_down_watchdog() -> None:
    if _watchdog is None:
        return
    pid, tell = _watchdog
    with contextlib.suppress(OSError):
        os.write(tell, _STAND_DOWN)
        # Waited for, because it holds the run lock: once the parent has seen us exit, the
        # next run (even one with lock_timeout 0) must find the lock free.
        os.waitpid(pid, 0)


def _release_semaphores() -> None:
    """Unlink the named semaphores behind dbt's locks, which ``os._exit`` would leave behind.

    dbt makes its manifest and connection locks from a spawn context: each is a named
    semaphore, registered with multiprocessing's resource tracker and unlinked by a finalizer
    a normal exit runs. Skipped, the tracker unlinks them itself and prints "There appear to
    be N leaked semaphore objects" into the task log. Only these finalizers run: others (a
    thread pool's) could wait on dbt threads an interrupt left behind.
    """
    from multiprocessing import synchronize, util

    cleanup = getattr(synchronize.SemLock, "_cleanup", None)
    registry = getattr(util, "_finalizer_registry", {})
    with contextlib.suppress(Exception):  # private API: at worst the tracker warns again
        for finalizer in list(registry.values()):
            if cleanup is not None and getattr(finalizer, "_callback", None) is cleanup:
                finalizer()


if __name__ == "__main__":
    die_with_parent(sys.argv[1:])
    _exit_now(main())
