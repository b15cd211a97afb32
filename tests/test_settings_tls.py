"""PGWARDEN_HTTPS: the real project.settings, read by ``manage.py`` in a child process.

Each environment (HTTPS on, HTTPS unset) gets one ``manage.py shell -c`` child with a
controlled environment (see :func:`tests.test_env.manage_env`), which prints the settings
and the responses to two requests; so what the tests check is what an operator's process
gets, not settings overridden inside the test process. One child per environment rather
than per test: each start-up costs a second or more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import run_manage
from tests.test_env import manage_env

# Each setting is read from a manage.py child started with the environment under test.
pytestmark = pytest.mark.processes

ONE_YEAR_S = 31_536_000
LABELS = ("SETTINGS", "RESPONSES")

# The settings an operator's process ends up with.
PRINT_SETTINGS = """
import json
from django.conf import settings
print("SETTINGS", json.dumps({
    "PGWARDEN_HTTPS": settings.PGWARDEN_HTTPS,
    "SESSION_COOKIE_SECURE": settings.SESSION_COOKIE_SECURE,
    "CSRF_COOKIE_SECURE": settings.CSRF_COOKIE_SECURE,
    "SECURE_HSTS_SECONDS": settings.SECURE_HSTS_SECONDS,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": settings.SECURE_HSTS_INCLUDE_SUBDOMAINS,
    "SECURE_HSTS_PRELOAD": settings.SECURE_HSTS_PRELOAD,
    "SECURE_PROXY_SSL_HEADER": settings.SECURE_PROXY_SSL_HEADER,
    "SECURE_SSL_REDIRECT": settings.SECURE_SSL_REDIRECT,
}))
"""

# GET /admin/login/ as the proxy forwards it (X-Forwarded-Proto: https) and as a plain-HTTP
# health poller or client sends it (no header).
PRINT_RESPONSES = """
import json
from django.test import Client
seen = {}
for name, headers in (("forwarded", {"HTTP_X_FORWARDED_PROTO": "https"}), ("plain", {})):
    response = Client().get("/admin/login/", **headers)
    cookie = response.cookies.get("csrftoken")
    seen[name] = {
        "status": response.status_code,
        "hsts": response.headers.get("Strict-Transport-Security"),
        "csrf_cookie_secure": bool(cookie["secure"]) if cookie is not None else None,
    }
print("RESPONSES", json.dumps(seen))
"""


def run_shell(tmp_path: Path, script: str, **overrides: str | None) -> dict[str, Any]:
    """Run ``script`` in ``manage.py shell -c``; each ``LABEL {json}`` line it printed."""
    result = run_manage(
        "shell", "-c", script, env=manage_env(tmp_path, ALLOWED_HOSTS="testserver", **overrides)
    )
    assert result.returncode == 0, result.stderr
    labelled = (line.partition(" ") for line in result.stdout.splitlines())
    return {label: json.loads(value) for label, _, value in labelled if label in LABELS}


@pytest.fixture(scope="module")
def with_https(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a process with ``PGWARDEN_HTTPS=true`` prints: SETTINGS and RESPONSES."""
    tmp_path = tmp_path_factory.mktemp("https")
    return run_shell(tmp_path, PRINT_SETTINGS + PRINT_RESPONSES, PGWARDEN_HTTPS="true")


@pytest.fixture(scope="module")
def without_https(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a process without ``PGWARDEN_HTTPS`` prints: SETTINGS and RESPONSES."""
    tmp_path = tmp_path_factory.mktemp("no-https")
    return run_shell(tmp_path, PRINT_SETTINGS + PRINT_RESPONSES, PGWARDEN_HTTPS=None)


def test_https_true_makes_cookies_secure_sends_hsts_and_trusts_the_proxy(
    with_https: dict[str, Any],
) -> None:
    seen = with_https["SETTINGS"]

    assert seen == {
        "PGWARDEN_HTTPS": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": ONE_YEAR_S,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        # Load balancers poll /healthz and /clusters/... over plain HTTP.
        "SECURE_SSL_REDIRECT": False,
    }


def test_without_https_django_s_defaults_stand(without_https: dict[str, Any]) -> None:
    seen = without_https["SETTINGS"]

    assert seen == {
        "PGWARDEN_HTTPS": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "SECURE_PROXY_SSL_HEADER": None,
        "SECURE_SSL_REDIRECT": False,
    }


def test_https_true_sends_hsts_on_forwarded_https_requests_only(
    with_https: dict[str, Any],
) -> None:
    seen = with_https["RESPONSES"]

    assert seen["forwarded"] == {
        "status": 200,
        "hsts": f"max-age={ONE_YEAR_S}",
        "csrf_cookie_secure": True,
    }
    # Plain HTTP is answered, not redirected, and gets no HSTS (browsers ignore it there).
    assert seen["plain"]["status"] == 200
    assert seen["plain"]["hsts"] is None
    assert seen["plain"]["csrf_cookie_secure"] is True


def test_without_https_the_forwarded_header_is_not_trusted(
    without_https: dict[str, Any],
) -> None:
    seen = without_https["RESPONSES"]

    for name in ("forwarded", "plain"):
        assert seen[name] == {"status": 200, "hsts": None, "csrf_cookie_secure": False}, name
