"""Recent level: the mean of the last minutes carried forward, the last resort of the fallback chain.

A new service has hours of history, not the day a seasonal model needs; it still needs a band to plan
against. This is the "naive" / window-average forecaster of the statistical toolkits: q50, q90 and q99
at each step ahead are the recent level times the quantiles of ``actual / level`` that the history
showed at that many steps ahead. Leads the history is too short to measure reuse the longest measured
lead's band, widened by the square root of the lead ratio (as a random walk's spread grows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecaster.history import History
from forecaster.models.base import Forecaster, windows

MAX_ORIGINS = 20_000  # origins sampled from the history to measure the ratios (evenly spaced)
MIN_ORIGINS = 12  # fewest origins with an observed level and target that a lead's ratios need


class RecentLevel(Forecaster):
    name = "recent_level"
    description = "mean of the last 15 minutes carried forward; band from its past ratios per step ahead"

    def __init__(self, seed: int = 0, window_min: float = 15, max_horizon_min: float = 60):
        super().__init__(seed)
        self.window_min = window_min
        self.max_horizon_min = max_horizon_min

    def min_history(self, step: pd.Timedelta) -> pd.Timedelta:
        # the level's window, then enough origins to read a band from (at least 15 minutes of them)
        window = pd.Timedelta(minutes=self.window_min)
        return window + max(pd.Timedelta(minutes=15), (MIN_ORIGINS + 1) * step)

    def _levels(self, history: History, values: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Mean of the observed steps in the ``window_min`` before each position (NaN where none is)."""
        window = history.steps_for(self.window_min)
        recent = windows(values, positions, -window, window)
        seen = ~np.isnan(recent).all(axis=1)
        level = np.full(len(positions), np.nan)
        level[seen] = np.nanmean(recent[seen], axis=1)
        return level

    def _fit(self, history: History) -> None:
        y = history.counts.to_numpy(dtype=float)
        leads = history.steps_for(self.max_horizon_min)
        positions = np.arange(history.steps_for(self.window_min), len(y))
        if len(positions) > MAX_ORIGINS:
            positions = positions[np.linspace(0, len(positions) - 1, MAX_ORIGINS).astype(int)]
        level = self._levels(history, y, positions)
        ratio = windows(y, positions, 0, leads) / level[:, None]
        ratio[~(level > 0)] = np.nan
        measured = []
        for lead in range(leads):
            r = ratio[:, lead]
            r = r[np.isfinite(r)]
            if len(r) < MIN_ORIGINS:
                break
            measured.append(np.quantile(r, self.quantiles))
        if not measured:  # check_history keeps this from happening on any history with observed load
            raise ValueError(f"{self.name}: no origin has both a recent level and a load after it")
        self.ratios = np.asarray(measured)

    def _ratios_for(self, horizon: int) -> np.ndarray:
        measured = len(self.ratios)
        if horizon <= measured:
            return self.ratios[:horizon]
        last = self.ratios[-1]
        grow = np.sqrt(np.arange(measured + 1, horizon + 1) / measured)[:, None]
        extra = last[0] + (last[None, :] - last[0]) * grow
        return np.concatenate([self.ratios, extra])

    def _predict_many(self, history: History, positions: np.ndarray, horizon: int) -> np.ndarray:
        level = self._levels(history, history.filled().to_numpy(dtype=float), positions)
        level = np.nan_to_num(level, nan=0.0)
        return level[:, None, None] * self._ratios_for(horizon)[None, :, :]

    def state(self) -> dict:
        return {"window_min": self.window_min, "max_horizon_min": self.max_horizon_min,
                "ratios": self.ratios.tolist()}

    def load_state(self, state: dict) -> None:
        self.window_min = float(state["window_min"])
        self.max_horizon_min = float(state["max_horizon_min"])
        self.ratios = np.asarray(state["ratios"], dtype=float)
