"""The outside peer: Nixtla statsforecast's AutoETS, refit at each fit, rolled forward at every origin.

Not used in production; it runs in the backtest so our models are measured against a well-known
statistical forecaster. At a 30-minute horizon the recent level matters more than last week's shape,
and exponential smoothing tracks the level well, so it is a strong peer. Needs the ``peer`` extra
(statsforecast requires pandas < 3).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecaster.history import History
from forecaster.models.base import Forecaster

FIT_WINDOW = pd.Timedelta(days=3)
FORWARD_WINDOW = pd.Timedelta(days=1)


class StatsforecastAutoETS(Forecaster):
    name = "statsforecast_autoets"
    description = "outside peer: Nixtla statsforecast AutoETS (fit on the last 3 days, rolled forward per origin)"

    def min_history(self, step: pd.Timedelta) -> pd.Timedelta:
        return pd.Timedelta(hours=6)

    def _fit(self, history: History) -> None:
        from statsforecast.models import AutoETS

        y = history.tail(FIT_WINDOW).filled().to_numpy()
        self.model = AutoETS(season_length=1)
        self.model.fit(y)

    def _predict_many(self, history: History, positions: np.ndarray, horizon: int) -> np.ndarray:
        values = history.filled().to_numpy()
        window = history.steps_per(FORWARD_WINDOW)
        out = np.empty((len(positions), horizon, 3))
        for i, p in enumerate(positions):
            y = values[max(0, p - window):p]
            r = self.model.forward(y=y, h=horizon, level=[80, 98])
            out[i] = np.stack([r["mean"], r["hi-80"], r["hi-98"]], axis=-1)
        return out

    def state(self) -> dict:
        import base64
        import pickle

        return {"pickle": base64.b64encode(pickle.dumps(self.model)).decode()}

    def load_state(self, state: dict) -> None:
        import base64
        import pickle

        self.model = pickle.loads(base64.b64decode(state["pickle"]))
