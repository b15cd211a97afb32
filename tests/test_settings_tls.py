"""PGWARDEN_HTTPS: the real project.settings, read by ``manage.py`` in a child process.

Each test runs ``manage.py shell -c`` with a controlled environment (see
:func:`tests.test_env.manage_env`), so what it checks is what an operator's
process gets, not settings overridden inside the test process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import run_manage
from tests.test_env import manage_env

ONE_YEAR_S = 31_536_000

PRINT_SETTINGS = """
import json
from django.conf import settings
print(json.dumps({
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
print(json.dumps(seen))
"""


def run_shell(tmp_path: Path, script: str, **overrides: str | None) -> Any:
    """Run ``script`` in ``manage.py shell -c`` and return the JSON it printed."""
    result = run_manage(
        "shell", "-c", script, env=manage_env(tmp_path, ALLOWED_HOSTS="testserver", **overrides)
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_https_true_makes_cookies_secure_sends_hsts_and_trusts_the_proxy(tmp_path: Path) -> None:
    seen = run_shell(tmp_path, PRINT_SETTINGS, PGWARDEN_HTTPS="true")

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


def test_without_https_django_s_defaults_stand(tmp_path: Path) -> None:
    seen = run_shell(tmp_path, PRINT_SETTINGS, PGWARDEN_HTTPS=None)

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


def test_https_true_sends_hsts_on_forwarded_https_requests_only(tmp_path: Path) -> None:
    seen = run_shell(tmp_path, PRINT_RESPONSES, PGWARDEN_HTTPS="true")

    assert seen["forwarded"] == {
        "status": 200,
        "hsts": f"max-age={ONE_YEAR_S}",
        "csrf_cookie_secure": True,
    }
    # Plain HTTP is answered, not redirected, and gets no HSTS (browsers ignore it there).
    assert seen["plain"]["status"] == 200
    assert seen["plain"]["hsts"] is None
    assert seen["plain"]["csrf_cookie_secure"] is True


def test_without_https_the_forwarded_header_is_not_trusted(tmp_path: Path) -> None:
    seen = run_shell(tmp_path, PRINT_RESPONSES, PGWARDEN_HTTPS=None)

    for name in ("forwarded", "plain"):
        assert seen[name] == {"status": 200, "hsts": None, "csrf_cookie_secure": False}, name
