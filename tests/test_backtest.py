"""Metrics with known answers, and the rolling-origin backtest on a real trace."""

from __future__ import annotations

import numpy as np
import pytest

from forecaster.backtest import BacktestConfig, origins_for, run_backtest
from forecaster.csv_source import load_csv
from forecaster.errors import HistoryError
from forecaster.metrics import peak_scores, pinball, score
from forecaster.history import History
from tests.conftest import daily_series, trace_path


def test_pinball_known_values():
    y = np.array([10.0, 10.0])
    assert pinball(y, np.array([8.0, 12.0]), 0.9) == pytest.approx((0.9 * 2 + 0.1 * 2) / 2)
    assert np.isnan(pinball(np.array([np.nan]), np.array([1.0]), 0.5))


def test_score_skips_gaps_and_counts_coverage():
    actual = np.array([[10.0, np.nan, 30.0]])
    forecast = np.array([[[10, 12, 14], [0, 0, 0], [20, 25, 40]]], dtype=float)
    s = score(actual, forecast, np.array([10.0]))
    assert s["wape"] == pytest.approx(10 / 40)
    assert s["coverage_q90"] == 0.5 and s["coverage_q99"] == 1.0


def test_peak_definition():
    recent = np.array([100.0, 100.0, 100.0, 100.0])
    actual = np.array([[90, 130, 100],    # surge at step 1 (130 > 120)
                       [90, 130, 100],    # same surge
                       [100, 110, 100],   # no surge
                       [100, 110, 100]], dtype=float)
    q90 = np.array([[100, 125, 100],      # caught: q90 at the peak step is above 120
                    [125, 110, 100],      # predicted a surge, but at the wrong step: missed
                    [100, 119, 100],      # quiet and quiet
                    [121, 100, 100]], dtype=float)  # false alarm
    s = peak_scores(actual, q90, recent)
    assert s == {"surges": 2, "peak_recall": 0.5, "false_alarm_rate": 0.5}


def test_backtest_on_the_sample_trace():
    history = load_csv(trace_path("servegen_llm_m_small.csv"))
    config = BacktestConfig(horizon_min=30, test_days=1, refit_hours=24)
    result = run_backtest(history, ["seasonal_naive", "statsforecast_autoets"], config, progress=False)
    doc = result.as_dict()
    assert doc["horizon_min"] == 30 and doc["origins"] == 142  # (144 - 3 + 1) origins every 10 min
    for name in ("seasonal_naive", "statsforecast_autoets"):
        m = doc["models"][name]
        for key in ("wape", "pinball_q90", "pinball_q99", "coverage_q90", "coverage_q99", "peak_recall",
                    "false_alarm_rate", "fit_s", "predict_ms"):
            assert m[key] is not None and np.isfinite(m[key]), (name, key)
        assert 0 < m["wape"] < 1 and 0 <= m["coverage_q90"] <= 1
    # Using only the past: a one-day seasonal naive is what its definition says.
    assert doc["models"]["statsforecast_autoets"]["peer"] is True


def test_backtest_never_sees_the_future():
    """A model that reads beyond its origin would score perfectly; ours may not."""
    history = load_csv(trace_path("servegen_llm_m_small.csv"))
    config = BacktestConfig(horizon_min=30, test_days=1)
    result = run_backtest(history, ["seasonal_naive"], config, progress=False)
    assert result.models["seasonal_naive"]["wape"] > 0.05


def test_kept_forecasts_are_the_ones_scored():
    history = load_csv(trace_path("servegen_llm_m_small.csv"))
    config = BacktestConfig(horizon_min=30, test_days=1)
    result = run_backtest(history, ["seasonal_naive"], config, progress=False, keep_forecasts=True)
    f = result.forecasts["seasonal_naive"]
    assert f.shape == (142, 3, 3) and result.actual.shape == (142, 3) and result.recent_max.shape == (142,)
    again = score(result.actual, f, result.recent_max)
    assert again["pinball_q90"] == pytest.approx(result.models["seasonal_naive"]["pinball_q90"])
    assert run_backtest(history, ["seasonal_naive"], config, progress=False).forecasts == {}


def test_backtest_bad_windows():
    history = load_csv(trace_path("servegen_llm_m_small.csv"))
    with pytest.raises(HistoryError, match="cannot hold out 20 days"):
        origins_for(history, BacktestConfig(test_days=20))
    hour = load_csv(trace_path("azure_llm_code_2023.csv"))  # 58 one-minute rows: a quarter is 14.5 minutes
    with pytest.raises(HistoryError, match=r"test window \(14.5 minutes, a quarter of the 58-minute history\) "
                                           r"is shorter than the 30-minute horizon; hold out more with --test-days"):
        origins_for(hour, BacktestConfig(horizon_min=30))
    # 4.5 minutes where origins can lie: every step (a minute) there, not one origin every 10 minutes
    assert len(origins_for(hour, BacktestConfig(horizon_min=10))) == 5
    assert len(origins_for(hour, BacktestConfig(horizon_min=10, stride_min=10))) == 1
    with pytest.raises(ValueError, match="unknown model"):
        run_backtest(history, ["arima"], BacktestConfig(test_days=1), progress=False)


def test_an_ensembles_members_are_fitted_once_and_score_as_if_run_alone(monkeypatch):
    """The default backtest runs the ensemble and its members: the members' fits are the ensemble's."""
    from forecaster.models.torch_model import TorchQuantileForecaster

    history = History(daily_series(days=5, step_min=10), "synthetic")
    config = BacktestConfig(horizon_min=30, test_days=1, refit_hours=12)
    fits = []
    original = TorchQuantileForecaster._fit
    monkeypatch.setattr(TorchQuantileForecaster, "_fit", lambda self, *a, **k: (fits.append(1), original(self, *a, **k)))
    both = run_backtest(history, ["torch", "ensemble"], config, progress=False, keep_forecasts=True)
    assert list(both.models) == ["torch", "ensemble"]  # the order asked for, though the ensemble ran first
    assert len(fits) == 2  # two refit blocks, one torch fit each
    alone = run_backtest(history, ["torch"], config, progress=False, keep_forecasts=True)
    np.testing.assert_allclose(both.forecasts["torch"], alone.forecasts["torch"])
    assert both.models["torch"]["pinball_q90"] == pytest.approx(alone.models["torch"]["pinball_q90"])
