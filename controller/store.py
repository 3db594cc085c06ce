"""The store: what replay and the daemon record, for the dashboard and for restarts.

Named by a database URL. SQLite by default (``sqlite:///path/to.db``, or a plain file path), in WAL
mode so the dashboard reads while a writer writes; PostgreSQL where users want a shared, managed
database (``postgresql://user:password@host:5432/dbname``, through psycopg 3). One schema, written
with SQLAlchemy Core, serves both. Each replay or daemon run is one row of ``runs``; its per-minute
timeline and its decisions (with the reason for each) hang off it. Every write batch is one
transaction: a crash leaves either all of it or none.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

TIMELINE_COLUMNS = ("load_rps", "forecast_q50", "forecast_q90", "ready", "warming", "draining", "ready_reserved",
                    "ready_spot", "ready_on_demand", "cost_per_hour", "cost_reserved", "cost_spot", "cost_on_demand",
                    "in_time", "late", "busy", "plan_nodes", "plan_cost_per_hour", "plan_ready", "plan_in_time",
                    "plan_late", "plan_busy")
# The daemon's: its mode (predictive, or reactive: the safety net alone, for want of a forecast), and
# whether this replica's decisions were applied (leader), or not (follower of the Lease, shadow).
TEXT_COLUMNS = ("mode", "role", "attention")

metadata = sa.MetaData()
runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("trace", sa.Text),
    sa.Column("policy", sa.Text),
    sa.Column("strategy", sa.Text),
    sa.Column("summary", sa.Text, nullable=False),
)
timeline = sa.Table(
    "timeline", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("minute", sa.BigInteger, primary_key=True),  # minutes since the epoch for the daemon
    sa.Column("ts", sa.Text, nullable=False),
    *(sa.Column(c, sa.Float) for c in TIMELINE_COLUMNS),
    *(sa.Column(c, sa.Text) for c in TEXT_COLUMNS),
)
decisions = sa.Table(
    "decisions", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("minute", sa.BigInteger, nullable=False),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("cls", sa.Text, nullable=False),
    sa.Column("desired", sa.Integer, nullable=False),
    sa.Column("current", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Index("decisions_run", "run_id", "minute"),
)
memory = sa.Table(
    "memory", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
)


class StoreError(RuntimeError):
    """The store cannot be opened or answered with an error; the message names it (password hidden)."""


def store_url(url: str) -> URL:
    """A store URL as SQLAlchemy's: plain paths are SQLite files; ``postgresql://`` uses psycopg 3."""
    if "://" not in url:  # (~ as a shell would have expanded it: PEAKPILOT_STORE in a unit file is not)
        return URL.create("sqlite", database=str(Path(url).expanduser()))
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"cannot parse the store URL {url!r}: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database.startswith("~"):
        parsed = parsed.set(database=str(Path(parsed.database).expanduser()))
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"unsupported store URL {parsed.render_as_string(hide_password=True)!r}: use "
                         f"sqlite:///path/to.db, a file path, or postgresql://user:password@host:5432/dbname")
    return parsed


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store (None for a server database)."""
    parsed = store_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


CONNECT_TIMEOUT_S = 10  # PostgreSQL: seconds to connect (libpq takes 2 at least)
STATEMENT_TIMEOUT_S = 30  # PostgreSQL: longest statement


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")  # a reader and a writer wait for each other instead of failing
    cur.close()


class Store:
    def __init__(self, url: str, readonly: bool = False):
        self.url = url
        parsed = store_url(url)
        self.name = parsed.render_as_string(hide_password=True)  # for messages: never the password
        self.path = sqlite_path(url)
        if self.path is not None:
            if self.path.is_dir():
                raise StoreError(f"store {self.name}: {self.path} is a folder; name a file in it, "
                                 f"e.g. sqlite:///{self.path / 'peakpilot.db'}")
            if readonly:
                if not self.path.exists():
                    raise FileNotFoundError(f"store {self.path} does not exist")
                parsed = URL.create("sqlite", database=f"file:{self.path}?mode=ro", query={"uri": "true"})
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        # A database server that takes the connection and never answers, or vanishes mid-query, must not
        # hang the daemon's cycle: libpq waits for ever by default.
        connect_args = {} if self.path is not None else {
            "connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
            "keepalives_count": 3, "options": f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}"}
        try:
            self.engine: Engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        except (NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"store {self.name}: no database driver ({exc}); PostgreSQL needs "
                             f"`pip install 'peakpilot[postgres]'`") from None
        if self.path is not None:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            if self.path is not None and not readonly:
                with self.engine.connect() as conn:  # outside a transaction, where SQLite allows it
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            with self.engine.begin() as conn:
                if not readonly:
                    metadata.create_all(conn)
                    self._migrate(conn)
                elif not sa.inspect(conn).has_table("runs"):
                    raise StoreError(f"store {self.name} holds no peakpilot runs")
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open the store {self.name}: {_short(exc)}") from None

    @staticmethod
    def _migrate(conn) -> None:
        """Add timeline columns a newer version records to a store an older one created."""
        have = {c["name"] for c in sa.inspect(conn).get_columns("timeline")}
        for columns, kind in ((TIMELINE_COLUMNS, sa.Float()), (TEXT_COLUMNS, sa.Text())):
            for column in columns:
                if column not in have:
                    conn.exec_driver_sql(f"ALTER TABLE timeline ADD COLUMN {column} "
                                         f"{kind.compile(dialect=conn.dialect)}")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _connection(self, transaction: bool):
        """A connection (in one transaction when writing: a failure rolls all of it back); a database
        error becomes a StoreError naming the store."""
        try:
            with (self.engine.begin() if transaction else self.engine.connect()) as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"store {self.name}: {_short(exc)}") from None

    def _write(self):
        return self._connection(transaction=True)

    def _read(self):
        return self._connection(transaction=False)

    # -- writing ---------------------------------------------------------------------------------
    def record_replay(self, doc: dict, run, times: np.ndarray) -> int:
        """One replay: its JSON document, and the timeline and decisions of the predictive run."""
        with self._write() as conn:
            run_id = self._new_run(conn, "replay", doc.get("trace"), doc.get("policy"), run.strategy, doc)
            tl = run.timeline
            rows = [{"run_id": run_id, "minute": i, "ts": str(times[i]),
                     **{c: None if np.isnan(tl[c][i]) else float(tl[c][i]) for c in TIMELINE_COLUMNS},
                     **{c: tl[c][i] for c in TEXT_COLUMNS if c in tl}}
                    for i in range(len(times))]
            if rows:
                conn.execute(timeline.insert(), rows)
            made = [{"run_id": run_id, "minute": d["minute"], "ts": d["time"], "cls": d["cls"],
                     "desired": d["desired"], "current": d["current"], "reason": d["reason"]} for d in run.decisions]
            if made:
                conn.execute(decisions.insert(), made)
        return run_id

    def record_backtest(self, doc: dict) -> int:
        with self._write() as conn:
            return self._new_run(conn, "backtest", doc.get("trace"), None, None, doc)

    @staticmethod
    def _new_run(conn, kind: str, trace, policy, strategy, summary: dict) -> int:
        result = conn.execute(runs.insert().values(created=time.time(), kind=kind, trace=trace, policy=policy,
                                                   strategy=strategy, summary=json.dumps(summary)))
        return int(result.inserted_primary_key[0])

    # -- the daemon ------------------------------------------------------------------------------
    def service_run(self, service: str, policy: str = "") -> int:
        """The daemon's run of a service: the same one across restarts, so the timeline continues."""
        with self._write() as conn:
            found = conn.execute(sa.select(runs.c.id).where(runs.c.kind == "daemon", runs.c.strategy == service)
                                 .order_by(runs.c.id).limit(1)).scalar()
            if found is not None:
                return int(found)
            return self._new_run(conn, "daemon", None, policy, service, {"service": service})

    def record_cycle(self, run_id: int, minute: int, ts: str, row: dict, decided: list, state: dict,
                     keep_minutes: int | None = None) -> None:
        """One cycle's writes in one transaction. Keyed by (run, minute): a cycle redone after a
        restart replaces its rows instead of adding second ones."""
        with self._write() as conn:
            conn.execute(timeline.delete().where(timeline.c.run_id == run_id, timeline.c.minute == minute))
            conn.execute(timeline.insert().values(run_id=run_id, minute=minute, ts=ts,
                                                  **{c: row.get(c) for c in TIMELINE_COLUMNS + TEXT_COLUMNS}))
            conn.execute(decisions.delete().where(decisions.c.run_id == run_id, decisions.c.minute == minute))
            if decided:
                conn.execute(decisions.insert(), [{"run_id": run_id, "minute": minute, "ts": ts, "cls": d.cls,
                                                   "desired": d.desired, "current": d.current, "reason": d.reason}
                                                  for d in decided])
            conn.execute(memory.delete().where(memory.c.run_id == run_id))
            conn.execute(memory.insert().values(run_id=run_id, updated=time.time(), state=json.dumps(state)))
            if keep_minutes:
                oldest = minute - keep_minutes
                conn.execute(timeline.delete().where(timeline.c.run_id == run_id, timeline.c.minute < oldest))
                conn.execute(decisions.delete().where(decisions.c.run_id == run_id, decisions.c.minute < oldest))

    def load_memory(self, run_id: int) -> dict | None:
        state = self._scalar(sa.select(memory.c.state).where(memory.c.run_id == run_id))
        return json.loads(state) if state is not None else None

    def latest(self, kind: str) -> int | None:
        return self._scalar(sa.select(sa.func.max(runs.c.id)).where(runs.c.kind == kind))

    # -- reading ---------------------------------------------------------------------------------
    def _scalar(self, query):
        with self._read() as conn:
            return conn.execute(query).scalar()

    def runs(self) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(sa.select(runs.c.id, runs.c.created, runs.c.kind, runs.c.trace, runs.c.policy,
                                          runs.c.strategy).order_by(runs.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def summary(self, run_id: int) -> dict:
        text = self._scalar(sa.select(runs.c.summary).where(runs.c.id == run_id))
        if text is None:
            raise KeyError(f"no run {run_id} in {self.name}")
        return json.loads(text)

    def latest_cycles(self) -> list[dict]:
        """Each service the daemon has run: its last recorded cycle, with that cycle's decisions (what
        ``peakpilot status`` shows), by service name: one indexed read, and one for each service's
        decisions, however long the timeline."""
        last = (sa.select(timeline.c.run_id, sa.func.max(timeline.c.minute).label("minute"))
                .group_by(timeline.c.run_id).subquery())
        joined = runs.join(timeline, timeline.c.run_id == runs.c.id).join(
            last, sa.and_(last.c.run_id == timeline.c.run_id, last.c.minute == timeline.c.minute)).outerjoin(
            memory, memory.c.run_id == runs.c.id)
        c = decisions.c
        with self._read() as conn:
            have = {col["name"] for col in sa.inspect(conn).get_columns("timeline")}  # read-only: not migrated
            # ``written``: when the cycle was written (the timeline's minute is the minute it planned for)
            query = (sa.select(runs.c.strategy.label("service"), runs.c.policy, memory.c.updated.label("written"),
                               *(col for col in timeline.c if col.name in have))
                     .select_from(joined).where(runs.c.kind == "daemon").order_by(runs.c.strategy))
            found = [dict(r) for r in conn.execute(query).mappings().all()]
            for cycle in found:
                cycle["decisions"] = [dict(d) for d in conn.execute(
                    sa.select(c.cls, c.desired, c.current, c.reason)
                    .where(c.run_id == cycle["run_id"], c.minute == cycle["minute"]).order_by(c.cls)).mappings()]
        return found

    def timeline(self, run_id: int):
        import pandas as pd

        with self._read() as conn:
            frame = pd.read_sql_query(sa.select(timeline).where(timeline.c.run_id == run_id)
                                      .order_by(timeline.c.minute), conn)
        frame["ts"] = pd.to_datetime(frame["ts"])
        return frame

    def decisions(self, run_id: int):
        import pandas as pd

        with self._read() as conn:
            c = decisions.c
            return pd.read_sql_query(sa.select(c.minute, c.ts, c.cls, c.desired, c.current, c.reason)
                                     .where(c.run_id == run_id).order_by(c.minute, c.cls), conn)


def _short(exc: Exception) -> str:
    """The driver's own message, without SQLAlchemy's statement dump and background link."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
