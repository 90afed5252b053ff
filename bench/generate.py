"""A deterministic generator of layered dbt-duckdb projects of N models, for the benchmarks.

    python bench/generate.py DEST --models 500 [--seed 0] [--warehouse DEST/warehouse.duckdb]
                             [--sources N] [--no-loaded-at-field]

The same ``(models, seed)`` always writes byte-identical files. A project of N models has:

* sources (``raw_<domain>.<table>``), N/20 unless ``--sources`` says, with
  ``loaded_at_field: loaded_at`` and a freshness block (without both with
  ``--no-loaded-at-field``: their freshness is then implicit), a not_null test on every fourth;
* staging views (~30 %), each reading one source;
* intermediate tables (~35 %), each joining one to three staging or earlier intermediate models,
  mostly within their domain (a few cross-domain links), some through a macro that calls a macro;
* mart tables (the rest), joins and aggregations over intermediates; one or two of them are
  incremental (``unique_key: id``, filtered on ``loaded_at``);
* generic tests (not_null, unique) on about a third of the models;
* ``freshness.build_after`` on a few marts (one with ``updates_on: all``).

Models are grouped in domains of about 50 so that one source's downstream is a realistic slice
of the project rather than all of it. ``spec.json`` (written next to the project) names the
source and the staging model the benchmark scenarios change.

Only the standard library is needed to write a project; ``duckdb`` is imported only by the
functions that create or change the warehouse (``create_warehouse``, ``land_new_rows``).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROJECT_NAME = "bench_project"
PROFILE_NAME = "bench_project"
ROWS_PER_SOURCE = 400
# Source rows are loaded at BASE + i minutes; landed rows come later (see land_new_rows).
BASE_LOADED_AT = "2024-01-01 00:00:00"
NEW_LOADED_AT = "2024-06-01 00:00:00"
ENTITIES = (
    "orders",
    "payments",
    "customers",
    "shipments",
    "invoices",
    "sessions",
    "tickets",
    "products",
    "refunds",
    "events",
)
DOMAINS = (
    "erp",
    "crm",
    "billing",
    "web",
    "ops",
    "support",
    "finance",
    "growth",
    "logistics",
    "hr",
    "sales",
    "risk",
    "catalog",
    "ads",
    "mobile",
    "partners",
    "payroll",
    "legal",
    "iot",
    "email",
)


@dataclass
class ModelSpec:
    name: str
    layer: str  # staging | intermediate | marts
    domain: str
    materialized: str  # view | table | incremental
    parents: list[str] = field(default_factory=list)  # model names
    source: str | None = None  # "source_name.table" for staging models
    kind: str = "join"  # join | agg (marts), macro (intermediates through the macro)
    tests: list[str] = field(default_factory=list)  # on column id (or category for agg)
    build_after: dict[str, object] | None = None


@dataclass
class ProjectSpec:
    models_requested: int
    seed: int
    sources: list[str]  # "source_name.table"
    models: list[ModelSpec]
    change_source: str  # the source the "one source changed" scenario lands rows in
    change_staging: str  # the staging model the "one staging model changed" scenario edits
    loaded_at_field: bool = True  # False: sources without it, measured by implicit freshness

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"sources": len(self.sources), "models": len(self.models)}
        for m in self.models:
            out[m.layer] = out.get(m.layer, 0) + 1
            if m.materialized == "incremental":
                out["incremental"] = out.get("incremental", 0) + 1
        out["model_tests"] = sum(len(m.tests) for m in self.models)
        out["source_tests"] = len(self.sources[::4])
        out["build_after"] = sum(1 for m in self.models if m.build_after)
        return out

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["counts"] = self.counts
        return data


# -- the shape -----------------------------------------------------------------------------------


def plan_project(
    n_models: int, seed: int = 0, *, n_sources: int | None = None, loaded_at_field: bool = True
) -> ProjectSpec:
    """Decide every model, parent and test; deterministic in the arguments."""
    if n_models < 10:
        raise ValueError("a benchmark project needs at least 10 models")
    rng = random.Random(f"{n_models}:{seed}")
    n_domains = max(2, min(len(DOMAINS), round(n_models / 50)))
    domains = list(DOMAINS[:n_domains])
    n_sources = max(n_domains + 1, n_sources or n_models // 20)
    n_staging = max(n_sources, round(n_models * 0.30))
    n_intermediate = round(n_models * 0.35)
    n_marts = n_models - n_staging - n_intermediate
    n_incremental = 1 if n_models < 100 else 2
    if n_marts < n_domains + n_incremental:
        raise ValueError(f"{n_sources} sources need more than {n_models} models")

    sources = []
    source_domain: dict[str, str] = {}
    for i in range(n_sources):
        domain = domains[i % n_domains]
        source = f"raw_{domain}.{ENTITIES[(i // n_domains) % len(ENTITIES)]}_{i:03d}"
        sources.append(source)
        source_domain[source] = domain

    models: list[ModelSpec] = []
    by_layer_domain: dict[tuple[str, str], list[str]] = {}

    def add(model: ModelSpec) -> None:
        models.append(model)
        by_layer_domain.setdefault((model.layer, model.domain), []).append(model.name)

    def pool(layer: str, domain: str) -> list[str]:
        return by_layer_domain.get((layer, domain), [])

    for j in range(n_staging):
        source = sources[j % n_sources]  # every source has at least one staging model
        domain = source_domain[source]
        table = source.split(".", 1)[1]
        add(ModelSpec(f"stg_{table}_{j:04d}", "staging", domain, "view", source=source))

    for j in range(n_intermediate):
        domain = domains[j % n_domains]
        candidates = pool("staging", domain) + pool("intermediate", domain)
        fan_in = rng.choice((1, 2, 2, 3))
        parents = rng.sample(candidates, min(fan_in, len(candidates)))
        if rng.random() < 0.08:  # a cross-domain link
            other = domains[(j + 1) % n_domains]
            parents.append(rng.choice(pool("staging", other)))
        kind = "macro" if j % 5 == 0 else "join"
        entity = ENTITIES[j % len(ENTITIES)]
        add(
            ModelSpec(
                f"int_{domain}_{entity}_{j:04d}",
                "intermediate",
                domain,
                "table",
                parents,
                kind=kind,
            )
        )

    incremental_at = set(range(n_incremental))
    for j in range(n_marts):
        domain = domains[j % n_domains]
        entity = ENTITIES[(j * 3) % len(ENTITIES)]
        if j in incremental_at:
            parent = pool("staging", domain)[0]
            name = f"fct_{domain}_{entity}_incremental_{j:04d}"
            add(ModelSpec(name, "marts", domain, "incremental", [parent]))
            continue
        candidates = pool("intermediate", domain) or pool("staging", domain)
        parents = rng.sample(candidates, min(rng.choice((2, 2, 3)), len(candidates)))
        kind = "agg" if j % 3 == 0 else "join"
        prefix = "agg" if kind == "agg" else "mart"
        add(
            ModelSpec(
                f"{prefix}_{domain}_{entity}_{j:04d}", "marts", domain, "table", parents, kind=kind
            )
        )

    for i, m in enumerate(models):
        if i % 3 == 0:
            m.tests.append("not_null")
        if i % 9 == 0:
            m.tests.append("unique")

    marts = [m for m in models if m.layer == "marts" and m.materialized == "table"]
    n_build_after = 1 if n_models < 100 else 3 + n_models // 500
    for k, m in enumerate(marts[-n_build_after:]):
        updates_on = "all" if k == 1 else "any"
        m.build_after = {
            "count": 12 if k % 2 else 1,
            "period": "hour" if k % 2 else "day",
            "updates_on": updates_on,
        }

    change_source = sources[0]
    change_staging = next(
        m.name for m in models if m.layer == "staging" and m.source == sources[min(1, n_sources)]
    )
    return ProjectSpec(
        n_models, seed, sources, models, change_source, change_staging, loaded_at_field
    )


# -- the files -----------------------------------------------------------------------------------


def _ref(name: str) -> str:
    return "{{ ref('" + name + "') }}"


def model_sql(m: ModelSpec) -> str:
    if m.layer == "staging":
        assert m.source is not None
        source_name, table = m.source.split(".", 1)
        return (
            f"-- staging: {m.source}\n"
            "select\n    id,\n    entity_key,\n    amount,\n    category,\n    loaded_at\n"
            f"from {{{{ source('{source_name}', '{table}') }}}}\n"
            "where amount >= 0\n"
        )
    if m.materialized == "incremental":
        return (
            "{{ config(materialized='incremental', unique_key='id') }}\n\n"
            "select id, entity_key, amount, category, loaded_at\n"
            f"from {_ref(m.parents[0])}\n"
            "{% if is_incremental() %}\n"
            "where loaded_at > (select coalesce(max(loaded_at), timestamp '1900-01-01') "
            "from {{ this }})\n"
            "{% endif %}\n"
        )
    if m.kind == "agg":
        unions = "\n    union all\n".join(
            f"    select category, amount, loaded_at from {_ref(p)}" for p in m.parents
        )
        return (
            "with unioned as (\n"
            f"{unions}\n)\n"
            "select\n    category,\n    count(*) as row_count,\n"
            "    round(sum(amount), 2) as amount,\n    max(loaded_at) as loaded_at\n"
            "from unioned\ngroup by category\n"
        )
    first, *rest = m.parents
    amount = " + ".join(
        ["p0.amount", *(f"coalesce(p{i}.amount, 0)" for i in range(1, len(m.parents)))]
    )
    if m.kind == "macro":
        amount = "{{ bench_scaled_amount('" + amount.replace("'", "") + "') }}"
    loaded = ", ".join(["p0.loaded_at", *(f"p{i}.loaded_at" for i in range(1, len(m.parents)))])
    loaded_expr = f"greatest({loaded})" if rest else "p0.loaded_at"
    joins = "".join(
        f"left join {_ref(p)} as p{i} on p0.id = p{i}.id\n" for i, p in enumerate(rest, start=1)
    )
    return (
        "select\n    p0.id,\n    p0.entity_key,\n"
        f"    {amount} as amount,\n    p0.category,\n    {loaded_expr} as loaded_at\n"
        f"from {_ref(first)} as p0\n{joins}"
    )


MACROS = {
    "bench_round.sql": (
        "{% macro bench_round(expression, digits=2) -%}\n"
        "    round({{ expression }}, {{ digits }})\n"
        "{%- endmacro %}\n"
    ),
    "bench_scaled_amount.sql": (
        "{% macro bench_scaled_amount(expression) -%}\n"
        "    {{ bench_round('(' ~ expression ~ ') * 1.0') }}\n"
        "{%- endmacro %}\n"
    ),
}


def _yaml_str(value: object) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def sources_yml(spec: ProjectSpec) -> str:
    grouped: dict[str, list[str]] = {}
    for source in spec.sources:
        name, table = source.split(".", 1)
        grouped.setdefault(name, []).append(table)
    tested = set(spec.sources[::4])
    lines = ["version: 2", "", "sources:"]
    for name in sorted(grouped):
        lines += [f"  - name: {name}", f"    schema: {name}"]
        if spec.loaded_at_field:
            lines += [
                "    config:",
                "      loaded_at_field: loaded_at",
                "      freshness:",
                "        warn_after: {count: 3650, period: day}",
            ]
        lines.append("    tables:")
        for table in grouped[name]:
            lines.append(f"      - name: {table}")
            if f"{name}.{table}" in tested:
                lines += [
                    "        columns:",
                    "          - name: id",
                    "            data_tests: [not_null]",
                ]
    return "\n".join(lines) + "\n"


def models_yml(models: list[ModelSpec]) -> str:
    lines = ["version: 2", "", "models:"]
    for m in models:
        if not m.tests and not m.build_after:
            continue
        lines.append(f"  - name: {m.name}")
        if m.build_after:
            ba = m.build_after
            lines += [
                "    config:",
                "      freshness:",
                "        build_after:",
                f"          count: {ba['count']}",
                f"          period: {ba['period']}",
                f"          updates_on: {ba['updates_on']}",
            ]
        if m.tests:
            column = "category" if m.kind == "agg" else "id"
            lines += [
                "    columns:",
                f"      - name: {column}",
                f"        data_tests: [{', '.join(m.tests)}]",
            ]
    return "\n".join(lines) + "\n"


def project_files(spec: ProjectSpec) -> dict[str, str]:
    """Relative path -> content of every file of the project."""
    files: dict[str, str] = {
        "dbt_project.yml": (
            f"name: {PROJECT_NAME}\n"
            'version: "1.0.0"\n'
            "config-version: 2\n"
            f"profile: {PROFILE_NAME}\n"
            "\n"
            'model-paths: ["models"]\n'
            'macro-paths: ["macros"]\n'
            "\n"
            "models:\n"
            f"  {PROJECT_NAME}:\n"
            "    staging:\n      +materialized: view\n      +schema: staging\n"
            "    intermediate:\n      +materialized: table\n      +schema: intermediate\n"
            "    marts:\n      +materialized: table\n      +schema: marts\n"
        ),
        "profiles.yml": (
            "# The warehouse file comes from the environment so every tool writes the same file.\n"
            f"{PROFILE_NAME}:\n"
            "  target: duckdb\n"
            "  outputs:\n"
            "    duckdb:\n"
            "      type: duckdb\n"
            "      path: \"{{ env_var('BENCH_DUCKDB_PATH') }}\"\n"
            "      schema: main\n"
            "      threads: 4\n"
        ),
        "models/staging/_sources.yml": sources_yml(spec),
    }
    for name, text in MACROS.items():
        files[f"macros/{name}"] = text
    for layer in ("staging", "intermediate", "marts"):
        layer_models = [m for m in spec.models if m.layer == layer]
        files[f"models/{layer}/_{layer}.yml"] = models_yml(layer_models)
        for m in layer_models:
            files[f"models/{layer}/{m.name}.sql"] = model_sql(m)
    return dict(sorted(files.items()))


def write_project(
    dest: Path,
    n_models: int,
    seed: int = 0,
    *,
    n_sources: int | None = None,
    loaded_at_field: bool = True,
) -> ProjectSpec:
    """Write the project into ``dest`` (created; must be empty or absent) and ``spec.json``."""
    spec = plan_project(n_models, seed, n_sources=n_sources, loaded_at_field=loaded_at_field)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    for rel, text in project_files(spec).items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return spec


def staging_change(sql: str) -> str:
    """The 'one staging model changed' edit: a real code change (a new column)."""
    return sql.replace("    loaded_at\nfrom", "    loaded_at,\n    1 as bench_changed\nfrom", 1)


# -- the data ------------------------------------------------------------------------------------


def create_warehouse(db_path: Path, spec: ProjectSpec, rows: int = ROWS_PER_SOURCE) -> None:
    """Create the raw source tables, identical for every call with the same spec."""
    import duckdb

    con = duckdb.connect(str(db_path))
    try:
        for i, source in enumerate(spec.sources):
            schema, table = source.split(".", 1)
            con.execute(f"create schema if not exists {schema}")
            con.execute(
                f"create table {schema}.{table} as select "
                "i::integer as id, "
                f"'{table}-' || (i % 97)::varchar as entity_key, "
                f"round(((i * 37 + {i}) % 1000) / 10.0, 2)::double as amount, "
                "'c' || (i % 7)::varchar as category, "
                f"timestamp '{BASE_LOADED_AT}' + to_minutes(i) as loaded_at "
                f"from range({rows}) as t(i)"
            )
    finally:
        con.close()


def land_new_rows(db_path: Path, source: str, rows: int = 25) -> None:
    """New rows, loaded later than anything before, in one source table (deterministic)."""
    import duckdb

    schema, table = source.split(".", 1)
    con = duckdb.connect(str(db_path))
    try:
        start = con.execute(f"select coalesce(max(id), -1) + 1 from {schema}.{table}").fetchone()
        assert start is not None
        con.execute(
            f"insert into {schema}.{table} select "
            "i::integer, "
            f"'{table}-' || (i % 97)::varchar, "
            "round((i * 41 % 1000) / 10.0, 2)::double, "
            "'c' || (i % 7)::varchar, "
            f"timestamp '{NEW_LOADED_AT}' + to_minutes(i - {start[0]}) "
            f"from range({start[0]}, {start[0] + rows}) as t(i)"
        )
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="directory for the project (empty or absent)")
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warehouse", type=Path, help="also create the raw tables in this file")
    parser.add_argument("--sources", type=int, help="number of sources (default: models / 20)")
    parser.add_argument(
        "--no-loaded-at-field",
        dest="loaded_at_field",
        action="store_false",
        help="sources without loaded_at_field (implicit freshness)",
    )
    args = parser.parse_args(argv)
    spec = write_project(
        args.dest,
        args.models,
        args.seed,
        n_sources=args.sources,
        loaded_at_field=args.loaded_at_field,
    )
    (args.dest.parent / f"{args.dest.name}.spec.json").write_text(
        json.dumps(spec.to_json(), indent=2) + "\n"
    )
    if args.warehouse:
        create_warehouse(args.warehouse, spec)
    print(json.dumps(spec.counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
