"""The fleet dashboard in a real headless browser (Debian's chromium through Selenium).

Against a live server (a thread of this process) and the real local cluster: log in
through the admin's login form, see the three endpoints, then stop a replica, sweep,
and watch its tile turn down without the page being reloaded. Screenshots are kept in
var/test-artifacts/. ``make test`` installs chromium and chromium-driver.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from endpoints import control
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster, Endpoint, State
from endpoints.web import dashboard
from tests.helpers import ROOT

# A real browser (chromium) against the live server and the session cluster.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.servers]

ARTIFACTS = ROOT / "var" / "test-artifacts"
PASSWORD = "pw-for-the-browser"
# The page refreshes every REFRESH_S; a busy 2-core machine gets some slack on top.
REFRESH_WAIT_S = dashboard.REFRESH_S * 3 + 5


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail(
            "chromium and chromedriver are needed: `make test` installs them "
            "(apt-get install chromium chromium-driver)"
        )
    # Both paths are given, so Selenium Manager never looks for (or downloads) a driver.
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    profile = tempfile.mkdtemp(prefix="pgwarden-test-chromium-")
    options = Options()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# The page swaps in fresh HTML every few seconds, so an element found by one WebDriver call
# may be gone (stale) by the next: each read below is one script, atomic in the page.


def tile_states(browser: webdriver.Chrome, cluster: Cluster) -> dict[str, str]:
    states: dict[str, str] = browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll(arguments[0]),"
        " (tile) => [tile.dataset.endpoint || '', tile.dataset.state || '']));",
        f"#pgw-cluster-{cluster.pk} .pgw-tile",
    )
    return states


def text_of(browser: webdriver.Chrome, selector: str) -> str:
    """The rendered text of the first element ``selector`` matches ('' if none)."""
    text: str = browser.execute_script(
        "const element = document.querySelector(arguments[0]);"
        " return element ? element.innerText : '';",
        selector,
    )
    return text


def screenshot(browser: webdriver.Chrome, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert browser.save_screenshot(str(path)), path
    assert path.stat().st_size > 10_000  # a rendered page, not a blank image


def test_dashboard_shows_a_stopped_replica_go_down_without_a_reload(
    live_server: Any,
    browser: webdriver.Chrome,
    pg_cluster: LocalPostgresCluster,
    local_cluster: Cluster,
) -> None:
    # One failed probe marks an endpoint down; nothing here may promote anything.
    Cluster.objects.filter(pk=local_cluster.pk).update(failure_threshold=1, auto_failover=False)
    local_cluster.refresh_from_db()
    control.sweep(local_cluster)
    get_user_model().objects.create_superuser("operator", "op@example.com", PASSWORD)

    # The admin's own login form, then on to the dashboard.
    browser.get(f"{live_server.url}/admin/login/?next=/admin/fleet/")
    browser.find_element(By.ID, "id_username").send_keys("operator")
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait = WebDriverWait(browser, REFRESH_WAIT_S)
    wait.until(lambda b: b.current_url == f"{live_server.url}/admin/fleet/")
    assert browser.title.startswith("Fleet dashboard")
    assert tile_states(browser, local_cluster) == {
        "primary": State.HEALTHY,
        "replica1": State.HEALTHY,
        "replica2": State.HEALTHY,
    }
    topology = text_of(browser, f"#pgw-cluster-{local_cluster.pk} .pgw-tree")
    assert "replica2 replicates from primary" in topology
    sparklines = browser.execute_script(
        "return document.querySelectorAll('.pgw-tile svg.pgw-chart').length;"
    )
    assert sparklines == 6  # latency and lag per endpoint
    # The script runs and refreshes in place.
    wait.until(
        lambda b: b.execute_script("return window.pgwFleet && window.pgwFleet.refreshes") >= 1
    )
    screenshot(browser, "dashboard.png")

    # Anything set on this window survives only if the page is never reloaded.
    browser.execute_script("window.pgwNotReloaded = 'still the same page'")
    pg_cluster.stop_node("replica2")
    try:
        observed = {o.endpoint.name: o for o in control.sweep(local_cluster)}
        assert not observed["replica2"].result.ok
        assert Endpoint.objects.get(cluster=local_cluster, name="replica2").state == State.DOWN

        wait.until(lambda b: tile_states(b, local_cluster).get("replica2") == State.DOWN)
        assert tile_states(browser, local_cluster) == {
            "primary": State.HEALTHY,
            "replica1": State.HEALTHY,
            "replica2": State.DOWN,
        }
        assert browser.execute_script("return window.pgwNotReloaded") == "still the same page"
        assert "down" in text_of(browser, '.pgw-tile[data-endpoint="replica2"]')
        assert browser.execute_script("return window.pgwFleet.failures") == 0
        screenshot(browser, "dashboard-replica-down.png")
    finally:
        # The cluster is shared by the whole session: bring the replica back, streaming.
        pg_cluster.start_node("replica2")
        pg_cluster.wait_for_replay(timeout_s=30)
