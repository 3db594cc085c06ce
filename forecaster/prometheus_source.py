"""Request history from Prometheus, through ``prometheus-api-client``.

The query is PromQL that returns the request rate **per second** as one series (``sum`` it over the
nodes); ``{step}`` in it is replaced by the step (e.g. ``1m``), so the default, the inference nodes'
requests less those their clients say are retries (``DEFAULT_QUERY``), is the average rate over each
step. The rate at an
evaluation time ``t`` covers the interval before ``t``; it is multiplied by the step's seconds and
labelled with the interval's start (``t - step``), so counts line up with a CSV of the same traffic.

Prometheus answers at most 11,000 points per range query, so long ranges are read in chunks of
``chunk_points`` steps. Steps that come back without a sample are gaps (NaN), listed in the
History's ``gaps``, and filled by the documented rule of :mod:`forecaster.history` for model inputs.

``rate()`` needs two samples inside its window: with the default query, a window of one step holds two
only if the counter is scraped at least twice a step. A load that comes back empty, or whose last steps
are mostly missing while the counter is there, asks Prometheus how often the counter is sampled and
names the fix (a coarser ``signals.step`` or a wider window in ``signals.query``) instead of handing the
forecaster a history of gaps.

Every request has a timeout, and a Prometheus that could not be reached (refused, or silent past the
timeout) is not asked again for ``RETRY_AFTER_FAILURE_S``: a daemon with many services on one
Prometheus then waits for it once per cycle, not once per service.

A Prometheus behind authentication (``PrometheusAuth``): headers sent with every query (a tenant's
``X-Scope-OrgID`` for Mimir, Cortex or Thanos), a bearer token read from a file (a Kubernetes service
account's, for OpenShift's Thanos querier or a kube-rbac-proxy; read again at every query, since a projected
token is rotated while the daemon runs), basic auth with its password in a file (Prometheus's own
``--web.config.file``, Grafana Cloud), an OAuth2 client's tokens (forecaster/oauth2.py: Azure Monitor's
managed Prometheus, a gateway behind an identity provider), AWS's SigV4 signature on every request
(forecaster/sigv4.py: Amazon Managed Service for Prometheus), Google's access tokens
(forecaster/google_auth.py: Google Cloud Managed Service for Prometheus), or Entra ID's for an AKS pod's
workload identity or a machine's managed identity (forecaster/azure_auth.py: Azure Monitor's); over TLS,
the CA that signed its certificate and a client certificate where it asks for one (mTLS). Secrets come
from files, as Prometheus's own configuration takes them, so that none is written in a policy ConfigMap.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from forecaster.errors import HistoryError
from forecaster.azure_auth import AzureSettings
from forecaster.google_auth import GoogleSettings, google_token
from forecaster.google_auth import forget as forget_google
from forecaster.history import History, mark_gaps, prometheus_duration, running_total_problem
from forecaster.oauth2 import ClientCredentials
from forecaster.secret_file import check_tls_files, read_secret
from forecaster.sigv4 import SigV4Settings, Signer
from forecaster.progress import progress as show_progress

log = logging.getLogger(__name__)

COUNTER = "peakpilot_requests_total"
RETRIED = "peakpilot_retried_requests_total"
# Demand: every request, less the ones that repeat a request sent before (a busy answer retried by OpenAI's
# SDK is one request of demand, not two or three); nodes older than the retry counter count all.
DEFAULT_QUERY = f"sum(rate({COUNTER}[{{step}}])) - (sum(rate({RETRIED}[{{step}}])) or vector(0))"
RECENT_STEPS = 30  # the last steps of a load checked for a rate window too narrow for the scrape interval
CLIENT_MARGIN_S = 5.0  # the client waits this much longer than the query timeout Prometheus is given
RETRY_AFTER_FAILURE_S = 30.0  # an unreachable Prometheus is not asked again this soon (by any source)
_unreachable: dict[str, tuple[float, str]] = {}  # url -> (monotonic time it failed, how)


@dataclass(frozen=True)
class PrometheusAuth:
    """How to reach a Prometheus behind authentication: ``headers`` sent with every query, and one of a bearer
    token or a basic-auth password read from a file at every query, or an OAuth2 client's tokens (``oauth2``,
    forecaster/oauth2.py)."""

    headers: dict[str, str] = field(default_factory=dict)
    bearer_token_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None  # the CA bundle that signed Prometheus's certificate (default: the system's)
    cert_file: str | None = None  # a client certificate and its key, where Prometheus asks for one (mTLS)
    key_file: str | None = None
    oauth2: ClientCredentials | None = None
    sigv4: SigV4Settings | None = None  # Amazon Managed Prometheus: every request signed (forecaster/sigv4.py)
    google: GoogleSettings | None = None  # Google's managed Prometheus: its OAuth2 tokens (forecaster/google_auth.py)
    azure: AzureSettings | None = None  # Azure's: workload or managed identity (forecaster/azure_auth.py)

    def __post_init__(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both its cert file and its key file")
        given = [what for what, there in (("a bearer token file", self.bearer_token_file),
                                          ("basic auth", self.username is not None), ("OAuth2", self.oauth2),
                                          ("SigV4", self.sigv4), ("Google", self.google), ("Azure", self.azure))
                 if there]
        if len(given) > 1:
            raise ValueError(f"give one of a bearer token file, basic auth, OAuth2, SigV4, Google or Azure, not "
                             f"{' and '.join(given)}")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("basic auth needs both a username and a password file")
        if given and any(k.lower() == "authorization" for k in self.headers):
            raise ValueError(f"an Authorization header and {given[0]} would overwrite each other")

    def credentials(self, where: str) -> tuple[dict[str, str], tuple[str, str] | None]:
        """The headers and basic auth of the next query, files read now; a file that cannot be read is a
        HistoryError naming it."""
        headers = dict(self.headers)
        if self.bearer_token_file:
            headers["Authorization"] = f"Bearer {read_secret(self.bearer_token_file, 'bearer token', where)}"
        if self.oauth2 is not None:
            headers["Authorization"] = f"Bearer {self.oauth2.token(where)}"
        if self.google is not None:
            headers["Authorization"] = f"Bearer {google_token(self.google, where)}"
        if self.azure is not None:
            headers["Authorization"] = f"Bearer {self.azure.client(where).token(where)}"
        basic = None if self.username is None else (self.username, read_secret(self.password_file, "password", where))
        return headers, basic

    def sent(self, url: str = "") -> list[str]:
        """What a query carries, as an error or a check names it (``url``: basic auth written in it)."""
        basic = self.username is not None or urlsplit(url).username is not None
        given = {"headers": bool(self.headers), "a bearer token": bool(self.bearer_token_file), "basic auth": basic,
                 "an OAuth2 token": self.oauth2 is not None, "a SigV4 signature": self.sigv4 is not None,
                 "a Google token": self.google is not None,
                 f"an Azure token ({'managed' if self.azure and self.azure.managed() else 'workload'} identity's)":
                     self.azure is not None}
        return [what for what, there in given.items() if there]

    def forget_token(self) -> str | None:
        """Drop the token held (the server refused it: revoked, or signed by keys since rotated), so that the
        next query asks for a new one; where it came from, or None where no token is held between queries."""
        if self.oauth2 is not None:
            self.oauth2.forget()
            return self.oauth2.token_url
        if self.google is not None:
            forget_google(self.google)
            return "Google"
        if self.azure is not None:
            try:
                client = self.azure.client("")
            except HistoryError:  # (no identity in the environment: no token was held either)
                return None
            client.forget()
            return client.token_url
        return None

    def session(self, where: str):
        """A requests session that trusts ``ca_file`` and presents the client certificate; a file that
        cannot be read is a HistoryError naming it (requests would say only that a path is invalid)."""
        import requests

        check_tls_files(where, self.ca_file, self.cert_file, self.key_file)
        session = requests.Session()
        session.verify = self.ca_file or True
        session.cert = (self.cert_file, self.key_file) if self.cert_file else None
        return session


def redacted(url: str) -> str:
    """``url`` without a password written in it (``https://user:secret@host``) or a query string (where a
    token may be), for what is logged."""
    parts = urlsplit(url)
    if parts.query:
        parts = parts._replace(query="***")
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]  # (as written: an IPv6 address keeps its brackets)
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    return urlunsplit(parts)


PER_MINUTE = re.compile(r"\*\s*(60|3600)(\.0*)?(?![\d.])|(?<![\w.])(60|3600)(\.0*)?\s*\*")
"""A rate multiplied by 60 or 3600: requests per minute or per hour, as a Grafana panel shows them."""


def query_problem(query: str) -> str | None:
    """Why ``query`` cannot answer requests per second, where its text shows it, or None: ``increase()``
    counts the requests of its range (60 times the rate, over [1m]), and ``* 60`` makes a rate per minute,
    as a Grafana panel of "requests per minute" writes them; read as a rate per second either would plan
    for 60 times the load. A query that divides may be ``increase(...[1h]) / 3600``: a rate, let be.
    (``controller.policy.Signals`` says the same of a policy's query.)"""
    bare = _without_strings(query)
    if "/" in bare:
        return None
    if re.search(r"\bincrease\s*\(", bare):
        return ("the query takes increase(), which counts each range's requests (over [1m], 60 times the rate per "
                "second that peakpilot reads): write rate(...) instead, or divide by the range in seconds")
    if (factor := PER_MINUTE.search(bare)) is not None:
        return (f"the query multiplies by {factor.group(1) or factor.group(3)}, as a panel of requests per minute or "
                f"hour does: peakpilot reads requests per second, so leave the factor out")
    return None


def short_ranges(query: str, step: pd.Timedelta) -> list[str]:
    """The range selectors of ``query`` (``[1m]``, a subquery's ``[1h:1m]``) shorter than ``step``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    found = re.findall(r"\[\s*((?:\d+(?:ms|s|m|h|d|w|y))+)\s*(?::[^\]]*)?\]", _without_strings(query))
    return [r for r in dict.fromkeys(found)
            if sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", r)) < step.total_seconds()]


def _without_strings(query: str) -> str:
    """``query`` with its string literals emptied: a label matcher's ``"/v1/chat"`` or ``"[1m]"`` is no
    division or range."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', query)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a Prometheus base URL, or None. The API's paths (``/api/v1/query_range``) are
    appended to it, so it is ``http(s)://HOST[:PORT][/PREFIX]`` and nothing after the path: a query string
    would swallow them (a token there is never sent as one)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        guess = f" (here perhaps http://{url})" if "://" not in url else ""
        return f"not a Prometheus URL: write it as http://HOST:9090 or https://HOST[/PREFIX]{guess}"
    try:
        parts.port
    except ValueError:
        return f"the port in {parts.netloc.rsplit('@', 1)[-1]!r} is not a number from 0 to 65535"
    if parts.query or parts.fragment:
        return ("a query string or fragment cannot be part of a Prometheus URL (the API's paths go after it): "
                "send a token with --prometheus-token-file or a header, or the policy's signals.prometheus_auth")
    return None


class PrometheusSource:
    def __init__(self, url: str, query: str | None = None, step: str = "1m", chunk_points: int = 10000,
                 timeout_s: float = 30.0, auth: PrometheusAuth | None = None):
        self.endpoint = url.rstrip("/")  # as given: a password written in it is sent as basic auth
        self.url = redacted(self.endpoint)  # as named in errors and the log
        problem = url_problem(self.endpoint)
        if problem:
            raise HistoryError(self.url, problem)
        try:
            self.step = pd.Timedelta(step)
        except ValueError:
            raise HistoryError(url, f"step {step!r} is not a duration (write it as 30s, 1m, 5m or 1h)") from None
        if self.step < pd.Timedelta(seconds=1) or self.step.total_seconds() % 1:
            raise HistoryError(url, f"step {step!r} is not a whole number of seconds of at least one")
        self.step_text = prometheus_duration(self.step)  # `5min` (pandas) and `5m` (PromQL) both work
        self.query = (query or DEFAULT_QUERY).replace("{step}", self.step_text)
        if (problem := query_problem(self.query)) is not None:
            raise HistoryError(self.where, problem)
        for short in short_ranges(self.query, self.step):
            log.warning("%s: the range [%s] is shorter than the step (%s): each step's count is its last %s's rate "
                        "times the step, the rest of it unread (a burst there is missed); write [{step}], which "
                        "peakpilot fills with the step", self.where, short, self.step_text, short)
        self.chunk_points = chunk_points
        self.timeout_s = timeout_s
        self.auth = auth or PrometheusAuth()
        self._client = None  # one client (one connection pool) for every request of this source
        self._signer: Signer | None = None  # with auth.sigv4: signs every request

    @property
    def where(self) -> str:
        return f"{self.url} query {self.query!r}"

    def client(self):
        """The source's client, made once (the daemon asks every cycle: one connection pool, not a new
        session each time). Every request gives up a few seconds after the query's own timeout, so a
        Prometheus that takes the connection and never answers cannot hang the daemon's cycle.
        Certificates are verified; for a private CA, name its bundle in ``REQUESTS_CA_BUNDLE``. The
        credentials (``auth``) are read again each time, so a rotated token is the next query's."""
        from prometheus_api_client import PrometheusConnect
        from prometheus_api_client.prometheus_connect import RETRY_ON_STATUS
        from urllib3.util.retry import Retry

        # Refused connections and 5xx are tried three times more within 1.5 s (the library's backoff waits
        # 6 s); a read that timed out once more only: four waits of a query timeout would outlast a cycle.
        if self._client is None:
            retry = Retry(total=3, read=1, backoff_factor=0.25, status_forcelist=RETRY_ON_STATUS)
            self._client = PrometheusConnect(url=self.endpoint, timeout=self.timeout_s + CLIENT_MARGIN_S, retry=retry,
                                             session=self.auth.session(self.url))
        self._client.headers, basic = self.auth.credentials(self.url)
        if basic is not None:
            self._client.auth = basic
        if self.auth.sigv4 is not None:
            if self._signer is None:
                self._signer = Signer(self.auth.sigv4, self.endpoint, self.url)
            self._signer.check()  # credentials and region found now, or named before any query
            self._client.auth = self._signer
        return self._client

    def _transport_failure(self, exc) -> str:
        import requests

        wait = f"{self.timeout_s + CLIENT_MARGIN_S:g} s"
        # A read that timed out at each try ends as a ConnectionError (the retries' last error).
        if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc):
            return f"Prometheus did not answer within {wait} (overloaded, or the query is too heavy: try a coarser step)"
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return ("Prometheus's TLS certificate is not trusted (for a private CA, name its bundle in "
                    "signals.prometheus_auth.tls.ca_file, or in REQUESTS_CA_BUNDLE)")
        if any(alert in str(exc).upper() for alert in ("CERTIFICATE_REQUIRED", "ALERT_BAD_CERTIFICATE")):
            if self.auth.cert_file:
                return (f"Prometheus did not accept the client certificate {self.auth.cert_file} (signed by a CA it "
                        f"does not trust, or expired)")
            return ("Prometheus asks for a client certificate and none was given (signals.prometheus_auth.tls: "
                    "cert_file and key_file)")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return "Prometheus is unreachable (connection refused or no route)"
        return f"request failed: {exc}"

    def _auth_hint(self, exc: Exception) -> str:
        """What to check where Prometheus (or a proxy in front of it) refused the query's credentials."""
        status = str(exc).split("HTTP Status Code ", 1)[-1][:3]
        if status not in ("401", "403"):
            return ""
        sent = "it was sent " + (", ".join(self.auth.sent(self.endpoint)) or "no credentials")
        issuer = self.auth.forget_token() if status == "401" else None
        if issuer is not None:
            sent += f"{'' if issuer == 'Google' else ' from ' + issuer}, which the next query asks for again"
        return (f" ({'not authenticated' if status == '401' else 'not allowed'}: {sent}; set them in the policy's "
                f"signals.prometheus_auth, or on the command line with --prometheus-header and "
                f"--prometheus-token-file)")

    def _why_empty(self, at: pd.Timestamp, absent_too: bool) -> str:
        """Why the default query has no rate at ``at``: the counter is not scraped at all (said only when
        ``absent_too``: a fleet scaled to zero has no series either), or not often enough for a window of
        one step. Empty for a query of the user's own, or when Prometheus cannot tell."""
        if self.query != DEFAULT_QUERY.replace("{step}", self.step_text):
            return ""
        try:
            answer = self.client().custom_query(f"max(count_over_time({COUNTER}[10m]))",
                                                params={"time": at.timestamp(), "timeout": f"{int(self.timeout_s)}s"})
            samples = float(answer[0]["value"][1]) if answer else 0.0
        except Exception:  # a diagnosis only: the error it would explain is raised anyway
            return ""
        if samples == 0:
            return (f"; Prometheus holds no {COUNTER} in the 10 minutes before {at}: it does not scrape the "
                    f"inference nodes (deploy/monitoring/ for the Prometheus Operator, or the pods' "
                    f"prometheus.io annotations), or none was running") if absent_too else ""
        interval = 600.0 / samples
        if 2 * interval <= self.step.total_seconds():
            return ""
        suggest = max(2, int(np.ceil(2 * interval / 60)))
        return (f"; {COUNTER} is scraped about every {interval:.0f} s, so a rate window of one step "
                f"({self.step_text}) seldom holds the two samples rate() needs: set signals.step to "
                f"{suggest}m or more, or signals.query with a wider window, e.g. "
                f"sum(rate({COUNTER}[{suggest}m]))")

    def load_days(self, days: float, end: datetime | None = None, progress: bool = False) -> History:
        """The last ``days`` before ``end`` (now), from where Prometheus's data begins if that is later:
        its retention, or a service younger than ``days`` (said in the log): filled, the missing start
        would be days of one value, which every model would learn as the service's usual week."""
        return self.marked(self.read_days(days, end, progress))

    def _samples(self, series) -> list:
        """The ``[time, value]`` pairs of one series of a range query's answer. An answer of another shape (a
        proxy's, or a backend's that is not quite Prometheus's) is refused, showing it (it was a traceback)."""
        values = series.get("values", []) if isinstance(series, dict) else None
        if not isinstance(values, list) or not all(isinstance(p, list) and len(p) == 2 for p in values):
            raise HistoryError(self.where, f"unexpected answer: a series {str(series)[:200]}, not "
                                           f"{{'metric': {{...}}, 'values': [[time, value], ...]}}")
        return values

    def load(self, start: datetime, end: datetime, progress: bool = False) -> History:
        """Counts per step for the intervals starting in [start, end), its gaps marked."""
        return self.marked(self.read(start, end, progress))

    def marked(self, counts: pd.Series) -> History:
        """Counts as :meth:`read` gives them, as a History with its gaps judged (``mark_gaps``)."""
        marked, gaps = mark_gaps(counts, self.where)
        return History(marked, self.where, gaps)

    def read_days(self, days: float, end: datetime | None = None, progress: bool = False) -> pd.Series:
        """:meth:`load_days`'s counts, unjudged (:meth:`read`)."""
        end_ts = pd.Timestamp(end or datetime.now(timezone.utc)).floor(self.step)
        counts = self.read(end_ts - pd.Timedelta(days=days), end_ts, progress=progress)
        first = counts.first_valid_index()
        if first is not None and first > counts.index[0]:
            counts = counts[counts.index >= first]
            counts.index.freq = self.step
            log.warning("%s: no samples before %s, so the history starts there: %.1f days of the %g asked for "
                        "(Prometheus's retention, or a service that is newer)", self.where,
                        first.tz_convert("UTC").isoformat(), (end_ts - first) / pd.Timedelta(days=1), days)
        return counts

    def read(self, start: datetime, end: datetime, progress: bool = False) -> pd.Series:
        """Counts per step for the intervals starting in [start, end) as Prometheus answers them: NaN
        where it has no sample, zeros as zeros (not judged yet: whether a zero run is an outage depends on
        the traffic around it, which a window of the last minutes does not hold)."""
        import requests

        start, end = pd.Timestamp(start), pd.Timestamp(end)
        if start.tzinfo is None:
            start, end = start.tz_localize("UTC"), end.tz_localize("UTC")
        if end <= start:
            raise HistoryError(self.where, f"empty range: {start} .. {end}")
        failed = _unreachable.get(self.url)
        if failed and time.monotonic() - failed[0] < RETRY_AFTER_FAILURE_S:
            raise HistoryError(self.url, f"{failed[1]} {time.monotonic() - failed[0]:.0f} s ago; not asked again "
                                         f"until {RETRY_AFTER_FAILURE_S:g} s have passed")
        client = self.client()
        # Evaluation times are interval ends: t = interval start + step.
        evals = pd.date_range(start + self.step, end, freq=self.step)
        values: dict[int, float] = {}
        chunks = range(0, len(evals), self.chunk_points)
        for i in show_progress(chunks, enabled=progress, desc="prometheus", unit="chunk"):
            part = evals[i:i + self.chunk_points]
            try:
                result = client.custom_query_range(self.query, start_time=part[0].to_pydatetime(),
                                                   end_time=part[-1].to_pydatetime(), step=self.step_text,
                                                   params={"timeout": f"{int(self.timeout_s)}s"})
            except requests.exceptions.RequestException as exc:
                how = self._transport_failure(exc)
                if not isinstance(exc, requests.exceptions.SSLError):  # (TLS settings fail at once: no wait saved)
                    _unreachable[self.url] = (time.monotonic(), how)
                raise HistoryError(self.url, how) from None
            except Exception as exc:  # PrometheusApiClientException carries Prometheus's own error text
                raise HistoryError(self.where, f"Prometheus answered an error: {exc}{self._auth_hint(exc)}") from None
            _unreachable.pop(self.url, None)
            if not isinstance(result, list):
                raise HistoryError(self.where, f"unexpected answer {str(result)[:200]!r}")
            if len(result) > 1:
                raise HistoryError(self.where, f"the query returns {len(result)} series; wrap it in sum(...) "
                                               f"so it returns one")
            for series in result:
                for ts, value in self._samples(series):
                    try:
                        t, v = float(ts), float(value)
                    except (TypeError, ValueError):
                        raise HistoryError(self.where, f"non-numeric sample {value!r} at {ts!r}") from None
                    if np.isfinite(v) and np.isfinite(t):
                        values[int(round(t))] = v
        if not values:
            raise HistoryError(self.where, f"no samples between {start} and {end}" + self._why_empty(end, True))
        seconds = self.step.total_seconds()
        index = pd.date_range(start, end - self.step, freq=self.step)
        counts = np.array([values.get(int((t + self.step).timestamp()), np.nan) for t in index]) * seconds
        if np.isnan(counts[-RECENT_STEPS:]).mean() > 0.5:
            why = self._why_empty(end, False)
            if why:
                raise HistoryError(self.where, f"most of the last steps before {end} have no rate" + why)
        if (counts[~np.isnan(counts)] < 0).any():
            raise HistoryError(self.where, "negative request rate in the answer")
        if (problem := running_total_problem(counts, self.step)) is not None:
            raise HistoryError(self.where, f"the query answers no request rate: {problem}; take its rate, e.g. "
                                           f"sum(rate(COUNTER[{self.step_text}]))")
        series = pd.Series(counts, index=index, name="requests")
        series.index.freq = self.step
        return series

