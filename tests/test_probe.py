"""health.probe against real servers: the local primary and replicas, dead and hung ports."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from endpoints.core.conninfo import ConnectionInfo
from endpoints.core.crypto import Secret
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.health import probe as probe_module
from endpoints.health.probe import (
    PROBE_SQL,
    ProbeResult,
    WalSender,
    check_endpoint,
    check_endpoints,
    probe,
    settled_replay_lag,
    sweep_endpoints,
    walsenders_from_json,
)
from endpoints.models import Cluster, Endpoint, Role

# Scheduling slack on a loaded machine; far below the next whole second of a missed deadline.
MARGIN_S = 1.0  # generous: CI machines have 2 cores and may be busy


def _info(
    pg_cluster: LocalPostgresCluster, node: str = "primary", **overrides: object
) -> ConnectionInfo:
    target = pg_cluster.node(node)
    values: dict[str, object] = {
        "host": target.host,
        "port": target.port,
        "dbname": pg_cluster.dbname,
        "user": pg_cluster.user,
        "password": Secret(pg_cluster.password),
        "sslmode": "disable",
        "connect_timeout_s": 5,
    }
    values.update(overrides)
    return ConnectionInfo(**values)  # type: ignore[arg-type]


def _silent_cluster(name: str, ports: list[int], timeout_s: int = 1) -> list[Endpoint]:
    cluster = Cluster.objects.create(name=name, connect_timeout_s=timeout_s)
    return [
        Endpoint.objects.create(
            cluster=cluster, name=f"hung{index}", host="127.0.0.1", port=port, sslmode="disable"
        )
        for index, port in enumerate(ports)
    ]


def test_probe_of_the_primary_reports_it_is_not_in_recovery(
    pg_cluster: LocalPostgresCluster,
) -> None:
    result = probe(_info(pg_cluster), timeout_s=5)

    assert result.ok, result.error
    assert result.in_recovery is False
    assert result.server_version is not None
    assert result.server_version.startswith("15")
    assert result.error == ""
    assert result.latency_ms is not None
    assert result.latency_ms > 0
    assert result.connect_ms is not None
    assert result.connect_ms > 0
    assert "not in recovery (primary)" in result.summary()


def test_probe_of_a_replica_reports_it_is_in_recovery(pg_cluster: LocalPostgresCluster) -> None:
    result = probe(_info(pg_cluster, "replica1"), timeout_s=5)

    assert result.ok, result.error
    assert result.in_recovery is True
    assert "in recovery (replica)" in result.summary()


def test_probe_of_the_primary_lists_its_walsenders_by_name_address_and_state(
    pg_cluster: LocalPostgresCluster,
) -> None:
    pg_cluster.wait_for_replay()

    result = probe(_info(pg_cluster), timeout_s=5)

    assert result.ok, result.error
    # The local cluster sets cluster_name = node name: each replica's application_name.
    assert sorted(result.walsenders, key=lambda sender: sender.name) == [
        WalSender(name="replica1", addr="127.0.0.1", state="streaming"),
        WalSender(name="replica2", addr="127.0.0.1", state="streaming"),
    ]


def test_probe_of_a_replica_lists_no_walsenders(pg_cluster: LocalPostgresCluster) -> None:
    result = probe(_info(pg_cluster, "replica2"), timeout_s=5)

    assert result.ok, result.error
    assert result.walsenders == ()


def test_walsenders_are_read_from_the_json_the_probe_returns() -> None:
    assert walsenders_from_json(None) == ()
    assert walsenders_from_json(
        [
            {"name": "r1", "addr": "10.0.0.3", "state": "streaming"},
            {"name": "r2", "addr": None, "state": None},
            "not a record",
        ]
    ) == (
        WalSender(name="r1", addr="10.0.0.3", state="streaming"),
        WalSender(name="r2", addr=None, state=None),
    )


def test_after_a_quiet_spell_pending_wal_is_not_taken_for_lag(
    pg_cluster: LocalPostgresCluster,
) -> None:
    primary = psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True)
    primary.execute("CREATE TABLE IF NOT EXISTS probe_quiet (v int)")  # a commit to replay
    pg_cluster.wait_for_replay()

    async def main() -> None:
        replica = await psycopg.AsyncConnection.connect(
            **pg_cluster.conninfo("replica1"), autocommit=True
        )
        await replica.execute("SELECT pg_wal_replay_pause()")
        try:
            time.sleep(1.5)  # the quiet spell
            primary.execute("INSERT INTO probe_quiet VALUES (1)")
            target = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert target is not None
            for _ in range(200):  # received, not replayed
                cursor = await replica.execute(
                    "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", [target[0]]
                )
                if (await cursor.fetchone()) == (True,):
                    break
                await asyncio.sleep(0.05)
            row = await (await replica.execute(PROBE_SQL)).fetchone()
            assert row is not None
            received, apparent_lag = row[3], row[4]
            # The age of the last replayed commit, which is the quiet spell, not the lag.
            assert apparent_lag is not None
            assert apparent_lag >= 1.5

            # Still not replaying: the lag stands.
            assert await settled_replay_lag(replica, received, apparent_lag) == apparent_lag
        finally:
            await replica.execute("SELECT pg_wal_replay_resume()")
        pg_cluster.wait_for_replay()
        # Replaying what it had received took no time: caught up, as if nothing was pending.
        assert await settled_replay_lag(replica, received, apparent_lag) == 0.0
        # Short lags are taken as they are, with no second look.
        assert await settled_replay_lag(replica, received, 0.4) == 0.4
        await replica.close()

    try:
        asyncio.run(main())
    finally:
        primary.execute("DROP TABLE probe_quiet")
        primary.close()


def test_probe_of_a_closed_port_fails_naming_the_port(closed_port: int) -> None:
    info = ConnectionInfo(host="127.0.0.1", port=closed_port, dbname="app", user="app")

    result = probe(info, timeout_s=5)

    assert result.ok is False
    assert str(closed_port) in result.error
    assert "refused" in result.error.lower()
    assert result.in_recovery is None
    assert result.summary() == result.error


def test_probe_of_a_silent_port_gives_up_at_the_timeout(silent_port: int) -> None:
    info = ConnectionInfo(
        host="127.0.0.1", port=silent_port, dbname="app", user="app", connect_timeout_s=30
    )

    started = time.monotonic()
    result = probe(info, timeout_s=1)
    elapsed = time.monotonic() - started

    assert result.ok is False
    assert f"no answer from 127.0.0.1:{silent_port} within 1 s" in result.error
    assert 1 <= elapsed < 1 + MARGIN_S


def test_probe_of_a_silent_port_bounded_by_libpq_connect_timeout_says_no_answer(
    silent_port: int,
) -> None:
    # connect_timeout (libpq's, enforced by psycopg) shorter than the probe's own deadline.
    info = ConnectionInfo(
        host="127.0.0.1", port=silent_port, dbname="app", user="app", connect_timeout_s=2
    )

    started = time.monotonic()
    result = probe(info, timeout_s=10)
    elapsed = time.monotonic() - started

    assert result.ok is False
    assert f"no answer from 127.0.0.1:{silent_port} within 2 s" in result.error
    assert elapsed < 2 + MARGIN_S


def test_probe_with_a_wrong_password_says_so_without_echoing_it(
    pg_cluster: LocalPostgresCluster,
) -> None:
    wrong = "wrong-password-Zq81x"
    result = probe(_info(pg_cluster, password=Secret(wrong)), timeout_s=5)

    assert result.ok is False
    assert "password authentication failed" in result.error
    assert pg_cluster.user in result.error
    assert wrong not in result.error
    assert pg_cluster.password not in result.error


@pytest.mark.django_db
def test_check_endpoints_probes_concurrently(silent_port: int) -> None:
    endpoints = _silent_cluster("hung", [silent_port] * 3, timeout_s=1)

    started = time.monotonic()
    results = check_endpoints(endpoints)
    elapsed = time.monotonic() - started

    assert [endpoint for endpoint, _ in results] == endpoints
    assert all(not result.ok for _, result in results)
    assert all("within 1 s" in result.error for _, result in results)
    # Three 1 s timeouts one after the other would take 3 s.
    assert elapsed < 2.5


@pytest.mark.django_db
def test_check_endpoints_with_a_timeout_bounds_each_probe_by_it(silent_port: int) -> None:
    # A sweep passes the cluster's probe timeout: it wins over the (longer) connect timeout,
    # fractions of a second included.
    endpoints = _silent_cluster("hung", [silent_port] * 3, timeout_s=10)

    started = time.monotonic()
    results = check_endpoints(endpoints, timeout_s=1.5)
    elapsed = time.monotonic() - started

    assert all("within 1.5 s" in result.error for _, result in results)
    assert 1.5 <= elapsed < 1.5 + MARGIN_S


def test_probe_reports_whether_new_sessions_default_to_read_only(
    pg_cluster: LocalPostgresCluster,
) -> None:
    result = probe(_info(pg_cluster), timeout_s=5)

    assert result.read_only is False


def test_check_endpoint_uses_the_registry_settings(local_cluster: Cluster) -> None:
    results = {
        endpoint.name: result
        for endpoint, result in check_endpoints(
            local_cluster.endpoints.select_related("cluster").order_by("name")
        )
    }

    assert set(results) == {"primary", "replica1", "replica2"}
    assert all(result.ok for result in results.values()), results
    assert results["primary"].in_recovery is False
    assert results["replica1"].in_recovery is True
    assert results["replica2"].in_recovery is True
    single = check_endpoint(local_cluster.endpoints.get(role=Role.PRIMARY))
    assert isinstance(single, ProbeResult)
    assert single.ok
    assert single.in_recovery is False


def test_check_endpoint_reports_an_undecryptable_password(local_cluster: Cluster) -> None:
    endpoint = local_cluster.endpoints.select_related("cluster").get(name="primary")
    endpoint.password_encrypted = "not-a-fernet-token"

    result = check_endpoint(endpoint)

    assert result.ok is False
    assert "PGWARDEN_ENCRYPTION_KEYS" in result.error


# Sweeps: sweep_endpoints


def _hung(cluster: Cluster, port: int, count: int, prefix: str = "hung") -> list[Endpoint]:
    return [
        Endpoint.objects.create(
            cluster=cluster, name=f"{prefix}{index}", host="127.0.0.1", port=port, sslmode="disable"
        )
        for index in range(count)
    ]


@pytest.mark.django_db
def test_sweep_endpoints_starts_suspects_at_once_each_with_its_full_timeout(
    silent_port: int,
) -> None:
    endpoints = _silent_cluster("hung", [silent_port] * 6)

    started = time.monotonic()
    results = sweep_endpoints(
        endpoints, timeout_s=1.0, suspects=[e.pk for e in endpoints], max_setups=1
    )
    elapsed = time.monotonic() - started

    # One turn at a time would not matter: suspects do not wait for turns.
    assert all(result is not None and result.timed_out for _, result in results), results
    assert all("within 1 s" in result.error for _, result in results if result is not None)
    assert 1.0 <= elapsed < 1.0 + MARGIN_S


def test_sweep_endpoints_leaves_unprobed_what_never_got_a_turn(
    local_cluster: Cluster, silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One turn, held by a host that hangs for longer than the whole sweep.
    monkeypatch.setattr(probe_module, "SETUP_TURN_S", 10.0)
    [hung] = _hung(local_cluster, silent_port, 1)
    primary = local_cluster.endpoints.select_related("cluster").get(role=Role.PRIMARY)

    started = time.monotonic()
    results = dict(sweep_endpoints([hung, primary], timeout_s=1.0, max_setups=1))
    elapsed = time.monotonic() - started

    failed = results[hung]
    assert failed is not None
    assert (failed.ok, failed.timed_out) == (False, True)
    # Not a failure of the primary: it was never probed, and says so with None.
    assert results[primary] is None
    assert elapsed < 1.0 + MARGIN_S


def test_sweep_endpoints_hosts_that_newly_hang_give_up_their_turns(
    local_cluster: Cluster, silent_port: int
) -> None:
    # Two turns, three hosts that newly hang first in line: each waits SETUP_TURN_S, not
    # the probe timeout, before the next starts, so the healthy endpoints all answer.
    hung = _hung(local_cluster, silent_port, 3)
    healthy = list(local_cluster.endpoints.select_related("cluster").exclude(port=silent_port))

    results = dict(sweep_endpoints([*hung, *healthy], timeout_s=1.5, max_setups=2))

    answered = {e.name: r.ok if r is not None else None for e, r in results.items()}
    assert answered == {"primary": True, "replica1": True, "replica2": True} | {
        "hung0": False,
        "hung1": False,
        # Started SETUP_TURN_S late, so cut short by the sweep's deadline before its own
        # timeout: unprobed, not failed.
        "hung2": None,
    }
    assert all(r.timed_out for e, r in results.items() if r is not None and e in hung)


def test_a_timed_out_probe_says_so_and_a_refused_one_does_not(
    pg_cluster: LocalPostgresCluster, silent_port: int, closed_port: int
) -> None:
    hung = probe(_info(pg_cluster, port=silent_port), timeout_s=0.5)
    refused = probe(_info(pg_cluster, port=closed_port), timeout_s=0.5)

    assert (hung.ok, hung.timed_out) == (False, True)
    assert (refused.ok, refused.timed_out) == (False, False)
