"""Gradient-boosted quantile trees (LightGBM), one direct model for every step of the horizon.

Why trees beside the net: on short histories (two weeks at 10-minute steps is 2,000 points) an MLP
has few windows to learn from, while boosted trees with a quantile objective fit well on that much
and generalise from a handful of strong features. Each training row is one (origin, steps ahead)
pair; its features are the recent past and the smoothed levels (scaled by the window's own mean),
what the same time yesterday and last week did relative to their own level, the calendar at the
target time, and how far ahead it is. Three boosters learn q50, q90 and q99; the bands are then
scaled on the most recent held-out day like the torch model's (see ``calibration``).

Rows are sampled (``max_rows``) so that weeks of 1-minute data fit in seconds. Deterministic under
``seed`` (LightGBM's deterministic mode, fixed threads).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from forecaster.history import History
from forecaster.models.base import Forecaster, windows
from forecaster.models.calibration import apply_spreads, holdout_size, spread_factors
from forecaster.models.features import (DAY, FIXED_ALPHAS, WEEK, best_alpha, lagged, levels_at, stamps_at,
                                        wall_clock_shift, window_scale)


CALIBRATION_ORIGINS = 360


class LightGBMQuantileForecaster(Forecaster):
    name = "lightgbm"
    description = ("LightGBM quantile trees, direct multi-step (recent past, smoothed level, last day/week "
                   "relative to their level, calendar), calibrated")

    def __init__(self, seed: int = 0, max_horizon_min: float = 60, context_min: float = 120, recent_steps: int = 12,
                 rounds: int = 150, learning_rate: float = 0.05, leaves: int = 31, max_rows: int = 100_000,
                 update_rounds: int = 15, calibration_fraction: float = 0.15, threads: int = 2):
        super().__init__(seed)
        self.max_horizon_min = max_horizon_min
        self.context_min = context_min
        self.recent_steps = recent_steps
        self.rounds = rounds
        self.learning_rate = learning_rate
        self.leaves = leaves
        self.max_rows = max_rows
        self.update_rounds = update_rounds
        self.calibration_fraction = calibration_fraction
        self.threads = threads

    def min_history(self, step: pd.Timedelta) -> pd.Timedelta:
        return 2 * DAY

    def _shape(self, step: pd.Timedelta) -> None:
        self.step_min = step / pd.Timedelta(minutes=1)
        self.horizon = max(1, int(np.ceil(self.max_horizon_min / self.step_min - 1e-9)))
        self.context = min(360, max(12, int(np.ceil(self.context_min / self.step_min))))
        self.day = int(round(DAY / step))
        self.week = int(round(WEEK / step))

    # -- features --------------------------------------------------------------------------------
    def _origin_features(self, values: np.ndarray, positions: np.ndarray, shifts: dict):
        """What is known at each origin, scaled by its window's mean: (origins, features), the scale, and
        the mean level a day and a week before each window (to read those days' shape against; ``shifts``
        puts them on the users' clock: ``wall_clock_shift`` of the origins, by period)."""
        ctx = windows(values, positions, -self.context, self.context)
        scale = window_scale(ctx, self.global_scale)
        with np.errstate(all="ignore"):
            spread = np.stack([np.nanmax(ctx, axis=1), np.nanmin(ctx, axis=1), np.nanstd(ctx, axis=1)], axis=1)
        recent = np.nan_to_num(ctx[:, -self.recent_steps:] / scale[:, None], nan=1.0)
        parts = [recent, levels_at(values, positions, (*FIXED_ALPHAS, self.alpha)) / scale[:, None],
                 np.nan_to_num(spread / scale[:, None], nan=0.0), np.log(scale / self.global_scale)[:, None]]
        with warnings.catch_warnings():  # a window entirely before the series has no level (NaN, as meant)
            warnings.simplefilter("ignore", RuntimeWarning)
            own = [np.nanmean(windows(values, positions + shifts[period], -lag - self.context, self.context),
                              axis=1)
                   for lag, period in ((self.day, DAY), (self.week, WEEK))]
        return np.concatenate(parts, axis=1), scale, own

    def _rows(self, history: History, values: np.ndarray, positions: np.ndarray, ahead: np.ndarray):
        """Features of the rows (positions[i] forecasting ``ahead[i]`` steps on, 0 = the origin's step)."""
        unique, inverse = np.unique(positions, return_inverse=True)
        shifts = {period: wall_clock_shift(history, unique, period) for period in (DAY, WEEK)}  # once per origin
        base, scale, own = self._origin_features(values, unique, shifts)
        base, scale = base[inverse], scale[inverse]
        target = positions + ahead
        parts = [base]
        with np.errstate(all="ignore"):
            for lag, period, level in zip((self.day, self.week), (DAY, WEEK), own):  # on the users' clock
                then = lagged(values, target + wall_clock_shift(history, target, period), lag)
                last = lagged(values, positions + shifts[period][inverse], lag + 1)
                parts.append(np.stack([then / scale, then / np.maximum(level[inverse], 1e-6), last / scale], axis=1))
        stamps = stamps_at(history, target)
        parts.append(np.stack([(stamps.hour * 60 + stamps.minute).to_numpy() / 1440.0,
                               stamps.dayofweek.to_numpy(), (ahead + 1) * self.step_min], axis=1))
        return np.concatenate(parts, axis=1).astype(np.float32), scale

    # -- training --------------------------------------------------------------------------------
    def _fit(self, history: History, warm: bool = False) -> None:
        import lightgbm as lgb

        self._shape(history.step)
        observed = history.counts.to_numpy()
        values = history.filled().to_numpy()
        if not warm:
            self.global_scale = float(max(np.nanmean(observed), 1e-6))
            self.alpha = best_alpha(observed, values)
        H = self.horizon
        positions = np.arange(self.context, len(values) - H + 1)
        n_cal = holdout_size(len(positions), self.day, H, self.calibration_fraction)
        cut = len(positions) - n_cal - H  # no target overlap between training and calibration
        train = positions[max(0, cut - 2 * self.day):cut] if warm else positions[:cut]
        rng = np.random.default_rng(self.seed + (len(values) if warm else 0))

        pos = np.repeat(train, H)
        ahead = np.tile(np.arange(H), len(train))
        y = observed[pos + ahead]
        keep = np.flatnonzero(~np.isnan(y))
        limit = self.max_rows // 5 if warm else self.max_rows
        if len(keep) > limit:
            keep = np.sort(rng.choice(keep, limit, replace=False))
        x, scale = self._rows(history, values, pos[keep], ahead[keep])
        data = lgb.Dataset(x, y[keep] / scale, free_raw_data=False)
        params = dict(learning_rate=self.learning_rate, num_leaves=self.leaves, min_data_in_leaf=20,
                      bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.8, seed=self.seed,
                      deterministic=True, num_threads=self.threads, verbose=-1)
        rounds = self.update_rounds if warm else self.rounds
        self.boosters = [lgb.train({**params, "objective": "quantile", "alpha": q}, data, num_boost_round=rounds,
                                   init_model=self.boosters[k] if warm else None)
                         for k, q in enumerate(self.quantiles)]

        held = positions[cut + H:]
        self.held_from = int(held[0])
        held = held[::max(1, len(held) // CALIBRATION_ORIGINS)]  # enough for two quantiles, and fast
        pred, scale = self._scaled(history, values, held, H)
        actual = windows(observed, held, 0, H) / scale[:, None]
        mask = ~np.isnan(actual)
        self.spread = spread_factors(pred, np.nan_to_num(actual), mask, self.quantiles)

    def update(self, history: History) -> Forecaster:
        """Add ``update_rounds`` trees fitted on the last two days, then recalibrate; a fresh fit instead
        when every training row fits in ``max_rows`` (a fresh fit is then as cheap) or once the boosters
        have grown to twice their first size (so prediction stays fast and old drift is shed).

        The replay and the daemon retrain every few hours; a fresh fit on weeks of 1-minute data costs
        seconds, a warm one a fraction of that."""
        boosters = getattr(self, "boosters", None)
        if (not boosters or history.step != self.step or boosters[0].num_trees() >= 2 * self.rounds
                or (len(history) - self.context - self.horizon) * self.horizon <= self.max_rows):
            return self.fit(history)
        started = time.perf_counter()
        self._fit(history, warm=True)
        self.fit_seconds = time.perf_counter() - started
        self.fitted_until = history.end
        return self

    def _scaled(self, history: History, values: np.ndarray, positions: np.ndarray, horizon: int):
        """Raw quantiles in units of each window's scale: (origins, horizon, 3), scale."""
        pos = np.repeat(positions, horizon)
        ahead = np.tile(np.arange(horizon), len(positions))
        x, scale = self._rows(history, values, pos, ahead)
        raw = np.stack([b.predict(x, num_threads=self.threads) for b in self.boosters], axis=1)
        raw = np.sort(raw, axis=1).reshape(len(positions), horizon, 3)
        return raw, scale.reshape(len(positions), horizon)[:, 0]

    # -- prediction ------------------------------------------------------------------------------
    def _predict_many(self, history: History, positions: np.ndarray, horizon: int) -> np.ndarray:
        if horizon > self.horizon:
            raise ValueError(f"lightgbm model was trained for {self.max_horizon_min:g} minutes ahead; "
                             f"refit it with max_horizon_min >= the horizon asked for")
        raw, scale = self._scaled(history, history.filled().to_numpy(), positions, horizon)
        return apply_spreads(raw, self.spread) * scale[:, None, None]

    # -- persistence -----------------------------------------------------------------------------
    def state(self) -> dict:
        return {"config": {"max_horizon_min": self.max_horizon_min, "context_min": self.context_min,
                           "recent_steps": self.recent_steps, "threads": self.threads, "rounds": self.rounds,
                           "update_rounds": self.update_rounds},
                "step_ns": self.step.value, "global_scale": self.global_scale, "alpha": self.alpha,
                "spread": list(self.spread), "boosters": [b.model_to_string() for b in self.boosters]}

    def load_state(self, state: dict) -> None:
        import lightgbm as lgb

        cfg = state["config"]
        self.max_horizon_min, self.context_min = cfg["max_horizon_min"], cfg["context_min"]
        self.recent_steps, self.threads = cfg["recent_steps"], cfg["threads"]
        self.rounds, self.update_rounds = cfg["rounds"], cfg["update_rounds"]
        self._shape(pd.Timedelta(state["step_ns"], "ns"))
        self.global_scale, self.alpha, self.spread = state["global_scale"], state["alpha"], state["spread"]
        self.boosters = [lgb.Booster(model_str=text) for text in state["boosters"]]
