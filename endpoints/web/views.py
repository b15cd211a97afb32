"""Operations endpoints: Prometheus metrics, liveness, readiness and per-cluster checks.

=================================  =========================================================
``GET /metrics``                   Prometheus text format (:mod:`endpoints.web.metrics`); a
                                   bearer token when ``PGWARDEN_METRICS_TOKEN`` is set
``GET /healthz``                   the web process answers (no database, no Redis)
``GET /readyz``                    the control database and Redis answer; 503 naming what
                                   failed
``GET /clusters/<name>/primary``   200 with the primary that takes writes, else 503
``GET /clusters/<name>/replica``   200 with a replica reads may use (``?max_lag_s=N``
                                   overrides the cluster's lag bound), else 503
=================================  =========================================================

``?endpoint=<name>`` turns a cluster check into a check of one endpoint (200 only when it
is that primary, or one of those replicas), for checkers that probe each server.

The cluster checks read the registry on every request (not this process's routing
snapshot), so a failover recorded by any process shows at once, and judge it with
routing's own eligibility rules (:func:`endpoints.web.metrics.registry_view`): a load balancer
or script polling them follows pgwarden's view, as HAProxy follows Patroni's ``/primary``.
They answer GET, HEAD and OPTIONS (HAProxy's ``option httpchk`` sends OPTIONS unless told
otherwise) with the same status. Only ``/metrics`` can require a token: the checks reveal
hosts and ports, so keep them on an internal network.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_safe
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from endpoints.core.errortext import first_line
from endpoints.models import Cluster, Endpoint
from endpoints.web import metrics

# Readiness must answer quickly, whatever Redis does.
READY_REDIS_TIMEOUT_S = 1.0
_CHECK_METHODS = ["GET", "HEAD", "OPTIONS"]
_ERROR_CHARS = 300
_SLUG = re.compile(r"[-a-zA-Z0-9_]+")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


# Metrics


def _token_matches(request: HttpRequest, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time (digests: equal length)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(
        hashlib.sha256(given.strip().encode()).digest(), hashlib.sha256(token.encode()).digest()
    )


@require_safe
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.PGWARDEN_METRICS_TOKEN
    if token and not _token_matches(request, token):
        response = JsonResponse(
            {"error": "this endpoint needs the header Authorization: Bearer <token>"},
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="pgwarden metrics"'
        return response
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)


# Liveness and readiness


@require_http_methods(_CHECK_METHODS)
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving requests: nothing else is checked."""
    return JsonResponse({"alive": True})


def _describe(exc: BaseException) -> str:
    """One line about a failure, without any password (in URLs or configured).

    Beyond :func:`first_line`'s masking, a URL's whole user part goes (a Redis URL may
    carry a token as its user name).
    """
    passwords = [
        str(settings.DATABASES["default"].get("PASSWORD") or ""),
        *(urlsplit(url).password or "" for url in (settings.REDIS_URL, settings.CELERY_BROKER_URL)),
    ]
    line = first_line(exc, *passwords)
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", line)[:_ERROR_CHARS]


def _check_database() -> str:
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # whatever went wrong, the answer is "not ready"
        return f"unreachable: {_describe(exc)}"
    return "ok"


def _check_redis() -> str:
    client: redis.Redis | None = None
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=READY_REDIS_TIMEOUT_S,
            socket_connect_timeout=READY_REDIS_TIMEOUT_S,
        )
        client.ping()
    except Exception as exc:  # whatever went wrong, the answer is "not ready"
        return f"unreachable: {_describe(exc)}"
    finally:
        if client is not None:
            client.close()
    return "ok"


@require_http_methods(_CHECK_METHODS)
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the control database and Redis both answer; 503 says which did not."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    ready = all(result == "ok" for result in checks.values())
    return JsonResponse({"ready": ready, "checks": checks}, status=200 if ready else 503)


# Per-cluster checks


def _unavailable(data: dict[str, Any]) -> JsonResponse:
    """A 503 that is an answer, not a server error.

    Load balancers poll these checks every few seconds; Django would log each 503 at
    ERROR level (``django.request``). The state behind it has its own alerts and metrics.
    """
    response = JsonResponse(data, status=503)
    response._has_been_logged = True  # type: ignore[attr-defined]  # Django's own flag
    return response


def _cluster(name: str) -> Cluster | None:
    # Only a slug can name a cluster: anything else (a NUL byte included) is not looked up.
    if not _SLUG.fullmatch(name):
        return None
    return Cluster.objects.filter(name=name).first()


def _unknown_cluster(name: str) -> JsonResponse:
    return JsonResponse({"cluster": name, "error": f"no cluster named {name!r}"}, status=404)


def _endpoint_data(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "endpoint": endpoint.name,
        "host": endpoint.host,
        "port": endpoint.port,
        "state": endpoint.state,
        "health_score": endpoint.health_score,
        "last_checked_at": _iso(endpoint.last_checked_at),
    }


def _replica_data(endpoint: Endpoint) -> dict[str, Any]:
    return {
        **_endpoint_data(endpoint),
        "lag_s": endpoint.replication_lag_s,
        "lag_bytes": endpoint.replication_lag_bytes,
    }


class BadParameter(ValueError):
    def __init__(self, parameter: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.status = status


def _bad_parameter(exc: BadParameter) -> JsonResponse:
    return JsonResponse({"error": str(exc), "parameter": exc.parameter}, status=exc.status)


def _max_lag(request: HttpRequest) -> float | None:
    raw = request.GET.get("max_lag_s")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise BadParameter(
            "max_lag_s",
            f"max_lag_s must be a number of seconds, 0 or more (e.g. max_lag_s=5), not {raw!r}",
        )
    return value


def _only(request: HttpRequest, cluster: Cluster, endpoints: list[Endpoint]) -> str | None:
    """``?endpoint=<name>``: the check is about that endpoint alone (a per-server check)."""
    name = request.GET.get("endpoint")
    if name is not None and name not in {endpoint.name for endpoint in endpoints}:
        raise BadParameter(
            "endpoint", f"cluster {cluster.name!r} has no endpoint {name!r}", status=404
        )
    return name


@require_http_methods(_CHECK_METHODS)
@never_cache
def cluster_primary(request: HttpRequest, name: str) -> JsonResponse:
    """200 with the primary writes go to; 503 with the reason when none takes writes.

    With ``?endpoint=<name>``, 200 only when that endpoint is that primary.
    """
    cluster = _cluster(name)
    if cluster is None:
        return _unknown_cluster(name)
    endpoints = list(cluster.endpoints.all())
    try:
        only = _only(request, cluster, endpoints)
    except BadParameter as exc:
        return _bad_parameter(exc)
    view = metrics.registry_view(cluster, endpoints)
    primary = view.primary
    if primary is not None and only in (None, primary.name):
        return JsonResponse({"cluster": cluster.name, "role": "primary", **_endpoint_data(primary)})
    reasons = view.primary_reasons
    if only is not None:
        reasons = {only: reasons.get(only) or "not the primary"}
        error = f"{only} does not take writes"
    else:
        error = "no primary takes writes" if reasons else "the cluster has no primary"
    return _unavailable(
        {
            "cluster": cluster.name,
            "error": error,
            "reasons": reasons,
            "primary": primary.name if primary is not None else None,
        }
    )


@require_http_methods(_CHECK_METHODS)
@never_cache
def cluster_replica(request: HttpRequest, name: str) -> JsonResponse:
    """200 with the best replica reads may use, and every candidate; else 503.

    With ``?endpoint=<name>``, 200 only when that endpoint is one of the candidates.
    """
    try:
        max_lag_s = _max_lag(request)
    except BadParameter as exc:
        return _bad_parameter(exc)
    cluster = _cluster(name)
    if cluster is None:
        return _unknown_cluster(name)
    endpoints = list(cluster.endpoints.all())
    try:
        only = _only(request, cluster, endpoints)
    except BadParameter as exc:
        return _bad_parameter(exc)
    view = metrics.registry_view(cluster, endpoints, max_lag_s=max_lag_s)
    chosen = [r for r in view.replicas if only in (None, r.name)]
    if chosen:
        return JsonResponse(
            {
                "cluster": cluster.name,
                "role": "replica",
                **_replica_data(chosen[0]),
                "max_lag_s": view.max_lag_s,
                "candidates": [_replica_data(replica) for replica in view.replicas],
            }
        )
    reasons = view.replica_reasons
    if only is not None:
        reasons = {only: reasons.get(only) or "not a replica"}
        error = f"{only} is not eligible for reads"
    else:
        error = "no replica is eligible for reads" if reasons else "the cluster has no replica"
    return _unavailable(
        {
            "cluster": cluster.name,
            "error": error,
            "max_lag_s": view.max_lag_s,
            "reasons": reasons,
            "candidates": [_replica_data(replica) for replica in view.replicas],
        }
    )
