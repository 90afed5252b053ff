#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, lint, types, then every test
# (unit, and integration on real dbt-duckdb and Airflow). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

export UV_PYTHON_DOWNLOADS=never
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen --all-extras --quiet

uv run --frozen ruff check .
uv run --frozen ruff format --check .
uv run --frozen mypy airflow_provider_orchestra_dbt
uv run --frozen pytest "$@"
