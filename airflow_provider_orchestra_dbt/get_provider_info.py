"""Provider metadata read by Airflow's ProvidersManager (``apache_airflow_provider`` entry point).

This module must stay cheap to import: Airflow calls :func:`get_provider_info` while
discovering providers (CLI, scheduler, API server), long before any task runs. It must not
import dbt, boto3, requests or the hook module.

Connection form (Airflow >= 3.2)
--------------------------------
The Airflow 3 connections UI renders the form for a connection type purely from the
declarative ``conn-fields`` and ``ui-field-behaviour`` keys below (``ProvidersManager``
turns them into ``connection_form_widgets`` / ``field_behaviours`` without importing the
hook). Values of ``conn-fields`` are stored under their bare names in ``Connection.extra``;
:class:`~airflow_provider_orchestra_dbt.hooks.orchestra_dbt.StateConnectionConfig` reads them
from ``conn.extra_dejson``. A conn-field is treated as sensitive (masked input,
``ConnectionFormWidgetInfo.is_sensitive``) when its schema has ``"format": "password"``.

Required marks: the 3.3 form marks a conn-field required exactly when its schema ``type``
excludes ``"null"``, one field at a time; it ignores ``if``/``then``, ``dependencies`` and a
top-level ``required``, so "required for backend x" cannot be expressed. Only ``backend`` (needed
by every backend, and defaulted) is marked; every backend-specific field is nullable, says in its
description which backends need it, and the hook enforces that with a ``ValueError`` naming the
connection and the field.
"""

from __future__ import annotations

import copy
from typing import Any

from airflow_provider_orchestra_dbt import __version__
from airflow_provider_orchestra_dbt.state.http import ORCHESTRA_ENVS
from airflow_provider_orchestra_dbt.state.retry import DEFAULT_RETRY_BUDGET, DEFAULT_TIMEOUT

PACKAGE_NAME = "airflow-provider-orchestra-dbt"
CONN_TYPE = "orchestra_dbt"
HOOK_CLASS_NAME = "airflow_provider_orchestra_dbt.hooks.orchestra_dbt.OrchestraDbtHook"

# The first value of each tuple is the default.
BACKENDS: tuple[str, ...] = ("local", "http", "s3")
# Whole seconds, as the connection form shows them.
DEFAULT_TIMEOUT_SECONDS = int(DEFAULT_TIMEOUT)
DEFAULT_RETRY_BUDGET_SECONDS = int(DEFAULT_RETRY_BUDGET)


def _optional_string(label: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "label": label,
        "description": description,
        "schema": {"type": ["string", "null"], **schema},
    }


CONN_FIELDS: dict[str, dict[str, Any]] = {
    "backend": {
        "label": "State backend",
        "description": (
            "Where dbt state is kept: 'local' (a JSON file on a disk every worker can reach), "
            "'http' (the Orchestra state API) or 's3' (an object in S3 or an S3-compatible store)."
        ),
        "schema": {"type": "string", "enum": list(BACKENDS), "default": BACKENDS[0]},
    },
    "orchestra_env": _optional_string(
        "Orchestra environment",
        "Optional, 'http' backend only: the Orchestra environment (default 'app'). Ignored if "
        "Base URL is set.",
        enum=list(ORCHESTRA_ENVS),
        default=ORCHESTRA_ENVS[0],
    ),
    "base_url": _optional_string(
        "Base URL",
        "Optional, 'http' backend only: Orchestra API base URL; overrides Orchestra environment.",
    ),
    "state_uri": _optional_string(
        "State URI",
        "Required for 'local' and 's3'; not used by 'http'. 'local': path of the state JSON file "
        "(e.g. /shared/orchestra/state.json, '~' allowed). 's3': s3://bucket/key of the state "
        "object.",
    ),
    "region_name": _optional_string(
        "AWS region", "Optional, 's3' backend only: AWS region of the bucket."
    ),
    "endpoint_url": _optional_string(
        "S3 endpoint URL",
        "Optional, 's3' backend only: custom endpoint for S3-compatible stores such as MinIO or "
        "R2.",
    ),
    "aws_conn_id": _optional_string(
        "AWS connection id",
        "Optional, 's3' backend only: Airflow AWS connection to take S3 credentials from. "
        "Alternatively put an access key id in Login and the secret in 'AWS secret access key'; "
        "with neither, boto3's default credentials apply.",
    ),
    "aws_secret_access_key": _optional_string(
        "AWS secret access key",
        "'s3' backend only: the secret for the access key id in Login; required when Login is "
        "set, and must be empty when it is not. Masked in the UI and in logs.",
        format="password",
    ),
    "integration_account_id": _optional_string(
        "Integration account id",
        "Optional, every backend: prefix for state keys, so several dbt projects or accounts can "
        "share one store.",
    ),
    "timeout": {
        "label": "Timeout (seconds)",
        "description": (
            "Optional, 'http' and 's3' backends: seconds each request may take in all, to "
            "connect and to receive the whole answer."
        ),
        "schema": {
            "type": ["number", "null"],
            "default": DEFAULT_TIMEOUT_SECONDS,
            "minimum": 1,
        },
    },
    "retry_budget": {
        "label": "Retry budget (seconds)",
        "description": (
            "Optional, 'http' and 's3' backends: how long a state read or write keeps retrying "
            "rate limiting (429, S3 SlowDown), server errors and, on S3, races with other "
            "writers before it fails (default 120). An endpoint that refuses connections or "
            "never answers is given up on after 3 attempts regardless."
        ),
        "schema": {
            "type": ["number", "null"],
            "default": DEFAULT_RETRY_BUDGET_SECONDS,
            "minimum": 0,
        },
    },
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["host", "schema", "port"],
    "relabeling": {
        "login": "AWS access key id",
        "password": "API key",
    },
    "placeholders": {
        "login": "s3 backend only, when no AWS connection id is given",
        "password": "Orchestra API key (required for the http backend)",
    },
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata Airflow's ProvidersManager expects."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "Orchestra dbt",
        "description": (
            "Run dbt Core or dbt Cloud jobs from Airflow and rebuild only what changed, "
            "reusing persisted dbt state (state-aware orchestration)."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Orchestra dbt",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "Orchestra dbt",
                "python-modules": [
                    "airflow_provider_orchestra_dbt.operators.orchestra_dbt",
                    "airflow_provider_orchestra_dbt.operators.orchestra_dbt_cloud",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": "Orchestra dbt",
                "python-modules": [
                    "airflow_provider_orchestra_dbt.hooks.orchestra_dbt",
                    "airflow_provider_orchestra_dbt.hooks.dbt_cloud_job",
                    "airflow_provider_orchestra_dbt.hooks.dbt_cloud_executor",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": "Orchestra dbt",
                "python-modules": ["airflow_provider_orchestra_dbt.triggers.dbt_cloud"],
            }
        ],
        "extra-links": ["airflow_provider_orchestra_dbt.operators.base.OrchestraDbtRunPictureLink"],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": HOOK_CLASS_NAME,
                "hook-name": "Orchestra dbt state",
                # Deep copies: callers (and Airflow) get their own mutable structures.
                "conn-fields": copy.deepcopy(CONN_FIELDS),
                "ui-field-behaviour": copy.deepcopy(UI_FIELD_BEHAVIOUR),
            }
        ],
    }
