"""The registry: clusters, endpoints, their health history and failover audit trail.

Validation lives here (field validators, ``clean``) so the admin, management
commands and services share it; the one-enabled-primary rule is also a
database constraint, so nothing that bypasses forms can break it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from endpoints.core import crypto
from endpoints.core.conninfo import ConnectionInfo, StoredRole
from endpoints.core.maintenance import pause_text
from endpoints.core.vocabulary import (
    AlertKind,
    AlertSeverity,
    FailoverKind,
    FailoverOutcome,
    ReadPreference,
    RetryStrategy,
    Role,
    SslMode,
    State,
    Strategy,
    choices,
)
from endpoints.validators import GreaterThanValidator as GreaterThanValidator
from endpoints.validators import (
    all_positive,
    positive,
    positive_float,
    validate_host,
)

# The models' older name for the balancing strategy.
LoadBalancing = Strategy


_ROLE_NAME_HELP = (
    "Blank: none. PostgreSQL role the MCP server's {what} connect as, instead of the "
    "operations role of the endpoints above. {rights} See the README's MCP section for the "
    "SQL that creates it."
)


class Cluster(models.Model):
    name = models.SlugField(
        "name",
        max_length=63,
        unique=True,
        help_text="Short identifier used by the router, the MCP server and metrics (letters, "
        "digits, hyphens, underscores).",
    )
    description = models.TextField("description", blank=True)
    read_preference = models.CharField(
        "read preference",
        max_length=24,
        choices=choices(ReadPreference),
        default=ReadPreference.PRIMARY_PREFERRED,
        help_text="Where reads go by default. 'primary preferred' reads from the primary and "
        "falls back to replicas when it is unreachable, so reads never see replication lag "
        "unless they must.",
    )
    load_balancing = models.CharField(
        "load balancing",
        max_length=24,
        choices=choices(Strategy),
        default=Strategy.WEIGHTED_ROUND_ROBIN,
        help_text="How the router spreads requests across eligible endpoints; weights apply "
        "to the weighted strategy.",
    )
    max_replica_lag_s = models.FloatField(
        "max replica lag (s)",
        null=True,
        blank=True,
        default=10.0,
        validators=[MinValueValidator(0, message="Max replica lag cannot be negative.")],
        help_text="Replicas lagging more than this many seconds are not read from. "
        "Blank: no bound.",
    )
    nearest_window_ms = models.FloatField(
        "nearest latency window (ms)",
        default=15.0,
        validators=[MinValueValidator(0, message="The latency window cannot be negative.")],
        help_text="Read preference 'nearest': endpoints within this many milliseconds of the "
        "fastest share the reads (MongoDB's localThresholdMS).",
    )
    strict_classification = models.BooleanField(
        "strict read detection",
        default=False,
        help_text="Treat a query as a write when it calls any function not known to be "
        "read-only (user-defined functions included), so it runs on the primary.",
    )
    circuit_failure_threshold = models.PositiveSmallIntegerField(
        "circuit breaker threshold",
        default=3,
        validators=positive("Circuit breaker threshold"),
        help_text="Consecutive connection failures or timeouts after which a process stops "
        "sending requests to an endpoint for the cooldown.",
    )
    circuit_cooldown_s = models.FloatField(
        "circuit breaker cooldown (s)",
        default=5.0,
        validators=positive_float("Circuit breaker cooldown"),
        help_text="How long an open circuit stays open before one trial request is let through.",
    )
    retry_strategy = models.CharField(
        "retry strategy",
        max_length=16,
        choices=choices(RetryStrategy),
        default=RetryStrategy.EXPONENTIAL,
        help_text="Delay between attempts after a connection failure. Writes whose outcome "
        "is unknown are never retried.",
    )
    retry_max_attempts = models.PositiveSmallIntegerField(
        "retry max attempts",
        default=3,
        validators=[*positive("Max attempts"), MaxValueValidator(20)],
        help_text="Attempts per request, the first included (1 = no retry).",
    )
    retry_initial_delay_ms = models.PositiveIntegerField(
        "retry initial delay (ms)",
        default=50,
        help_text="Delay before the first retry.",
    )
    retry_max_delay_ms = models.PositiveIntegerField(
        "retry max delay (ms)",
        default=2000,
        help_text="Upper bound of any retry delay.",
    )
    retry_multiplier = models.FloatField(
        "retry multiplier",
        default=2.0,
        validators=[MinValueValidator(1.0, message="The multiplier must be at least 1.")],
        help_text="Exponential strategy: each delay is the previous one times this.",
    )
    retry_increment_ms = models.PositiveIntegerField(
        "retry increment (ms)",
        default=100,
        help_text="Linear strategy: each delay is the previous one plus this.",
    )
    connect_timeout_s = models.PositiveSmallIntegerField(
        "connect timeout (s)",
        default=3,
        validators=positive("Connect timeout"),
        help_text="How long the router waits for a new connection before trying elsewhere. "
        "Short, so a dead host costs little.",
    )
    statement_timeout_ms = models.PositiveIntegerField(
        "statement timeout (ms)",
        default=30000,
        validators=positive("Statement timeout"),
        help_text="Server-side statement_timeout for routed queries.",
    )
    check_interval_s = models.FloatField(
        "health check interval (s)",
        default=1.0,
        validators=positive_float("Check interval"),
        help_text="How often every endpoint is probed. 1 s detects a dead primary within "
        "seconds (Patroni's loop is 10 s).",
    )
    probe_timeout_s = models.FloatField(
        "probe timeout (s)",
        default=2.0,
        validators=positive_float("Probe timeout"),
        help_text="A probe that takes longer counts as a failure; a hung host costs at most "
        "this per sweep.",
    )
    failure_threshold = models.PositiveSmallIntegerField(
        "failure threshold",
        default=3,
        validators=positive("Failure threshold"),
        help_text="Consecutive failed probes before an endpoint is marked down (and, for a "
        "primary, failover starts). 3 x 1 s rides out a blip and still fails over in seconds.",
    )
    auto_failover = models.BooleanField(
        "automatic failover",
        default=True,
        help_text="Promote the most up-to-date replica when the primary is down.",
    )
    paused = models.BooleanField(
        "automatic failover paused",
        default=False,
        help_text="Maintenance mode: health checks and alerts go on, automatic failover does "
        "not, until resumed (manual failover and switchover still work).",
    )
    paused_at = models.DateTimeField("paused since", null=True, blank=True, editable=False)
    pause_reason = models.CharField(
        "pause reason",
        max_length=200,
        blank=True,
        help_text="Why automatic failover is paused (shown with the pause).",
    )
    max_failover_lag_bytes = models.PositiveBigIntegerField(
        "max failover lag (bytes)",
        default=1024 * 1024,
        help_text="Replicas further behind than this are not promoted, so failover never "
        "silently drops more than this much WAL (1 MiB, like Patroni's "
        "maximum_lag_on_failover).",
    )
    fence_writes = models.BooleanField(
        "make a returning old primary refuse writes",
        default=True,
        help_text="When a fenced old primary comes back as a writable primary (split brain), "
        "set default_transaction_read_only on it and end its client sessions.",
    )
    degraded_latency_ms = models.FloatField(
        "degraded latency (ms)",
        default=500.0,
        validators=positive_float("Degraded latency"),
        help_text="A probe slower than this marks the endpoint degraded (still routed to).",
    )
    alert_min_available_pct = models.PositiveSmallIntegerField(
        "alert: minimum available endpoints (%)",
        default=50,
        validators=[MaxValueValidator(100)],
        help_text="Alert when fewer than this share of the enabled endpoints is available.",
    )
    alert_max_response_ms = models.FloatField(
        "alert: maximum average response (ms)",
        default=1000.0,
        validators=positive_float("Maximum average response"),
        help_text="Alert when the endpoints' average probe latency exceeds this.",
    )
    alert_min_health_score = models.PositiveSmallIntegerField(
        "alert: minimum average health score",
        default=70,
        validators=[MaxValueValidator(100)],
        help_text="Alert when the endpoints' average health score falls below this.",
    )
    assistant_user = models.CharField(
        "assistant role",
        max_length=63,
        blank=True,
        help_text=_ROLE_NAME_HELP.format(
            what="read tools (query, explain, schemas, tables)",
            rights="Least privilege: pg_read_all_data, never a superuser, never a member of "
            "pg_read_all_settings or pg_monitor.",
        ),
    )
    assistant_password_encrypted = models.TextField(
        "assistant password (encrypted)", blank=True, editable=False
    )
    assistant_write_user = models.CharField(
        "assistant write role",
        max_length=63,
        blank=True,
        help_text=_ROLE_NAME_HELP.format(
            what="write tools (execute, transaction; run_mcp --allow-writes)",
            rights="Never a superuser: with pg_write_all_data it changes any table's rows.",
        ),
    )
    assistant_write_password_encrypted = models.TextField(
        "assistant write password (encrypted)", blank=True, editable=False
    )
    created_at = models.DateTimeField("created", auto_now_add=True)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(retry_max_delay_ms__gte=models.F("retry_initial_delay_ms")),
                name="cluster_retry_max_delay_gte_initial",
                violation_error_message="The max delay must be at least the initial delay.",
            ),
            models.CheckConstraint(
                condition=Q(retry_multiplier__gte=1),
                name="cluster_retry_multiplier_gte_1",
                violation_error_message="The multiplier must be at least 1.",
            ),
            models.CheckConstraint(
                condition=Q(nearest_window_ms__gte=0),
                name="cluster_nearest_window_ms_gte_0",
                violation_error_message="The latency window cannot be negative.",
            ),
            *all_positive(
                "cluster",
                "degraded_latency_ms",
                "alert_max_response_ms",
                "connect_timeout_s",
                "statement_timeout_ms",
                "check_interval_s",
                "probe_timeout_s",
                "failure_threshold",
                "retry_max_attempts",
                "circuit_failure_threshold",
                "circuit_cooldown_s",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def fails_over_automatically(self) -> bool:
        """Automatic failover is on and not paused for maintenance."""
        return self.auto_failover and not self.paused

    def pause_text(self) -> str:
        """ "paused since <time> (<reason>)" for banners, alerts and logs; "" if not paused."""
        return pause_text(self.paused_at, self.pause_reason) if self.paused else ""

    # Assistant credentials

    def assistant_role(self, *, writes: bool = False) -> StoredRole | None:
        """The role the MCP server's read (or, ``writes``, write) tools use; None if unset."""
        if writes:
            user, token = self.assistant_write_user, self.assistant_write_password_encrypted
        else:
            user, token = self.assistant_user, self.assistant_password_encrypted
        return StoredRole(user, token) if user else None

    def set_assistant_password(self, plaintext: str, *, writes: bool = False) -> None:
        """Store ``plaintext`` encrypted; an empty string removes the password."""
        token = crypto.encrypt(plaintext) if plaintext else ""
        if writes:
            self.assistant_write_password_encrypted = token
        else:
            self.assistant_password_encrypted = token

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if (
            self.retry_max_delay_ms is not None
            and self.retry_initial_delay_ms is not None
            and self.retry_max_delay_ms < self.retry_initial_delay_ms
        ):
            errors["retry_max_delay_ms"] = "The max delay must be at least the initial delay."
        if self.assistant_password_encrypted and not self.assistant_user:
            errors["assistant_user"] = "A password is stored: name the role it belongs to."
        if self.assistant_write_password_encrypted and not self.assistant_write_user:
            errors["assistant_write_user"] = "A password is stored: name the role it belongs to."
        if errors:
            raise ValidationError(errors)


class Endpoint(models.Model):
    cluster = models.ForeignKey(
        Cluster,
        on_delete=models.CASCADE,
        related_name="endpoints",
        verbose_name="cluster",
    )
    name = models.SlugField(
        "name",
        max_length=63,
        help_text="Unique within the cluster, e.g. pg1 or eu-west-replica.",
    )
    host = models.CharField(
        "host",
        max_length=255,
        validators=[validate_host],
        help_text="Host name or IP address the server listens on (one; no socket paths).",
    )
    port = models.PositiveIntegerField(
        "port",
        default=5432,
        validators=[
            MinValueValidator(1, message="Port must be between 1 and 65535."),
            MaxValueValidator(65535, message="Port must be between 1 and 65535."),
        ],
    )
    dbname = models.CharField("database", max_length=63, default="postgres")
    user = models.CharField("user", max_length=63, default="postgres")
    password_encrypted = models.TextField(
        "password (encrypted)",
        blank=True,
        editable=False,
        help_text="Fernet token; the plaintext is never stored.",
    )
    sslmode = models.CharField(
        "SSL mode",
        max_length=11,
        choices=choices(SslMode),
        default=SslMode.PREFER,
        help_text="libpq sslmode. Use verify-full with a root certificate across untrusted "
        "networks.",
    )
    sslrootcert = models.CharField(
        "SSL root certificate",
        max_length=500,
        blank=True,
        help_text="Path, on the pgwarden hosts, of the CA certificate for verify-ca/verify-full.",
    )
    role = models.CharField(
        "role",
        max_length=8,
        choices=choices(Role),
        default=Role.REPLICA,
        help_text="Configured role. Failover and switchover update it; at most one enabled "
        "primary per cluster.",
    )
    weight = models.PositiveIntegerField(
        "weight",
        default=100,
        help_text="Share of reads under weighted balancing. 0 drains the endpoint: no new "
        "requests, existing ones finish.",
    )
    enabled = models.BooleanField(
        "enabled",
        default=True,
        help_text="Disabled endpoints are neither probed nor routed to.",
    )
    promotion_priority = models.IntegerField(
        "promotion priority",
        default=0,
        help_text="Failover tie-breaker between replicas equally up to date: higher wins.",
    )
    zone = models.CharField(
        "zone",
        max_length=63,
        blank=True,
        help_text="Location label (e.g. eu-west-1a), for locality-aware routing.",
    )
    pool_min_size = models.PositiveIntegerField(
        "pool min size",
        default=1,
        help_text="Connections each pgwarden process keeps open to this endpoint.",
    )
    pool_max_size = models.PositiveIntegerField(
        "pool max size",
        default=10,
        validators=positive("Pool max size"),
        help_text="Most connections each pgwarden process opens to this endpoint.",
    )
    pool_timeout_s = models.FloatField(
        "pool timeout (s)",
        default=5.0,
        validators=positive_float("Pool timeout"),
        help_text="How long a request waits for a free pooled connection.",
    )
    pool_max_idle_s = models.FloatField(
        "pool max idle (s)",
        default=300.0,
        validators=positive_float("Pool max idle"),
        help_text="Idle connections above the min size are closed after this long.",
    )
    pool_max_lifetime_s = models.FloatField(
        "pool max lifetime (s)",
        default=3600.0,
        validators=positive_float("Pool max lifetime"),
        help_text="Connections are replaced after this long (with jitter), so server-side "
        "memory and settings changes do not linger.",
    )

    # Observed status, written by health checks.
    state = models.CharField(
        "state", max_length=8, choices=choices(State), default=State.UNKNOWN, editable=False
    )
    health_score = models.PositiveSmallIntegerField(
        "health score",
        null=True,
        blank=True,
        editable=False,
        validators=[MaxValueValidator(100)],
        help_text="0-100, derived from availability, latency, lag and saturation.",
    )
    last_checked_at = models.DateTimeField("last checked", null=True, blank=True, editable=False)
    last_latency_ms = models.FloatField("latency (ms)", null=True, blank=True, editable=False)
    replication_lag_bytes = models.BigIntegerField(
        "lag (bytes)", null=True, blank=True, editable=False
    )
    replication_lag_s = models.FloatField("lag (s)", null=True, blank=True, editable=False)
    consecutive_failures = models.PositiveIntegerField(
        "consecutive failures", default=0, editable=False
    )
    last_error = models.TextField("last error", blank=True, editable=False)
    in_recovery = models.BooleanField("in recovery", null=True, blank=True, editable=False)
    wal_lsn = models.BigIntegerField(
        "WAL position",
        null=True,
        blank=True,
        editable=False,
        help_text="Bytes since 0/0: written on a primary, replayed on a replica (last probe).",
    )
    role_mismatch = models.BooleanField(
        "role mismatch",
        default=False,
        editable=False,
        help_text="The last probe contradicts the registered role (a replica not in recovery, "
        "or a primary in recovery); never routed to as that role.",
    )
    fenced_reason = models.TextField("why fenced", blank=True, editable=False)
    # Seen from the primary's side (pg_stat_replication), by sweeps in which it answered.
    upstream = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
        verbose_name="streams from",
        help_text="The primary this replica was last seen streaming from (its walsender, "
        "with application_name = this endpoint's name); only such a replica is promoted.",
    )
    upstream_observed_at = models.DateTimeField(
        "stream last observed", null=True, blank=True, editable=False
    )

    created_at = models.DateTimeField("created", auto_now_add=True)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["cluster__name", "-role", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "name"],
                name="endpoint_name_unique_in_cluster",
                violation_error_message="This cluster already has an endpoint with this name.",
            ),
            models.UniqueConstraint(
                fields=["cluster"],
                condition=Q(role="primary", enabled=True),
                name="one_enabled_primary_per_cluster",
                violation_error_message="This cluster already has an enabled primary.",
            ),
            models.CheckConstraint(
                condition=Q(port__gte=1, port__lte=65535),
                name="endpoint_port_range",
            ),
            models.CheckConstraint(
                condition=Q(pool_min_size__lte=models.F("pool_max_size")),
                name="endpoint_pool_min_lte_max",
                violation_error_message="Pool min size cannot exceed pool max size.",
            ),
            *all_positive(
                "endpoint",
                "pool_max_size",
                "pool_timeout_s",
                "pool_max_idle_s",
                "pool_max_lifetime_s",
            ),
        ]

    # Set by the cluster admin's inline formset, which checks the rule across all its rows.
    primary_checked_by_formset = False

    def __str__(self) -> str:
        return f"{self.cluster.name}/{self.name}" if self.cluster_id else self.name

    def __repr__(self) -> str:
        # Spelled out so no future field (or the password token) slips into logs.
        return (
            f"<Endpoint {self.pk}: {self} {self.role} {self.host}:{self.port} "
            f"enabled={self.enabled} state={self.state}>"
        )

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; an endpoint that now names another server loses its streaming observation.

        The observation vouched for the server at the old address (or name), which only
        matters while the primary is down: the next sweep observes the new one.
        """
        if self.pk is not None and self.upstream_observed_at is not None and self._moved():
            self.upstream = None
            self.upstream_observed_at = None
            update_fields = kwargs.get("update_fields")
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "upstream", "upstream_observed_at"}
        super().save(*args, **kwargs)

    def _moved(self) -> bool:
        stored = Endpoint.objects.filter(pk=self.pk).values_list("host", "port", "name").first()
        return stored is not None and stored != (self.host, self.port, self.name)

    # Credentials

    @property
    def has_password(self) -> bool:
        return bool(self.password_encrypted)

    def set_password(self, plaintext: str) -> None:
        """Store ``plaintext`` encrypted; an empty string removes the password."""
        self.password_encrypted = crypto.encrypt(plaintext) if plaintext else ""

    def get_password(self) -> crypto.Secret:
        if not self.password_encrypted:
            return crypto.Secret("")
        return crypto.decrypt(self.password_encrypted)

    def connection_info(
        self, *, connect_timeout_s: float | None = None, with_password: bool = True
    ) -> ConnectionInfo:
        """Everything needed to connect, the password wrapped in a masked ``Secret``.

        ``with_password=False`` leaves it out (nothing is decrypted): where to connect, for
        a purpose that brings its own role.
        """
        cluster = self.cluster
        timeout = connect_timeout_s if connect_timeout_s is not None else cluster.connect_timeout_s
        return ConnectionInfo(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=self.get_password() if with_password else crypto.Secret(""),
            sslmode=self.sslmode,
            sslrootcert=self.sslrootcert,
            # libpq takes whole seconds, and treats values below 2 as 2.
            connect_timeout_s=max(1, round(timeout)),
            statement_timeout_ms=cluster.statement_timeout_ms,
        )

    def masked_dsn(self) -> str:
        return ConnectionInfo(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=crypto.Secret("set" if self.has_password else ""),
            sslmode=self.sslmode,
            sslrootcert=self.sslrootcert,
        ).masked()

    # Validation

    def clean(self) -> None:
        errors: dict[str, Any] = {}
        if (
            self.pool_min_size is not None
            and self.pool_max_size is not None
            and self.pool_min_size > self.pool_max_size
        ):
            errors["pool_min_size"] = (
                f"Pool min size ({self.pool_min_size}) cannot exceed pool max size "
                f"({self.pool_max_size})."
            )
        if self.sslmode in (SslMode.VERIFY_CA, SslMode.VERIFY_FULL) and not self.sslrootcert:
            errors["sslrootcert"] = (
                f"sslmode {self.sslmode} verifies the server certificate: give the path of the "
                "root certificate."
            )
        other_primary = self.conflicting_primary()
        if other_primary is not None:
            errors["role"] = (
                f"Cluster {self.cluster.name!r} already has an enabled primary, "
                f"{other_primary.name!r}. Make that one a replica or disable it first "
                "(or use switchover)."
            )
        if errors:
            raise ValidationError(errors)

    def validate_constraints(self, exclude: Collection[str] | None = None) -> None:
        if self.primary_checked_by_formset:
            # Excluding "role" skips only the one-primary constraint, which needs the
            # other rows of the formset to be judged.
            exclude = {*(exclude or ()), "role"}
        super().validate_constraints(exclude=exclude)

    def conflicting_primary(self) -> Endpoint | None:
        """The other enabled primary of this cluster, if this one would be a second."""
        if self.primary_checked_by_formset:
            return None
        if not (self.role == Role.PRIMARY and self.enabled and self.cluster_id):
            return None
        others = Endpoint.objects.filter(
            cluster_id=self.cluster_id, role=Role.PRIMARY, enabled=True
        ).exclude(pk=self.pk)
        return others.first()


class HealthCheck(models.Model):
    endpoint = models.ForeignKey(
        Endpoint,
        on_delete=models.CASCADE,
        related_name="health_checks",
        verbose_name="endpoint",
    )
    checked_at = models.DateTimeField("checked at")
    ok = models.BooleanField("ok")
    latency_ms = models.FloatField("latency (ms)", null=True, blank=True)
    in_recovery = models.BooleanField("in recovery", null=True, blank=True)
    lag_bytes = models.BigIntegerField("lag (bytes)", null=True, blank=True)
    lag_s = models.FloatField("lag (s)", null=True, blank=True)
    connections_in_use = models.PositiveIntegerField("connections in use", null=True, blank=True)
    max_connections = models.PositiveIntegerField("max connections", null=True, blank=True)
    error = models.TextField("error", blank=True)
    score = models.PositiveSmallIntegerField("score", null=True, blank=True)

    class Meta:
        ordering = ["-checked_at"]
        get_latest_by = "checked_at"
        indexes = [
            models.Index(fields=["endpoint", "-checked_at"], name="healthcheck_endpoint_time"),
            models.Index(fields=["checked_at"], name="healthcheck_time"),
        ]

    def __str__(self) -> str:
        result = "ok" if self.ok else "failed"
        return f"{self.endpoint} at {self.checked_at:%Y-%m-%d %H:%M:%S} ({result})"


class FailoverEvent(models.Model):
    Kind = FailoverKind
    Outcome = FailoverOutcome

    cluster = models.ForeignKey(
        Cluster,
        on_delete=models.CASCADE,
        related_name="failover_events",
        verbose_name="cluster",
    )
    kind = models.CharField("kind", max_length=10, choices=choices(FailoverKind))
    # Endpoints may be deleted later; the names keep the audit trail readable.
    old_primary = models.ForeignKey(
        Endpoint,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="failovers_from",
        verbose_name="old primary",
    )
    old_primary_name = models.CharField("old primary name", max_length=63, blank=True)
    new_primary = models.ForeignKey(
        Endpoint,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="failovers_to",
        verbose_name="new primary",
    )
    new_primary_name = models.CharField("new primary name", max_length=63, blank=True)
    reason = models.TextField("reason")
    started_at = models.DateTimeField("started")
    finished_at = models.DateTimeField("finished", null=True, blank=True)
    outcome = models.CharField(
        "outcome",
        max_length=11,
        choices=choices(FailoverOutcome),
        default=FailoverOutcome.IN_PROGRESS,
    )
    steps = models.JSONField(
        "steps",
        default=list,
        blank=True,
        help_text="Step-by-step log: [{at, step, ok, detail}, ...].",
    )

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["cluster", "-started_at"], name="failover_cluster_time")]

    def __str__(self) -> str:
        started = f"{self.started_at:%Y-%m-%d %H:%M:%S}"
        return f"{self.get_kind_display()} failover of {self.cluster} at {started}"


class Alert(models.Model):
    Severity = AlertSeverity
    Kind = AlertKind

    cluster = models.ForeignKey(
        Cluster, on_delete=models.CASCADE, related_name="alerts", verbose_name="cluster"
    )
    endpoint = models.ForeignKey(
        Endpoint,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="alerts",
        verbose_name="endpoint",
    )
    # Which condition: with the endpoint, at most one active alert per key (no storms).
    kind = models.CharField("kind", max_length=20, choices=choices(AlertKind))
    key = models.CharField("condition key", max_length=200)
    severity = models.CharField("severity", max_length=8, choices=choices(AlertSeverity))
    message = models.TextField("message")
    raised_at = models.DateTimeField("raised")
    cleared_at = models.DateTimeField("cleared", null=True, blank=True)

    class Meta:
        ordering = ["-raised_at"]
        indexes = [models.Index(fields=["cluster", "-raised_at"], name="alert_cluster_time")]
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "key"],
                condition=Q(cleared_at__isnull=True),
                name="one_active_alert_per_condition",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_severity_display()}: {self.message}"

    @property
    def active(self) -> bool:
        return self.cleared_at is None
