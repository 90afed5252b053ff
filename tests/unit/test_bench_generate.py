"""The benchmark's project generator (bench/generate.py): deterministic, and a well-formed project.

No timing here: the benchmark measures, tests only check that what it measures is sound.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from graphlib import TopologicalSorter
from pathlib import Path

import pytest
import yaml
from support.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
_REF = re.compile(r"\{\{ ref\('([^']+)'\) \}\}")
_SOURCE = re.compile(r"\{\{ source\('([^']+)', '([^']+)'\) \}\}")


generate = load_script(REPO / "bench" / "generate.py", "bench_generate")


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_same_size_and_seed_write_byte_identical_projects(tmp_path: Path) -> None:
    first = generate.write_project(tmp_path / "a", 60)
    second = generate.write_project(tmp_path / "b", 60)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert first.to_json() == second.to_json()
    other = generate.write_project(tmp_path / "c", 60, seed=1)
    assert tree(tmp_path / "c") != tree(tmp_path / "a")
    assert other.counts["models"] == 60


def test_writing_into_a_non_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate.write_project(tmp_path / "p", 20)


@pytest.mark.parametrize("n_models", [20, 137, 500])
def test_the_project_has_the_promised_shape(tmp_path: Path, n_models: int) -> None:
    spec = generate.write_project(tmp_path, n_models)
    models = {p.stem: p.read_text() for p in (tmp_path / "models").rglob("*.sql")}
    assert len(models) == n_models == len(spec.models)

    # Sources: declared with loaded_at_field; every source() call points at one.
    sources_yml = yaml.safe_load((tmp_path / "models/staging/_sources.yml").read_text())
    declared = set()
    for group in sources_yml["sources"]:
        assert group["config"]["loaded_at_field"] == "loaded_at"
        declared |= {f"{group['name']}.{t['name']}" for t in group["tables"]}
    assert declared == set(spec.sources) and spec.change_source in declared

    # Layers: staging views read exactly one source, everything else refs existing models.
    parents: dict[str, set[str]] = {}
    for name, sql in models.items():
        refs = set(_REF.findall(sql))
        assert refs <= models.keys(), f"{name} refs a model that does not exist"
        parents[name] = refs
        if name.startswith("stg_"):
            assert not refs
            assert [".".join(s) for s in _SOURCE.findall(sql)] in ([m.source] for m in spec.models)
        else:
            assert refs and not _SOURCE.findall(sql)
    order = list(TopologicalSorter(parents).static_order())  # raises on a cycle
    assert len(order) == n_models

    layers = {m.layer for m in spec.models}
    assert layers == {"staging", "intermediate", "marts"}
    assert sum(m.materialized == "incremental" for m in spec.models) == (1 if n_models < 100 else 2)
    for m in spec.models:
        if m.materialized == "incremental":
            assert "is_incremental()" in models[m.name]

    # Tests on a fraction of the models, build_after on a few, in YAML dbt can read.
    tested, build_after = set(), {}
    for layer in ("staging", "intermediate", "marts"):
        doc = yaml.safe_load((tmp_path / f"models/{layer}/_{layer}.yml").read_text())
        for entry in doc.get("models") or []:
            assert entry["name"] in models
            if entry.get("columns"):
                tested.add(entry["name"])
            ba = entry.get("config", {}).get("freshness", {}).get("build_after")
            if ba:
                build_after[entry["name"]] = ba
    assert 0.2 * n_models < len(tested) < 0.5 * n_models
    assert 1 <= len(build_after) <= 5
    assert all(ba["period"] in ("hour", "day") and ba["count"] >= 1 for ba in build_after.values())

    # The scenario edits are real code changes of an existing staging model.
    staging = tmp_path / "models" / "staging" / f"{spec.change_staging}.sql"
    assert generate.staging_change(staging.read_text()) != staging.read_text()
    profiles = yaml.safe_load((tmp_path / "profiles.yml").read_text())
    assert profiles[generate.PROFILE_NAME]["outputs"]["duckdb"]["type"] == "duckdb"


def test_sources_can_be_many_and_without_loaded_at_field(tmp_path: Path) -> None:
    # The implicit-freshness rows: a no-op on such a project, a probe of 500 sources.
    spec = generate.write_project(tmp_path, 140, n_sources=50, loaded_at_field=False)
    assert len(spec.sources) == 50 and not spec.loaded_at_field
    sources_yml = (tmp_path / "models/staging/_sources.yml").read_text()
    assert "loaded_at_field" not in sources_yml and "freshness" not in sources_yml
    groups = yaml.safe_load(sources_yml)["sources"]
    assert sum(len(g["tables"]) for g in groups) == 50
    with pytest.raises(ValueError, match="500 sources need more than 100 models"):
        generate.plan_project(100, n_sources=500)


def test_the_raw_data_is_identical_and_landing_rows_moves_freshness(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    spec = generate.plan_project(20)
    digests = []
    for name in ("a.duckdb", "b.duckdb"):
        generate.create_warehouse(tmp_path / name, spec, rows=50)
        con = duckdb.connect(str(tmp_path / name), read_only=True)
        try:
            digests.append(
                [
                    con.execute(
                        f"select count(*), sum(amount), max(loaded_at) from {source}"
                    ).fetchone()
                    for source in spec.sources
                ]
            )
        finally:
            con.close()
    assert digests[0] == digests[1]
    assert all(count == 50 for count, _, _ in digests[0])

    generate.land_new_rows(tmp_path / "a.duckdb", spec.change_source, rows=5)
    con = duckdb.connect(str(tmp_path / "a.duckdb"), read_only=True)
    try:
        count, distinct, newest = con.execute(
            f"select count(*), count(distinct id), max(loaded_at) from {spec.change_source}"
        ).fetchone()
    finally:
        con.close()
    assert count == distinct == 55
    assert newest > digests[0][0][2]


@pytest.mark.integration
def test_dbt_parses_the_generated_project(tmp_path: Path) -> None:
    generate.write_project(tmp_path / "project", 20)
    dbt = Path(sys.executable).parent / "dbt"
    env = {
        **os.environ,
        "BENCH_DUCKDB_PATH": str(tmp_path / "warehouse.duckdb"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    project = str(tmp_path / "project")
    done = subprocess.run(
        [str(dbt), "parse", "--project-dir", project, "--profiles-dir", project,
         "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "target" / "manifest.json").exists()
