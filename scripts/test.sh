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

# The reuse cases also run on the tutorial's postgres target: the tests start (and stop) a
# throwaway cluster on 127.0.0.1 from Debian's server binaries, unless ORCHESTRA_TEST_PG_HOST
# names an existing server. Only the binaries are wanted: the drop-in stops the package from
# creating (and so starting) Debian's own "main" cluster, and goes once the package is in.
if [ -z "${ORCHESTRA_TEST_PG_HOST:-}" ] \
  && ! ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's postgresql for the postgres-target tests..."
  apt-get update -qq
  no_main=/etc/postgresql-common/createcluster.d/orchestra-dbt-tests-no-main-cluster.conf
  mkdir -p "$(dirname "$no_main")"
  echo "create_main_cluster = false" >"$no_main"
  installed=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || installed=$?
  rm -f "$no_main"
  [ "$installed" = 0 ] || exit "$installed"
fi

uv run --frozen ruff check .
uv run --frozen ruff format --check .
uv run --frozen mypy airflow_provider_orchestra_dbt
uv run --frozen pytest "$@"
