"""endpoints.devstack.localredis: which URLs are ours to run, and a real redis-server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from endpoints.devstack.localredis import LocalRedis, local_redis_for_url, redis_ping
from endpoints.devstack.processes import LocalClusterError

# Most of its tests start a real redis-server.
pytestmark = pytest.mark.servers


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6390/0", ("127.0.0.1", 6390)),
        ("redis://localhost/1", ("127.0.0.1", 6379)),
        ("redis://[::1]:6391/0", ("::1", 6391)),
        ("redis://redis.internal:6379/0", None),
        ("redis://10.0.0.5:6379/0", None),
        ("rediss://127.0.0.1:6379/0", None),
    ],
)
def test_local_redis_for_url_manages_only_loopback(
    tmp_path: Path, url: str, expected: tuple[str, int] | None
) -> None:
    redis = local_redis_for_url(url, tmp_path)

    assert (None if redis is None else (redis.host, redis.port)) == expected


@pytest.mark.servers
def test_redis_starts_answers_and_stops(tmp_path: Path) -> None:
    redis = LocalRedis(tmp_path / "redis")

    redis.start()
    try:
        assert redis.running()
        assert redis.owns_server
        assert redis_ping(redis.host, redis.port) == "+PONG"
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        # The freely chosen port is kept for the next start.
        assert LocalRedis(tmp_path / "redis").port == redis.port
        redis.start()
    finally:
        redis.stop()

    assert not redis.running()
    assert not redis.owns_server


@pytest.mark.servers
def test_redis_already_running_is_reused_and_left_alone(tmp_path: Path) -> None:
    first = LocalRedis(tmp_path / "first")
    first.start()
    try:
        second = LocalRedis(tmp_path / "second", port=first.port)
        second.start()
        assert second.running()
        assert not second.owns_server

        second.stop()

        assert first.running()
    finally:
        first.stop()
    assert not first.running()


@pytest.mark.servers
def test_redis_port_taken_by_something_else_is_reported(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        # Accepts, then reads nothing: the PING times out and the reply is not PONG.
        with pytest.raises(LocalClusterError, match="does not answer"):
            LocalRedis(tmp_path, port=port).start(timeout_s=1)
