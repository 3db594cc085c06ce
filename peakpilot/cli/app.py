"""The ``peakpilot`` Typer application: its root options (version, logging) and the help style every command
shares. The commands register on ``app`` in their own modules (peakpilot/cli/__init__.py imports them)."""

from __future__ import annotations

import logging
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from peakpilot import __version__


class _BareFlags:
    """Help that shows a flag (``--json``, ``--help``) without a type: typer 0.29 writes ``<bool>`` beside
    every flag, which reads as if it took a value (``--json true``)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_BareFlags, TyperCommand):
    pass


class Group(_BareFlags, TyperGroup):
    pass


app = typer.Typer(
    cls=Group,
    name="peakpilot",
    help="Predictive autoscaler for GPU inference services: forecast the load, prewarm GPU nodes "
         "before the peak, blend reserved, spot and on-demand capacity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"peakpilot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens (to stderr)."),
          log_format: str = typer.Option("text", "--log-format", envvar="PEAKPILOT_LOG_FORMAT",
                                         help="text, or json: one object a line for a log pipeline.")) -> None:
    from peakpilot.log_format import formatter

    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"{log_format!r}: use text or json", param_hint="--log-format")

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if not verbose:  # each retry of an unreachable Prometheus; the error that follows names the URL once
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
