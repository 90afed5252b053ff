"""dbt's run artifacts read without dbt: node results, source freshness, existing relations.

An executor that gets artifacts instead of a worker's messages (a dbt Cloud job run,
docs/design.md §2.2) turns ``run_results.json`` into the ``NodeResult`` values outcomes are
recorded from, and ``sources.json`` (``dbt source freshness``) and ``catalog.json`` (``dbt docs
generate``) into the ``probe_result`` message the worker would send, so ``Probe.from_message``
reads both the same way. A source the artifact does not measure is unknown (the planner builds
its readers); a schema the catalog does not cover is not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow_provider_orchestra_dbt.decisions.outcomes import NodeResult
from airflow_provider_orchestra_dbt.execution.manifest_graph import ArtifactError
from airflow_provider_orchestra_dbt.state.model import format_timestamp, parse_timestamp

__all__ = ["ArtifactError", "node_results", "probe_message"]


def node_results(run_results: Any, *, origin: str) -> list[NodeResult]:
    """Each result of a ``run_results.json``, in its order."""
    results = _results(run_results, origin)
    try:
        return [_node_result(result) for result in results]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{origin}: a result lacks a field dbt always writes ({exc})") from None


def _node_result(result: Mapping[str, Any]) -> NodeResult:
    finished = None
    for timing in result.get("timing") or []:
        if timing.get("completed_at"):
            finished = format_timestamp(parse_timestamp(timing["completed_at"]))
    response = result.get("adapter_response") or {}
    message = result.get("message") or ""
    return NodeResult(
        unique_id=result["unique_id"],
        status=str(result["status"]).lower(),
        execution_time=result.get("execution_time"),
        finished_at=finished,
        message=message.strip().splitlines()[0] if message.strip() else None,
        rows_affected=response.get("rows_affected"),
        failures=result.get("failures"),
    )


def probe_message(
    sources: Any,
    catalog: Any,
    *,
    wanted_sources: Iterable[str],
    origin: str,
    covered_schemas: Iterable[Sequence[str]] = (),
) -> dict[str, Any]:
    """The worker's ``probe_result`` message from ``sources.json`` and ``catalog.json``.

    Either may be ``None`` (the job has no such step). Sources in ``wanted_sources`` that
    ``sources`` does not measure, or measured with an error, are unknown.
    ``covered_schemas`` (``[database, schema]``) are those the catalog was generated for
    (``dbt docs generate --select`` lists every selected relation that exists): a relation
    of theirs it does not list does not exist. They are keyed as given, and matched to the
    catalog without regard to case (warehouses report names in their own case).
    """
    measured = _freshness(sources, origin) if sources is not None else {}
    freshness = {
        uid: measured.get(uid)
        or {
            "error": f"{origin} did not measure it: dbt source freshness measures only "
            "sources with a freshness config"
        }
        for uid in wanted_sources
    }
    relations = _relations(catalog, origin) if catalog is not None else {}
    if catalog is not None:
        by_lower = {key.lower(): listing for key, listing in relations.items()}
        for database, schema in covered_schemas:
            key = f"{database}.{schema}"
            relations[key] = by_lower.get(key.lower(), {"names": []})
    return {"type": "probe_result", "freshness": freshness, "relations": relations}


def _freshness(sources: Any, origin: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for result in _results(sources, origin):
        uid = result.get("unique_id")
        if not isinstance(uid, str):
            raise ArtifactError(f"{origin}: a freshness result has no unique_id")
        loaded: Any = result.get("max_loaded_at")
        status = str(result.get("status", "")).lower()
        if status in ("error", "runtime error") and not loaded:
            out[uid] = {"error": _first_line(result.get("error") or result.get("message"))}
            continue
        try:
            out[uid] = {"max_loaded_at": format_timestamp(parse_timestamp(loaded))}
        except (TypeError, ValueError):
            out[uid] = {"error": f"max_loaded_at {loaded!r} is not a timestamp"}
    return out


def _relations(catalog: Any, origin: str) -> dict[str, dict[str, list[str]]]:
    if not isinstance(catalog, Mapping):
        raise ArtifactError(f"{origin}: catalog is not a JSON object")
    names: dict[str, set[str]] = {}
    for section in ("nodes", "sources"):
        for entry in (catalog.get(section) or {}).values():
            metadata = entry.get("metadata") if isinstance(entry, Mapping) else None
            if not isinstance(metadata, Mapping) or not metadata.get("name"):
                raise ArtifactError(f"{origin}: a catalog entry has no metadata.name")
            schema_key = f"{metadata.get('database')}.{metadata.get('schema')}"
            names.setdefault(schema_key, set()).add(str(metadata["name"]).lower())
    return {key: {"names": sorted(found)} for key, found in names.items()}


def _results(document: Any, origin: str) -> list[Mapping[str, Any]]:
    results = document.get("results") if isinstance(document, Mapping) else None
    if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
        raise ArtifactError(f"{origin} is not a dbt results artifact: no list of results")
    return results


def _first_line(text: Any) -> str:
    lines = str(text or "no error message").strip().splitlines()
    return lines[0] if lines else "no error message"
