"""Progress of the long commands (backtest, replay, weeks of Prometheus history) on stderr.

On a terminal, a tqdm bar redrawn in place. In a pipe or a log file (CI, a Kubernetes Job) redraws
would be one line of carriage returns, so there the same bar is written as a whole line, at most every
``LOG_INTERVAL_S`` seconds and once at the end: a log shows that the work moves without filling up.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class _Lines:
    """A stream for tqdm that turns each redraw (``"\\r" + status``) into one line of its own."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """A bar for logs: a new postfix waits for the next timed line instead of writing one of its own, and
    no monitor thread forces lines in between (with a count that may lag behind)."""

    monitor_interval = 0

    def set_postfix_str(self, s: str = "", refresh: bool = False) -> None:
        super().set_postfix_str(s, refresh=False)


def progress(iterable: Iterable | None = None, *, enabled: bool = True, stream: TextIO | None = None,
             **kwargs) -> tqdm:
    """A tqdm bar on ``stream`` (stderr): drawn in place on a terminal, timed lines elsewhere, nothing
    when not ``enabled``."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if getattr(stream, "isatty", lambda: False)():  # a stream without isatty is no terminal
        return tqdm(iterable, file=stream, **kwargs)
    return _LogBar(iterable, file=_Lines(stream), mininterval=LOG_INTERVAL_S, miniters=1, ascii=True, ncols=100,
                   **kwargs)
