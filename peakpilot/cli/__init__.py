"""The ``peakpilot`` command line: one entry point for every part of the project, on one Typer ``app``
(peakpilot/cli/app.py), a module for each part's commands.

Errors in the input (a broken trace, an unreachable Prometheus) print one clear line naming what is
wrong and where, and exit with code 2; no traceback.
"""

from __future__ import annotations

from peakpilot.cli.app import app

# Each module registers its commands on ``app`` as it is imported; --help lists them in this order.
from peakpilot.cli import forecast_commands  # noqa: E402,F401,I001
from peakpilot.cli import controller_commands  # noqa: E402,F401
from peakpilot.cli import node_commands  # noqa: E402,F401
from peakpilot.cli import dashboard_command  # noqa: E402,F401

__all__ = ["app", "main"]


def main() -> None:
    app()
