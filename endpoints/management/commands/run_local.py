"""``manage.py run_local``: the whole local stack in one command (what ``make run`` runs)."""

from __future__ import annotations

import io
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from endpoints.devstack.localcluster import LocalClusterError, LocalPostgresCluster
from endpoints.devstack.localstack import StackError, StackOptions, run_local_stack
from endpoints.services.registration import LOCAL_CLUSTER_NAME, register_local_cluster


class Command(BaseCommand):
    help = (
        "Start a local PostgreSQL primary with two streaming replicas and Redis, migrate, "
        "register cluster 'local', create the admin user, then run the web server, a Celery "
        "worker and Celery beat until Ctrl-C, which stops everything started here."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Web server address.")
        parser.add_argument("--port", type=int, default=8000, help="Web server port.")
        parser.add_argument(
            "--dir",
            type=Path,
            default=None,
            help="Base directory of the local cluster (default: $PGWARDEN_LOCAL_CLUSTER_DIR, "
            "else <project>/var/local-cluster).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stack = StackOptions(
            cluster_name=LOCAL_CLUSTER_NAME,
            host=options["host"],
            port=options["port"],
            cluster_dir=options["dir"],
            redis_url=settings.REDIS_URL,
            var_dir=settings.PGWARDEN_VAR_DIR,
            write=self._write,
        )
        try:
            status = run_local_stack(stack, setup=self._setup)
        except (LocalClusterError, StackError) as exc:
            raise CommandError(str(exc)) from exc
        if status:
            raise CommandError(
                "the local stack stopped because a process exited", returncode=status
            )

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def _setup(self, cluster: LocalPostgresCluster, admin_url: str) -> str:
        call_command("migrate", interactive=False, verbosity=0)
        registration = register_local_cluster(cluster, LOCAL_CLUSTER_NAME)
        self._write(f"Registry: {registration.summary()}")
        login = io.StringIO()
        call_command("ensure_admin", url=admin_url, stdout=login)
        return login.getvalue().strip()
