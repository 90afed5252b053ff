"""The Airflow layer's Assets: one per dbt model and source, named by a translator.

``manifest`` and ``warehouse`` read ``manifest.json`` and profiles at DAG-parse time; they
import no Airflow, so the translator is importable wherever the Asset names are needed.
"""

from airflow_provider_orchestra_dbt.assets.translator import (
    DbtAssetTranslator,
    DbtNodeRef,
    NodeRefs,
    dbt_model_asset,
)

__all__ = ["DbtAssetTranslator", "DbtNodeRef", "NodeRefs", "dbt_model_asset"]
