"""The operator's grouped arguments: how dbt runs, and what the task publishes.

``DbtExecutionOptions`` takes exactly the run options declared on ``DbtRunConfig`` with
``operator="execution"``: adding one there adds it here, with its templating and docs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from airflow_provider_orchestra_dbt.assets import DbtAssetTranslator
from airflow_provider_orchestra_dbt.execution.config import operator_options

_EXECUTION = operator_options("execution")


class DbtExecutionOptions:
    """How dbt runs: ``OrchestraDbtOperator(..., execution=DbtExecutionOptions(threads=4))``.

    Each keyword argument left out or None takes the run option's default."""

    __doc__ = (
        (__doc__ or "")
        + "\n\n"
        + "\n".join(f"    :param {o.parameter}: {o.doc}" for o in _EXECUTION)
    )
    # Airflow renders a nested object's template_fields in place, so this class is mutable.
    template_fields: ClassVar[tuple[str, ...]] = tuple(
        o.parameter for o in _EXECUTION if o.templated
    )

    def __init__(self, **options: Any) -> None:
        known = [o.parameter for o in _EXECUTION]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(
                f"DbtExecutionOptions got unexpected keyword arguments {unknown}; "
                f"it takes {', '.join(known)}"
            )
        for name in known:
            value = options.get(name)
            setattr(self, name, os.fspath(value) if isinstance(value, os.PathLike) else value)

    def __getattr__(self, name: str) -> Any:
        # Reached only for names __init__ did not set; the options themselves are declared
        # on DbtRunConfig, so for type checkers every option reads as Any.
        raise AttributeError(f"{type(self).__name__} has no option {name!r}")

    def run_options(self) -> dict[str, Any]:
        """These options by ``DbtRunConfig`` field name, for ``DbtRunConfig.create``."""
        return {o.name: getattr(self, o.parameter) for o in _EXECUTION}

    def given(self) -> dict[str, Any]:
        return {o.parameter: v for o in _EXECUTION if (v := getattr(self, o.parameter)) is not None}

    def serialize(self) -> dict[str, Any]:
        """What Airflow stores and shows for this template field."""
        return self.given()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.given().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DbtExecutionOptions):
            return NotImplemented
        return self.given() == other.given()

    __hash__ = None  # type: ignore[assignment]  # mutable


@dataclass
class DbtTaskOutputs:
    """What the task publishes besides its return value (Airflow only).

    ``OrchestraDbtOperator(..., outputs=DbtTaskOutputs(push_node_details=False))``.

    :param push_node_details: also push per-node decisions and results to XCom
        (key ``orchestra_dbt_nodes``).
    :param manifest_path: the project's ``manifest.json``, read when the DAG is parsed to
        declare one Asset per selected model and one per source (default
        ``<project_dir>/target/manifest.json``; produce it with ``dbt parse`` when deploying).
    :param asset_translator: maps dbt nodes to Asset names/URIs/groups.
    :param emit_assets: declare Assets and emit events for rebuilt models (default True).
    :param picture_dir: where each try writes its picture, an HTML graph of the run (default
        ``$ORCHESTRA_DBT_PICTURE_DIR``, else ``$AIRFLOW_HOME/orchestra_dbt/pictures``); with
        state on S3 it is also uploaded next to the state object, for the UI plugin.
    :param picture_base_url: URL under which ``picture_dir`` is served, for the task's
        "dbt run picture" link (default ``$ORCHESTRA_DBT_PICTURE_BASE_URL``; else the
        provider's UI plugin serves it).
    """

    push_node_details: bool = True
    manifest_path: str | os.PathLike[str] | None = None
    asset_translator: DbtAssetTranslator = field(default_factory=DbtAssetTranslator)
    emit_assets: bool = True
    picture_dir: str | os.PathLike[str] | None = None
    picture_base_url: str | None = None
