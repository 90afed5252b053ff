"""Where one project and target's run files live: the cache directory, the lock, the lease.

All three are keyed by project and target, so that runs of the same project and target take
turns and share dbt's partial-parse cache, while other projects and targets never wait.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from airflow_provider_orchestra_dbt.execution.config import DbtRunConfig
from airflow_provider_orchestra_dbt.execution.run_lock import LOCK_FILE_NAME
from airflow_provider_orchestra_dbt.state.lease import lease_file_name

CACHE_DIR_ENV = "ORCHESTRA_DBT_CACHE_DIR"


def cache_dir(config: DbtRunConfig) -> Path:
    """Our files for one project+target on this machine: dbt's partial-parse cache, the lock."""
    root = Path(
        os.environ.get(CACHE_DIR_ENV)
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "airflow-provider-orchestra-dbt"
    )
    profiles_dir = config.profiles_dir.resolve() if config.profiles_dir else ""
    identity = "|".join([str(config.project_dir.resolve()), str(profiles_dir), str(config.target)])
    return root / hashlib.sha256(identity.encode()).hexdigest()[:16]


def run_lock_path(config: DbtRunConfig) -> Path:
    """The file runs of this project and target on this machine take turns on."""
    return cache_dir(config) / LOCK_FILE_NAME


def lease_name(config: DbtRunConfig) -> str:
    """The lease's file name: the same on every machine for one project, profile and target.

    From ``dbt_project.yml``'s ``name`` and ``profile`` rather than the project's path, which
    may differ between workers; the target as given (``default``: the profile's default).
    """
    name = profile = None
    try:
        import yaml

        project = yaml.safe_load((config.project_dir / "dbt_project.yml").read_text()) or {}
        if isinstance(project, Mapping):
            name, profile = project.get("name"), project.get("profile")
    except Exception:  # dbt reports a broken project itself, with a better message
        pass
    return lease_file_name(
        config.key_prefix or None,
        str(name) if name else config.project_dir.resolve().name,
        str(profile) if profile else None,
        config.target or "default",
    )
