"""The Prometheus source against a real Prometheus, backfilled with a real trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecaster.csv_source import load_csv
from forecaster.errors import HistoryError
from forecaster.prometheus_source import PrometheusSource
from tests.conftest import free_port, trace_path


def openmetrics_from(history_counts: pd.Series, shift: pd.Timedelta) -> str:
    """Cumulative counter samples at each interval's end, as a scraped node would have exposed them."""
    lines = ["# TYPE peakpilot_requests counter"]
    step = pd.Timedelta(history_counts.index.freq)
    first = (history_counts.index[0] + shift).timestamp()
    lines.append(f'peakpilot_requests_total{{node="a"}} 0 {int(first)}')
    total = 0.0
    for t, v in history_counts.items():
        total += v
        lines.append(f'peakpilot_requests_total{{node="a"}} {total:g} {int((t + shift + step).timestamp())}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture
def backfilled(prometheus_factory):
    """Two days of the NASA July trace (1-minute counts), moved to end 3 hours ago."""
    history = load_csv(trace_path("nasa_http_1995_jul.csv"))
    counts = history.counts["1995-07-10T00:00:00-04:00":].iloc[: 2 * 1440].fillna(0)
    counts.index.freq = "1min"
    now = pd.Timestamp.now(tz="UTC").floor("1h")
    shift = (now - pd.Timedelta(hours=3) - pd.Timedelta(days=2)) - counts.index[0].tz_convert("UTC")
    server = prometheus_factory()
    server.backfill(openmetrics_from(counts, shift))
    server.start()
    return server, counts, shift


def test_prometheus_reads_back_the_csv_counts(backfilled):
    server, counts, shift = backfilled
    start = counts.index[0] + shift
    source = PrometheusSource(server.url, step="1m", chunk_points=1000)  # three chunks
    history = source.load(start, start + pd.Timedelta(days=2))
    assert len(history) == len(counts) and history.step_min == 1
    np.testing.assert_allclose(history.counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
    assert history.start == start


def test_prometheus_gaps_are_reported_and_filled(backfilled):
    server, counts, shift = backfilled
    start = counts.index[0] + shift - pd.Timedelta(hours=1)  # an hour before the data begins
    history = PrometheusSource(server.url, step="1m").load(start, start + pd.Timedelta(hours=3))
    assert history.counts.iloc[:60].isna().all()
    assert history.gaps[0].start == start and history.gaps[0].end == start + pd.Timedelta(minutes=60)
    assert history.filled().notna().all()


def test_a_history_asked_for_more_days_than_prometheus_holds_starts_where_its_data_does(backfilled, caplog):
    """Asked for 5 days where Prometheus holds 2 (its retention, or a young service), the history starts
    at the first sample and says so; it began with 3 days of gap, filled with the first value repeated,
    which the models learned as the service's usual week (and replay trained on only that)."""
    import logging

    from controller.signals import PrometheusSignals

    server, counts, shift = backfilled
    start = counts.index[0] + shift
    end = start + pd.Timedelta(days=2)
    with caplog.at_level(logging.WARNING):
        history = PrometheusSource(server.url, step="1m").load_days(5, end=end.to_pydatetime())
    assert history.start == start and len(history) == len(counts) and history.gaps == []
    np.testing.assert_allclose(history.counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
    assert f"no samples before {start.tz_convert('UTC').isoformat()}" in caplog.text
    assert "2.0 days of the 5 asked for" in caplog.text
    # The daemon reads its history the same way.
    live = PrometheusSignals(server.url, step="1m", history_days=5).history(np.datetime64(end.tz_convert(None), "m"))
    assert live.start == start and len(live) == len(counts)
    # A source's own range keeps its missing start as a gap (a window of the live history extended).
    assert PrometheusSource(server.url, step="1m").load(end - pd.Timedelta(days=3), end).gaps[0].start \
        == end - pd.Timedelta(days=3)


def test_an_outage_the_daemon_reads_a_minute_at_a_time_is_a_gap_as_in_a_history_read_whole(prometheus_factory):
    """The daemon extends its history by the minutes since the last cycle. Two hours of zeros where the
    traffic stopped (the service down, not its users) came in a minute at a time, too short each to be
    judged, and stayed zeros: learned as two hours of no demand. Judged again whole, they are the gap a
    history read at once shows."""
    from controller.signals import PrometheusSignals

    history = load_csv(trace_path("nasa_http_1995_jul.csv"))
    counts = history.counts["1995-07-10T00:00:00-04:00":].iloc[: 2 * 1440].fillna(0)
    counts.index.freq = "1min"
    counts.iloc[30 * 60:32 * 60] = 0.0  # day 2, 06:00-08:00: the service was down
    now = pd.Timestamp.now(tz="UTC").floor("1h")
    shift = (now - pd.Timedelta(days=3)) - counts.index[0].tz_convert("UTC")
    server = prometheus_factory()
    server.backfill(openmetrics_from(counts, shift))
    server.start()
    start = (counts.index[0] + shift).tz_convert(None)
    signals = PrometheusSignals(server.url, step="1m", history_days=5)
    for minute in range(29 * 60, 33 * 60 + 1):  # from an hour before the outage to an hour after, cycle by cycle
        live = signals.history(np.datetime64(start + pd.Timedelta(minutes=minute), "m"))
    end = (start + pd.Timedelta(hours=33)).tz_localize("UTC")
    whole = PrometheusSource(server.url, step="1m").load_days(5, end=end)
    assert live.start == whole.start and len(live) == len(whole) == 33 * 60
    outage = live.counts.iloc[30 * 60:32 * 60]
    assert outage.isna().all() and whole.counts.iloc[30 * 60:32 * 60].isna().all()
    assert (live.counts.isna() == whole.counts.isna()).all()
    assert [(g.start, g.end, g.reason) for g in live.gaps] == [(g.start, g.end, g.reason) for g in whole.gaps]
    assert live.gaps[-1].reason == "zeros where the usual level predicts traffic"  # not "no data": said as such


def test_a_scrape_appended_after_its_minute_was_read_is_read_the_next_cycle(prometheus_factory, caplog):
    """Prometheus appends a scrape once it completes (a remote-write backend later still), so the minute
    read the moment it ends may lack its last sample: a rate() of one sample is none, and the step is
    missing. The daemon extended its history from its end, so that step stayed missing for good (filled
    with yesterday's for the models, and said as an outage); it reads the last minutes again each cycle,
    and a step missing for less than 5 minutes is not yet called an outage."""
    import logging

    from controller.notices import Notices
    from controller.signals import PrometheusSignals

    history = load_csv(trace_path("nasa_http_1995_jul.csv"))
    counts = history.counts["1995-07-10T10:00:00-04:00":].iloc[:6 * 60].fillna(0)
    counts.index.freq = "1min"
    now = pd.Timestamp.now(tz="UTC").floor("1h")
    shift = (now - pd.Timedelta(hours=9)) - counts.index[0].tz_convert("UTC")
    lines = openmetrics_from(counts, shift).splitlines()
    server = prometheus_factory()
    server.backfill("\n".join(lines[:-3] + lines[-1:]) + "\n")  # the last two minutes' samples not in yet
    server.start()
    end = (counts.index[-1] + shift + counts.index.freq).tz_convert(None)  # where the samples end
    signals, notices = PrometheusSignals(server.url, step="1m", history_days=1), Notices("llm-chat")
    with caplog.at_level(logging.WARNING, logger="peakpilot.daemon"):
        first = signals.history(np.datetime64(end - pd.Timedelta(minutes=1), "m"))
        assert first.counts.iloc[-1:].isna().all() and notices.live_gap(first) is None
    assert [r.getMessage() for r in caplog.records if r.name == "peakpilot.daemon"] == []  # no outage said
    server.stop()
    server.backfill("\n".join(lines[:1] + lines[-3:]) + "\n")  # they come in
    server.start()
    live = signals.history(np.datetime64(end, "m"))
    assert live.gaps == [] and len(live) == len(counts)
    np.testing.assert_allclose(live.counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)


def test_the_load_is_observed_at_any_step(backfilled):
    """The daemon observes the last step's rate. It read the last 5 minutes, which hold no whole step of
    10 minutes or more (``signals.step`` may be up to 1h): every cycle failed with "no samples", and the
    service ran on the last load it had."""
    from controller.signals import PrometheusSignals

    server, counts, shift = backfilled
    end = (counts.index[0] + shift + pd.Timedelta(days=1)).tz_convert(None)
    for step, minutes in (("1m", 1), ("5m", 5), ("10m", 10), ("1h", 60)):
        seen = PrometheusSignals(server.url, step=step).observe(np.datetime64(end, "m"))
        expected = counts.iloc[1440 - minutes:1440].sum() / (minutes * 60)
        assert seen.load_rps == pytest.approx(expected, rel=1e-6), step


def test_prometheus_errors_name_the_url_and_query(backfilled):
    server, counts, shift = backfilled
    start = counts.index[0] + shift
    with pytest.raises(HistoryError, match="Prometheus answered an error.*parse error"):
        PrometheusSource(server.url, query="sum(rate(").load(start, start + pd.Timedelta(hours=1))
    with pytest.raises(HistoryError, match="no samples"):
        PrometheusSource(server.url, query="sum(rate(nothing_here_total[1m]))").load(start, start + pd.Timedelta(hours=1))
    with pytest.raises(HistoryError, match="returns 2 series"):
        PrometheusSource(server.url, query='label_replace(vector(1), "a", "b", "", "") or '
                                           'label_replace(vector(2), "c", "d", "", "")').load(
            start, start + pd.Timedelta(minutes=5))
    with pytest.raises(HistoryError, match="empty range"):
        PrometheusSource(server.url).load(start, start)
    # the counter itself, summed without rate(): its running total, which a forecaster would learn as a ramp
    total = "sum(peakpilot_requests_total)"
    with pytest.raises(HistoryError, match=r"the query answers no request rate: it only grows \(100% of its 1500 "
                                           r"steps .*running total does; take its rate, e.g. sum\(rate\(COUNTER\[1m\]\)\)"):
        PrometheusSource(server.url, query=total).load(start, start + pd.Timedelta(hours=25))
    hours = PrometheusSource(server.url, query=total).load(start, start + pd.Timedelta(hours=6))
    assert len(hours) == 360  # (hours that only grow may be a morning's traffic: not refused)
    # increase() over [1m]: each minute's requests, 60 times the rate per second read (refused before a query)
    with pytest.raises(HistoryError, match=r"query 'sum\(increase\(peakpilot_requests_total\[1m\]\)\)': the "
                                           r"query takes increase\(\), which counts each range's requests"):
        PrometheusSource(server.url, query="sum(increase(peakpilot_requests_total[{step}]))")
    for per_minute, factor in (("sum(rate(peakpilot_requests_total[1m])) * 60", 60), ("3600*sum(rate(x[5m]))", 3600)):
        with pytest.raises(HistoryError, match=rf"the query multiplies by {factor}, as a panel of requests per minute "
                                               rf"or hour does: peakpilot reads requests per second"):
            PrometheusSource(server.url, query=per_minute)
    for fine in ("sum(rate(x_60[5m])) * 1.60", "sum(rate(x[5m])) * 600", 'sum(rate(x{unit="* 60"}[5m]))'):
        assert PrometheusSource(server.url, query=fine).query == fine
    hourly = "sum(increase(peakpilot_requests_total[1h])) / 3600"  # a rate, divided: read
    rates = PrometheusSource(server.url, query="sum(rate(peakpilot_requests_total[1h]))").load(
        start + pd.Timedelta(hours=1), start + pd.Timedelta(hours=2))
    divided = PrometheusSource(server.url, query=hourly).load(start + pd.Timedelta(hours=1), start + pd.Timedelta(hours=2))
    assert len(divided) == 60 and np.allclose(divided.counts.to_numpy(), rates.counts.to_numpy(), rtol=1e-6)


def test_a_rate_range_shorter_than_the_step_is_said(caplog):
    """rate(x[1m]) read every 5 minutes counts each step from its last minute alone (a burst in the other four
    is missed): said, with [{step}] as the fix; a range of the step or longer, or one inside a string, is not."""
    with caplog.at_level("WARNING", logger="forecaster.prometheus_source"):
        PrometheusSource("http://prom:9090", query="sum(rate(x_total[1m])) + sum(rate(y_total[5m]))", step="5m")
        PrometheusSource("http://prom:9090", query='sum(rate(x_total{window="[1m]"}[{step}]))', step="5m")
        PrometheusSource("http://prom:9090", query="sum(rate(x_total[1m]))", step="1m")
    said = [r.getMessage() for r in caplog.records]
    assert said == ["http://prom:9090 query 'sum(rate(x_total[1m])) + sum(rate(y_total[5m]))': the range [1m] is "
                    "shorter than the step (5m): each step's count is its last 1m's rate times the step, the rest "
                    "of it unread (a burst there is missed); write [{step}], which peakpilot fills with the step"]


def test_prometheus_down_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HistoryError, match="Prometheus is unreachable") as err:
        PrometheusSource(url).load_days(1)
    assert err.value.where == url


def test_a_prometheus_that_takes_the_connection_and_never_answers_is_a_clear_error(silent_port, monkeypatch):
    """Without a client timeout this read waits for ever, and with it the daemon's cycle."""
    import time

    import forecaster.prometheus_source as source

    monkeypatch.setattr(source, "CLIENT_MARGIN_S", 0.5)
    url = f"http://127.0.0.1:{silent_port}"
    started = time.monotonic()
    with pytest.raises(HistoryError, match=r"Prometheus did not answer within 1\.5 s") as err:
        PrometheusSource(url, timeout_s=1.0).load_days(1)
    assert time.monotonic() - started < 6  # two tries of 1.5 s, not four
    assert err.value.where == url
    # Another source (another service's) on the same Prometheus does not wait for it again ...
    started = time.monotonic()
    with pytest.raises(HistoryError, match=r"did not answer within 1\.5 s \(.*\) \d+ s ago; not asked again"):
        PrometheusSource(url, query="sum(rate(other_total[1m]))", timeout_s=1.0).load_days(1)
    assert time.monotonic() - started < 0.5
    # ... until the pause is over: then it is asked, and waited for, again.
    monkeypatch.setattr(source, "RETRY_AFTER_FAILURE_S", 0.0)
    started = time.monotonic()
    with pytest.raises(HistoryError, match=r"did not answer within 1\.5 s \(overloaded"):
        PrometheusSource(url, timeout_s=1.0).load_days(1)
    assert time.monotonic() - started > 1.4


def test_a_counter_scraped_too_seldom_for_the_rate_window_is_named_with_its_fix(prometheus_factory):
    """A counter scraped once a minute (Prometheus's default interval), at seconds that are not the
    minute's: a 1-minute rate window holds one sample, so rate() has no value. The load says why and what
    to set, instead of failing with "no samples" (or, where a few windows catch two, returning gaps)."""
    history = load_csv(trace_path("nasa_http_1995_jul.csv"))
    counts = history.counts["1995-07-10T00:00:00-04:00":].iloc[:360].fillna(0)
    counts.index.freq = "1min"
    now = pd.Timestamp.now(tz="UTC").floor("1h")
    shift = (now - pd.Timedelta(hours=9)) - counts.index[0].tz_convert("UTC") + pd.Timedelta(seconds=30)
    server = prometheus_factory()
    server.backfill(openmetrics_from(counts, shift))
    server.start()
    start = (counts.index[0] + shift).floor("1min") + pd.Timedelta(minutes=1)
    end = start + pd.Timedelta(hours=5)
    with pytest.raises(HistoryError, match=r"scraped about every \d+ s, so a rate window of one step \(1m\) "
                                           r"seldom holds the two samples rate\(\) needs: set signals.step to 2m"):
        PrometheusSource(server.url, step="1m").load(start, end)
    # The fix it names works: two samples in every 2-minute window, the trace's volume read back.
    two = PrometheusSource(server.url, step="2min").load(start, end)  # pandas' spelling is taken too
    assert two.counts.notna().all()
    assert two.counts.sum() == pytest.approx(counts[start - shift:end - shift - pd.Timedelta(minutes=1)].sum(), rel=0.03)
    # So does a wider window in a query of one's own, and such a query is not second-guessed.
    own = PrometheusSource(server.url, query="sum(rate(peakpilot_requests_total[3m]))", step="1m").load(start, end)
    assert own.counts.iloc[5:].notna().all()


def test_a_counter_prometheus_does_not_have_is_named(prometheus_factory):
    server = prometheus_factory().start()
    end = pd.Timestamp.now(tz="UTC").floor("1min")
    with pytest.raises(HistoryError, match="holds no peakpilot_requests_total in the 10 minutes before .* it does "
                                           "not scrape the inference nodes"):
        PrometheusSource(server.url).load(end - pd.Timedelta(hours=1), end)


def test_steps_are_written_as_promql_durations_whatever_their_spelling():
    from forecaster.prometheus_source import prometheus_duration

    assert [prometheus_duration(pd.Timedelta(x)) for x in ("30s", "1min", "5min", "90s", "1h", "2h", "15m")] == \
        ["30s", "1m", "5m", "90s", "1h", "2h", "15m"]
    assert "[5m]" in PrometheusSource("http://prometheus:9090", step="5min").query
    with pytest.raises(HistoryError, match="step 'often' is not a duration"):
        PrometheusSource("http://prometheus:9090", step="often")
    with pytest.raises(HistoryError, match="whole number of seconds"):
        PrometheusSource("http://prometheus:9090", step="1500ms")


def test_replay_and_backtest_run_on_the_history_prometheus_holds(backfilled, tmp_path):
    """What peakpilot would have done on your own service's load: ``replay`` and ``backtest`` read it from
    Prometheus (``--prometheus``, ``--days``, ``--end``) and give what they give on the same counts as a
    CSV trace."""
    import json
    import subprocess
    import sys

    server, counts, shift = backfilled
    utc = counts.index.tz_convert("UTC") + shift
    csv = tmp_path / "same.csv"
    pd.DataFrame({"timestamp": utc.tz_localize(None).strftime("%Y-%m-%dT%H:%M:%S"),
                  "requests": counts.to_numpy()}).to_csv(csv, index=False)
    end = (utc[-1] + pd.Timedelta(minutes=1)).isoformat()

    def peakpilot(*args):
        out = subprocess.run([sys.executable, "-m", "peakpilot.cli", *args, "--json"], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # The policy names the service's own query (here the one node's series): replay reads the load the daemon would.
    query = 'sum(rate(peakpilot_requests_total{node="a"}[{step}]))'
    policy = tmp_path / "policy.yaml"
    policy.write_text(Path("configs/policy.yaml").read_text().replace("  query: null ", f"  query: '{query}' "))
    replay = ["replay", "--train-days", "1", "--no-sweep", "--strategies", "predictive,reactive", "--policy",
              str(policy)]
    live = peakpilot(*replay, "--prometheus", server.url, "--days", "2", "--end", end)
    trace = peakpilot(*replay, "--trace", str(csv))
    assert live["trace"] == f"{server.url} query {query.replace('{step}', '1m')!r}"
    assert live["minutes"] == trace["minutes"] == 1440
    for name in ("predictive", "reactive"):
        a, b = live["strategies"][name], trace["strategies"][name]
        assert a["cost_usd"] == pytest.approx(b["cost_usd"], rel=1e-3)
        assert a["sla_compliance"] == pytest.approx(b["sla_compliance"], abs=1e-4)
    backtest = ["backtest", "--models", "seasonal_naive,recent_level", "--test-days", "0.5"]
    live = peakpilot(*backtest, "--prometheus", server.url, "--days", "2", "--end", end)
    trace = peakpilot(*backtest, "--trace", str(csv))
    for name in ("seasonal_naive", "recent_level"):
        assert live["models"][name]["pinball_q90"] == pytest.approx(trace["models"][name]["pinball_q90"], rel=1e-6)
    # and the reserved count for the service's own history, from the same counts as the CSV's
    reserve = ["recommend-reserved", "--policy", str(policy)]
    live = peakpilot(*reserve, "--prometheus", server.url, "--days", "2", "--end", end)
    trace = peakpilot(*reserve, "--trace", str(csv))
    assert live["reserved"] == trace["reserved"] and live["hours"] == trace["hours"] == 48
    assert live["cost_usd_by_count"] == pytest.approx(trace["cost_usd_by_count"], rel=1e-3)
    bad = subprocess.run([sys.executable, "-m", "peakpilot.cli", "replay", "--prometheus", server.url, "--end",
                          "yesterday-ish"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--end 'yesterday-ish': not a time" in bad.stderr


def test_the_busy_share_is_read_at_the_minute_observed_from_the_nodes_or_the_policys_query(prometheus_factory, caplog):
    """The safety net's busy share: by default the inference nodes' busy answers over all answers, or the
    policy's ``signals.busy_query`` (here a queue depth scaled to 0-1), read at the minute observed; a
    query that fails counts as none and is said once, not every cycle."""
    from controller.signals import PrometheusSignals

    end = pd.Timestamp.now(tz="UTC").floor("1h") - pd.Timedelta(hours=3)
    stamps = [int((end - pd.Timedelta(seconds=s)).timestamp()) for s in range(1800, -1, -15)]
    lines = ["# TYPE peakpilot_requests counter"]
    for outcome, per_s in (("ok", 9), ("busy", 1)):
        lines += [f'peakpilot_requests_total{{outcome="{outcome}"}} {per_s * (t - stamps[0])} {t}' for t in stamps]
    lines += ["# TYPE llm_queue_waiting gauge", *(f"llm_queue_waiting 30 {t}" for t in stamps)]
    lines += ["# TYPE pod_busy_share gauge", *(f'pod_busy_share{{pod="{pod}"}} {share} {t}' for t in stamps
                                               for pod, share in (("a", 0.05), ("b", 0.5))), "# EOF"]
    server = prometheus_factory()
    server.backfill("\n".join(lines) + "\n")
    server.start()
    minute = np.datetime64(end.tz_localize(None), "m")

    nodes = PrometheusSignals(server.url).observe(minute)  # three hours ago, where the wall clock has no samples
    assert nodes.busy_share == pytest.approx(0.1) and nodes.load_rps == pytest.approx(10.0)
    queue = PrometheusSignals(server.url, busy_query="clamp_max(max(llm_queue_waiting) / 100, 1)")
    assert queue.observe(minute).busy_share == pytest.approx(0.3)

    broken = PrometheusSignals(server.url, busy_query="sum(rate(llm_requests_total[{step}])", service="chat")
    with caplog.at_level("INFO", logger="peakpilot.daemon"):
        observed = [broken.observe(minute) for _ in range(3)]
        broken.busy_query = "max(llm_queue_waiting) / 100"
        assert broken.observe(minute).busy_share == pytest.approx(0.3)
    assert [o.busy_share for o in observed] == [0.0] * 3 and observed[0].load_rps == pytest.approx(10.0)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "sum(rate(llm_requests_total[1m])" in said[0] and "failed" in said[0]
    assert said[0].startswith("chat: busy share") and said[1].startswith("chat: busy share")
    assert "answers again" in said[1]
    # a percentage where a share is read: 30 would be 100% busy, and scale the service up for nothing
    percent = PrometheusSignals(server.url, busy_query="max(llm_queue_waiting)", service="chat")
    caplog.clear()
    with caplog.at_level("WARNING", logger="peakpilot.daemon"):
        assert percent.observe(minute).busy_share == 0.0
    assert "it answered 30, not a share from 0 to 1 (a percentage? divide it by 100" in caplog.text
    assert percent.busy_failure.startswith("it answered 30")
    # one series per pod: the first pod's share is not the service's; a scalar is read as the share
    per_pod = PrometheusSignals(server.url, busy_query="pod_busy_share", service="chat")
    assert per_pod.observe(minute).busy_share == 0.0
    assert per_pod.busy_failure.startswith("it answered 2 series, not one (one per pod?): aggregate it")
    scalar = PrometheusSignals(server.url, busy_query="scalar(max(llm_queue_waiting)) / 100")
    assert scalar.observe(minute).busy_share == pytest.approx(0.3) and scalar.busy_failure is None


@pytest.mark.parametrize("result,shown", [
    ([None], "a series None"),
    ([{"metric": {}, "values": [[1704153600, "5"], [1704153660]]}], "'values': [[1704153600, '5'], [1704153660]]"),
    ([[1704153600, "5"]], "a series [1704153600, '5']"),
])
def test_an_answer_not_shaped_as_prometheuss_is_refused_showing_it(result, shown):
    """A server in front of Prometheus (a proxy, a backend that is not quite Prometheus) answering success with
    series of another shape: refused, showing the series (it was an AttributeError's or ValueError's traceback).
    No real Prometheus answers so, so a plain HTTP server stands in for the one in front."""
    import json
    import threading
    from datetime import datetime, timezone
    from http.server import BaseHTTPRequestHandler, HTTPServer

    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(HistoryError, match="unexpected answer") as err:
            PrometheusSource(f"http://127.0.0.1:{server.server_port}", step="1m").load(
                datetime(2024, 1, 2, tzinfo=timezone.utc), datetime(2024, 1, 2, 1, tzinfo=timezone.utc))
        assert shown in str(err.value)
    finally:
        server.shutdown()
