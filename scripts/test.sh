#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, lint, types, then every test
# (unit, and integration on real dbt-duckdb and Airflow). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

export UV_PYTHON_DOWNLOADS=never
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
uv sync --frozen --all-extras --quiet

# The connection-form test drives Debian's Chromium (no browser download from elsewhere).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's chromium for the browser test..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

uv run --frozen ruff check .
uv run --frozen ruff format --check .
uv run --frozen mypy airflow_provider_orchestra_dbt
uv run --frozen pytest "$@"
