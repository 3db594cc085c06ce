"""Forecast targets on every real trace that spans at least 3 days; prints one JSON object.

Targets (issue 3), all models and peers in one run, 30-minute horizon:
* the best model's pinball q90 is >= 25% below seasonal_naive's, >= 10% below the statsforecast
  peer's, and below Prophet's;
* its q90 coverage is in [0.85, 0.95] and q99 coverage >= 0.97;
* its peak recall is above every baseline's at a false-alarm rate no higher than theirs;
* on 14 days at 1-minute steps: Prophet fit <= 30 s, torch fit <= 60 s (the ensemble, which holds it,
  too), one prediction <= 50 ms.

Usage: python bench/forecast_targets.py [--traces DIR] [--only NAME ...] [--refit-hours 24]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forecaster.backtest import BacktestConfig, origins_for, run_backtest  # noqa: E402
from forecaster.csv_source import load_csv  # noqa: E402
from forecaster.metrics import peak_scores, pinball  # noqa: E402
from forecaster.models import make_model  # noqa: E402
from forecaster.models.base import windows  # noqa: E402

# The baselines the issue names; recent_level is reported beside them (README: its peak point).
BASELINES = ("seasonal_naive", "prophet", "statsforecast_autoets")


def check(models: dict, best: str) -> dict:
    b = models[best]
    out = {
        "pinball_vs_seasonal_naive": 1 - b["pinball_q90"] / models["seasonal_naive"]["pinball_q90"],
        "pinball_vs_peer": 1 - b["pinball_q90"] / models["statsforecast_autoets"]["pinball_q90"],
        "pinball_below_prophet": b["pinball_q90"] < models["prophet"]["pinball_q90"],
        "coverage_q90_ok": 0.85 <= b["coverage_q90"] <= 0.95,
        "coverage_q99_ok": b["coverage_q99"] >= 0.97,
    }
    out["pinball_targets_met"] = (out["pinball_vs_seasonal_naive"] >= 0.25 and out["pinball_vs_peer"] >= 0.10
                                  and out["pinball_below_prophet"])
    peaks = []
    for name in BASELINES:
        m = models[name]
        if b["peak_recall"] is None or m["peak_recall"] is None:
            continue
        peaks.append(b["peak_recall"] > m["peak_recall"] and b["false_alarm_rate"] <= m["false_alarm_rate"])
    out["peak_target_met"] = all(peaks) if peaks else None
    return out


def peak_curve(result, name: str) -> list[dict]:
    """Recall and false alarms of ``name`` with its q90 spread over q50 scaled by each factor: the
    trade-off its band allows, to compare with the baselines' single points."""
    f = result.forecasts[name]
    out = []
    for k in np.round(np.arange(0.5, 4.01, 0.1), 2):
        p = peak_scores(result.actual, f[..., 0] + k * (f[..., 1] - f[..., 0]), result.recent_max)
        out.append({"spread_factor": float(k), "peak_recall": p["peak_recall"], "false_alarm_rate": p["false_alarm_rate"]})
    return out


def lookahead_q90(history, result, window_min: float = 60) -> float:
    """Pinball q90 of a forecaster that knows the future: the rolling q90 of the actual load over a
    centred ``window_min`` window. Not achievable; a yardstick for how much of the loss is noise."""
    w = max(3, history.steps_for(window_min) | 1)
    q = pd.Series(history.counts.to_numpy()).rolling(w, center=True, min_periods=1).quantile(0.9).to_numpy()
    positions = origins_for(history, result.config)
    return pinball(result.actual, windows(q, positions, 0, result.actual.shape[1]), 0.9)


def curve_check(models: dict, curve: list[dict]) -> dict:
    """Could any setting of the best model's band meet the peak target? It needs more recall than
    every baseline at no more false alarms than any of them."""
    base = [models[n] for n in BASELINES if models[n].get("peak_recall") is not None]
    need_recall = max(m["peak_recall"] for m in base)
    max_far = min(m["false_alarm_rate"] for m in base)
    within = [p["peak_recall"] for p in curve if p["false_alarm_rate"] is not None and p["false_alarm_rate"] <= max_far]
    best = max(within, default=None)
    return {"needs_recall_above": need_recall, "at_false_alarms_at_most": max_far,
            "curve_recall_there": best, "some_setting_meets": best is not None and best > need_recall}


def timing_14d() -> dict:
    """Fit and predict times on 14 days of 1-minute data (the NASA July trace)."""
    history = load_csv(ROOT.parent / "shared" / "traces" / "nasa_http_1995_jul.csv")
    history = history.tail(pd.Timedelta(days=14))
    out = {"intervals": len(history)}
    for name in ("prophet", "torch", "lightgbm", "ensemble", "recent_level"):
        model = make_model(name).fit(history)
        started = time.perf_counter()
        for _ in range(20):
            model.predict(history, 30)
        out[name] = {"fit_s": round(model.fit_seconds, 2),
                     "predict_ms": round((time.perf_counter() - started) / 20 * 1000, 2)}
    # The issue names Prophet (30 s) and torch (60 s); the ensemble, which holds torch, is held to torch's.
    out["targets_met"] = (out["prophet"]["fit_s"] <= 30 and max(out[n]["fit_s"] for n in ("torch", "ensemble")) <= 60
                          and max(m["predict_ms"] for m in out.values() if isinstance(m, dict)) <= 50)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=ROOT.parent / "shared" / "traces")
    parser.add_argument("--only", nargs="*", help="trace file names (default: every trace >= 3 days)")
    parser.add_argument("--refit-hours", type=float, default=24)
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    logging.getLogger("cmdstanpy").disabled = True
    report: dict = {"horizon_min": 30, "refit_hours": args.refit_hours, "traces": {}}
    for path in sorted(args.traces.glob("*.csv")):
        if args.only and path.name not in args.only:
            continue
        history = load_csv(path)
        if history.span < pd.Timedelta(days=3):
            continue
        started = time.perf_counter()
        result = run_backtest(history, config=BacktestConfig(horizon_min=30, refit_hours=args.refit_hours),
                              keep_forecasts=True)
        best = result.best()
        models = {n: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
                  for n, m in result.models.items()}
        curve = peak_curve(result, best)
        report["traces"][path.name] = {"step_min": history.step_min, "origins": result.origins, "best": best,
                                       "seconds": round(time.perf_counter() - started, 1),
                                       "checks": check(result.models, best), "models": models,
                                       "lookahead_q90_pinball": round(lookahead_q90(history, result), 4),
                                       "peak_curve_best": curve, "peak_curve_check": curve_check(result.models, curve)}
        print(f"{path.name}: best {best} {report['traces'][path.name]['checks']}", file=sys.stderr)
    if not args.no_timing:
        report["timing_14d_1min"] = timing_14d()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
