"""The flow commands of ``billing``: ``reset``, ``reconcile``, ``flows deploy`` and
``alerts watch``.

``reset`` and ``reconcile`` run their flow once, directly, in this process (against the Prefect
API in ``PREFECT_API_URL``, or a temporary local one when it is not set). Prefect is imported
only when one of these commands runs, so ``billing serve`` does not need the ``flows`` extra.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from core.settings import Settings

FLOW_COMMANDS = ("reset", "reconcile", "flows", "alerts")
# The top-level modules of the ``flows`` extra (pyproject.toml) that the flow modules import.
FLOWS_EXTRA_MODULES = frozenset({"prefect", "prefect_email", "yaml"})
# ``alerts watch``: how often the outbox is read. 30 s keeps an alert within a minute of its
# usage; above 60 s, the 2-minute promise of docs/operations.md would not hold with a run's time.
POLL_SECONDS_DEFAULT = 30
POLL_SECONDS_MAX = 60


def add_commands(commands: argparse._SubParsersAction) -> None:
    reset = commands.add_parser("reset", help="run the monthly budget reset flow once")
    reset.add_argument("--period", help="label to open, YYYY-MM (default: this month)")
    reset.add_argument(
        "--force",
        action="store_true",
        help="apply a period the reset rule refuses and close every open period (mailed)",
    )
    reconcile = commands.add_parser("reconcile", help="run the usage reconciliation flow once")
    reconcile.add_argument("--repair", action="store_true", help="fix each difference (audited)")
    reconcile.add_argument(
        "--litellm-days", type=int, default=2, help="UTC days of LiteLLM spend logs to read"
    )
    alerts = commands.add_parser("alerts", help="deliver budget alerts")
    alert_commands = alerts.add_subparsers(dest="alerts_command", required=True)
    watch = alert_commands.add_parser(
        "watch", help="run deliver-alerts whenever the outbox has something to send"
    )
    watch.add_argument(
        "--poll-seconds",
        type=int,
        default=POLL_SECONDS_DEFAULT,
        choices=range(1, POLL_SECONDS_MAX + 1),
        metavar=f"1-{POLL_SECONDS_MAX}",
        help=f"how often to look at the outbox (default {POLL_SECONDS_DEFAULT})",
    )
    flows = commands.add_parser("flows", help="Prefect deployments of the flows")
    flow_commands = flows.add_subparsers(dest="flows_command", required=True)
    deploy = flow_commands.add_parser("deploy", help="create the work pool, deploy prefect.yaml")
    deploy.add_argument(
        "--project-dir", type=Path, default=Path.cwd(), help="folder holding prefect.yaml"
    )


def run_command(arguments: argparse.Namespace, settings: Settings) -> None:
    """Run one of ``FLOW_COMMANDS``; a failed flow run exits with status 1, and so does a
    checkout installed without the ``flows`` extra (``make serve`` installs none)."""
    try:
        _run_command(arguments, settings)
    except ModuleNotFoundError as error:
        if error.name not in FLOWS_EXTRA_MODULES:
            raise
        print(
            f"billing: {arguments.command} needs Prefect ({error.name} is not installed):"
            " pip install 'cloudfreedom-billing[flows]', or make test",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


def _run_command(arguments: argparse.Namespace, settings: Settings) -> None:
    if arguments.command == "reset":
        from flows.reset import monthly_budget_reset

        _run_once(lambda: monthly_budget_reset(period=arguments.period, force=arguments.force))
    elif arguments.command == "reconcile":
        from flows.reconcile import reconcile_usage

        _run_once(lambda: reconcile_usage(arguments.repair, arguments.litellm_days))
    elif arguments.command == "alerts":
        from flows.watch import watch_until_signalled

        watch_until_signalled(settings, arguments.poll_seconds)
    else:
        from flows.deploy import DeployFailed, deploy

        try:
            created = deploy(settings, arguments.project_dir)
        except DeployFailed as error:
            print(f"billing: flows deploy: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        print("work pools created: " + (", ".join(created) if created else "none (all existed)"))


def _run_once(run: Callable[[], object]) -> None:
    """Run a flow and print its result as JSON; its failure is a message and exit status 1."""
    try:
        result = run()
    except Exception as error:  # noqa: BLE001 - the flow run's state and logs hold the details
        print(f"billing: flow run failed: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(result, indent=2, default=str))
