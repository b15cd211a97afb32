"""``manage.py failover CLUSTER``: promote a replica now, switch over with no data loss, or
pause/resume automatic failover for maintenance."""

from __future__ import annotations

import sys
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from typing import Any

from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    DjangoHelpFormatter,
)

from endpoints import failover
from endpoints.core.vocabulary import FailoverKind, FailoverOutcome
from endpoints.models import Cluster
from endpoints.services import fleet

DESCRIPTION = """\
Promote a replica of CLUSTER to primary, and show every step.

Without --switchover (a failover, for a primary that is down or must go now):
  the chosen replica is promoted at once; the other replicas are re-pointed to it;
  the old primary is fenced in the registry (no traffic) and, if it still answers,
  made read-only first. Writes the candidate had not replayed are lost: at most the
  cluster's max failover lag.

With --switchover (planned, for a healthy primary, no data loss):
  the old primary refuses new writes and its client sessions end; the candidate
  must replay everything the old primary wrote (bounded by --timeout, else the old
  primary is made writable again and nothing changes); then it is promoted as above.
  The old primary stays fenced and read-only until it is rebuilt as a replica.

The candidate: --to ENDPOINT, or the enabled, answering, unfenced replica with the
most WAL replayed (then promotion priority, weight, name), within the cluster's max
failover lag. The plan is printed first and you confirm it, unless --yes is given;
--yes is required when stdin is not a terminal.

With --pause [--reason TEXT] / --resume (maintenance):
  automatic failover of CLUSTER stops (or starts again); health checks and alerts
  go on, and a primary that goes down while paused raises an alert instead. Nothing
  is promoted; a manual failover still works while paused.
"""

EPILOG = """\
examples:
  manage.py failover local --dry-run            show the plan, change nothing
  manage.py failover local --switchover --yes   planned switchover to the best replica
  manage.py failover local --to replica2        failover to replica2, after confirming
  manage.py failover local --pause --reason "OS upgrade"   pause automatic failover
  manage.py failover local --resume             resume automatic failover

Exit status: 0 when the failover succeeded (or --dry-run found a candidate), 1 when
it was aborted, failed, or refused.
"""


class _HelpFormatter(DjangoHelpFormatter, RawDescriptionHelpFormatter):
    """Django's option order, with the description's line breaks kept."""


class Command(BaseCommand):
    help = DESCRIPTION

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = _HelpFormatter
        parser.epilog = EPILOG
        return parser

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("cluster", metavar="CLUSTER", help="Name of the registered cluster.")
        parser.add_argument(
            "--to",
            metavar="ENDPOINT",
            help="Promote this replica (it must still be eligible). Default: the best one.",
        )
        parser.add_argument(
            "--switchover",
            action="store_true",
            help="Planned switchover from a healthy primary with no data loss, instead of a "
            "failover.",
        )
        parser.add_argument(
            "--yes",
            action="store_true",
            help="Do not ask for confirmation (required when stdin is not a terminal).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the plan and change nothing."
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="Switchover: how long the candidate may take to catch up (default: 30).",
        )
        parser.add_argument(
            "--reason",
            default="",
            help="Why, for the audit trail (default: 'manual failover (or switchover) from the "
            "command line'; with --pause: the pause reason shown in banners).",
        )
        maintenance = parser.add_mutually_exclusive_group()
        maintenance.add_argument(
            "--pause",
            action="store_true",
            help="Pause automatic failover of CLUSTER (maintenance); checks and alerts go on.",
        )
        maintenance.add_argument(
            "--resume", action="store_true", help="Resume automatic failover of CLUSTER."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        cluster = Cluster.objects.filter(name=options["cluster"]).first()
        if cluster is None:
            known = ", ".join(Cluster.objects.values_list("name", flat=True)) or "none"
            raise CommandError(f"no cluster {options['cluster']!r} (registered: {known})")
        if options["pause"] or options["resume"]:
            self._pause_or_resume(cluster, options)
            return
        switchover: bool = options["switchover"]
        to: str | None = options["to"]
        what = "switchover" if switchover else "failover"
        try:
            plan = failover.plan_failover(cluster, to=to)
        except failover.FailoverError as exc:
            raise CommandError(str(exc)) from None

        self.stdout.write(f"Plan for a {what} of cluster {cluster.name}:")
        self.stdout.write(_indent(failover.describe_plan(plan)))
        if plan.candidate is None:
            raise CommandError(f"no replica can be promoted: {plan.reason}")
        self.stdout.write("What will happen:")
        self.stdout.write(_indent(_consequences(plan, switchover=switchover)))
        if options["dry_run"]:
            self.stdout.write("Dry run: nothing changed.")
            return
        if not options["yes"]:
            self._confirm(what, plan.candidate)

        reason = options["reason"] or f"manual {what} from the command line"
        try:
            if switchover:
                event = failover.switchover(
                    cluster, to=plan.candidate, timeout_s=options["timeout"], reason=reason
                )
            else:
                event = failover.fail_over(
                    cluster, to=plan.candidate, kind=FailoverKind.MANUAL, reason=reason
                )
        except failover.FailoverError as exc:
            raise CommandError(str(exc)) from None

        for step in event.steps:
            mark = "ok  " if step["ok"] else "FAIL"
            detail = str(step["detail"]).replace("\n", "\n" + " " * 8)
            self.stdout.write(f"  {mark}  {step['step']}: {detail}")
        summary = (
            f"{what.capitalize()} #{event.pk} {event.get_outcome_display()}: "
            f"{event.old_primary_name or '-'} -> {event.new_primary_name or '-'}"
        )
        if event.outcome != FailoverOutcome.SUCCEEDED:
            raise CommandError(f"{summary}. {event.reason}")
        self.stdout.write(self.style.SUCCESS(summary))

    def _pause_or_resume(self, cluster: Cluster, options: dict[str, Any]) -> None:
        """--pause / --resume: refuse the promotion options, then change and say the pause."""
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("to", "switchover", "dry_run")
            if options[name] not in (None, False)
        ]
        if options["timeout"] != 30.0:
            given.append("--timeout")
        action = "--pause" if options["pause"] else "--resume"
        if given:
            raise CommandError(
                f"{action} cannot be combined with {', '.join(given)}: it changes only "
                "whether failover happens automatically"
            )
        if options["resume"] and options["reason"]:
            raise CommandError("--reason goes with --pause (or a failover), not --resume")
        if options["pause"]:
            stored = failover.pause(cluster, reason=options["reason"])
            self.stdout.write(
                self.style.WARNING(f"automatic failover of {stored.name} {stored.pause_text()}")
            )
            if not stored.auto_failover:
                self.stdout.write(f"(automatic failover of {stored.name} is also switched off)")
            return
        resumed = fleet.resume_failover(cluster.name)  # the MCP tool's service and text
        self.stdout.write(
            self.style.SUCCESS(resumed.message) if resumed.changed else resumed.message
        )

    def _confirm(self, what: str, candidate: str) -> None:
        if not sys.stdin.isatty():
            raise CommandError(
                f"refusing to run a {what} without confirmation: stdin is not a terminal. "
                "Re-run with --yes (after checking the plan with --dry-run)."
            )
        answer = input(f"Promote {candidate}? Type 'yes' to proceed: ")
        if answer.strip().lower() != "yes":
            raise CommandError(f"{what} cancelled; nothing changed")


def _consequences(plan: failover.FailoverPlan, *, switchover: bool) -> str:
    steps = []
    if switchover:
        steps += [
            f"{plan.primary} refuses new writes and its client sessions end",
            f"wait until {plan.candidate} replays all {plan.primary} wrote (else undo, stop)",
        ]
    elif plan.primary_answers:
        steps.append(f"{plan.primary} still answers: it is made read-only, its sessions end")
    steps += [
        f"promote {plan.candidate}; routed writes go to it within a second",
        f"re-point the other replicas to {plan.candidate}",
    ]
    if plan.primary is not None:
        steps.append(f"fence {plan.primary} until it is rebuilt as a replica and re-admitted")
    return "\n".join(f"{index}. {step}" for index, step in enumerate(steps, 1))


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())
