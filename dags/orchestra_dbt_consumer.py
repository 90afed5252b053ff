"""Asset-driven: a Python task that runs whenever the tutorial rebuilds ``fct_orders``.

The tutorial's dbt task emits an Asset event only for models it really rebuilt, so this DAG
runs after a run that rebuilt ``fct_orders`` and not after one that reused it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_orchestra_dbt.assets import dbt_model_asset

TUTORIAL_DIR = Path(
    os.environ.get("ORCHESTRA_DBT_TUTORIAL_DIR", Path(__file__).resolve().parents[1] / "tutorial")
)
FCT_ORDERS = dbt_model_asset(
    TUTORIAL_DIR,
    "fct_orders",
    profiles_dir=TUTORIAL_DIR,
    target=os.environ.get("ORCHESTRA_DBT_TUTORIAL_TARGET", "duckdb"),
    manifest_path=os.environ.get("ORCHESTRA_DBT_TUTORIAL_MANIFEST") or None,
)

with DAG(
    dag_id="orchestra_dbt_consumer",
    schedule=[FCT_ORDERS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["dbt", "orchestra", "tutorial"],
    doc_md=__doc__,
):

    @task(inlets=[FCT_ORDERS])
    def report_on_orders(*, inlet_events: dict) -> dict:
        """Read what the dbt task said about the rebuild (rows, timing, invocation)."""
        latest = inlet_events[FCT_ORDERS][-1]
        print(f"fct_orders was rebuilt: {latest.extra}")
        return dict(latest.extra)

    report_on_orders()
