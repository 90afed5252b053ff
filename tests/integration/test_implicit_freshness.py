"""Implicit source freshness on real dbt runs: sources without loaded_at_field, on both targets.

The project is tests/projects/implicit_freshness: two tables (customers, orders), two views
over orders (one opted in), and an opted-out table (events). Every run goes through
``Workspace.run`` (the project directory must come out byte-identical), and after every step
each model must hold what a plain dbt build would hold.
"""

from __future__ import annotations

import re
import time

import pytest
from support.tutorial import REPO, TARGETS, ProjectBaselines, Workspace, built
from support.tutorial import decisions as reasons

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("target", TARGETS)]

PROJECT = REPO / "tests" / "projects" / "implicit_freshness"
RAW = (
    "create schema raw",
    "create table raw.customers (id integer, name varchar(20))",
    "insert into raw.customers values (1, 'Ada'), (2, 'Bruno'), (3, 'Chiara')",
    "create table raw.orders (id integer, customer_id integer, amount integer)",
    "insert into raw.orders values (1, 1, 10), (2, 1, 20), (3, 2, 30), (4, 3, 500)",
    "create table raw.events (id integer, kind varchar(20))",
    "insert into raw.events values (1, 'click'), (2, 'view')",
    "create view raw.big_orders as select id, amount from raw.orders where amount >= 100",
    "create view raw.big_orders_hashed as select id, amount from raw.orders where amount >= 100",
)
MODELS = ("stg_customers", "stg_orders", "customer_orders", "big_orders", "big_orders_hashed")
# Built on every run: a view source measured by default nowhere, and an opted-out source.
UNKNOWN = {"big_orders", "event_counts"}


def land(ws: Workspace) -> None:
    for statement in RAW:
        ws.sql(statement)


@pytest.fixture
def ws(project_baselines: ProjectBaselines, target: str) -> Workspace:
    return project_baselines.workspace(target)


def write(ws: Workspace, *statements: str) -> None:
    """Run a loader's statements; on postgres, return once its counters reached pg_stat.

    PostgreSQL publishes a session's counters when it disconnects (here, at once) or up to
    seconds after a commit: a loader finishing is waited for, not raced.
    """
    counters = (
        "select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) from pg_stat_user_tables"
        " where schemaname = 'raw'"
    )
    before = ws.sql(counters) if ws.pg else None
    for statement in statements:
        ws.sql(statement)
    deadline = time.monotonic() + 30
    while ws.pg and ws.sql(counters) == before:
        assert time.monotonic() < deadline, "pg_stat never showed the writes"
        time.sleep(0.1)


def assert_plain_dbt(ws: Workspace) -> None:
    """Each model holds its own SQL's result over the current raw data and parents."""
    tables = ws.tables()
    for model in (*MODELS, "event_counts"):
        sql = (ws.project / "models" / f"{model}.sql").read_text()
        sql = re.sub(r"\{\{ source\('raw', '(\w+)'\) \}\}", r"raw.\1", sql)
        sql = re.sub(r"\{\{ ref\('(\w+)'\) \}\}", rf"{ws.schema}.\1", sql)
        assert tables[f"{ws.schema}.{model}"] == sorted(ws.sql(sql), key=repr), model


def test_sources_without_loaded_at_field_are_measured_in_the_warehouse(ws: Workspace) -> None:
    method = "postgres table statistics" if ws.pg else "duckdb content hash"
    # Statistics cannot measure a view; DuckDB hashes the opted-in one.
    unknown = UNKNOWN | ({"big_orders_hashed"} if ws.pg else set())
    if ws.pg:
        # A database copied from a template starts with zeroed counters: a reset is a change.
        report = ws.run()
        assert reasons(report)["stg_orders"] == (
            "source raw.orders changed since last consumed (postgres table statistics)"
        )

    # Nothing changed: only the unmeasurable sources' readers build, and they say why.
    report = ws.run()
    assert built(report) == unknown
    why = reasons(report)
    assert why["event_counts"] == (
        "freshness of source raw.events is unknown (it has no loaded_at_field and meta "
        "orchestra_dbt.implicit_freshness is false)"
    )
    assert why["big_orders"].startswith(
        "freshness of source raw.big_orders is unknown (it is a view"
    )
    assert_plain_dbt(ws)
    entry = ws.entry("stg_orders")
    # Tokens have their own field: `sources` keeps its timestamp meaning for other tools.
    assert entry["sources"] == {}
    token = entry["source_tokens"]["source.implicit_freshness.raw.orders"]
    assert token.startswith("postgres_stats:" if ws.pg else "duckdb_hash:")

    # Rows appended: exactly their readers build (not the view of big orders: none added).
    write(ws, "insert into raw.orders values (5, 2, 40)")
    report = ws.run()
    assert built(report) == unknown | {"stg_orders", "customer_orders"}
    assert (
        reasons(report)["stg_orders"] == f"source raw.orders changed since last consumed ({method})"
    )
    assert_plain_dbt(ws)

    # A row updated in place.
    write(ws, "update raw.customers set name = 'Ada L' where id = 1")
    assert built(ws.run()) == unknown | {"stg_customers", "customer_orders"}
    assert_plain_dbt(ws)

    # A big order: the opted-in view's content changes as well (on DuckDB).
    write(ws, "insert into raw.orders values (6, 3, 900)")
    hashed_view = set() if ws.pg else {"big_orders_hashed"}
    assert built(ws.run()) == unknown | {"stg_orders", "customer_orders"} | hashed_view
    assert_plain_dbt(ws)

    # Truncated and reloaded with the same rows: postgres sees a new relfilenode and new
    # inserts; DuckDB sees the same content, so the models' data would be the same: reused.
    write(
        ws,
        "create table raw.customers_copy as select * from raw.customers",
        "truncate raw.customers",
        "insert into raw.customers select * from raw.customers_copy",
        "drop table raw.customers_copy",
    )
    reloaded = {"stg_customers", "customer_orders"} if ws.pg else set()
    assert built(ws.run()) == unknown | reloaded
    assert_plain_dbt(ws)

    # The end state equals a rebuild of everything.
    tables = ws.tables()
    assert built(ws.run("build", "--no-reuse")) == {*MODELS, "event_counts"}
    assert ws.tables() == tables
