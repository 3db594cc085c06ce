"""A Prometheus behind authentication: basic auth by Prometheus's own ``--web.config.file``, and a bearer token
and a tenant header checked by a proxy in front of a real Prometheus (the part a kube-rbac-proxy, OpenShift's
Thanos querier or a Mimir gateway plays), from the forecaster's source, the daemon's signals and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from controller.policy import PolicyError, load_policy
from controller.service_parts import ServiceParts
from forecaster.csv_source import load_csv
from forecaster.errors import HistoryError
from forecaster.prometheus_source import PrometheusAuth, PrometheusSource
from tests.conftest import PROMETHEUS_USER, ROOT, free_port, trace_path
from tests.test_prometheus_source import openmetrics_from

HOURS = 6


def nasa_hours(server) -> tuple[pd.Series, pd.Timestamp]:
    """Six hours of the NASA July trace, backfilled to end an hour ago; the counts and their first step's time."""
    counts = load_csv(trace_path("nasa_http_1995_jul.csv")).counts["1995-07-10T08:00:00-04:00":].iloc[:HOURS * 60]
    counts = counts.fillna(0)
    counts.index.freq = "1min"
    start = pd.Timestamp.now(tz="UTC").floor("1h") - pd.Timedelta(hours=HOURS + 1)
    server.backfill(openmetrics_from(counts, start - counts.index[0].tz_convert("UTC")))
    return counts, start


def certificates(folder: Path) -> dict[str, str]:
    """A CA and the certificates it signs for a server on 127.0.0.1 and for a client, as PEM files in
    ``folder``: their paths by name (``ca``, ``server_cert``, ``server_key``, ``client_cert``, ``client_key``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    paths: dict[str, str] = {}

    def write(name: str, key, cert) -> None:
        (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        paths[f"{name}_cert"], paths[f"{name}_key"] = str(folder / f"{name}.crt"), str(folder / f"{name}.key")

    def issued(subject: str, key, issuer, signer, extensions) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peakpilot test CA")])
    ca = issued("peakpilot test CA", ca_key, ca_name, ca_key,
                [(x509.BasicConstraints(ca=True, path_length=None), True)])
    write("ca", ca_key, ca)
    paths["ca"] = paths.pop("ca_cert")
    for name, usage, extra in (
            ("server", ExtendedKeyUsageOID.SERVER_AUTH,
             [(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)]),
            ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, key, issued(f"peakpilot test {name}", key, ca_name, ca_key,
                                [(x509.BasicConstraints(ca=False, path_length=None), True),
                                 (x509.ExtendedKeyUsage([usage]), False), *extra]))
    return paths


class QuietHandler(BaseHTTPRequestHandler):
    """A test server's request handler: answers with ``answer``, logs nothing."""

    def answer(self, status: int, body: bytes, kind: str = "text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class LocalServer:
    """``handler`` served on a free loopback port, on a thread of its own, until ``close``; with ``tls`` (the
    paths of ``certificates``), over TLS with the server certificate, asking for a client certificate its CA
    signed."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], tls: dict[str, str] | None = None):
        import ssl

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls["server_cert"], tls["server_key"])
            context.load_verify_locations(tls["ca"])
            context.verify_mode = ssl.CERT_REQUIRED
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = self.url.replace("http://", "https://")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Gateway(LocalServer):
    """A proxy that lets a query through to Prometheus only with ``Authorization: Bearer <token>`` (401
    otherwise) and the tenant ``X-Scope-OrgID: team-a`` (403 otherwise), as the gateways in front of a
    shared Prometheus do. ``token`` can be changed while it runs: a rotated service-account token."""

    def __init__(self, upstream: str, token: str):
        self.upstream, self.token = upstream, token
        self.seen: list[dict] = []
        gateway = self

        class Handler(QuietHandler):
            def do_GET(self):
                gateway.seen.append(dict(self.headers))
                if self.headers.get("Authorization") != f"Bearer {gateway.token}":
                    return self.answer(401, b"Unauthorized\n")
                if self.headers.get("X-Scope-OrgID") != "team-a":
                    return self.answer(403, b"no tenant team-a\n")
                r = requests.get(gateway.upstream + self.path, timeout=30)
                self.answer(r.status_code, r.content, r.headers.get("Content-Type", "application/json"))

        super().__init__(Handler)


@pytest.fixture
def behind_gateway(prometheus_factory):
    server = prometheus_factory()
    counts, start = nasa_hours(server)
    server.start()
    gateway = Gateway(server.url, "token-one")
    yield gateway, counts, start
    gateway.close()


def test_basic_auth_from_a_password_file_reads_a_prometheus_that_requires_it(prometheus_factory, tmp_path):
    server = prometheus_factory(basic_auth=True)
    counts, start = nasa_hours(server)
    server.start()
    end = start + pd.Timedelta(hours=HOURS)
    password = tmp_path / "password"
    password.write_text(PROMETHEUS_USER[1] + "\n")  # (a Secret's file often ends in a newline)
    source = PrometheusSource(server.url, auth=PrometheusAuth(username=PROMETHEUS_USER[0], password_file=str(password)))
    history = source.load(start, end)
    np.testing.assert_allclose(history.counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
    # without credentials: Prometheus's 401, named, with what was sent and where to set it
    with pytest.raises(HistoryError, match=r"401.*not authenticated: it was sent no credentials; set them in the "
                                           r"policy's signals.prometheus_auth"):
        PrometheusSource(server.url).load(start, end)
    # a password in the URL is sent as basic auth, and never named in an error
    user, secret = PROMETHEUS_USER[:2]
    inline = server.url.replace("http://", f"http://{user}:{secret}@")
    assert np.allclose(PrometheusSource(inline).load(start, end).counts.to_numpy(), counts.to_numpy())
    wrong = server.url.replace("http://", f"http://{user}:not-{secret}@")
    with pytest.raises(HistoryError, match="it was sent basic auth") as failed:
        PrometheusSource(wrong).load(start, end)
    assert "not-" not in str(failed.value) and f"{user}:***@" in str(failed.value)
    password.unlink()
    with pytest.raises(HistoryError, match=f"cannot read the password file {password}: No such file"):
        source.load(start, end)


def test_a_prometheus_that_serves_tls_and_asks_for_a_client_certificate(prometheus_factory, tmp_path):
    """Prometheus's own TLS with client certificates (``client_auth_type: RequireAndVerifyClientCert``): read
    with the CA and the client certificate of the policy's ``prometheus_auth.tls``; without them, errors that
    say which is missing."""
    certs = certificates(tmp_path)
    server = prometheus_factory(tls=certs)
    counts, start = nasa_hours(server)
    server.start()
    end = start + pd.Timedelta(hours=HOURS)
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(prometheus=server.url, prometheus_auth={"tls": {
        "ca_file": certs["ca"], "cert_file": certs["client_cert"], "key_file": certs["client_key"]}}))
    signals = ServiceParts("simulated", clock=lambda: None).signals(load_policy(path))
    now = np.datetime64(end.tz_localize(None), "m")
    np.testing.assert_allclose(signals.history(now).counts.dropna().to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
    with pytest.raises(HistoryError, match=r"TLS certificate is not trusted \(for a private CA, name its bundle in "
                                           r"signals.prometheus_auth.tls.ca_file"):
        PrometheusSource(server.url).load(start, end)
    with pytest.raises(HistoryError, match="asks for a client certificate and none was given"):
        PrometheusSource(server.url, auth=PrometheusAuth(ca_file=certs["ca"])).load(start, end)
    stranger = tmp_path / "other-ca"
    stranger.mkdir()
    other = certificates(stranger)  # a client certificate another CA signed
    with pytest.raises(HistoryError, match=f"did not accept the client certificate {other['client_cert']}"):
        PrometheusSource(server.url, auth=PrometheusAuth(ca_file=certs["ca"], cert_file=other["client_cert"],
                                                         key_file=other["client_key"])).load(start, end)
    with pytest.raises(HistoryError, match=f"cannot read the client key file {tmp_path}/missing.key"):
        PrometheusSource(server.url, auth=PrometheusAuth(ca_file=certs["ca"], cert_file=certs["client_cert"],
                                                         key_file=str(tmp_path / "missing.key"))).load(start, end)


def test_a_bearer_token_is_read_again_at_every_query_so_a_rotated_one_is_used(behind_gateway, tmp_path):
    gateway, counts, start = behind_gateway
    end = start + pd.Timedelta(hours=HOURS)
    token = tmp_path / "token"
    token.write_text("token-one")
    source = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, str(token)))
    np.testing.assert_allclose(source.load(start, end).counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
    gateway.token = "token-two"  # the token is rotated: the old one is refused
    with pytest.raises(HistoryError, match="401.*it was sent headers, a bearer token"):
        source.load(start, end)
    token.write_text("token-two\n")  # ... and the kubelet writes the new one: the same source reads again
    assert len(source.load(start, end)) == len(counts)
    assert gateway.seen[-1]["Authorization"] == "Bearer token-two"
    # the tenant header is sent with every query; a wrong tenant is the gateway's 403
    other = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-b"}, str(token)))
    with pytest.raises(HistoryError, match=r"403.*no tenant team-a.*not allowed"):
        other.load(start, end)
    token.write_text("")
    with pytest.raises(HistoryError, match=f"the bearer token file {token} is empty"):
        source.load(start, end)


class TokenServer(LocalServer):
    """An OAuth2 token endpoint (RFC 6749's client-credentials grant, the part an identity provider plays): it
    issues a new token to client ``peakpilot`` with secret ``s3cret``, taken in basic auth or, with
    ``body_only``, only in the form (refusing basic auth as ``invalid_client``, as some providers do), and tells
    ``gateway`` to let that token through from then on. ``expires_in`` is the lifetime it gives each token."""

    def __init__(self, gateway: Gateway, expires_in: float | None = 3600, body_only: bool = False,
                 tls: dict[str, str] | None = None):
        self.gateway, self.expires_in, self.body_only = gateway, expires_in, body_only
        self.assertion = "projected-jwt-1"  # what a client proving itself by assertion must send
        self.asked: list[dict] = []  # each request's form, with how the client authenticated
        self.paths: list[str] = []  # and the path it was sent to
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                import base64
                from urllib.parse import parse_qsl

                form = dict(parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                scheme, _, basic = self.headers.get("Authorization", "").partition(" ")
                if scheme == "Basic":
                    form["client_id"], _, form["client_secret"] = base64.b64decode(basic).decode().partition(":")
                    form["via"] = "basic"
                server.asked.append(form)
                server.paths.append(self.path)
                if form.get("grant_type") != "client_credentials":
                    return self._json(400, {"error": "unsupported_grant_type"})
                by_assertion = form.get("client_assertion_type") == ("urn:ietf:params:oauth:client-assertion-type:"
                                                                     "jwt-bearer")
                proof = form.get("client_assertion") if by_assertion else form.get("client_secret")
                if proof is None and tls is not None:  # RFC 8705: the client's certificate (its CA's) is its proof
                    subject = dict(pair[0] for pair in self.connection.getpeercert()["subject"])
                    form["via"] = "certificate"
                    proof = "s3cret" if subject["commonName"] == "peakpilot test client" else None
                if (scheme == "Basic" and server.body_only) or (form.get("client_id"), proof) != (
                        "peakpilot", server.assertion if by_assertion else "s3cret"):
                    return self._json(401, {"error": "invalid_client", "error_description": "client authentication "
                                                                                            "failed"})
                server.gateway.token = f"issued-{len(server.asked)}"
                doc = {"access_token": server.gateway.token, "token_type": "Bearer"}
                if server.expires_in is not None:
                    doc["expires_in"] = server.expires_in
                self._json(200, doc)

            def _json(self, status: int, doc: dict):
                self.answer(status, json.dumps(doc).encode(), "application/json")

        super().__init__(Handler, tls)
        self.url += "/oauth2/token"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_oauth2_client_asks_for_a_token_once_and_again_before_it_expires(behind_gateway, tmp_path):
    """OAuth2 client credentials (Prometheus's own ``oauth2`` block; Azure Monitor's managed Prometheus, or a
    gateway behind an identity provider): the token endpoint is asked once, the token is sent to the gateway as
    a bearer token with every query until a minute before it expires, then a new one is asked for; a token
    the gateway refuses (revoked) is dropped, and the next query asks for another."""
    from forecaster.oauth2 import ClientCredentials

    gateway, counts, start = behind_gateway
    end = start + pd.Timedelta(hours=HOURS)
    issuer = TokenServer(gateway, expires_in=3600)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    clock = Clock()
    client = ClientCredentials("peakpilot", str(secret), issuer.url, ("api://prometheus/.default",),
                               (("audience", "prometheus"),), clock=clock)
    source = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, oauth2=client))
    try:
        np.testing.assert_allclose(source.load(start, end).counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
        assert issuer.asked == [{"grant_type": "client_credentials", "scope": "api://prometheus/.default",
                                 "audience": "prometheus", "client_id": "peakpilot", "client_secret": "s3cret",
                                 "via": "basic"}]
        assert gateway.seen[-1]["Authorization"] == "Bearer issued-1"
        clock.now += 3500  # 100 s of the token's hour left: still sent
        source.load(start, end)
        assert len(issuer.asked) == 1
        clock.now += 50  # 50 s left: renewed first
        source.load(start, end)
        assert len(issuer.asked) == 2 and gateway.seen[-1]["Authorization"] == "Bearer issued-2"
        gateway.token = "revoked-elsewhere"  # the gateway no longer takes the token held
        with pytest.raises(HistoryError, match=f"401.*it was sent headers, an OAuth2 token from {issuer.url}, which "
                                               f"the next query asks for again"):
            source.load(start, end)
        assert len(source.load(start, end)) == len(counts) and len(issuer.asked) == 3
        # a rotated secret is read at the next request for a token; a wrong one is the identity provider's error
        secret.write_text("not-the-secret")
        client.forget()
        with pytest.raises(HistoryError, match=f"the OAuth2 token endpoint {issuer.url} refused client 'peakpilot': "
                                               f"HTTP 401 invalid_client: client authentication failed"):
            source.load(start, end)
        secret.unlink()
        with pytest.raises(HistoryError, match=f"cannot read the OAuth2 client secret file {secret}: No such file"):
            source.load(start, end)
    finally:
        issuer.close()
    secret.write_text("s3cret")
    with pytest.raises(HistoryError, match=f"the OAuth2 token endpoint {issuer.url} could not be reached"):
        source.load(start, end)


def test_an_oauth2_provider_that_takes_the_secret_in_the_form_only(behind_gateway, tmp_path):
    """A token endpoint that refuses the client's basic auth as invalid_client is asked again with the id and
    secret in the form, and from then on only so (as Go's oauth2 package, and so Prometheus, detects it)."""
    from forecaster.oauth2 import ClientCredentials

    gateway, counts, start = behind_gateway
    issuer = TokenServer(gateway, expires_in=None, body_only=True)  # (a token with no lifetime is kept)
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    client = ClientCredentials("peakpilot", str(secret), issuer.url)
    source = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, oauth2=client))
    try:
        assert len(source.load(start, start + pd.Timedelta(hours=1))) == 60
        client.forget()
        source.load(start, start + pd.Timedelta(hours=1))
    finally:
        issuer.close()
    assert [a.get("via", "form") for a in issuer.asked] == ["basic", "form", "form"]
    assert all("scope" not in a for a in issuer.asked)


def test_an_oauth2_client_may_prove_itself_by_a_projected_assertion_instead_of_a_secret(behind_gateway, tmp_path):
    """AKS workload identity: no secret at all; the client sends the token the kubelet projects into the pod as
    its ``client_assertion`` (RFC 7523), read again at every request for a token, since it is rotated."""
    from forecaster.oauth2 import ClientCredentials

    gateway, counts, start = behind_gateway
    issuer = TokenServer(gateway)
    projected = tmp_path / "azure-identity-token"
    projected.write_text("projected-jwt-1")
    client = ClientCredentials("peakpilot", None, issuer.url, ("https://prometheus.monitor.azure.com/.default",),
                               client_assertion_file=str(projected))
    source = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, oauth2=client))
    hour = (start, start + pd.Timedelta(hours=1))
    try:
        assert len(source.load(*hour)) == 60
        issuer.assertion = "projected-jwt-2"  # the kubelet rotates the projected token
        projected.write_text("projected-jwt-2")
        client.forget()
        assert len(source.load(*hour)) == 60
        issuer.assertion = "projected-jwt-3"
        client.forget()
        with pytest.raises(HistoryError, match="refused client 'peakpilot': HTTP 401 invalid_client"):
            source.load(*hour)
    finally:
        issuer.close()
    assert [(a["client_assertion"], a.get("via"), "client_secret" in a) for a in issuer.asked] == [
        ("projected-jwt-1", None, False), ("projected-jwt-2", None, False), ("projected-jwt-2", None, False)]


def test_an_oauth2_token_endpoint_of_a_private_ca_that_asks_for_a_client_certificate(behind_gateway, tmp_path):
    """``oauth2.tls``: the token endpoint's own TLS, as in Prometheus's block (Prometheus itself is plain HTTP
    here). Its private CA trusted with ``ca_file``; its request for a client certificate met with ``cert_file``
    and ``key_file``, which alone prove the client (RFC 8705); without them, errors that name the setting."""
    from forecaster.oauth2 import ClientCredentials

    gateway, counts, start = behind_gateway
    certs = certificates(tmp_path)
    issuer = TokenServer(gateway, tls=certs)
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    hour = (start, start + pd.Timedelta(hours=1))

    def source(client: ClientCredentials) -> PrometheusSource:
        return PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, oauth2=client))

    try:
        assert issuer.url.startswith("https://")
        with pytest.raises(HistoryError, match=r"token endpoint https://.* has a TLS certificate that is not trusted "
                                               r"\(for a private CA, name its bundle in signals.prometheus_auth."
                                               r"oauth2.tls.ca_file\)"):
            source(ClientCredentials("peakpilot", str(secret), issuer.url)).load(*hour)
        # (the alert that says so, or a hang-up, as the server's TLS stack does it)
        with pytest.raises(HistoryError, match=r"(did not take the client certificate|broke off TLS).*"
                                               r"signals.prometheus_auth.oauth2.tls: cert_file and key_file"):
            source(ClientCredentials("peakpilot", str(secret), issuer.url, ca_file=certs["ca"])).load(*hour)
        assert issuer.asked == []
        with pytest.raises(HistoryError, match="cannot read the OAuth2 token endpoint's client key file /nowhere"):
            source(ClientCredentials("peakpilot", None, issuer.url, ca_file=certs["ca"],
                                     cert_file=certs["client_cert"], key_file="/nowhere")).load(*hour)
        path = tmp_path / "policy.yaml"
        path.write_text(policy_text(prometheus=gateway.url, prometheus_auth={
            "headers": {"X-Scope-OrgID": "team-a"}, "oauth2": {
                "client_id": "peakpilot", "token_url": issuer.url,
                "tls": {"ca_file": certs["ca"], "cert_file": certs["client_cert"], "key_file": certs["client_key"]}}}))
        signals = ServiceParts("simulated", clock=lambda: None).signals(load_policy(path))
        now = np.datetime64((start + pd.Timedelta(hours=HOURS)).tz_localize(None), "m")
        assert signals.history(now).counts.notna().sum() == len(counts)
    finally:
        issuer.close()
    assert [(a["client_id"], a["via"], "client_secret" in a) for a in issuer.asked] == [
        ("peakpilot", "certificate", False)]
    assert gateway.seen[-1]["Authorization"] == "Bearer issued-1"


def azure_policy_signals(prometheus: str, start: pd.Timestamp, tmp_path: Path):
    """The signals of a live policy whose Prometheus (tenant team-a) is read with ``azure: {}``; the time
    the history ends, and its first hour."""
    path = tmp_path / "policy.yaml"
    path.write_text(live_policy_text(prometheus=prometheus, prometheus_auth={
        "headers": {"X-Scope-OrgID": "team-a"}, "azure": {}}))
    signals = ServiceParts("simulated", clock=lambda: None).signals(load_policy(path))
    now = np.datetime64((start + pd.Timedelta(hours=HOURS)).tz_localize(None), "m")
    return signals, now, (start, start + pd.Timedelta(hours=1))


def test_in_aks_workload_identity_needs_nothing_but_azure_in_the_policy(behind_gateway, tmp_path, monkeypatch):
    """``azure: {}`` in an AKS pod with workload identity: the client, tenant, projected token and authority
    are those AKS's webhook puts in the pod's environment; Entra ID's token for Azure Monitor's managed
    Prometheus is asked with the projected token as the assertion, and asked again where refused. A pod
    without the webhook's variables is told which are missing and how AKS sets them."""
    from forecaster.azure_auth import AzureSettings

    gateway, counts, start = behind_gateway
    issuer = TokenServer(gateway)
    projected = tmp_path / "azure-identity-token"
    projected.write_text("projected-jwt-1")
    authority = issuer.url.removesuffix("/oauth2/token")
    for name, value in (("AZURE_CLIENT_ID", "peakpilot"), ("AZURE_TENANT_ID", "tenant-1"),
                        ("AZURE_FEDERATED_TOKEN_FILE", str(projected)), ("AZURE_AUTHORITY_HOST", authority + "/")):
        monkeypatch.setenv(name, value)
    signals, now, hour = azure_policy_signals(gateway.url, start, tmp_path)
    try:
        assert signals.history(now).counts.notna().sum() == len(counts)
        assert [(a["client_id"], a["client_assertion"], a["scope"]) for a in issuer.asked] == [
            ("peakpilot", "projected-jwt-1", "https://prometheus.monitor.azure.com/.default")]
        assert issuer.paths == ["/tenant-1/oauth2/v2.0/token"]
        source = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, azure=AzureSettings()))
        gateway.token = "revoked-elsewhere"
        with pytest.raises(HistoryError, match=f"401.*an Azure token .workload identity's. from "
                                               f"{authority}/tenant-1/oauth2/v2.0/token, which the next query asks "
                                               f"for again"):
            source.load(*hour)
        assert len(source.load(*hour)) == 60 and len(issuer.asked) == 2
        monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE")
        with pytest.raises(HistoryError, match="Azure workload identity: no AZURE_FEDERATED_TOKEN_FILE in the "
                                               "environment .*azure.workload.identity/use"):
            PrometheusSource(gateway.url, auth=PrometheusAuth(azure=AzureSettings(identity="workload"))).load(*hour)
    finally:
        issuer.close()


class AzureImds(LocalServer):
    """Azure's Instance Metadata Service as a VM (or an AKS node) serves its managed identities' tokens: only
    to requests with ``Metadata: true`` and an ``api-version``; for the one identity the machine has, or the
    user-assigned one a ``client_id`` names among ``identities``, refusing as IMDS does where none is named
    and several are assigned. The first ``busy`` requests are answered 429, as a throttled IMDS answers.
    Each token it issues is the one ``gateway`` lets through from then on; each request is recorded."""

    def __init__(self, gateway: Gateway, identities: tuple[str, ...] = ("id-a",), busy: int = 0):
        self.gateway, self.identities, self.busy = gateway, identities, busy
        self.asked: list[dict] = []
        imds = self

        class Handler(QuietHandler):
            def do_GET(self):
                from urllib.parse import parse_qsl, urlsplit

                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query))
                imds.asked.append(dict(query, metadata=self.headers.get("Metadata")))
                if parts.path != "/metadata/identity/oauth2/token":
                    return self._json(404, {"error": "not_found"})
                if self.headers.get("Metadata") != "true":
                    return self._json(400, {"error": "invalid_request",
                                            "error_description": "Required metadata header not specified"})
                if "api-version" not in query or "resource" not in query:
                    return self._json(400, {"error": "invalid_request", "error_description": "Required query "
                                            "parameter 'api-version' or 'resource' was not specified"})
                if imds.busy:
                    imds.busy -= 1
                    return self._json(429, {"error": "too_many_requests", "error_description": "throttled"})
                named = query.get("client_id")
                if named is None and len(imds.identities) > 1:
                    return self._json(400, {"error": "invalid_request", "error_description": "Multiple user "
                                            "assigned identities exist, please specify the clientId / resourceId "
                                            "of the identity in the token request"})
                if (named or imds.identities[0]) not in imds.identities:
                    return self._json(400, {"error": "invalid_request", "error_description": "Identity not found"})
                imds.gateway.token = f"eyJ0.{named or imds.identities[0]}.{len(imds.asked)}"
                self._json(200, {"access_token": imds.gateway.token, "refresh_token": "", "expires_in": "86399",
                                 "expires_on": "1900000000", "not_before": "1800000000",
                                 "resource": query["resource"], "token_type": "Bearer"})

            def _json(self, status: int, doc: dict):
                self.answer(status, json.dumps(doc).encode(), "application/json")

        super().__init__(Handler)


def test_on_an_azure_vm_the_tokens_come_from_its_managed_identity(behind_gateway, tmp_path, monkeypatch):
    """``azure: {}`` where there is no workload identity (a VM, a scale set, an AKS node's own identity): the
    token is the machine's managed identity's, from IMDS (here at the address azure-identity's
    AZURE_POD_IDENTITY_AUTHORITY_HOST moves it to), asked directly even behind an egress proxy, held while
    it lives, asked again where Prometheus refuses it, and asked again after a throttled answer. A machine
    with several identities is told to name one, and the one named is asked for."""
    from forecaster.azure_auth import AzureSettings

    gateway, counts, start = behind_gateway
    imds, proxy = AzureImds(gateway), ForwardProxy()
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url + "/")
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy.url)
    signals, now, hour = azure_policy_signals(gateway.url, start, tmp_path)
    tenant = {"X-Scope-OrgID": "team-a"}
    try:
        assert signals.history(now).counts.notna().sum() == len(counts)
        assert imds.asked == [{"api-version": "2018-02-01", "resource": "https://prometheus.monitor.azure.com",
                               "metadata": "true"}]
        source = PrometheusSource(gateway.url, auth=PrometheusAuth(tenant, azure=AzureSettings()))
        assert len(source.load(*hour)) == 60 and len(imds.asked) == 1  # (the token held is used)
        assert gateway.seen[-1]["Authorization"] == "Bearer eyJ0.id-a.1"
        assert not any(url.startswith(imds.url) for _, url in proxy.seen)  # (the gateway's queries went through it)
        assert ("GET", f"{gateway.url}/api/v1/query_range") in proxy.seen

        gateway.token, imds.busy = "revoked-elsewhere", 1
        with pytest.raises(HistoryError, match=f"401.*an Azure token .managed identity's. from "
                                               f"{imds.url}/metadata/identity/oauth2/token, which the next query asks "
                                               f"for again"):
            source.load(*hour)
        assert len(source.load(*hour)) == 60 and len(imds.asked) == 3  # a 429, then the token
        assert gateway.seen[-1]["Authorization"] == "Bearer eyJ0.id-a.3"

        imds.identities = ("id-a", "id-b")
        other_scope = AzureSettings(scope="api://x/.default")
        source = PrometheusSource(gateway.url, auth=PrometheusAuth(tenant, azure=other_scope))
        with pytest.raises(HistoryError, match="Azure managed identity's token endpoint .IMDS. at .* gave no token for "
                                               "api://x: HTTP 400 invalid_request: Multiple user assigned identities "
                                               ".*signals.prometheus_auth.azure.client_id.*AZURE_FEDERATED_TOKEN_FILE"):
            source.load(*hour)
        named = AzureSettings(client_id="id-b", identity="managed")
        assert len(PrometheusSource(gateway.url, auth=PrometheusAuth(tenant, azure=named)).load(*hour)) == 60
        assert imds.asked[-1]["client_id"] == "id-b"
        assert gateway.seen[-1]["Authorization"].startswith("Bearer eyJ0.id-b")
        with pytest.raises(HistoryError, match="managed identity id-c's .* HTTP 400 invalid_request: Identity not "
                                               r"found \(assign it to this VM, scale set or node pool\)$"):
            unknown = AzureSettings(client_id="id-c", identity="managed")  # (no word of workload identity)
            PrometheusSource(gateway.url, auth=PrometheusAuth(tenant, azure=unknown)).load(*hour)
    finally:
        imds.close()
        proxy.close()
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HistoryError, match="managed identity's token endpoint .IMDS. could not be reached at "
                                           "http://127.0.0.1:.*: not an Azure VM or node"):
        PrometheusSource(gateway.url, auth=PrometheusAuth(tenant, azure=AzureSettings())).load(*hour)


def test_the_daemon_reads_its_load_with_the_policys_oauth2_client(behind_gateway, tmp_path):
    gateway, counts, start = behind_gateway
    issuer = TokenServer(gateway)
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(prometheus=gateway.url, prometheus_auth={
        "headers": {"X-Scope-OrgID": "team-a"},
        "oauth2": {"client_id": "peakpilot", "client_secret_file": str(secret), "token_url": issuer.url,
                   "scopes": ["a", "b"], "endpoint_params": {"resource": "prometheus"}}}))
    signals = ServiceParts("simulated", clock=lambda: None).signals(load_policy(path))
    now = np.datetime64((start + pd.Timedelta(hours=HOURS)).tz_localize(None), "m")
    try:
        assert signals.history(now).counts.notna().sum() == len(counts)
        assert signals.observe(now).load_rps == pytest.approx(counts.iloc[-1] / 60)
    finally:
        issuer.close()
    assert len(issuer.asked) == 1 and issuer.asked[0]["scope"] == "a b" and issuer.asked[0]["resource"] == "prometheus"
    assert all(seen["Authorization"] == "Bearer issued-1" for seen in gateway.seen)


class ForwardProxy(LocalServer):
    """An HTTP forward proxy, as an egress proxy is: a request for an absolute URL is sent on, and its method
    and URL (without the query) recorded."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []
        proxy = self

        class Handler(QuietHandler):
            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                proxy.seen.append((self.command, self.path.split("?")[0]))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "proxy-connection", "content-length")}
                with requests.Session() as session:
                    session.trust_env = False  # (sent on directly, not to itself)
                    r = session.request(self.command, self.path, headers=headers, timeout=30,
                                        data=self.rfile.read(length) if length else None)
                self.answer(r.status_code, r.content, r.headers.get("Content-Type", "application/json"))

            do_GET = do_POST = forward

        super().__init__(Handler)


def test_prometheus_and_its_token_endpoint_are_reached_through_the_environments_proxy(behind_gateway, tmp_path,
                                                                                      monkeypatch):
    """An egress proxy in HTTP_PROXY (HTTPS_PROXY for https, NO_PROXY for what bypasses it), as a pod behind
    one is given it: the queries and the requests for a token both go through it."""
    from forecaster.oauth2 import ClientCredentials

    gateway, counts, start = behind_gateway
    issuer, proxy = TokenServer(gateway), ForwardProxy()
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy.url)
    client = ClientCredentials("peakpilot", str(secret), issuer.url)
    source = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, oauth2=client))
    try:
        history = source.load(start, start + pd.Timedelta(hours=HOURS))
    finally:
        issuer.close()
        proxy.close()
    np.testing.assert_allclose(history.counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
    assert ("POST", issuer.url) in proxy.seen
    assert ("GET", f"{gateway.url}/api/v1/query_range") in proxy.seen


def sigv4_refusal(handler, body: bytes, service: str, key: str, secret: str, region: str) -> str | None:
    """Why AWS would refuse a request's Signature Version 4, or None where it is good: this test's own reading
    of AWS's specification (canonical request, string to sign, the HMAC chain of the signing key), not
    botocore's, which signs."""
    import datetime
    import hashlib
    import hmac
    from urllib.parse import quote, unquote

    auth = handler.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "Missing Authentication Token"
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    given_key, date, given_region, given_service, terminal = fields["Credential"].split("/")
    if (given_key, given_region, given_service, terminal) != (key, region, service, "aws4_request"):
        return f"Credential should be scoped to a valid region and service: {fields['Credential']}"
    stamp = handler.headers.get("X-Amz-Date", "")
    when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 300 or stamp[:8] != date:
        return "Signature expired"
    path, _, raw_query = handler.path.partition("?")

    def encode(text: str) -> str:
        return quote(text, safe="-_.~")

    pairs = sorted((encode(unquote(k)), encode(unquote(v)))
                   for k, _, v in (item.partition("=") for item in raw_query.split("&") if item))
    names = fields["SignedHeaders"].split(";")
    if not {"host", "x-amz-date"} <= set(names):
        return "host and x-amz-date must be signed"
    canonical = "\n".join([
        handler.command, "/".join(encode(encode(unquote(seg))) for seg in path.split("/")),
        "&".join(f"{k}={v}" for k, v in pairs),
        "".join(f"{n}:{' '.join(handler.headers.get(n, '').split())}\n" for n in names),
        fields["SignedHeaders"], hashlib.sha256(body).hexdigest()])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signing = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        signing = hmac.new(signing, part.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(hmac.new(signing, to_sign.encode(), hashlib.sha256).hexdigest(), fields["Signature"]):
        return ("The request signature we calculated does not match the signature you provided. Check your "
                "AWS Secret Access Key and signing method.")
    return None


class AmpGateway(LocalServer):
    """Amazon Managed Prometheus's front door, as its documentation describes it: a query passes to the real
    Prometheus only with a valid AWS Signature Version 4 (``sigv4_refusal``) of access key ``AKIDPEAKPILOT``
    for service ``aps`` in ``us-east-2``, made within five minutes; else 403 with AWS's message."""

    KEY, SECRET, REGION = "AKIDPEAKPILOT", "amp-test-secret", "us-east-2"

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.seen: list[dict] = []
        gateway = self

        class Handler(QuietHandler):
            def do_GET(self):
                gateway.seen.append(dict(self.headers))
                problem = sigv4_refusal(self, b"", "aps", gateway.KEY, gateway.SECRET, gateway.REGION)
                if problem:
                    return self.answer(403, json.dumps({"message": problem}).encode(), "application/json")
                r = requests.get(gateway.upstream + self.path, timeout=30)
                self.answer(r.status_code, r.content, r.headers.get("Content-Type", "application/json"))

        super().__init__(Handler)


class FakeSts(LocalServer):
    """AWS STS's AssumeRole, as its API reference describes it: a request signed (service ``sts``) with the
    base account's keys, for role ``ROLE`` and, where ``external_id`` is set, that ExternalId, gets temporary
    credentials of the role (those ``AmpGateway`` takes, with a new session token each time) that expire in
    ``lifetime_s``; anything else is STS's 403 AccessDenied, in its XML. And AssumeRoleWithWebIdentity, as
    IRSA's pods call it (unsigned): the service account's projected token ``web_token``, for ``IRSA_ROLE``,
    gets the same credentials."""

    BASE_KEY, BASE_SECRET = "AKIDBASEACCOUNT", "base-account-secret"
    ROLE = "arn:aws:iam::111122223333:role/amp-query"
    IRSA_ROLE = "arn:aws:iam::111122223333:role/peakpilot-irsa"

    def __init__(self, lifetime_s: float = 3600, external_id: str | None = None, web_token: str | None = None):
        self.lifetime_s, self.external_id, self.web_token, self.asked = lifetime_s, external_id, web_token, []
        sts = self

        class Handler(QuietHandler):
            def do_POST(self):
                from urllib.parse import parse_qsl

                body = self.rfile.read(int(self.headers["Content-Length"]))
                form = dict(parse_qsl(body.decode()))
                sts.asked.append(form)
                if form.get("Action") == "AssumeRoleWithWebIdentity":
                    return self.web_identity(form)
                problem = sigv4_refusal(self, body, "sts", sts.BASE_KEY, sts.BASE_SECRET, AmpGateway.REGION)
                if problem is None and (form.get("Action"), form.get("RoleArn")) != ("AssumeRole", sts.ROLE):
                    problem = f"no such role {form.get('RoleArn')}"
                if problem is None and form.get("ExternalId") != sts.external_id:
                    problem = (f"User: arn:aws:iam::444455556666:user/base is not authorized to perform: "
                               f"sts:AssumeRole on resource: {sts.ROLE}")
                if problem:
                    return self.refuse(403, "AccessDenied", problem)
                name = form.get("RoleSessionName")
                self.grant("AssumeRole", f"role-session-{len(sts.asked)}",
                           f"<AssumedRoleUser><Arn>{sts.ROLE}/{name}</Arn><AssumedRoleId>AROAPEAKPILOT:{name}"
                           f"</AssumedRoleId></AssumedRoleUser>")

            def web_identity(self, form: dict):
                if (form.get("RoleArn"), form.get("WebIdentityToken")) != (sts.IRSA_ROLE, sts.web_token):
                    return self.refuse(400, "InvalidIdentityToken", "Incorrect token audience")
                self.grant("AssumeRoleWithWebIdentity", f"irsa-session-{len(sts.asked)}",
                           f"<SubjectFromWebIdentityToken>system:serviceaccount:peakpilot:peakpilot"
                           f"</SubjectFromWebIdentityToken><Audience>sts.amazonaws.com</Audience><AssumedRoleUser>"
                           f"<Arn>{sts.IRSA_ROLE}/pod</Arn><AssumedRoleId>AROAIRSA:pod</AssumedRoleId>"
                           f"</AssumedRoleUser>")

            def refuse(self, status: int, code: str, message: str):
                error = (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender'
                         f'</Type><Code>{code}</Code><Message>{message}</Message></Error>'
                         f'<RequestId>r-{len(sts.asked)}</RequestId></ErrorResponse>')
                self.answer(status, error.encode(), "text/xml")

            def grant(self, action: str, session: str, about: str):
                """STS's answer to ``action``: the role's credentials (those AmpGateway takes), and ``about``."""
                expires = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=sts.lifetime_s)
                answer = (f'<{action}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><{action}Result>'
                          f'<Credentials><AccessKeyId>{AmpGateway.KEY}</AccessKeyId><SecretAccessKey>'
                          f'{AmpGateway.SECRET}</SecretAccessKey><SessionToken>{session}</SessionToken><Expiration>'
                          f'{expires.strftime("%Y-%m-%dT%H:%M:%SZ")}</Expiration></Credentials>{about}</{action}Result>'
                          f'<ResponseMetadata><RequestId>r-{len(sts.asked)}</RequestId></ResponseMetadata>'
                          f'</{action}Response>')
                self.answer(200, answer.encode(), "text/xml")

        super().__init__(Handler)


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """AWS's standard chain with nothing of this machine's: no config or credentials file, no instance role."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ENDPOINT_URL",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_amazon_managed_prometheus_is_read_with_every_query_signed(prometheus_factory, aws_env, tmp_path):
    """SigV4 (``signals.prometheus_auth.sigv4``): every query signed with the credentials AWS's chain finds
    (here the environment's keys and session token, as IRSA's would be), the query's spaces and brackets
    encoded as the signature canonicalizes them; the counts read back are the CSV's. A wrong secret is AWS's
    403, named with what was sent; no credentials, or no region, are named before any query."""
    from forecaster.sigv4 import SigV4Settings, region_of

    server = prometheus_factory()
    counts, start = nasa_hours(server)
    server.start()
    amp = AmpGateway(server.url)
    end = start + pd.Timedelta(hours=HOURS)
    try:
        aws_env.setenv("AWS_ACCESS_KEY_ID", AmpGateway.KEY)
        aws_env.setenv("AWS_SECRET_ACCESS_KEY", AmpGateway.SECRET)
        aws_env.setenv("AWS_SESSION_TOKEN", "session-token-of-irsa")
        source = PrometheusSource(amp.url, auth=PrometheusAuth(sigv4=SigV4Settings(region="us-east-2")))
        np.testing.assert_allclose(source.load(start, end).counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
        assert amp.seen[-1]["X-Amz-Security-Token"] == "session-token-of-irsa"
        assert " " in source.query  # (the default query: its spaces are the encoding the signature must agree on)
        # the daemon's signals, from a policy, sign the live load's and busy share's queries too
        path = tmp_path / "policy.yaml"
        path.write_text(policy_text(prometheus=amp.url, prometheus_auth={"sigv4": {"region": "us-east-2"}}))
        signals = ServiceParts("simulated", clock=lambda: None).signals(load_policy(path))
        now = np.datetime64(end.tz_localize(None), "m")
        assert signals.observe(now).load_rps == pytest.approx(counts.iloc[-1] / 60)
        assert signals._busy_failure is None
        aws_env.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(HistoryError, match=r"403.*signature we calculated does not match.*not allowed: it was "
                                               r"sent a SigV4 signature"):
            PrometheusSource(amp.url, auth=PrometheusAuth(sigv4=SigV4Settings(region="us-east-2"))).load(start, end)
        aws_env.delenv("AWS_ACCESS_KEY_ID")
        aws_env.delenv("AWS_SECRET_ACCESS_KEY")
        with pytest.raises(HistoryError, match="no AWS credentials found to sign for Amazon Managed Prometheus"):
            PrometheusSource(amp.url, auth=PrometheusAuth(sigv4=SigV4Settings(region="us-east-2"))).load(start, end)
        aws_env.setenv("AWS_ACCESS_KEY_ID", AmpGateway.KEY)
        aws_env.setenv("AWS_SECRET_ACCESS_KEY", AmpGateway.SECRET)
        with pytest.raises(HistoryError, match=r"no AWS region to sign for: set signals.prometheus_auth.sigv4.region"):
            PrometheusSource(amp.url, auth=PrometheusAuth(sigv4=SigV4Settings())).load(start, end)
    finally:
        amp.close()
    assert region_of("https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-1234") == "eu-west-1"
    assert region_of(amp.url) is None


def test_in_eks_irsas_web_identity_token_becomes_the_credentials_that_sign(prometheus_factory, aws_env, tmp_path):
    """``sigv4: {}`` in an EKS pod with IRSA: the environment EKS injects (AWS_ROLE_ARN, the projected token's
    AWS_WEB_IDENTITY_TOKEN_FILE, AWS_REGION) is all; AWS's chain trades the token at STS
    (AssumeRoleWithWebIdentity) for the role's credentials, which sign the queries. A token STS refuses is
    named."""
    from forecaster.sigv4 import SigV4Settings

    server = prometheus_factory()
    counts, start = nasa_hours(server)
    server.start()
    token = tmp_path / "eks-pod-identity-token"
    token.write_text("projected-sa-token")
    amp, sts = AmpGateway(server.url), FakeSts(web_token="projected-sa-token")
    end = start + pd.Timedelta(hours=HOURS)
    try:
        for name, value in (("AWS_ROLE_ARN", FakeSts.IRSA_ROLE), ("AWS_WEB_IDENTITY_TOKEN_FILE", str(token)),
                            ("AWS_REGION", "us-east-2"), ("AWS_ENDPOINT_URL_STS", sts.url)):
            aws_env.setenv(name, value)
        source = PrometheusSource(amp.url, auth=PrometheusAuth(sigv4=SigV4Settings()))
        np.testing.assert_allclose(source.load(start, end).counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
        assert [(a["Action"], a["RoleArn"], a["WebIdentityToken"]) for a in sts.asked] == [
            ("AssumeRoleWithWebIdentity", FakeSts.IRSA_ROLE, "projected-sa-token")]
        assert amp.seen[-1]["X-Amz-Security-Token"] == "irsa-session-1"
        sts.web_token = "the token of another cluster's issuer"
        with pytest.raises(HistoryError, match=r"AWS STS refused the chain's exchange for credentials \(IRSA's web "
                                               r"identity token, or a profile's role\): InvalidIdentityToken"):
            PrometheusSource(amp.url, auth=PrometheusAuth(sigv4=SigV4Settings())).load(start, end)
    finally:
        amp.close()
        sts.close()


def test_a_workspace_in_another_account_is_read_with_a_role_assumed_through_sts(prometheus_factory, aws_env,
                                                                               tmp_path):
    """``sigv4.role_arn``: the chain's keys (the cluster's account) only ask STS for the role's credentials,
    which sign the queries; STS is asked once while they last, and again as they near their expiry. STS's
    refusal (here a wrong external id) is named with the role and STS's reason."""
    from forecaster.sigv4 import SigV4Settings

    server = prometheus_factory()
    counts, start = nasa_hours(server)
    server.start()
    amp, sts = AmpGateway(server.url), FakeSts(external_id="peakpilot-ext")
    end = start + pd.Timedelta(hours=HOURS)
    try:
        aws_env.setenv("AWS_ACCESS_KEY_ID", FakeSts.BASE_KEY)
        aws_env.setenv("AWS_SECRET_ACCESS_KEY", FakeSts.BASE_SECRET)
        aws_env.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        with pytest.raises(HistoryError, match="403 .*Credential should be scoped"):  # its own keys: not this account's
            PrometheusSource(amp.url, auth=PrometheusAuth(sigv4=SigV4Settings(region="us-east-2"))).load(start, end)
        assert sts.asked == []
        path = tmp_path / "policy.yaml"
        path.write_text(policy_text(prometheus=amp.url, prometheus_auth={"sigv4": {
            "region": "us-east-2", "role_arn": FakeSts.ROLE, "external_id": "peakpilot-ext"}}))
        signals = ServiceParts("simulated", clock=lambda: None).signals(load_policy(path))
        now = np.datetime64(end.tz_localize(None), "m")
        assert signals.history(now).counts.notna().sum() == len(counts)
        assert signals.observe(now).load_rps == pytest.approx(counts.iloc[-1] / 60)
        assert [(a["RoleArn"], a["RoleSessionName"], a["ExternalId"]) for a in sts.asked] == [
            (FakeSts.ROLE, "peakpilot", "peakpilot-ext")]  # once, for every query while the credentials last
        assert amp.seen[-1]["X-Amz-Security-Token"] == "role-session-1"
        sts.lifetime_s = 300  # inside botocore's ten minutes before expiry: renewed before the next request
        role = SigV4Settings(region="us-east-2", role_arn=FakeSts.ROLE, external_id="peakpilot-ext")
        source = PrometheusSource(amp.url, auth=PrometheusAuth(sigv4=role))
        source.load(start, end)
        asked = len(sts.asked)
        np.testing.assert_allclose(source.load(start, end).counts.to_numpy(), counts.to_numpy(), rtol=1e-9, atol=1e-6)
        assert len(sts.asked) > asked and amp.seen[-1]["X-Amz-Security-Token"] == f"role-session-{len(sts.asked)}"
        wrong = SigV4Settings(region="us-east-2", role_arn=FakeSts.ROLE, external_id="not-the-one")
        with pytest.raises(HistoryError, match=r"AWS STS refused to assume role arn:aws:iam::111122223333:role/"
                                               r"amp-query: AccessDenied: .*not authorized to perform: sts:AssumeRole"):
            PrometheusSource(amp.url, auth=PrometheusAuth(sigv4=wrong)).load(start, end)
    finally:
        amp.close()
        sts.close()


class GoogleTokenServer(LocalServer):
    """Google's OAuth2 token endpoint for a service account (RFC 7523's JWT-bearer grant, as
    oauth2.googleapis.com/token answers it): a JWT signed RS256 by the account's key, for the monitoring.read
    scope, addressed to Google's token endpoint and not expired, gets a new access token, which ``gateway`` lets through
    from then on; anything else is Google's 400 invalid_grant. The JWT is checked by this test's own reading of
    the specification with ``cryptography``, not by google-auth, which signs it."""

    def __init__(self, gateway: Gateway, public_key):
        self.gateway, self.public_key, self.asked = gateway, public_key, 0
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                from urllib.parse import parse_qsl

                form = dict(parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                server.asked += 1
                problem = server.refusal(form)
                if problem:
                    doc = {"error": "invalid_grant", "error_description": problem}
                    return self.answer(400, json.dumps(doc).encode(), "application/json")
                server.gateway.token = f"ya29.google-{server.asked}"
                self.answer(200, json.dumps({"access_token": server.gateway.token, "expires_in": 3599,
                                             "token_type": "Bearer"}).encode(), "application/json")

        super().__init__(Handler)
        self.url += "/token"

    def refusal(self, form: dict) -> str | None:
        import base64
        import time

        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def decoded(part: str) -> bytes:
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return "unsupported grant"
        head, body, signature = form["assertion"].split(".")
        if json.loads(decoded(head)).get("alg") != "RS256":
            return "Invalid JWT: alg"
        try:
            self.public_key.verify(decoded(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature."
        claims = json.loads(decoded(body))
        if (claims.get("aud") != "https://oauth2.googleapis.com/token"  # (Google's audience, wherever it is sent)
                or claims.get("iss") != "peakpilot@project.iam.gserviceaccount.com"):
            return "Invalid JWT: audience or issuer"
        if claims.get("scope") != "https://www.googleapis.com/auth/monitoring.read" or claims["exp"] < time.time():
            return "Invalid JWT: scope or expiry"
        return None


def service_account_key(path: Path, token_uri: str):
    """A Google service account's JSON key, its token_uri the test's endpoint; the key pair's public half."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": "project", "private_key_id": "k1",
                                "private_key": pem, "client_email": "peakpilot@project.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": token_uri}))
    return key.public_key()


def test_google_managed_prometheus_is_read_with_a_service_accounts_tokens(behind_gateway, tmp_path, monkeypatch):
    """``signals.prometheus_auth.google``: a Google access token from a service account's key (or Application
    Default Credentials, here the same key named in GOOGLE_APPLICATION_CREDENTIALS; in GKE, Workload
    Identity's metadata server), asked for once, sent with every query, asked for again where refused; a key
    that does not sign as the account is Google's invalid_grant, named with where the token was to come from."""
    from forecaster.google_auth import GoogleSettings

    gateway, counts, start = behind_gateway
    hour = (start, start + pd.Timedelta(hours=1))
    key = tmp_path / "sa.json"
    issuer = GoogleTokenServer(gateway, None)
    issuer.public_key = service_account_key(key, issuer.url)
    try:
        source = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"},
                                                                   google=GoogleSettings(str(key))))
        np.testing.assert_allclose(source.load(start, start + pd.Timedelta(hours=HOURS)).counts.to_numpy(),
                                   counts.to_numpy(), rtol=1e-9, atol=1e-6)
        source.load(*hour)
        assert issuer.asked == 1 and gateway.seen[-1]["Authorization"] == "Bearer ya29.google-1"
        gateway.token = "revoked"
        with pytest.raises(HistoryError, match="401.*it was sent headers, a Google token, which the next query asks"):
            source.load(*hour)
        assert len(source.load(*hour)) == 60 and issuer.asked == 2
        # Application Default Credentials: the key GOOGLE_APPLICATION_CREDENTIALS names
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
        adc = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, google=GoogleSettings()))
        assert len(adc.load(*hour)) == 60 and issuer.asked == 3
        stranger = tmp_path / "stranger.json"
        service_account_key(stranger, issuer.url)  # the account's name, another key: not the account's signature
        with pytest.raises(HistoryError, match=f"no Google access token from the credentials file {stranger}: "
                                               f".*invalid_grant: Invalid JWT Signature"):
            PrometheusSource(gateway.url, auth=PrometheusAuth(google=GoogleSettings(str(stranger)))).load(*hour)
        with pytest.raises(HistoryError, match=f"cannot read the Google credentials file {tmp_path}/none.json: No "
                                               f"such file"):
            PrometheusSource(gateway.url, auth=PrometheusAuth(google=GoogleSettings(str(tmp_path / "none.json")))
                             ).load(*hour)
    finally:
        issuer.close()


class GoogleStsServer(LocalServer):
    """Google's Security Token Service (sts.googleapis.com/v1/token, RFC 8693's token exchange) for a workload
    identity pool: the OIDC token of another cloud (``subject``, as EKS or AKS projects it into a pod), for the
    pool's ``AUDIENCE`` and the monitoring.read scope, becomes a Google access token, which ``gateway`` lets
    through from then on; anything else is STS's 400 invalid_grant."""

    AUDIENCE = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/clusters/providers/eks"

    def __init__(self, gateway: Gateway, subject: str):
        self.gateway, self.subject, self.asked = gateway, subject, []
        sts = self

        class Handler(QuietHandler):
            def do_POST(self):
                from urllib.parse import parse_qsl

                form = dict(parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                sts.asked.append(form)
                wanted = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "audience": sts.AUDIENCE,
                          "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": sts.subject,
                          "scope": "https://www.googleapis.com/auth/monitoring.read"}
                if any(form.get(k) != v for k, v in wanted.items()):
                    doc = {"error": "invalid_grant", "error_description": "The token exchange is not permitted."}
                    return self.answer(400, json.dumps(doc).encode(), "application/json")
                sts.gateway.token = f"ya29.federated-{len(sts.asked)}"
                doc = {"access_token": sts.gateway.token, "token_type": "Bearer", "expires_in": 3600,
                       "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}
                self.answer(200, json.dumps(doc).encode(), "application/json")

        super().__init__(Handler)
        self.url += "/v1/token"


def test_google_managed_prometheus_is_read_from_another_cloud_by_workload_identity_federation(behind_gateway,
                                                                                              tmp_path, monkeypatch):
    """``google.credentials_file`` naming an external account's configuration (no key anywhere): the OIDC
    token that the pod's own cloud projects into it is exchanged at Google's STS for an access token, read
    again at each exchange since it is rotated; a token the pool does not take is STS's error, named."""
    from forecaster.google_auth import GoogleSettings, forget

    gateway, counts, start = behind_gateway
    projected = tmp_path / "eks-token"
    projected.write_text("oidc-token-of-the-pod-1")
    sts = GoogleStsServer(gateway, "oidc-token-of-the-pod-1")
    config = tmp_path / "federation.json"
    config.write_text(json.dumps({"type": "external_account", "audience": GoogleStsServer.AUDIENCE,
                                  "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                                  "token_url": sts.url, "credential_source": {"file": str(projected)}}))
    settings = GoogleSettings(str(config))
    source = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, google=settings))
    try:
        np.testing.assert_allclose(source.load(start, start + pd.Timedelta(hours=HOURS)).counts.to_numpy(),
                                   counts.to_numpy(), rtol=1e-9, atol=1e-6)
        assert len(sts.asked) == 1 and gateway.seen[-1]["Authorization"] == "Bearer ya29.federated-1"
        projected.write_text("oidc-token-of-the-pod-2")  # the kubelet rotates the projected token
        sts.subject = "oidc-token-of-the-pod-2"
        forget(settings)
        assert len(source.load(start, start + pd.Timedelta(hours=1))) == 60
        assert sts.asked[-1]["subject_token"] == "oidc-token-of-the-pod-2"
        # Application Default Credentials: the same configuration, named in GOOGLE_APPLICATION_CREDENTIALS
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(config))
        forget(GoogleSettings())  # (what an earlier test's ADC left held in this process)
        adc = PrometheusSource(gateway.url, auth=PrometheusAuth({"X-Scope-OrgID": "team-a"}, google=GoogleSettings()))
        assert len(adc.load(start, start + pd.Timedelta(hours=1))) == 60 and len(sts.asked) == 3
        sts.subject = "a token of another pool"
        forget(settings)
        with pytest.raises(HistoryError, match=f"no Google access token from the credentials file {config}: .*"
                                               f"invalid_grant"):
            source.load(start, start + pd.Timedelta(hours=1))
    finally:
        sts.close()


class GkeMetadataServer(LocalServer):
    """GKE's metadata server as Workload Identity serves it to a pod (the Compute Engine metadata API): only
    requests with ``Metadata-Flavor: Google``; the pod's Google service account, and an access token for it
    with the scopes asked (recorded), which ``gateway`` lets through from then on."""

    EMAIL = "peakpilot@my-project.iam.gserviceaccount.com"

    def __init__(self, gateway: Gateway):
        self.gateway, self.scopes_asked = gateway, []
        meta = self

        class Handler(QuietHandler):
            def do_GET(self):
                import re
                from urllib.parse import parse_qs, urlsplit

                if self.headers.get("Metadata-Flavor") != "Google":
                    return self.answer(403, b"Missing Metadata-Flavor:Google header.\n")
                parts = urlsplit(self.path)
                account = re.fullmatch(r"/computeMetadata/v1/instance/service-accounts/([^/]+)/(token)?", parts.path)
                if parts.path == "/":  # (google-auth's check that it runs on Google's cloud)
                    body, kind = b"", "text/plain"
                elif parts.path == "/computeMetadata/v1/project/project-id":
                    body, kind = b"my-project", "application/text"
                elif account and not account.group(2):
                    body, kind = json.dumps({"email": meta.EMAIL, "aliases": ["default"],
                                             "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}).encode(), \
                        "application/json"
                elif account:
                    meta.scopes_asked.append(parse_qs(parts.query).get("scopes", [""])[0])
                    meta.gateway.token = f"ya29.gke-{len(meta.scopes_asked)}"
                    body, kind = json.dumps({"access_token": meta.gateway.token, "expires_in": 3599,
                                             "token_type": "Bearer"}).encode(), "application/json"
                else:
                    return self.answer(404, b"not found\n")
                self.send_response(200)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)
        self.host = self.url.removeprefix("http://")


def test_in_gke_the_tokens_come_from_workload_identitys_metadata_server(behind_gateway, tmp_path):
    """``google: {}`` in a GKE pod: no key and no file; Application Default Credentials find the metadata
    server (here at the address google-auth is told by GCE_METADATA_HOST, as its tests do), and the token it
    gives for the monitoring.read scope is sent with every query. Run as the operator would check it, with
    ``check-policy --connect``, in a process of its own."""
    import os

    gateway, counts, start = behind_gateway
    meta = GkeMetadataServer(gateway)
    path = tmp_path / "policy.yaml"
    path.write_text(live_policy_text(prometheus=gateway.url, prometheus_auth={
        "headers": {"X-Scope-OrgID": "team-a"}, "google": {}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_"))}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), GCE_METADATA_HOST=meta.host,
               GCE_METADATA_IP=meta.host)
    try:
        out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "check-policy", "--connect", str(path)],
                             capture_output=True, text=True, timeout=120, env=env)
    finally:
        meta.close()
    assert out.returncode == 0, out.stderr
    assert f"read   {path}: Prometheus {gateway.url} (sent headers, a Google token): " in out.stdout
    assert "of history at 1m" in out.stdout
    assert meta.scopes_asked == ["https://www.googleapis.com/auth/monitoring.read"]  # one token, for every query
    queries = [seen for seen in gateway.seen if seen.get("Authorization", "").startswith("Bearer ya29.gke-")]
    assert len(queries) >= 2 and all(seen["Authorization"] == "Bearer ya29.gke-1" for seen in queries)


def test_a_google_token_endpoint_that_never_answers_costs_seconds_not_cycles(behind_gateway, tmp_path, monkeypatch):
    """google-auth waits 120 s for a token by default, two control cycles; the source gives up sooner."""
    import time

    from forecaster import google_auth
    from forecaster.google_auth import GoogleSettings

    class Silent(QuietHandler):
        def do_POST(self):
            time.sleep(3)

    gateway, counts, start = behind_gateway
    silent = LocalServer(Silent)
    key = tmp_path / "sa.json"
    service_account_key(key, silent.url + "/token")
    monkeypatch.setattr(google_auth, "TOKEN_TIMEOUT_S", 0.5)
    began = time.monotonic()
    try:
        with pytest.raises(HistoryError, match=f"no Google access token from the credentials file {key}: .*timed "
                                               f"out"):
            PrometheusSource(gateway.url, auth=PrometheusAuth(google=GoogleSettings(str(key)))).load(
                start, start + pd.Timedelta(hours=1))
    finally:
        silent.close()
    assert time.monotonic() - began < 2.5


def policy_text(**signals) -> str:
    """The default policy with these ``signals`` keys set."""
    policy = yaml.safe_load((ROOT / "configs" / "policy.yaml").read_text())
    policy["signals"].update(signals)
    return yaml.safe_dump(policy)


def live_policy_text(**signals) -> str:
    """``policy_text`` for a live service, as the daemon takes it: its capacity per node measured, not
    relative to a trace's peak."""
    policy = yaml.safe_load(policy_text(**signals))
    policy["capacity"].update(rps_per_node=5.0, peak_nodes=None)
    return yaml.safe_dump(policy)


def test_the_daemon_reads_its_load_with_the_policys_credentials(behind_gateway, tmp_path):
    gateway, counts, start = behind_gateway
    token = tmp_path / "token"
    token.write_text("token-one")
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(prometheus=gateway.url, prometheus_auth={
        "headers": {"X-Scope-OrgID": "team-a"}, "bearer_token_file": str(token)}))
    signals = ServiceParts("simulated", clock=lambda: None).signals(load_policy(path))
    now = np.datetime64((start + pd.Timedelta(hours=HOURS)).tz_localize(None), "m")
    history = signals.history(now)
    assert history.counts.notna().sum() == len(counts)
    assert signals.observe(now).load_rps == pytest.approx(counts.iloc[-1] / 60)
    assert signals._busy_failure is None  # the busy share's query went through with the credentials too
    assert len(gateway.seen) >= 3 and all(seen["X-Scope-OrgID"] == "team-a" for seen in gateway.seen)


def test_a_policys_prometheus_is_read_before_the_daemon_starts(behind_gateway, tmp_path):
    """``check-policy --connect``: each policy's Prometheus read as the daemon's first cycle would, with its
    credentials: the history's span, steps and last load, and the last minutes' load; one that cannot be read
    (here no token) is named with the refusal, exit 1; one whose query answers nothing now is a warning."""
    from controller.signals_check import check_signals

    gateway, counts, start = behind_gateway
    token = tmp_path / "token"
    token.write_text("token-one")
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(live_policy_text(prometheus=gateway.url, prometheus_auth={
        "headers": {"X-Scope-OrgID": "team-a"}, "bearer_token_file": str(token)}))
    bad.write_text(live_policy_text(prometheus=gateway.url, prometheus_auth={"headers": {"X-Scope-OrgID": "team-a"}})
                   .replace("service: llm-chat", "service: llm-batch"))  # (one service a file)
    signals = ServiceParts("simulated", clock=lambda: None).signals(load_policy(good))
    at_end = check_signals(signals, np.datetime64((start + pd.Timedelta(hours=HOURS)).tz_localize(None), "m"))
    assert at_end.ok and at_end.history_days == pytest.approx(HOURS / 24) and at_end.gaps == 0
    assert at_end.load_rps == pytest.approx(counts.iloc[-1] / 60) and at_end.busy_share == 0.0
    assert at_end.last_step_rps == pytest.approx(counts.iloc[-1] / 60) and at_end.warnings == []

    cli = [sys.executable, "-m", "peakpilot.cli", "check-policy", "--connect"]
    out = subprocess.run([*cli, str(good)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"read   {good}: Prometheus {gateway.url} (sent headers, a bearer token): " in out.stdout
    assert "of history at 1m, 1 gap, to" in out.stdout
    # (now, an hour after the data ends: the history runs on to now, a gap, and nothing is scraped now)
    assert f"warn   {good}: the last minutes' load could not be read: " in out.stderr
    assert "it does not scrape the inference nodes" in out.stderr
    out = subprocess.run([*cli, "--json", str(good), str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and doc["problems"] == [] and set(doc["policies"]) == {str(good), str(bad)}
    assert doc["connections"][str(good)]["ok"] and doc["connections"][str(good)]["load_rps"] is None
    assert doc["connections"][str(good)]["history_days"] > HOURS / 24
    refused = doc["connections"][str(bad)]
    assert not refused["ok"] and "401" in refused["error"] and "it was sent headers" in refused["error"]
    out = subprocess.run([*cli, str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and f"error  {bad}: Prometheus {gateway.url} query " in out.stderr and "401" in out.stderr
    assert out.stderr.count(gateway.url) == 1  # (named once, though the refusal's own text begins with it)
    # a live service sized relative to a trace's peak: refused as the daemon would refuse it, before any read
    relative = tmp_path / "relative.yaml"
    relative.write_text(policy_text(prometheus=gateway.url))
    out = subprocess.run([*cli, str(relative)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"error  {relative}: capacity.peak_nodes needs a trace; a service whose load is " \
                                   f"read from Prometheus sets capacity.rps_per_node" in out.stderr


@pytest.mark.parametrize("auth, problem", [
    ({"bearer_token_file": "/t", "basic_auth": {"username": "a", "password_file": "/p"}},
     "give one of bearer_token_file, basic_auth, oauth2, sigv4, google or azure, not bearer_token_file and basic_auth"),
    ({"bearer_token_file": "/t", "headers": {"Authorization": "Bearer x"}},
     "an Authorization header and bearer_token_file would overwrite each other"),
    ({"headers": {"X Scope": "a"}}, "signals.prometheus_auth.headers: 'X Scope' is not an HTTP header"),
    ({"basic_auth": {"username": "a", "password": "inline"}}, "signals.prometheus_auth.basic_auth.password: unknown"),
    ({"tls": {"cert_file": "/c.crt"}}, "signals.prometheus_auth.tls: cert_file and key_file go together"),
    ({"bearer_token_file": "/t", "oauth2": {"client_id": "a", "client_secret_file": "/s", "token_url": "https://i/t"}},
     "give one of bearer_token_file, basic_auth, oauth2, sigv4, google or azure, not bearer_token_file and oauth2"),
    ({"headers": {"authorization": "Bearer x"},
      "oauth2": {"client_id": "a", "client_secret_file": "/s", "token_url": "https://i/t"}},
     "an Authorization header and oauth2 would overwrite each other"),
    ({"oauth2": {"client_id": "a", "client_secret_file": "/s", "token_url": "login.example.com/token"}},
     "signals.prometheus_auth.oauth2.token_url: .*'login.example.com/token' is not a token endpoint URL"),
    ({"oauth2": {"client_id": "a", "client_secret": "inline", "token_url": "https://i/t"}},
     "signals.prometheus_auth.oauth2.client_secret: unknown"),
    ({"google": {}, "azure": {}}, "give one of .*, not google and azure"),
    ({"azure": {"client_secret_file": "/s"}}, "signals.prometheus_auth.azure.client_secret_file: unknown"),
    ({"azure": {"identity": "managed", "tenant_id": "t1"}},
     "signals.prometheus_auth.azure: tenant_id is workload identity's; a managed identity's tenant is its machine's"),
    ({"azure": {"identity": "pod"}}, "signals.prometheus_auth.azure.identity: .*'auto', 'workload' or 'managed'"),
    ({"sigv4": {"region": "us-east-2"}, "google": {}},
     "give one of bearer_token_file, basic_auth, oauth2, sigv4, google or azure, not sigv4 and google"),
    ({"google": {"credentials_file": "/k.json", "scopes": ["x"]}}, "signals.prometheus_auth.google.scopes: unknown"),
    ({"sigv4": {"role_arn": "amp-query"}}, "signals.prometheus_auth.sigv4.role_arn: .*should match"),
    ({"sigv4": {"external_id": "x1"}}, "signals.prometheus_auth.sigv4: external_id is sent when assuming a role"),
    ({"oauth2": {"client_id": "a", "token_url": "https://i/t"}},
     r"signals.prometheus_auth.oauth2: give one of client_secret_file or client_assertion_file \(or tls.cert_file"),
    ({"oauth2": {"client_id": "a", "token_url": "https://i/t", "tls": {"ca_file": "/ca.crt"}}},
     r"signals.prometheus_auth.oauth2: give one of client_secret_file or client_assertion_file \(or tls.cert_file"),
    ({"oauth2": {"client_id": "a", "token_url": "https://i/t", "tls": {"key_file": "/c.key"}}},
     "signals.prometheus_auth.oauth2.tls: cert_file and key_file go together"),
    ({"oauth2": {"client_id": "a", "client_secret_file": "/s", "client_assertion_file": "/j",
                 "token_url": "https://i/t"}},
     "signals.prometheus_auth.oauth2: give one of client_secret_file or client_assertion_file"),
])
def test_bad_credentials_settings_are_refused_with_the_key(tmp_path, auth, problem):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(prometheus="http://prometheus:9090", prometheus_auth=auth))
    with pytest.raises(PolicyError, match=problem):
        load_policy(path)


def test_credentials_without_a_prometheus_are_refused(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(prometheus_auth={"headers": {"X-Scope-OrgID": "a"}}))
    with pytest.raises(PolicyError, match="prometheus_auth is set but prometheus is not"):
        load_policy(path)


def test_the_cli_reads_a_prometheus_behind_a_gateway_and_sends_a_policys_credentials_only_to_its_own(
        behind_gateway, tmp_path):
    gateway, counts, start = behind_gateway
    token = tmp_path / "token"
    token.write_text("token-one")
    end = (start + pd.Timedelta(hours=HOURS)).isoformat()
    cli = [sys.executable, "-m", "peakpilot.cli", "forecast", "--prometheus", gateway.url, "--end", end, "--days",
           "0.25", "--model", "recent_level", "--json"]
    out = subprocess.run(cli + ["--prometheus-header", "X-Scope-OrgID: team-a", "--prometheus-token-file", str(token)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"] == "recent_level" and len(json.loads(out.stdout)["forecast"]) == 30
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "401" in refused.stderr and "--prometheus-token-file" in refused.stderr
    from peakpilot.cli.history_options import prometheus_auth

    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(prometheus=gateway.url + "/", prometheus_auth={
        "headers": {"X-Scope-OrgID": "team-a"}, "bearer_token_file": str(token)}))
    policy = load_policy(path)
    # forecast --policy reads the service's load as the daemon does: its Prometheus and credentials, its step and
    # days of history, its model and horizon
    daemon_like = yaml.safe_load(path.read_text())
    daemon_like["signals"]["history_days"] = 0.25
    daemon_like["planning"]["model"] = "recent_level"
    path.write_text(yaml.safe_dump(daemon_like))
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "forecast", "--policy", str(path), "--end", end,
                          "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["model"] == "recent_level" and len(answer["forecast"]) == 60  # planning.horizon_min
    assert gateway.seen[-1]["Authorization"] == "Bearer token-one"
    # and backtest --policy scores the models on it
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "backtest", "--policy", str(path), "--end", end,
                          "--models", "recent_level", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    assert scores["trace"].startswith(gateway.url) and scores["models"]["recent_level"]["wape"] > 0
    assert prometheus_auth(gateway.url, [], None, policy).bearer_token_file == str(token)
    assert prometheus_auth("http://elsewhere:9090", [], None, policy) is None  # another server gets none of them
    given = prometheus_auth(gateway.url, ["X-Scope-OrgID: team-b"], None, policy)
    assert given.headers == {"X-Scope-OrgID": "team-b"} and given.bearer_token_file is None


@pytest.mark.parametrize("url, shown", [
    ("https://reader:s3cret@prometheus.example:9090/prom", "https://reader:***@prometheus.example:9090/prom"),
    ("http://reader:s3cret@[::1]:9090", "http://reader:***@[::1]:9090"),
    ("http://prometheus:9090", "http://prometheus:9090"),
])
def test_a_password_in_the_url_is_never_shown(url, shown):
    source = PrometheusSource(url)
    assert source.url == shown and "s3cret" not in source.where and source.endpoint == url


@pytest.mark.parametrize("url, problem", [
    ("prometheus:9090", "prometheus:9090: not a Prometheus URL: write it as http://HOST:9090 or "
                        "https://HOST[/PREFIX] (here perhaps http://prometheus:9090)"),
    ("ftp://prometheus", "ftp://prometheus: not a Prometheus URL"),
    ("http://prometheus:90x", "the port in 'prometheus:90x' is not a number"),
    # the API's paths would go after the query string; the token is not shown
    ("https://prometheus/?access_token=s3cret", "https://prometheus/?***: a query string or fragment cannot be part "
                                                "of a Prometheus URL"),
])
def test_a_url_that_is_no_prometheus_base_url_is_refused_before_any_query(url, problem):
    with pytest.raises(HistoryError) as err:
        PrometheusSource(url)
    assert problem in str(err.value) and "s3cret" not in str(err.value)
