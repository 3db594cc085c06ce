"""Where a command reads its history: a CSV trace, or a Prometheus (with its credentials, up to ``--end``),
the options that say so, and a policy's signals as their defaults (the load as the daemon reads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from controller.shipped import SAMPLE_TRACE as DEFAULT_TRACE
from peakpilot.cli.common import fail


def load_history(trace: Optional[Path], prometheus: Optional[str], query: Optional[str], days: float,
                 step: Optional[str], end: Optional[str] = None, auth=None, columns: Optional[dict] = None):
    """History from a CSV trace or a Prometheus range query (exactly one of them); ``auth``: the
    credentials of a Prometheus behind authentication (``prometheus_auth``); ``columns``: the CSV's
    columns under other names (``csv_columns``)."""
    from forecaster.errors import HistoryError

    if trace and prometheus:
        fail("give --trace or --prometheus, not both")
    if (query or end) and not prometheus:
        fail(f"{'--query' if query else '--end'} reads Prometheus: give --prometheus URL too")
    columns_need_a_trace(columns, trace, prometheus)
    try:
        if prometheus:
            from forecaster.prometheus_source import PrometheusSource

            source = PrometheusSource(prometheus, query=query, step=step or "1m", auth=auth)
            # weeks of history come in many chunks
            return source.load_days(days, end=parse_end(end), progress=True)
        from forecaster.csv_source import load_csv

        return load_csv(trace or DEFAULT_TRACE, step=step, **(columns or {}))
    except HistoryError as exc:
        fail(str(exc))


COLUMN_FLAGS = {"timestamp_column": "--timestamp-column", "count_column": "--count-column",
                "rate_column": "--rate-column", "timestamp_zone": "--timestamp-zone"}


def columns_need_a_trace(columns: Optional[dict], trace: Optional[Path], prometheus: Optional[str]) -> None:
    """Exit 2 where a column (or the zone of its times) is named without a --trace to read it in (the sample's
    are known)."""
    if columns and not trace:
        key = next(iter(columns))
        what = "reads the times of" if key == "timestamp_zone" else "names a column of"
        fail(f"{COLUMN_FLAGS[key]} {what} a CSV trace: give --trace FILE{', not --prometheus' if prometheus else ''}")


def csv_columns(timestamp_column: Optional[str], count_column: Optional[str], rate_column: Optional[str],
                timestamp_zone: Optional[str] = None) -> dict:
    """--timestamp-column, --count-column, --rate-column and --timestamp-zone as ``load_csv`` takes them (the
    ones given); an unknown zone exits 2, naming it."""
    from controller.policy import check_timezone

    if count_column and rate_column:
        fail("give --count-column or --rate-column, not both: the requests are read from one column")
    if timestamp_zone:
        try:
            check_timezone(timestamp_zone)
        except ValueError as exc:
            fail(f"--timestamp-zone: {exc}")
    given = {"timestamp_column": timestamp_column, "count_column": count_column, "rate_column": rate_column,
             "timestamp_zone": timestamp_zone}
    return {key: value for key, value in given.items() if value}


def parse_end(text: Optional[str]):
    """--end: an ISO time (UTC unless it says otherwise), or None for now."""
    import pandas as pd

    if text is None:
        return None
    try:
        end = pd.Timestamp(text)
    except ValueError:
        fail(f"--end {text!r}: not a time; write it as 2026-11-20T18:00 (UTC) or with an offset")
    return (end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")).to_pydatetime()


END_HELP = "Read Prometheus up to this time (ISO, UTC unless it says otherwise; default: now)."
HEADER_HELP = ("'Name: value' sent to Prometheus with every query, e.g. 'X-Scope-OrgID: team-a' (a tenant of "
               "Mimir, Cortex or Thanos); repeat for more.")
TOKEN_FILE_HELP = ("File holding a bearer token for Prometheus (a service account's, for a kube-rbac-proxy or "
                   "OpenShift's Thanos querier); basic auth: https://user:password@host in --prometheus.")


def prometheus_auth(prometheus: Optional[str], headers: list[str], token_file: Optional[Path], policy=None):
    """--prometheus-header and --prometheus-token-file as the Prometheus source takes them; without either,
    the ``policy``'s signals.prometheus_auth where --prometheus is the policy's own Prometheus (replay reads
    the service's load as the daemon does; a policy's credentials are never sent to another server)."""
    if (headers or token_file) and not prometheus:
        fail(f"{'--prometheus-header' if headers else '--prometheus-token-file'} is for Prometheus: give "
             f"--prometheus URL too")
    if not headers and token_file is None:
        own = policy.signals.prometheus if policy is not None else None
        if own and prometheus and prometheus.rstrip("/") == own.rstrip("/"):
            from controller.service_parts import prometheus_auth as from_policy

            return from_policy(policy)
        return None
    from controller.policy import HTTP_HEADER_NAME
    from forecaster.prometheus_source import PrometheusAuth

    parsed = {}
    for header in headers:
        name, colon, value = header.partition(":")
        if not colon or not HTTP_HEADER_NAME.fullmatch(name.strip()):
            fail(f"--prometheus-header {header!r}: write it as 'Name: value', the name without spaces")
        parsed[name.strip()] = value.strip()
    try:
        return PrometheusAuth(parsed, str(token_file) if token_file else None)
    except ValueError as exc:
        fail(f"--prometheus-header: {exc}")



TIMEZONE_HELP = ("IANA time zone of the users' day (e.g. America/New_York): the models read hour of day and day "
                 "of week on its clock, daylight saving included; times without an offset are UTC (default: "
                 "the history's own clock, a CSV's offset or UTC; a policy's is signals.timezone).")


def policy_signals(pol, trace: Optional[Path], prometheus: Optional[str], query: Optional[str], step: Optional[str],
                   days: Optional[float], timezone: Optional[str]):
    """--policy: the service's load as the daemon reads it, where the command line gives none of it: its
    Prometheus (unless --trace), with its query, step and history_days, and its time zone. Returns
    ``(prometheus, query, step, days, timezone)``; days 14 where neither says."""
    if pol is not None:
        prometheus = prometheus or (None if trace else pol.signals.prometheus)
        if prometheus:
            query, step = query or pol.signals.query, step or pol.signals.step
            days = pol.signals.history_days if days is None else days
        timezone = timezone or pol.signals.timezone
    return prometheus, query, step, 14 if days is None else days, timezone


def on_users_clock(history, timezone: Optional[str]):
    """--timezone: the history read on that zone's clock, or exit 2 naming the unknown zone."""
    from controller.policy import check_timezone

    if timezone is None:
        return history
    try:
        return history.in_timezone(check_timezone(timezone))
    except ValueError as exc:
        fail(f"--timezone: {exc}")


# The options of a command that reads history from Prometheus as forecast and backtest do (replay says its
# defaults are the policy's): declared once, as Typer's Annotated types.
PrometheusHeaders = Annotated[list[str], typer.Option("--prometheus-header", help=HEADER_HELP)]
PrometheusTokenFile = Annotated[Optional[Path], typer.Option("--prometheus-token-file", help=TOKEN_FILE_HELP)]
Query = Annotated[Optional[str], typer.Option("--query", help="PromQL for the request rate per second; default: "
                                                              "the inference nodes' request rate.")]
Days = Annotated[Optional[float], typer.Option("--days", help="Days of history to read from Prometheus (default 14, "
                                                              "or the policy's signals.history_days).")]
End = Annotated[Optional[str], typer.Option("--end", help=END_HELP)]
Timezone = Annotated[Optional[str], typer.Option("--timezone", help=TIMEZONE_HELP)]
# A CSV whose columns have other names (an export of a Prometheus or Grafana panel, a log of another tool)
TimestampColumn = Annotated[Optional[str], typer.Option("--timestamp-column", help=(
    "The trace's column of times, where none is named timestamp, time, ts, datetime or date."))]
CountColumn = Annotated[Optional[str], typer.Option("--count-column", help=(
    "The trace's column of each interval's requests, where none is named requests, count, counts, value or y."))]
RateColumn = Annotated[Optional[str], typer.Option("--rate-column", help=(
    "The trace's column of requests per second (a Prometheus or Grafana panel's export): times the step, the "
    "interval's requests."))]
TimestampZone = Annotated[Optional[str], typer.Option("--timestamp-zone", help=(
    "IANA zone whose local times the trace's times without an offset are (Grafana's formatted export writes the "
    "browser's clock), e.g. Europe/Berlin; default UTC. The models then read the users' day on that clock."))]
# replay and recommend-reserved: their defaults are the policy's own
PolicyHeaders = Annotated[list[str], typer.Option("--prometheus-header", help=HEADER_HELP + " Default: the policy's "
                                                                                     "signals.prometheus_auth.")]
PolicyQuery = Annotated[Optional[str], typer.Option("--query", help="PromQL for the request rate per second; default: "
                                                                    "the policy's signals.query, else the inference "
                                                                    "nodes' request rate.")]
PolicyStep = Annotated[Optional[str], typer.Option("--step", help="Step to query Prometheus at (default: the policy's "
                                                                  "signals.step, 1m).")]
