"""The tutorial in the Airflow UI, behind a login: a real api-server with auth on, a real browser.

One ``airflow dags test`` run of the tutorial DAG (as ``scripts/tutorial.sh`` makes them) writes
the run picture and the XComs; then one ``airflow api-server`` for the module, with Airflow's
simple auth manager and a configured user (as ``scripts/tutorial-ui.sh`` runs it, minus the
scheduler: nothing is scheduled here). The tests check what a user without a login gets, what
a token gets, and what a user who logs in through the UI sees: the "dbt run picture" tab and
extra link of the dbt task, and the "dbt reuse" page in the navigation.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from support.airflow_env import (
    AirflowEnv,
    free_port,
    fresh_workspace,
    stop_processes,
    tutorial_env,
    wait_for,
)
from support.browser import chromium
from support.tutorial import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG = "orchestra_dbt_tutorial"
TASK = "dbt_build"
USER = "admin"
LOGICAL_DATE = "2026-02-01"
STARTUP_TIMEOUT = 180.0
# Every wait in the browser is bounded by this (ms): generous, the machine may be busy.
UI_TIMEOUT_MS = 60_000
CLICK_TRIES = 3
# What the picture of the tutorial's first run shows (presentation/picture.py): its header, and
# the models it built.
PICTURE_TEXTS = ("Estimated warehouse time saved by reuse", "fct_orders", "dim_customers")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: str


@dataclass(frozen=True)
class UiServer:
    base: str
    password: str
    run_id: str
    link: str  # the task's "dbt run picture" extra link, as the operator saved it

    def request(
        self,
        path: str,
        *,
        token: str | None = None,
        body: dict[str, Any] | None = None,
        timeout: float = 60,
    ) -> Response:
        """One HTTP request, no cookie; an error status is returned, not raised."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Response(response.status, dict(response.headers), response.read().decode())
        except urllib.error.HTTPError as e:
            return Response(e.code, dict(e.headers), e.read().decode(errors="replace"))

    def token(self, password: str | None = None) -> Response:
        """``POST /auth/token``: the simple auth manager's login for API clients."""
        login = {"username": USER, "password": password or self.password}
        return self.request("/auth/token", body=login)

    @property
    def task_page(self) -> str:
        return f"{self.base}/dags/{DAG}/runs/{quote(self.run_id, safe='')}/tasks/{TASK}"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, _dbt_cache: None) -> Iterator[UiServer]:
    root = tmp_path_factory.mktemp("airflow-ui")
    ws = fresh_workspace(root / "ws")
    airflow = AirflowEnv.create(root / "airflow")
    dag_file = REPO / "dags" / f"{DAG}.py"
    airflow.add_dag(dag_file.name, dag_file.read_text())

    # The run a user of scripts/tutorial.sh has before opening the UI: everything built.
    run = airflow.dags_test(DAG, LOGICAL_DATE, tutorial_env(ws))
    assert run.returncode == 0, f"dags test failed:\n{run.stdout[-6000:]}"
    run_id = airflow.run_id(DAG, LOGICAL_DATE)
    link = airflow.xcom(DAG, TASK, "_link_OrchestraDbtRunPictureLink", logical_date=LOGICAL_DATE)

    # Auth on: one configured user, its password in a file of ours (the simple auth manager
    # generates passwords only for users missing from that file).
    password = secrets.token_urlsafe(12)
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({USER: password}))
    auth = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
    }
    port = free_port()
    log = root / "api-server.log"
    proc = airflow.start(
        ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        log,
        tutorial_env(ws) | auth,
    )
    server = UiServer(f"http://127.0.0.1:{port}", password, run_id, link)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"api-server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            return server.request("/api/v2/version", timeout=10).status == 200
        except OSError:
            return False

    try:
        wait_for(up, STARTUP_TIMEOUT, "the api-server to answer")
        yield server
    finally:
        stop_processes([proc])


def test_without_a_login_nothing_is_served_and_a_token_opens_the_picture(ui: UiServer) -> None:
    assert ui.link.startswith(f"/orchestra-dbt/dags/{DAG}/runs/")
    latest = ui.link.rsplit("/tries/", 1)[0] + "/latest"
    for path in (ui.link, latest, "/orchestra-dbt/reuse"):
        anonymous = ui.request(path)
        assert anonymous.status in (401, 403), f"{path}: {anonymous.status} {anonymous.body}"
        assert "fct_orders" not in anonymous.body
        forged = ui.request(path, token="not-a-token")
        assert forged.status in (401, 403), f"{path}: {forged.status} {forged.body}"

    assert ui.token(password="wrong-" + ui.password).status == 401
    login = ui.token()
    assert login.status == 201, login.body
    token = json.loads(login.body)["access_token"]

    picture = ui.request(ui.link, token=token)
    assert picture.status == 200, picture.body
    assert picture.headers["content-type"].startswith("text/html")
    assert "sandbox" in picture.headers["content-security-policy"]
    for text in PICTURE_TEXTS:
        assert text in picture.body, text
    assert ui.request(latest, token=token).body == picture.body
    reuse = ui.request("/orchestra-dbt/reuse", token=token)
    assert reuse.status == 200 and "<h1>dbt reuse</h1>" in reuse.body
    assert f"{DAG} &middot; {TASK}" in reuse.body and ui.run_id in reuse.body


def test_a_user_logs_in_and_finds_the_picture_and_the_reuse_page(
    ui: UiServer, tmp_path: Path
) -> None:
    from playwright.sync_api import Locator, Page, expect
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    def shot(page: Page, name: str) -> None:
        """A screenshot in the test's temp dir, to see what a failed step saw."""
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)

    def shows_the_picture(page_or_frame: Any) -> None:
        heading = page_or_frame.locator("h1")
        expect(heading).to_contain_text(f"{DAG} · {TASK}")
        expect(heading).to_contain_text("succeeded")
        for text in PICTURE_TEXTS:
            expect(page_or_frame.locator("body")).to_contain_text(text)

    def follow(link: Locator, url: str) -> None:
        """Click ``link`` until the UI has routed to ``url``.

        The UI renders its navigation again once the plugins' views have loaded; a click
        that lands in between is lost (seen on a loaded CI machine), so it is clicked again,
        within the same overall bound.
        """
        for attempt in range(CLICK_TRIES):
            link.click()
            try:
                link.page.wait_for_url(url, timeout=UI_TIMEOUT_MS // CLICK_TRIES)
                return
            except PlaywrightTimeoutError:
                if attempt == CLICK_TRIES - 1:
                    raise

    def walk_through(page: Page) -> None:
        # Not logged in: the UI sends the browser to its login form.
        page.goto(ui.task_page)
        page.wait_for_url("**/auth/login**")
        shot(page, "1-login")
        page.get_by_label("Username").fill(USER)
        page.get_by_label("Password").fill(ui.password)
        page.get_by_role("button", name="Sign in").click()
        # ...and back to the task instance page it asked for.
        page.wait_for_url(lambda url: url.startswith(ui.base + f"/dags/{DAG}/runs/"))
        expect(page.get_by_text(ui.run_id).first).to_be_visible()

        # The tab the plugin adds to every task instance: the latest try's picture.
        follow(page.locator("a[title='dbt run picture']"), "**/plugin/orchestra-dbt-run-picture")
        shows_the_picture(page.frame_locator("iframe[title='dbt run picture']"))
        shot(page, "2-picture-tab")

        # The task's extra link (in the Details tab): this try's picture, in the window.
        page.locator("a[title='Details']").click()
        button = page.locator("a[href^='/orchestra-dbt/']", has_text="dbt run picture")
        expect(button).to_have_attribute("href", ui.link)
        shot(page, "3-details")
        button.click()
        page.wait_for_url(lambda url: url == ui.base + ui.link)
        shows_the_picture(page)
        shot(page, "4-extra-link")

        # The "dbt reuse" entry of the navigation.
        page.goto(ui.base + "/")
        follow(page.get_by_role("link", name="dbt reuse"), "**/plugin/orchestra-dbt-reuse")
        reuse = page.frame_locator("iframe[title='dbt reuse']")
        expect(reuse.locator("h1")).to_have_text("dbt reuse")
        expect(reuse.locator("h2", has_text=f"{DAG} · {TASK}")).to_have_count(1)
        expect(reuse.locator("table").first).to_contain_text(ui.run_id)
        shot(page, "5-reuse")

    # Every wait below is bounded: page actions by the page's default timeout, assertions by
    # expect's (a process-wide setting, put back afterwards).
    expect.set_options(timeout=UI_TIMEOUT_MS)
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            try:
                walk_through(page)
            except Exception:
                with contextlib.suppress(Exception):
                    shot(page, "failed")
                raise
    finally:
        expect.set_options(timeout=None)
