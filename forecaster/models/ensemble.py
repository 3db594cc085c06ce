"""The average of the torch net and the LightGBM trees: the production default.

Why an average: the two learn from the same features in very different ways (a smooth function of
all inputs against axis-aligned splits on a few), so their errors are far from identical and the
mean of their calibrated quantiles beats both on most traces (see the README's forecast table).
Each member is calibrated on its own held-out day; the mean of their quantiles (a Vincentised mean)
has a sharper centre than either, so its band is then calibrated once more, on the same held-out
windows, by the pinball-optimal factors of ``calibration`` (m_small: 9.9% -> 11.1% below the AutoETS
peer's q90 loss; m_mid 19.4 -> 20.2%).

If one member cannot be fitted the ensemble fails as a whole, and the fallback chain then says so and
uses the next model; a half ensemble would silently be a different model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecaster.history import History
from forecaster.models.base import Forecaster, windows
from forecaster.models.calibration import apply_spreads, spread_factors
from forecaster.models.features import DAY
from forecaster.models.lightgbm_model import LightGBMQuantileForecaster
from forecaster.models.torch_model import TorchQuantileForecaster

MEMBERS: dict[str, type[Forecaster]] = {"torch": TorchQuantileForecaster, "lightgbm": LightGBMQuantileForecaster}


class EnsembleForecaster(Forecaster):
    name = "ensemble"
    description = "mean of the torch and lightgbm quantiles, band recalibrated (the default)"

    def __init__(self, seed: int = 0, max_horizon_min: float = 60, members: tuple[str, ...] = ("torch", "lightgbm"),
                 recalibrate: bool = True):
        super().__init__(seed)
        unknown = [m for m in members if m not in MEMBERS]
        if unknown or not members:
            raise ValueError(f"ensemble members must be among {', '.join(MEMBERS)}; got {', '.join(members) or 'none'}")
        self.max_horizon_min = max_horizon_min
        self.recalibrate = recalibrate
        self.member_names = tuple(members)
        self.members = [MEMBERS[m](seed=seed, max_horizon_min=max_horizon_min) for m in self.member_names]

    def min_history(self, step: pd.Timedelta) -> pd.Timedelta:
        return max((m.min_history(step) for m in self.members), default=2 * DAY)

    def _fit(self, history: History) -> None:
        for member in self.members:
            member.fit(history)
        self._calibrate(history)

    def _calibrate(self, history: History) -> None:
        """Scale the mean's q90/q99 spreads on the windows every member held out of its training."""
        self.spread = [1.0, 1.0]
        if not self.recalibrate:
            return
        observed = history.counts.to_numpy()
        horizon = min(m.horizon for m in self.members)
        start = max(getattr(m, "held_from", len(observed)) for m in self.members)
        held = np.arange(start, len(observed) - horizon + 1)
        if len(held) < 2:
            return
        held = held[::max(1, len(held) // 360)]
        pred = np.mean([m._predict_many(history, held, horizon) for m in self.members], axis=0)
        actual = windows(observed, held, 0, horizon)
        mask = ~np.isnan(actual)
        self.spread = spread_factors(pred, np.nan_to_num(actual), mask, self.quantiles)

    def update(self, history: History) -> Forecaster:
        """Each member retrains its own way (the net warm-starts, the trees refit)."""
        import time

        if any(m.step is None for m in self.members) or history.step != self.step:
            return self.fit(history)
        started = time.perf_counter()
        for member in self.members:
            member.update(history)
        self._calibrate(history)
        self.fit_seconds = time.perf_counter() - started
        self.fitted_until = history.end
        return self

    def _predict_many(self, history: History, positions: np.ndarray, horizon: int) -> np.ndarray:
        mean = np.mean([m._predict_many(history, positions, horizon) for m in self.members], axis=0)
        return apply_spreads(mean, self.spread)

    def state(self) -> dict:
        return {"max_horizon_min": self.max_horizon_min, "spread": list(self.spread),
                "members": [{"name": m.name, "step_ns": m.step.value, "fitted_until": m.fitted_until.isoformat(),
                             "state": m.state()} for m in self.members]}

    def load_state(self, state: dict) -> None:
        self.max_horizon_min = state["max_horizon_min"]
        self.spread = state.get("spread", [1.0, 1.0])  # saved before the ensemble had its own calibration
        self.member_names = tuple(item["name"] for item in state["members"])
        self.members = []
        for item in state["members"]:
            member = MEMBERS[item["name"]](seed=self.seed)
            member.step = pd.Timedelta(item["step_ns"], "ns")
            member.fitted_until = pd.Timestamp(item["fitted_until"])
            member.load_state(item["state"])
            self.members.append(member)
