"""Policy files: the documented default loads; broken ones are refused naming the key and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.policy import Policy, PolicyError, load_policy

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")))
def test_shipped_policies_load(path):
    policy = load_policy(path)
    assert isinstance(policy, Policy) and policy.service


def test_default_policy_values():
    policy = load_policy(ROOT / "configs" / "policy.yaml")
    assert policy.slo.compliance_target == 0.999
    assert policy.capacity.peak_nodes == 20 and policy.reserved.count == "auto"
    assert policy.classes.spot.price_per_hour < policy.classes.on_demand.price_per_hour


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


BASE = """service: s
capacity: {rps_per_node: 5}
classes:
  reserved: {price_per_hour: 2, lead_time: {mean_min: 5}}
  spot: {price_per_hour: 1, lead_time: {mean_min: 5}}
  on_demand: {price_per_hour: 3, lead_time: {mean_min: 5}}
"""


@pytest.mark.parametrize("extra,message", [
    ("limits: {min_nodes: 5, max_nodes: 2}\n", "limits: Value error, min_nodes must be <= max_nodes"),
    ("spot: {max_share: 1.5}\n", "spot.max_share: Input should be less than or equal to 1"),
    ("planning: {quantile: q75}\n", "planning.quantile: Input should be 'q50', 'q90' or 'q99'"),
    ("planing: {quantile: q90}\n", "planing: unknown key"),
    ("slo: {latency_ms: -1}\n", "slo.latency_ms: Input should be greater than 0"),
    ("reserved: {count: -2}\n", "reserved.count"),
    ("events: [{name: x, start: 2024-01-02T00:00:00, end: 2024-01-01T00:00:00, multiplier: 2}]\n",
     "events.0: Value error, end must be after start"),
])
def test_bad_values_name_the_key_and_reason(tmp_path, extra, message):
    with pytest.raises(PolicyError) as err:
        load_policy(write(tmp_path, BASE + extra))
    assert message in str(err.value) and str(tmp_path / "p.yaml") in str(err.value)


def test_capacity_needs_exactly_one_sizing(tmp_path):
    with pytest.raises(PolicyError, match="capacity: Value error, set exactly one of rps_per_node or peak_nodes"):
        load_policy(write(tmp_path, BASE.replace("{rps_per_node: 5}", "{rps_per_node: 5, peak_nodes: 3}")))


def test_broken_yaml_names_the_line(tmp_path):
    with pytest.raises(PolicyError, match=r"p.yaml:3: not valid YAML"):
        load_policy(write(tmp_path, "service: s\ncapacity: {rps_per_node: 5\nclasses: [\n"))
    with pytest.raises(PolicyError, match="expected a mapping"):
        load_policy(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(PolicyError, match="no such file"):
        load_policy(tmp_path / "missing.yaml")


def test_with_changes_validates_again(tmp_path):
    policy = load_policy(write(tmp_path, BASE))
    assert policy.with_changes(planning={"headroom": 0.3}).planning.headroom == 0.3
    assert policy.planning.headroom == 0.1  # frozen: the original is unchanged
    with pytest.raises(Exception, match="headroom"):
        policy.with_changes(planning={"headroom": -1})
