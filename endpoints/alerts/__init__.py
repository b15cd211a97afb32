"""Alerts: raised once when a condition starts, cleared when it ends, kept as history.

A *condition* (primary down, replica lag over bound, ...) is identified by a
key per cluster; at most one alert per key is active (a database constraint),
so a condition that persists over many sweeps fires once, not on every sweep.
An *event* (a failover started, succeeded, failed or was aborted) is recorded
already cleared: it happened, there is nothing to clear.

After each sweep, :func:`evaluate` (:mod:`~endpoints.alerts.store`) derives the
conditions that hold now (:func:`conditions`, a pure function of the sweep's
observations, in :mod:`~endpoints.alerts.conditions`), raises those
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

Delivery (:func:`deliver`, :mod:`~endpoints.alerts.delivery`), for raised, cleared
and event alerts alike: always the ``pgwarden.alerts`` logger; Django's
``mail_admins`` when ``ADMINS`` is set (``PGWARDEN_ALERT_EMAILS``); a JSON POST to
``PGWARDEN_ALERT_WEBHOOK_URL`` when set (a redirect is logged, never followed).
Mail and webhook each go out on a background thread, in the order the alerts were
raised and cleared, with short timeouts: a slow mail server or webhook never holds
up a sweep, and their failures are logged.

This package imports neither health nor failover: the observations it evaluates are
plain values (:class:`endpoints.core.observations.Observation`).
"""

from endpoints.alerts.conditions import (
    CLUSTER_CONDITION_KEYS,
    ENDPOINT_CONDITION_PREFIXES,
    EVENT_KEY_PREFIX,
    MESSAGE_NAMES,
    PRIMARY_DOWN_KEY,
    Condition,
    conditions,
    is_evaluated_key,
)
from endpoints.alerts.delivery import (
    DRAIN_AT_EXIT_S,
    REDIRECT_STATUSES,
    WEBHOOK_TIMEOUT_S,
    alert_payload,
    deliver,
    wait_for_deliveries,
)
from endpoints.alerts.store import Evaluation, clear_alert, evaluate, notify_event, raise_alert

__all__ = [
    "CLUSTER_CONDITION_KEYS",
    "DRAIN_AT_EXIT_S",
    "ENDPOINT_CONDITION_PREFIXES",
    "EVENT_KEY_PREFIX",
    "MESSAGE_NAMES",
    "PRIMARY_DOWN_KEY",
    "REDIRECT_STATUSES",
    "WEBHOOK_TIMEOUT_S",
    "Condition",
    "Evaluation",
    "alert_payload",
    "clear_alert",
    "conditions",
    "deliver",
    "evaluate",
    "is_evaluated_key",
    "notify_event",
    "raise_alert",
    "wait_for_deliveries",
]
