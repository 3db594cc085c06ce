"""What several commands share: an input that cannot be used (a policy, a trace, a store, a node's URL) ends
the command with one line naming what is wrong and where, and exit code 2; no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import typer


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"peakpilot: error: {message}", err=True)
    raise typer.Exit(code)


def listening_socket(host: str, port: int, flag: str = "--port") -> socket.socket:
    """A socket bound to ``host:port`` before the server's start (a model's load, Streamlit's), or exit 2
    naming the option: a port already taken, where the server would say it only once started."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        fail(f"{flag} {port}: cannot listen on {host}:{port} ({exc.strerror})")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Tornado: a restart rebinds at once
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        fail(f"{flag} {port}: cannot listen on {host}:{port} ({exc.strerror})")
    return sock


DAYS_MAX = 3650  # ten years of history: more than a Prometheus keeps, or a trace holds


def above_zero(*options: tuple) -> None:
    """Exit 2 naming the first ``(flag, value)`` given at or below zero (Typer's ranges take only closed
    bounds: ``min=0`` would let 0 through), or ``(flag, value, most)`` above its most (``1e308`` overflowed a
    span of time: a traceback)."""
    for flag, value, *most in options:
        if value is None:
            continue
        if not value > 0:
            fail(f"{flag} {value:g}: must be above 0")
        if most and value > most[0]:
            fail(f"{flag} {value:g}: at most {most[0]:g}")


def or_exit(errors, call, *args, **kwargs):
    """``call(*args, **kwargs)``, or exit 2 with the message of one of ``errors`` (an input that cannot be used)."""
    try:
        return call(*args, **kwargs)
    except errors as exc:
        fail(str(exc))


def require_reachable(url: str, api_key: str | None = None) -> None:
    """Exit 2 naming the URL where nothing answers there, or where the node refuses the API key (before a
    load run sends into refused connections or 401s)."""
    from inference_node.loadgen import check_reachable

    or_exit(ConnectionError, check_reachable, url, api_key=api_key)


def open_store(url: str):
    """The store named by --store, opened before any long work so a bad URL fails at once."""
    from controller.store import Store, StoreError

    return or_exit((StoreError, OSError), Store, url)


def record_or_exit(write, *args):
    from controller.store import StoreError

    return or_exit(StoreError, write, *args)


BACKENDS = ("simulated", "kubernetes", "dry-run")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        fail(f"unknown backend {backend!r}; choose {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")


def load_policy_or_exit(path: Path):
    from controller.policy import PolicyError, load_policy

    return or_exit(PolicyError, load_policy, path)


def load_trace_or_exit(path: Path, columns: dict | None = None):
    from controller.replay import load_trace
    from forecaster.errors import HistoryError

    return or_exit((HistoryError, ValueError), load_trace, path, **(columns or {}))
