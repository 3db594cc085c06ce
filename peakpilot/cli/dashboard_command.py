"""``dashboard``: the Streamlit app over a store, as its own process."""

from __future__ import annotations

import sys

import typer

from controller.shipped import default_runs_dir
from peakpilot.cli.app import Command, app
from peakpilot.cli.common import listening_socket


@app.command(cls=Command)
def dashboard(
    store: str = typer.Option(str(default_runs_dir() / "demo" / "peakpilot.db"),
                              "--store", envvar="PEAKPILOT_STORE",
                              help="Store to show (sqlite:///path.db, a path, or a postgresql:// URL); "
                                   "read-only. The controller's, from the same variable as `run` reads."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default: in a pod, "
                                                           "reached through kubectl port-forward)."),
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to serve on."),
) -> None:
    """Open the Streamlit dashboard: forecast vs actual, capacity, cost, SLA, decisions, what-if."""
    import os

    from importlib.util import find_spec

    app_path = find_spec("dashboard.app").origin  # (the package's file, wherever pip put it)
    env = dict(os.environ, PEAKPILOT_STORE=store)
    cmd = [sys.executable, "-m", "streamlit", "run", app_path, "--server.address", host, "--server.port",
           str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "viewer"]  # no "Deploy" (to Streamlit's cloud) or developer menu
    listening_socket(host, port).close()  # a port already taken is said here, before Streamlit starts
    typer.echo(f"dashboard on http://{host}:{port} (store {store})", err=True)
    sys.stderr.flush()
    # Become Streamlit rather than wait on it as a child: a SIGTERM (a container stopping, `kill`) then
    # reaches the server itself, where it left a child serving on as an orphan.
    os.execve(sys.executable, cmd, env)
