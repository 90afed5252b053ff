"""The dbt side of a run: one subprocess that parses once and executes what the parent decides.

This file imports only the standard library and dbt, and is started by path
(``python dbt_worker.py``), so it also runs under a separate dbt virtualenv that has neither
Airflow nor this package installed. It speaks JSON lines: requests on stdin, replies and live
events on the original stdout. dbt's own console output is moved to stderr so it can never
corrupt the protocol stream.

Conversation (the parent drives; see ``worker/client.py``)::

    parent -> {"type": "start", ...RunRequest}
    worker -> {"type": "graph", ...}            # after one parse and the selection
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
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TextIO

PROTOCOL_VERSION = 1
PARTIAL_PARSE_FILE = "partial_parse.msgpack"
# dbt keeps these resource types as warehouse objects; everything else is not state-tracked.
SELECTABLE_TYPES = {"model", "seed", "snapshot", "test", "unit_test", "source"}
# A threshold so wide it never warns: it only makes `dbt source freshness` measure sources
# that have a loaded_at_query but no freshness block of their own (dbt skips those otherwise).
_MEASURE_ONLY_DAYS = 1_000_000


class WorkerError(Exception):
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
            raise WorkerError("protocol", "the parent closed the request stream")
        message: dict[str, Any] = json.loads(line)
        return message


def _take_over_stdout() -> TextIO:
    """Keep fd 1 for the protocol and point everything that prints at stderr."""
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    return io.TextIOWrapper(os.fdopen(protocol_fd, "wb"), encoding="utf-8", write_through=True)


class DbtSession:
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
            raise WorkerError(stage, _describe_exception(result.exception))
        return result

    # -- parse -------------------------------------------------------------------------------

    def parse(self) -> None:
        cache_file = self._partial_parse_cache()
        os.makedirs(self.target_path, exist_ok=True)
        run_copy = os.path.join(self.target_path, PARTIAL_PARSE_FILE)
        if cache_file and os.path.exists(cache_file):
            shutil.copyfile(cache_file, run_copy)
        from dbt.cli.main import dbtRunner

        result = dbtRunner().invoke(["parse", "--quiet", *self._common_args()])
        if not result.success or result.result is None:
            message = (
                _describe_exception(result.exception)
                if result.exception
                else "dbt parse failed (see dbt's output above)"
            )
            raise WorkerError("parse", message)
        self.manifest = result.result
        if cache_file and os.path.exists(run_copy):
            # Replace atomically: concurrent runs of the same project share this cache.
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            tmp = f"{cache_file}.{os.getpid()}.tmp"
            shutil.copyfile(run_copy, tmp)
            os.replace(tmp, cache_file)

    def _partial_parse_cache(self) -> str | None:
        cache_dir = self.request.get("cache_dir")
        if not cache_dir:
            return None
        return os.path.join(cache_dir, PARTIAL_PARSE_FILE)

    # -- selection and graph -----------------------------------------------------------------

    def select(self) -> list[str]:
        if self._selects_everything():
            return self._every_node()
        args = ["ls", "--quiet", *self._common_args(), "--output", "json"]
        args += ["--output-keys", "unique_id", *self._user_selection()]
        # `ls` prints every match; keep that noise out of the task log.
        with _silenced_stdout():
            result = self._invoke("select", args)
        if not result.success:
            raise WorkerError("select", "dbt could not resolve the selection")
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
            "protocol": PROTOCOL_VERSION,
            "dbt_version": _dbt_version(),
            "python": sys.executable,
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
        for uid in source_ids:
            src = self.manifest.sources.get(uid)
            if src is None:
                out[uid] = {"max_loaded_at": None, "error": "source not in the manifest"}
            elif getattr(src, "loaded_at_query", None):
                by_query.append(src)
            elif src.loaded_at_field:
                by_field.append(src)
            else:
                out[uid] = {"max_loaded_at": None, "error": "it has no loaded_at_field"}
        out.update(self._freshness_by_field(by_field))
        out.update(self._freshness_by_dbt(by_query))
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
        if not any(a.split("=", 1)[0] in ("--log-level", "-q", "--quiet") for a in dbt_args):
            # The parent logs one line per node; dbt's console adds warnings and errors only.
            args += ["--log-level", "warn"]
        return self._run_dbt(args + dbt_args)

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

    def _run_dbt(self, args: list[str]) -> dict[str, Any]:
        callback = _EventForwarder(self.channel)
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


class _EventForwarder:
    """dbt callback: forwards node start/finish as compact events. Must never raise."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.warned = False

    def __call__(self, event: Any) -> None:
        try:
            name = event.info.name
            if name == "NodeStart":
                info = event.data.node_info
                self.channel.send(
                    {
                        "type": "node_start",
                        "unique_id": info.unique_id,
                        "started_at": _utc_iso(info.node_started_at),
                    }
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


# -- facts extraction --------------------------------------------------------------------------


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


def _serve(channel: Channel) -> int:
    request = channel.receive()
    if request.get("type") != "start":
        raise WorkerError("protocol", f"expected a start request, got {request.get('type')!r}")
    os.chdir(request["project_dir"])
    session = DbtSession(request, channel)
    try:
        import dbt.cli.main  # noqa: F401  - fail early with a clear message
    except ImportError as exc:
        raise WorkerError("import", f"dbt is not importable by {sys.executable}: {exc}") from exc
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
        elif kind == "execute":
            result = session.execute(message["nodes"])
            channel.send(result)
            return int(result["exit_code"])
        elif kind == "finish":
            return 0
        else:
            raise WorkerError("protocol", f"unknown request {kind!r}")


def main() -> int:
    protocol_out = _take_over_stdout()
    channel = Channel(protocol_out, sys.stdin)
    # The parent stops us with SIGINT first: dbt turns that into a clean cancel of open queries.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _serve(channel)
    except WorkerError as exc:
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
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
