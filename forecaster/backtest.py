"""Rolling-origin backtest at the operational horizon: which model to trust.

Over the last part of a trace, every ``stride`` a forecast for the next ``horizon`` minutes is
issued from the history before that origin and compared with what happened. Models are refitted
every ``refit_hours`` on the history before the refit time (never on the future), exactly as the
daemon retrains on a schedule. Every model, the outside peer included, sees the same origins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecaster.errors import HistoryError, NotEnoughHistory
from forecaster.history import History
from forecaster.metrics import RECENT_MINUTES, score
from forecaster.models import MODELS, PEERS, make_model
from forecaster.models.base import Forecaster, windows
from forecaster.models.ensemble import EnsembleForecaster
from forecaster.progress import progress as show_progress

# Every model (the ensemble and its members too; a member's fits are the ensemble's, not repeated) and the peer.
DEFAULT_MODELS = tuple(MODELS)


@dataclass
class BacktestConfig:
    horizon_min: float = 30
    test_days: float | None = None  # default: min(3 days, a quarter of the history)
    stride_min: float | None = None  # default: 10 minutes, less where 20 origins would not fit; at least a step
    refit_hours: float = 24
    seed: int = 0


@dataclass
class BacktestResult:
    trace: str
    config: BacktestConfig
    origins: int
    test_start: pd.Timestamp
    models: dict[str, dict] = field(default_factory=dict)
    # With keep_forecasts: each model's forecasts (origins, steps, 3), what happened, and the recent max
    # at each origin, for analyses beyond the summary scores (e.g. a model's recall/false-alarm curve).
    forecasts: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    actual: np.ndarray | None = field(default=None, repr=False)
    recent_max: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {"trace": self.trace, "horizon_min": self.config.horizon_min, "origins": self.origins,
                "test_start": self.test_start.isoformat(), "refit_hours": self.config.refit_hours,
                "models": self.models}

    def best(self, metric: str = "pinball_q90") -> str | None:
        scored = {n: m[metric] for n, m in self.models.items() if m.get(metric) is not None and n not in PEERS}
        return min(scored, key=scored.get) if scored else None


MIN_ORIGINS = 20  # the default stride shrinks below 10 minutes on a short trace to issue this many


def minutes(x: float) -> str:
    """A count of minutes as a person writes it: 14.6, 4,320."""
    return f"{x:,.1f}".removesuffix(".0")


def origins_for(history: History, config: BacktestConfig) -> np.ndarray:
    """Positions (indices into the history) of the forecast origins: every ``stride_min`` through the
    test window (by default every 10 minutes, or closer on a short trace, so that an hour-long trace
    is scored on some 20 forecasts rather than one)."""
    span_days = history.span / pd.Timedelta(days=1)
    test_days = config.test_days if config.test_days is not None else min(3.0, span_days / 4)
    if test_days <= 0 or test_days >= span_days:
        raise HistoryError(history.source, f"cannot hold out {test_days:g} days of a {span_days:.1f}-day history")
    horizon = history.steps_for(config.horizon_min)
    room_min = test_days * 1440 - config.horizon_min  # where origins can lie
    stride = history.steps_for(config.stride_min or max(history.step_min, min(10.0, room_min / MIN_ORIGINS)))
    first = len(history) - history.steps_per(pd.Timedelta(days=test_days))
    positions = np.arange(first, len(history) - horizon + 1, stride)
    if len(positions) == 0:
        held = "" if config.test_days is not None else f", a quarter of the {span_days * 1440:.0f}-minute history"
        raise HistoryError(history.source, f"the test window ({minutes(test_days * 1440)} minutes{held}) is shorter "
                                           f"than the {config.horizon_min:g}-minute horizon; hold out more with "
                                           f"--test-days or ask for a shorter --horizon")
    return positions


def run_backtest(history: History, models: list[str] | tuple[str, ...] = DEFAULT_MODELS,
                 config: BacktestConfig | None = None, progress: bool = True,
                 keep_forecasts: bool = False) -> BacktestResult:
    config = config or BacktestConfig()
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"{'unknown model(s) ' + ', '.join(unknown) if unknown else 'no model to backtest'}; "
                         f"choose from {', '.join(MODELS)}")
    if not config.refit_hours > 0:
        raise ValueError(f"refit every {config.refit_hours:g} hours: it must be above 0")
    positions = origins_for(history, config)
    horizon = history.steps_for(config.horizon_min)
    observed = history.counts.to_numpy()
    actual = windows(observed, positions, 0, horizon)
    recent = windows(observed, positions, -history.steps_for(RECENT_MINUTES), history.steps_for(RECENT_MINUTES))
    recent_max = np.full(len(positions), np.nan)
    has_recent = ~np.isnan(recent).all(axis=1)
    recent_max[has_recent] = np.nanmax(recent[has_recent], axis=1)

    refit = max(1, history.steps_per(pd.Timedelta(hours=config.refit_hours)))
    blocks = [positions[(positions >= b) & (positions < b + refit)] for b in range(positions[0], positions[-1] + 1, refit)]
    blocks = [b for b in blocks if len(b)]
    result = BacktestResult(history.source, config, len(positions), history.counts.index[positions[0]])
    if keep_forecasts:
        result.actual, result.recent_max = actual, recent_max
    bar = show_progress(total=len(models) * len(blocks), enabled=progress, desc="backtest", unit="fit")
    fitted_members: dict[tuple[str, int], Forecaster] = {}  # (name, block) -> an ensemble's member, fitted
    for name in sorted(models, key=lambda n: n != "ensemble"):  # ensembles first: their members are reused
        forecasts = np.empty((len(positions), horizon, 3))
        fit_times: list[float] = []
        status = "ok"
        done = 0
        model = None
        for index, block in enumerate(blocks):
            bar.set_postfix_str(name)
            train = history.until(history.counts.index[block[0]])
            model = make_model(name, seed=config.seed)
            if _same_setup(model, fitted_members.get((name, index))):
                model = fitted_members[(name, index)]
            else:
                try:
                    model.fit(train)
                except NotEnoughHistory as exc:
                    status = f"skipped: {exc}"
                    break
                for member in getattr(model, "members", []) if isinstance(model, EnsembleForecaster) else []:
                    fitted_members[(member.name, index)] = member
            fit_times.append(model.fit_seconds)
            forecasts[done:done + len(block)] = model.predict_many(history, list(history.counts.index[block]),
                                                                  config.horizon_min)
            done += len(block)
            bar.update(1)
        if status != "ok":
            bar.update(len(blocks) - len(fit_times))
            result.models[name] = {"status": status}
            continue
        metrics = score(actual, forecasts, recent_max)
        if keep_forecasts:
            result.forecasts[name] = forecasts
        metrics["fit_s"] = float(np.mean(fit_times))
        metrics["predict_ms"] = _predict_ms(model, history.until(history.counts.index[positions[-1]]), config.horizon_min)
        metrics["status"] = "ok"
        if name in PEERS:
            metrics["peer"] = True
        result.models[name] = metrics
    bar.close()
    result.models = {name: result.models[name] for name in models}
    return result


def _same_setup(fresh: Forecaster, fitted: Forecaster | None) -> bool:
    """Whether ``fitted`` (an ensemble's member) is what fitting ``fresh`` on the same history would give:
    same class, seed and horizon (the members are built with the defaults otherwise)."""
    return (fitted is not None and type(fitted) is type(fresh) and fitted.seed == fresh.seed
            and getattr(fitted, "max_horizon_min", None) == getattr(fresh, "max_horizon_min", None))


def _predict_ms(model, history: History, horizon_min: float, repeats: int = 5) -> float:
    """Median wall time of one forecast from the end of the history, as the daemon issues it."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(history, horizon_min)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)
