"""dbt nodes as Airflow Assets: names, URIs and groups, overridable by the user.

A consumer DAG that schedules on a dbt model builds the same Asset with the same
translator::

    from airflow_provider_orchestra_dbt.assets import dbt_model_asset

    @dag(schedule=[dbt_model_asset("/opt/dbt/jaffle", "fct_orders")])
    def reporting(): ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_provider_orchestra_dbt.assets.warehouse import Warehouse, warehouse_for

if TYPE_CHECKING:
    from airflow.sdk import Asset

    from airflow_provider_orchestra_dbt.assets.manifest import ManifestNode


@dataclass(frozen=True)
class DbtNodeRef:
    """What a translator sees of a dbt node (a model, seed, snapshot or source)."""

    unique_id: str
    resource_type: str
    name: str
    database: str | None
    schema: str | None
    identifier: str
    warehouse: Warehouse
    package_name: str = ""
    source_name: str | None = None

    @property
    def uri(self) -> str:
        return self.warehouse.uri(self.database, self.schema, self.identifier)

    @property
    def dataset_name(self) -> str:
        return self.warehouse.dataset_name(self.database, self.schema, self.identifier)


class DbtAssetTranslator:
    """Maps dbt nodes to Assets. Subclass and override ``name``/``uri``/``group`` to customise.

    :param key_prefix: prefix for model, seed and snapshot Asset names (a string or parts
        joined with ``/``), like dagster-dbt's key prefix.
    :param source_key_prefix: the same for sources.
    :param group: the Asset group (default ``dbt``).
    """

    def __init__(
        self,
        *,
        key_prefix: str | Sequence[str] | None = None,
        source_key_prefix: str | Sequence[str] | None = None,
        group: str = "dbt",
    ) -> None:
        self.key_prefix = _parts(key_prefix)
        self.source_key_prefix = _parts(source_key_prefix)
        self.default_group = group

    def name(self, node: DbtNodeRef) -> str:
        prefix = self.source_key_prefix if node.resource_type == "source" else self.key_prefix
        return "/".join([*prefix, node.dataset_name])

    def uri(self, node: DbtNodeRef) -> str:
        return node.uri

    def group(self, node: DbtNodeRef) -> str:
        return self.default_group

    def asset(self, node: DbtNodeRef) -> Asset:
        from airflow.sdk import Asset

        return Asset(
            name=self.name(node),
            uri=self.uri(node),
            group=self.group(node),
            extra={"dbt_unique_id": node.unique_id, "dbt_resource_type": node.resource_type},
        )


def _parts(prefix: str | Sequence[str] | None) -> list[str]:
    if prefix is None:
        return []
    if isinstance(prefix, str):
        return [p for p in prefix.split("/") if p]
    return list(prefix)


class NodeRefs:
    """Builds DbtNodeRefs for one project and target, reading profiles.yml once per database."""

    def __init__(
        self,
        adapter_type: str | None,
        *,
        project_dir: str | Path | None,
        profiles_dir: str | Path | None,
        target: str | None,
    ) -> None:
        self.adapter_type = adapter_type
        self.project_dir = project_dir
        self.profiles_dir = profiles_dir
        self.target = target
        self._warehouses: dict[str | None, Warehouse] = {}

    def warehouse(self, database: str | None) -> Warehouse:
        if database not in self._warehouses:
            self._warehouses[database] = warehouse_for(
                self.adapter_type,
                project_dir=self.project_dir,
                profiles_dir=self.profiles_dir,
                target=self.target,
                database=database,
            )
        return self._warehouses[database]

    def ref(
        self,
        unique_id: str,
        resource_type: str,
        name: str,
        database: str | None,
        schema: str | None,
        identifier: str,
        package_name: str = "",
        source_name: str | None = None,
    ) -> DbtNodeRef:
        return DbtNodeRef(
            unique_id,
            resource_type,
            name,
            database,
            schema,
            identifier,
            self.warehouse(database),
            package_name,
            source_name,
        )

    def from_manifest(self, node: ManifestNode) -> DbtNodeRef:
        return self.ref(
            node.unique_id,
            node.resource_type,
            node.name,
            node.database,
            node.schema,
            node.identifier or node.name,
            node.package_name,
            node.source_name,
        )


def dbt_model_asset(
    project_dir: str | Path,
    model: str,
    *,
    profiles_dir: str | Path | None = None,
    target: str | None = None,
    manifest_path: str | Path | None = None,
    translator: DbtAssetTranslator | None = None,
) -> Asset:
    """The Asset the operator emits for ``model`` (by name), for consumer DAGs' schedules."""
    from airflow_provider_orchestra_dbt.assets.manifest import load_manifest

    index = load_manifest(manifest_path or Path(project_dir) / "target" / "manifest.json")
    matches = [n for n in index.models() if n.name == model]
    if len(matches) != 1:
        raise ValueError(
            f"model {model!r}: {len(matches)} matches in the manifest of {project_dir}"
        )
    refs = NodeRefs(
        index.adapter_type, project_dir=project_dir, profiles_dir=profiles_dir, target=target
    )
    return (translator or DbtAssetTranslator()).asset(refs.from_manifest(matches[0]))
