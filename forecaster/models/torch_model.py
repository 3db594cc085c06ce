"""A PyTorch quantile model: an MLP over the recent past, the same hours yesterday and last week,
the smoothed level and the calendar, trained with pinball loss and calibrated on the most recent
held-out day; optionally several seeds are averaged.

Why this shape: 30 minutes ahead, the recent level matters most (the load rarely jumps far from
where it is), and the shape matters next (what the same hours did yesterday and last week says
whether a ramp is coming). Every window is scaled by its own recent mean, so one model serves
traces whose volumes differ by orders of magnitude and a level shift does not put it off. Outputs
are q50 and two non-negative increments, so quantiles never cross.

The smoothed level: exponentially smoothed levels of the whole past (a few fixed smoothing constants
and the one that best predicts the next step on the training history) are inputs too. They are what
AutoETS forecasts with, and a net that sees them does not have to rediscover a noise-robust level
from two hours of raw counts.

Seeds: with ``members`` > 1, nets differing only in their seed are trained on the same windows and
their quantiles averaged. On the shared traces three members moved pinball loss by -1.4% to +1.4%
against one, at three times the fit, so the default is one.

Calibration: the last ``calibration_fraction`` of training origins (at most a day) is held out; the
q90 and q99 spreads around q50 of the averaged nets are then scaled by the factor that minimises
their pinball loss on that window (the spread-weighted quantile of the standardised errors).
Deterministic under ``seed`` (fixed initialisation, shuffling and thread count).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from forecaster.history import History
from forecaster.models.base import Forecaster, windows
from forecaster.models.calibration import apply_spreads, holdout_size, spread_factors
from forecaster.models.features import (DAY, FIXED_ALPHAS, WEEK, best_alpha, levels_at, stamps_at,
                                        wall_clock_shift, window_scale)


class QuantileMLP(nn.Module):
    def __init__(self, n_in: int, horizon: int, hidden: int = 256):
        super().__init__()
        self.horizon = horizon
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                  nn.Linear(hidden, horizon * 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.body(x).view(-1, self.horizon, 3)
        q50 = raw[..., 0]
        q90 = q50 + nn.functional.softplus(raw[..., 1])
        q99 = q90 + nn.functional.softplus(raw[..., 2])
        return torch.stack([q50, q90, q99], dim=-1)


def pinball(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    diff = target.unsqueeze(-1) - pred
    loss = torch.maximum(qs * diff, (qs - 1) * diff) * mask.unsqueeze(-1)
    return loss.sum() / mask.sum().clamp(min=1) / len(qs)


class TorchQuantileForecaster(Forecaster):
    name = "torch"
    description = ("PyTorch MLP quantile model (pinball loss; recent past, last day/week, smoothed level, "
                   "calendar), calibrated")

    def __init__(self, seed: int = 0, max_horizon_min: float = 60, context_min: float = 120,
                 max_epochs: int = 60, time_budget_s: float = 40.0, max_windows: int = 30000,
                 calibration_fraction: float = 0.15, hidden: int = 256, members: int = 1):
        super().__init__(seed)
        self.max_horizon_min = max_horizon_min
        self.context_min = context_min
        self.max_epochs = max_epochs
        self.time_budget_s = time_budget_s
        self.max_windows = max_windows
        self.calibration_fraction = calibration_fraction
        self.hidden = hidden
        self.members = max(1, int(members))

    def min_history(self, step: pd.Timedelta) -> pd.Timedelta:
        return 2 * DAY

    # -- features --------------------------------------------------------------------------------
    def _shape(self, step: pd.Timedelta) -> None:
        minutes = step / pd.Timedelta(minutes=1)
        self.horizon = max(1, int(np.ceil(self.max_horizon_min / minutes - 1e-9)))
        self.context = min(360, max(12, int(np.ceil(self.context_min / minutes))))
        self.day = int(round(DAY / step))
        self.week = int(round(WEEK / step))

    def _features(self, history: History, values: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        L, H = self.context, self.horizon
        ctx = windows(values, positions, -L, L)
        scale = window_scale(ctx, self.global_scale)
        parts = [np.nan_to_num(ctx / scale[:, None], nan=1.0)]
        for lag, period in ((self.day, DAY), (self.week, WEEK)):  # the same hours on the users' clock
            past = windows(values, positions + wall_clock_shift(history, positions, period), -lag - L, L + H)
            have = ~np.isnan(past).any(axis=1)
            parts.append(np.where(have[:, None], np.nan_to_num(past / scale[:, None], nan=1.0), 1.0))
            parts.append(have[:, None].astype(float))
        stamps = stamps_at(history, positions)
        tod = (stamps.hour * 60 + stamps.minute).to_numpy() / 1440.0
        dow = (stamps.dayofweek.to_numpy() + tod) / 7.0
        parts.append(np.stack([np.sin(2 * np.pi * tod), np.cos(2 * np.pi * tod), np.sin(2 * np.pi * dow),
                               np.cos(2 * np.pi * dow), np.log(scale / self.global_scale)], axis=1))
        parts.append(levels_at(values, positions, (*FIXED_ALPHAS, self.alpha)) / scale[:, None])
        return np.concatenate(parts, axis=1).astype(np.float32), scale

    # -- training --------------------------------------------------------------------------------
    def _fit(self, history: History, warm: bool = False) -> None:
        self._shape(history.step)
        observed = history.counts.to_numpy()
        values = history.filled().to_numpy()
        if not warm:
            self.global_scale = float(max(np.nanmean(observed), 1e-6))
            self.alpha = best_alpha(observed, values)
        L, H = self.context, self.horizon
        positions = np.arange(L, len(values) - H + 1)
        keep = 2 * self.day if warm else self.max_windows  # a warm start follows only the last two days
        if len(positions) > keep:  # keep the most recent windows
            positions = positions[-keep:]
        x, scale = self._features(history, values, positions)
        y = windows(observed, positions, 0, H) / scale[:, None]
        mask = ~np.isnan(y)
        y = np.nan_to_num(y)

        n_cal = holdout_size(len(positions), self.day, H, self.calibration_fraction)
        cut = len(positions) - n_cal - H  # no target overlap between train and calibration windows
        if cut < 2 or cut + H >= len(positions):
            if warm:  # the last two days at a coarse step (two windows at a daily one): a fresh fit instead
                return self._fit(history)
            raise ValueError(f"{len(positions)} windows of {L} + {H} steps are too few to train on and calibrate")
        threads = torch.get_num_threads()
        torch.set_num_threads(min(2, threads))
        xt, yt, mt = torch.from_numpy(x[:cut]), torch.from_numpy(y[:cut]).float(), torch.from_numpy(mask[:cut]).float()
        try:
            if not warm:
                self.nets = []
                for k in range(self.members):
                    torch.manual_seed(self.seed + k)
                    self.nets.append(QuantileMLP(x.shape[1], H, self.hidden))
            epochs, budget = (2, min(2.0, self.time_budget_s)) if warm else (self.max_epochs, self.time_budget_s)
            self.epochs = []
            for k, net in enumerate(self.nets):
                gen = torch.Generator().manual_seed(self.seed + k)
                self.epochs.append(self._train(net, xt, yt, mt, gen, epochs, budget / len(self.nets)))
            pred = self._raw(x[cut + H:])
        finally:
            torch.set_num_threads(threads)
        self.spread = self._calibrate(pred, y[cut + H:], mask[cut + H:])
        self.held_from = int(positions[cut + H])

    def update(self, history: History) -> Forecaster:
        """Continue training on the most recent two days for one short pass, then recalibrate.

        A fresh fit costs seconds to tens of seconds; a scheduled retrain every few hours only has to
        follow the drift, which a warm start does in a fraction of that."""
        if not getattr(self, "nets", None) or history.step != self.step:
            return self.fit(history)
        import time as _time

        started = _time.perf_counter()
        self._fit(history, warm=True)
        self.fit_seconds = _time.perf_counter() - started
        self.fitted_until = history.end
        return self

    def _train(self, net: QuantileMLP, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, gen: torch.Generator,
               max_epochs: int, budget_s: float) -> int:
        """Train one net with early stopping on the last tenth of its windows; returns the epochs run."""
        qs = torch.tensor(self.quantiles, dtype=torch.float32)
        n_val = max(1, len(x) // 10)
        xt, yt, mt = x[:-n_val], y[:-n_val], mask[:-n_val]
        xv, yv, mv = x[-n_val:], y[-n_val:], mask[-n_val:]
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        best, best_state, stale = float("inf"), None, 0
        started = time.perf_counter()
        batch = 256
        epochs = 0
        for epoch in range(max_epochs):
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                loss = pinball(net(xt[idx]), yt[idx], mt[idx], qs)
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                val = float(pinball(net(xv), yv, mv, qs))
            epochs = epoch + 1
            if val < best - 1e-5:
                best, stale = val, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
            if stale >= 6 or time.perf_counter() - started > budget_s:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        return epochs

    def _raw(self, x: np.ndarray) -> np.ndarray:
        """The members' average scaled quantiles (before calibration)."""
        with torch.no_grad():
            xt = torch.from_numpy(x)
            return np.mean([net(xt).numpy() for net in self.nets], axis=0)

    def _calibrate(self, pred: np.ndarray, y: np.ndarray, mask: np.ndarray) -> list[float]:
        return spread_factors(pred, y, mask, self.quantiles)

    # -- prediction ------------------------------------------------------------------------------
    def _predict_many(self, history: History, positions: np.ndarray, horizon: int) -> np.ndarray:
        if horizon > self.horizon:
            raise ValueError(f"torch model was trained for {self.max_horizon_min:g} minutes ahead; "
                             f"refit it with max_horizon_min >= the horizon asked for")
        x, scale = self._features(history, history.filled().to_numpy(), positions)
        return apply_spreads(self._raw(x)[:, :horizon], self.spread) * scale[:, None, None]

    # -- persistence -----------------------------------------------------------------------------
    def state(self) -> dict:
        return {"config": {"max_horizon_min": self.max_horizon_min, "context_min": self.context_min,
                           "hidden": self.hidden},
                "step_ns": self.step.value, "global_scale": self.global_scale, "alpha": self.alpha,
                "spread": list(self.spread), "n_in": self.nets[0].body[0].in_features,
                "weights": [net.state_dict() for net in self.nets]}

    def load_state(self, state: dict) -> None:
        if "alpha" not in state:
            raise ValueError("this torch model was saved by an older peakpilot (no smoothed-level inputs); "
                             "fit it again")
        cfg = state["config"]
        self.max_horizon_min, self.context_min, self.hidden = cfg["max_horizon_min"], cfg["context_min"], cfg["hidden"]
        self._shape(pd.Timedelta(state["step_ns"], "ns"))
        self.global_scale = state["global_scale"]
        self.alpha = state["alpha"]
        self.spread = state["spread"]
        self.nets = []
        for weights in state["weights"]:
            net = QuantileMLP(state["n_in"], self.horizon, self.hidden)
            net.load_state_dict(weights)
            net.eval()
            self.nets.append(net)
        self.members = len(self.nets)
