"""Shared fixtures: real traces, a real Prometheus and a real PostgreSQL server on loopback ports, and
inference nodes (``peakpilot serve`` processes)."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "traces"
SAMPLE = ROOT / "data" / "servegen_llm_m_small.csv"

logging.getLogger("cmdstanpy").disabled = True


def trace_path(name: str) -> Path:
    """A real trace from shared/traces, or the shipped sample when shared/ is not beside the checkout."""
    path = TRACES / name
    if path.exists():
        return path
    if name == SAMPLE.name:
        return SAMPLE
    pytest.skip(f"{path} not available (shared/traces is not beside this checkout)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> int:
    """A loopback port that takes connections (the kernel completes the handshake) and never answers:
    a hung Prometheus, API server or database, as a client sees it."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        yield hole.getsockname()[1]


def daily_series(days: int = 7, step_min: int = 5, level: float = 200.0, seed: int = 0) -> pd.Series:
    """A clean daily pattern with Poisson noise: the known answer for model tests."""
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-03-04", periods=days * 1440 // step_min, freq=f"{step_min}min")
    tod = (index.hour * 60 + index.minute).to_numpy() / 1440
    mean = level * (1.0 + 0.6 * np.sin(2 * np.pi * (tod - 0.3)))
    series = pd.Series(rng.poisson(mean).astype(float), index=index, name="requests")
    series.index.freq = f"{step_min}min"
    return series


def users_day():
    """A load that follows New York's day across the change to summer time on 8 March 2026, at 5-minute
    steps in UTC (``bench/users_clock.py``, where its forecasts on either clock are measured)."""
    from bench.users_clock import users_day as made

    return made("2026-02-01", "2026-03-17")


# A Prometheus user and password for ``--web.config.file``'s basic auth, which takes the password's bcrypt hash
# (made once with Python's crypt module and libxcrypt: Prometheus only checks it).
PROMETHEUS_USER = ("peakpilot", "peakpilot-test", "$2b$10$vVN8FSzrvhCz0OmTLEvSc.fTDdN9xwDmIPxqlQW2vbytzMIT0CwJe")


class PrometheusServer:
    """A real Prometheus (Debian's package) with a temporary config and data dir; with ``basic_auth``, every
    request needs PROMETHEUS_USER's name and password, and with ``tls`` (the paths of ``ca``, ``server_cert``,
    ``server_key``, ``client_cert`` and ``client_key``) it serves HTTPS and asks every client for a certificate
    its CA signed (Prometheus's own ``--web.config.file``)."""

    def __init__(self, workdir: Path, scrape_targets: list[str] | None = None, scrape_interval: str = "1s",
                 rule_files: list[Path] | None = None, basic_auth: bool = False, tls: dict | None = None):
        self.binary = shutil.which("prometheus")
        if not self.binary:
            pytest.fail("prometheus is not installed: run `apt-get install prometheus` (.ci/run does this)")
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        targets = ", ".join(f'"{t}"' for t in scrape_targets or [])
        config = f"global: {{scrape_interval: {scrape_interval}, evaluation_interval: {scrape_interval}}}\n"
        if scrape_targets:
            config += f"scrape_configs: [{{job_name: node, static_configs: [{{targets: [{targets}]}}]}}]\n"
        if rule_files:
            config += "rule_files: [" + ", ".join(f'"{f}"' for f in rule_files) + "]\n"
        (workdir / "prometheus.yml").write_text(config)
        self.auth = PROMETHEUS_USER[:2] if basic_auth else None
        self.tls = tls
        web = {}
        if basic_auth:
            web["basic_auth_users"] = {PROMETHEUS_USER[0]: PROMETHEUS_USER[2]}
        if tls:
            web["tls_server_config"] = {"cert_file": tls["server_cert"], "key_file": tls["server_key"],
                                        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": tls["ca"]}
        self.web_config = workdir / "web.yml" if web else None
        if web:
            self.web_config.write_text(yaml.safe_dump(web))
        self.proc: subprocess.Popen | None = None

    def backfill(self, openmetrics: str) -> None:
        path = self.workdir / "backfill.om"
        path.write_text(openmetrics)
        subprocess.run([shutil.which("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(path),
                        str(self.data)], check=True, capture_output=True, cwd=self.workdir)

    def start(self) -> PrometheusServer:
        log = open(self.workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.workdir / 'prometheus.yml'}", f"--storage.tsdb.path={self.data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=30d"]
            + ([f"--web.config.file={self.web_config}"] if self.web_config else []),
            stdout=log, stderr=subprocess.STDOUT)
        tls = {"verify": self.tls["ca"], "cert": (self.tls["client_cert"], self.tls["client_key"])} if self.tls else {}
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1, auth=self.auth, **tls).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError((self.workdir / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready in 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def prometheus_factory(tmp_path):
    servers: list[PrometheusServer] = []

    def make(**kwargs) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prom{len(servers)}", **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class PostgresServer:
    """A real PostgreSQL (Debian's package): a throwaway cluster on a loopback port.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the package's ``postgres``
    user (``runuser``); its directory is made outside pytest's private tmp tree so that user can reach it.
    """

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        bindir = Path(found[-1]).parent if found else None
        if bindir is None and shutil.which("initdb"):
            bindir = Path(shutil.which("initdb")).parent
        if bindir is None:
            pytest.fail("PostgreSQL is not installed: run `apt-get install postgresql` (.ci/run does this)")
        self.bindir = bindir
        self.workdir = Path(tempfile.mkdtemp(prefix="peakpilot-pg-"))
        self.data = self.workdir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--no-sync"])

    def _run(self, cmd: list[str]) -> None:
        out = subprocess.run(self.as_user + cmd, capture_output=True, text=True, cwd=self.workdir)
        if out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")

    def start(self) -> PostgresServer:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.workdir / "postgres.log"), "-w",
                   "-t", "60", "-o", f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off",
                   "start"])
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres):
    """A fresh database on the session's server for each test."""
    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


class NodeProcess:
    """``peakpilot serve`` in a process of its own on a free loopback port, its output kept in a file."""

    def __init__(self, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Output to a file, not a pipe nobody reads while the node runs: a full pipe blocks its writes.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "peakpilot.cli", "serve", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.seen_not_ready = False

    def wait_ready(self, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                r = httpx.get(f"{self.url}/ready", timeout=1)
                if r.status_code == 200:
                    return r.json()
                self.seen_not_ready = True
                assert httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.output()
            time.sleep(0.02)
        raise TimeoutError("node not ready")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def shared_node():
    """One ``serve`` (the built-in model, --max-batch 8, --max-queue 16) for a module's tests that only
    send it requests: a node started once, not once a test."""
    node = NodeProcess("--max-batch", "8", "--max-queue", "16")
    node.wait_ready()
    yield node
    node.stop()


@pytest.fixture
def node_factory():
    nodes = []

    def make(*args):
        node = NodeProcess(*args)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
