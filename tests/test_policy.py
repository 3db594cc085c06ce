"""Policy files: the documented default loads; broken ones are refused naming the key and why."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from controller.policy import Policy, PolicyError, load_policies, load_policy, policy_files, policy_schema

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")))
def test_shipped_policies_load(path):
    policy = load_policy(path)
    assert isinstance(policy, Policy) and policy.service


def test_a_key_left_out_takes_the_value_the_documented_default_shows():
    """configs/policy.yaml shows every key at its default: a policy of only the required keys is that policy,
    apart from the names of the Kubernetes objects, which are deploy/'s (its planning headroom and reserved
    count were once 0.1 and 0 in the code, 0.3 and auto in the file)."""
    full = yaml.safe_load((ROOT / "configs" / "policy.yaml").read_text())
    required = Policy.model_validate({k: full[k] for k in ("service", "capacity", "classes")}).model_dump()
    documented = load_policy(ROOT / "configs" / "policy.yaml").model_dump()
    assert documented.pop("kubernetes")["namespace"] == "inference" and required.pop("kubernetes")
    assert required == documented


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
    ("limits: {min_nodes: 5, max_nodes: 2}\n", "limits: min_nodes must be <= max_nodes"),
    ("spot: {max_share: 1.5}\n", "spot.max_share: Input should be less than or equal to 1"),
    ("planning: {quantile: q75}\n", "planning.quantile: Input should be 'q50', 'q90' or 'q99'"),
    ("planing: {quantile: q90}\n", "planing: unknown key"),
    ("slo: {latency_ms: -1}\n", "slo.latency_ms: Input should be greater than 0"),
    ("reserved: {count: -2}\n", "reserved.count"),
    ("events: [{name: x, start: 2024-01-02T00:00:00, end: 2024-01-01T00:00:00, multiplier: 2}]\n",
     "events.0: end must be after start"),
    ("signals: {step: 5min}\n", "signals.step: '5min' is not a Prometheus duration (e.g. 30s, 1m, 5m)"),
    ("signals: {step: 500ms}\n", "signals.step: '500ms': the step must be whole seconds, from 1s to 1h"),
    ("signals: {step: 1h}\n", "signals.step 1h is more than half of planning.horizon_min (60): a "
                              "forecast from the newest complete step reaches only 1 minute ahead by the step's "
                              "end; use a step of at most 30m, or horizon_min 120 or more"),
    ("reserved: {count: 12}\nlimits: {max_nodes: 10}\n", "reserved.count 12 is above limits.max_nodes 10: the fleet "
                                                       "never runs more than max_nodes, so 2 reserved node(s) would "
                                                       "be paid for and never run"),
    ("spot: {max_share: yes}\nlimits: {min_nodes: no}\nsafety_net: {enabled: off}\n",
     "spot.max_share: true is a YAML boolean (yes, no, on and off are too), not a number; limits.min_nodes: false "
     "is a YAML boolean"),
    ("planning: {headroom: .inf}\n", "planning.headroom: Input should be a finite number"),
    ("signals: {timezone: US/Eastern Standard}\n", "signals.timezone: 'US/Eastern Standard' is not a "
                                                   "time zone this machine knows: an IANA name such as UTC"),
    ("signals: {query: 'sum(increase(http_requests_total[1m]))'}\n",
     "signals.query: the query takes increase(), which counts each range's requests (over [1m], 60 times the rate "
     "per second that peakpilot reads): write rate(...) instead, or divide by the range in seconds"),
    ("signals: {query: 'sum(increase(http_requests_total{path=\"/v1/chat\"}[5m]))'}\n",
     "signals.query: the query takes increase()"),  # (the matcher's "/" divides nothing)
    ("signals: {query: 'sum(rate(http_requests_total[5m])) * 60'}\n",
     "signals.query: the query multiplies by 60, as a panel of requests per minute or hour does: peakpilot reads "
     "requests per second, so leave the factor out"),
    ("kubernetes: {namespace: Inference, workloads: {spot: llm_spot, on_demand: llm-od}, placeholder: '-x'}\n",
     "kubernetes.namespace: 'Inference' cannot name a namespace: lowercase letters, digits and '-', starting and "
     "ending with a letter or digit, at most 63; kubernetes.workloads: spot: 'llm_spot' cannot name a Deployment: "
     "lowercase letters, digits and '-' or ., starting and ending with a letter or digit, at most 253; "
     "kubernetes.placeholder: '-x' cannot name a Deployment"),
    ("signals: {timezone: EST}\n", "signals.timezone: 'EST' is one offset all year, without daylight saving, an "
                                    "hour off the users' clock all summer: write America/New_York for the clock "
                                    "that changes, or America/Panama for one that does not"),
    ("signals: {timezone: ../../etc/passwd}\n", "signals.timezone: '../../etc/passwd' is not a time zone"),
    ("signals: {prometheus: 'prometheus:9090'}\n", "signals.prometheus: 'prometheus:9090' is not a Prometheus URL: "
                                                   "write it as http://HOST:9090 or https://HOST[/PREFIX]"),
    ("signals: {prometheus: 'http://p:9090/?access_token=abc'}\n", "signals.prometheus: a query string or fragment "
                                                                   "cannot be part of a Prometheus URL"),
    ("signals: {prometheus: 'http://u:pw@p:90x'}\n", "signals.prometheus: the port in 'p:90x' is not a number"),
    ("signals: {history_days: 1.0e+308}\n", "signals.history_days: Input should be less than or equal to 3650"),
    # (each overflowed a replay, or asked for 1e300 nodes)
    ("limits: {scale_down_stabilization_min: 1.0e+300}\n", "limits.scale_down_stabilization_min: Input should be "
                                                           "less than or equal to 10080"),
    ("planning: {retrain_hours: 1.0e+300}\n", "planning.retrain_hours: Input should be less than or equal to 8760"),
    ("spot: {preemption_rate_per_hour: 1.0e+300}\n", "spot.preemption_rate_per_hour: Input should be less than or "
                                                      "equal to 1"),
])
def test_bad_values_name_the_key_and_reason(tmp_path, extra, message):
    with pytest.raises(PolicyError) as err:
        load_policy(write(tmp_path, BASE + extra))
    assert message in str(err.value) and str(tmp_path / "p.yaml") in str(err.value)


def test_a_lead_time_beyond_the_forecasts_reach_is_refused(tmp_path):
    """A class that scales with the forecast and takes longer to start than the forecast sees would be
    planned only as far as the forecast reaches, every rise met late: refused, with the horizon that
    would do, or, where none would, the likelier slip (a lead time in seconds). Spot's is not judged
    where the policy takes no spot."""
    seconds = BASE.replace("on_demand: {price_per_hour: 3, lead_time: {mean_min: 5}}",
                           "on_demand: {price_per_hour: 3, lead_time: {mean_min: 900}}")
    with pytest.raises(PolicyError, match=r"classes.on_demand.lead_time plans 900 minutes ahead \(mean_min 900 \+ 2 x "
                                          r"spread_min 0\), but a forecast of planning.horizon_min 60 at signals.step "
                                          r"1m sees 59: a node started for a rise would be ready after it; no "
                                          r"horizon_min \(at most 240\) reaches that, or check that the lead time is "
                                          r"in minutes"):
        load_policy(write(tmp_path, seconds))
    long = BASE.replace("spot: {price_per_hour: 1, lead_time: {mean_min: 5}}",
                        "spot: {price_per_hour: 1, lead_time: {mean_min: 50, spread_min: 10}}")
    with pytest.raises(PolicyError, match=r"classes.spot.lead_time plans 70 minutes ahead .*raise "
                                          r"planning.horizon_min to 71"):
        load_policy(write(tmp_path, long))
    assert load_policy(write(tmp_path, long + "planning: {horizon_min: 71}\n")).planning.horizon_min == 71
    assert load_policy(write(tmp_path, long + "spot: {max_share: 0}\n")).spot.max_share == 0
    huge = BASE.replace("lead_time: {mean_min: 5}}", "lead_time: {mean_min: 5, spread_min: 1e308}}")
    with pytest.raises(PolicyError, match="lead_time.spread_min: Input should be less than or equal to 10080"):
        load_policy(write(tmp_path, huge))  # (twice it overflowed the check above: an OverflowError)


def test_a_billing_block_past_a_month_is_refused(tmp_path):
    block = BASE.replace("on_demand: {price_per_hour: 3, lead_time: {mean_min: 5}}",
                         "on_demand: {price_per_hour: 3, lead_time: {mean_min: 5}, billing_min: 1000000000000000}")
    with pytest.raises(PolicyError, match="classes.on_demand.billing_min: Input should be less than or equal to 43200"):
        load_policy(write(tmp_path, block))  # (a replay asked for 7 PiB of minutes)


def test_capacity_needs_exactly_one_sizing(tmp_path):
    with pytest.raises(PolicyError, match="capacity: set exactly one of rps_per_node or peak_nodes"):
        load_policy(write(tmp_path, BASE.replace("{rps_per_node: 5}", "{rps_per_node: 5, peak_nodes: 3}")))


def test_broken_yaml_names_the_line(tmp_path):
    with pytest.raises(PolicyError, match=r"p.yaml:3: not valid YAML"):
        load_policy(write(tmp_path, "service: s\ncapacity: {rps_per_node: 5\nclasses: [\n"))
    with pytest.raises(PolicyError, match="expected a mapping"):
        load_policy(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(PolicyError, match=r"p.yaml: the file is empty \(a policy needs service, capacity and classes\)"):
        load_policy(write(tmp_path, "# nothing yet\n"))
    with pytest.raises(PolicyError, match="no such file"):
        load_policy(tmp_path / "missing.yaml")


def test_a_key_written_twice_is_refused_not_overridden(tmp_path):
    # Plain YAML keeps the last of two equal keys; a second headroom pasted further down must not win unseen.
    text = BASE + "planning:\n  headroom: 0.3\n  quantile: q90\n  headroom: 0.5\n"
    lines = text.splitlines()
    first, second = (i + 1 for i, line in enumerate(lines) if line.strip().startswith("headroom:"))
    with pytest.raises(PolicyError, match=rf"p.yaml:{second}: not valid YAML \(duplicate key 'headroom' "
                                          rf"\(first on line {first}\)\)"):
        load_policy(write(tmp_path, text))
    # The same key in two different mappings is fine.
    policy = load_policy(write(tmp_path, BASE + "planning: {headroom: 0.5}\nlimits: {max_nodes: 9}\n"))
    assert policy.planning.headroom == 0.5 and policy.limits.max_nodes == 9


def test_with_changes_validates_again(tmp_path):
    policy = load_policy(write(tmp_path, BASE))
    assert policy.with_changes(planning={"headroom": 0.5}).planning.headroom == 0.5
    assert policy.planning.headroom == 0.3  # frozen: the original is unchanged
    with pytest.raises(Exception, match="headroom"):
        policy.with_changes(planning={"headroom": -1})


def test_load_policies_reports_every_problem_by_file(tmp_path):
    (tmp_path / "a.yaml").write_text(BASE)
    (tmp_path / "b.yaml").write_text(BASE)  # the same service again
    (tmp_path / "c.yaml").write_text(BASE.replace("service: s", "service: t") + "planing: {}\nslo: {latency_ms: 0}\n")
    (tmp_path / "d.yaml").write_text(BASE.replace("service: s", "service: u")
                                     + "kubernetes: {workloads: {reserved: r, on_demand: o}}\n")
    (tmp_path / "notes.txt").write_text("not a policy")
    files = policy_files([tmp_path])
    assert [p.name for p in files] == ["a.yaml", "b.yaml", "c.yaml", "d.yaml"]
    policies, problems = load_policies(files)
    assert sorted(p.name for p in policies) == ["a.yaml", "b.yaml", "d.yaml"]
    assert {p.name for p in problems} == {"b.yaml", "c.yaml"}
    assert problems[tmp_path / "b.yaml"] == [f"{tmp_path / 'b.yaml'}: service 's' is also the service of "
                                             f"{tmp_path / 'a.yaml'}"]
    (refused,) = problems[tmp_path / "c.yaml"]
    assert "planing: unknown key" in refused and "slo.latency_ms: Input should be greater than 0" in refused
    _, problems = load_policies(files, backend="kubernetes")
    assert any("d.yaml: kubernetes.workloads has no Deployment for spot" in m for m in problems[tmp_path / "d.yaml"])
    assert any("has no Deployment for on_demand, reserved, spot" in m for m in problems[tmp_path / "a.yaml"])


def test_the_shipped_schema_is_current_and_checks_what_the_loader_checks():
    """configs/policy.schema.json is what the code generates (regenerate: peakpilot check-policy --schema),
    the shipped policies pass it, and it refuses a misspelt key and an out-of-range value as the loader does."""
    shipped = json.loads((ROOT / "configs" / "policy.schema.json").read_text())
    assert shipped == policy_schema()
    validator = jsonschema.Draft202012Validator(shipped)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert path.read_text().startswith("# yaml-language-server: $schema=policy.schema.json\n")
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path
    base = yaml.safe_load(BASE)
    assert list(validator.iter_errors({**base, "planing": {}}))
    assert list(validator.iter_errors({**base, "spot": {"max_share": 1.5}}))


def test_a_selector_of_several_labels_matches_all_of_them_and_a_broken_one_is_named(tmp_path):
    """--selector as kubectl's -l writes equality: key=value, several joined by commas, all of them to match."""
    from controller.policy import parse_selector, selected

    policy = load_policy(write(tmp_path, BASE + "labels: {team: chat, tier: gold}\n"))
    assert selected(policy, "team=chat") and selected(policy, "team=chat, tier=gold") and selected(policy, None)
    assert not selected(policy, "team=chat,tier=silver") and not selected(policy, "team=search")
    assert parse_selector("team=chat,tier=gold") == {"team": "chat", "tier": "gold"}
    for bad in ("team", "team=chat,,", "=chat"):
        with pytest.raises(ValueError, match=r"is no key=value \(a selector is key=value\[,key=value...\]\)"):
            parse_selector(bad)

