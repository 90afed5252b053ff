"""A state URI names a local file or an S3 object; anything else fails without showing secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_orchestra_dbt.state import (
    LocalFileStateStore,
    S3StateStore,
    StateError,
    store_from_uri,
)
from airflow_provider_orchestra_dbt.state.s3 import DEFAULT_RETRY_BUDGET, DEFAULT_TIMEOUT
from airflow_provider_orchestra_dbt.state.secrets import secret_forms


def local_path(uri: str) -> Path:
    store = store_from_uri(uri)
    assert isinstance(store, LocalFileStateStore)
    return store.path


def test_a_plain_path_is_a_local_file_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert local_path("state/state.json") == tmp_path / "state" / "state.json"
    assert local_path("/abs/state.json") == Path("/abs/state.json")
    assert local_path("~/state.json") == tmp_path / "home" / "state.json"
    # Not a scheme: a drive letter, or a colon after the first slash.
    assert local_path("C:state.json") == tmp_path / "C:state.json"
    assert local_path("./s3:x/state.json") == tmp_path / "s3:x" / "state.json"


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("file:///abs/state.json", "/abs/state.json"),
        ("FILE:///abs/state.json", "/abs/state.json"),
        ("file://localhost/abs/state.json", "/abs/state.json"),
        ("file:/abs/state.json", "/abs/state.json"),
        ("file:///abs/my%20state%3F%23.json", "/abs/my state?#.json"),
    ],
)
def test_a_file_uri_is_a_local_file_at_its_decoded_absolute_path(uri: str, path: str) -> None:
    assert local_path(uri) == Path(path)


def test_an_s3_uri_is_the_store_the_hook_builds_without_keys_or_endpoint() -> None:
    store = store_from_uri("s3://my-bucket/dbt/state.json", label="--state-uri")
    assert isinstance(store, S3StateStore)
    assert (store.bucket, store.key) == ("my-bucket", "dbt/state.json")
    # No endpoint of its own: boto3 takes it from AWS_ENDPOINT_URL(_S3) or AWS's default.
    assert store.description == "S3 object s3://my-bucket/dbt/state.json"
    assert (store.timeout, store.retry_budget) == (DEFAULT_TIMEOUT, DEFAULT_RETRY_BUDGET)
    assert repr(store) == "S3StateStore('s3://my-bucket/dbt/state.json', label='--state-uri')"


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("", "'' is empty; supported: a path, file:///"),
        ("  ", "'  ' is empty"),
        ("s3://my-bucket", "does not name an object key"),
        ("s3://my-bucket/dir/", "does not name an object key"),
        ("s3:/my-bucket/state.json", "is not an s3://bucket/key URI"),
        ("https://app.getorchestra.io", "names the Orchestra API, whose API key"),
        ("http://localhost:8080/api", "use the operator with an orchestra_dbt connection"),
        ("gs://bucket/state.json", "has the unsupported scheme 'gs'; supported: a path"),
        ("file://server/share/state.json", "names the host 'server'"),
        ("file:state.json", "does not name an absolute path"),
        ("file:///abs/state.json?x=1", "has a query or fragment"),
        ("file:///abs/state.json#", "has a query or fragment"),
    ],
)
def test_a_bad_uri_fails_naming_the_label_and_the_uri(uri: str, problem: str) -> None:
    with pytest.raises(StateError) as caught:
        store_from_uri(uri, label="--state-uri")
    message = str(caught.value)
    assert message.startswith("--state-uri: state URI "), message
    assert problem in message
    assert repr(uri) in message


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://AKIAEXAMPLE:s3cr%2Ft+key@my-bucket/state.json", "s3://***@my-bucket/state.json"),
        ("s3://AKIAEXAMPLE@my-bucket/state.json", "s3://***@my-bucket/state.json"),
        ("https://:s3cr/t+key@app.getorchestra.io", "https://***@app.getorchestra.io"),
        ("file://user:s3cr/t+key@localhost/abs", "file://***@localhost/abs"),
    ],
)
def test_credentials_in_a_uri_are_refused_and_never_shown(uri: str, shown: str) -> None:
    with pytest.raises(StateError, match="carries credentials") as caught:
        store_from_uri(uri)
    message = str(caught.value)
    assert repr(shown) in message
    for secret in ("AKIAEXAMPLE", "s3cr/t+key", "s3cr%2Ft+key"):
        assert not any(form in message for form in secret_forms(secret)), message
