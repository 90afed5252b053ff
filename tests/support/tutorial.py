"""A copy of the tutorial project with its own warehouse and state file, for one test.

The warehouse is built once per session (``Baseline``) and copied per test (``Workspace``):
copying is much cheaper than a cold dbt build. Two targets of ``tutorial/profiles.yml``:

* ``duckdb``: the warehouse is a DuckDB file in the workspace; copying it is copying a file.
* ``postgres``: the warehouse is a database on a :class:`~support.postgres.PgServer`. The
  baseline is kept as a template database and each workspace gets a fresh
  ``CREATE DATABASE ... TEMPLATE`` copy under the *same* name, because state keys contain the
  database name (``database.schema.alias``) and the copied state file must keep matching.
  So only the newest postgres workspace of a session is live (tests run one at a time).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from support.postgres import PgServer
from support.scripts import load_script

from airflow_provider_orchestra_dbt import cli

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / "tutorial"
IGNORED = shutil.ignore_patterns(
    ".warehouse", "target", "logs", "dbt_packages", ".user.yml", "__pycache__"
)
DB_NAME = "tutorial.duckdb"
TARGETS = ("duckdb", "postgres")
SCHEMAS = {"duckdb": "main", "postgres": "analytics"}  # as in tutorial/profiles.yml
# The interpreter ``Workspace.run`` hands the product for its dbt worker (``--dbt-python``):
# set per test by tests/integration/conftest.py (``forked_workers.ForkedWorkers``); None: the
# product's default, a fresh interpreter of its own.
worker_python: Callable[[], str] | None = None
STATEFUL = {
    "country_codes", "stg_countries", "stg_customers", "stg_orders", "stg_payments",
    "int_orders_enriched", "int_customer_orders", "fct_orders", "fct_daily_revenue",
    "dim_customers", "mart_country_revenue", "mart_customer_revenue", "mart_payment_methods",
    "mart_order_status", "customers_snapshot",
}  # fmt: skip


def land_data() -> ModuleType:
    return load_script(TUTORIAL / "land_data.py", "tutorial_land_data")


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash: 'byte-identical' made checkable."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def short(unique_id: str) -> str:
    """Node name: the last part of a unique_id, or the third for tests (they end in a hash)."""
    parts = unique_id.split(".")
    return parts[2] if parts[0] in ("test", "unit_test") else parts[-1]


@dataclass(frozen=True)
class PgDatabase:
    """Where postgres workspaces keep their warehouse: ``name``, reset from ``template``."""

    server: PgServer
    name: str
    template: str

    def env(self) -> dict[str, str]:
        return self.server.tutorial_env(self.name)


class Workspace:
    def __init__(self, root: Path, pg: PgDatabase | None = None) -> None:
        self.root = root
        self.project = root / "project"
        self.warehouse = root / "warehouse" / DB_NAME  # the DuckDB file (duckdb target only)
        self.state_file = root / "state.json"
        self.reports = 0
        self.pg = pg
        self.target = "postgres" if pg else "duckdb"
        self.schema = SCHEMAS[self.target]
        # The first part of state keys and relation names: DuckDB names it after the file.
        self.database = pg.name if pg else self.warehouse.stem

    def relation(self, alias: str, schema: str | None = None) -> str:
        """``database.schema.alias``, as state keys and decision reasons spell it."""
        return f"{self.database}.{schema or self.schema}.{alias}"

    @contextmanager
    def env(self) -> Iterator[None]:
        wanted = {"TUTORIAL_DUCKDB_PATH": str(self.warehouse)}
        if self.pg:
            wanted |= self.pg.env()
        saved = {name: os.environ.get(name) for name in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def run(
        self, command: str = "build", *args: str, expect_exit: int | None = 0
    ) -> dict[str, Any]:
        """Run the CLI in-process; the project directory must come out byte-identical."""
        self.reports += 1
        report_path = self.root / f"report-{self.reports}.json"
        before = tree_digest(self.project)
        argv = [
            command,
            "--project-dir", str(self.project),
            "--profiles-dir", str(self.project),
            "--state-file", str(self.state_file),
            "--report", str(report_path),
            # Not for duckdb, the profile's default; a later --target in args wins.
            *(["--target", self.target] if self.pg else []),
            # Before args: a test's own --dbt-python wins.
            *(["--dbt-python", worker_python()] if worker_python else []),
            *args,
        ]  # fmt: skip
        with self.env():
            code = cli.main(argv)
        assert tree_digest(self.project) == before, "a run modified the dbt project"
        if expect_exit is not None:
            assert code == expect_exit, f"exit code {code}, expected {expect_exit}"
        report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}
        report["exit_code_seen"] = code
        return report

    # -- the warehouse --------------------------------------------------------------------------

    def append(self, source: str, rows: int = 3) -> None:
        with self.env():
            land_data().append_rows(source, rows, self.target)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        if self.pg:
            conn = self.pg.server.connect(self.pg.name)
            try:
                with conn.cursor() as cursor:
                    cursor.execute(statement)
                    return list(cursor.fetchall()) if cursor.description else []
            finally:
                conn.close()

        import duckdb

        con = duckdb.connect(str(self.warehouse))
        try:
            return con.execute(statement).fetchall()
        finally:
            con.close()

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """Contents of every table dbt manages (sorted rows), to prove 'unchanged'."""
        if self.pg:
            return self._pg_tables(self.pg)

        import duckdb

        con = duckdb.connect(str(self.warehouse), read_only=True)
        try:
            names = con.execute(
                "select table_schema, table_name from information_schema.tables "
                "where table_schema <> 'raw' order by 1, 2"
            ).fetchall()
            return {
                f"{s}.{t}": sorted(con.execute(f'select * from "{s}"."{t}"').fetchall(), key=repr)
                for s, t in names
            }
        finally:
            con.close()

    @staticmethod
    def _pg_tables(pg: PgDatabase) -> dict[str, list[tuple[Any, ...]]]:
        conn = pg.server.connect(pg.name)
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "select table_schema, table_name from information_schema.tables "
                    "where table_schema not in ('raw', 'pg_catalog', 'information_schema') "
                    "order by 1, 2"
                )
                names = cursor.fetchall()
                contents: dict[str, list[tuple[Any, ...]]] = {}
                for s, t in names:
                    cursor.execute(f'select * from "{s}"."{t}"')
                    contents[f"{s}.{t}"] = sorted(cursor.fetchall(), key=repr)
                return contents
        finally:
            conn.close()

    # -- the project and the state --------------------------------------------------------------

    def edit(self, relative: str, old: str, new: str) -> None:
        path = self.project / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1))

    def state(self) -> dict[str, dict[str, Any]]:
        entries: dict[str, dict[str, Any]] = json.loads(self.state_file.read_text())["state"]
        return entries

    def entry(self, name: str) -> dict[str, Any]:
        matches = [e for k, e in self.state().items() if k.endswith(f".{name}")]
        assert len(matches) == 1, f"{name}: {len(matches)} entries"
        return matches[0]

    def set_built_at(self, when: datetime, *names: str) -> None:
        """Pretend nodes were last built at ``when``, consistently for their consumers.

        With no names, every entry moves; consumers' ``upstream`` records move with it so
        nothing looks newer than what was consumed.
        """
        document = json.loads(self.state_file.read_text())
        entries = document["state"]
        moved = {k for k, e in entries.items() if not names or short(e["unique_id"]) in names}
        stamp = when.isoformat()
        for k in moved:
            entries[k]["last_updated"] = stamp
        for entry in entries.values():
            for parent in entry.get("upstream", {}):
                if parent in moved:
                    entry["upstream"][parent] = stamp
        self.state_file.write_text(json.dumps(document, indent=2))


def plain_dbt_build(
    ws: Workspace, warehouse: Path, scratch: Path, *, unset: Iterable[str] = ()
) -> dict[str, list[tuple[Any, ...]]]:
    """The reference: plain ``dbt build`` on a copy of the project, against the DuckDB file
    ``warehouse``, with the environment variables ``unset`` removed; returns its tables."""
    project = scratch / "plain-project"
    shutil.copytree(ws.project, project)
    dbt = Path(sys.executable).with_name("dbt")
    env = os.environ | {"TUTORIAL_DUCKDB_PATH": str(warehouse)}
    for name in unset:
        env.pop(name, None)
    subprocess.run(
        [str(dbt), "build", "--project-dir", str(project), "--profiles-dir", str(project),
         "--target-path", str(scratch / "target"), "--log-path", str(scratch / "logs")],
        env=env, cwd=project, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    reference = Workspace(scratch)
    reference.warehouse = warehouse
    return reference.tables()


def built(report: dict[str, Any]) -> set[str]:
    return {short(u) for u in report["built"]}


def decisions(report: dict[str, Any], kind: str = "build") -> dict[str, str]:
    return {
        short(n["unique_id"]): n["reason"]
        for n in report["nodes"]
        if n["decision"] == kind and n["resource_type"] not in ("test", "unit_test")
    }


def executed_tests(report: dict[str, Any]) -> set[str]:
    return {
        n["unique_id"]
        for n in report["nodes"]
        if n["resource_type"] in ("test", "unit_test") and n["decision"] == "build"
    }


def day_ago() -> datetime:
    return datetime.now(UTC) - timedelta(days=1)


class Baseline:
    """The tutorial with raw data landed and a first full build recorded in its state.

    With ``pg``, the warehouse is built into database ``pg.name`` (dropped first if present),
    then kept as ``pg.template`` for :meth:`copy_to`.
    """

    def __init__(
        self,
        root: Path,
        pg: PgDatabase | None = None,
        project: Path = TUTORIAL,
        land: Callable[[Workspace], object] | None = None,
    ) -> None:
        """Another ``project`` needs its own ``land``, which creates its raw data."""
        self.pg = pg
        self.workspace = Workspace(root, pg)
        shutil.copytree(project, self.workspace.project, ignore=IGNORED)
        self.workspace.warehouse.parent.mkdir(parents=True)
        if pg:
            pg.server.recreate(pg.name)
        with self.workspace.env():
            if land is None:
                land_data().init_raw(self.workspace.target)
            else:
                land(self.workspace)
        self.first_report = self.workspace.run("build")
        # Ageing the recorded builds makes build_after windows elapsed: tests that want a
        # window open set it explicitly, so no test depends on how long the suite took.
        self.workspace.set_built_at(day_ago())
        if pg:
            pg.server.recreate(pg.template, template=pg.name)

    @property
    def target(self) -> str:
        return self.workspace.target

    def copy_to(self, root: Path) -> Workspace:
        """A workspace of its own; for postgres this also resets the shared database."""
        shutil.copytree(self.workspace.root, root, ignore=shutil.ignore_patterns("report-*"))
        if self.pg:
            self.pg.server.recreate(self.pg.name, template=self.pg.template)
        return Workspace(root, self.pg)


class ProjectBaselines:
    """Baselines of one test project of ours (``tests/projects/<name>``), one per target,
    each built the first time a test asks for it.

    On PostgreSQL the project gets a database of its own, ``orchestra_<name>``, so the
    tutorial's shared one stays untouched; :meth:`close` drops it.
    """

    def __init__(
        self,
        project: Path,
        land: Callable[[Workspace], object],
        tmp_path_factory: Any,
        request: Any,
    ) -> None:
        self.project = project
        self.land = land
        self._tmp = tmp_path_factory
        self._request = request  # pg_server is asked for only when a postgres test runs
        self._built: dict[str, Baseline] = {}

    def get(self, target: str) -> Baseline:
        if target not in self._built:
            root = self._tmp.mktemp(f"{self.project.name}-{target}")
            pg = None
            if target == "postgres":
                name = f"orchestra_{self.project.name}"
                pg = PgDatabase(
                    self._request.getfixturevalue("pg_server"), name, f"{name}_baseline"
                )
            self._built[target] = Baseline(root, pg, self.project, self.land)
        return self._built[target]

    def workspace(self, target: str) -> Workspace:
        """A fresh copy of the target's baseline, at one path per project and target for the
        session: dbt's partial-parse cache is kept per project path, so each test's first run
        re-parses only what it changed instead of the whole project."""
        root = self._tmp.getbasetemp() / f"workspace-{self.project.name}-{target}"
        shutil.rmtree(root, ignore_errors=True)
        return self.get(target).copy_to(root)

    def close(self) -> None:
        for baseline in self._built.values():
            if baseline.pg:
                baseline.pg.server.drop(baseline.pg.name, baseline.pg.template)
