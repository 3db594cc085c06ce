"""Secrets read from files (mounted Kubernetes Secrets, projected tokens), as Prometheus's own configuration
takes them: read again at each use, so a rotated one is the next request's, and never written in a policy;
and the TLS files beside them (a CA bundle, a client certificate and its key), checked before a request."""

from __future__ import annotations

import os

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


def check_tls_files(where: str, ca_file: str | None, cert_file: str | None, key_file: str | None,
                    of: str = "") -> None:
    """A HistoryError naming the first of a CA bundle, client certificate and key given that cannot be read
    (requests would say only that a path is invalid); ``of`` names whose they are."""
    for path, what in ((ca_file, "CA"), (cert_file, "client certificate"), (key_file, "client key")):
        if path is not None and not os.access(path, os.R_OK):
            raise HistoryError(where, f"cannot read the {of}{what} file {path}")
