"""Small ``manifest.json`` documents for tests that read manifests without dbt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def manifest_node(uid: str, deps: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    """A manifest node for ``uid`` (``kind.package.name``), depending on ``deps``."""
    kind, package, *rest = uid.split(".")
    return {
        "unique_id": uid,
        "resource_type": kind,
        "name": rest[-1],
        "package_name": package,
        "database": "db",
        "schema": kw.pop("schema", "main"),
        "alias": rest[-1],
        "tags": kw.pop("tags", []),
        "fqn": [package, *rest],
        "original_file_path": kw.pop("path", f"models/{rest[-1]}.sql"),
        "config": {"materialized": kw.pop("materialized", "table")},
        "depends_on": {"nodes": list(deps)},
        **kw,
    }


def write_manifest(path: Path, nodes: Sequence[dict[str, Any]], *sources: dict[str, Any]) -> Path:
    """A postgres project's ``manifest.json`` at ``path`` with ``nodes`` and ``sources``."""
    document = {
        "metadata": {"adapter_type": "postgres"},
        "nodes": {n["unique_id"]: n for n in nodes},
        "sources": {s["unique_id"]: s for s in sources},
    }
    path.write_text(json.dumps(document))
    return path
