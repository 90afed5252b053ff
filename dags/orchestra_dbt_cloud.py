"""Example: a dbt Cloud job run state-aware, so each run builds only what changed.

``OrchestraDbtCloudOperator`` triggers a short plan run of the job (``dbt docs generate`` and
``dbt source freshness`` with the job's own selection), decides per node with the same rules
as the local operator, and triggers one build run of exactly the nodes to build, or none.
While dbt Cloud builds, the task waits in the triggerer, not in a worker slot.

Set up:

* a ``dbt_cloud`` connection ``dbt_cloud_default`` (Account ID, API Token, and the Tenant
  for a non-default dbt Cloud host), from Airflow's official dbt Cloud provider
  (``pip install 'airflow-provider-orchestra-dbt[dbt-cloud]'``);
* ``ORCHESTRA_DBT_CLOUD_JOB_ID``: the job to run (its first ``dbt build`` step gives the
  selection and flags; pass the vars your models read there with ``--vars``);
* optionally ``ORCHESTRA_DBT_CLOUD_MANIFEST``: the project's ``manifest.json`` (``dbt parse``
  when deploying), to declare one Asset per model when this file is parsed;
* optionally ``ORCHESTRA_DBT_CLOUD_STATE_CONN_ID``: an ``orchestra_dbt`` connection for the
  state (S3 or the Orchestra API when workers do not share a disk).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from airflow_provider_orchestra_dbt.operators.options import DbtTaskOutputs
from airflow_provider_orchestra_dbt.operators.orchestra_dbt_cloud import (
    OrchestraDbtCloudOperator,
)

with DAG(
    dag_id="orchestra_dbt_cloud",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # dbt Cloud runs one run of a job at a time; overlapping DAG runs would only queue.
    max_active_runs=1,
    tags=["dbt", "dbt-cloud", "orchestra"],
    doc_md=__doc__,
):
    OrchestraDbtCloudOperator(
        task_id="dbt_cloud_build",
        job_id=os.environ.get("ORCHESTRA_DBT_CLOUD_JOB_ID", "0"),
        dbt_cloud_conn_id=os.environ.get("ORCHESTRA_DBT_CLOUD_CONN_ID", "dbt_cloud_default"),
        state_conn_id=os.environ.get("ORCHESTRA_DBT_CLOUD_STATE_CONN_ID") or None,
        poll_interval=float(os.environ.get("ORCHESTRA_DBT_CLOUD_POLL_INTERVAL", "10")),
        # Cancels the dbt Cloud run too, when it is reached while dbt Cloud still builds.
        execution_timeout=timedelta(
            seconds=float(os.environ.get("ORCHESTRA_DBT_CLOUD_TIMEOUT", str(3 * 3600)))
        ),
        outputs=DbtTaskOutputs(manifest_path=os.environ.get("ORCHESTRA_DBT_CLOUD_MANIFEST")),
    )
