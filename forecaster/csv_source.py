"""Request history from CSV files: per-interval counts, or raw per-request logs.

Two shapes are read:

* **counts**: ``timestamp,requests``, one row per fixed interval (the traces in ``shared/traces``).
  Missing rows become gaps (but in a file that writes no zero row, a run of them in quiet traffic is no
  requests: ``_omitted_zeros``); rows must be unique and in time order.
* **request log**: one row per request with a timestamp column (as in the Azure LLM inference
  traces, column ``TIMESTAMP``); arrivals are counted per ``step``, whole steps only (the last, and the
  first unless the log starts at a step's start, are partly outside the log).

Timestamps are ISO 8601 (with or without an offset; BigQuery's " UTC" suffix too) or Unix time in
seconds, milliseconds, microseconds or nanoseconds (told apart by size). Times without an offset are UTC,
or local times of a named zone (``timestamp_zone``: Grafana's formatted export writes the browser's clock),
the hour its clock runs twice told apart by the order of the rows. Columns under other names are
given by name: the timestamps', the counts', or a rate per second's (an export of a Prometheus or Grafana
panel), which is multiplied by the step into counts.

Errors name the file, the 1-based line, and what is wrong with it; an empty count is a gap, as a missing
row is.
"""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from forecaster.errors import HistoryError
from forecaster.history import (GAP_MIN_EXPECTED, History, mark_gaps, prometheus_duration,
                               running_total_problem, stray_stretch, true_runs)

TIMESTAMP_COLUMNS = ("timestamp", "time", "ts", "datetime", "date")
COUNT_COLUMNS = ("requests", "count", "counts", "value", "y")


def load_csv(path: str | Path, *, step: str | pd.Timedelta | None = None, timestamp_column: str | None = None,
             count_column: str | None = None, rate_column: str | None = None,
             timestamp_zone: str | None = None) -> History:
    """Read a counts CSV or a request log, whichever the columns say it is.

    ``step`` aggregates counts to a coarser step, or sets the counting step of a request log
    (default one minute). ``count_column`` names the column of each interval's requests where it is none
    of ``COUNT_COLUMNS``; ``rate_column`` instead a column of requests per second, as an export of a
    Prometheus or Grafana panel holds (each row is multiplied by the step). ``timestamp_zone``: the IANA zone
    whose local times the timestamps without an offset are (default UTC); the history is on its clock.
    """
    path = Path(path)
    step = None if step is None else _step(path, step)
    _check_zone(path, timestamp_zone)
    if count_column and rate_column:
        raise HistoryError(str(path), f"a count column ({count_column!r}) and a rate column ({rate_column!r}) "
                                      f"were both given: the requests are read from one of them")
    frame = _read(path)
    ts_col = _pick(frame, path, timestamp_column, TIMESTAMP_COLUMNS, "timestamp")
    given = count_column or rate_column
    if given and given not in frame.columns:
        raise HistoryError(str(path), f"no column {given!r}; columns are {list(frame.columns)}")
    count_col = given or next((c for c in frame.columns if c.lower() in COUNT_COLUMNS), None)
    if count_col is None:
        times = _parse_times(path, frame[ts_col], timestamp_zone)
        _refuse_unnamed_counts(path, frame, ts_col, times)
        return _from_log(path, times, step or pd.Timedelta("1min"), frame[ts_col]).in_timezone(timestamp_zone)
    history = _from_counts(path, frame, ts_col, count_col, per_second=bool(rate_column), zone=timestamp_zone)
    if step is not None and step != history.step:
        if step < history.step or (step / history.step) % 1:
            every = prometheus_duration(history.step)
            raise HistoryError(str(path), f"step {prometheus_duration(step)}: its {every} counts add up only to a "
                                          f"multiple of {every} ({prometheus_duration(2 * history.step)}, ...)")
        history = history.resample(step)
    return history.in_timezone(timestamp_zone)


def load_request_log(path: str | Path, *, step: str | pd.Timedelta = "1min", timestamp_column: str | None = None,
                     timestamp_zone: str | None = None) -> History:
    """Count the arrivals of a per-request log per ``step``."""
    path = Path(path)
    step = _step(path, step)
    _check_zone(path, timestamp_zone)
    frame = _read(path)
    ts_col = _pick(frame, path, timestamp_column, TIMESTAMP_COLUMNS, "timestamp")
    times = _parse_times(path, frame[ts_col], timestamp_zone)
    return _from_log(path, times, step, frame[ts_col]).in_timezone(timestamp_zone)


def _check_zone(path: Path, zone: str | None) -> None:
    if zone is None:
        return
    try:
        ZoneInfo(zone)
    except (ValueError, ZoneInfoNotFoundError):
        raise HistoryError(str(path), f"timestamp zone {zone!r} is not a time zone this machine knows: an IANA "
                                      f"name such as Europe/Berlin or America/New_York") from None


def _step(path: Path, step: str | pd.Timedelta) -> pd.Timedelta:
    """The step asked for, as a positive whole number of seconds (``5m``, ``5min``, ``30s``, ``1h``)."""
    try:
        parsed = pd.Timedelta(step)
    except ValueError:
        parsed = None
    if parsed is None or pd.isna(parsed) or parsed.total_seconds() < 1 or parsed.total_seconds() % 1:
        raise HistoryError(str(path), f"step {step!r} is not a whole number of seconds of at least one (write it "
                                      f"as 30s, 1m, 5m or 1h)")
    return parsed


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise HistoryError(str(path), "no such file")
    if path.is_dir():
        raise HistoryError(str(path), "is a directory, not a CSV file")
    try:
        frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise HistoryError(str(path), "the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise HistoryError(str(path), f"not a readable CSV file ({str(exc).strip()})") from None
    if not isinstance(frame.index, pd.RangeIndex):  # the first row had more fields than the header names
        frame = _without_trailing_commas(path, frame)
    if frame.empty:
        raise HistoryError(str(path), "has a header but no rows")
    frame.columns = [str(c).strip() for c in frame.columns]  # "timestamp , requests" as a person types it
    return frame


def _without_trailing_commas(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with one field more than the header are read by pandas with their first field as the index,
    every column shifted one to the right (a file's times read as counts). Where each extra field is empty
    (a comma ending every line, as some exports write), the columns are shifted back and the empty one dropped
    (not read again: a log may be millions of lines); else refused."""
    names = list(frame.columns)
    extra = frame.iloc[:, -1].notna().to_numpy()
    if extra.any():
        i = int(np.flatnonzero(extra)[0])
        raise HistoryError(f"{path}:{i + 2}", f"{len(names) + 1} fields where the header names {len(names)} "
                                              f"({', '.join(map(str, names))}): give every column a name")
    shifted = frame.reset_index().iloc[:, :-1]
    shifted.columns = names
    return shifted


def _pick(frame: pd.DataFrame, path: Path, given: str | None, candidates: tuple[str, ...], what: str) -> str:
    if given:
        if given not in frame.columns:
            raise HistoryError(str(path), f"no column {given!r}; columns are {list(frame.columns)}")
        return given
    for col in frame.columns:
        if col.lower() in candidates:
            return col
    raise HistoryError(str(path), f"no {what} column (expected one of {', '.join(candidates)}); "
                                  f"columns are {list(frame.columns)}{_header_hint(frame.columns)}")


def _header_hint(columns: pd.Index) -> str:
    """What a header without the expected names most likely means: no header at all, or another separator."""
    first = str(columns[0])
    if not pd.isna(pd.to_numeric(first, errors="coerce")) or \
            not pd.isna(pd.to_datetime(first, format="ISO8601", errors="coerce")):
        return "; the first line looks like data: add a header line such as timestamp,requests"
    if len(columns) == 1:
        for sep in (";", "\t", "|"):
            if sep in first:
                return f"; the header is split by {sep!r}: peakpilot reads comma-separated files"
    return ""


EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (float("inf"), "ns"))


def _parse_times(path: Path, raw: pd.Series, zone: str | None = None) -> pd.DatetimeIndex:
    """Parse ISO-8601 timestamps (a single fixed offset is kept, mixed offsets become UTC), or numbers:
    Unix time, as exports from Prometheus and many request logs write it. ``zone``: the times have no
    offset and are that zone's local times (returned in UTC)."""
    numbers = pd.to_numeric(raw, errors="coerce")
    if not np.isnan(numbers.iloc[0]):
        if zone:
            raise HistoryError(f"{path}:2", f"a timestamp zone ({zone}) was given, but the times are Unix time "
                                            f"({raw.iloc[0]!r}), which is UTC")
        return _epoch_times(path, raw, numbers)

    # BigQuery's exports write 2024-01-01 13:00:00 UTC (looked for only where the first row does: logs are long)
    text = raw.str.replace(r" UTC$", "Z", regex=True) if str(raw.iloc[0]).endswith(" UTC") else raw

    def parse(utc: bool) -> pd.Series:
        return pd.to_datetime(text, format="ISO8601", errors="coerce", utc=utc)

    try:
        with warnings.catch_warnings():  # pandas warns before it mixes offsets: read as mixed, in UTC
            warnings.filterwarnings("error", message=".*mixed time zones", category=FutureWarning)
            times = parse(False)
        if times.dtype == object:  # mixed offsets
            times = parse(True)
    except (ValueError, TypeError, FutureWarning):
        times = parse(True)
    bad = times.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "no timestamp" if pd.isna(raw.iloc[i]) else f"unparsable timestamp {raw.iloc[i]!r}"
        raise HistoryError(f"{path}:{i + 2}", f"{what} (expected ISO 8601, e.g. 2024-05-01T13:00:00)")
    if zone is None:
        return pd.DatetimeIndex(times)
    if times.dt.tz is not None:
        raise HistoryError(f"{path}:2", f"a timestamp zone ({zone}) was given for times without an offset, but "
                                        f"{raw.iloc[0]!r} says where it is: drop the zone")
    return _localized(path, pd.DatetimeIndex(times), raw, zone)


def _localized(path: Path, naive: pd.DatetimeIndex, raw: pd.Series, zone: str) -> pd.DatetimeIndex:
    """``zone``'s local times, in UTC. The hour its clock runs twice (when daylight saving ends) is told apart
    by the order of the rows: the rows before the clock goes back are the first pass (pandas' own inference
    gives up on a log's repeated seconds); a time the clock skips is refused by line."""
    skipped = naive.tz_localize(zone, ambiguous=np.ones(len(naive), bool), nonexistent="NaT").isna()
    if skipped.any():
        i = int(np.flatnonzero(skipped)[0])
        raise HistoryError(f"{path}:{i + 2}", f"{raw.iloc[i]!r} never happens in {zone}: its clock skips that hour "
                                              f"(daylight saving starts); are these times in {zone}?")
    twice = naive.tz_localize(zone, ambiguous="NaT").isna()
    first_pass = np.zeros(len(naive), bool)
    for a, b in true_runs(twice):
        back = np.flatnonzero(np.diff(naive.asi8[a:b]) < 0)
        if len(back) != 1:
            how = "runs through it once" if not len(back) else "goes back in it more than once"
            raise HistoryError(f"{path}:{a + 2}", f"{raw.iloc[a]!r} is in the hour {zone}'s clock runs twice "
                                                  f"(daylight saving ends), and the file {how}: which pass each "
                                                  f"row is in cannot be told; write the times with their offset, "
                                                  f"or in UTC")
        first_pass[a:a + back[0] + 1] = True
    return naive.tz_localize(zone, ambiguous=first_pass).tz_convert("UTC")


def _epoch_times(path: Path, raw: pd.Series, numbers: pd.Series) -> pd.DatetimeIndex:
    """Unix time in UTC; the unit (s, ms, us or ns) is the one the first row's size says: seconds up to
    1e11 (the year 5138), milliseconds up to 1e14, and so on. Relative seconds (0, 0.5, ...) read as 1970."""
    bad = numbers.isna().to_numpy() | np.isinf(numbers.to_numpy(float))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "no timestamp" if pd.isna(raw.iloc[i]) else f"unparsable timestamp {raw.iloc[i]!r}"
        raise HistoryError(f"{path}:{i + 2}", f"{what} (the first row is Unix time, {raw.iloc[0]!r}, so every "
                                              f"row must be a number)")
    if (numbers < 0).any():
        i = int(np.flatnonzero((numbers < 0).to_numpy())[0])
        raise HistoryError(f"{path}:{i + 2}", f"negative Unix time {raw.iloc[i]!r}")
    unit = next(u for limit, u in EPOCH_UNITS if abs(numbers.iloc[0]) < limit)
    beyond = (numbers * pd.Timedelta(1, unit).value >= np.iinfo(np.int64).max).to_numpy()
    if beyond.any():  # (pandas' own error is an OverflowError without a line)
        i = int(np.flatnonzero(beyond)[0])
        raise HistoryError(f"{path}:{i + 2}", f"Unix time {raw.iloc[i]!r} is past the year 2262 (the first row's, "
                                              f"{raw.iloc[0]!r}, is in {unit})")
    return pd.DatetimeIndex(pd.to_datetime(numbers.to_numpy(float), unit=unit, utc=True))


def _from_counts(path: Path, frame: pd.DataFrame, ts_col: str, count_col: str, per_second: bool = False,
                 zone: str | None = None) -> History:
    """``per_second``: the column is a rate, each row's requests per second over its interval; ``zone``: the
    times are its local times."""
    times = _parse_times(path, frame[ts_col], zone)
    # An empty cell (or NaN, null, N/A) is a step without data, as a missing row is: a gap
    missing = frame[count_col].isna().to_numpy()
    if missing.all():
        raise HistoryError(str(path), f"every row's {count_col} is empty")
    counts = pd.to_numeric(frame[count_col], errors="coerce")
    bad = (counts.isna().to_numpy() & ~missing) | np.isinf(counts.to_numpy(float))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise HistoryError(f"{path}:{i + 2}", f"{count_col} is {frame[count_col].iloc[i]!r}, not a number")
    if (counts < 0).any():
        i = int(np.flatnonzero((counts < 0).to_numpy())[0])
        raise HistoryError(f"{path}:{i + 2}", f"negative {count_col} ({counts.iloc[i]:g}); "
                                              f"{'rates' if per_second else 'counts'} must be >= 0")
    diffs = np.diff(times.asi8)
    if (diffs == 0).any():
        i = int(np.flatnonzero(diffs == 0)[0]) + 1
        raise HistoryError(f"{path}:{i + 2}", f"duplicate timestamp {frame[ts_col].iloc[i]!r} "
                                              f"(also on line {i + 1}){_clock_back_hint(times, diffs, i)}")
    if (diffs < 0).any():
        i = int(np.flatnonzero(diffs < 0)[0]) + 1
        newest_first = "; the rows run newest first (as a query ordered by time DESC writes them): sort the " \
            "file oldest first" if (diffs < 0).all() else _clock_back_hint(times, diffs, i)
        raise HistoryError(f"{path}:{i + 2}", f"timestamp {frame[ts_col].iloc[i]!r} is earlier than the row "
                                              f"before ({frame[ts_col].iloc[i - 1]!r}); rows must be in time order"
                                              f"{newest_first}")
    if len(times) < 2:
        raise HistoryError(str(path), "needs at least 2 rows to know the step")
    _refuse_a_stray_stretch(path, times.asi8, frame[ts_col], np.arange(len(times)))
    step = pd.Timedelta(int(np.min(diffs)), "ns")
    off_grid = (times.asi8 - times.asi8[0]) % step.value != 0
    if off_grid.any():
        i = int(np.flatnonzero(off_grid)[0])
        raise HistoryError(f"{path}:{i + 2}", f"timestamp {frame[ts_col].iloc[i]!r} is off the {step} grid "
                                              f"set by the first rows; intervals must be regular")
    with np.errstate(over="ignore"):
        values = counts.to_numpy(float) * (step.total_seconds() if per_second else 1.0)
    if np.isinf(values).any():
        i = int(np.flatnonzero(np.isinf(values))[0])
        raise HistoryError(f"{path}:{i + 2}", f"{count_col} {frame[count_col].iloc[i]!r} per second over "
                                              f"{prometheus_duration(step)} is more requests than a number holds")
    series = pd.Series(values, index=times, name="requests")
    full = series.reindex(pd.date_range(times[0], times[-1], freq=step))
    if (problem := running_total_problem(full.to_numpy(), step)) is not None:
        raise HistoryError(str(path), f"{count_col} is no count per interval: {problem}; give each interval's "
                                      f"requests (the differences of the running total)")
    full.index.freq = step
    source = str(path)
    if not (values == 0).any():  # a file that writes no zero row may leave out the intervals without requests
        full, omitted = _omitted_zeros(full, ~full.index.isin(times))
        if omitted:
            source += f" ({omitted:,} absent rows read as no requests: the file writes no zero rows)"
    marked, gaps = mark_gaps(full, str(path))
    return History(marked, source, gaps)


def _clock_back_hint(times: pd.DatetimeIndex, diffs: np.ndarray, i: int) -> str:
    """Where times without an offset go back so that the step after row ``i`` lands an hour after row ``i - 1``:
    a local clock going back when daylight saving ends, which ``timestamp_zone`` reads."""
    hour = pd.Timedelta(hours=1).value
    if times.tz is not None or i >= len(diffs) or diffs[i] <= 0 or diffs[i] - diffs[i - 1] != hour:
        return ""
    return ("; the clock goes back an hour there, as a local clock does when daylight saving ends: if these are "
            "local times, give their zone (--timestamp-zone Europe/Berlin, say), or write them in UTC")


NEIGHBOURS = pd.Timedelta(minutes=30)
"""How far on each side of a run of absent rows the traffic is measured that judges it (the hours around, as
the gap rule measures, would mix a night with the day after it)."""


def _omitted_zeros(full: pd.Series, absent: np.ndarray) -> tuple[pd.Series, int]:
    """A counts file made by grouping a log (``GROUP BY minute``) has no row for an interval without requests:
    read as gaps, a quiet service's nights were filled with yesterday's load. Where the file writes no zero
    row, each run of absent rows is zeros unless the traffic on both sides of it (the quieter side's mean
    over ``NEIGHBOURS``) would have sent ``GAP_MIN_EXPECTED`` requests in it: a collection outage in busy
    traffic, which stays a gap, as the gap rule judges a run of zeros."""
    values = full.to_numpy(float).copy()
    reach = max(1, int(NEIGHBOURS / pd.Timedelta(full.index.freq)))
    omitted = 0
    for a, b in true_runs(absent):
        sides = [side[~np.isnan(side)] for side in (values[max(0, a - reach):a], values[b:b + reach])]
        level = min((side.mean() for side in sides if len(side)), default=np.inf)
        if level * (b - a) < GAP_MIN_EXPECTED:
            values[a:b] = 0.0
            omitted += b - a
    return pd.Series(values, index=full.index, name=full.name), omitted


def _refuse_unnamed_counts(path: Path, frame: pd.DataFrame, ts_col: str, times: pd.DatetimeIndex) -> None:
    """A file without a count column is read as a request log, one request a row; but one whose rows come
    exactly one step apart beside a column of numbers is a counts file whose column has another name
    (``rps``, ``qps``, ``total``), which read as a log would be a flat line of ones. Refused, naming it."""
    if len(times) < 3:
        return
    diffs = np.diff(times.asi8)
    numeric = [] if diffs[0] <= 0 or (diffs != diffs[0]).any() else [  # empty cells are gaps, as in counts
        c for c in frame.columns if c != ts_col and frame[c].notna().any()
        and pd.to_numeric(frame[c].dropna(), errors="coerce").notna().all()]
    if numeric:
        seconds, name = diffs[0] / 1e9, shlex.quote(numeric[0])
        every = f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"
        raise HistoryError(str(path), f"no count column (one of {', '.join(COUNT_COLUMNS)}), so it would be read as "
                                      f"a request log, one request a row; but its rows come one every {every}, as a "
                                      f"counts file's do, beside {numeric[0]!r}: if {numeric[0]!r} counts the "
                                      f"requests of each interval, give --count-column {name} (or name it requests "
                                      f"in the header); if it is a rate per second, --rate-column {name}")


def _refuse_a_stray_stretch(path: Path, times: np.ndarray, raw: pd.Series, rows: np.ndarray) -> None:
    """``times``: sorted, int64 ns; ``rows``: each one's row in ``raw``, the file's timestamp column."""
    if (stray := stray_stretch(times)) is not None:
        i, text = stray
        a, b = int(rows[i]), int(rows[i + 1])
        raise HistoryError(f"{path}:{a + 2}", f"{raw.iloc[a]!r}, then {raw.iloc[b]!r} (line {b + 2}): {text}")


def _from_log(path: Path, times: pd.DatetimeIndex, step: pd.Timedelta, raw: pd.Series) -> History:
    if len(times) == 0:
        raise HistoryError(str(path), "the request log has no rows")
    order = np.argsort(times.asi8, kind="stable")
    times = times[order]
    _refuse_a_stray_stretch(path, times.asi8, raw, order)
    start = times[0].floor(step)
    end = times[-1].floor(step)
    index = pd.date_range(start, end, freq=step)
    bins = ((times.asi8 - start.value) // step.value).astype(np.int64)
    counts = np.bincount(bins, minlength=len(index)).astype(float)
    # Whole steps only: the log covers its first step from its first request on (unless that is the step's
    # start), and its last step only up to its last request; counted, the last would be a dip (half the load,
    # on average) at the end of the history, where the forecast starts from.
    first = 0 if times[0] == start else 1
    if first >= len(index) - 1:
        raise HistoryError(str(path), f"its {len(times):,} requests, from {times[0]} to {times[-1]}, fill no whole "
                                      f"step of {prometheus_duration(step)} (the first and last are partly outside "
                                      f"the log): give a shorter step")
    series = pd.Series(counts[first:-1], index=index[first:-1], name="requests")
    series.index.freq = step
    marked, gaps = mark_gaps(series, str(path))
    return History(marked, f"{path} (request log, per {step})", gaps)
