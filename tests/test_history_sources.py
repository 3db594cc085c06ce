"""History from CSV files: real traces, request logs, gaps, and every bad-input case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecaster.csv_source import load_csv, load_request_log
from forecaster.errors import HistoryError
from forecaster.history import Gap, History, fill_gaps
from tests.conftest import trace_path


def write(tmp_path, text: str, name: str = "t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,step_min,rows", [
    ("nasa_http_1995_aug.csv", 1, 44640), ("aws_elb_requests_nab_2014.csv", 5, 4040),
    ("servegen_llm_m_small.csv", 10, 2016), ("azure_llm_conv_2023_1s.csv", 1 / 60, 3503),
])
def test_real_traces_load_at_their_own_step(name, step_min, rows):
    history = load_csv(trace_path(name))
    assert history.step_min == pytest.approx(step_min)
    assert len(history) == rows
    raw = pd.read_csv(trace_path(name))
    # Every observed count is the file's count; only gaps differ.
    observed = history.counts.notna().to_numpy()
    np.testing.assert_array_equal(history.counts.to_numpy()[observed], raw.requests.to_numpy()[observed])


def test_nasa_hurricane_outage_is_a_gap_not_a_quiet_night():
    history = load_csv(trace_path("nasa_http_1995_aug.csv"))
    longest = max(history.gaps, key=lambda g: g.end - g.start)
    # The documented shutdown: Aug 1 14:52:01 -> Aug 3 04:36:13 EDT.
    assert longest.start == pd.Timestamp("1995-08-01T14:53:00-04:00")
    assert longest.end == pd.Timestamp("1995-08-03T04:36:00-04:00")
    # Quiet night minutes with a few requests stay data.
    night = history.counts["1995-08-10T03:00:00-04:00":"1995-08-10T05:00:00-04:00"]
    assert night.notna().all()


def test_per_second_lulls_are_data_not_gaps():
    history = load_csv(trace_path("azure_llm_code_2023_1s.csv"))
    assert history.gaps == []
    assert (history.counts == 0).sum() == 2523


def test_servegen_collection_gaps_are_marked():
    history = load_csv(trace_path("servegen_llm_m_mid.csv"))
    # Every all-clients-zero window (84), and the windows around them where a few clients still logged
    # under 1% of the usual level: each outage is one gap, not zeros split by "demand" of 3-8 req/s.
    assert history.counts.isna().sum() == 100
    outage = next(g for g in history.gaps if g.start == pd.Timestamp("2000-01-12T15:00"))
    assert outage.end == pd.Timestamp("2000-01-12T16:50") and outage.reason.startswith("near zero")
    assert sum(g.reason.startswith("near zero") for g in history.gaps) == 7
    raw = pd.read_csv(trace_path("servegen_llm_m_mid.csv"), index_col=0, parse_dates=True).requests
    assert raw["2000-01-12T15:00":"2000-01-12T16:40"].max() < 0.01 * raw["2000-01-12T09:00":"2000-01-12T14:50"].mean()
    filled = history.filled()
    assert filled.notna().all() and (filled[history.counts.isna()] > 0).all()


def series(values: np.ndarray, freq: str = "10min") -> pd.Series:
    counts = pd.Series(values.astype(float), index=pd.date_range("2024-01-01", periods=len(values), freq=freq))
    counts.index.freq = freq
    return counts


def test_a_near_zero_outage_is_a_gap_and_a_quiet_night_is_not():
    from forecaster.history import mark_gaps

    level = np.full(144, 1_000_000.0)
    outage = level.copy()
    outage[60:72] = 2_000.0  # two hours at 0.2% of the usual level, falling in and coming back in one step
    marked, gaps = mark_gaps(series(outage), "t")
    assert marked.isna().sum() == 12 and marked[60:72].isna().all()
    assert len(gaps) == 1 and gaps[0].reason == "near zero where the usual level predicts traffic"
    # A night that ramps down to 0.5% and back up is data: no step falls or climbs by more than 2x.
    night = level.copy()
    night[40:90] = 1_000_000.0 * np.concatenate([0.5 ** np.arange(1, 9), np.full(34, 0.005), 0.5 ** np.arange(8, 0, -1)])
    marked, gaps = mark_gaps(series(night), "t")
    assert gaps == [] and marked.notna().all()
    # Zeros in a near-zero run that is not an outage are still judged by the zero rule.
    night[60:66] = 0.0
    marked, gaps = mark_gaps(series(night), "t")
    assert marked.isna().sum() == 6 and gaps[0].reason == "zeros where the usual level predicts traffic"


def daily(days: int = 9) -> pd.Series:
    """Minute counts that rise by one every minute: each value tells where it was copied from."""
    index = pd.date_range("2024-01-01", periods=days * 1440, freq="1min")
    counts = pd.Series(np.arange(len(index), dtype=float), index=index)
    counts.index.freq = "1min"
    return counts


def test_fill_is_the_day_before_and_never_reads_the_future():
    counts = daily()
    counts.iloc[2000:2010] = np.nan  # day before is observed
    counts.iloc[100:105] = np.nan  # first day: no day before -> last observed value
    filled = fill_gaps(counts)
    np.testing.assert_array_equal(filled.iloc[2000:2010], np.arange(2000, 2010) - 1440)
    assert (filled.iloc[100:105] == 99).all()
    later = counts.copy()
    later.iloc[2010:] *= 10  # whatever comes after the gap
    np.testing.assert_array_equal(fill_gaps(later).iloc[2000:2010], filled.iloc[2000:2010])


def test_fill_reads_yesterdays_fill_when_a_gap_recurs_daily_and_across_a_long_gap():
    counts = daily()
    for day in (8, 1, 2, 3):  # 05:00 for an hour on days 2-4 and 9: the day before is a gap too
        counts.iloc[day * 1440 + 300:day * 1440 + 360] = np.nan
    counts.iloc[5 * 1440 + 600:6 * 1440 + 900] = np.nan  # longer than a day
    filled = fill_gaps(counts)
    # Each recurring hour reads back to the last observed one, day 1's, never a week back.
    for day in (1, 2, 3):
        np.testing.assert_array_equal(filled.iloc[day * 1440 + 300:day * 1440 + 360], np.arange(300, 360))
    np.testing.assert_array_equal(filled.iloc[8 * 1440 + 300:8 * 1440 + 360], np.arange(300, 360) + 7 * 1440)
    # The long gap's second day repeats its first day's fill, which is the day before it.
    np.testing.assert_array_equal(filled.iloc[6 * 1440 + 600:6 * 1440 + 900], np.arange(600, 900) + 4 * 1440)
    assert filled.notna().all()


@pytest.mark.parametrize("day", ["2026-03-08", "2026-11-01"])
def test_a_gap_on_the_users_clock_is_filled_from_the_same_time_the_day_before(day):
    """On the users' clock the days the clocks change have 23 and 25 hours: a gap at 9:00 that day is
    filled from 9:00 the day before, 23 or 25 hours back; 24 hours back, the fill was an hour off."""
    utc = pd.date_range(pd.Timestamp(day) - pd.Timedelta(days=2), periods=96, freq="1h", tz="UTC")
    hours = utc.tz_convert("America/New_York").hour.to_numpy().astype(float)  # each hour's value: its hour
    history = History(pd.Series(hours, index=utc.tz_localize(None)), "clock").in_timezone("America/New_York")
    gap = (history.counts.index >= pd.Timestamp(f"{day} 09:00", tz="America/New_York")) & \
        (history.counts.index < pd.Timestamp(f"{day} 12:00", tz="America/New_York"))
    history.counts[gap] = np.nan
    assert history.filled()[gap].tolist() == [9.0, 10.0, 11.0]


def test_request_log_is_counted_per_step(tmp_path):
    """Arrivals per step, whole steps only: the log's last minute (up to its last request) and its first (from
    its first request on) are partly outside it, and counted they read as a dip where the forecast starts."""
    path = write(tmp_path, "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,10\n2023-11-16 18:15:59.1,3\n"
                           "2023-11-16 18:17:01,4\n2023-11-16 18:16:30,4\n2023-11-16 18:16:02,4\n"
                           "2023-11-16 18:18:01,4\n")
    history = load_request_log(path, step="1min")
    assert list(history.counts) == [2.0, 1.0]
    assert history.start == pd.Timestamp("2023-11-16 18:16")
    # load_csv detects the shape by its columns.
    assert list(load_csv(path).counts) == [2.0, 1.0]
    on_the_minute = write(tmp_path, "ts\n2023-11-16 18:15:00\n2023-11-16 18:15:40\n2023-11-16 18:16:20\n", "m.csv")
    assert list(load_csv(on_the_minute).counts) == [2.0]  # a log starting at a step's start has that step whole
    with pytest.raises(HistoryError, match=r"t.csv: its 6 requests, from 2023-11-16 18:15:46.680000 to 2023-11-16 "
                                           r"18:18:01, fill no whole step of 1h \(the first and last are partly "
                                           r"outside the log\): give a shorter step"):
        load_request_log(path, step="1h")


def test_counts_under_another_column_name_are_not_read_as_a_request_log(tmp_path):
    """Rows one step apart beside a column of numbers are counts whose column has another name: refused,
    naming it, where read as a request log they were a flat line of one request a row. A request log
    with numbers beside its times (Azure's token counts) is still counted."""
    rps = write(tmp_path, "timestamp,rps\n" + "".join(f"2026-01-01T00:0{i}:00Z,{5 + i}\n" for i in range(4)), "r.csv")
    with pytest.raises(HistoryError, match=r"r.csv: no count column .*one every 1 min, as a counts file's do, "
                                           r"beside 'rps': if 'rps' counts the requests of each interval, give "
                                           r"--count-column rps \(or name it requests in the header\); if it is a "
                                           r"rate per second, --rate-column rps"):
        load_csv(rps)
    assert list(load_csv(rps, count_column="rps").counts) == [5, 6, 7, 8]
    assert list(load_csv(rps, rate_column="rps").counts) == [300, 360, 420, 480]  # requests per second x 60 s
    seconds = write(tmp_path, "ts,qps\n" + "".join(f"{1704067200 + 10 * i},{i}\n" for i in range(3)), "q.csv")
    with pytest.raises(HistoryError, match="one every 10 s, as a counts file's do, beside 'qps'"):
        load_csv(seconds)
    grafana = write(tmp_path, '"Time","{job=""chat""}"\n' + "".join(f"2026-01-01 00:0{i}:00,{0.5 * i}\n"
                                                                      for i in range(4)), "g.csv")
    with pytest.raises(HistoryError, match="give --count-column '{job=\"chat\"}' .*--rate-column '{job=\"chat\"}'"):
        load_csv(grafana)  # a Grafana panel's export: the column is named after the series, quoted for a shell
    assert list(load_csv(grafana, rate_column='{job="chat"}').counts) == [0, 30, 60, 90]
    log = write(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,2\n"
                          "2023-11-16 18:15:59.1,3,4\n2023-11-16 18:17:01,4,4\n2023-11-16 18:18:30,1,1\n", "log.csv")
    assert list(load_csv(log).counts) == [0.0, 1.0]


def test_a_stray_row_far_from_the_rest_is_refused_naming_it(tmp_path):
    """A row of Unix time 0 or a mistyped year, a day or more from the rest and further than the rest spans,
    was read as decades of gap with the data at one end (gigabytes, and a forecast of the fill): refused,
    naming its line, in a counts file and in a request log, at either end. A long outage inside the
    history (shorter than the data around it) is still a gap."""
    rows = [f"2024-01-0{1 + i // 1440}T{i % 1440 // 60:02d}:{i % 60:02d}:00,50\n" for i in range(3 * 1440)]
    head = write(tmp_path, "timestamp,requests\n1970-01-01T00:00:00,3\n" + "".join(rows), "head.csv")
    with pytest.raises(HistoryError, match=r"head.csv:2: '1970-01-01T00:00:00', then '2024-01-01T00:00:00' \(line "
                                           r"3\): the first row stands 54.0 years before the other 4,320: a stray "
                                           r"row .*cut the file to it"):
        load_csv(head)
    tail = write(tmp_path, "timestamp,requests\n" + "".join(rows) + "".join(
        f"2025-01-0{d}T00:00:00,9\n" for d in (1, 2)), "tail.csv")
    with pytest.raises(HistoryError, match=r"tail.csv:4321: '2024-01-03T23:59:00', then '2025-01-01T00:00:00' "
                                           r"\(line 4322\): the last 2 rows, over 1.0 days, stand 363.0 days after "
                                           r"the other 4,320"):
        load_csv(tail)
    log = write(tmp_path, "ts,user\n" + "".join(f"{1704067200 + 6 * i},u\n" for i in range(30_000)) + "0,u\n",
                "log.csv")
    with pytest.raises(HistoryError, match=r"log.csv:30002: '0', then '1704067200' \(line 2\): the first row stands "
                                           r"54.0 years before the other 30,000"):
        load_csv(log)
    outage = write(tmp_path, "timestamp,requests\n" + "".join(rows[:1440] + rows[-1440:]), "outage.csv")
    assert [(g.start.day, g.end.day) for g in load_csv(outage).gaps] == [(2, 3)]  # a day out of three


def test_a_running_total_is_refused_as_no_count_per_interval(tmp_path):
    """A counter's running total written as counts (a day of it at 10 minutes) only grows: refused, where a
    forecaster would learn it as a ramp. Real traffic falls every night, so every real trace reads."""
    totals = np.cumsum(np.random.default_rng(0).poisson(50, 144))
    rows = "".join(f"{1704067200 + 600 * i},{v}\n" for i, v in enumerate(totals))
    with pytest.raises(HistoryError, match=r"t.csv: requests is no count per interval: it only grows \(100% of its "
                                           r"144 steps .*as a counter's running total does; give each interval's "
                                           r"requests"):
        load_csv(write(tmp_path, "timestamp,requests\n" + rows, "t.csv"))
    steps = "".join(f"{1704067200 + 600 * i},{v}\n" for i, v in enumerate(np.diff(totals, prepend=0)))
    assert load_csv(write(tmp_path, "timestamp,requests\n" + steps, "d.csv")).counts.sum() == totals[-1]
    # counted by the day, a growing service grows every day: no night shows at that step, so it is read
    days = "".join(f"{(pd.Timestamp('2024-01-01') + pd.Timedelta(days=i)).date()},{1000 + 10 * i}\n" for i in range(90))
    assert load_csv(write(tmp_path, "date,count\n" + days, "days.csv")).counts.iloc[-1] == 1890


def test_unix_time_in_seconds_or_milliseconds_and_relative_seconds(tmp_path):
    rows = "\n".join(f"{1704067200 + 60 * i},{i}" for i in range(5))
    seconds = load_csv(write(tmp_path, "timestamp,requests\n" + rows + "\n", "s.csv"))
    assert seconds.start == pd.Timestamp("2024-01-01T00:00:00Z") and seconds.step_min == 1
    assert list(seconds.counts) == [0.0, 1.0, 2.0, 3.0, 4.0]
    rows = "\n".join(f"{(1704067200 + 300 * i) * 1000},{i}" for i in range(5))
    millis = load_csv(write(tmp_path, "timestamp,requests\n" + rows + "\n", "ms.csv"))
    assert millis.start == pd.Timestamp("2024-01-01T00:00:00Z") and millis.step_min == 5
    # A request log timed in seconds from its start (as BurstGPT writes it): counted per step from 1970.
    log = load_csv(write(tmp_path, "Timestamp,Model\n0,a\n12.25,a\n61,b\n119.9,a\n130,a\n", "rel.csv"))
    assert list(log.counts) == [2.0, 2.0] and log.start == pd.Timestamp("1970-01-01T00:00:00Z")


def test_a_trace_across_a_daylight_saving_change_is_read_in_utc_without_a_warning(tmp_path):
    """Local time with its offset changing at the end of summer time (-04:00 to -05:00, 01:00-02:00 twice):
    read at its instants, in UTC, one regular series; pandas' warning about mixed offsets (which says a
    future pandas will refuse them) reached the user's terminal."""
    import warnings

    utc = pd.date_range("2024-11-03T04:00:00Z", periods=360, freq="1min")
    local = [t.tz_convert("America/New_York").isoformat() for t in utc]
    assert local[119:121] == ["2024-11-03T01:59:00-04:00", "2024-11-03T01:00:00-05:00"]
    path = tmp_path / "dst.csv"
    pd.DataFrame({"timestamp": local, "requests": np.arange(360)}).to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = load_csv(path)
    assert len(history) == 360 and history.step_min == 1 and history.gaps == []
    assert history.start == utc[0] and str(history.counts.index.tz) == "UTC"
    assert history.counts.iloc[120] == 120.0


def test_a_history_on_the_users_clock_keeps_its_instants_and_gaps():
    """``in_timezone``: the same counts at the same instants (a time without a zone is UTC), read on the
    zone's clock across its daylight-saving change; the gaps move with them."""
    utc = pd.date_range("2026-03-08T05:00", periods=240, freq="1min")
    counts = pd.Series(np.arange(240.0), index=utc)
    counts.iloc[60:70] = np.nan
    history = History(counts, "t", [Gap(utc[60], utc[70], "no data")])
    local = history.in_timezone("America/New_York")
    assert str(local.counts.index.tz) == "America/New_York" and local.step == history.step
    assert (local.counts.index.tz_convert("UTC").tz_localize(None) == utc).all()
    assert sorted(set(local.counts.index.hour)) == [0, 1, 3, 4]  # 2:00 does not exist that night
    np.testing.assert_array_equal(local.counts.to_numpy(), counts.to_numpy())
    assert local.gaps == [Gap(local.counts.index[60], local.counts.index[70], "no data")]
    assert history.in_timezone(None) is history


def test_missing_rows_become_gaps(tmp_path):
    rows = "\n".join(f"2024-01-01T{h:02d}:{m:02d}:00,{50 + m}" for h in range(3) for m in range(60)
                     if not (h == 1 and 10 <= m < 30))
    history = load_csv(write(tmp_path, "timestamp,requests\n" + rows + "\n"))
    assert len(history) == 180 and history.counts.isna().sum() == 20
    assert history.gaps[0].start == pd.Timestamp("2024-01-01T01:10") and history.gaps[0].reason == "no data"


def test_a_file_that_leaves_out_its_quiet_intervals_reads_them_as_no_requests(tmp_path):
    """A counts file grouped from a log (GROUP BY minute) has no row for a minute without requests: read as
    gaps, a quiet service's nights were filled with yesterday's load. Where the file writes no zero row, it
    reads as the same file with its zeros written would (the gap rule judging them alike), while rows absent
    in busy traffic (a collection outage) stay a gap; a file that writes its zeros keeps every absent row a gap."""
    rng = np.random.default_rng(1)
    minutes = pd.date_range("2024-01-01", periods=2 * 1440, freq="1min")
    level = 0.2 + 30 * np.sin(np.pi * ((minutes.hour * 60 + minutes.minute) / 1440)) ** 6  # quiet nights
    counts = rng.poisson(level).astype(float)
    counts[[0, -1]] = 1
    outage = slice(1440 + 700, 1440 + 720)  # midday on the second day: no rows, whatever the count
    assert level[outage].min() > 10 and (counts == 0).sum() > 800
    rows = [f"{t.isoformat()},{int(c)}\n" for i, (t, c) in enumerate(zip(minutes, counts))
            if not outage.start <= i < outage.stop]
    grouped = load_csv(write(tmp_path, "timestamp,requests\n" + "".join(r for r in rows if not r.endswith(",0\n")),
                             "grouped.csv"))
    written = load_csv(write(tmp_path, "timestamp,requests\n" + "".join(rows), "written.csv"))
    np.testing.assert_array_equal(grouped.counts.to_numpy(), written.counts.to_numpy())
    assert grouped.gaps == written.gaps and (minutes[outage.start], minutes[outage.stop]) in [
        (g.start, g.end) for g in grouped.gaps]
    assert f"({int((counts == 0).sum()):,} absent rows read as no requests: the file writes no zero rows)" in \
        grouped.source and "absent rows" not in written.source
    holes = load_csv(write(tmp_path, "timestamp,requests\n" + "".join(rows[:1000] + rows[1100:]), "holes.csv"))
    assert np.isnan(holes.counts.to_numpy()[1000:1100]).all() and "absent rows" not in holes.source  # zeros
    # written: absent rows are no data, quiet or not


def test_aggregation_to_a_coarser_step():
    history = load_csv(trace_path("nasa_http_1995_jul.csv"), step="5min")
    raw = pd.read_csv(trace_path("nasa_http_1995_jul.csv")).requests.to_numpy()
    assert history.step_min == 5
    assert history.counts.iloc[0] == raw[:5].sum()


def test_a_step_counts_cannot_add_up_to_is_refused_naming_it(tmp_path):
    """--step finer than the counts, or no multiple of them, or no duration at all: a clear error naming the
    file and the step (it was a traceback); a request log is counted at any whole number of seconds."""
    path = write(tmp_path, "timestamp,requests\n" + "".join(f"2024-01-01T00:{10 * i:02d}:00,{i}\n" for i in range(6)))
    for step in ("5m", "15m"):
        with pytest.raises(HistoryError, match=rf"t.csv: step {step}: its 10m counts add up only to a multiple of "
                                               rf"10m \(20m, ...\)"):
            load_csv(path, step=step)
    assert list(load_csv(path, step="20min").counts) == [1, 5, 9]
    for step in ("abc", "0s", "1.5s"):
        with pytest.raises(HistoryError, match=rf"t.csv: step '{step}' is not a whole number of seconds of at least "
                                               rf"one \(write it as 30s, 1m, 5m or 1h\)"):
            load_csv(path, step=step)
    log = write(tmp_path, "ts,user\n" + "".join(f"{1704067200 + 7 * i},u\n" for i in range(10)), "log.csv")
    assert list(load_request_log(log, step="30s").counts) == [5, 4]  # (the last 30 s, partly outside the log, not)
    with pytest.raises(HistoryError, match="log.csv: step '-1m' is not a whole number"):
        load_request_log(log, step="-1m")


@pytest.mark.parametrize("text,where,message", [
    ("", "t.csv", "empty"),
    ("timestamp,requests\n", "t.csv", "no rows"),
    ("time_x,requests\n2024-01-01T00:00:00,1\n", "t.csv", "no timestamp column"),
    ("2024-01-01T00:00:00,1\n2024-01-01T00:01:00,2\n", "t.csv",
     "the first line looks like data: add a header line such as timestamp,requests"),
    ("timestamp;requests\n2024-01-01T00:00:00;1\n", "t.csv",
     "the header is split by ';': peakpilot reads comma-separated files"),
    ("timestamp,requests\n2024-01-01T00:00:00,1\nnot-a-date,2\n", "t.csv:3", "unparsable timestamp 'not-a-date'"),
    ("timestamp,requests\n2024-01-01T00:00:00,1\n2024-01-01T00:01:00,x\n", "t.csv:3", "'x', not a number"),
    ("timestamp,requests\n2024-01-01T00:00:00,1\n2024-01-01T00:01:00,-4\n", "t.csv:3", "negative requests"),
    ("timestamp,requests\n2024-01-01T00:00:00,1\n2024-01-01T00:01:00,2\n2024-01-01T00:01:00,3\n", "t.csv:4",
     "duplicate timestamp"),
    ("timestamp,requests\n2024-01-01T00:01:00,1\n2024-01-01T00:02:00,2\n2024-01-01T00:00:00,3\n", "t.csv:4",
     "earlier than the row before"),
    ("timestamp,requests\n2024-01-01T00:02:00,1\n2024-01-01T00:01:00,2\n2024-01-01T00:00:00,3\n", "t.csv:3",
     "rows must be in time order; the rows run newest first (as a query ordered by time DESC writes them): sort "
     "the file oldest first"),
    ("timestamp,requests\n2024-01-01T00:00:00,1\n2024-01-01T00:01:00,2\n2024-01-01T00:02:30,3\n", "t.csv:4",
     "off the 0 days 00:01:00 grid"),
    ("timestamp,requests\n2024-01-01T00:00:00,1\n", "t.csv", "at least 2 rows"),
    ("timestamp,requests\n1704067200,1\n1704067260,2\n2024-01-01T00:02:00,3\n", "t.csv:4",
     "the first row is Unix time, '1704067200', so every row must be a number"),
    ("timestamp,requests\n1704067200,1\n-60,2\n", "t.csv:3", "negative Unix time '-60'"),
    # (pandas' own OverflowError named no line)
    ("timestamp,requests\n1704067200,1\n99999999999999999999,2\n", "t.csv:3",
     "Unix time '99999999999999999999' is past the year 2262 (the first row's, '1704067200', is in s)"),
    # (pandas took the first field for an index: every column one to the right, the times read as counts)
    ("timestamp,requests\n2024-01-01T00:00:00,1,7\n2024-01-01T00:01:00,2\n", "t.csv:2",
     "3 fields where the header names 2 (timestamp, requests): give every column a name"),
])
def test_bad_csv_names_the_file_row_and_problem(tmp_path, text, where, message):
    path = write(tmp_path, text)
    with pytest.raises(HistoryError) as err:
        load_csv(path)
    assert err.value.where == str(tmp_path / where)
    assert message in err.value.problem


def test_missing_file_and_column(tmp_path):
    with pytest.raises(HistoryError, match="no such file"):
        load_csv(tmp_path / "nope.csv")
    path = write(tmp_path, "timestamp,requests\n2024-01-01T00:00:00,1\n2024-01-01T00:01:00,1\n")
    with pytest.raises(HistoryError, match="no column 'reqs'"):
        load_csv(path, count_column="reqs")
    with pytest.raises(HistoryError, match=r"no column 'rps'; columns are \['timestamp', 'requests'\]"):
        load_csv(path, rate_column="rps")
    with pytest.raises(HistoryError, match="no column 'when'"):
        load_csv(path, timestamp_column="when")
    with pytest.raises(HistoryError, match="a count column \\('requests'\\) and a rate column \\('requests'\\) were "
                                           "both given"):
        load_csv(path, count_column="requests", rate_column="requests")


def test_columns_under_other_names_are_read_where_named(tmp_path):
    """--timestamp-column and --count-column read a counts file whose header peakpilot does not know;
    --rate-column one whose values are requests per second (an export of a Prometheus panel), times the step."""
    path = write(tmp_path, "when,served,rps\n" + "".join(f"2024-01-01T00:{5 * i:02d}:00,{10 + i},{0.5 + i}\n"
                                                         for i in range(3)))
    counts = load_csv(path, timestamp_column="when", count_column="served")
    assert list(counts.counts) == [10, 11, 12] and counts.step_min == 5
    rates = load_csv(path, timestamp_column="when", rate_column="rps")
    assert list(rates.counts) == [150, 450, 750]  # 0.5, 1.5 and 2.5 req/s over 300 s
    with pytest.raises(HistoryError, match=r"t.csv:3: negative rps \(-1\); rates must be >= 0"):
        load_csv(write(tmp_path, "when,rps\n2024-01-01T00:00:00,1\n2024-01-01T00:01:00,-1\n"),
                 timestamp_column="when", rate_column="rps")


def test_a_header_with_spaces_and_bigquerys_utc_times_are_read(tmp_path):
    """Spaces around the header's names (as typed, or as a spreadsheet writes them), and times ending in
    " UTC" (BigQuery's CSV exports) are read; "UTC" inside the time is still refused by line."""
    history = load_csv(write(tmp_path, "Timestamp , Requests \n2024-01-01 00:00:00 UTC,1\n2024-01-01 00:01:00 UTC,2\n"))
    assert list(history.counts) == [1, 2] and str(history.counts.index.tz) == "UTC"
    assert history.start == pd.Timestamp("2024-01-01T00:00:00Z")
    with pytest.raises(HistoryError, match=r"t.csv:3: unparsable timestamp '2024-01-01 UTC 00:01:00'"):
        load_csv(write(tmp_path, "timestamp,requests\n2024-01-01 00:00:00 UTC,1\n2024-01-01 UTC 00:01:00,2\n"))


def test_a_comma_ending_every_line_is_read_as_no_more_fields(tmp_path):
    """Some exports end each line with a comma: pandas would take the times for an index and read the counts
    as times (a Unix time of 1 second); the empty last fields are dropped instead."""
    history = load_csv(write(tmp_path, "timestamp,requests\n2024-01-01T00:00:00,5,\n2024-01-01T00:01:00,6,\n"))
    assert list(history.counts) == [5, 6] and str(history.start) == "2024-01-01 00:00:00"


def test_a_rate_too_large_for_a_number_is_refused_by_line(tmp_path):
    with pytest.raises(HistoryError, match=r"t.csv:2: rps '1e308' per second over 1m is more requests than a number"):
        load_csv(write(tmp_path, "timestamp,rps\n2024-01-01T00:00:00,1e308\n2024-01-01T00:01:00,6\n"),
                 rate_column="rps")


def test_an_empty_count_is_a_gap_as_a_missing_row_is(tmp_path):
    """An empty cell (or NaN, null, N/A: what an export writes where a scrape is missing) is a step without
    data, reported as a gap; a value that is no number, infinity included, is still refused by line."""
    text = "timestamp,requests\n" + "".join(f"2024-01-01T00:0{i}:00,{v}\n" for i, v in
                                            enumerate(["5", "", "NaN", "7", "null", "8"]))
    history = load_csv(write(tmp_path, text))
    assert np.isnan(history.counts.to_numpy()).tolist() == [False, True, True, False, True, False]
    assert [(g.start.minute, g.end.minute, g.reason) for g in history.gaps] == [(1, 3, "no data"), (4, 5, "no data")]
    with pytest.raises(HistoryError, match=r"t.csv:3: requests is 'inf', not a number"):
        load_csv(write(tmp_path, "timestamp,requests\n2024-01-01T00:00:00,1\n2024-01-01T00:01:00,inf\n"))
    with pytest.raises(HistoryError, match=r"t.csv: every row's requests is empty"):
        load_csv(write(tmp_path, "timestamp,requests\n2024-01-01T00:00:00,\n2024-01-01T00:01:00,\n"))
    with pytest.raises(HistoryError, match=r"t.csv:3: no timestamp \(expected ISO 8601"):
        load_csv(write(tmp_path, "timestamp,requests\n2024-01-01T00:00:00,1\n,2\n"))


def test_history_until_hides_the_future():
    history = load_csv(trace_path("servegen_llm_m_small.csv"))
    cut = pd.Timestamp("2000-01-10T00:00:00")
    past = history.until(cut)
    assert past.end == cut and past.counts.index.max() < cut
    assert isinstance(past, History)


def local_rows(start: str, periods: int, freq: str, zone: str) -> tuple[pd.DatetimeIndex, list[str]]:
    """Instants one step apart, and their times on ``zone``'s clock as a file without offsets writes them."""
    instants = pd.date_range(start, periods=periods, freq=freq, tz="UTC")
    return instants, [f"{t:%Y-%m-%d %H:%M:%S}" for t in instants.tz_convert(zone)]


def test_local_times_are_read_in_the_zone_named_across_both_clock_changes(tmp_path):
    """A file on Berlin's clock (as Grafana's formatted export writes it) through the night its clock goes back
    and the night it skips an hour: without a zone the repeated hour is refused, the error naming the option;
    with one, every instant is read once, at its place, and the history is on Berlin's clock."""
    for start in ("2024-10-26T22:00", "2024-03-30T22:00"):
        instants, local = local_rows(start, 48, "10min", "Europe/Berlin")
        path = write(tmp_path, "timestamp,requests\n" + "".join(f"{t},{i}\n" for i, t in enumerate(local)))
        history = load_csv(path, timestamp_zone="Europe/Berlin")
        assert str(history.counts.index.tz) == "Europe/Berlin" and not history.gaps
        assert history.counts.index.tz_convert("UTC").equals(instants) and list(history.counts) == list(range(48))
    autumn = write(tmp_path, "timestamp,requests\n" + "".join(
        f"{t},1\n" for t in local_rows("2024-10-26T22:00", 48, "10min", "Europe/Berlin")[1]))
    with pytest.raises(HistoryError, match=r"t.csv:\d+: timestamp '2024-10-27 02:00:00' is earlier than the row "
                                           r"before .* daylight saving ends: .*--timestamp-zone"):
        load_csv(autumn)
    hourly = write(tmp_path, "timestamp,requests\n" + "".join(
        f"{t},1\n" for t in local_rows("2024-10-26T20:00", 12, "1h", "Europe/Berlin")[1]))
    with pytest.raises(HistoryError, match=r"duplicate timestamp '2024-10-27 02:00:00' .*daylight saving ends"):
        load_csv(hourly)


def test_a_local_time_that_cannot_be_placed_is_refused_by_line(tmp_path):
    """A time the zone's clock skips, the repeated hour passed once (which pass is it?), a zone given for times
    that have an offset or are Unix time, and a zone no machine knows: each refused, naming the line or zone."""
    cases = [("2024-03-31 01:50:00\n2024-03-31 02:00:00\n2024-03-31 02:10:00\n", r"t.csv:3: '2024-03-31 02:00:00' "
              r"never happens in Europe/Berlin: its clock skips that hour"),
             ("2024-10-27 01:50:00\n2024-10-27 02:00:00\n2024-10-27 02:10:00\n", r"t.csv:3: '2024-10-27 02:00:00' "
              r"is in the hour Europe/Berlin's clock runs twice .* runs through it once"),
             ("2024-10-27 01:50:00+02:00\n2024-10-27 02:00:00+02:00\n", r"t.csv:2: .* for times without an offset, "
              r"but '2024-10-27 01:50:00\+02:00' says where it is"),
             ("1729990200\n1729990800\n", r"t.csv:2: .* the times are Unix time .* which is UTC")]
    for rows, message in cases:
        with pytest.raises(HistoryError, match=message):
            load_csv(write(tmp_path, "timestamp,requests\n" + rows.replace("\n", ",5\n")),
                     timestamp_zone="Europe/Berlin")
    with pytest.raises(HistoryError, match="timestamp zone 'Mars/Olympus' is not a time zone"):
        load_csv(write(tmp_path, "timestamp,requests\n2024-01-01 00:00:00,1\n"), timestamp_zone="Mars/Olympus")


def test_a_request_log_on_a_local_clock_counts_the_repeated_hour_twice(tmp_path):
    """A request log in local time, several requests a second, through the hour the clock runs twice: counted
    as the same log written in UTC is (pandas' own inference gives up on repeated seconds)."""
    rng = np.random.default_rng(3)
    instants = pd.Timestamp("2024-10-27T00:00", tz="UTC") + pd.to_timedelta(
        np.sort(rng.integers(0, 3 * 3600, 4000)), unit="s")
    local = write(tmp_path, "timestamp\n" + "".join(
        f"{t:%Y-%m-%d %H:%M:%S}\n" for t in instants.tz_convert("Europe/Berlin")), "local.csv")
    utc = write(tmp_path, "timestamp\n" + "".join(f"{t:%Y-%m-%dT%H:%M:%SZ}\n" for t in instants), "utc.csv")
    on_local_clock = load_request_log(local, step="5min", timestamp_zone="Europe/Berlin")
    in_utc = load_request_log(utc, step="5min")
    assert on_local_clock.counts.index.tz_convert("UTC").equals(in_utc.counts.index)
    assert list(on_local_clock.counts) == list(in_utc.counts) and len(in_utc.counts) > 30


def test_mutated_csvs_are_read_or_refused_naming_the_file(tmp_path):
    """Seeded random damage to well-formed traces (junk counts, junk or swapped or repeated times, dropped
    rows, an extra field, every timestamp form, some options): each file is read into a history of finite,
    non-negative counts or refused with a HistoryError naming it, never another exception (fuzzing this way
    found four tracebacks and a silent misread, each now a test of its own above)."""
    import random

    rng = random.Random(37)
    forms = [lambda t: t.isoformat(), lambda t: f"{t:%Y-%m-%d %H:%M:%S}", lambda t: str(int(t.timestamp())),
             lambda t: str(int(t.timestamp() * 1000)), lambda t: t.isoformat() + "Z",
             lambda t: t.isoformat() + "+02:00", lambda t: f"{t:%Y-%m-%d %H:%M:%S} UTC"]
    junk = ["", "NaN", "-1", "abc", "1e308", "inf", "  5 ", "1,5", "99999999999999999999"]
    for case in range(150):
        n = rng.choice([1, 2, 3, 50, 600])
        times = pd.date_range("2024-01-01", periods=n, freq=f"{rng.choice([1, 5, 60])}min")
        ts, values = [rng.choice(forms)(t) for t in times], [str(rng.randint(0, 1000)) for _ in range(n)]
        for _ in range(rng.choice([0, 1, 3])):
            i, kind = rng.randrange(n), rng.random()
            if kind < 0.35:
                values[i] = rng.choice(junk)
            elif kind < 0.6:
                ts[i] = rng.choice(["", "garbage", "2024-13-01T00:00:00", "0", ts[max(0, i - 1)]])
            elif kind < 0.8:
                j = rng.randrange(n)
                ts[i], ts[j] = ts[j], ts[i]
            else:
                values[i] += "," + values[i]
        path = write(tmp_path, "timestamp,requests\n" + "".join(f"{t},{v}\n" for t, v in zip(ts, values)),
                     f"case{case}.csv")
        options = rng.choice([{}, {}, {"step": "1h"}, {"rate_column": "requests"}, {"timestamp_zone": "Europe/Berlin"}])
        try:
            history = load_csv(path, **options)
        except HistoryError as exc:
            assert f"case{case}.csv" in exc.where
            continue
        counts = history.counts.to_numpy(float)
        assert len(counts) and np.isfinite(counts[~np.isnan(counts)]).all() and (counts[~np.isnan(counts)] >= 0).all()
