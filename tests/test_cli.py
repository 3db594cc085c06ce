"""The command line as a user runs it: help, JSON shapes, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import SAMPLE, trace_path

PEAKPILOT = [sys.executable, "-m", "peakpilot.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PEAKPILOT, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ("forecast", "backtest"):
        assert command in out.stdout
        assert run(command, "--help").returncode == 0


def test_forecast_json_on_the_default_trace():
    out = run("forecast", "--model", "seasonal_naive", "--horizon", "30", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) >= {"model", "status", "step_min", "forecast", "peak"}
    assert doc["model"] == "seasonal_naive" and doc["status"] == "ok" and doc["step_min"] == 10
    assert len(doc["forecast"]) == 3 and doc["forecast"][0]["timestamp"] == "2000-01-17T00:00:00"
    assert set(doc["peak"]) == {"timestamp", "q50", "q90"}


def test_forecast_readable_table(tmp_path):
    out = run("forecast", "--trace", str(SAMPLE), "--model", "seasonal_naive", "--save", str(tmp_path / "m.pt"))
    assert out.returncode == 0, out.stderr
    assert "peak:" in out.stdout and "q90" in out.stdout
    assert (tmp_path / "m.pt").stat().st_size > 0


def test_forecast_on_an_hour_of_history_uses_the_recent_level_and_says_so():
    # The Azure LLM code trace holds 58 minutes: too short for every seasonal model.
    trace = trace_path("azure_llm_code_2023.csv")
    out = run("forecast", "--trace", str(trace), "--horizon", "30", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["model"] == "recent_level" and doc["step_min"] == 1 and len(doc["forecast"]) == 30
    assert doc["status"].startswith("fallback: ensemble needs at least 2.0 days of history, have 58 minutes")
    assert doc["status"].endswith("using recent_level")
    counts = [float(line.split(",")[1]) for line in trace.read_text().splitlines()[1:]]
    first = doc["forecast"][0]
    assert min(counts[-15:]) < first["q50"] < max(counts[-15:]) and first["q50"] < first["q90"] < first["q99"]


def test_backtest_json_is_one_object_on_stdout():
    trace = trace_path("servegen_llm_m_small.csv")
    out = run("backtest", "--trace", str(trace), "--models", "seasonal_naive,statsforecast_autoets",
              "--test-days", "1", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["trace"] == str(trace) and doc["horizon_min"] == 30
    assert set(doc["models"]) == {"seasonal_naive", "statsforecast_autoets"}
    assert {"wape", "pinball_q90", "pinball_q99", "coverage_q90", "coverage_q99", "peak_recall",
            "false_alarm_rate", "fit_s", "predict_ms"} <= set(doc["models"]["seasonal_naive"])


@pytest.mark.parametrize("args,message", [
    (["forecast", "--trace", "/no/such.csv"], "/no/such.csv: no such file"),
    (["forecast", "--model", "arima"], "unknown model 'arima'"),
    (["backtest", "--models", "arima", "--test-days", "1"], "unknown model(s) arima"),
    (["forecast", "--prometheus", "http://127.0.0.1:9"], "Prometheus is unreachable"),
    (["forecast", "--horizon", "20000"], "Invalid value for '--horizon'"),
])
def test_bad_input_exits_2_with_a_clear_message(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
