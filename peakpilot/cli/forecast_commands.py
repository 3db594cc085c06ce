"""``forecast`` and ``backtest``: the load ahead from the end of the history, and which model to trust."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from peakpilot.cli.app import Command, app
from peakpilot.cli.common import DAYS_MAX, above_zero, fail, load_policy_or_exit, open_store, record_or_exit
from peakpilot.cli.history_options import (CountColumn, Days, End, PrometheusHeaders, PrometheusTokenFile, Query,
                                           RateColumn, TimestampColumn, TimestampZone, Timezone, csv_columns,
                                           load_history, on_users_clock, policy_signals, prometheus_auth)

# A week: beyond it every model but seasonal_naive is extrapolating, and the learned ones train one output
# per step (a week at 1-minute steps is 10,080). The controller plans at most 240 minutes ahead.
MAX_HORIZON_MIN = 7 * 24 * 60

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
    timestamp_column: TimestampColumn = None,
    count_column: CountColumn = None,
    rate_column: RateColumn = None,
    timestamp_zone: TimestampZone = None,
    prometheus: Optional[str] = typer.Option(None, "--prometheus", help="Prometheus base URL to read history from."),
    prometheus_header: PrometheusHeaders = [],
    prometheus_token_file: PrometheusTokenFile = None,
    query: Query = None,
    days: Days = None,
    end: End = None,
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
    timezone: Timezone = None,
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the learned models (same seed, same forecast)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also save the fitted model here."),
    every_step: bool = typer.Option(False, "--every-step", help=f"Print a row for every step; by default a "
                                                                f"forecast of more than {TABLE_ROWS} steps shows "
                                                                f"every n-th and the peak's (--json has all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Forecast the load from the end of the history: q50/q90/q99 per step and the predicted peak."""
    from forecaster.errors import NotEnoughHistory
    from forecaster.models import MODELS, fit_with_fallback, horizon_options

    above_zero(("--days", days, DAYS_MAX))
    pol = load_policy_or_exit(policy) if policy else None
    prometheus, query, step, days, timezone = policy_signals(pol, trace, prometheus, query, step, days, timezone)
    if pol is not None:
        model, horizon = model or pol.planning.model, horizon or pol.planning.horizon_min
    model, horizon = model or "ensemble", horizon or 30
    if model not in MODELS:
        fail(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    auth = prometheus_auth(prometheus, prometheus_header, prometheus_token_file, pol)
    columns = csv_columns(timestamp_column, count_column, rate_column, timestamp_zone)
    history = on_users_clock(load_history(trace, prometheus, query, days, step, end, auth, columns), timezone)
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
    timestamp_column: TimestampColumn = None,
    count_column: CountColumn = None,
    rate_column: RateColumn = None,
    timestamp_zone: TimestampZone = None,
    prometheus: Optional[str] = typer.Option(None, "--prometheus", help="Prometheus base URL: backtest on the "
                                                                        "history it holds instead of a trace."),
    prometheus_header: PrometheusHeaders = [],
    prometheus_token_file: PrometheusTokenFile = None,
    query: Query = None,
    days: Days = None,
    end: End = None,
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated models; default: all, "
                                                                "seasonal_naive and the statsforecast peer included."),
    horizon: float = typer.Option(30, "--horizon", min=1, max=MAX_HORIZON_MIN, help="Minutes ahead (at most a week)."),
    test_days: Optional[float] = typer.Option(None, "--test-days", help="Days held out at the end "
                                                                        "(default: min(3, a quarter of the trace))."),
    stride: Optional[float] = typer.Option(None, "--stride", help="Minutes between forecast origins "
                                                                  "(default: 10, closer on a short trace so "
                                                                  "that 20 fit; at least one step)."),
    refit_hours: float = typer.Option(24, "--refit-hours", help="Refit every model this often."),
    timezone: Timezone = None,
    step: Optional[str] = typer.Option(None, "--step", help="Aggregate the trace to this step first (query "
                                                            "Prometheus at it; default 1m there)."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Backtest on the service's load as the daemon reads "
                                          "it: the policy's Prometheus with its query, step, history_days, "
                                          "prometheus_auth and timezone (the options given here win)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the learned models (same seed, same scores)."),
    store: Optional[str] = typer.Option(None, "--store", help="Also record the result here, for the dashboard."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Rolling-origin backtest of every model at the operational horizon: which one to trust."""
    from forecaster.backtest import DEFAULT_MODELS, BacktestConfig, run_backtest
    from forecaster.errors import HistoryError

    above_zero(("--refit-hours", refit_hours, 24 * DAYS_MAX), ("--days", days, DAYS_MAX),
               ("--stride", stride, 1440 * DAYS_MAX), ("--test-days", test_days, DAYS_MAX))
    pol = load_policy_or_exit(policy) if policy else None
    prometheus, query, step, days, timezone = policy_signals(pol, trace, prometheus, query, step, days, timezone)
    auth = prometheus_auth(prometheus, prometheus_header, prometheus_token_file, pol)
    columns = csv_columns(timestamp_column, count_column, rate_column, timestamp_zone)
    history = on_users_clock(load_history(trace, prometheus, query, days, step, end, auth, columns), timezone)
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
