"""The cost of implicit source freshness: the dbt worker's probe of N DuckDB sources.

    uv run python bench/freshness.py [--sources 500] [--rows 400] [--repeat 5]

Writes two projects declaring the same N sources (``bench/generate.py``; the sources file
only: the probe measures sources, and models would only lengthen the parse), one with
``loaded_at_field`` (dbt's freshness query per source) and one without (implicit freshness:
a catalog query, then a row count and content hash per table), over one warehouse of N raw
tables of ``--rows`` rows. One dbt worker per project parses once and answers the probe of
every source ``--repeat`` times. Prints one JSON object: the median probe seconds per variant
and how the sources were measured (a check that every one really was).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import generate  # noqa: E402

from airflow_provider_orchestra_dbt.worker.client import WorkerProcess  # noqa: E402

SOURCES_FILE = "models/staging/_sources.yml"


def write_sources_project(dest: Path, spec: generate.ProjectSpec) -> None:
    for rel, text in generate.project_files(spec).items():
        if rel in ("dbt_project.yml", "profiles.yml", SOURCES_FILE):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_text(text, encoding="utf-8")


def probe_times(project: Path, warehouse: Path, repeat: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_DUCKDB_PATH": str(warehouse),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    worker = WorkerProcess(python=sys.executable, env=env, on_output=lambda line: None)
    with tempfile.TemporaryDirectory(prefix="orchestra-dbt-freshness-") as run_dir:
        worker.start()
        worker.send(
            {
                "type": "start",
                "command": "build",
                "project_dir": str(project),
                "profiles_dir": str(project),
                "run_dir": run_dir,
                "target_path": f"{run_dir}/target",
                "write_json": False,
            }
        )
        graph = worker.receive("graph")
        sources = [n["unique_id"] for n in graph["nodes"] if n["resource_type"] == "source"]
        seconds = []
        for _ in range(repeat):
            began = time.perf_counter()
            worker.send({"type": "probe", "sources": sources, "schemas": []})
            result = worker.receive("probe_result")
            seconds.append(time.perf_counter() - began)
        worker.send({"type": "finish"})
        worker.close()
    measured = collections.Counter(
        "unknown" if f["error"] else f.get("method", "loaded_at_field")
        for f in result["freshness"].values()
    )
    return {
        "sources": len(sources),
        "median_seconds": round(statistics.median(seconds), 3),
        "seconds": [round(s, 3) for s in seconds],
        "measured_by": dict(measured),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=500)
    parser.add_argument("--rows", type=int, default=generate.ROWS_PER_SOURCE)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"sources": args.sources, "rows_per_source": args.rows}
    with tempfile.TemporaryDirectory(prefix="orchestra-dbt-freshness-") as tmp:
        root = Path(tmp)
        warehouse = root / "warehouse.duckdb"
        for loaded_at_field in (True, False):
            # Enough models for N staging ones, so the generator accepts N sources.
            spec = generate.plan_project(
                2 * args.sources + 40, n_sources=args.sources, loaded_at_field=loaded_at_field
            )
            if not warehouse.exists():
                generate.create_warehouse(warehouse, spec, rows=args.rows)
            variant = "loaded_at_field" if loaded_at_field else "implicit"
            write_sources_project(root / variant, spec)
            out[variant] = probe_times(root / variant, warehouse, args.repeat)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
