"""The store: what replay and the daemon record, for the dashboard and for restarts.

SQLite by default, in WAL mode so the dashboard reads while a writer writes. A store is named by a
URL (``sqlite:///path/to.db``) or a plain file path. Each replay or daemon run is one row of ``runs``;
its per-minute timeline and its decisions (with the reason for each) hang off it. Every write batch
is one transaction: a crash leaves either all of it or none.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np

TIMELINE_COLUMNS = ("load_rps", "forecast_q50", "forecast_q90", "ready", "warming", "draining", "ready_reserved",
                    "ready_spot", "ready_on_demand", "cost_per_hour", "cost_reserved", "cost_spot", "cost_on_demand",
                    "in_time", "late", "busy", "plan_nodes", "plan_cost_per_hour", "plan_ready", "plan_in_time",
                    "plan_late", "plan_busy")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    trace TEXT,
    policy TEXT,
    strategy TEXT,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS timeline (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    minute INTEGER NOT NULL,
    ts TEXT NOT NULL,
    {", ".join(f"{c} REAL" for c in TIMELINE_COLUMNS)},
    PRIMARY KEY (run_id, minute)
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    minute INTEGER NOT NULL,
    ts TEXT NOT NULL,
    cls TEXT NOT NULL,
    desired INTEGER NOT NULL,
    current INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_run ON decisions(run_id, minute);
CREATE TABLE IF NOT EXISTS memory (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    updated REAL NOT NULL,
    state TEXT NOT NULL
);
"""


def sqlite_path(url: str) -> Path:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if "://" in url:
        raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path/to.db or a file path")
    return Path(url)


class Store:
    def _migrate(self) -> None:
        """Add timeline columns a newer version records to a store an older one created."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(timeline)")}
        for column in TIMELINE_COLUMNS:
            if column not in have:
                self.db.execute(f"ALTER TABLE timeline ADD COLUMN {column} REAL")

    def __init__(self, url: str, readonly: bool = False):
        self.url = url
        self.path = sqlite_path(url)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"store {self.path} does not exist")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            self._migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------
    def record_replay(self, doc: dict, run, times: np.ndarray) -> int:
        """One replay: its JSON document, and the timeline and decisions of the predictive run."""
        with self.db:  # one transaction
            cur = self.db.execute("INSERT INTO runs (created, kind, trace, policy, strategy, summary) VALUES (?,?,?,?,?,?)",
                                  (time.time(), "replay", doc.get("trace"), doc.get("policy"), run.strategy,
                                   json.dumps(doc)))
            run_id = cur.lastrowid
            tl = run.timeline
            rows = [(run_id, i, str(times[i]), *(None if np.isnan(tl[c][i]) else float(tl[c][i]) for c in TIMELINE_COLUMNS))
                    for i in range(len(times))]
            self.db.executemany(f"INSERT INTO timeline (run_id, minute, ts, {', '.join(TIMELINE_COLUMNS)}) "
                                f"VALUES ({', '.join('?' * (3 + len(TIMELINE_COLUMNS)))})", rows)
            self.db.executemany("INSERT INTO decisions VALUES (?,?,?,?,?,?,?)",
                                [(run_id, d["minute"], d["time"], d["cls"], d["desired"], d["current"], d["reason"])
                                 for d in run.decisions])
        return run_id

    def record_backtest(self, doc: dict) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO runs (created, kind, trace, policy, strategy, summary) VALUES (?,?,?,?,?,?)",
                                  (time.time(), "backtest", doc.get("trace"), None, None, json.dumps(doc)))
        return cur.lastrowid

    # -- the daemon ------------------------------------------------------------------------------
    def service_run(self, service: str, policy: str = "") -> int:
        """The daemon's run of a service: the same one across restarts, so the timeline continues."""
        with self.db:
            row = self.db.execute("SELECT id FROM runs WHERE kind = 'daemon' AND strategy = ?", (service,)).fetchone()
            if row:
                return row[0]
            cur = self.db.execute("INSERT INTO runs (created, kind, trace, policy, strategy, summary) VALUES (?,?,?,?,?,?)",
                                  (time.time(), "daemon", None, policy, service, json.dumps({"service": service})))
            return cur.lastrowid

    def record_cycle(self, run_id: int, minute: int, ts: str, row: dict, decisions: list, memory: dict,
                     keep_minutes: int | None = None) -> None:
        """One cycle's writes in one transaction. Keyed by (run, minute): a cycle redone after a
        restart replaces its row instead of adding a second."""
        values = [row.get(c) for c in TIMELINE_COLUMNS]
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO timeline (run_id, minute, ts, {', '.join(TIMELINE_COLUMNS)}) "
                            f"VALUES ({', '.join('?' * (3 + len(TIMELINE_COLUMNS)))})", (run_id, minute, ts, *values))
            self.db.execute("DELETE FROM decisions WHERE run_id = ? AND minute = ?", (run_id, minute))
            self.db.executemany("INSERT INTO decisions VALUES (?,?,?,?,?,?,?)",
                                [(run_id, minute, ts, d.cls, d.desired, d.current, d.reason) for d in decisions])
            self.db.execute("INSERT OR REPLACE INTO memory VALUES (?,?,?)", (run_id, time.time(), json.dumps(memory)))
            if keep_minutes:
                self.db.execute("DELETE FROM timeline WHERE run_id = ? AND minute < ?", (run_id, minute - keep_minutes))
                self.db.execute("DELETE FROM decisions WHERE run_id = ? AND minute < ?", (run_id, minute - keep_minutes))

    def load_memory(self, run_id: int) -> dict | None:
        row = self.db.execute("SELECT state FROM memory WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def latest(self, kind: str) -> int | None:
        row = self.db.execute("SELECT max(id) FROM runs WHERE kind = ?", (kind,)).fetchone()
        return row[0] if row else None

    # -- reading ---------------------------------------------------------------------------------
    def runs(self) -> list[dict]:
        cur = self.db.execute("SELECT id, created, kind, trace, policy, strategy FROM runs ORDER BY id")
        return [dict(zip(("id", "created", "kind", "trace", "policy", "strategy"), r)) for r in cur]

    def summary(self, run_id: int) -> dict:
        row = self.db.execute("SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id} in {self.path}")
        return json.loads(row[0])

    def timeline(self, run_id: int):
        import pandas as pd

        frame = pd.read_sql_query("SELECT * FROM timeline WHERE run_id = ? ORDER BY minute", self.db, params=(run_id,))
        frame["ts"] = pd.to_datetime(frame["ts"])
        return frame

    def decisions(self, run_id: int):
        import pandas as pd

        return pd.read_sql_query("SELECT minute, ts, cls, desired, current, reason FROM decisions WHERE run_id = ? "
                                 "ORDER BY minute, cls", self.db, params=(run_id,))
