"""Models: known answers on a clean daily pattern, save/load round trips, fallbacks with a status."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecaster.errors import NotEnoughHistory
from forecaster.history import History
from forecaster.models import MODELS, fit_with_fallback, load_model, make_model
from tests.conftest import ROOT, daily_series, users_day

FAST = {"torch": {"time_budget_s": 8, "max_epochs": 25}}


def clean_history(days: int = 7) -> tuple[History, pd.Series]:
    series = daily_series(days=days + 1, step_min=5, level=400.0)
    cut = series.index[-288]
    return History(series[series.index < cut].copy(), "synthetic"), series[series.index >= cut]


@pytest.mark.parametrize("name", list(MODELS))
def test_clean_daily_pattern_is_forecast_within_tight_error(name):
    history, future = clean_history()
    model = make_model(name, **FAST.get(name, {})).fit(history)
    # Forecast 60 minutes from 12 origins across the next day, using the true past each time.
    full = History(pd.concat([history.counts, future]), "synthetic")
    starts = list(future.index[:-12:24])
    values = model.predict_many(full, starts, 60)
    actual = np.stack([full.counts[s:].iloc[:12].to_numpy() for s in starts])
    wape = np.abs(actual - values[..., 0]).sum() / actual.sum()
    coverage90 = (actual <= values[..., 1]).mean()
    limit = {"statsforecast_autoets": 0.15}.get(name, 0.10)  # a level model lags the daily ramp
    assert wape < limit, f"{name}: WAPE {wape:.3f}"
    assert coverage90 > 0.7, f"{name}: q90 covers only {coverage90:.2f}"
    assert (np.diff(values, axis=-1) >= 0).all(), "quantiles cross"


@pytest.mark.parametrize("name", list(MODELS))
def test_save_and_load_round_trip(tmp_path, name):
    history, _ = clean_history(days=3)
    model = make_model(name, **FAST.get(name, {})).fit(history)
    before = model.predict(history, 30)
    model.save(tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    after = loaded.predict(history, 30)
    assert type(loaded) is type(model)
    np.testing.assert_allclose(after.values, before.values, rtol=1e-6)
    assert after.start == history.end and len(after.values) == 6


def test_a_model_refuses_a_history_read_on_another_clock_and_its_file_remembers_the_clock(tmp_path):
    """The hours and weekdays a model learned are its history's clock's: predicting on a history read on
    another zone's clock would be off by the zones' difference with nothing saying so (before, a saved
    model did not even record the zone). Now it is refused, naming both clocks, saved and loaded alike."""
    history, _ = clean_history(days=3)
    paris = history.in_timezone("Europe/Paris")
    model = make_model("seasonal_naive").fit(paris)
    assert model.clock == "Europe/Paris"
    with pytest.raises(ValueError, match="fitted on a history read on the Europe/Paris clock, this one is on UTC"):
        model.predict(history, 30)
    model.save(tmp_path / "paris.pt")
    loaded = load_model(tmp_path / "paris.pt")
    np.testing.assert_allclose(loaded.predict(paris, 30).values, model.predict(paris, 30).values)
    with pytest.raises(ValueError, match="America/New_York"):
        loaded.predict(history.in_timezone("America/New_York"), 30)


def test_torch_is_deterministic_under_a_seed():
    history, _ = clean_history(days=3)
    a = make_model("torch", seed=7, **FAST["torch"]).fit(history).predict(history, 30).values
    b = make_model("torch", seed=7, **FAST["torch"]).fit(history).predict(history, 30).values
    np.testing.assert_array_equal(a, b)


def test_too_little_history_falls_back_with_a_status():
    series = daily_series(days=2, step_min=5)
    history = History(series[: 288 + 100].copy(), "short")  # about 1.3 days
    model, status = fit_with_fallback("torch", history)
    assert model.name == "seasonal_naive"
    assert status.startswith("fallback: torch needs at least 2.0 days of history, have 32.3 hours")
    assert "prophet needs at least 2.0 days" in status and status.endswith("using seasonal_naive")
    # Hours of history (a new service): the recent level is the last model that can run, and says why.
    model, status = fit_with_fallback("torch", History(series[:100].copy(), "new"))
    assert model.name == "recent_level"
    assert status.endswith("seasonal_naive needs at least 25.0 hours of history, have 8.3 hours; using recent_level")
    with pytest.raises(NotEnoughHistory, match="recent_level needs at least 80 minutes of history, have 25 minutes"):
        fit_with_fallback("seasonal_naive", History(series[:5].copy(), "tiny"))


def test_recent_level_carries_the_level_forward_with_the_band_it_measured():
    # A flat Poisson load of 100 per minute: q50 is the recent mean, q90 / q99 the Poisson's upper
    # quantiles (~113 / ~124, a little wider for the error of a 15-minute mean), at every step ahead.
    rng = np.random.default_rng(3)
    index = pd.date_range("2024-03-04", periods=6 * 60, freq="1min")
    history = History(pd.Series(rng.poisson(100.0, len(index)).astype(float), index=index), "flat")
    model = make_model("recent_level", max_horizon_min=30).fit(history)
    values = model.predict(history, 30).values
    level = history.counts.iloc[-15:].mean()
    np.testing.assert_allclose(values[:, 0], level, rtol=0.03)
    assert (values[:, 1] / level > 1.10).all() and (values[:, 1] / level < 1.18).all(), values[:, 1] / level
    assert (values[:, 2] / level > 1.20).all() and (values[:, 2] / level < 1.32).all(), values[:, 2] / level
    # Fresh draws from the same load land under q90 about 90% of the time.
    fresh = rng.poisson(100.0, (200, 30))
    assert 0.85 < (fresh <= values[None, :, 1]).mean() < 0.96


def test_recent_level_widens_leads_its_history_is_too_short_to_measure():
    # 40 minutes of a rising load: leads past 13 minutes have fewer than 12 origins to measure, so
    # their band is the last measured lead's, widened as the square root of the lead.
    index = pd.date_range("2024-03-04", periods=40, freq="1min")
    history = History(pd.Series(np.linspace(50, 90, 40) + np.tile([0.0, 6.0], 20), index=index), "short")
    model = make_model("recent_level", max_horizon_min=30).fit(history)
    measured = len(model.ratios)
    assert measured == 40 - 15 - 12 + 1
    values = model.predict(history, 30).values
    spread = values[:, 1] - values[:, 0]
    np.testing.assert_allclose(values[measured:, 0], values[measured - 1, 0])  # the centre stays put
    np.testing.assert_allclose(spread[-1] / spread[measured - 1], np.sqrt(30 / measured), rtol=1e-6)
    assert (np.diff(spread[measured - 1:]) > 0).all()


def test_forecast_peak_and_json_shape():
    history, _ = clean_history(days=3)
    forecast = make_model("seasonal_naive").fit(history).predict(history, 30)
    doc = forecast.as_dict()
    assert doc["step_min"] == 5 and len(doc["forecast"]) == 6
    assert set(doc["forecast"][0]) == {"timestamp", "q50", "q90", "q99"}
    best = max(doc["forecast"], key=lambda r: r["q50"])
    assert doc["peak"] == {"timestamp": best["timestamp"], "q50": best["q50"], "q90": best["q90"]}


def test_seasonal_naive_repeats_the_last_season_beyond_one_season_ahead():
    history, future = clean_history(days=3)  # short history: the season is one day (288 steps)
    model = make_model("seasonal_naive").fit(history)
    last_day = history.counts.to_numpy()[-288:]
    q50 = model.predict(history, 2.5 * 1440).values[:, 0]
    assert len(q50) == 720
    np.testing.assert_allclose(q50, np.tile(last_day, 3)[:720])
    # From an origin inside a longer series, it reads only what came before that origin.
    full = History(pd.concat([history.counts, future]), "synthetic")
    again = model.predict_many(full, [future.index[0]], 2 * 1440)[0][:, 0]
    np.testing.assert_allclose(again, np.tile(last_day, 2))


def test_predict_rejects_a_longer_horizon_than_trained_for():
    history, _ = clean_history(days=3)
    model = make_model("torch", max_horizon_min=30, **FAST["torch"]).fit(history)
    with pytest.raises(ValueError, match="trained for 30 minutes ahead"):
        model.predict(history, 60)


def test_smoothed_level_follows_its_recursion():
    from forecaster.models.features import best_alpha, smoothed_level

    values = np.array([10.0, 20.0, 20.0, 0.0, 40.0])
    level, expected = smoothed_level(values, 0.5), [10.0]
    for v in values[1:]:
        expected.append(0.5 * v + 0.5 * expected[-1])
    np.testing.assert_allclose(level, expected)
    steps = np.repeat([5.0, 50.0], 50)  # a level shift: the fastest smoothing predicts the next step best
    assert best_alpha(steps, steps) == 0.9


def test_torch_members_are_averaged_and_survive_a_round_trip(tmp_path):
    history, _ = clean_history(days=3)
    one = make_model("torch", seed=3, **FAST["torch"]).fit(history)
    two = make_model("torch", seed=3, members=2, **FAST["torch"]).fit(history)
    assert len(two.nets) == 2 and len(two.epochs) == 2
    assert not np.allclose(two.predict(history, 30).values, one.predict(history, 30).values)
    two.save(tmp_path / "two.pt")
    loaded = load_model(tmp_path / "two.pt")
    assert loaded.members == 2
    np.testing.assert_allclose(loaded.predict(history, 30).values, two.predict(history, 30).values, rtol=1e-6)


def test_pinball_optimal_spread_is_the_weighted_quantile():
    from forecaster.models.calibration import weighted_quantile

    rng = np.random.default_rng(0)
    ratio, width = rng.normal(size=2000), rng.uniform(0.1, 3.0, size=2000)
    c = weighted_quantile(ratio, width, 0.9)
    loss = lambda k: (width * np.maximum(0.9 * (ratio - k), -0.1 * (ratio - k))).sum()  # noqa: E731
    assert loss(c) <= min(loss(c - 0.05), loss(c + 0.05))


def test_lightgbm_is_deterministic_and_a_warm_update_adds_trees_then_refits():
    history, future = clean_history(days=4)
    later = History(pd.concat([history.counts, future[:72]]), "synthetic")  # six hours on
    a = make_model("lightgbm", seed=5, max_rows=2000).fit(history)  # sampled rows: retrains warm
    b = make_model("lightgbm", seed=5, max_rows=2000).fit(history)
    np.testing.assert_array_equal(a.predict(history, 30).values, b.predict(history, 30).values)
    first = a.boosters[0].num_trees()
    a.update(later)
    assert a.boosters[0].num_trees() == first + a.update_rounds and a.fitted_until == later.end
    a.rounds = a.boosters[0].num_trees() // 2  # grown to twice its first size: the next retrain is fresh
    a.update(later)
    assert a.boosters[0].num_trees() == a.rounds
    whole = make_model("lightgbm", seed=5).fit(history)  # every row fits in max_rows: a fresh fit is as cheap
    whole.update(later)
    assert whole.boosters[0].num_trees() == whole.rounds


def test_ensemble_is_the_mean_of_its_members_with_its_band_calibrated_on_the_held_out_windows():
    from forecaster.models.base import windows
    from forecaster.models.calibration import apply_spreads
    from forecaster.metrics import pinball

    history, _ = clean_history(days=3)
    ensemble = make_model("ensemble", seed=2, max_horizon_min=30).fit(history)
    assert [m.name for m in ensemble.members] == ["torch", "lightgbm"]
    starts = list(history.counts.index[-100::20])
    members = [m.predict_many(history, starts, 30) for m in ensemble.members]
    mean = np.mean(members, axis=0)
    np.testing.assert_allclose(ensemble.predict_many(history, starts, 30), apply_spreads(mean, ensemble.spread),
                               rtol=1e-6)
    assert not np.allclose(members[0], members[1])  # two different models, not one twice

    # The factors are the pinball-optimal ones on the windows both members held out: nudging either
    # factor does not lower the loss there.
    held = np.arange(max(m.held_from for m in ensemble.members), len(history) - 6 + 1)
    assert len(held) >= 50
    raw = np.mean([m._predict_many(history, held, 6) for m in ensemble.members], axis=0)
    actual = windows(history.counts.to_numpy(), held, 0, 6)

    def loss(factors):
        band = apply_spreads(raw, factors)
        return [pinball(actual, band[..., k], q) for k, q in ((1, 0.9), (2, 0.99))]

    best = loss(ensemble.spread)
    for k in (0, 1):
        for nudge in (0.8, 1.25):
            factors = list(ensemble.spread)
            factors[k] *= nudge
            assert loss(factors)[k] >= best[k] - 1e-9


def test_an_ensemble_member_that_fails_makes_the_chain_fall_back_and_say_so(monkeypatch):
    from forecaster.models.lightgbm_model import LightGBMQuantileForecaster

    def broken(self, history, warm=False):
        raise OSError("libgomp.so.1: cannot open shared object file")

    monkeypatch.setattr(LightGBMQuantileForecaster, "_fit", broken)
    history, _ = clean_history(days=3)
    model, status = fit_with_fallback("ensemble", history, options={"torch": FAST["torch"]})
    assert model.name == "torch"
    assert status == ("fallback: ensemble failed to fit (OSError: libgomp.so.1: cannot open shared object file); "
                      "using torch")


def test_the_policy_accepts_exactly_the_models_there_are():
    from typing import get_args

    from controller.policy import Planning

    assert set(get_args(Planning.model_fields["model"].annotation)) == set(MODELS)


def test_the_same_time_yesterday_and_last_week_is_read_on_the_users_clock():
    """On a clock with daylight saving, yesterday at 9:00 is 23 hours back the day the clocks go forward
    and 25 the day they go back, and last week at 9:00 is 167 hours back for the week after the first."""
    from forecaster.models.features import DAY, WEEK, wall_clock_shift

    utc = pd.date_range("2026-02-20", "2026-11-10", freq="1h", inclusive="left")
    history = History(pd.Series(1.0, index=utc), "clock")
    local = history.in_timezone("America/New_York")
    at = {t: local.counts.index.get_loc(pd.Timestamp(t, tz="America/New_York"))
          for t in ("2026-03-08 09:00", "2026-03-09 09:00", "2026-03-16 09:00", "2026-11-01 09:00")}
    positions = np.array(list(at.values()))
    assert wall_clock_shift(local, positions, DAY).tolist() == [1, 0, 0, -1]
    assert wall_clock_shift(local, positions, WEEK).tolist() == [1, 1, 0, -1]
    assert not wall_clock_shift(history, positions, DAY).any()  # UTC: a day is 24 hours


@pytest.mark.parametrize("name", ["seasonal_naive", "lightgbm", "torch"])
def test_a_load_that_follows_the_users_clock_is_forecast_on_it_across_a_daylight_saving_change(name):
    """Trained on UTC, the models put the week after the change's peaks an hour late (the calendar, and
    the same time yesterday and last week, read on the wrong clock); on the users' clock
    (``History.in_timezone``, the policy's ``signals.timezone``) they are where they were."""
    def wape(history: History) -> float:
        cut = 36 * 288 + 60  # 9 March 2026, 05:00 UTC: the day after the change, from midnight there
        model = make_model(name, **FAST.get(name, {})).fit(History(history.counts.iloc[:cut].copy(), "past"))
        starts = list(history.counts.index[cut:len(history) - 12:6])
        values = model.predict_many(history, starts, 60)[..., 0]
        actual = np.stack([history.counts.iloc[history.counts.index.get_loc(s):][:12].to_numpy() for s in starts])
        return float(np.abs(values - actual).sum() / actual.sum())

    history = users_day()
    on_utc, on_users_clock = wape(history), wape(history.in_timezone("America/New_York"))
    assert on_users_clock < 0.5 * on_utc, f"{name}: WAPE {on_users_clock:.3f} on New York's clock, {on_utc:.3f} on UTC"
    assert on_users_clock < 0.05


def test_a_service_on_seasonal_naive_imports_no_torch_lightgbm_or_scipy_signal():
    """The registry imports a model's module when its class is asked for: the daemon's modules and a
    seasonal_naive fit and forecast (a service configured so, or a command stopping at a bad argument) pay
    nothing for torch, LightGBM and scipy.signal (seconds to import); asking for the ensemble brings torch."""
    import subprocess
    import sys

    heavy = ("torch", "lightgbm", "scipy.signal", "prophet")
    code = (
        "import sys; import controller.daemon, peakpilot.cli\n"
        "from forecaster.history import History; from forecaster.models import MODELS, fit_with_fallback\n"
        "from tests.conftest import daily_series\n"
        "model, status = fit_with_fallback('seasonal_naive', History(daily_series(days=14)))\n"
        "assert status == 'ok' and model.predict(History(daily_series(days=14)), 30).values.shape == (6, 3)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
        "MODELS['ensemble']\n"
        "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout


def test_a_model_whose_library_cannot_be_imported_falls_back_saying_so(monkeypatch):
    """Models are imported when first asked for (``ModelRegistry``): a broken install of one model's library
    is a fallback naming it, as a model that cannot fit is, not a failed forecast."""
    for name in ("prophet", "torch"):  # the chain from prophet: torch, seasonal_naive, recent_level
        monkeypatch.setitem(MODELS._where, name, f"forecaster.models.no_such_{name}:Model")
        monkeypatch.delitem(MODELS._loaded, name, raising=False)
    model, status = fit_with_fallback("prophet", History(daily_series(days=14)))
    assert model.name == "seasonal_naive"
    assert status == ("fallback: prophet cannot be imported (ModuleNotFoundError: No module named "
                      "'forecaster.models.no_such_prophet'); torch cannot be imported (ModuleNotFoundError: No "
                      "module named 'forecaster.models.no_such_torch'); using seasonal_naive"), status


def test_the_torch_models_warm_update_at_a_daily_step_fits_afresh_where_two_days_are_too_few():
    """A replay retrains by a warm update on the last two days: at a daily step, two windows, which ended in an
    IndexError (it killed the replay). Now the update fits afresh; a fit on too few windows says so."""
    from forecaster.models.torch_model import TorchQuantileForecaster

    rng = np.random.default_rng(0)
    days = pd.date_range("2024-01-01", periods=400, freq="1D")
    counts = pd.Series(rng.poisson(1e6, len(days)).astype(float), index=days, name="requests")
    model = TorchQuantileForecaster(seed=0, max_horizon_min=1440).fit(History(counts[:300].copy(), "daily"))
    newer = History(counts[:330].copy(), "daily")
    model.update(newer)
    assert model.fitted_until == newer.end
    assert model.predict_many(newer, [days[330]], 1440).shape == (1, 1, 3)
    with pytest.raises(ValueError, match="2 windows of 12 \\+ 1 steps are too few to train on and calibrate"):
        TorchQuantileForecaster(seed=0, max_horizon_min=1440).fit(History(counts[:14].copy(), "daily"))
