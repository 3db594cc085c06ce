"""Render ``deploy/policy-configmap.yaml`` from ``configs/policy.yaml``, so that the policy a cluster
runs is the documented default and cannot drift from it (``tests/test_deploy.py`` checks the two agree).

Two keys differ on a cluster, and only those are changed: capacity is measured there (``rps_per_node``,
from ``peakpilot profile``) where a replay sizes it by the trace's peak (``peak_nodes``), and history and
live load come from the cluster's Prometheus instead of the sample trace.

Usage: ``python deploy/render_policy_configmap.py > deploy/policy-configmap.yaml`` (``make configmap``)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "configs" / "policy.yaml"
SERVICE_KEY = "llm-chat.yaml"
RPS_PER_NODE = 12.0
PROMETHEUS = "http://prometheus.monitoring:9090"

# (pattern of the one line to replace, its replacement): a changed default layout fails loudly here.
CLUSTER_LINES = (
    (r"^  peak_nodes: .*$", f"  rps_per_node: {RPS_PER_NODE}  # measure with `peakpilot profile`"),
    (r"^  prometheus: null( +)#", f"  prometheus: {PROMETHEUS}   #"),
)

HEADER = """\
# The policy files, one key per service (mounted at /etc/peakpilot). Generated from configs/policy.yaml
# by deploy/render_policy_configmap.py (`make configmap`): edit the default there, or add your own
# services' keys here. Set rps_per_node from `peakpilot profile` and signals.prometheus for your cluster.
"""


def cluster_policy(text: str) -> str:
    """The default policy as a cluster runs it: measured capacity and Prometheus signals."""
    for pattern, replacement in CLUSTER_LINES:
        text, count = re.subn(pattern, lambda m: replacement, text, count=1, flags=re.MULTILINE)
        if count != 1:
            raise SystemExit(f"{SOURCE}: no line matches {pattern!r}; update {Path(__file__).name}")
    return text


def render(text: str) -> str:
    body = "".join(f"    {line}".rstrip() + "\n" for line in cluster_policy(text).splitlines())
    return (HEADER + "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: peakpilot-policy\n"
            f"  namespace: inference\ndata:\n  {SERVICE_KEY}: |\n{body}")


if __name__ == "__main__":
    sys.stdout.write(render(SOURCE.read_text()))
