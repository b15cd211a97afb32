"""Alert delivery: the log, and email and webhook on background threads, in order.

:func:`deliver` sends raised, cleared and event alerts alike: always to the
``pgwarden.alerts`` logger; through Django's ``mail_admins`` when ``ADMINS`` is set
(``PGWARDEN_ALERT_EMAILS``); as a JSON POST to ``PGWARDEN_ALERT_WEBHOOK_URL`` when
set (a redirect is logged, never followed). Mail and webhook each go out on one
background thread per channel, in the order the alerts were raised and cleared, with
short timeouts: a slow mail server or webhook never holds up a sweep, and their
failures are logged. :func:`deliver` never raises.
"""

from __future__ import annotations

import atexit
import http.client
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import mail_admins

from endpoints.alerts.conditions import EVENT_KEY_PREFIX
from endpoints.core.vocabulary import AlertSeverity
from endpoints.models import Alert

logger = logging.getLogger("pgwarden.alerts")

_LOG_LEVELS: dict[str, int] = {
    AlertSeverity.INFO: logging.INFO,
    AlertSeverity.WARNING: logging.WARNING,
    AlertSeverity.CRITICAL: logging.CRITICAL,
}

WEBHOOK_TIMEOUT_S = 2.0
# What urllib would follow; the webhook follows none of them.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# At exit, how long queued deliveries may still take to go out.
DRAIN_AT_EXIT_S = 5.0


def deliver(alert: Alert, *, cleared: bool = False) -> None:
    """Send ``alert`` everywhere alerts go. Never raises: a sweep must not fail on it."""
    try:
        payload = alert_payload(alert, cleared=cleared)
        logger.log(
            logging.INFO if cleared else _LOG_LEVELS.get(alert.severity, logging.WARNING),
            "%s [%s] %s: %s",
            "cleared" if cleared else alert.severity.upper(),
            payload["cluster"],
            alert.kind,
            alert.message,
        )
        email = bool(settings.ADMINS)
        webhook_url: str | None = getattr(settings, "PGWARDEN_ALERT_WEBHOOK_URL", None)
        if email or webhook_url:
            _start_delivery(payload, email=email, webhook_url=webhook_url)
    except Exception:
        logger.exception("delivering alert %s failed", alert.pk)


def alert_payload(alert: Alert, *, cleared: bool = False) -> dict[str, Any]:
    """The JSON document the webhook receives (and the facts the email states)."""
    if cleared:
        status = "cleared"
    elif alert.key.startswith(EVENT_KEY_PREFIX):
        status = "event"
    else:
        status = "raised"
    return {
        "id": alert.pk,
        "status": status,
        "cluster": alert.cluster.name,
        "endpoint": alert.endpoint.name if alert.endpoint is not None else None,
        "kind": alert.kind,
        "key": alert.key,
        "severity": alert.severity,
        "message": alert.message,
        "raised_at": alert.raised_at.isoformat(),
        "cleared_at": alert.cleared_at.isoformat() if alert.cleared_at else None,
    }


class _Channel:
    """One delivery channel: a queue and the one thread that empties it, in order.

    One thread per channel keeps deliveries in the order alerts were raised and
    cleared (a receiver must never see "cleared" before "raised"), and a slow mail
    server from holding up the webhook. The thread is a daemon started on first use;
    at exit, queued deliveries get :data:`DRAIN_AT_EXIT_S` to go out.
    """

    def __init__(self, name: str, send: Callable[..., None]) -> None:
        self.name = name
        self.send = send
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def put(self, *args: Any) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._queue.put(args)

    def _run(self) -> None:
        while True:
            args = self._queue.get()
            try:
                self.send(*args)
            except Exception:
                logger.exception("%s failed", self.name)
            finally:
                self._queue.task_done()

    def wait(self, deadline: float) -> bool:
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def forget_after_fork(self) -> None:
        # The parent's thread does not exist in the child, and its locks may be held.
        self._lock = threading.Lock()
        self._queue = queue.Queue()
        self._thread = None


def _start_delivery(payload: dict[str, Any], *, email: bool, webhook_url: str | None) -> None:
    if email:
        _email_channel.put(payload)
    if webhook_url:
        _webhook_channel.put(webhook_url, payload)


def _send_email(payload: dict[str, Any]) -> None:
    subject = f"{payload['status']} {payload['severity']} [{payload['cluster']}] {payload['kind']}"
    body = "\n".join(
        [
            payload["message"],
            "",
            *(f"{name}: {payload[name]}" for name in ("cluster", "endpoint", "key", "raised_at")),
            *([f"cleared_at: {payload['cleared_at']}"] if payload["cleared_at"] else []),
        ]
    )
    try:
        mail_admins(subject, body, fail_silently=False)
    except Exception as exc:
        logger.error("alert email %r could not be sent: %s", subject, exc)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib then raises HTTPError with the 3xx status.

    Followed, a 301/302/303 would turn the POST into a bodiless GET (the alert lost, yet
    "delivered"), and any redirect could carry the alert to a host nobody configured.
    """

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_webhook_opener = urllib.request.build_opener(_RefuseRedirects)


def _post_webhook(url: str, payload: dict[str, Any]) -> None:
    """POST ``payload`` as JSON to ``url``; failures, redirects included, are logged."""
    request = urllib.request.Request(  # noqa: S310 - http(s) only, checked by project.env
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "pgwarden-alerts"},
        method="POST",
    )
    # Its path and query often carry a token: logs name the host only.
    where = urlsplit(url).netloc.rsplit("@", 1)[-1]
    try:
        with _webhook_opener.open(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        redirect = (
            " (a redirect, not followed: set PGWARDEN_ALERT_WEBHOOK_URL to the final address)"
            if exc.code in REDIRECT_STATUSES
            else ""
        )
        logger.error(
            "alert webhook at %s answered HTTP %s%s to alert %s",
            where,
            exc.code,
            redirect,
            payload["id"],
        )
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        logger.error("alert webhook at %s failed for alert %s: %s", where, payload["id"], reason)


def wait_for_deliveries(timeout_s: float = 10.0) -> bool:
    """Wait until queued emails and webhooks went out; False if some are still pending."""
    deadline = time.monotonic() + timeout_s
    return all([channel.wait(deadline) for channel in _CHANNELS])


_email_channel = _Channel("pgwarden-alert-email", _send_email)
_webhook_channel = _Channel("pgwarden-alert-webhook", _post_webhook)
_CHANNELS = (_email_channel, _webhook_channel)


def _forget_channels_after_fork() -> None:
    for channel in _CHANNELS:
        channel.forget_after_fork()


os.register_at_fork(after_in_child=_forget_channels_after_fork)
# A management command that raised an alert and exits lets it go out first.
atexit.register(wait_for_deliveries, DRAIN_AT_EXIT_S)
