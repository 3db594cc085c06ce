"""The docs say what is there: each ```yaml block of docs/prometheus-auth.md, set into the default policy,
loads as a live service's, and its credentials are what the Prometheus source is given; every file of the
project the README and the guides name exists (tests/test_monitoring.py checks the metrics and alerts they
name)."""

from __future__ import annotations

import re

import pytest
import yaml

from controller.policy import load_policies
from controller.service_parts import prometheus_auth
from tests.conftest import ROOT

AUTH_DOC = ROOT / "docs" / "prometheus-auth.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_LEVEL = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}


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


def named_paths(text: str) -> set[str]:
    """The project's files a text names: in code spans (``controller/shadow.py``, ``tests/x.py::test``,
    ``controller/cycle.py:control_cycle``) and as links, within the checkout's own top-level folders."""
    named = set()
    for span in re.findall(r"`([^`\s]+)`", text) + re.findall(r"\]\(([^)#\s]+)[)#]", text):
        path = span.split("::")[0].split(":")[0].rstrip(",.")
        if "/" in path and path.split("/")[0] in TOP_LEVEL and not any(c in path for c in "*{}<>$"):
            named.add(path)
    return named


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_file_the_docs_name_exists(doc):
    named = named_paths(doc.read_text())
    assert named, f"{doc.name} names no file of the project: the check reads nothing"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{doc.name} names files that are not there: {missing}"


def test_links_between_the_docs_are_followed():
    assert "docs/running-on-a-cluster.md" in named_paths((ROOT / "README.md").read_text())
    assert named_paths("see [the guide](docs/nowhere.md) and `controller/gone.py:f`") == {
        "docs/nowhere.md", "controller/gone.py"}


def heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_link_to_a_heading_of_the_same_page_finds_it(doc):
    text = doc.read_text()
    anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    linked = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert not linked - anchors, f"{doc.name} links to headings it does not have: {sorted(linked - anchors)}"
