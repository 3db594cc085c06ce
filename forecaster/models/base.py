"""The one small interface every forecaster implements, and the forecast it returns.

``fit(history)`` learns; ``predict(history, horizon_min, start=None)`` returns q50/q90/q99 for every
step of the next ``horizon_min`` minutes from ``start`` (default: the end of the history), using only
the history before ``start``. Models are conditional on the recent past (levels move), so predict
takes the history rather than only a start time. ``predict_many`` issues forecasts at many origins at
once; models override it when batching is cheaper than a loop (the backtest uses it).
"""

from __future__ import annotations

import abc
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from forecaster import QUANTILE_COLUMNS, QUANTILES
from forecaster.errors import NotEnoughHistory
from forecaster.history import History


@dataclass
class Forecast:
    """Quantiles per step from ``start``; ``values`` has shape (steps, 3) for q50, q90, q99."""

    model: str
    start: pd.Timestamp
    step: pd.Timedelta
    values: np.ndarray
    status: str = "ok"
    extra: dict = field(default_factory=dict)

    @property
    def index(self) -> pd.DatetimeIndex:
        return pd.date_range(self.start, periods=len(self.values), freq=self.step)

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.values, index=self.index, columns=list(QUANTILE_COLUMNS))

    def peak(self) -> dict:
        """The step with the highest median forecast: when the load is expected to top out."""
        i = int(np.argmax(self.values[:, 0]))
        return {"timestamp": self.index[i].isoformat(), "q50": float(self.values[i, 0]),
                "q90": float(self.values[i, 1])}

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "status": self.status,
            "step_min": self.step / pd.Timedelta(minutes=1),
            "forecast": [{"timestamp": t.isoformat(), "q50": float(r[0]), "q90": float(r[1]), "q99": float(r[2])}
                         for t, r in zip(self.index, self.values)],
            "peak": self.peak(),
        }


def monotone(values: np.ndarray) -> np.ndarray:
    """Non-negative, non-crossing quantiles (q50 <= q90 <= q99) along the last axis."""
    out = np.maximum(values, 0.0)
    return np.maximum.accumulate(out, axis=-1)


class Forecaster(abc.ABC):
    """Base class: subclasses set ``name`` and implement ``_fit``, ``_predict_many`` and state."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    quantiles: ClassVar[tuple[float, ...]] = QUANTILES

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.step: pd.Timedelta | None = None
        self.fitted_until: pd.Timestamp | None = None
        self.clock: str | None = None  # the zone whose clock its history was read on (None: not known)
        self.fit_seconds: float = 0.0

    # -- what a model needs ----------------------------------------------------------------------
    def min_history(self, step: pd.Timedelta) -> pd.Timedelta:
        """Shortest history this model can be fitted on."""
        return pd.Timedelta(days=1)

    def check_history(self, history: History) -> None:
        need = self.min_history(history.step)
        have = history.span
        observed = int(history.observed.sum())
        if have < need or observed < 3:
            raise NotEnoughHistory(
                f"{self.name} needs at least {_human(need)} of history, have {_human(have)}")

    # -- the interface ---------------------------------------------------------------------------
    def fit(self, history: History) -> Forecaster:
        import time

        self.check_history(history)
        self.step = history.step
        self.clock = clock_of(history)
        started = time.perf_counter()
        self._fit(history)
        self.fit_seconds = time.perf_counter() - started
        self.fitted_until = history.end
        return self

    def update(self, history: History) -> Forecaster:
        """Retrain on newer history (the daemon's and replay's scheduled retrain). Models that can
        continue from what they learned override this to be cheaper than a fresh fit."""
        return self.fit(history)

    def predict(self, history: History, horizon_min: float = 30, start: pd.Timestamp | None = None) -> Forecast:
        start = history.end if start is None else pd.Timestamp(start)
        values = self.predict_many(history, [start], horizon_min)[0]
        return Forecast(self.name, start, history.step, values)

    def predict_many(self, history: History, starts: list[pd.Timestamp], horizon_min: float) -> np.ndarray:
        """Forecasts at many origins: an array (origins, steps, 3)."""
        if self.step is None:
            raise RuntimeError(f"{self.name}: predict before fit")
        if history.step != self.step:
            raise ValueError(f"{self.name} was fitted at a {self.step} step, history has {history.step}")
        if self.clock is not None and clock_of(history) != self.clock:
            # The hours of day and days of week it learned are that clock's: on another they are wrong by
            # the zones' difference, and nothing else would say so.
            raise ValueError(f"{self.name} was fitted on a history read on the {self.clock} clock, this one is "
                             f"on {clock_of(history)}: read it on the same zone (--timezone, signals.timezone)")
        horizon = history.steps_for(horizon_min)
        positions = np.array([history.counts.index.get_indexer([s])[0] if s < history.end else
                              len(history) + int((s - history.end) / history.step) for s in starts])
        if (positions < 0).any():
            raise ValueError(f"{self.name}: a forecast origin is not on the history's {history.step} grid")
        return monotone(self._predict_many(history, positions, horizon))

    @abc.abstractmethod
    def _fit(self, history: History) -> None: ...

    @abc.abstractmethod
    def _predict_many(self, history: History, positions: np.ndarray, horizon: int) -> np.ndarray:
        """Forecast from each origin position (index into history.counts; may be len(history))."""

    # -- persistence -----------------------------------------------------------------------------
    @abc.abstractmethod
    def state(self) -> dict: ...

    @abc.abstractmethod
    def load_state(self, state: dict) -> None: ...

    def save(self, path: str | Path) -> None:
        payload = {"name": self.name, "seed": self.seed, "step_ns": None if self.step is None else self.step.value,
                   "fitted_until": None if self.fitted_until is None else self.fitted_until.isoformat(),
                   "clock": self.clock, "state": self.state()}
        import torch  # torch's format (weights_only loads), imported only where a model is kept or read

        buffer = io.BytesIO()
        torch.save(payload, buffer)
        Path(path).write_bytes(buffer.getvalue())


def load_model(path: str | Path) -> Forecaster:
    """Load any model written by :meth:`Forecaster.save`."""
    import torch

    from forecaster.models import MODELS

    payload = torch.load(io.BytesIO(Path(path).read_bytes()), weights_only=True)
    model = MODELS[payload["name"]](seed=payload["seed"])
    model.step = None if payload["step_ns"] is None else pd.Timedelta(payload["step_ns"], "ns")
    model.fitted_until = None if payload["fitted_until"] is None else pd.Timestamp(payload["fitted_until"])
    model.clock = payload.get("clock")  # (files saved before it was recorded: not known)
    model.load_state(payload["state"])
    return model


def clock_of(history: History) -> str:
    """The zone whose clock the history's times are read on: its index's zone, UTC where it has none."""
    tz = history.counts.index.tz
    return "UTC" if tz is None else str(tz)


def _human(delta: pd.Timedelta) -> str:
    """Days, hours or minutes, whichever keeps a need and a have that differ from printing alike."""
    if delta >= pd.Timedelta(days=2):
        return f"{delta / pd.Timedelta(days=1):.1f} days"
    if delta >= pd.Timedelta(hours=2):
        return f"{delta / pd.Timedelta(hours=1):.1f} hours"
    return f"{delta / pd.Timedelta(minutes=1):.0f} minutes"


def windows(values: np.ndarray, positions: np.ndarray, offset: int, length: int) -> np.ndarray:
    """values[p + offset : p + offset + length] for each p, NaN where it falls outside ``values``."""
    idx = positions[:, None] + offset + np.arange(length)[None, :]
    inside = (idx >= 0) & (idx < len(values))
    out = np.full(idx.shape, np.nan)
    out[inside] = values[idx[inside]]
    return out
