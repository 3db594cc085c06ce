"""The policy snippets of the docs are policies the daemon takes: each ```yaml block of
docs/prometheus-auth.md, set into the default policy, loads as a live service's, and its credentials are
what the Prometheus source is given."""

from __future__ import annotations

import re

import pytest
import yaml

from controller.policy import load_policies
from controller.service_parts import prometheus_auth
from tests.conftest import ROOT

AUTH_DOC = ROOT / "docs" / "prometheus-auth.md"


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)


BLOCKS = yaml_blocks(AUTH_DOC.read_text())


def test_the_auth_guide_has_a_block_for_each_kind_of_credential():
    kinds = set()
    for block in BLOCKS:
        auth = yaml.safe_load(block)["signals"]["prometheus_auth"]
        kinds |= {k for k, v in auth.items() if v is not None and k not in ("headers", "tls")}
        kinds |= {f"{k}.role_arn" for k, v in auth.items() if isinstance(v, dict) and v.get("role_arn")}
    assert kinds >= {"bearer_token_file", "basic_auth", "sigv4", "sigv4.role_arn", "oauth2", "google", "azure"}


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_signals_block_of_the_auth_guide_is_a_valid_live_policy(block, tmp_path):
    snippet = yaml.safe_load(block)
    assert set(snippet) == {"signals"}, "a block is a policy's signals section, and only that"
    policy = yaml.safe_load((ROOT / "configs" / "policy.yaml").read_text())
    policy["signals"].update(snippet["signals"])
    policy["capacity"].update(rps_per_node=5.0, peak_nodes=None)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    policies, problems = load_policies([path], "kubernetes")
    assert problems == {}
    auth = prometheus_auth(policies[path])  # (the source's own checks: one credential, pairs of files)
    given = snippet["signals"]["prometheus_auth"]
    assert (auth.sigv4 is not None) == ("sigv4" in given) and (auth.oauth2 is not None) == ("oauth2" in given)
    assert (auth.google is not None) == ("google" in given) and (auth.azure is not None) == ("azure" in given)
