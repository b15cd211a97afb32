"""Alerts: raised once when a condition starts, cleared when it ends, kept as history.

A *condition* (primary down, replica lag over bound, ...) is identified by a
key per cluster; at most one alert per key is active (a database constraint),
so a condition that persists over many sweeps fires once, not on every sweep.
An *event* (a failover started, succeeded, failed or was aborted) is recorded
already cleared: it happened, there is nothing to clear.

After each sweep, :func:`evaluate` derives the conditions that hold now
(:func:`conditions`, a pure function of the sweep's observations), raises those
not yet active and clears those that ended. Its keys:

====================== ========= ===========================================================
key                    severity  holds while
====================== ========= ===========================================================
``low_availability``   warning   fewer than ``alert_min_available_pct`` % of the enabled
                       critical  endpoints answer and may take traffic (none: critical)
``slow_response``      warning   the answering endpoints' average probe latency is over
                                 ``alert_max_response_ms``
``low_health``         warning   the enabled endpoints' average health score (0 for one that
                                 does not answer) is under ``alert_min_health_score``
``primary_down``       critical  the registered primary failed ``failure_threshold``
                                 consecutive probes
``replica_lag:<id>``   warning   a replica's replay lag is over ``max_replica_lag_s``
``role_mismatch:<id>`` critical  a registered replica is not in recovery, or a registered
                                 primary is (fenced endpoints: see split brain)
``split_brain:<id>``   critical  a fenced endpoint answers as a writable primary
====================== ========= ===========================================================

Delivery (:func:`deliver`), for raised, cleared and event alerts alike: always
the ``pgwarden.alerts`` logger; Django's ``mail_admins`` when ``ADMINS`` is set
(``PGWARDEN_ALERT_EMAILS``); a JSON POST to ``PGWARDEN_ALERT_WEBHOOK_URL`` when
set (a redirect is logged, never followed). Mail and webhook each go out on a
background thread, in the order the alerts were raised and cleared, with short
timeouts: a slow mail server or webhook never holds up a sweep, and their failures
are logged.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import fmean
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import mail_admins
from django.db import IntegrityError, transaction
from django.utils import timezone

from endpoints.models import Alert, Cluster, Endpoint, Role

if TYPE_CHECKING:
    from endpoints.health import Observation

logger = logging.getLogger("pgwarden.alerts")

_LOG_LEVELS: dict[str, int] = {
    Alert.Severity.INFO: logging.INFO,
    Alert.Severity.WARNING: logging.WARNING,
    Alert.Severity.CRITICAL: logging.CRITICAL,
}

EVENT_KEY_PREFIX = "event:"
# Keys evaluate() owns: it clears them when their condition ends. Other alerts (raised by
# failover, for instance) are left for their owners to clear.
CLUSTER_CONDITION_KEYS = frozenset({"low_availability", "slow_response", "low_health"})
PRIMARY_DOWN_KEY = "primary_down"
ENDPOINT_CONDITION_PREFIXES = ("replica_lag:", "role_mismatch:", "split_brain:")

WEBHOOK_TIMEOUT_S = 2.0
# What urllib would follow; the webhook follows none of them.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# At exit, how long queued deliveries may still take to go out.
DRAIN_AT_EXIT_S = 5.0
# Endpoint names listed in a cluster-wide alert's message.
MESSAGE_NAMES = 10


@dataclass(frozen=True)
class Condition:
    """Something wrong now, as one sweep saw it; ``key`` names it across sweeps."""

    key: str
    kind: str
    severity: str
    message: str
    endpoint: Endpoint | None = None


@dataclass(frozen=True)
class Evaluation:
    raised: list[Alert]
    cleared: list[Alert]


def raise_alert(
    cluster: Cluster,
    kind: str,
    key: str,
    severity: str,
    message: str,
    *,
    endpoint: Endpoint | None = None,
) -> Alert | None:
    """Record and deliver an alert for condition ``key``; None if it is already active."""
    if Alert.objects.filter(cluster=cluster, key=key, cleared_at__isnull=True).exists():
        return None
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                cluster=cluster,
                endpoint=endpoint,
                kind=kind,
                key=key,
                severity=severity,
                message=message,
                raised_at=timezone.now(),
            )
    except IntegrityError:
        return None  # another worker raised it a moment ago
    deliver(alert)
    return alert


def clear_alert(cluster: Cluster, key: str) -> Alert | None:
    """End condition ``key``: its active alert is cleared and the clearing delivered."""
    alert = Alert.objects.filter(cluster=cluster, key=key, cleared_at__isnull=True).first()
    if alert is None:
        return None
    alert.cleared_at = timezone.now()
    alert.save(update_fields=["cleared_at"])
    deliver(alert, cleared=True)
    return alert


def notify_event(
    cluster: Cluster,
    kind: str,
    severity: str,
    message: str,
    *,
    endpoint: Endpoint | None = None,
) -> Alert:
    """Record and deliver something that happened (no condition to clear later)."""
    now = timezone.now()
    alert = Alert.objects.create(
        cluster=cluster,
        endpoint=endpoint,
        kind=kind,
        key=f"{EVENT_KEY_PREFIX}{kind}:{now.isoformat()}",
        severity=severity,
        message=message,
        raised_at=now,
        cleared_at=now,
    )
    deliver(alert)
    return alert


# Evaluation


def evaluate(cluster: Cluster, observations: list[Observation]) -> Evaluation:
    """Raise the conditions that started with this sweep, clear those that ended."""
    holding = {condition.key: condition for condition in conditions(cluster, observations)}
    active = set(
        Alert.objects.filter(cluster=cluster, cleared_at__isnull=True).values_list("key", flat=True)
    )
    evaluation = Evaluation(raised=[], cleared=[])
    for key, condition in holding.items():
        if key in active:
            continue  # raised by an earlier sweep: no storm
        alert = raise_alert(
            cluster,
            condition.kind,
            key,
            condition.severity,
            condition.message,
            endpoint=condition.endpoint,
        )
        if alert is not None:
            evaluation.raised.append(alert)
    for key in sorted(active - holding.keys()):
        if is_evaluated_key(key):
            alert = clear_alert(cluster, key)
            if alert is not None:
                evaluation.cleared.append(alert)
    return evaluation


def is_evaluated_key(key: str) -> bool:
    """Whether :func:`evaluate` owns alerts with this key (and so clears them)."""
    return (
        key in CLUSTER_CONDITION_KEYS
        or key == PRIMARY_DOWN_KEY
        or key.startswith(ENDPOINT_CONDITION_PREFIXES)
    )


def conditions(cluster: Cluster, observations: Iterable[Observation]) -> list[Condition]:
    """Every alert condition that holds in one sweep's observations; reads no database."""
    observations = list(observations)
    if not observations:
        return []
    found = _cluster_conditions(cluster, observations)
    for o in observations:
        found.extend(_endpoint_conditions(cluster, o))
    return found


def _cluster_conditions(cluster: Cluster, observations: list[Observation]) -> list[Condition]:
    found: list[Condition] = []
    enabled = len(observations)
    available = [o for o in observations if o.available]
    if len(available) * 100 < cluster.alert_min_available_pct * enabled:
        missing = _some(o.endpoint.name for o in observations if not o.available)
        found.append(
            Condition(
                "low_availability",
                Alert.Kind.LOW_AVAILABILITY,
                Alert.Severity.CRITICAL if not available else Alert.Severity.WARNING,
                f"{len(available)} of {enabled} enabled endpoints available "
                f"({100 * len(available) / enabled:.0f}%, under the "
                f"{cluster.alert_min_available_pct}% minimum); not available: {missing}",
            )
        )
    latencies = [o.result.latency_ms for o in observations if o.result.latency_ms is not None]
    if latencies and fmean(latencies) > cluster.alert_max_response_ms:
        found.append(
            Condition(
                "slow_response",
                Alert.Kind.SLOW_RESPONSE,
                Alert.Severity.WARNING,
                f"average probe response {fmean(latencies):.0f} ms over the "
                f"{cluster.alert_max_response_ms:g} ms maximum",
            )
        )
    average_score = fmean(o.score for o in observations)
    if average_score < cluster.alert_min_health_score:
        found.append(
            Condition(
                "low_health",
                Alert.Kind.LOW_HEALTH,
                Alert.Severity.WARNING,
                f"average health score {average_score:.0f} under the minimum "
                f"{cluster.alert_min_health_score} (lowest: "
                + _some(
                    f"{o.endpoint.name} {o.score}"
                    for o in sorted(observations, key=lambda o: (o.score, o.endpoint.name))
                )
                + ")",
            )
        )
    return found


def _some(names: Iterable[str]) -> str:
    """The first few names, and how many more: a message must stay readable at 500."""
    names = list(names)
    shown = ", ".join(names[:MESSAGE_NAMES])
    return f"{shown} and {len(names) - MESSAGE_NAMES} more" if len(names) > MESSAGE_NAMES else shown


def _endpoint_conditions(cluster: Cluster, o: Observation) -> list[Condition]:
    endpoint, result = o.endpoint, o.result
    found: list[Condition] = []
    if endpoint.role == Role.PRIMARY and o.consecutive_failures >= cluster.failure_threshold:
        next_step = (
            "automatic failover is starting"
            if cluster.auto_failover
            else f"automatic failover is off: run `manage.py failover {cluster.name}`"
        )
        found.append(
            Condition(
                PRIMARY_DOWN_KEY,
                Alert.Kind.PRIMARY_DOWN,
                Alert.Severity.CRITICAL,
                f"primary {endpoint.name} failed {o.consecutive_failures} consecutive probes "
                f"({result.error}); {next_step}",
                endpoint,
            )
        )
    if o.writable_while_fenced:
        refusal = (
            "pgwarden makes it refuse writes"
            if cluster.fence_writes
            else "make it refuse writes or stop it"
        )
        found.append(
            Condition(
                f"split_brain:{endpoint.pk}",
                Alert.Kind.SPLIT_BRAIN,
                Alert.Severity.CRITICAL,
                f"{endpoint.name} is fenced but answers as a writable primary: two primaries "
                f"(split brain). It gets no traffic; {refusal}, then rebuild it as a replica.",
                endpoint,
            )
        )
    elif o.role_mismatch and result.ok and o.state != "fenced":
        if endpoint.role == Role.PRIMARY:
            problem = "registered as primary but in recovery: writes have nowhere to go"
        else:
            problem = "registered as a replica but not in recovery: it takes no reads"
        found.append(
            Condition(
                f"role_mismatch:{endpoint.pk}",
                Alert.Kind.ROLE_MISMATCH,
                Alert.Severity.CRITICAL,
                f"{endpoint.name} is {problem}; fix the registry (or the server) to agree",
                endpoint,
            )
        )
    lag_s = result.replay_lag_s
    bound = cluster.max_replica_lag_s
    if (
        endpoint.role == Role.REPLICA
        and o.available
        and lag_s is not None
        and bound is not None
        and lag_s > bound
    ):
        found.append(
            Condition(
                f"replica_lag:{endpoint.pk}",
                Alert.Kind.REPLICA_LAG,
                Alert.Severity.WARNING,
                f"replica {endpoint.name} lags {lag_s:.1f} s behind the primary, over the "
                f"{bound:g} s bound: not read from until it catches up",
                endpoint,
            )
        )
    return found


# Delivery


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
