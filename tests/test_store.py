"""The store on SQLite and on a real PostgreSQL: the same records, one transaction per write batch,
restarts that continue, clear errors for bad URLs and a database that is down."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from controller.state import Decision
from controller.store import TIMELINE_COLUMNS, Store, StoreError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


def decision(cls: str, desired: int, reason: str = "forecast peak") -> Decision:
    return Decision(cls=cls, desired=desired, current=desired - 1, reason=reason)


def ts(minute: int) -> str:
    return str(np.datetime64("2026-01-01T00:00") + np.timedelta64(minute, "m"))


def row(load: float) -> dict:
    return {"load_rps": load, "ready": 3.0, "cost_per_hour": 12.5, "plan_nodes": 4.0}


def test_a_daemon_run_continues_across_reopening(store_url):
    with Store(store_url) as st:
        run_id = st.service_run("llm-chat", "configs/policy.yaml")
        for minute in range(10):
            st.record_cycle(run_id, 29_000_000 + minute, f"2026-01-01T00:{minute:02d}", row(10.0 + minute),
                            [decision("spot", 2 + minute % 3)], {"last_load_rps": 10.0 + minute})
    with Store(store_url) as st:
        assert st.service_run("llm-chat") == run_id  # the same run: the timeline continues
        assert st.load_memory(run_id) == {"last_load_rps": 19.0}
        tl = st.timeline(run_id)
        assert list(tl["minute"]) == [29_000_000 + m for m in range(10)]
        assert list(tl["load_rps"]) == [10.0 + m for m in range(10)]
        assert set(TIMELINE_COLUMNS) <= set(tl.columns)
        assert tl["ts"].dt.minute.tolist() == list(range(10))
        made = st.decisions(run_id)
        assert list(made["desired"]) == [2 + m % 3 for m in range(10)] and set(made["reason"]) == {"forecast peak"}
        assert [r["kind"] for r in st.runs()] == ["daemon"]


def test_the_last_cycle_of_each_service_is_read_with_its_decisions(store_url):
    """What ``peakpilot status`` reads: per service the daemon runs, the row of its latest minute and that
    minute's decisions (not a replay's, not an earlier minute's); from a store an older version wrote,
    read-only and so not migrated, too."""
    with Store(store_url) as st:
        chat, search = st.service_run("llm-chat", "chat.yaml"), st.service_run("llm-search", "search.yaml")
        for minute in range(5):
            st.record_cycle(chat, 100 + minute, ts(100 + minute), {**row(10.0 + minute), "mode": "predictive"},
                            [decision("spot", 2 + minute), decision("reserved", 3)], {})
        st.record_cycle(search, 90, ts(90), {**row(7.0), "mode": "reactive"}, [decision("on_demand", 4, "reactive")],
                        {})
        st.record_replay({"trace": "x.csv"}, SimpleNamespace(
            strategy="predictive", timeline={c: np.ones(3) for c in TIMELINE_COLUMNS},
            decisions=[]), np.arange(np.datetime64("2026-01-01T00:00"), np.datetime64("2026-01-01T00:03")))
    with Store(store_url, readonly=True) as st:
        found = st.latest_cycles()
    assert [(c["service"], c["policy"], c["minute"], c["load_rps"], c["mode"]) for c in found] == [
        ("llm-chat", "chat.yaml", 104, 14.0, "predictive"), ("llm-search", "search.yaml", 90, 7.0, "reactive")]
    assert [(d["cls"], d["desired"]) for d in found[0]["decisions"]] == [("reserved", 3), ("spot", 6)]
    assert found[1]["decisions"] == [{"cls": "on_demand", "desired": 4, "current": 3, "reason": "reactive"}]
    with Store(store_url) as st, st.engine.begin() as conn:  # as an older version left it
        conn.exec_driver_sql("ALTER TABLE timeline DROP COLUMN mode")
        conn.exec_driver_sql("ALTER TABLE timeline DROP COLUMN role")
    with Store(store_url, readonly=True) as st:
        assert [(c.get("mode"), c.get("role")) for c in st.latest_cycles()] == [(None, None), (None, None)]


def test_a_cycle_redone_replaces_its_rows_and_retention_drops_old_ones(store_url):
    with Store(store_url) as st:
        run_id = st.service_run("svc")
        st.record_cycle(run_id, 100, ts(100), row(1.0), [decision("spot", 2), decision("reserved", 3)], {})
        st.record_cycle(run_id, 100, ts(100), row(2.0), [decision("spot", 5)], {})  # after a restart
        tl, made = st.timeline(run_id), st.decisions(run_id)
        assert list(tl["load_rps"]) == [2.0]
        assert list(made["desired"]) == [5]
        for minute in range(101, 120):
            st.record_cycle(run_id, minute, ts(minute), row(1.0), [decision("spot", 1)], {}, keep_minutes=10)
        assert st.timeline(run_id)["minute"].min() == 119 - 10
        assert st.decisions(run_id)["minute"].min() == 119 - 10


def test_a_failed_cycle_write_leaves_nothing_and_names_the_store(store_url):
    with Store(store_url) as st:
        run_id = st.service_run("svc")
        st.record_cycle(run_id, 1, ts(1), row(1.0), [decision("spot", 2)], {"n": 1})
        with pytest.raises(StoreError) as err:  # the second decision breaks a NOT NULL: the whole cycle goes
            st.record_cycle(run_id, 1, ts(1), row(9.0), [decision("spot", 7), decision("reserved", 1, None)],
                            {"n": 2})
        assert "store" in str(err.value) and "password" not in str(err.value)
        assert list(st.timeline(run_id)["load_rps"]) == [1.0]
        assert list(st.decisions(run_id)["desired"]) == [2]
        assert st.load_memory(run_id) == {"n": 1}


def test_a_store_that_cannot_be_read_is_named(store_url):
    with Store(store_url) as st:
        run_id = st.service_run("svc")
        st.record_cycle(run_id, 1, ts(1), row(1.0), [decision("spot", 2)], {"n": 1})
        with st.engine.begin() as conn:  # damaged behind the store's back
            conn.exec_driver_sql("DROP TABLE timeline")
        with pytest.raises(StoreError, match=r"store .*timeline"):
            st.timeline(run_id)
        assert list(st.decisions(run_id)["desired"]) == [2]  # what is still there still reads


def test_replay_and_backtest_records_round_trip(store_url):
    from types import SimpleNamespace

    n = 30
    timeline = {c: np.arange(n, dtype=float) for c in TIMELINE_COLUMNS}
    timeline["plan_ready"][:] = np.nan  # missing values are NULL, and come back as NaN
    run = SimpleNamespace(strategy="predictive", timeline=timeline,
                          decisions=[{"minute": 3, "time": "2026-01-01T00:03", "cls": "on_demand", "desired": 4,
                                      "current": 2, "reason": "safety net: load 120 req/s over ready capacity"}])
    times = np.arange(np.datetime64("2026-01-01T00:00"), np.datetime64("2026-01-01T00:00") + n)
    with Store(store_url) as st:
        run_id = st.record_replay({"trace": "x.csv", "policy": "p.yaml", "minutes": n}, run, times)
        bt = st.record_backtest({"trace": "x.csv", "models": {}})
        assert st.latest("replay") == run_id and st.latest("backtest") == bt
        assert st.summary(run_id)["minutes"] == n
        tl = st.timeline(run_id)
        np.testing.assert_array_equal(tl["ready"], np.arange(n))
        assert tl["plan_ready"].isna().all()
        assert st.decisions(run_id)["reason"].iloc[0].startswith("safety net")
        with pytest.raises(KeyError, match="no run 999"):
            st.summary(999)


def test_the_dashboard_reads_a_postgresql_store(postgres_url):
    from dashboard import data

    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "replay", "--no-sweep", "--strategies",
                          "predictive,reactive", "--train-days", "12", "--store", postgres_url, "--json"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    view = data.load_replay(postgres_url)
    assert view is not None and len(view.timeline) > 1000
    assert view.summary["strategies"]["predictive"]["cost_usd"] > 0
    assert len(data.list_runs(postgres_url)) == 1


def test_an_old_sqlite_store_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the first release's timeline: fewer columns
        db.executescript("""
            CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, kind TEXT NOT NULL,
                               trace TEXT, policy TEXT, strategy TEXT, summary TEXT NOT NULL);
            CREATE TABLE timeline (run_id INTEGER NOT NULL, minute INTEGER NOT NULL, ts TEXT NOT NULL,
                                   load_rps REAL, ready REAL, PRIMARY KEY (run_id, minute));
            INSERT INTO runs VALUES (1, 0, 'daemon', NULL, NULL, 'svc', '{}');
            INSERT INTO timeline VALUES (1, 5, '2026-01-01T00:05', 3.0, 2.0);
        """)
    with Store(str(path)) as st:
        assert st.service_run("svc") == 1
        st.record_cycle(1, 6, ts(6), {**row(4.0), "plan_in_time": 60.0}, [], {})
        tl = st.timeline(1)
        assert list(tl["load_rps"]) == [3.0, 4.0] and tl["plan_in_time"].iloc[1] == 60.0


def test_bad_store_urls_and_a_database_that_is_down_are_named(tmp_path):
    with pytest.raises(StoreError, match=rf"{tmp_path} is a folder; name a file in it, "
                                         rf"e.g. sqlite:///{tmp_path}/peakpilot.db"):
        Store(f"sqlite:///{tmp_path}")
    with pytest.raises(StoreError, match="unsupported store URL 'mysql://u:\\*\\*\\*@db/x'"):
        Store("mysql://u:secret@db/x")
    with pytest.raises(StoreError) as err:
        Store("postgresql://peakpilot:secret@127.0.0.1:1/peakpilot")
    text = str(err.value)
    assert "cannot open the store postgresql+psycopg://peakpilot:***@127.0.0.1:1/peakpilot" in text
    assert "secret" not in text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Store("/nonexistent/dir/none.db", readonly=True)


def test_a_store_path_under_home_is_home_not_a_folder_named_tilde(tmp_path, monkeypatch):
    """PEAKPILOT_STORE=~/peakpilot.db in a unit file or a quoted ~ reaches peakpilot unexpanded: it made a folder
    named ~ in the working directory. Expanded as a shell would, as a path and in a sqlite:/// URL."""
    from controller.store import sqlite_path

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("~/p.db") == tmp_path / "p.db" and sqlite_path("sqlite:///~/q.db") == tmp_path / "q.db"
    Store("~/p.db").close()
    assert (tmp_path / "p.db").exists() and not (tmp_path / "~").exists()


def test_a_database_server_that_never_answers_is_named_within_the_connect_timeout(silent_port, monkeypatch):
    """libpq waits for ever by default: a store that takes the connection and stays silent would hang
    the daemon's cycle (its writes are in the cycle)."""
    import time

    import controller.store as store

    monkeypatch.setattr(store, "CONNECT_TIMEOUT_S", 2)  # libpq's least
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open the store postgresql.*timeout") as err:
        Store(f"postgresql://peakpilot:secret@127.0.0.1:{silent_port}/peakpilot")
    assert time.monotonic() - started < 15
    assert "secret" not in str(err.value)


def test_run_once_records_in_postgresql_and_refuses_an_unreachable_one(postgres_url):
    ok = subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(ROOT / "configs" / "policy.yaml"),
                         "--once", "--store", postgres_url], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    with Store(postgres_url, readonly=True) as st:
        runs = st.runs()
        assert [r["kind"] for r in runs] == ["daemon"]
        assert len(st.timeline(runs[0]["id"])) == 1 and len(st.decisions(runs[0]["id"])) >= 1
    down = subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(ROOT / "configs" / "policy.yaml"),
                           "--once", "--store", "postgresql://pp:hunter2@127.0.0.1:1/pp"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert down.returncode == 2
    assert "peakpilot: error: cannot open the store" in down.stderr and "127.0.0.1:1" in down.stderr
    assert "hunter2" not in down.stderr and "Traceback" not in down.stderr
