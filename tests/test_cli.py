"""The command line as a user runs it: help, JSON shapes, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, trace_path

ROOT = Path(__file__).resolve().parent.parent

PEAKPILOT = [sys.executable, "-m", "peakpilot.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PEAKPILOT, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ("forecast", "backtest"):
        assert command in out.stdout
        assert run(command, "--help").returncode == 0


def test_help_reads_as_a_person_writes_it():
    """Every command is listed with a summary of one line in the source (the list keeps its breaks), and
    no flag is shown with a type, which reads as if it took a value (`--json <bool>`); every option has a
    help text."""
    from typer.testing import CliRunner

    from peakpilot.cli import app

    runner = CliRunner()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(names) >= 11
    top = runner.invoke(app, ["--help"], terminal_width=200)
    assert top.exit_code == 0 and "<bool>" not in top.output
    for command in app.registered_commands:  # each paragraph one line: the help page wraps it, and keeps breaks
        paragraphs = command.callback.__doc__.split("\n\n")
        assert all("\n" not in p.strip() for p in paragraphs), command.callback.__name__
    for name in names:
        assert name in top.output
        page = runner.invoke(app, [name, "--help"], terminal_width=200)
        assert page.exit_code == 0, (name, page.output)
        assert "<bool>" not in page.output, name
    # and every option says what it is for
    from typer.main import get_command

    bare = [(name, p.opts) for name, sub in get_command(app).commands.items() for p in sub.params if not p.help]
    assert bare == []


def test_forecast_json_on_the_default_trace():
    out = run("forecast", "--model", "seasonal_naive", "--horizon", "30", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) >= {"model", "status", "step_min", "forecast", "peak"}
    assert doc["model"] == "seasonal_naive" and doc["status"] == "ok" and doc["step_min"] == 10
    assert len(doc["forecast"]) == 3 and doc["forecast"][0]["timestamp"] == "2000-01-17T00:00:00"
    assert set(doc["peak"]) == {"timestamp", "q50", "q90"}


def test_forecast_on_the_users_clock():
    """--timezone: the sample's UTC times read on Kolkata's clock, the forecast's times written with its
    offset; the same instants, so the same forecast."""
    utc = json.loads(run("forecast", "--model", "seasonal_naive", "--horizon", "30", "--json").stdout)
    out = run("forecast", "--model", "seasonal_naive", "--horizon", "30", "--timezone", "Asia/Kolkata", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["forecast"][0]["timestamp"] == "2000-01-17T05:30:00+05:30"
    assert [r["q50"] for r in doc["forecast"]] == [r["q50"] for r in utc["forecast"]]


def test_forecast_readable_table(tmp_path):
    out = run("forecast", "--trace", str(SAMPLE), "--model", "seasonal_naive", "--save", str(tmp_path / "m.pt"))
    assert out.returncode == 0, out.stderr
    assert "peak:" in out.stdout and "q90" in out.stdout
    assert (tmp_path / "m.pt").stat().st_size > 0


def test_forecast_table_of_a_one_second_series_is_readable():
    """30 minutes ahead of a 1-second series is 1,800 steps: the table shows 60 and the peak's, and says so."""
    trace = trace_path("azure_llm_code_2023_1s.csv")
    out = run("forecast", "--trace", str(trace), "--model", "recent_level")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line[:4].isdigit()]
    assert 60 <= len(rows) <= 62, out.stdout
    assert "of 1,800 steps shown: one in 30" in out.stdout and "--every-step" in out.stdout
    peak = next(line for line in out.stdout.splitlines() if line.startswith("peak:")).split()[1]
    assert any(row.startswith(peak) and row.endswith("<- peak") for row in rows)
    full = run("forecast", "--trace", str(trace), "--model", "recent_level", "--every-step")
    assert len([line for line in full.stdout.splitlines() if line[:4].isdigit()]) == 1800


def test_table_rows_keep_first_last_and_peak():
    from peakpilot.cli.forecast_commands import table_rows

    assert table_rows(3, 1, 60) == ([0, 1, 2], 1)
    shown, every = table_rows(1800, 1234, 60)
    assert every == 30 and shown[0] == 0 and shown[-1] == 1799 and 1234 in shown and len(shown) == 62
    assert table_rows(1800, 1234, None) == (list(range(1800)), 1)


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
    # stderr is a pipe here, not a terminal: the progress bar comes as whole lines, not redrawn with
    # carriage returns into a log
    assert "\r" not in out.stderr and "backtest: 100%|" in out.stderr.splitlines()[-1]


def test_progress_is_redrawn_on_a_terminal_and_written_as_timed_lines_in_a_log():
    import io

    from forecaster.progress import LOG_INTERVAL_S, progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log, terminal, off = io.StringIO(), Terminal(), io.StringIO()
    for stream in (log, terminal):
        bar = progress(range(50), stream=stream, desc="replay", unit="run")
        for i in bar:
            bar.set_postfix_str(f"run {i}")
    assert LOG_INTERVAL_S >= 10
    lines = log.getvalue().splitlines()
    # well under the interval: the first line and the last, nothing in between, no carriage return
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[0].startswith("replay:   0%") and lines[1].startswith("replay: 100%") and "50/50" in lines[1]
    assert "run 49" in lines[1]  # the postfix shows in the next line, without a line of its own
    assert terminal.getvalue().count("\r") > 2  # redrawn in place
    list(progress(range(5), enabled=False, stream=off))
    assert off.getvalue() == ""


def test_progress_bars_are_drawn_on_a_terminal():
    """The pipe case is asserted above; on a terminal (a pseudo-terminal 100 columns wide) the bar is drawn."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    main, term = pty.openpty()
    fcntl.ioctl(term, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    drawn: list[bytes] = []

    def read() -> None:  # drained as it is written: a full terminal buffer would block the command
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the other end is closed and everything was read
                return
            if not chunk:
                return
            drawn.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        out = subprocess.run([*PEAKPILOT, "backtest", "--models", "seasonal_naive", "--test-days", "1", "--json"],
                             stdout=subprocess.PIPE, stderr=term, timeout=300)
    finally:
        os.close(term)
        reader.join(10)
        os.close(main)
    assert out.returncode == 0
    assert b"backtest: 100%" in b"".join(drawn) and b"1/1" in b"".join(drawn)
    json.loads(out.stdout)  # the bar does not touch stdout


@pytest.mark.parametrize("args,message", [
    (["forecast", "--trace", "/no/such.csv"], "/no/such.csv: no such file"),
    (["forecast", "--model", "arima"], "unknown model 'arima'"),
    (["backtest", "--models", "arima", "--test-days", "1"], "unknown model(s) arima"),
    (["forecast", "--prometheus", "http://127.0.0.1:9"], "Prometheus is unreachable"),
    (["forecast", "--horizon", "20000"], "Invalid value for '--horizon'"),
    (["backtest", "--timezone", "EST5EDT/Nowhere"],
     "--timezone: 'EST5EDT/Nowhere' is not a time zone this machine knows"),
    (["forecast", "--count-column", "rps"], "--count-column names a column of a CSV trace: give --trace FILE"),
    (["replay", "--rate-column", "rps", "--prometheus", "http://127.0.0.1:9"],
     "--rate-column names a column of a CSV trace: give --trace FILE, not --prometheus"),
    (["backtest", "--trace", str(SAMPLE), "--count-column", "a", "--rate-column", "b"],
     "give --count-column or --rate-column, not both"),
    (["recommend-reserved", "--trace", str(SAMPLE), "--timestamp-column", "when"], "no column 'when'; columns are"),
    (["forecast", "--timestamp-zone", "Europe/Berlin"],
     "--timestamp-zone reads the times of a CSV trace: give --trace"),
    (["loadgen", "--url", "http://127.0.0.1:9", "--timestamp-zone", "Mars/Olympus"],
     "--timestamp-zone: 'Mars/Olympus' is not a time zone this machine knows"),
    (["loadgen", "--url", "http://127.0.0.1:9", "--start", "noon"],
     "--start 'noon': not a time; write it as the trace writes its timestamps, e.g. 2000-01-03T00:00:00"),
    (["loadgen", "--url", "http://127.0.0.1:9", "--start", "2030-01-01"],
     "--start 2030-01-01: after the trace's last step (2000-01-16T23:50:00)"),
    (["loadgen", "--url", "http://127.0.0.1:9", "--speedup", "0"], "--speedup 0: must be above 0"),
    (["replay", "--strategies", ",", "--no-sweep"], "--strategies names none; choose from predictive, reactive"),
    (["replay", "--train-days", "-1"], "--train-days -1: must be above 0"),
    (["backtest", "--models", ","], "no model to backtest; choose from ensemble"),
    (["backtest", "--refit-hours", "0"], "--refit-hours 0: must be above 0"),
    (["run", "--once", "--retention-days", "-1"], "Invalid value for '--retention-days'"),  # (it deleted every row)
    (["run", "--once", "--retrain-cron", "0 */6 * *"], "--retrain-cron '0 */6 * *': Wrong number of fields; got 4, "
                                                       "expected 5 (five fields: minute hour day month weekday"),
    (["forecast", "--seed", "-1"], "Invalid value for '--seed'"),
    (["run", "--once", "--selector", "team"], "--selector: 'team' is no key=value"),
    (["run", "--once", "--lease-name", "Peakpilot_A"], "--lease-name: 'Peakpilot_A' cannot name a Lease"),
    (["check-policy", "--backend", "kubernetes", "--rbac", "--lease-name", "x/y"], "--lease-name: 'x/y' cannot name"),
    (["profile", "--url", "http://127.0.0.1:9", "--slo-ms", "0"], "--slo-ms 0: must be above 0"),
    (["loadgen", "--url", "http://127.0.0.1:9", "--max-tokens", "0"], "Invalid value for '--max-tokens'"),
    (["serve", "--port", "70000"], "Invalid value for '--port'"),
    # An absurd size overflowed a span of time (an OverflowError's traceback), or shed every request
    (["replay", "--train-days", "1e308"], "--train-days 1e+308: at most 3650"),
    (["backtest", "--refit-hours", "1e308"], "--refit-hours 1e+308: at most 87600"),
    (["recommend-reserved", "--days", "1e308", "--prometheus", "http://127.0.0.1:9"], "--days 1e+308: at most 3650"),
    (["loadgen", "--url", "http://127.0.0.1:9", "--rate-scale", "1e308"], "--rate-scale 1e+308: at most 1e+06"),
    (["run", "--once", "--interval-s", "1e308"], "Invalid value for '--interval-s'"),
    (["serve", "--slo-ms", "0"], "--slo-ms 0: must be above 0"),
    (["serve", "--drain-seconds", "-1"], "Invalid value for '--drain-seconds'"),
    # The sample at its own scale: 1.4 billion send times filled the machine's memory before a request went
    (["loadgen", "--url", "http://127.0.0.1:9"], "requests (at --rate-scale 1) are more than one loadgen sends "
                                                 "(10,000,000): give --rate-scale 0.007 or less"),
])
def test_bad_input_exits_2_with_a_clear_message(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert "Retrying" not in out.stderr  # urllib3's retries are logged only with --verbose


def test_a_panels_export_is_read_where_its_columns_are_named(tmp_path):
    """A Grafana panel's CSV export (a "Time" column, and one named after the series that holds requests per
    second) is refused as it stands, the error naming the options; --rate-column reads it as requests per
    step, as forecast, replay and recommend-reserved count them (the same as the counts file it stands for)."""
    import numpy as np
    import pandas as pd

    times = pd.date_range("2026-01-05", periods=3 * 1440, freq="1min")
    rate = np.round(20 + 15 * np.sin(2 * np.pi * np.arange(len(times)) / 1440), 3)
    export = tmp_path / "panel.csv"
    export.write_text('"Time","{job=""chat""}"\n'
                      + "".join(f"{t:%Y-%m-%d %H:%M:%S},{r}\n" for t, r in zip(times, rate)))
    counts = tmp_path / "counts.csv"
    counts.write_text("timestamp,requests\n" + "".join(f"{t.isoformat()},{r * 60:.3f}\n" for t, r in zip(times, rate)))
    refused = run("forecast", "--trace", str(export))
    assert refused.returncode == 2 and """--rate-column '{job="chat"}'""" in refused.stderr
    forecast = run("forecast", "--trace", str(export), "--rate-column", '{job="chat"}', "--model", "seasonal_naive",
                   "--json")
    assert forecast.returncode == 0, forecast.stderr
    first = json.loads(forecast.stdout)["forecast"][0]  # the same minute a day earlier, in requests per minute
    assert first["timestamp"].startswith("2026-01-08T00:00") and first["q50"] == pytest.approx(rate[0] * 60)
    reserved = [run("recommend-reserved", "--trace", str(path), *args, "--json")
                for path, args in ((export, ["--timestamp-column", "Time", "--rate-column", '{job="chat"}']),
                                   (counts, []))]
    assert all(out.returncode == 0 for out in reserved), [out.stderr for out in reserved]
    assert json.loads(reserved[0].stdout) == json.loads(reserved[1].stdout)


def test_local_times_with_their_zone_forecast_as_the_same_load_written_in_utc(tmp_path):
    """A trace on Berlin's clock without offsets (Grafana's formatted export) across the night its clock goes
    back, read with --timestamp-zone, forecasts as the same load written in UTC does with --timezone: the same
    instants, the same counts, the same users' day."""
    import numpy as np
    import pandas as pd

    instants = pd.date_range("2024-10-20", periods=9 * 144, freq="10min", tz="UTC")
    load = np.round(500 + 400 * np.sin(2 * np.pi * (instants.hour * 60 + instants.minute) / 1440))
    local, utc = tmp_path / "local.csv", tmp_path / "utc.csv"
    local.write_text("timestamp,requests\n" + "".join(
        f"{t:%Y-%m-%d %H:%M:%S},{v:g}\n" for t, v in zip(instants.tz_convert("Europe/Berlin"), load)))
    utc.write_text("timestamp,requests\n" + "".join(f"{t.isoformat()},{v:g}\n" for t, v in zip(instants, load)))
    out = [run("forecast", "--trace", str(path), *args, "--model", "seasonal_naive", "--json")
           for path, args in ((local, ["--timestamp-zone", "Europe/Berlin"]), (utc, ["--timezone", "Europe/Berlin"]))]
    assert all(o.returncode == 0 for o in out), [o.stderr for o in out]
    docs = [json.loads(o.stdout) for o in out]
    assert docs[0]["forecast"] == docs[1]["forecast"] and docs[0]["forecast"][0]["timestamp"].endswith("+01:00")
    refused = run("forecast", "--trace", str(local), "--model", "seasonal_naive")
    assert refused.returncode == 2 and "--timestamp-zone" in refused.stderr


def test_a_selectors_lease_has_a_name_a_lease_may_have():
    """The Lease of the daemons of one selector: as before for team=chat; lowercase, and no '=' or ',', for
    others (an API server refuses a Lease named peakpilot-team-Chat_A, and no daemon would lead)."""
    from peakpilot.cli.controller_commands import lease_name_for

    assert lease_name_for(None) == "peakpilot" and lease_name_for("team=chat") == "peakpilot-team-chat"
    assert lease_name_for("team=Chat_A,tier=gold") == "peakpilot-team-chat-a-tier-gold"


def test_loadgens_start_is_read_on_the_traces_clock():
    """--start without an offset is a time on the trace's own clock; with one, the same instant converted."""
    import pandas as pd

    from peakpilot.cli.node_commands import trace_time

    naive = pd.date_range("2024-01-01", periods=3, freq="1min")
    assert trace_time("2024-01-01T00:01", naive) == naive[1]
    assert trace_time("2024-01-01T02:01+02:00", naive) == naive[1]
    new_york = naive.tz_localize("America/New_York")
    assert trace_time("2024-01-01T00:01", new_york) == new_york[1]
    assert trace_time("2024-01-01T05:01Z", new_york) == new_york[1]


def test_the_column_options_name_the_columns_read_without_them():
    """--timestamp-column's and --count-column's help name the columns peakpilot finds by itself."""
    from forecaster.csv_source import COUNT_COLUMNS, TIMESTAMP_COLUMNS
    from peakpilot.cli.history_options import CountColumn, TimestampColumn

    for option, names in ((TimestampColumn, TIMESTAMP_COLUMNS), (CountColumn, COUNT_COLUMNS)):
        help_text = option.__metadata__[0].help
        assert f"{', '.join(names[:-1])} or {names[-1]}" in help_text


def test_a_port_already_taken_is_said_before_the_server_starts(tmp_path):
    """serve, dashboard and the daemon's --metrics-port on a port something else holds: exit 2 naming the
    option and the address, before a model loads or Streamlit starts (the node said it after its start,
    with a traceback from its shutdown; the daemon with a traceback; the dashboard after saying where it was)."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        for args, flag in ((["serve", "--port", port], "--port"), (["dashboard", "--port", port], "--port"),
                           (["run", "--once", "--metrics-port", port, "--store", str(tmp_path / "d.db")],
                            "--metrics-port")):
            out = run(*args)
            assert out.returncode == 2, (args, out.stderr)
            assert f"{flag} {port}: cannot listen on 127.0.0.1:{port} (Address already in use)" in out.stderr
            assert "Traceback" not in out.stderr and "dashboard on" not in out.stderr


def test_status_says_what_each_service_last_decided_and_flags_one_no_longer_run(tmp_path):
    """``peakpilot status`` on the store a daemon writes: a line per service (load, forecast, ready
    against decided by class), each class's reason and what the cluster showed that needs a look, a
    service whose last cycle is old flagged as such; ``--json``, ``--service``, and exit 2 naming the
    store where there is nothing to show."""
    from datetime import datetime, timedelta, timezone

    import numpy as np

    from controller.state import Decision
    from controller.store import Store

    now = datetime.now(timezone.utc).replace(second=0, microsecond=0, tzinfo=None)
    url = f"sqlite:///{tmp_path / 'd.db'}"
    looks = ["spot cannot be had (spot pod s5 unscheduled for 25 min (spot's lead time is 16 min)): on-demand "
             "stands in for the spot asked for", "pods not created: llm-od: 2 pod(s) not created (FailedCreate: "
             "exceeded quota: gpus)"]
    with Store(url) as st:
        for service, ago, mode, spot, role in (("llm-chat", 3, "predictive", 7, "leader"),
                                               ("llm-old", 45, "reactive", 2, "follower")):
            at = now - timedelta(minutes=ago)
            minute = int(np.datetime64(at, "m").astype("int64"))
            run_id = st.service_run(service, f"{service}.yaml")
            st.record_cycle(run_id, minute, at.isoformat(timespec="minutes"),
                            {"load_rps": 412.25, "forecast_q50": 400.0, "forecast_q90": 498.0, "mode": mode, "role": role,
                             "ready_reserved": 4.0, "ready_spot": 5.0, "ready_on_demand": 0.0, "warming": 2.0,
                             "draining": 0.0, "cost_per_hour": 17.6,
                             "attention": "\n".join(looks) if service == "llm-chat" else None},
                            [Decision("spot", spot, 7, "forecast needs 11 by +14 min (q90, lead 16 min)"),
                             Decision("reserved", 4, 4, "reserved count 4")], {})
            with st.engine.begin() as conn:  # written then, as a daemon writes each cycle as it runs it
                conn.exec_driver_sql(f"UPDATE memory SET updated = {at.replace(tzinfo=timezone.utc).timestamp()}"
                                     f" WHERE run_id = {run_id}")
    out = run("status", "--store", url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "LAST", "CYCLE", "(UTC)", "ROLE", "MODE", "LOAD", "req/s", "FORECAST", "q90",
                                "READY", "r/s/od", "WARMING", "DECIDED", "r/s/od", "COST/h"]
    chat, old = lines[1].split(), lines[2].split()
    assert chat[0] == "llm-chat" and chat[3:5] == ["min", "ago)"] and chat[2] in ("(3", "(4")
    assert chat[5:] == ["leader", "predictive", "412.2", "498.0", "4/5/0", "2", "4/7/-", "17.60"]
    assert old[0] == "llm-old" and old[5:7] == ["follower", "stale"]
    assert "  (this replica follows the Lease: these decisions were not applied; the leader's were)" in lines
    assert "  reserved: 4 nodes (4 running): reserved count 4" in lines
    assert "  spot: 7 nodes (7 running): forecast needs 11 by +14 min (q90, lead 16 min)" in lines
    at = lines.index("  spot: 7 nodes (7 running): forecast needs 11 by +14 min (q90, lead 16 min)")
    assert lines[at + 1:at + 3] == [f"  ! {line}" for line in looks] and not lines[at + 3].startswith("  !")
    assert any(line.startswith("llm-old: no cycle recorded for 4") and "its daemon is not running" in line
               for line in lines)
    doc = json.loads(run("status", "--store", url, "--json", "--service", "llm-chat").stdout)
    assert [s["service"] for s in doc["services"]] == ["llm-chat"] and doc["store"] == url
    chat = doc["services"][0]
    assert (chat["mode"], chat["role"], chat["stale"], chat["ready"], chat["warming"]) == (
        "predictive", "leader", False, {"reserved": 4, "spot": 5, "on_demand": 0}, 2)
    assert [(d["cls"], d["desired"]) for d in chat["decisions"]] == [("reserved", 4), ("spot", 7)]
    assert chat["attention"] == looks
    for args, message in ((["--service", "llm-nope"], "no service 'llm-nope' in the store"),
                          ([], "does not exist")):
        bad = run("status", "--store", url if args else str(tmp_path / "none.db"), *args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    Store(f"sqlite:///{tmp_path / 'empty.db'}").close()
    empty = run("status", "--store", str(tmp_path / "empty.db"))
    assert empty.returncode == 2 and "holds no cycle of a daemon yet" in empty.stderr


def test_replay_of_the_sample_says_how_to_replay_the_policys_own_prometheus(tmp_path):
    """A policy that names its Prometheus, replayed without a trace: the sample trace it replays is said,
    with the option that replays the service's own history instead."""
    policy = tmp_path / "mine.yaml"
    policy.write_text((ROOT / "configs" / "policy.yaml").read_text()
                      .replace("  prometheus: null ", "  prometheus: http://prometheus.monitoring:9090 "))
    out = run("replay", "--policy", str(policy), "--strategies", "static", "--no-sweep")
    assert out.returncode == 0, out.stderr
    assert ("replaying the sample trace; --prometheus http://prometheus.monitoring:9090 replays the history of "
            "llm-chat") in out.stderr
    plain = run("replay", "--strategies", "static", "--no-sweep")
    assert "replaying the sample" not in plain.stderr
    # without a sweep there is one run per strategy: its cost is not called the cheapest reaching each level
    assert "no sweep: the one run at the policy's settings" in plain.stdout and "cheapest" not in plain.stdout


def test_check_policy_passes_the_shipped_ones_and_names_every_problem(tmp_path):
    out = run("check-policy")
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout and "service llm-chat" in out.stdout
    (tmp_path / "good.yaml").write_text((ROOT / "configs" / "policy.yaml").read_text())
    (tmp_path / "again.yaml").write_text((ROOT / "configs" / "policy.yaml").read_text()
                                         .replace("timezone: null", "timezone: Europe/Berlin"))
    (tmp_path / "bad.yaml").write_text("service: x\ncapacity: {peak_nodes: 0}\n")
    out = run("check-policy", str(tmp_path))
    assert out.returncode == 2
    assert f"{tmp_path / 'bad.yaml'}: capacity.peak_nodes: Input should be greater than 0" in out.stderr
    assert f"{tmp_path / 'good.yaml'}: service 'llm-chat' is also the service of {tmp_path / 'again.yaml'}" \
        in out.stderr
    assert f"ok     {tmp_path / 'again.yaml'}" in out.stdout and "good.yaml" not in out.stdout
    assert out.stdout.rstrip().endswith("0 events, calendar on Europe/Berlin")
    doc = json.loads(run("check-policy", str(ROOT / "configs"), "--json").stdout)
    assert doc["ok"] and doc["problems"] == []
    # every default filled in: what the daemon will run with
    assert "max_forecast_age_min" not in (ROOT / "configs" / "chat-hourly-no-spot.yaml").read_text()
    assert doc["policies"][str(ROOT / "configs" / "chat-hourly-no-spot.yaml")]["planning"]["max_forecast_age_min"] == 15
