"""Provider metadata: schema validity and registration with the installed Airflow.

The registration checks run Airflow in subprocesses with a throw-away AIRFLOW_HOME so that
nothing is written to the repository or the user's home and no provider-manager state leaks
into the test process.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import airflow
import jsonschema
import pytest

from airflow_provider_orchestra_dbt import __version__
from airflow_provider_orchestra_dbt.get_provider_info import get_provider_info

DIST_NAME = "airflow-provider-orchestra-dbt"
CONN_TYPE = "orchestra_dbt"
HOOK_CLASS = "airflow_provider_orchestra_dbt.hooks.orchestra_dbt.OrchestraDbtHook"
EXPECTED_CONN_FIELDS = {
    "backend",
    "orchestra_env",
    "base_url",
    "state_uri",
    "region_name",
    "endpoint_url",
    "aws_conn_id",
    "aws_secret_access_key",
    "retry_budget",
    "integration_account_id",
    "timeout",
}
# Marked required in the form: needed by every backend. The rest are needed by some backends
# only, which the 3.3 form cannot express; the hook enforces those.
REQUIRED_IN_FORM = {"backend"}
AIRFLOW_DIR = Path(airflow.__file__).parent
SUBPROCESS_TIMEOUT = 180


def _schema(name: str) -> dict[str, Any]:
    path = AIRFLOW_DIR / name
    assert path.is_file(), f"{name} not shipped with the installed Airflow at {path}"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _connection_type() -> dict[str, Any]:
    (entry,) = get_provider_info()["connection-types"]
    assert isinstance(entry, dict)
    return entry


def _marked_required(schema: dict[str, Any]) -> bool:
    """The 3.3 connection form's rule: a declared type that does not admit null."""
    types = schema.get("type")
    return bool(types) and "null" not in (types if isinstance(types, list) else [types])


def _run_python(args: list[str], tmp_path: Path) -> str:
    """Run ``python <args>`` with a temp AIRFLOW_HOME under ``tmp_path``; return its stdout."""
    airflow_home = tmp_path / "airflow_home"
    airflow_home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    result = subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def _run_airflow_python(code: str, tmp_path: Path) -> Any:
    """Run ``code`` like ``_run_python``; return its last line, parsed as JSON."""
    stdout = _run_python(["-c", textwrap.dedent(code)], tmp_path)
    return json.loads(stdout.strip().splitlines()[-1])


# --- the dict itself ------------------------------------------------------------------------


def test_valid_against_airflow_provider_info_schema() -> None:
    jsonschema.validate(get_provider_info(), _schema("provider_info.schema.json"))


def test_connection_types_valid_against_provider_yaml_schema() -> None:
    # provider_info.schema.json does not describe conn-fields / ui-field-behaviour at all;
    # the provider.yaml schema does (and forbids unknown keys), so check against that too.
    schema = _schema("provider.yaml.schema.json")["properties"]["connection-types"]
    jsonschema.validate(get_provider_info()["connection-types"], schema)


def test_customized_field_behaviour_schema() -> None:
    behaviour = _connection_type()["ui-field-behaviour"]
    converted = {
        "hidden_fields": behaviour["hidden-fields"],
        "relabeling": behaviour["relabeling"],
        "placeholders": behaviour["placeholders"],
    }
    jsonschema.validate(converted, _schema("customized_form_field_behaviours.schema.json"))


def test_package_name_matches_distribution() -> None:
    info = get_provider_info()
    dist = importlib.metadata.distribution(DIST_NAME)

    assert info["package-name"] == DIST_NAME
    assert dist.metadata["Name"] == info["package-name"]
    assert info["name"] == "Orchestra dbt"
    assert info["description"]
    assert info["versions"] == [__version__]
    assert dist.version == __version__


def test_entry_point_targets_get_provider_info() -> None:
    dist = importlib.metadata.distribution(DIST_NAME)
    (entry_point,) = [ep for ep in dist.entry_points if ep.group == "apache_airflow_provider"]
    assert entry_point.load() is get_provider_info


def test_connection_type_entry() -> None:
    entry = _connection_type()

    assert entry["connection-type"] == CONN_TYPE
    assert entry["hook-class-name"] == HOOK_CLASS
    assert set(entry["conn-fields"]) == EXPECTED_CONN_FIELDS

    fields = entry["conn-fields"]
    assert fields["backend"]["schema"]["enum"] == ["local", "http", "s3"]
    assert fields["backend"]["schema"]["default"] == "local"
    assert fields["orchestra_env"]["schema"]["enum"] == ["app", "stage", "dev"]
    assert fields["orchestra_env"]["schema"]["default"] == "app"
    assert fields["timeout"]["schema"]["default"] == 30
    assert "number" in fields["timeout"]["schema"]["type"]
    sensitive = {name for name, f in fields.items() if f["schema"].get("format") == "password"}
    assert sensitive == {"aws_secret_access_key"}

    behaviour = entry["ui-field-behaviour"]
    assert set(behaviour["hidden-fields"]) == {"host", "schema", "port"}
    assert behaviour["relabeling"]["password"] == "API key"
    assert behaviour["relabeling"]["login"] == "AWS access key id"


def test_only_fields_every_backend_needs_are_marked_required() -> None:
    fields = _connection_type()["conn-fields"]
    required = {name for name, f in fields.items() if _marked_required(f["schema"])}
    assert required == REQUIRED_IN_FORM
    # Unmarked, so the description says who needs it.
    assert fields["state_uri"]["description"].startswith("Required for 'local' and 's3'")
    assert "required when Login is set" in fields["aws_secret_access_key"]["description"]
    for name in set(fields) - {"backend", "state_uri", "aws_secret_access_key"}:
        assert fields[name]["description"].startswith("Optional"), name
    behaviour = _connection_type()["ui-field-behaviour"]
    assert "required for the http backend" in behaviour["placeholders"]["password"]


@pytest.mark.parametrize(
    ("extra", "password", "message"),
    [
        ({"backend": "local"}, "", "backend 'local' needs 'state_uri' (form field 'State URI')"),
        ({"backend": "s3"}, "", "backend 's3' needs 'state_uri' (form field 'State URI')"),
        ({"backend": "http"}, "", "backend 'http' needs the Orchestra API key"),
    ],
)
def test_the_hook_enforces_what_the_form_leaves_unmarked(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], password: str, message: str
) -> None:
    from airflow_provider_orchestra_dbt.hooks.orchestra_dbt import OrchestraDbtHook

    payload = {"conn_type": CONN_TYPE, "extra": extra, "password": password}
    monkeypatch.setenv("AIRFLOW_CONN_UNMARKED", json.dumps(payload))
    with pytest.raises(ValueError, match=r"^Connection 'unmarked': ") as caught:
        _ = OrchestraDbtHook("unmarked").config
    assert message in str(caught.value)


def test_hook_module_listed() -> None:
    info = get_provider_info()
    modules = [m for hook in info["hooks"] for m in hook["python-modules"]]
    assert HOOK_CLASS.rsplit(".", 1)[0] in modules


def test_returns_independent_copies() -> None:
    first = get_provider_info()
    first["connection-types"][0]["conn-fields"]["backend"]["schema"]["enum"].append("x")
    assert "x" not in _connection_type()["conn-fields"]["backend"]["schema"]["enum"]


def test_conn_fields_match_hook_config() -> None:
    from airflow_provider_orchestra_dbt.hooks.orchestra_dbt import (
        OrchestraDbtHook,
        StateConnectionConfig,
    )

    config_fields = {f.name for f in dataclasses.fields(StateConnectionConfig)}
    assert set(_connection_type()["conn-fields"]) <= config_fields
    assert OrchestraDbtHook.conn_type == CONN_TYPE
    assert f"{OrchestraDbtHook.__module__}.{OrchestraDbtHook.__qualname__}" == HOOK_CLASS


def test_import_is_lightweight(tmp_path: Path) -> None:
    loaded = _run_airflow_python(
        """
        import json, sys
        from airflow_provider_orchestra_dbt.get_provider_info import get_provider_info
        get_provider_info()
        heavy = ("dbt", "boto3", "botocore", "requests",
                 "airflow_provider_orchestra_dbt.hooks.orchestra_dbt")
        print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
        """,
        tmp_path,
    )
    assert loaded == []


# --- registration with Airflow ----------------------------------------------------------------


@pytest.mark.slow
def test_airflow_providers_list(tmp_path: Path) -> None:
    stdout = _run_python(["-m", "airflow", "providers", "list", "--output", "json"], tmp_path)
    start = stdout.index("[")
    providers = {p["package_name"]: p for p in json.loads(stdout[start:])}
    assert DIST_NAME in providers, sorted(providers)
    assert providers[DIST_NAME]["version"] == __version__


@pytest.fixture(scope="module")
def registration(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What Airflow's ProvidersManager and the UI connection metadata say about our type."""
    return _run_airflow_python(  # type: ignore[no-any-return]
        f"""
        import json, warnings
        warnings.simplefilter("ignore")
        from airflow.providers_manager import ProvidersManager

        pm = ProvidersManager()
        provider = pm.providers[{DIST_NAME!r}]
        hook = pm.hooks[{CONN_TYPE!r}]
        widgets = {{
            key: {{"field_name": w.field_name, "hook_class_name": w.hook_class_name,
                   "package_name": w.package_name, "is_sensitive": w.is_sensitive,
                   "field": w.field}}
            for key, w in pm.connection_form_widgets.items()
            if key.startswith("extra__{CONN_TYPE}__")
        }}
        # What GET /ui/connections/hook_meta serves to the connections form.
        from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
        (meta,) = [m for m in HookMetaService.hook_meta_data()
                   if m.connection_type == {CONN_TYPE!r}]
        print(json.dumps({{
            "provider_version": provider.version,
            "hook": None if hook is None else {{
                "hook_class_name": hook.hook_class_name,
                "connection_id_attribute_name": hook.connection_id_attribute_name,
                "package_name": hook.package_name,
                "hook_name": hook.hook_name,
                "connection_testable": hook.connection_testable,
            }},
            "widgets": widgets,
            "field_behaviour": pm.field_behaviours.get({CONN_TYPE!r}),
            "hook_meta": meta.model_dump(mode="json"),
        }}))
        """,
        tmp_path_factory.mktemp("registration"),
    )


def test_providers_manager_registers_hook(registration: dict[str, Any]) -> None:
    assert registration["provider_version"] == __version__
    assert registration["hook"] == {
        "hook_class_name": HOOK_CLASS,
        "connection_id_attribute_name": "orchestra_dbt_conn_id",
        "package_name": DIST_NAME,
        "hook_name": "Orchestra dbt state",
        "connection_testable": True,
    }


def test_providers_manager_registers_conn_fields(registration: dict[str, Any]) -> None:
    widgets = registration["widgets"]

    assert {w["field_name"] for w in widgets.values()} == EXPECTED_CONN_FIELDS
    assert {w["hook_class_name"] for w in widgets.values()} == {HOOK_CLASS}
    assert {w["package_name"] for w in widgets.values()} == {DIST_NAME}
    sensitive = {w["field_name"] for w in widgets.values() if w["is_sensitive"]}
    assert sensitive == {"aws_secret_access_key"}
    backend = widgets[f"extra__{CONN_TYPE}__backend"]["field"]
    assert backend["value"] == "local"
    assert backend["schema"]["enum"] == ["local", "http", "s3"]
    assert backend["schema"]["title"] == "State backend"


def test_providers_manager_registers_field_behaviour(registration: dict[str, Any]) -> None:
    behaviour = registration["field_behaviour"]

    assert set(behaviour["hidden_fields"]) == {"host", "schema", "port"}
    assert behaviour["relabeling"] == {"login": "AWS access key id", "password": "API key"}


def test_ui_hook_meta(registration: dict[str, Any]) -> None:
    meta = registration["hook_meta"]

    assert meta["hook_class_name"] == HOOK_CLASS
    assert meta["hook_name"] == "Orchestra dbt state"
    assert set(meta["extra_fields"]) == EXPECTED_CONN_FIELDS
    assert meta["extra_fields"]["orchestra_env"]["value"] == "app"
    assert meta["extra_fields"]["timeout"]["value"] == 30
    assert meta["extra_fields"]["aws_secret_access_key"]["schema"]["format"] == "password"
    served = meta["extra_fields"]
    assert {n for n, f in served.items() if _marked_required(f["schema"])} == REQUIRED_IN_FORM
    standard = meta["standard_fields"]
    assert standard["password"]["title"] == "API key"
    assert standard["login"]["title"] == "AWS access key id"
    for hidden in ("host", "port", "url_schema"):
        assert standard[hidden]["hidden"] is True
