"""Land raw data for the orchestra_tutorial dbt project.

dbt does not own the ``raw`` schema: this script plays the part of an
ingestion tool (Fivetran, Airbyte, a cron job...) writing into it.

Create the raw tables with deterministic 2024 data (safe to re-run)::

    python tutorial/land_data.py --init [--target duckdb|postgres]

Simulate new data arriving in one source, e.g. 5 new orders::

    python tutorial/land_data.py [--target duckdb|postgres] --source orders [--rows 5]

New rows get ids after the current maximum, valid foreign keys and a
``_loaded_at`` of "now" (naive UTC) that is strictly newer than anything already
loaded, so ``dbt source freshness`` and state-aware runs see the change.

Connection settings match ``tutorial/profiles.yml``:

* duckdb: ``TUTORIAL_DUCKDB_PATH``, the DuckDB file, required (``scripts/tutorial.sh``
  uses ``.airflow/tutorial.duckdb``); a relative path is read from the working directory
* postgres: ``TUTORIAL_PG_HOST``, ``TUTORIAL_PG_PORT``, ``TUTORIAL_PG_USER``,
  ``TUTORIAL_PG_PASSWORD``, ``TUTORIAL_PG_DBNAME`` (database must exist)

The same operations are importable as :func:`init_raw` and :func:`append_rows`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic, sleep
from typing import Any, Protocol

TARGETS = ("duckdb", "postgres")
SOURCES = ("customers", "orders", "payments")
METHODS = ("credit_card", "bank_transfer", "gift_card")
STATUSES = ("completed", "shipped", "completed", "placed", "completed", "returned")
# Must stay in line with seeds/country_codes.csv.
COUNTRY_CODES = ("US", "CA", "BR", "GB", "DE", "FR", "JP", "AU")
FIRST_NAMES = (
    "Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta",
    "Hiro", "Ines", "Jonas", "Kemi", "Luca", "Maya", "Nils",
    "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tomoko",
)  # fmt: skip

COLUMNS: dict[str, tuple[str, ...]] = {
    "customers": ("id", "name", "country_code", "_loaded_at"),
    "orders": ("id", "customer_id", "order_date", "status", "_loaded_at"),
    "payments": ("id", "order_id", "method", "amount_cents", "_loaded_at"),
}
COLUMN_TYPES: dict[str, tuple[str, ...]] = {
    "customers": ("integer", "varchar", "varchar", "timestamp"),
    "orders": ("integer", "integer", "date", "varchar", "timestamp"),
    "payments": ("integer", "integer", "varchar", "integer", "timestamp"),
}

Row = tuple[Any, ...]


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, rows: Sequence[Row]) -> Any: ...
    def fetchall(self) -> list[Row]: ...


class Warehouse:
    """Tiny wrapper hiding the placeholder style of DuckDB (?) vs psycopg2 (%s)."""

    def __init__(self, cursor: Cursor, placeholder: str) -> None:
        self._cursor = cursor
        self._placeholder = placeholder

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._placeholder)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Row]) -> None:
        if rows:
            self._cursor.executemany(self._sql(sql), rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(self._sql(sql), params)
        return self._cursor.fetchall()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self.fetchall(sql, params)
        return rows[0][0] if rows else None


class WarehouseNotFound(RuntimeError):
    """The DuckDB warehouse is not named, or new rows were asked of one that does not exist."""


def duckdb_path() -> Path:
    # No default: a guessed file is a second warehouse that dbt never reads, and data landed
    # there looks lost.
    value = os.environ.get("TUTORIAL_DUCKDB_PATH")
    if not value:
        raise WarehouseNotFound(
            "TUTORIAL_DUCKDB_PATH is not set: set it to the tutorial's DuckDB file, e.g. "
            "TUTORIAL_DUCKDB_PATH=.airflow/tutorial.duckdb (the one scripts/tutorial.sh builds)"
        )
    return Path(value).absolute()


def _connect_duckdb(duckdb: Any, path: Path) -> Any:
    """Open the DuckDB file, waiting while another process (a dbt run) holds it.

    DuckDB allows one writing process at a time; an ingestion step that fails whenever a
    parallel DAG run happens to be building would make backfills flaky.
    """
    deadline = monotonic() + float(os.environ.get("TUTORIAL_DUCKDB_LOCK_WAIT", "600"))
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or monotonic() >= deadline:
                raise
            sleep(0.2)


@contextmanager
def connect(target: str = "duckdb", *, create: bool = True) -> Iterator[Warehouse]:
    """Open the target warehouse; commit on success and always close the connection.

    With ``create=False`` a missing DuckDB file is an error rather than a new empty file.
    """
    if target == "duckdb":
        import duckdb

        path = duckdb_path()
        if not create and not path.exists():
            # Opening would leave an empty file behind, at a path that is likely a typo.
            raise WarehouseNotFound(
                f"no DuckDB warehouse at {path} (TUTORIAL_DUCKDB_PATH); "
                "run with --init first to create it"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        conn: Any = _connect_duckdb(duckdb, path)
        placeholder = "?"
    elif target == "postgres":
        import psycopg2  # type: ignore[import-untyped]

        conn = psycopg2.connect(
            host=os.environ.get("TUTORIAL_PG_HOST", "127.0.0.1"),
            port=int(os.environ.get("TUTORIAL_PG_PORT", "5432")),
            user=os.environ.get("TUTORIAL_PG_USER", "postgres"),
            password=os.environ.get("TUTORIAL_PG_PASSWORD", ""),
            dbname=os.environ.get("TUTORIAL_PG_DBNAME", "tutorial"),
        )
        placeholder = "%s"
    else:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
    try:
        if target == "duckdb":
            # DuckDB autocommits by default; its connection is its own cursor.
            conn.begin()
            yield Warehouse(conn, placeholder)
        else:
            with conn.cursor() as cursor:
                yield Warehouse(cursor, placeholder)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def _table_exists(wh: Warehouse, table: str) -> bool:
    count = wh.scalar(
        "select count(*) from information_schema.tables"
        " where table_schema = 'raw' and table_name = ?",
        (table,),
    )
    return bool(count)


def _insert(wh: Warehouse, table: str, rows: Sequence[Row]) -> None:
    columns = COLUMNS[table]
    marks = ", ".join("?" for _ in columns)
    wh.executemany(f"insert into raw.{table} ({', '.join(columns)}) values ({marks})", rows)


def _name(customer_id: int) -> str:
    first = FIRST_NAMES[(customer_id - 1) % len(FIRST_NAMES)]
    return f"{first} {chr(ord('A') + customer_id * 5 % 26)}."


def initial_rows() -> dict[str, list[Row]]:
    """Deterministic starting data: 20 customers, 60 orders and 80 payments (2024)."""
    start = datetime(2024, 1, 1, 6, 0)
    customers: list[Row] = [
        (i, _name(i), COUNTRY_CODES[(i - 1) % 8], start + timedelta(minutes=i))
        for i in range(1, 21)
    ]
    orders: list[Row] = []
    for i in range(1, 61):
        order_date = date(2024, 1, 1) + timedelta(days=i * 3)
        loaded_at = datetime.combine(order_date + timedelta(days=1), time(2, 0))
        orders.append((i, (i * 7) % 20 + 1, order_date, STATUSES[i % len(STATUSES)], loaded_at))
    payments: list[Row] = []
    # One payment per order, then 20 split payments on every third order.
    for i, order_id in enumerate([*range(1, 61), *range(3, 61, 3)], start=1):
        loaded_at = orders[order_id - 1][4] + timedelta(minutes=i)
        amount_cents = 500 + (i * 1379) % 9000
        payments.append((i, order_id, METHODS[(i + order_id) % 3], amount_cents, loaded_at))
    return {"customers": customers, "orders": orders, "payments": payments}


def init_raw(target: str = "duckdb") -> None:
    """Create schema ``raw`` and any missing raw table, filled with the initial rows."""
    rows = initial_rows()
    with connect(target) as wh:
        wh.execute("create schema if not exists raw")
        for table in SOURCES:
            if _table_exists(wh, table):
                print(f"raw.{table}: already exists, left unchanged")
                continue
            columns = zip(COLUMNS[table], COLUMN_TYPES[table], strict=True)
            ddl = ", ".join(f"{name} {type_}" for name, type_ in columns)
            wh.execute(f"create table raw.{table} ({ddl})")
            _insert(wh, table, rows[table])
            print(f"raw.{table}: created with {len(rows[table])} rows")


def _next_loaded_at(wh: Warehouse, table: str) -> datetime:
    """Current naive UTC time, bumped if needed to be strictly after max(_loaded_at)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    latest = wh.scalar(f"select max(_loaded_at) from raw.{table}")
    if latest is not None and now <= latest:
        now = latest + timedelta(microseconds=1)
    return now


def _ids(wh: Warehouse, table: str) -> list[int]:
    return [row[0] for row in wh.fetchall(f"select id from raw.{table} order by id")]


def append_rows(source: str, rows: int = 5, target: str = "duckdb") -> None:
    """Append rows to ``raw.<source>`` with valid keys and a newer ``_loaded_at``."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if rows < 1:
        raise ValueError("rows must be at least 1")
    with connect(target, create=False) as wh:
        if not _table_exists(wh, source):
            raise RuntimeError(f"raw.{source} does not exist; run with --init first")
        start = (wh.scalar(f"select max(id) from raw.{source}") or 0) + 1
        new_ids = range(start, start + rows)
        loaded_at = _next_loaded_at(wh, source)
        new_rows: list[Row]
        if source == "customers":
            new_rows = [(i, _name(i), COUNTRY_CODES[(i - 1) % 8], loaded_at) for i in new_ids]
        elif source == "orders":
            customer_ids = _ids(wh, "customers")
            if not customer_ids:
                raise RuntimeError("raw.customers is empty; cannot create orders")
            today = loaded_at.date()
            new_rows = [
                (
                    i,
                    customer_ids[(i * 7) % len(customer_ids)],
                    today,
                    "placed",
                    loaded_at,
                )
                for i in new_ids
            ]
        else:
            order_ids = _ids(wh, "orders")
            if not order_ids:
                raise RuntimeError("raw.orders is empty; cannot create payments")
            recent = order_ids[-rows:]  # pay the most recent orders first
            new_rows = [
                (
                    i,
                    recent[n % len(recent)],
                    METHODS[i % 3],
                    500 + (i * 1379) % 9000,
                    loaded_at,
                )
                for n, i in enumerate(new_ids)
            ]
        _insert(wh, source, new_rows)
    print(
        f"raw.{source}: appended {rows} rows (ids {new_ids.start}-{new_ids.stop - 1}, "
        f"_loaded_at {loaded_at.isoformat()}) on {target}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--init", action="store_true", help="create the raw tables if missing")
    parser.add_argument("--target", choices=TARGETS, default="duckdb")
    parser.add_argument("--source", choices=SOURCES, default="orders")
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        if args.init:
            init_raw(args.target)
        else:
            append_rows(args.source, args.rows, args.target)
    except WarehouseNotFound as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    main()
