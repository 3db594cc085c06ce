"""Secrets read from files (mounted Kubernetes Secrets, projected tokens), as Prometheus's own configuration
takes them: read again at each use, so a rotated one is the next request's, and never written in a policy."""

from __future__ import annotations

from forecaster.errors import HistoryError


def read_secret(path: str, what: str, where: str) -> str:
    """The secret in ``path`` (its surrounding whitespace left out: a Secret's file often ends in a newline); a
    file that cannot be read, or is empty, is a HistoryError naming ``what`` it should hold and where."""
    try:
        text = open(path, encoding="utf-8").read().strip()
    except OSError as exc:
        raise HistoryError(where, f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    if not text:
        raise HistoryError(where, f"the {what} file {path} is empty")
    return text
