"""``make bench``: pgwarden's performance targets, measured side by side in one run.

Starts its own PostgreSQL primary with two streaming replicas and a Redis (as
the tests do, under /tmp), registers them in a throwaway control database, and
prints one table. Nothing here is asserted: the numbers are for people, the
tests check behaviour.

    python -m bench [--quick] [--only routing --only mcp ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"


BENCHES = ("routing", "mcp", "failover", "health", "dashboard")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument(
        "--only",
        choices=BENCHES,
        action="append",
        help="run only this group of rows (repeatable); default: all of them",
    )
    args = parser.parse_args()
    only = set(args.only or BENCHES)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from bench import dashboard_bench, failover_bench, health_bench, mcp_bench, routing_bench
    from endpoints.devstack.localcluster import LocalPostgresCluster, local_redis_for_url
    from endpoints.services.registration import register_local_cluster

    base = Path(tempfile.mkdtemp(prefix="pgwarden-bench-"))
    # The postgres OS user runs the servers and must reach their directories.
    os.chmod(base, 0o755)  # noqa: S103
    cluster = LocalPostgresCluster(base / "pg", replicas=2)
    redis = local_redis_for_url(settings.REDIS_URL, base / "redis")
    database = Path(settings.DATABASES["default"]["NAME"])
    assert redis is not None
    try:
        print("starting PostgreSQL (primary + 2 replicas) and Redis under", base, file=sys.stderr)
        cluster.start()
        redis.start()
        call_command("migrate", verbosity=0)
        register_local_cluster(cluster)
        started = time.monotonic()
        runs = {
            "routing": lambda: routing_bench.run(cluster, quick=args.quick),
            "mcp": lambda: mcp_bench.run(quick=args.quick),
            # These start clusters of their own (failover kills servers; sweeps need many).
            "failover": lambda: failover_bench.run(quick=args.quick),
            "health": lambda: health_bench.run(quick=args.quick),
            # Last: it leaves a million health checks in the (throwaway) control database.
            "dashboard": lambda: dashboard_bench.run(quick=args.quick),
        }
        rows = [row for name, run in runs.items() if name in only for row in run()]
        print_table(rows)
        print(f"\n(measured in {time.monotonic() - started:.0f} s; rerun with `make bench`)")
    finally:
        from endpoints import routing

        routing.reset_router()
        redis.stop()
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    return 0


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    header = ("benchmark", "pgwarden", "baseline", "ratio", "target")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
