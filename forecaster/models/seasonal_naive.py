"""Seasonal naive: the load at the same time last week (or yesterday, when history is short), on the
history's clock (``History.in_timezone``).

The baseline every model must beat. Its band is the empirical quantiles of its own past errors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecaster.history import History
from forecaster.models.base import Forecaster
from forecaster.models.features import wall_clock_shift


class SeasonalNaive(Forecaster):
    name = "seasonal_naive"
    description = "same time last week (last day if history is short); band from its past errors"

    def min_history(self, step: pd.Timedelta) -> pd.Timedelta:
        return pd.Timedelta(days=1) + pd.Timedelta(hours=1)

    def _fit(self, history: History) -> None:
        week = pd.Timedelta(days=7)
        self.season = week if history.span >= 2 * week else pd.Timedelta(days=1)
        lag = history.steps_per(self.season)
        y = history.counts.to_numpy()
        residuals = (y[lag:] - history.filled().to_numpy()[:-lag])
        residuals = residuals[~np.isnan(residuals)][-history.steps_per(pd.Timedelta(days=14)):]
        self.offsets = np.quantile(residuals, self.quantiles) - np.quantile(residuals, 0.5)

    def _predict_many(self, history: History, positions: np.ndarray, horizon: int) -> np.ndarray:
        lag = history.steps_per(self.season)
        ahead = np.arange(horizon)
        back = lag * (ahead // lag + 1)  # beyond one season ahead, the last season seen repeats
        target = positions[:, None] + ahead[None, :]
        # the same time on the users' clock (an hour off for a week after a daylight-saving change otherwise)
        idx = target - back[None, :] + wall_clock_shift(history, target.ravel(), self.season).reshape(target.shape)
        values = history.filled().to_numpy()
        base = np.where(idx >= 0, values[np.clip(idx, 0, None)], np.nan)
        base = np.nan_to_num(base, nan=float(np.nanmean(history.counts.to_numpy())))
        return base[:, :, None] + self.offsets[None, None, :]

    def state(self) -> dict:
        return {"season_ns": self.season.value, "offsets": self.offsets.tolist()}

    def load_state(self, state: dict) -> None:
        self.season = pd.Timedelta(state["season_ns"], "ns")
        self.offsets = np.asarray(state["offsets"])
