"""The ``peakpilot`` command line: one entry point for every part of the project.

Errors in the input (a broken trace, an unreachable Prometheus) print one clear line naming what is
wrong and where, and exit with code 2; no traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from controller.shipped import DEFAULT_POLICY, default_runs_dir
from controller.shipped import SAMPLE_TRACE as DEFAULT_TRACE
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

# A week: beyond it every model but seasonal_naive is extrapolating, and the learned ones train one output
# per step (a week at 1-minute steps is 10,080). The controller plans at most 240 minutes ahead.
MAX_HORIZON_MIN = 7 * 24 * 60


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"peakpilot: error: {message}", err=True)
    raise typer.Exit(code)


def require_reachable(url: str, api_key: str | None = None) -> None:
    """Exit 2 naming the URL where nothing answers there, or where the node refuses the API key (before a
    load run sends into refused connections or 401s)."""
    from inference_node.loadgen import check_reachable

    try:
        check_reachable(url, api_key=api_key)
    except ConnectionError as exc:
        fail(str(exc))


def open_store(url: str):
    """The store named by --store, opened before any long work so a bad URL fails at once."""
    from controller.store import Store, StoreError

    try:
        return Store(url)
    except (StoreError, OSError) as exc:
        fail(str(exc))


def record_or_exit(write, *args):
    from controller.store import StoreError

    try:
        return write(*args)
    except StoreError as exc:
        fail(str(exc))


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


def load_history(trace: Optional[Path], prometheus: Optional[str], query: Optional[str], days: float,
                 step: Optional[str], end: Optional[str] = None, auth=None):
    """History from a CSV trace or a Prometheus range query (exactly one of them); ``auth``: the
    credentials of a Prometheus behind authentication (``prometheus_auth``)."""
    from forecaster.errors import HistoryError

    if trace and prometheus:
        fail("give --trace or --prometheus, not both")
    if (query or end) and not prometheus:
        fail(f"{'--query' if query else '--end'} reads Prometheus: give --prometheus URL too")
    try:
        if prometheus:
            from forecaster.prometheus_source import PrometheusSource

            source = PrometheusSource(prometheus, query=query, step=step or "1m", auth=auth)
            # weeks of history come in many chunks
            return source.load_days(days, end=parse_end(end), progress=True)
        from forecaster.csv_source import load_csv

        return load_csv(trace or DEFAULT_TRACE, step=step)
    except HistoryError as exc:
        fail(str(exc))


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


# profile and loadgen: what their requests send
MODEL_FIELD_HELP = ("The model field each request sends: a served model name, for a server that asks for one "
                    "(vLLM's); default: none sent.")
API_KEY_HELP = "The key a node started with --api-key asks for."
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


TABLE_ROWS = 60


def table_rows(n: int, peak_at: int, limit: int | None) -> tuple[list[int], int]:
    """The rows a readable forecast prints: all of them up to `limit`, else every k-th (the first and
    the last among them) and the peak's, so a 30-minute forecast of a 1-second series is 60 rows, not
    1,800. Returns the row numbers and k."""
    if limit is None or n <= limit:
        return list(range(n)), 1
    every = -(-n // limit)
    return sorted(set(range(0, n, every)) | {n - 1, peak_at}), every


@app.command(cls=Command)
def forecast(
    trace: Optional[Path] = typer.Option(None, "--trace", help="CSV trace (timestamp,requests) or request log. "
                                                               "Default: the sample trace in data/."),
    prometheus: Optional[str] = typer.Option(None, "--prometheus", help="Prometheus base URL to read history from."),
    prometheus_header: list[str] = typer.Option([], "--prometheus-header", help=HEADER_HELP),
    prometheus_token_file: Optional[Path] = typer.Option(None, "--prometheus-token-file", help=TOKEN_FILE_HELP),
    query: Optional[str] = typer.Option(None, "--query", help="PromQL for the request rate per second; "
                                                              "default: the inference nodes' request rate."),
    days: Optional[float] = typer.Option(None, "--days", help="Days of history to read from Prometheus (default 14, "
                                                              "or the policy's signals.history_days)."),
    end: Optional[str] = typer.Option(None, "--end", help=END_HELP),
    step: Optional[str] = typer.Option(None, "--step", help="History step (e.g. 5m): a CSV is aggregated to it, "
                                                            "Prometheus queried at it (default 1m there)."),
    model: Optional[str] = typer.Option(None, "--model", help="ensemble (the default; torch + lightgbm), torch, "
                                        "lightgbm, prophet, seasonal_naive, recent_level or statsforecast_autoets; "
                                        "falls back along ensemble > torch > prophet > seasonal_naive > "
                                        "recent_level."),
    horizon: Optional[float] = typer.Option(None, "--horizon", min=1, max=MAX_HORIZON_MIN,
                                            help="Minutes ahead, at most a week (default 30, or the policy's "
                                                 "planning.horizon_min)."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Forecast as the daemon does for this policy's "
                                          "service: its Prometheus with its query, step, history_days, "
                                          "prometheus_auth and timezone, its planning.model and horizon_min (the "
                                          "options given here win)."),
    timezone: Optional[str] = typer.Option(None, "--timezone", help=TIMEZONE_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the learned models (same seed, same forecast)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also save the fitted model here."),
    every_step: bool = typer.Option(False, "--every-step", help=f"Print a row for every step; by default a "
                                                                f"forecast of more than {TABLE_ROWS} steps shows "
                                                                f"every n-th and the peak's (--json has all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Forecast the load from the end of the history: q50/q90/q99 per step and the predicted peak."""
    from forecaster.errors import NotEnoughHistory
    from forecaster.models import MODELS, fit_with_fallback, horizon_options

    pol = load_policy_or_exit(policy) if policy else None
    prometheus, query, step, days, timezone = policy_signals(pol, trace, prometheus, query, step, days, timezone)
    if pol is not None:
        model, horizon = model or pol.planning.model, horizon or pol.planning.horizon_min
    model, horizon = model or "ensemble", horizon or 30
    if model not in MODELS:
        fail(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    auth = prometheus_auth(prometheus, prometheus_header, prometheus_token_file, pol)
    history = on_users_clock(load_history(trace, prometheus, query, days, step, end, auth), timezone)
    try:
        fitted, status = fit_with_fallback(model, history, seed=seed, options=horizon_options(max(horizon, 60)))
        result = fitted.predict(history, horizon)
    except (NotEnoughHistory, ValueError) as exc:
        fail(str(exc))
    result.status = status
    if save:
        fitted.save(save)
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    if pol is not None:
        typer.echo(f"service: {pol.service}  (policy {policy})")
    typer.echo(f"history: {history.source}  ({len(history)} x {history.step_min:g} min, "
               f"{len(history.gaps)} gaps)")
    typer.echo(f"model:   {result.model}  [{status}]")
    frame, peak = result.frame, result.peak()
    peak_at = int(frame["q50"].to_numpy().argmax())
    shown, every = table_rows(len(frame), peak_at, None if every_step else TABLE_ROWS)
    typer.echo(f"{'timestamp':<27}{'q50':>12}{'q90':>12}{'q99':>12}")
    for i in shown:
        t, row = frame.index[i], frame.iloc[i]
        mark = "  <- peak" if i == peak_at and every > 1 else ""
        typer.echo(f"{t.isoformat():<27}{row.q50:>12.1f}{row.q90:>12.1f}{row.q99:>12.1f}{mark}")
    if every > 1:
        typer.echo(f"({len(shown)} of {len(frame):,} steps shown: one in {every} and the peak's; "
                   f"--every-step or --json for all)")
    typer.echo(f"peak:    {peak['timestamp']}  q50 {peak['q50']:.1f}  q90 {peak['q90']:.1f}")


@app.command(cls=Command)
def backtest(
    trace: Optional[Path] = typer.Option(None, "--trace", help="CSV trace. Default: the sample trace in data/."),
    prometheus: Optional[str] = typer.Option(None, "--prometheus", help="Prometheus base URL: backtest on the "
                                                                        "history it holds instead of a trace."),
    prometheus_header: list[str] = typer.Option([], "--prometheus-header", help=HEADER_HELP),
    prometheus_token_file: Optional[Path] = typer.Option(None, "--prometheus-token-file", help=TOKEN_FILE_HELP),
    query: Optional[str] = typer.Option(None, "--query", help="PromQL for the request rate per second; "
                                                              "default: the inference nodes' request rate."),
    days: Optional[float] = typer.Option(None, "--days", help="Days of history to read from Prometheus (default 14, "
                                                              "or the policy's signals.history_days)."),
    end: Optional[str] = typer.Option(None, "--end", help=END_HELP),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated models; default: all, "
                                                                "seasonal_naive and the statsforecast peer included."),
    horizon: float = typer.Option(30, "--horizon", min=1, max=MAX_HORIZON_MIN, help="Minutes ahead (at most a week)."),
    test_days: Optional[float] = typer.Option(None, "--test-days", help="Days held out at the end "
                                                                        "(default: min(3, a quarter of the trace))."),
    stride: Optional[float] = typer.Option(None, "--stride", help="Minutes between forecast origins "
                                                                  "(default: 10, closer on a short trace so "
                                                                  "that 20 fit; at least one step)."),
    refit_hours: float = typer.Option(24, "--refit-hours", help="Refit every model this often."),
    timezone: Optional[str] = typer.Option(None, "--timezone", help=TIMEZONE_HELP),
    step: Optional[str] = typer.Option(None, "--step", help="Aggregate the trace to this step first (query "
                                                            "Prometheus at it; default 1m there)."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Backtest on the service's load as the daemon reads "
                                          "it: the policy's Prometheus with its query, step, history_days, "
                                          "prometheus_auth and timezone (the options given here win)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the learned models (same seed, same scores)."),
    store: Optional[str] = typer.Option(None, "--store", help="Also record the result here, for the dashboard."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Rolling-origin backtest of every model at the operational horizon: which one to trust."""
    from forecaster.backtest import DEFAULT_MODELS, BacktestConfig, run_backtest
    from forecaster.errors import HistoryError

    pol = load_policy_or_exit(policy) if policy else None
    prometheus, query, step, days, timezone = policy_signals(pol, trace, prometheus, query, step, days, timezone)
    auth = prometheus_auth(prometheus, prometheus_header, prometheus_token_file, pol)
    history = on_users_clock(load_history(trace, prometheus, query, days, step, end, auth), timezone)
    st = open_store(store) if store else None
    names = [m.strip() for m in models.split(",") if m.strip()] if models else list(DEFAULT_MODELS)
    config = BacktestConfig(horizon_min=horizon, test_days=test_days, stride_min=stride, refit_hours=refit_hours,
                            seed=seed)
    try:
        result = run_backtest(history, names, config)
    except (HistoryError, ValueError) as exc:
        fail(str(exc))
    if st is not None:
        with st:
            record_or_exit(st.record_backtest, result.as_dict())
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    typer.echo(f"{history.source}: {result.origins} forecasts of {horizon:g} min from {result.test_start}")
    cols = ["wape", "pinball_q90", "pinball_q99", "coverage_q90", "coverage_q99", "peak_recall",
            "false_alarm_rate", "fit_s", "predict_ms"]
    typer.echo(f"{'model':<24}" + "".join(f"{c:>17}" for c in cols))
    for name, m in result.models.items():
        if m.get("status") != "ok":
            typer.echo(f"{name:<24}{m.get('status')}")
            continue
        cells = "".join(f"{'-' if m[c] is None else format(m[c], '.4g'):>17}" for c in cols)
        typer.echo(f"{name:<24}{cells}")
    best = result.best()
    if best:
        typer.echo(f"best by pinball q90 (peer excluded): {best}")


BACKENDS = ("simulated", "kubernetes", "dry-run")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        fail(f"unknown backend {backend!r}; choose {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")


def load_policy_or_exit(path: Path):
    from controller.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        fail(str(exc))


def load_trace_or_exit(path: Path):
    from controller.replay import load_trace
    from forecaster.errors import HistoryError

    try:
        return load_trace(path)
    except (HistoryError, ValueError) as exc:
        fail(str(exc))


@app.command(cls=Command)
def replay(
    trace: Optional[Path] = typer.Option(None, "--trace", help="CSV trace to replay (default: the sample trace)."),
    prometheus: Optional[str] = typer.Option(None, "--prometheus", help="Prometheus base URL: replay the history "
                                                                        "it holds (your own service's load) "
                                                                        "instead of a trace."),
    prometheus_header: list[str] = typer.Option([], "--prometheus-header", help=HEADER_HELP + " Default: the "
                                                "policy's signals.prometheus_auth."),
    prometheus_token_file: Optional[Path] = typer.Option(None, "--prometheus-token-file", help=TOKEN_FILE_HELP),
    query: Optional[str] = typer.Option(None, "--query", help="PromQL for the request rate per second; "
                                                              "default: the policy's signals.query, else "
                                                              "the inference nodes' request rate."),
    days: float = typer.Option(14, "--days", help="Days of history to read from Prometheus (the first half "
                                                  "trains, the rest is replayed)."),
    end: Optional[str] = typer.Option(None, "--end", help=END_HELP),
    step: Optional[str] = typer.Option(None, "--step", help="Step to query Prometheus at (default: the "
                                                            "policy's signals.step, 1m)."),
    policy: Path = typer.Option(DEFAULT_POLICY, "--policy", help="Policy YAML (default: configs/policy.yaml)."),
    strategies: str = typer.Option(",".join(("predictive", "reactive", "reactive_spot", "static", "oracle")),
                                   "--strategies", help="Comma-separated: predictive, reactive, reactive_spot, "
                                                        "static, oracle."),
    peak_nodes: Optional[int] = typer.Option(None, "--peak-nodes", min=1,
                                             help="Size capacity so the trace's busiest minute needs N nodes "
                                                  "(overrides the policy's capacity)."),
    store: Optional[str] = typer.Option(None, "--store", help="Write the timeline and decisions here "
                                                              "(sqlite:///path.db, a path, or postgresql://...)."),
    no_sweep: bool = typer.Option(False, "--no-sweep", help="Only the policy's own settings; no frontier sweep."),
    train_days: Optional[float] = typer.Option(None, "--train-days", help="Days of history before the replayed "
                                                                          "window (default: half the trace, 2.5-14)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated cluster and the forecaster."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Replay a trace through the real control cycle: cost and SLA against reactive, static and oracle."""
    from controller.replay import STRATEGIES
    from controller.replay import replay as run_replay

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        fail(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}")
    pol = load_policy_or_exit(policy)
    auth = prometheus_auth(prometheus, prometheus_header, prometheus_token_file, pol)
    if prometheus:
        from controller.replay import trace_from_history

        # The service's own load as the daemon reads it: the policy names the query when it is not the default.
        history = load_history(trace, prometheus, query or pol.signals.query, days, step or pol.signals.step, end,
                               auth)
        try:
            tr = trace_from_history(history, history.source)
        except ValueError as exc:
            fail(str(exc))
    else:
        if query or step or end:
            fail("--query, --step and --end read Prometheus: give --prometheus URL too")
        if trace is None and pol.signals.prometheus:  # the policy names where its own load is
            typer.echo(f"replaying the sample trace; --prometheus {pol.signals.prometheus} replays the history "
                       f"of {pol.service}", err=True)
        tr = load_trace_or_exit(trace or DEFAULT_TRACE)
    st = open_store(store) if store else None
    try:
        doc, chosen = run_replay(tr, pol, names, peak_nodes=peak_nodes, sweep=not no_sweep, train_days=train_days,
                                 seed=seed, policy_name=str(policy))
    except ValueError as exc:
        fail(str(exc))
    if st is not None:
        run = chosen.get("predictive") or next(iter(chosen.values()))
        if run.timeline is not None:
            with st:
                doc["store_run_id"] = record_or_exit(st.record_replay, doc, run,
                                                     tr.times[len(tr.times) - doc["minutes"]:])
    if as_json:
        typer.echo(json.dumps(doc, default=float))
        return
    typer.echo(f"{tr.name}: {doc['minutes']} minutes replayed after {doc['train_days']} days of training; "
               f"{doc['rps_per_node']:.2f} req/s per node, {doc['reserved']} reserved")
    if doc.get("forecast") and doc["forecast"]["status"] != "ok":
        typer.echo(f"forecaster: {doc['forecast']['model']} ({doc['forecast']['status']})")
        for later in doc["forecast"]["models"][1:]:
            typer.echo(f"  from {later['from']}: {later['model']} ({later['status']})")
    typer.echo(f"{'strategy':<15}{'knob':>7}{'cost $':>12}{'SLA':>10}{'busy':>9}{'late':>9}{'node-h':>9}"
               f"{'starts':>8}{'preempt':>8}")
    for name, r in doc["strategies"].items():
        typer.echo(f"{name:<15}{r['knob']:>7g}{r['cost_usd']:>12,.0f}{r['sla_compliance']:>10.4%}"
                   f"{r['busy_share']:>9.3%}{r['late_share']:>9.3%}{r['node_hours']:>9,.0f}{r['cold_starts']:>8}"
                   f"{r['preemptions']:>8}")
    held = doc["strategies"].get("predictive", {}).get("placeholder_node_hours")
    if held is not None:
        r = doc["strategies"]["predictive"]
        typer.echo(f"placeholders (kubernetes.placeholder): predictive's would hold {held:,.0f} node-hours warm on "
                   f"a cluster, {held / max(r['node_hours'], 1e-9):.1%} beyond its {r['node_hours']:,.0f}; "
                   f"not simulated, so neither their cost nor the shorter starts they buy is above")
    typer.echo("cost reaching each SLA level (no sweep: the one run at the policy's settings; - where it falls short):"
               if no_sweep else "cheapest cost reaching each SLA level:")
    for name, levels in doc["cost_at_sla"].items():
        cells = "  ".join(f"{k}: {'-' if v is None else f'${v:,.0f}'}" for k, v in levels.items())
        typer.echo(f"  {name:<15}{cells}")
    if st is not None and "store_run_id" in doc:
        typer.echo(f"timeline written to {st.name} (run {doc['store_run_id']})")


@app.command("recommend-reserved", cls=Command)
def recommend_reserved_cmd(
    trace: Path = typer.Option(DEFAULT_TRACE, "--trace", help="CSV trace of the history."),
    policy: Path = typer.Option(DEFAULT_POLICY, "--policy", help="Policy YAML (prices, capacity, spot share)."),
    peak_nodes: Optional[int] = typer.Option(None, "--peak-nodes", min=1,
                                             help="Size capacity so the trace's busiest minute needs N nodes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: the count, the costs of each "
                                                       "count, the layers' use."),
) -> None:
    """Recommend how many nodes to reserve, from the history's need and the prices."""
    from controller.replay import rps_per_node_for
    from controller.reserved import recommend_reserved

    pol = load_policy_or_exit(policy)
    tr = load_trace_or_exit(trace)
    result = recommend_reserved(tr.arrivals / 60.0, pol, rps_per_node_for(pol, tr, peak_nodes))
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"reserve {result['reserved']} nodes: the cheapest count for this history with spot and "
               f"on-demand blended as the policy says")
    typer.echo(f"over {result['hours']:,.0f} h of history: ${result['cost_usd']:,.0f} with them, "
               f"${result['cost_usd_without']:,.0f} without")


@app.command("check-policy", cls=Command)
def check_policy(
    paths: Optional[list[Path]] = typer.Argument(None, help="Policy files, or folders of them (as the daemon's "
                                                            "--policy). Default: configs/policy.yaml."),
    backend: str = typer.Option("simulated", "--backend", help="Also check what this backend needs "
                                                               "(kubernetes: a Deployment per class)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: ok, every problem, and each "
                                                       "valid policy with its defaults filled in."),
    schema: bool = typer.Option(False, "--schema", help="Print the policy's JSON Schema (for editors) and exit."),
    rbac: bool = typer.Option(False, "--rbac", help="With --backend kubernetes: print the least-privilege "
                                                    "ServiceAccount, Roles and RoleBindings the controller needs "
                                                    "for these policies (kubectl apply -f -)."),
    lease_name: str = typer.Option("peakpilot", "--lease-name", help="With --rbac: the Lease the controller holds "
                                                                      "(`peakpilot run --lease-name`)."),
) -> None:
    """Validate policy files before the daemon loads them; exit 2 naming every key that is wrong."""
    from controller.policy import load_policies, policy_files, policy_schema

    if schema:
        typer.echo(json.dumps(policy_schema(), indent=2))
        return
    check_backend(backend)
    if rbac and backend != "kubernetes":
        fail("--rbac is what the kubernetes backend needs: add --backend kubernetes")
    files = policy_files(paths or [DEFAULT_POLICY])
    if not files:
        fail(f"no policy files (*.yaml) in {', '.join(map(str, paths))}")
    policies, problems = load_policies(files, backend)
    messages = [m for ms in problems.values() for m in ms]
    if rbac:
        from controller.rbac import rbac_command, render_rbac

        for message in messages:
            typer.echo(f"error  {message}", err=True)
        if problems:
            raise typer.Exit(2)
        how = rbac_command(lease_name, paths or [DEFAULT_POLICY])
        typer.echo(render_rbac(list(policies.values()), lease_name, how), nl=False)
        return
    if as_json:
        doc = {"ok": not problems, "problems": messages,
               "policies": {str(p): pol.model_dump(mode="json") for p, pol in policies.items() if p not in problems}}
        typer.echo(json.dumps(doc))
    else:
        for path, pol in policies.items():
            if path in problems:
                continue
            typer.echo(f"ok     {path}: service {pol.service}, SLO {pol.slo.compliance_target:g} within "
                       f"{pol.slo.latency_ms:g} ms, reserved {pol.reserved.count}, spot up to {pol.spot.max_share:.0%} of the "
                       f"{'expected load' if pol.spot.share_of == 'expected' and pol.spot.max_share else 'fleet'}, "
                       f"plan {pol.planning.quantile} +{pol.planning.headroom:.0%}, {len(pol.events)} events"
                       + (f", calendar on {pol.signals.timezone}" if pol.signals.timezone else ""))
        for message in messages:
            typer.echo(f"error  {message}", err=True)
    if problems:
        raise typer.Exit(2)


def say_missing_permissions(api, policies, lease_name: str, shadow: bool, given: list[Path],
                            only: str | None = None) -> None:
    """Ask the API server, before the first cycle, whether this account may do what the policies need;
    say what it may not, and how to grant it (controller/preflight.py)."""
    from controller.preflight import missing_permissions
    from controller.rbac import needed, rbac_command

    wanted = [p for p in needed(policies, lease_name, shadow) if only is None or (p[0] == only and p[2] != "leases")]
    try:
        missing = missing_permissions(api, wanted)
    except Exception as exc:  # the check must not stop a start; the cycles will say what fails
        logging.getLogger("peakpilot.daemon").warning("could not check the controller's permissions: %s", exc)
        return
    if missing:
        fix = f"{rbac_command(lease_name, given)} | kubectl apply -f -"
        logging.getLogger("peakpilot.daemon").error(
            "the controller's account may not %s; what needs it fails until it is granted: %s",
            "; ".join(missing), fix)


@app.command("run", cls=Command)
def run_daemon(
    policy: Optional[list[Path]] = typer.Option(None, "--policy", help="Policy YAML, or a folder of them; "
                                                                       "repeat for several services. Required "
                                                                       "with --backend kubernetes; otherwise the "
                                                                       "default is configs/policy.yaml."),
    backend: str = typer.Option("simulated", "--backend", help="simulated | kubernetes | dry-run"),
    store: str = typer.Option("sqlite:///runs/daemon/peakpilot.db", "--store", envvar="PEAKPILOT_STORE",
                              help="Where to record: sqlite:///path.db, a path, or postgresql://user:pw@host/db "
                                   "(a shared database lets a new leader resume where the old one stopped)."),
    once: bool = typer.Option(False, "--once", help="Run one cycle and exit (0, or 1 if it failed)."),
    interval_s: float = typer.Option(60, "--interval-s", min=0.1, help="Seconds between control cycles."),
    retrain_cron: str = typer.Option("0 */6 * * *", "--retrain-cron", help="When to retrain (crontab, UTC)."),
    metrics_port: int = typer.Option(0, "--metrics-port", help="Serve /metrics and /health here (0: off)."),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host",
                                     help="Address for /metrics and /health (loopback by default; 0.0.0.0 in a pod, "
                                          "so that the kubelet's probes and Prometheus reach it)."),
    trace: Path = typer.Option(DEFAULT_TRACE, "--trace", help="Load for services without Prometheus: this trace, "
                                                             "played from its middle on the daemon's clock."),
    selector: Optional[str] = typer.Option(None, "--selector", help="Only services whose policy labels match, "
                                                                    "e.g. team=chat."),
    shadow: bool = typer.Option(False, "--shadow", help="Read the cluster, record what would be done, act on nothing."),
    lease_name: Optional[str] = typer.Option(None, "--lease-name", help="Lease for leader election (kubernetes); "
                                                                        "default peakpilot[-selector]."),
    kubeconfig: Optional[str] = typer.Option(None, "--kubeconfig", help="kubernetes: this kubeconfig (default: "
                                                                        "the pod's ServiceAccount, else "
                                                                        "KUBECONFIG or ~/.kube/config)."),
    retention_days: float = typer.Option(30, "--retention-days", help="Keep this much timeline in the store."),
) -> None:
    """Run the controller as a daemon: every cycle forecast, plan, act and record, for every service."""
    import os
    import socket

    from controller.daemon import Daemon, utc_now
    from controller.daemon_metrics import DaemonMetrics
    from controller.service_controller import ServiceController
    from controller.policy import PolicyError, load_policies, policy_files, selected
    from controller.policy_watch import PolicyWatch
    from controller.replay import load_trace
    from controller.service_parts import ServiceParts
    check_backend(backend)
    if not policy:
        if backend == "kubernetes":
            fail("--backend kubernetes needs --policy: the policy files (or a folder of them) of the services to "
                 "scale, as deploy/controller.yaml gives --policy /etc/peakpilot")
        policy = [DEFAULT_POLICY]
        typer.echo(f"no --policy: running the default policy {DEFAULT_POLICY} on the {backend} backend", err=True)
    paths = policy_files(policy)
    if not paths:
        fail(f"no policy files (*.yaml) in {', '.join(map(str, policy))}")
    policies, problems = load_policies(paths, backend)
    if problems:
        fail("; ".join(m for ms in problems.values() for m in ms))
    if selector:
        policies = {p: pol for p, pol in policies.items() if selected(pol, selector)}
        if not policies:
            fail(f"no policy has the label {selector}")
    logging.getLogger().setLevel(logging.INFO)
    # Two lines a cycle ("Running job", "executed successfully") would bury the decisions; the scheduler's
    # warnings (a cycle skipped because the last one still runs, a misfire) still show.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    metrics = DaemonMetrics()
    st = open_store(store)
    api = lease = None
    if backend == "kubernetes":
        from controller.kube_client import KubeConfigError, api_client
        from controller.lease import LeaseLock, lease_duration_s

        try:
            api = api_client(kubeconfig=kubeconfig)
        except KubeConfigError as exc:
            fail(str(exc))
        first = next(iter(policies.values()))
        name = lease_name or ("peakpilot" + (f"-{selector.replace('=', '-')}" if selector else ""))
        lease = LeaseLock(api, first.kubernetes.namespace, name, f"{socket.gethostname()}-{os.getpid()}",
                          duration_s=lease_duration_s(interval_s))
        say_missing_permissions(api, list(policies.values()), name, shadow, list(policy))
    # A trace the services at start need is read now (one that cannot be read ends the start, not a
    # cycle); a policy file added later that needs one reads it then.
    loaded = load_trace_or_exit(trace) if any(p.signals.prometheus is None for p in policies.values()) else None
    parts = ServiceParts(backend, utc_now, api=api, shadow=shadow, selector=selector,
                         trace=(lambda: loaded) if loaded is not None else (lambda: load_trace(trace)))

    def make_service(path: Path) -> ServiceController:
        service = ServiceController(path, None, None, st, metrics, shadow=shadow, parts=parts,
                                    acting=(lambda: lease.is_leader) if lease else (lambda: True),
                                    keep_minutes=int(retention_days * 1440))
        if api is not None and path not in policies:  # a file added while running: its pools' namespace
            say_missing_permissions(api, [next(iter(policies.values())), service.policy], lease.name, shadow,
                                    list(policy), only=service.policy.kubernetes.namespace)
        return service

    services = []
    for path in policies:
        try:
            services.append(make_service(path))
        except PolicyError as exc:
            fail(str(exc))
    daemon = Daemon(services, metrics, interval_s, retrain_cron, lease=lease,
                    watch=PolicyWatch(policy, backend, parts.selects), make_service=make_service)
    if metrics_port:
        daemon.serve_metrics(metrics_port, metrics_host)
    if once:
        daemon.retrain_all()
        ok = daemon.cycle_all()
        for name, last in daemon.last_cycle.items():
            typer.echo(f"{name}: ok ({last['mode']}) {last['reason']}" if last["ok"]
                       else f"{name}: FAILED: {last.get('error')}")
        raise typer.Exit(0 if ok else 1)
    daemon.run()


@app.command(cls=Command)
def status(
    store: str = typer.Option("sqlite:///runs/daemon/peakpilot.db", "--store", envvar="PEAKPILOT_STORE",
                              help="The store the daemon writes (as `run` reads it: the same variable and "
                                   "default); read-only."),
    service: Optional[str] = typer.Option(None, "--service", help="Only this service."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: {\"store\", \"services\": [...]}."),
) -> None:
    """What each service's controller last decided and why, from the store the daemon writes.

    Load, forecast, nodes ready against asked for, by class, each class's reason; flags an old last cycle."""
    from controller.status import render_status, service_status
    from controller.store import Store, StoreError

    try:
        with Store(store, readonly=True) as st:
            found = service_status(st)
            name = st.name
    except (StoreError, FileNotFoundError) as exc:
        fail(f"{exc} (`peakpilot run --store` writes it)")
    if service is not None:
        found = [s for s in found if s["service"] == service]
        if not found:
            fail(f"no service {service!r} in the store {name}")
    elif not found:
        fail(f"the store {name} holds no cycle of a daemon yet (`peakpilot run` records one a cycle)")
    if as_json:
        typer.echo(json.dumps({"store": name, "services": found}))
    else:
        typer.echo(render_status(found))


@app.command(cls=Command)
def serve(
    model: str = typer.Option("builtin", "--model", help="builtin[:tiny|small|medium], hf:PATH (a Hugging Face "
                                                          "model directory or hub id; the hf extra), a TorchScript "
                                                          "file, or module:factory returning (nn.Module, tokenizer)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 in a pod)."),
    port: int = typer.Option(8000, "--port", help="Port to serve on."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most requests generating together; "
                                   "a request joins the batch within 4 steps once one of these rows is free."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", min=0, help="Longest a request "
                                     "waits for others to start with it while nothing is generating."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Prompts waiting for a row before answering "
                                    "429 busy; a request's prompts are admitted whole, one with more is a 400."),
    max_prompt_tokens: int = typer.Option(512, "--max-prompt-tokens", min=1, help="Longest prompt a request may "
                                          "send, in tokens (a longer one is a 400)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Most tokens a request may ask for "
                                       "(its max_tokens; a chat request that asks nothing gets up to this)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", min=2, help="Most tokens, prompt and "
                                                "answer together, a request may take; default: the model's own "
                                                "context, where it says (over it is refused at start)."),
    drain_seconds: float = typer.Option(30.0, "--drain-seconds", help="Deadline for in-flight work on SIGTERM."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: dynamic int8 quantization of Linear "
                                                                    "layers (CPU)."),
    dtype: str = typer.Option("auto", "--dtype", help="float32, float16 or bfloat16; auto: float32 on a CPU, on a "
                                                       "GPU the model's own (bfloat16 as float16 where the GPU has "
                                                       "none)."),
    no_warmup: bool = typer.Option(False, "--no-warmup", help="Skip warm-up and the memory probe (for measuring a cold start)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch CPU threads (default: all cores)."),
    slo_ms: Optional[float] = typer.Option(None, "--slo-ms", help="Answer 429 at once when a request that must "
                                                                  "wait for a row would be late for this latency "
                                                                  "target (milliseconds); one that finds a row free "
                                                                  "starts."),
    slo_on: str = typer.Option("answer", "--slo-on", help="What --slo-ms bounds: 'answer' (the whole answer) or "
                                                          "'first-token' (a streamed answer's first token: a chat "
                                                          "service's target)."),
    engine: str = typer.Option("process", "--engine", help="Where the model runs: 'process' (its own, so "
                                                            "generation never waits on the HTTP side's GIL) or "
                                                            "'thread' (in the server's process)."),
    batching: str = typer.Option("continuous", "--batching", help="'continuous': a request joins the running batch "
                                 "within 4 steps; 'run-to-end': the next batch starts when the last one ends."),
    oom_backoff_s: float = typer.Option(600.0, "--oom-backoff-s", min=0, help="After a batch runs out of the "
                                        "device's memory and the node halves its width: seconds before it tries "
                                        "twice as many rows again, doubled each time it runs out again (0: never)."),
    served_model_name: list[str] = typer.Option([], "--served-model-name", help="A name the API gives the model "
                                                "(vLLM's): /v1/models lists them, an answer carries the one asked "
                                                "for (the first where a request names none), and a request naming "
                                                "another model is a 404; repeat for several. Default: the model's "
                                                "own name, and any name a request sends is taken."),
    api_key: list[str] = typer.Option([], "--api-key", envvar="PEAKPILOT_API_KEY", help="A key the /v1 endpoints "
                                      "ask for as 'Authorization: Bearer KEY' (OpenAI's SDKs send their api_key so); "
                                      "repeat it for several (a rotation), or several in the variable, separated by "
                                      "spaces. Default: none asked for.", show_envvar=True),
    access_log: bool = typer.Option(False, "--access-log", help="Log a line per request (off: /metrics counts "
                                                                "every outcome)."),
) -> None:
    """Serve a PyTorch model: OpenAI-compatible /v1/completions and /v1/chat/completions, /health, /ready, /metrics."""
    from inference_node.engine import DTYPE_NAMES, ENGINES
    from inference_node.config import BATCHING, SLO_ON, NodeConfig
    from inference_node.server import NodeFailed
    from inference_node.server import serve as run_server

    if engine not in ENGINES:
        fail(f"unknown engine {engine!r}; choose {' or '.join(ENGINES)}")
    if batching not in BATCHING:
        fail(f"unknown batching {batching!r}; choose {' or '.join(BATCHING)}")
    if slo_on not in SLO_ON:
        fail(f"unknown --slo-on {slo_on!r}; choose {' or '.join(SLO_ON)}")
    if dtype not in DTYPE_NAMES:
        fail(f"unknown dtype {dtype!r}; choose {', '.join(DTYPE_NAMES[:-1])} or {DTYPE_NAMES[-1]}")
    logging.getLogger().setLevel(logging.INFO)
    try:
        run_server(NodeConfig(model=model, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                              max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_new_tokens,
                              max_model_len=max_model_len, drain_seconds=drain_seconds, warmup=not no_warmup,
                              quantize=quantize, dtype=dtype, threads=threads, slo_ms=slo_ms, slo_on=slo_on,
                              engine=engine, batching=batching, oom_backoff_s=oom_backoff_s,
                              served_model_names=tuple(served_model_name), api_keys=tuple(k for k in api_key if k)),
                   host, port, access_log=access_log)
    except NodeFailed as exc:
        fail(str(exc), 1)


@app.command(cls=Command)
def profile(
    url: str = typer.Option(..., "--url", help="Base URL of a ready node."),
    slo_ms: float = typer.Option(..., "--slo-ms", help="Latency target for p99, milliseconds."),
    seconds: float = typer.Option(5.0, "--seconds", help="Seconds of load per measured rate."),
    start_rps: float = typer.Option(2.0, "--start-rps", help="The first rate measured; it doubles until the "
                                                             "SLO breaks, then bisects (4 more steps)."),
    max_rps: float = typer.Option(2000.0, "--max-rps", help="The highest rate sent: a node still within the "
                                                            "SLO there is reported at it, as capped."),
    max_tokens: int = typer.Option(16, "--max-tokens", help="Tokens each answer has (ignore_eos: the model "
                                                            "is kept from ending it sooner)."),
    stream: bool = typer.Option(False, "--stream", help="Streamed answers, the SLO on the p99 of the first text "
                                                        "read (a chat service's), not of the whole answer."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_FIELD_HELP),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="PEAKPILOT_API_KEY", show_envvar=True,
                                          help=API_KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: rps_per_node and every "
                                                       "measured step."),
) -> None:
    """Measure the requests/s a node sustains within a latency SLO; print it in the policy's form."""
    import asyncio

    from inference_node.loadgen import describe_errors, request_body
    from inference_node.loadgen import profile as run_profile

    def show(step: dict) -> None:
        errors = describe_errors(step["errors"])
        typer.echo(f"  {step['rps']:>8.2f} req/s  p99 {step['p99_ms']} ms  busy {step['busy']}"
                   + (f"  errors: {errors}" if errors else "") + f"  {'ok' if step['within_slo'] else 'over'}",
                   err=True)

    if not 0 < start_rps <= max_rps:
        fail(f"--start-rps ({start_rps:g}) must be above 0 and at most --max-rps ({max_rps:g})")
    if start_rps * seconds < 1:
        fail(f"--seconds {seconds:g} at --start-rps {start_rps:g} sends no request: give --seconds "
             f"{1 / start_rps:g} or more, or a higher --start-rps")
    require_reachable(url, api_key)
    try:
        result = asyncio.run(run_profile(url, slo_ms, seconds, start_rps, max_rps, progress=show,
                                         body=request_body(max_tokens, stream, model), api_key=api_key))
    except Exception as exc:  # httpx's timeouts say nothing in str(): name the kind
        fail(f"{url}: {type(exc).__name__}" + (f": {exc}" if str(exc) else ""))
    if as_json:
        typer.echo(json.dumps(result))
        return
    start = result["start_seconds"]
    typer.echo("capacity:")
    measured = "p99 of the first text" if stream else "p99"
    typer.echo(f"  rps_per_node: {result['rps_per_node']}   # {measured} within {slo_ms:g} ms "
               f"({result['model']}, max_tokens {max_tokens}), measured by peakpilot profile")
    if result["capped"]:
        typer.echo(f"# at least: still within the SLO at --max-rps ({max_rps:g} req/s); raise it to find the limit")
    if start:
        typer.echo(f"# node start: model load {start.get('model_load', 0):.1f} s, memory probe "
                   f"{start.get('memory_probe', 0):.1f} s, warm-up {start.get('warmup', 0):.1f} s, process start to "
                   f"ready {start.get('total', 0):.1f} s (add boot and image pull for lead_time)")


@app.command(cls=Command)
def loadgen(
    trace: Path = typer.Option(DEFAULT_TRACE, "--trace", help="CSV trace whose arrivals to replay."),
    url: str = typer.Option(..., "--url", help="Base URL of the node (or load balancer)."),
    speedup: float = typer.Option(1.0, "--speedup", help="Compress time by this factor."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="Multiply the trace's counts (e.g. 0.001)."),
    start: Optional[str] = typer.Option(None, "--start", help="Start at this timestamp of the trace."),
    max_tokens: int = typer.Option(16, "--max-tokens", help="Tokens each request asks for."),
    stream: bool = typer.Option(False, "--stream", help="Ask for streamed answers, and report when each "
                                                        "one's first text was read too."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_FIELD_HELP),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="PEAKPILOT_API_KEY", show_envvar=True,
                                          help=API_KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: outcomes and latency "
                                                       "percentiles."),
) -> None:
    """Replay a trace's arrivals open-loop over HTTP; report outcomes and latency percentiles.

    With --stream the answers are streamed, and when each one's first text was read is reported too."""
    import asyncio

    from inference_node.loadgen import describe_errors, request_body, run_open_loop, schedule_from_counts

    history = load_history(trace, None, None, 0, None)
    counts = history.counts
    if start:
        counts = counts[counts.index >= start]
    times = schedule_from_counts(counts.to_numpy(), history.step.total_seconds(), speedup, rate_scale, duration)
    if len(times) == 0:
        fail("nothing to send: the slice is empty (check --start, --duration, --rate-scale)")
    require_reachable(url, api_key)
    typer.echo(f"sending {len(times)} requests over {times[-1]:.0f} s", err=True)
    result = asyncio.run(run_open_loop(url, times, request_body(max_tokens, stream, model),
                                       api_key=api_key)).summary()
    if as_json:
        typer.echo(json.dumps(result))
        return
    o, lat = result["outcomes"], result["latency_ms"]
    kinds = describe_errors(result["errors"])
    typer.echo(f"sent {result['sent']} in {result['seconds']} s ({result['rate_rps']} req/s): "
               f"ok {o['ok']}, busy {o['busy']}, error {o['error']}" + (f" ({kinds})" if kinds else ""))
    typer.echo(f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
    if stream:
        first = result["first_text_ms"]
        typer.echo(f"first text ms: p50 {first['p50']}  p90 {first['p90']}  p99 {first['p99']}  max {first['max']}")


@app.command(cls=Command)
def dashboard(
    store: str = typer.Option(str(default_runs_dir() / "demo" / "peakpilot.db"),
                              "--store", envvar="PEAKPILOT_STORE",
                              help="Store to show (sqlite:///path.db, a path, or a postgresql:// URL); "
                                   "read-only. The controller's, from the same variable as `run` reads."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default: in a pod, "
                                                           "reached through kubectl port-forward)."),
    port: int = typer.Option(8501, "--port", help="Port to serve on."),
) -> None:
    """Open the Streamlit dashboard: forecast vs actual, capacity, cost, SLA, decisions, what-if."""
    import os

    app_path = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    env = dict(os.environ, PEAKPILOT_STORE=store)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", host, "--server.port",
           str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "viewer"]  # no "Deploy" (to Streamlit's cloud) or developer menu
    typer.echo(f"dashboard on http://{host}:{port} (store {store})", err=True)
    sys.stderr.flush()
    # Become Streamlit rather than wait on it as a child: a SIGTERM (a container stopping, `kill`) then
    # reaches the server itself, where it left a child serving on as an orphan.
    os.execve(sys.executable, cmd, env)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
