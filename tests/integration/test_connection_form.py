"""The connection form as Airflow 3.3 serves it: a real API server, and a real browser.

The 3.3 UI builds the form only from the declarative ``conn-fields`` / ``ui-field-behaviour``
in ``get_provider_info()``; these tests prove what a user sees and saves.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.airflow_env import AirflowEnv, stop_process_group, wait_for
from support.browser import chromium

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LABELS = (
    "State backend",
    "Orchestra environment",
    "Base URL",
    "State URI",
    "AWS region",
    "S3 endpoint URL",
    "AWS connection id",
    "AWS secret access key",
    "Integration account id",
    "Timeout (seconds)",
    "Retry budget (seconds)",
)
# The 3.3 form can only mark a field required for every backend; the others say in their
# description which backends need them, and the hook enforces it.
REQUIRED_LABELS = {"State backend"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiServer:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    airflow = AirflowEnv.create(tmp_path_factory.mktemp("api-server"))
    port = _free_port()
    log = (airflow.root / "api-server.log").open("wb")
    proc = subprocess.Popen(
        [*airflow._argv(["api-server", "--host", "127.0.0.1", "--port", str(port)])],
        env=airflow.environ(
            {
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__API__WORKERS": "1",
            }
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = ApiServer(f"http://127.0.0.1:{port}")

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"api-server exited: {(airflow.root / 'api-server.log').read_text()}"
            )
        try:
            return bool(server.get("/api/v2/version"))
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    try:
        wait_for(up, timeout=180, what="airflow api-server to answer")
        yield server
    finally:
        stop_process_group(proc)
        log.close()


def test_hook_meta_lists_the_connection_type_with_its_fields(api_server: ApiServer) -> None:
    meta = {m["connection_type"]: m for m in api_server.get("/ui/connections/hook_meta")}
    ours = meta["orchestra_dbt"]
    assert ours["hook_name"] == "Orchestra dbt state"
    assert ours["standard_fields"]["password"]["title"] == "API key"
    assert ours["standard_fields"]["host"]["hidden"] is True
    extra = ours["extra_fields"]
    assert {field["schema"]["title"] for field in extra.values()} == set(LABELS)
    assert extra["backend"]["schema"]["enum"] == ["local", "http", "s3"]
    # The form's rule: required when the declared type does not admit null.
    types = {field["schema"]["title"]: field["schema"]["type"] for field in extra.values()}
    required = {
        title for title, t in types.items() if "null" not in (t if isinstance(t, list) else [t])
    }
    assert required == REQUIRED_LABELS


def test_the_test_button_reports_what_it_found(api_server: ApiServer, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"state": {"db.main.m": {"checksum": "c"}}}))
    found = api_server.post(
        "/api/v2/connections/test",
        {
            "connection_id": "probe",
            "conn_type": "orchestra_dbt",
            "extra": json.dumps({"backend": "local", "state_uri": str(state)}),
        },
    )
    assert found == {"status": True, "message": f"local state file {state}: 1 entry"}
    secret = "sekrit-value-123"
    refused = api_server.post(
        "/api/v2/connections/test",
        {"connection_id": "probe", "conn_type": "orchestra_dbt", "password": secret,
         "extra": json.dumps({"backend": "ftp"})},
    )  # fmt: skip
    assert refused["status"] is False
    assert "unknown backend 'ftp'" in refused["message"] and secret not in refused["message"]


def test_add_connection_in_a_browser(api_server: ApiServer, tmp_path: Path) -> None:
    state_uri = str(tmp_path / "ui-state.json")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{api_server.base}/connections", wait_until="networkidle")
        page.get_by_role("button", name="Add Connection").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("combobox").first.click(force=True)
        page.keyboard.type("Orchestra dbt state")
        page.keyboard.press("Enter")
        dialog.get_by_label("Connection ID").fill("ui_state")
        dialog.get_by_label("API key").fill("not-a-real-key")
        dialog.get_by_text("Extra Fields", exact=True).click()
        marked = set()
        for label in LABELS:
            element = dialog.locator("label", has_text=label).first
            assert element.is_visible(), label
            if element.locator("[class*=requiredIndicator]").count():
                marked.add(label)
        assert marked == REQUIRED_LABELS
        # 3.3's extra-field labels are not tied to their inputs, so fill by name.
        dialog.locator("input[name=element_state_uri]").fill(state_uri)
        page.screenshot(path=str(tmp_path / "form.png"), full_page=True)
        dialog.get_by_role("button", name="Save").click()

        def saved() -> dict[str, Any] | None:
            try:
                return dict(api_server.get("/api/v2/connections/ui_state"))
            except urllib.error.HTTPError:
                return None

        connection = wait_for(saved, timeout=30, what="the connection to be saved")
    assert connection["conn_type"] == "orchestra_dbt"
    assert connection["password"] == "***"
    extra = json.loads(connection["extra"])
    assert extra["backend"] == "local" and extra["state_uri"] == state_uri
