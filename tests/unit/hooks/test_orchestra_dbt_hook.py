"""OrchestraDbtHook: connection parsing, state store selection and test_connection.

Connections are supplied through ``AIRFLOW_CONN_<ID>`` environment variables (JSON form),
which the Airflow task SDK resolves without a metadata database.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_orchestra_dbt.hooks.orchestra_dbt import (
    OrchestraDbtHook,
    StateConnectionConfig,
)
from airflow_provider_orchestra_dbt.state import LocalFileStateStore, StateStore
from airflow_provider_orchestra_dbt.state.model import entries_to_json

# The API key contains a quote and a backslash: repr() would escape them.
API_KEY = "orch-API-k3y'do-not\\leak-0123456789"
AWS_KEY_ID = "AKIAEXAMPLEKEYID0001"
AWS_SECRET = "aws/secret+value/do-not-leak-9876543210"
SECRETS = (API_KEY, AWS_KEY_ID, AWS_SECRET)
# Parts of the secrets, to catch a secret leaking in an escaped or partial form.
SECRET_FRAGMENTS = ("k3y", "leak-0123456789", "KEYID0001", "9876543210")


def set_conn(
    monkeypatch: pytest.MonkeyPatch,
    conn_id: str,
    extra: dict[str, Any] | None = None,
    **fields: Any,
) -> str:
    """Define connection ``conn_id`` through its AIRFLOW_CONN_ env var and return the id."""
    payload: dict[str, Any] = {"conn_type": "orchestra_dbt", **fields}
    if extra is not None:
        payload["extra"] = extra
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(payload))
    return conn_id


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert secret.lower() not in text.lower()
    for fragment in SECRET_FRAGMENTS:
        assert fragment.lower() not in text.lower()


def write_state(path: Path, entries: int) -> None:
    state = {
        f"db.schema.model_{i}": {
            "checksum": f"sha-{i}",
            "last_updated": "2024-01-01T00:00:00+00:00",
            "sources": {},
        }
        for i in range(entries)
    }
    path.write_text(json.dumps({"state": state}), encoding="utf-8")


# --- class attributes -------------------------------------------------------------------


def test_hook_class_attributes() -> None:
    assert OrchestraDbtHook.conn_name_attr == "orchestra_dbt_conn_id"
    assert OrchestraDbtHook.default_conn_name == "orchestra_dbt_default"
    assert OrchestraDbtHook.conn_type == "orchestra_dbt"
    assert OrchestraDbtHook.hook_name == "Orchestra dbt state"
    assert OrchestraDbtHook().orchestra_dbt_conn_id == "orchestra_dbt_default"


def test_hook_does_not_define_legacy_form_methods() -> None:
    # Airflow 3.3 reads the form from provider info; defining these only adds warnings.
    assert "get_connection_form_widgets" not in OrchestraDbtHook.__dict__
    assert "get_ui_field_behaviour" not in OrchestraDbtHook.__dict__


def test_constructor_does_not_look_up_connection() -> None:
    # No such connection exists; constructing must still work (lookup is lazy).
    hook = OrchestraDbtHook(orchestra_dbt_conn_id="does_not_exist")
    assert hook.orchestra_dbt_conn_id == "does_not_exist"


# --- config parsing -----------------------------------------------------------------------


def test_config_local_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    conn_id = set_conn(monkeypatch, "orch_local", {"state_uri": str(state_file)})

    config = OrchestraDbtHook(conn_id).config

    assert config == StateConnectionConfig(conn_id=conn_id, state_uri=str(state_file))
    assert config.backend == "local"
    assert config.orchestra_env == "app"
    assert config.timeout == 30.0
    assert config.base_url is None
    assert config.integration_account_id is None
    assert config.api_key is None
    assert config.local_path == state_file


def test_config_all_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(
        monkeypatch,
        "orch_full",
        {
            "backend": "S3",
            "orchestra_env": " stage ",
            "base_url": "https://orchestra.example.com/api",
            "state_uri": "s3://bucket/dbt/state.json",
            "region_name": "eu-west-1",
            "endpoint_url": "http://minio:9000",
            "aws_conn_id": "aws_default",
            "aws_secret_access_key": AWS_SECRET,
            "integration_account_id": 12345,
            "timeout": "12.5",
            "something_unknown": "ignored",
        },
        login=AWS_KEY_ID,
        password=API_KEY,
    )

    config = OrchestraDbtHook(conn_id).config

    assert config.conn_id == conn_id
    assert config.backend == "s3"
    assert config.orchestra_env == "stage"
    assert config.base_url == "https://orchestra.example.com/api"
    assert config.state_uri == "s3://bucket/dbt/state.json"
    assert config.region_name == "eu-west-1"
    assert config.endpoint_url == "http://minio:9000"
    assert config.aws_conn_id == "aws_default"
    assert config.integration_account_id == "12345"
    assert config.timeout == 12.5
    assert config.api_key == API_KEY
    assert config.aws_access_key_id == AWS_KEY_ID
    assert config.aws_secret_access_key == AWS_SECRET


def test_config_empty_strings_and_nulls_mean_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The connections UI sends null (or "") for fields left empty.
    conn_id = set_conn(
        monkeypatch,
        "orch_blank",
        {
            "backend": None,
            "orchestra_env": "",
            "state_uri": str(tmp_path / "s.json"),
            "base_url": "",
            "integration_account_id": "  ",
            "timeout": None,
        },
    )

    config = OrchestraDbtHook(conn_id).config

    assert config.backend == "local"
    assert config.orchestra_env == "app"
    assert config.base_url is None
    assert config.integration_account_id is None
    assert config.timeout == 30.0


def test_config_local_path_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    conn_id = set_conn(monkeypatch, "orch_home", {"state_uri": "~/orchestra/state.json"})

    assert OrchestraDbtHook(conn_id).config.local_path == tmp_path / "orchestra" / "state.json"


def test_unknown_backend_names_conn_id_and_allowed_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn_id = set_conn(monkeypatch, "orch_bad_backend", {"backend": "gcs", "state_uri": "/x"})

    with pytest.raises(ValueError, match="orch_bad_backend") as excinfo:
        OrchestraDbtHook(conn_id).get_state_store()

    message = str(excinfo.value)
    assert "'gcs'" in message
    assert "local, http, s3" in message


def test_unknown_orchestra_env(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(monkeypatch, "orch_bad_env", {"backend": "http", "orchestra_env": "prod"})

    with pytest.raises(ValueError, match=r"orch_bad_env.*app, stage, dev"):
        _ = OrchestraDbtHook(conn_id).config


def test_local_backend_without_state_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(monkeypatch, "orch_no_uri", {"backend": "local"})

    with pytest.raises(ValueError, match="orch_no_uri") as excinfo:
        OrchestraDbtHook(conn_id).get_state_store()

    assert "state_uri" in str(excinfo.value)


def test_connection_without_extra_needs_state_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(monkeypatch, "orch_no_extra")

    with pytest.raises(ValueError, match=r"orch_no_extra.*state_uri"):
        _ = OrchestraDbtHook(conn_id).config


@pytest.mark.parametrize("timeout", ["soon", 0, -1, True, "nan"])
def test_invalid_timeout(monkeypatch: pytest.MonkeyPatch, timeout: object) -> None:
    conn_id = set_conn(monkeypatch, "orch_timeout", {"state_uri": "/x.json", "timeout": timeout})

    with pytest.raises(ValueError, match=r"orch_timeout.*timeout"):
        _ = OrchestraDbtHook(conn_id).config


@pytest.mark.parametrize(
    "state_uri", [None, "/local/path.json", "s3://bucket", "s3://bucket/", "s3:///key"]
)
def test_s3_backend_needs_s3_uri(monkeypatch: pytest.MonkeyPatch, state_uri: str | None) -> None:
    conn_id = set_conn(monkeypatch, "orch_s3_uri", {"backend": "s3", "state_uri": state_uri})

    with pytest.raises(ValueError, match=r"orch_s3_uri.*s3://bucket/key"):
        _ = OrchestraDbtHook(conn_id).config


def test_base_url_must_be_http(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(monkeypatch, "orch_url", {"backend": "http", "base_url": "ftp://x"})

    with pytest.raises(ValueError, match=r"orch_url.*base_url"):
        _ = OrchestraDbtHook(conn_id).config


def test_non_string_field_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(monkeypatch, "orch_types", {"state_uri": ["/a", "/b"]})

    with pytest.raises(ValueError, match=r"orch_types.*'state_uri' must be a string"):
        _ = OrchestraDbtHook(conn_id).config


def test_config_is_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(monkeypatch, "orch_frozen", {"state_uri": "/x.json"})
    config = OrchestraDbtHook(conn_id).config

    with pytest.raises(AttributeError):
        config.backend = "s3"  # type: ignore[misc]


# --- state store --------------------------------------------------------------------------


def test_local_backend_returns_local_file_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state_file = tmp_path / "state.json"
    conn_id = set_conn(
        monkeypatch, "orch_store", {"backend": "local", "state_uri": str(state_file)}
    )
    hook = OrchestraDbtHook(conn_id)

    store = hook.get_state_store()

    assert isinstance(store, LocalFileStateStore)
    assert isinstance(store, StateStore)
    assert store.path == state_file
    assert str(state_file) in store.description
    assert isinstance(hook.get_conn(), LocalFileStateStore)


def test_local_store_round_trip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state_file = tmp_path / "nested" / "state.json"
    conn_id = set_conn(monkeypatch, "orch_rt", {"state_uri": str(state_file)})
    store = OrchestraDbtHook(conn_id).get_state_store()
    entry = {"checksum": "abc", "last_updated": "2024-05-01T00:00:00+00:00", "sources": {}}

    store.save({"db.schema.model": entry})

    loaded = OrchestraDbtHook(conn_id).get_state_store().load()
    assert entries_to_json(loaded.entries) == {"db.schema.model": entry}


def test_http_backend_builds_the_orchestra_store(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(
        monkeypatch,
        "orch_http",
        {"backend": "http", "orchestra_env": "stage", "integration_account_id": "acct"},
        password=API_KEY,
    )
    store = OrchestraDbtHook(conn_id).get_state_store()
    assert type(store).__name__ == "OrchestraHttpStateStore"
    assert store.description == (
        "Orchestra state API https://stage.getorchestra.io/api/engine/public/state/DBT_CORE"
    )
    assert_no_secret(repr(store))


def test_http_backend_needs_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(monkeypatch, "orch_nokey", {"backend": "http"})
    with pytest.raises(ValueError, match="'orch_nokey': backend 'http' needs the Orchestra API"):
        _ = OrchestraDbtHook(conn_id).config


def test_s3_backend_builds_the_s3_store(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(
        monkeypatch,
        "orch_s3",
        {"backend": "s3", "state_uri": "s3://bucket/dbt/state.json",
         "aws_secret_access_key": AWS_SECRET},
        login=AWS_KEY_ID,
    )  # fmt: skip
    store = OrchestraDbtHook(conn_id).get_state_store()
    assert type(store).__name__ == "S3StateStore"
    assert "s3://bucket/dbt/state.json" in store.description
    assert_no_secret(repr(store))


def test_s3_keys_come_in_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(
        monkeypatch, "orch_half", {"backend": "s3", "state_uri": "s3://b/k"}, login=AWS_KEY_ID
    )
    with pytest.raises(ValueError, match="'orch_half': backend 's3' needs both") as caught:
        _ = OrchestraDbtHook(conn_id).config
    assert_no_secret(str(caught.value))


def test_s3_credentials_from_an_aws_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_MY_AWS",
        json.dumps({"conn_type": "aws", "login": AWS_KEY_ID, "password": AWS_SECRET,
                    "extra": {"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:9"}}),
    )  # fmt: skip
    conn_id = set_conn(
        monkeypatch, "orch_aws", {"backend": "s3", "state_uri": "s3://b/k", "aws_conn_id": "my_aws"}
    )
    hook = OrchestraDbtHook(conn_id)
    assert hook._aws_credentials(hook.config) == {
        "aws_access_key_id": AWS_KEY_ID,
        "aws_secret_access_key": AWS_SECRET,
        "region_name": "eu-west-1",
        "endpoint_url": "http://127.0.0.1:9",
    }
    store = hook.get_state_store()
    assert "http://127.0.0.1:9" in store.description
    assert_no_secret(repr(store) + store.description)


# --- test_connection ------------------------------------------------------------------------


def test_test_connection_missing_file_in_writable_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state_file = tmp_path / "state.json"
    conn_id = set_conn(monkeypatch, "orch_tc_missing", {"state_uri": str(state_file)})

    ok, message = OrchestraDbtHook(conn_id).test_connection()

    assert ok, message
    assert message == f"no state file yet at {state_file}; directory is writable"
    assert not state_file.exists()


def test_test_connection_missing_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state_file = tmp_path / "a" / "b" / "state.json"
    conn_id = set_conn(monkeypatch, "orch_tc_nodir", {"state_uri": str(state_file)})

    ok, message = OrchestraDbtHook(conn_id).test_connection()

    assert ok, message
    assert f"no state file yet at {state_file}" in message
    assert "will be created" in message
    assert not (tmp_path / "a").exists()


def test_test_connection_parent_is_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    conn_id = set_conn(monkeypatch, "orch_tc_blocked", {"state_uri": str(blocker / "state.json")})

    ok, message = OrchestraDbtHook(conn_id).test_connection()

    assert not ok
    assert str(blocker) in message


def test_test_connection_read_only_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # chmod does not stop root, so simulate a directory the worker cannot write to.
    directory = tmp_path / "ro"
    directory.mkdir()
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == directory and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    conn_id = set_conn(monkeypatch, "orch_tc_ro", {"state_uri": str(directory / "state.json")})

    ok, message = OrchestraDbtHook(conn_id).test_connection()

    assert not ok
    assert message == (
        f"no state file yet at {directory / 'state.json'} and directory {directory} is not writable"
    )


@pytest.mark.parametrize(
    ("entries", "expected"), [(0, "0 entries"), (1, "1 entry"), (1234, "1,234 entries")]
)
def test_test_connection_valid_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entries: int, expected: str
) -> None:
    state_file = tmp_path / "state.json"
    write_state(state_file, entries)
    conn_id = set_conn(monkeypatch, "orch_tc_valid", {"state_uri": str(state_file)})

    ok, message = OrchestraDbtHook(conn_id).test_connection()

    assert ok, message
    assert message == f"local state file {state_file}: {expected}"


def test_test_connection_invalid_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    state_file.write_text('{"state": {', encoding="utf-8")
    conn_id = set_conn(monkeypatch, "orch_tc_bad", {"state_uri": str(state_file)}, password=API_KEY)

    ok, message = OrchestraDbtHook(conn_id).test_connection()

    assert not ok
    assert str(state_file) in message
    assert "not valid JSON" in message
    assert_no_secret(message)
    assert state_file.read_text(encoding="utf-8") == '{"state": {'


def test_test_connection_wrong_shape(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps({"state": {"k": {"no_checksum": 1}}}), encoding="utf-8")
    conn_id = set_conn(monkeypatch, "orch_tc_shape", {"state_uri": str(state_file)})

    ok, message = OrchestraDbtHook(conn_id).test_connection()

    assert not ok
    assert "checksum" in message


def test_test_connection_state_path_is_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conn_id = set_conn(monkeypatch, "orch_tc_dir", {"state_uri": str(tmp_path)})

    ok, message = OrchestraDbtHook(conn_id).test_connection()

    assert not ok
    assert "is a directory" in message


def test_test_connection_never_raises_on_bad_config(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = set_conn(monkeypatch, "orch_tc_cfg", {"backend": "ftp"})

    ok, message = OrchestraDbtHook(conn_id).test_connection()

    assert not ok
    assert "orch_tc_cfg" in message
    assert "local, http, s3" in message


def test_test_connection_unknown_connection() -> None:
    ok, message = OrchestraDbtHook("orch_tc_not_defined_anywhere").test_connection()

    assert not ok
    assert "orch_tc_not_defined_anywhere" in message


# --- secrets ------------------------------------------------------------------------------


def _secret_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **extra: Any) -> str:
    return set_conn(
        monkeypatch,
        conn_id,
        {"aws_secret_access_key": AWS_SECRET, **extra},
        login=AWS_KEY_ID,
        password=API_KEY,
    )


def test_secrets_not_in_repr_or_str(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conn_id = _secret_conn(monkeypatch, "orch_secret_repr", state_uri=str(tmp_path / "s.json"))
    hook = OrchestraDbtHook(conn_id)
    config = hook.config

    assert config.api_key == API_KEY
    for text in (repr(config), str(config), repr(hook), str(hook)):
        assert_no_secret(text)
    store = hook.get_state_store()
    assert_no_secret(repr(store))
    assert_no_secret(store.description)


@pytest.mark.parametrize(
    "extra",
    [
        {"backend": "unknown"},
        {"backend": "local"},  # no state_uri
        {"backend": API_KEY},  # secret pasted into the wrong field
        {"state_uri": "/x.json", "timeout": API_KEY},
        {"backend": "s3", "state_uri": AWS_SECRET},
        {"backend": "http", "base_url": API_KEY},
    ],
)
def test_secrets_not_in_error_messages(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any]
) -> None:
    conn_id = _secret_conn(monkeypatch, "orch_secret_err", **extra)
    hook = OrchestraDbtHook(conn_id)

    with pytest.raises(ValueError) as excinfo:
        hook.get_state_store()

    assert "orch_secret_err" in str(excinfo.value)
    assert_no_secret(str(excinfo.value))
    assert_no_secret(repr(excinfo.value))
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__

    ok, message = OrchestraDbtHook(conn_id).test_connection()
    assert not ok
    assert_no_secret(message)


def test_secrets_not_in_test_connection_messages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, setup in {
        "missing": lambda p: None,
        "valid": lambda p: write_state(p, 3),
        "invalid": lambda p: p.write_text("nope", encoding="utf-8"),
    }.items():
        state_file = tmp_path / name / "state.json"
        state_file.parent.mkdir()
        setup(state_file)
        conn_id = _secret_conn(monkeypatch, f"orch_secret_{name}", state_uri=str(state_file))

        _, message = OrchestraDbtHook(conn_id).test_connection()

        assert str(state_file) in message
        assert_no_secret(message)


def test_redact_masks_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = _secret_conn(monkeypatch, "orch_redact", state_uri="/x.json")
    config = OrchestraDbtHook(conn_id).config

    redacted = config.redact(f"a {API_KEY} b {AWS_SECRET} c {AWS_KEY_ID}")

    assert redacted == "a *** b *** c ***"


# --- retry budget, timeouts and masking in every encoding ----------------------------------


def test_timeout_and_retry_budget_reach_both_network_stores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = {"timeout": "7.5", "retry_budget": 45}
    http = set_conn(
        monkeypatch, "orch_budget_http", {"backend": "http", **limits}, password=API_KEY
    )
    s3 = set_conn(
        monkeypatch, "orch_budget_s3", {"backend": "s3", "state_uri": "s3://b/k", **limits}
    )
    for conn_id in (http, s3):
        config = OrchestraDbtHook(conn_id).config
        assert (config.timeout, config.retry_budget) == (7.5, 45.0)
        store: Any = OrchestraDbtHook(conn_id).get_state_store()
        assert (store.timeout, store.retry_budget) == (7.5, 45.0)


def test_retry_budget_defaults_to_two_minutes_and_may_be_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = set_conn(monkeypatch, "orch_budget_default", {"state_uri": "/x.json"})
    assert OrchestraDbtHook(default).config.retry_budget == 120.0
    zero = set_conn(monkeypatch, "orch_budget_zero", {"state_uri": "/x.json", "retry_budget": "0"})
    assert OrchestraDbtHook(zero).config.retry_budget == 0.0


@pytest.mark.parametrize("budget", ["later", -1, True, "inf"])
def test_invalid_retry_budget(monkeypatch: pytest.MonkeyPatch, budget: object) -> None:
    conn_id = set_conn(
        monkeypatch, "orch_budget_bad", {"state_uri": "/x.json", "retry_budget": budget}
    )
    with pytest.raises(ValueError, match=r"orch_budget_bad.*'retry_budget' must be"):
        _ = OrchestraDbtHook(conn_id).config


# Each holds a character that an encoding changes: '/', '"', '\', '+' and '%'.
SYMBOL_SECRET = 'sym/bol"s\\ecr+et%2F-77aa'
SYMBOL_KEY = 'api/key"x\\y+z%41-88bb'


def _forms(secret: str) -> set[str]:
    from airflow_provider_orchestra_dbt.state.secrets import secret_forms

    return secret_forms(secret)


def test_secrets_are_registered_with_airflows_masker_in_every_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from urllib.parse import quote, quote_plus

    from airflow.sdk._shared.secrets_masker import redact

    url_password = 'url/pass"w\\rd+%-99cc'
    conn_id = set_conn(
        monkeypatch,
        "orch_masker",
        {
            "backend": "s3",
            "state_uri": "s3://b/k",
            "aws_secret_access_key": SYMBOL_SECRET,
            "endpoint_url": f"http://minio:{url_password}@minio.local:9000",
        },
        login=AWS_KEY_ID,
        password=SYMBOL_KEY,
    )
    _ = OrchestraDbtHook(conn_id).config

    for secret in (SYMBOL_SECRET, SYMBOL_KEY, url_password):
        for text in (
            secret,
            quote(secret, safe=""),
            quote_plus(secret),
            json.dumps(secret)[1:-1],
            json.dumps(secret)[1:-1].replace("/", "\\/"),
        ):
            assert redact(f"before {text} after") == "before *** after", text


def test_credentials_in_urls_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    url_password = 'url/pass"w\\rd+%-99cc'
    http = set_conn(
        monkeypatch,
        "orch_url_http",
        {"backend": "http", "base_url": f"https://user:{url_password}@orchestra.example.com"},
        password=SYMBOL_KEY,
    )
    s3 = set_conn(
        monkeypatch,
        "orch_url_s3",
        {
            "backend": "s3",
            "state_uri": "s3://b/k",
            "endpoint_url": f"http://user:{url_password}@127.0.0.1:1",
        },
    )
    texts: list[str] = []
    with pytest.raises(ValueError) as caught:
        OrchestraDbtHook(http).get_state_store()
    texts += [str(caught.value), repr(caught.value)]
    texts.append(OrchestraDbtHook(http).test_connection()[1])
    store = OrchestraDbtHook(s3).get_state_store()
    texts += [store.description, repr(store)]
    assert "http://***@127.0.0.1:1" in store.description
    config = OrchestraDbtHook(s3).config
    texts.append(config.redact(f"echo {url_password} {json.dumps(url_password)}"))
    for text in texts:
        for form in _forms(url_password) | _forms(SYMBOL_KEY):
            assert form not in text, (form, text)


def test_redact_masks_encoded_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import quote

    conn_id = set_conn(
        monkeypatch,
        "orch_redact_forms",
        {"state_uri": "/x.json", "aws_secret_access_key": SYMBOL_SECRET},
        login=AWS_KEY_ID,
        password=SYMBOL_KEY,
    )
    config = OrchestraDbtHook(conn_id).config
    text = f"{json.dumps(SYMBOL_KEY)} {quote(SYMBOL_SECRET, safe='')} {SYMBOL_KEY!r}"
    assert config.redact(text) == "\"***\" *** '***'"


def test_the_form_offers_the_defaults_and_environments_the_stores_use() -> None:
    from airflow_provider_orchestra_dbt import get_provider_info as form
    from airflow_provider_orchestra_dbt.state import http, retry

    assert tuple(form.ORCHESTRA_ENVS) == http.ORCHESTRA_ENVS
    assert float(form.DEFAULT_TIMEOUT_SECONDS) == retry.DEFAULT_TIMEOUT
    assert float(form.DEFAULT_RETRY_BUDGET_SECONDS) == retry.DEFAULT_RETRY_BUDGET
    assert StateConnectionConfig(conn_id="c").timeout == retry.DEFAULT_TIMEOUT


@pytest.mark.parametrize(
    "state_uri", ["s3://bucket/dbt/state.json", "S3://bucket/k", "s3://b/a?b#c.json"]
)
def test_the_hook_takes_every_s3_uri_the_store_takes(
    monkeypatch: pytest.MonkeyPatch, state_uri: str
) -> None:
    conn_id = set_conn(monkeypatch, "orch_s3_any", {"backend": "s3", "state_uri": state_uri})
    store = OrchestraDbtHook(conn_id).get_state_store()
    assert store.description.startswith("S3 object s3://b")
