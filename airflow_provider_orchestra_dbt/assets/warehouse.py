"""Where a dbt target's tables live, as an Asset/OpenLineage namespace, without importing dbt.

Asset URIs must be identical when the DAG is parsed (declarations) and when the task runs
(events), so both read the target from ``profiles.yml`` here: rendered with jinja2 and the
``env_var`` / ``as_number`` helpers dbt offers, in the same environment.

URIs: ``postgres://host:port/database/schema/table`` (Airflow's and OpenLineage's form),
``duckdb://database/schema/table`` (DuckDB's catalog name; no host), and for other adapters
``<adapter>://database/schema/table``. OpenLineage datasets use the namespace (the URI up to
the authority) and the name ``database.schema.table``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Warehouse:
    adapter_type: str
    authority: str  # host:port for servers, the catalog for DuckDB

    @property
    def namespace(self) -> str:
        return f"{self.adapter_type}://{self.authority}"

    def uri(self, database: str | None, schema: str | None, table: str) -> str:
        parts = [p for p in (database, schema, table) if p]
        if self.adapter_type == "duckdb":
            # DuckDB's database is the authority; the path is schema/table.
            parts = parts[1:] if len(parts) == 3 else parts
        return f"{self.namespace}/{'/'.join(parts)}"

    def dataset_name(self, database: str | None, schema: str | None, table: str) -> str:
        return ".".join(p for p in (database, schema, table) if p)


def warehouse_for(
    adapter_type: str | None,
    *,
    project_dir: str | Path | None,
    profiles_dir: str | Path | None,
    target: str | None,
    database: str | None = None,
) -> Warehouse:
    """The namespace of the target, falling back to the adapter and database if unreadable.

    ``project_dir`` None: dbt runs elsewhere (dbt Cloud) and its profile is not readable here.
    """
    adapter = adapter_type or "dbt"
    output = _target_output(Path(project_dir), profiles_dir, target) if project_dir else {}
    host = output.get("host")
    if host:
        port = output.get("port") or _DEFAULT_PORTS.get(adapter)
        return Warehouse(adapter, f"{host}:{port}" if port else str(host))
    if adapter == "duckdb":
        path = output.get("path")
        catalog = Path(str(path)).stem if path and path != ":memory:" else database
        return Warehouse(adapter, catalog or database or "memory")
    return Warehouse(adapter, database or "default")


_DEFAULT_PORTS = {"postgres": 5432, "redshift": 5439, "mysql": 3306}


def _target_output(
    project_dir: Path, profiles_dir: str | Path | None, target: str | None
) -> Mapping[str, Any]:
    """The rendered output of ``target`` in profiles.yml, or {} when it cannot be read."""
    try:
        import yaml

        project = yaml.safe_load((project_dir / "dbt_project.yml").read_text()) or {}
        profile_name = project.get("profile")
        directory = Path(profiles_dir) if profiles_dir else _default_profiles_dir(project_dir)
        profiles = yaml.safe_load(_render((directory / "profiles.yml").read_text())) or {}
        profile = profiles.get(profile_name) or {}
        outputs = profile.get("outputs") or {}
        chosen = target or profile.get("target")
        output = outputs.get(chosen) or {}
        return output if isinstance(output, Mapping) else {}
    except Exception:  # a declaration must never break DAG parsing
        return {}


def _default_profiles_dir(project_dir: Path) -> Path:
    explicit = os.environ.get("DBT_PROFILES_DIR")
    if explicit:
        return Path(explicit)
    if (project_dir / "profiles.yml").is_file():
        return project_dir
    return Path.home() / ".dbt"


def _render(text: str) -> str:
    import jinja2

    def env_var(name: str, default: str | None = None) -> str:
        # Unlike dbt, a missing variable renders empty: other targets' variables must not
        # stop us reading this one.
        return os.environ.get(name, default if default is not None else "")

    environment = jinja2.Environment(autoescape=False)
    environment.filters.update(as_number=_as_number, as_text=str, as_bool=_as_bool)
    return environment.from_string(text).render(env_var=env_var)


def _as_number(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() else number


def _as_bool(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")
