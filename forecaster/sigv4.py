"""AWS Signature Version 4 for Amazon Managed Service for Prometheus (AMP), whose query API answers only
signed requests (Prometheus's own ``sigv4`` HTTP client block does the same).

Signing and the credentials are botocore's (the ``aws`` extra): the environment's keys, a profile of
``~/.aws``, the pod's IRSA or EKS Pod Identity web token, or the instance's role, whichever the standard
chain finds first, refreshed as they near their expiry, so nothing secret is written in a policy. The
region is the policy's, else the one in an AMP workspace's URL (``aps-workspaces.REGION.amazonaws.com``),
else the environment's (``AWS_REGION``, which EKS injects, or botocore's ``AWS_DEFAULT_REGION`` and profile).
Each request is signed as it is sent, over its host and date (and session token) only: headers a proxy may
rewrite are left out of the signature.

With a ``role_arn``, the credentials the chain finds only ask AWS STS for the role's (AssumeRole, as
Prometheus's ``sigv4.role_arn``): a workspace in a central monitoring account is read from a cluster in
another, without keys of that account. The role's credentials are renewed by botocore before they expire.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from forecaster.errors import HistoryError

SERVICE = "aps"  # Amazon Managed Service for Prometheus
AMP_HOST = re.compile(r"aps-workspaces\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")
SESSION_NAME = "peakpilot"  # the assumed role's session, as CloudTrail shows who read the workspace
STS_TIMEOUT_S = 10.0  # an STS silent this long is an error of the query that needed the role's credentials


@dataclass(frozen=True)
class SigV4Settings:
    region: str | None = None  # None: the workspace URL's, else the environment's
    profile: str | None = None  # a profile of ~/.aws/config; None: the default chain
    role_arn: str | None = None  # a role to assume with the chain's credentials (another account's workspace)
    external_id: str | None = None  # the role's trust policy's sts:ExternalId condition, where it has one


def region_of(url: str) -> str | None:
    """The region in an AMP workspace's URL, or None."""
    found = AMP_HOST.search(urlsplit(url).hostname or "")
    return found.group(1) if found else None


class Signer:
    """Signs the requests of one Prometheus source (a requests ``auth``) with the credentials the standard
    chain finds; ``check`` finds them before a query, so that a missing one is named, not a failed query."""

    def __init__(self, settings: SigV4Settings, url: str, where: str):
        self.settings, self.where = settings, where
        self.region = settings.region or region_of(url)
        self._session = None
        self._role = None  # with settings.role_arn: the role's credentials, renewed by botocore

    def check(self):
        """The credentials of the next request (frozen) and the region, or a HistoryError saying what is
        missing."""
        try:
            import botocore.session
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            raise HistoryError(self.where, "signing for Amazon Managed Prometheus (signals.prometheus_auth.sigv4) "
                                           "needs botocore: pip install 'peakpilot[aws]'") from None
        try:
            if self._session is None:
                self._session = botocore.session.Session(profile=self.settings.profile)
                # AWS_REGION, which EKS injects and the other SDKs read (botocore reads AWS_DEFAULT_REGION only),
                # and the chain's own calls to STS (IRSA's token exchange) made in that region too
                self.region = (self.region or os.environ.get("AWS_REGION")
                               or self._session.get_config_variable("region"))
                if self.region and not self._session.get_config_variable("region"):
                    self._session.set_config_variable("region", self.region)
            found = self._session.get_credentials()
            if found is not None and self.settings.role_arn and self.region:  # (STS is asked in the region)
                found = self._role_credentials(found)
            frozen = None if found is None else found.get_frozen_credentials()
        except BotoCoreError as exc:
            raise HistoryError(self.where, f"AWS credentials to sign with{self._of_role()}: {exc}") from None
        except ClientError as exc:  # STS refused the role (not trusted, no sts:AssumeRole, wrong external id)
            error = exc.response.get("Error", {})
            what = (f"to assume role {self.settings.role_arn}" if self.settings.role_arn else
                    "the chain's exchange for credentials (IRSA's web identity token, or a profile's role)")
            raise HistoryError(self.where, f"AWS STS refused {what}: {error.get('Code', '?')}: "
                                           f"{error.get('Message', exc)}") from None
        if frozen is None:
            raise HistoryError(self.where, "no AWS credentials found to sign for Amazon Managed Prometheus: none in "
                                           "the environment (AWS_ACCESS_KEY_ID), ~/.aws, a web identity token (IRSA, "
                                           "EKS Pod Identity) or the instance's role")
        if not self.region:
            raise HistoryError(self.where, "no AWS region to sign for: set signals.prometheus_auth.sigv4.region (or "
                                           "AWS_REGION, or AWS_DEFAULT_REGION)")
        return frozen, self.region

    def _role_credentials(self, source):
        """The role's credentials, asked of STS with ``source`` when first needed and again before they
        expire; one set for the signer's life (not every query calls STS)."""
        if self._role is None:
            from botocore.config import Config
            from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

            config = Config(connect_timeout=STS_TIMEOUT_S, read_timeout=STS_TIMEOUT_S, retries={"max_attempts": 2})
            args = {"RoleSessionName": SESSION_NAME}
            if self.settings.external_id:
                args["ExternalId"] = self.settings.external_id
            fetcher = AssumeRoleCredentialFetcher(
                lambda service, **kw: self._session.create_client(service, region_name=self.region, config=config,
                                                                  **kw),
                source, self.settings.role_arn, extra_args=args)
            self._role = DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")
        return self._role

    def _of_role(self) -> str:
        return f" (assuming role {self.settings.role_arn})" if self.settings.role_arn else ""

    def __call__(self, request):
        """Sign a prepared request in place: its query re-encoded as SigV4 canonicalizes it (spaces as %20,
        not the + of a form), then its date, session token and signature headers added."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        frozen, region = self.check()
        parts = urlsplit(request.url)
        query = urlencode(parse_qsl(parts.query, keep_blank_values=True), quote_via=quote, safe="-_.~")
        request.url = urlunsplit(parts._replace(query=query))
        signed = AWSRequest(method=request.method, url=request.url, data=request.body or b"")
        SigV4Auth(frozen, SERVICE, region).add_auth(signed)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in signed.headers:
                request.headers[name] = signed.headers[name]
        return request
