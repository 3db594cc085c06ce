"""The policy file: one validated, typed object; nothing else in the code reads YAML or dicts.

Unknown keys and bad values are refused with the key path and the reason (``PolicyError``).
``configs/policy.yaml`` documents every key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CLASSES = ("reserved", "spot", "on_demand")
HORIZON_MAX_MIN = 240
"""The longest planning horizon: beyond four hours a forecast adds nothing a GPU node's start needs."""


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, the key path and the reason."""


class Strict(BaseModel):
    """Every section of a policy: unknown keys refused (a typo is not a default), numbers finite, and a YAML
    boolean (``yes``, ``no``, ``on``, ``off``) not taken for a number, as pydantic would (``max_share: yes``
    was a share of 1, ``min_nodes: no`` zero nodes)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value, info):
        if isinstance(value, bool) and _takes_numbers(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"{str(value).lower()} is a YAML boolean (yes, no, on and off are too), not a number")
        return value


def _takes_numbers(annotation) -> bool:
    """Whether a field's type takes an int or a float and no bool (``float``, ``int | None``, ...)."""
    kinds = set(get_args(annotation)) or {annotation}
    return bool(kinds & {int, float}) and bool not in kinds


# Spans of time are bounded (an hour of latency, a week of stabilization, a month's billing block, a year
# between retrains), and the preemption rate is a chance in an hour: far past any sensible value, and short of
# one that overflowed a replay or a cycle (1e300 minutes of stabilization, hours between retrains, a 1e15-minute
# billing block; a rate whose buffer asked for 1e300 nodes)


class SLO(Strict):
    latency_ms: float = Field(2000, gt=0, le=3_600_000, description="latency a request must be served within")
    compliance_target: float = Field(0.999, gt=0, le=1, description="share of requests within the latency")


class Capacity(Strict):
    rps_per_node: float | None = Field(None, gt=0, description="requests/s one node sustains within the SLO")
    peak_nodes: int | None = Field(None, gt=0, description="or: the trace's peak minute needs this many nodes")
    queue_seconds: float = Field(2.0, ge=0, le=3600, description="seconds of work a node queues before answering busy")

    @model_validator(mode="after")
    def _one(self) -> Capacity:
        if (self.rps_per_node is None) == (self.peak_nodes is None):
            raise ValueError("set exactly one of rps_per_node or peak_nodes")
        return self


class LeadTime(Strict):
    # At most a week, far past any horizon, so that one in seconds meets the horizon check that says so (and 1e308
    # overflowed it)
    mean_min: float = Field(gt=0, le=10080, description="minutes from start to serving at full speed")
    spread_min: float = Field(0, ge=0, le=10080, description="standard deviation of that, minutes")


class CapacityClass(Strict):
    price_per_hour: float = Field(gt=0)
    lead_time: LeadTime
    billing_min: int = Field(1, ge=1, le=43_200,
                             description="billing granularity in minutes (1 = per minute, 60 = hourly)")


class Classes(Strict):
    reserved: CapacityClass
    spot: CapacityClass
    on_demand: CapacityClass

    @model_validator(mode="after")
    def _prices(self) -> Classes:
        if self.spot.price_per_hour >= self.on_demand.price_per_hour:
            raise ValueError("spot.price_per_hour must be below on_demand.price_per_hour")
        return self


class Reserved(Strict):
    count: int | Literal["auto"] = Field("auto", description="nodes held all the time, or auto (recommend-reserved)")

    @field_validator("count")
    @classmethod
    def _count(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError("must be >= 0")
        return v


class Spot(Strict):
    max_share: float = Field(0.6, ge=0, le=1, description="largest share on spot, of what share_of names")
    share_of: Literal["expected", "fleet"] = Field(
        "expected", description="expected: max_share is a share of the nodes the expected load (the forecast's q50) "
        "needs, and the margin planned above it may all be spot; fleet: a share of the whole fleet")
    preemption_rate_per_hour: float = Field(0.05, ge=0, le=1, description="chance a spot node is preempted in an hour")
    notice_s: float = Field(120, ge=0, le=86400, description="warning before a preempted node goes")
    availability: float = Field(0.95, gt=0, le=1, description="share of time new spot nodes can be had")
    unavailable_mean_min: float = Field(60, gt=0, le=525_600, description="mean length of a spot outage")


class Limits(Strict):
    min_nodes: int = Field(1, ge=0)
    max_nodes: int = Field(200, ge=1, le=100_000)  # (a replay, or a dry run, simulates each node)
    max_step_per_cycle: int = Field(50, ge=1, description="most nodes started or released in one cycle")
    scale_down_stabilization_min: float = Field(10, ge=0, le=10080, description="keep the highest need of this window")

    @model_validator(mode="after")
    def _range(self) -> Limits:
        if self.min_nodes > self.max_nodes:
            raise ValueError("min_nodes must be <= max_nodes")
        return self


class Planning(Strict):
    quantile: Literal["q50", "q90", "q99"] = "q90"
    headroom: float = Field(0.3, ge=0, le=2, description="extra capacity over the forecast quantile")
    horizon_min: int = Field(60, ge=10, le=HORIZON_MAX_MIN, description="minutes the forecast looks ahead")
    keep_min: float = Field(20, ge=0, le=10080,
                            description="do not release a node the forecast needs again within this")
    model: Literal["ensemble", "torch", "lightgbm", "prophet", "seasonal_naive", "recent_level",
                   "statsforecast_autoets"] = "ensemble"
    retrain_hours: float = Field(6, gt=0, le=8760)
    max_forecast_age_min: float = Field(15, gt=0, le=10080, description="a forecast older than this (beyond its "
                                        "history's step) is stale: go reactive")
    learn_lead_times_after: int = Field(20, ge=1, description="samples per class before planning with their p95")


class SafetyNet(Strict):
    enabled: bool = True
    utilization_trigger: float = Field(0.9, gt=0, le=2, description="observed load / ready capacity that scales up now")
    busy_share_trigger: float = Field(0.001, ge=0, le=1, description="busy answers share that scales up now")
    follow_rises: Literal["auto", "always", "never"] = Field(
        "auto", description="when load rising above the forecast's band scales up, plan for where the rise will "
                            "be once new nodes are ready: auto once this service's missed surges have been seen to "
                            "last a lead time (controller/surprises.py)")


class Event(Strict):
    name: str
    start: datetime
    end: datetime
    multiplier: float = Field(gt=0)

    @model_validator(mode="after")
    def _order(self) -> Event:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
"""The names Kubernetes gives a namespace (a label) and a Deployment or a Lease (a subdomain): a name outside
them can never exist, so a typo (``llm_spot``, ``LLM-Spot``) is said here, not as a 404 at the first scale."""


def kubernetes_name_problem(name: str, kind: str) -> str | None:
    """Why ``name`` cannot name a Kubernetes object of ``kind`` (namespace, or another), or None."""
    label = kind == "namespace"
    if (DNS_LABEL if label else DNS_SUBDOMAIN).fullmatch(name):
        return None
    return (f"{name!r} cannot name a {kind}: lowercase letters, digits and '-'{'' if label else ' or .'}, "
            f"starting and ending with a letter or digit, at most {63 if label else 253}")


class KubernetesSpec(Strict):
    namespace: str = "default"
    workloads: dict[Literal["reserved", "spot", "on_demand"], str] = Field(
        default_factory=dict, description="Deployment per capacity class")
    placeholder: str | None = Field(None, description="low-priority Deployment that holds nodes warm ahead of a peak")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if problem := kubernetes_name_problem(v, "namespace"):
            raise ValueError(problem)
        return v

    @field_validator("workloads")
    @classmethod
    def _workloads(cls, v: dict) -> dict:
        problems = [f"{c}: {p}" for c, name in v.items() if (p := kubernetes_name_problem(name, "Deployment"))]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("placeholder")
    @classmethod
    def _placeholder(cls, v: str | None) -> str | None:
        if v is not None and (problem := kubernetes_name_problem(v, "Deployment")):
            raise ValueError(problem)
        return v


FIXED_ABBREVIATIONS = {"EST": ("America/New_York", "America/Panama"), "MST": ("America/Denver", "America/Phoenix")}
"""Zones the tz database keeps under a US abbreviation that hold one offset all year: written for the US
East's or Mountain's clock, they are an hour off all summer (the users' day, read without its DST)."""


def check_timezone(zone: str) -> str:
    """``zone`` if it names a time zone (IANA, as the tz database has it), else a ValueError that says so."""
    try:
        ZoneInfo(zone)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError(f"{zone!r} is not a time zone this machine knows: an IANA name such as UTC, "
                         "Europe/Berlin or America/New_York") from None
    if zone in FIXED_ABBREVIATIONS:
        clock, fixed = FIXED_ABBREVIATIONS[zone]
        raise ValueError(f"{zone!r} is one offset all year, without daylight saving, an hour off the users' clock "
                         f"all summer: write {clock} for the clock that changes, or {fixed} for one that does not")
    return zone


PROM_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
PROM_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str) -> float:
    """Seconds of a Prometheus duration (``30s``, ``1m``, ``1h30m``)."""
    return sum(int(n) * PROM_UNIT_S[unit] for n, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text))


HTTP_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class BasicAuth(Strict):
    username: str = Field(min_length=1)
    password_file: str = Field(min_length=1, description="file holding the password (a mounted Secret), read at "
                                                         "every query")


class TLSFiles(Strict):
    """TLS to a server: the CA that signed its certificate and the client certificate it asks for."""
    ca_file: str | None = Field(None, description="the CA bundle that signed the server's certificate (default: the "
                                                  "system's, or REQUESTS_CA_BUNDLE)")
    cert_file: str | None = Field(None, description="a client certificate, where the server asks for one (mTLS)")
    key_file: str | None = Field(None, description="the client certificate's private key")

    @model_validator(mode="after")
    def _pair(self) -> TLSFiles:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: a client certificate needs both")
        return self


class OAuth2(Strict):
    """An OAuth2 client (the client-credentials grant), as Prometheus's own ``oauth2`` block: a token from
    ``token_url`` is sent as a bearer token and asked for again before it expires."""
    client_id: str = Field(min_length=1)
    client_secret_file: str | None = Field(None, min_length=1, description="file holding the client secret (a "
                                                                           "mounted Secret), read at every request "
                                                                           "for a token")
    client_assertion_file: str | None = Field(None, min_length=1, description="instead of a secret, a file holding "
                                              "a signed assertion (JWT) of the client: AKS workload identity's "
                                              "projected token, /var/run/secrets/azure/tokens/azure-identity-token")
    token_url: str = Field(description="the identity provider's token endpoint, e.g. "
                                       "https://login.microsoftonline.com/TENANT/oauth2/v2.0/token")
    scopes: list[str] = Field(default_factory=list, description="e.g. https://prometheus.monitor.azure.com/.default")
    endpoint_params: dict[str, str] = Field(default_factory=dict, description="more form fields for the token "
                                                                              "endpoint (an audience, a resource)")
    tls: TLSFiles | None = Field(None, description="the token endpoint's TLS, its own as in Prometheus's block: "
                                                   "ca_file for a private CA; cert_file and key_file where it asks "
                                                   "for a client certificate, which alone is the client's proof "
                                                   "(RFC 8705 tls_client_auth)")

    @model_validator(mode="after")
    def _one_proof(self) -> OAuth2:
        by_certificate = self.tls is not None and self.tls.cert_file is not None
        if self.client_secret_file is not None and self.client_assertion_file is not None:
            raise ValueError("give one of client_secret_file or client_assertion_file")
        if self.client_secret_file is None and self.client_assertion_file is None and not by_certificate:
            raise ValueError("give one of client_secret_file or client_assertion_file (or tls.cert_file: the "
                             "client certificate as the client's proof)")
        return self

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not a token endpoint URL: write it as https://HOST/PATH")
        return v


class SigV4(Strict):
    """AWS's Signature Version 4 on every query, for Amazon Managed Service for Prometheus (as Prometheus's own
    ``sigv4`` block), with the credentials AWS's standard chain finds: IRSA or EKS Pod Identity in a pod."""
    region: str | None = Field(None, min_length=1, description="null: the workspace URL's "
                                                               "(aps-workspaces.REGION.amazonaws.com), else AWS_REGION")
    profile: str | None = Field(None, min_length=1, description="a profile of ~/.aws/config; null: the default chain")
    role_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$",
                                 description="a role to assume (AWS STS AssumeRole) with the chain's credentials: a "
                                             "workspace in another account, e.g. arn:aws:iam::123456789012:role/"
                                             "amp-query")
    external_id: str | None = Field(None, min_length=2, description="the sts:ExternalId the role's trust policy "
                                                                    "asks for, where it asks for one")

    @model_validator(mode="after")
    def _external_id_of_a_role(self) -> SigV4:
        if self.external_id and not self.role_arn:
            raise ValueError("external_id is sent when assuming a role: give role_arn too")
        return self


class GoogleAuth(Strict):
    """Google Cloud Managed Service for Prometheus read directly: Google OAuth2 access tokens (monitoring.read)."""
    credentials_file: str | None = Field(None, min_length=1, description="a credentials file: a service account's "
                                         "JSON key (a mounted Secret), or an external account's configuration "
                                         "(Workload Identity Federation: a pod in EKS or AKS trades its cloud's "
                                         "token for Google's); null: Application Default Credentials, in GKE "
                                         "Workload Identity's metadata server")


class AzureAuth(Strict):
    """Azure Monitor's managed Prometheus read with Entra ID tokens for the controller's own identity, no secret:
    an AKS pod's workload identity (the client, tenant and projected token AKS's webhook puts in its
    environment), or the managed identity of the VM or node it runs on (from IMDS)."""
    identity: Literal["auto", "workload", "managed"] = Field(
        "auto", description="auto: workload identity where the pod has AZURE_FEDERATED_TOKEN_FILE, else the "
                            "machine's managed identity; workload or managed: that one only")
    client_id: str | None = Field(None, min_length=1, description="the managed identity's or app's client id; "
                                                                  "null: the pod's AZURE_CLIENT_ID (managed: the "
                                                                  "machine's only identity)")
    tenant_id: str | None = Field(None, min_length=1, description="workload identity's tenant; null: the pod's "
                                                                  "AZURE_TENANT_ID")
    scope: str = Field("https://prometheus.monitor.azure.com/.default", min_length=1,
                       description="the scope the token is for: Azure Monitor's managed Prometheus")

    @model_validator(mode="after")
    def _tenant_for_workload_only(self) -> AzureAuth:
        if self.identity == "managed" and self.tenant_id is not None:
            raise ValueError("tenant_id is workload identity's; a managed identity's tenant is its machine's")
        return self


class PrometheusAuthSpec(Strict):
    """Credentials for a Prometheus behind authentication; secrets are read from files (mounted Secrets), as
    Prometheus's own configuration takes them, never written in the policy."""
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every query, e.g. X-Scope-OrgID: "
                                                                      "a tenant of Mimir, Cortex or Thanos")
    bearer_token_file: str | None = Field(None, description="file holding a bearer token, read at every query (a "
                                                            "rotated service-account token is picked up)")
    basic_auth: BasicAuth | None = None
    oauth2: OAuth2 | None = None
    sigv4: SigV4 | None = None
    google: GoogleAuth | None = None
    azure: AzureAuth | None = None
    tls: TLSFiles | None = None

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not HTTP_HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if "\n" in value or "\r" in value:
                raise ValueError(f"the value of {name} holds a line break")
        return v

    @model_validator(mode="after")
    def _one_credential(self) -> PrometheusAuthSpec:
        given = [name for name in ("bearer_token_file", "basic_auth", "oauth2", "sigv4", "google", "azure")
                 if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(f"give one of bearer_token_file, basic_auth, oauth2, sigv4, google or azure, not "
                             f"{' and '.join(given)}")
        if given and any(k.lower() == "authorization" for k in self.headers):
            raise ValueError(f"an Authorization header and {given[0]} would overwrite each other")
        return self


class Signals(Strict):
    prometheus: str | None = Field(None, description="Prometheus base URL; none: the sample trace on the clock")
    prometheus_auth: PrometheusAuthSpec = Field(PrometheusAuthSpec(), description="credentials for a Prometheus "
                                                                                  "behind authentication")
    query: str | None = Field(None, description="PromQL for the request rate per second ({step} is substituted)")
    step: str = Field("1m", description="Prometheus duration of one history step (it is also the query's {step})")
    history_days: float = Field(14, gt=0, le=3650)  # (1e308 overflowed the span read: a traceback each cycle)
    busy_query: str | None = Field(None, description="PromQL for the share of requests answered busy now, 0-1 "
                                                     "({step} is substituted); null: the inference nodes' busy answers")
    timezone: str | None = Field(None, description="IANA time zone of the users' day (e.g. America/New_York): the "
                                                   "forecaster reads hour of day and day of week on its clock, "
                                                   "daylight saving included; null: the history's own (a CSV's "
                                                   "offset, else UTC)")

    @field_validator("step")
    @classmethod
    def _step(cls, v: str) -> str:
        # Substituted into PromQL and sent as the range query's step, so Prometheus's own syntax.
        if not PROM_DURATION.fullmatch(v):
            raise ValueError(f"{v!r} is not a Prometheus duration (e.g. 30s, 1m, 5m)")
        seconds = duration_seconds(v)
        if seconds < 1 or seconds % 1 or seconds > 3600:
            raise ValueError(f"{v!r}: the step must be whole seconds, from 1s to 1h")
        return v

    @field_validator("query")
    @classmethod
    def _per_second(cls, v: str | None) -> str | None:
        # increase() counts a range's requests, and "* 60" makes a rate per minute: read as a rate per second,
        # 60 times the load. (A query that divides may be increase(...[1h]) / 3600, a rate.
        # forecaster.prometheus_source.query_problem says the same of a --query: this module may not import
        # the forecaster.)
        bare = v and re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', v)  # (a matcher's "/v1" divides nothing)
        if not bare or "/" in bare:
            return v
        if re.search(r"\bincrease\s*\(", bare):
            raise ValueError("the query takes increase(), which counts each range's requests (over [1m], 60 times "
                             "the rate per second that peakpilot reads): write rate(...) instead, or divide by the "
                             "range in seconds")
        if factor := re.search(r"\*\s*(60|3600)(\.0*)?(?![\d.])|(?<![\w.])(60|3600)(\.0*)?\s*\*", bare):
            raise ValueError(f"the query multiplies by {factor.group(1) or factor.group(3)}, as a panel of requests "
                             f"per minute or hour does: peakpilot reads requests per second, so leave the factor out")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        return v if v is None else check_timezone(v)

    @field_validator("prometheus")
    @classmethod
    def _prometheus(cls, v: str | None) -> str | None:
        # The API's paths are appended to it (forecaster.prometheus_source.url_problem checks a URL the same way
        # where no policy names it: this module may not import the forecaster).
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v.rsplit('@', 1)[-1]!r} is not a Prometheus URL: write it as http://HOST:9090 or "
                             "https://HOST[/PREFIX]")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"the port in {parts.netloc.rsplit('@', 1)[-1]!r} is not a number from 0 to 65535")
        if parts.query or parts.fragment:
            raise ValueError("a query string or fragment cannot be part of a Prometheus URL (the API's paths go "
                             "after it): give a token in prometheus_auth")
        return v

    @model_validator(mode="after")
    def _auth_needs_prometheus(self) -> Signals:
        if self.prometheus is None and self.prometheus_auth != PrometheusAuthSpec():
            raise ValueError("prometheus_auth is set but prometheus is not: credentials for no Prometheus")
        return self


class Policy(Strict):
    service: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict, description="for --selector: which daemon runs this service")
    slo: SLO = SLO()
    capacity: Capacity
    classes: Classes
    reserved: Reserved = Reserved()
    spot: Spot = Spot()
    limits: Limits = Limits()
    planning: Planning = Planning()
    safety_net: SafetyNet = SafetyNet()
    events: list[Event] = []
    kubernetes: KubernetesSpec = KubernetesSpec()
    signals: Signals = Signals()

    @model_validator(mode="after")
    def _step_within_horizon(self) -> Policy:
        # A forecast is made from the newest complete step and reaches horizon_min past that step's start,
        # so by the step's end it reaches a step less ahead of the cycle: past half the horizon, too little
        # to prewarm and keep nodes by.
        step_min = duration_seconds(self.signals.step) / 60
        horizon = self.planning.horizon_min
        if step_min > horizon / 2:
            reach = horizon - math.ceil(step_min) + 1
            raise ValueError(f"signals.step {self.signals.step} is more than half of planning.horizon_min ({horizon}): "
                             f"a forecast from the newest complete step reaches only {reach} minute"
                             f"{'s' if reach != 1 else ''} ahead by the step's end; use a step of at most "
                             f"{horizon // 2}m, or horizon_min {2 * math.ceil(step_min)} or more")
        return self

    @model_validator(mode="after")
    def _reserved_within_limits(self) -> Policy:
        # The fleet never exceeds max_nodes, so reserved nodes above it would be paid for and never run.
        count = self.reserved.count
        if count != "auto" and count > self.limits.max_nodes:
            raise ValueError(f"reserved.count {count} is above limits.max_nodes {self.limits.max_nodes}: the fleet "
                             f"never runs more than max_nodes, so {count - self.limits.max_nodes} reserved node(s) "
                             f"would be paid for and never run")
        return self

    @model_validator(mode="after")
    def _leads_within_horizon(self) -> Policy:
        # Prewarming starts a node a lead time before the forecast shows it needed: a lead longer than the
        # forecast reaches is planned only as far as it reaches (``control_cycle``), and every rise is met
        # late. Most often it is a lead time written in seconds.
        sees = self.planning.horizon_min - math.ceil(duration_seconds(self.signals.step) / 60)
        elastic = ("spot", "on_demand") if self.spot.max_share > 0 else ("on_demand",)
        for cls in elastic:
            lead = getattr(self.classes, cls).lead_time
            plans = math.ceil(lead.mean_min + 2 * lead.spread_min)
            if plans > sees:
                fix = (f"raise planning.horizon_min to {plans + self.planning.horizon_min - sees}" if
                       plans + self.planning.horizon_min - sees <= HORIZON_MAX_MIN else
                       f"no horizon_min (at most {HORIZON_MAX_MIN}) reaches that")
                raise ValueError(f"classes.{cls}.lead_time plans {plans} minutes ahead (mean_min {lead.mean_min:g} "
                                 f"+ 2 x spread_min {lead.spread_min:g}), but a forecast of planning.horizon_min "
                                 f"{self.planning.horizon_min} at signals.step {self.signals.step} sees {sees}: "
                                 f"a node started for a rise would be ready after it; {fix}, or check that the "
                                 f"lead time is in minutes")
        return self

    def with_changes(self, **changes) -> Policy:
        """A copy with nested values replaced, validated again: ``with_changes(planning={"headroom": 0.2})``."""
        data = self.model_dump()
        for key, value in changes.items():
            if isinstance(value, dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return Policy.model_validate(data)

    def price(self, cls: str) -> float:
        return getattr(self.classes, cls).price_per_hour


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping: plain YAML keeps the last one
    silently, so a second ``headroom:`` pasted further down would override the first unseen."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    if not path.exists():
        raise PolicyError(f"{path}: no such file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise PolicyError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: the file is empty (a policy needs service, capacity and classes)" if data is None
                          else f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top)"
            # (a validator's own message, without pydantic's "Value error, " before it)
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {msg}")
        raise PolicyError(f"{path}: " + "; ".join(problems)) from None


def policy_files(given: Iterable[str | Path]) -> list[Path]:
    """The policy files named, a folder standing for the ``*.yaml`` in it (a mounted ConfigMap)."""
    return [p for g in map(Path, given) for p in (sorted(g.glob("*.yaml")) if g.is_dir() else [g])]


def load_policies(paths: Iterable[str | Path],
                  backend: str = "simulated") -> tuple[dict[Path, Policy], dict[Path, list[str]]]:
    """Every policy that loads, and the problems of each file, so a user sees them all at once: a file
    that is refused, a service named in two files (their runs would share one record in the store), and
    for the kubernetes backend a capacity class with no Deployment to scale."""
    policies: dict[Path, Policy] = {}
    problems: dict[Path, list[str]] = {}
    for path in map(Path, paths):
        try:
            policies[path] = load_policy(path)
        except PolicyError as exc:
            problems.setdefault(path, []).append(str(exc))
    first: dict[str, Path] = {}
    for path, policy in policies.items():
        if policy.service in first:
            problems.setdefault(path, []).append(
                f"{path}: service {policy.service!r} is also the service of {first[policy.service]}")
        first.setdefault(policy.service, path)
        problems.setdefault(path, []).extend(backend_problems(path, policy, backend))
    return policies, {path: found for path, found in problems.items() if found}


def parse_selector(selector: str) -> dict[str, str]:
    """A daemon's ``--selector``: ``key=value``, or several joined by commas (all must match), as kubectl's
    ``-l`` writes equality; a ValueError naming the part that is none."""
    terms = {}
    for part in selector.split(","):
        key, equals, value = part.strip().partition("=")
        if not equals or not key.strip():
            raise ValueError(f"{part.strip()!r} is no key=value (a selector is key=value[,key=value...])")
        terms[key.strip()] = value.strip()
    return terms


def selected(policy: Policy, selector: str | None) -> bool:
    """Whether a policy's labels match a daemon's ``--selector`` (every policy, without one)."""
    if not selector:
        return True
    return all(policy.labels.get(key) == value for key, value in parse_selector(selector).items())


def backend_problems(path: str | Path, policy: Policy, backend: str) -> list[str]:
    """What a valid policy still lacks for the daemon on a backend: for kubernetes, a Deployment for every
    class; on any, a capacity per node where the load is live (``peak_nodes`` is relative to a trace's peak,
    which a live service does not have; replay takes it, with a trace or Prometheus's history)."""
    problems = []
    missing = set(CLASSES) - set(policy.kubernetes.workloads) if backend == "kubernetes" else set()
    if missing:
        problems.append(f"{path}: kubernetes.workloads has no Deployment for {', '.join(sorted(missing))}")
    if policy.signals.prometheus and policy.capacity.rps_per_node is None:
        problems.append(f"{path}: capacity.peak_nodes needs a trace; a service whose load is read from Prometheus "
                        f"sets capacity.rps_per_node (measure it with `peakpilot profile`)")
    return problems


def policy_schema() -> dict:
    """The policy file's JSON Schema, for editors: ``configs/policy.schema.json``, which the shipped policies
    name in a ``yaml-language-server`` comment so an editor completes and checks keys as they are typed."""
    schema = Policy.model_json_schema()
    schema["title"] = "peakpilot policy"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
