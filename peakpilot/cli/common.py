"""What several commands share: an input that cannot be used (a policy, a trace, a store, a node's URL) ends
the command with one line naming what is wrong and where, and exit code 2; no traceback."""

from __future__ import annotations

from pathlib import Path

import typer


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"peakpilot: error: {message}", err=True)
    raise typer.Exit(code)


def require_reachable(url: str, api_key: str | None = None) -> None:
    """Exit 2 naming the URL where nothing answers there, or where the node refuses the API key (before a
    load run sends into refused connections or 401s)."""
    from inference_node.loadgen import check_reachable

    try:
        check_reachable(url, api_key=api_key)
    except ConnectionError as exc:
        fail(str(exc))


def open_store(url: str):
    """The store named by --store, opened before any long work so a bad URL fails at once."""
    from controller.store import Store, StoreError

    try:
        return Store(url)
    except (StoreError, OSError) as exc:
        fail(str(exc))


def record_or_exit(write, *args):
    from controller.store import StoreError

    try:
        return write(*args)
    except StoreError as exc:
        fail(str(exc))


BACKENDS = ("simulated", "kubernetes", "dry-run")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        fail(f"unknown backend {backend!r}; choose {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")


def load_policy_or_exit(path: Path):
    from controller.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        fail(str(exc))


def load_trace_or_exit(path: Path):
    from controller.replay import load_trace
    from forecaster.errors import HistoryError

    try:
        return load_trace(path)
    except (HistoryError, ValueError) as exc:
        fail(str(exc))
