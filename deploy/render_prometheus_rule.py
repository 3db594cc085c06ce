"""Render ``deploy/monitoring/prometheus-rule.yaml`` from ``configs/prometheus/peakpilot-rules.yml``: the
same alerting rules as a Prometheus Operator ``PrometheusRule``, so the two cannot drift
(``tests/test_deploy.py`` checks they agree).

Usage: ``python deploy/render_prometheus_rule.py > deploy/monitoring/prometheus-rule.yaml`` (``make manifests``)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "configs" / "prometheus" / "peakpilot-rules.yml"

HEADER = """\
# peakpilot's alerting rules for a Prometheus run by the Prometheus Operator. Generated from
# configs/prometheus/peakpilot-rules.yml by deploy/render_prometheus_rule.py (`make manifests`): edit the
# rules there. Your Prometheus loads only the rules its ruleSelector matches: kube-prometheus-stack's
# default wants the label release: <its Helm release name>, so set that label below if it differs.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: peakpilot
  namespace: inference
  labels: {app.kubernetes.io/name: peakpilot, release: prometheus}
spec:
"""


def render(text: str) -> str:
    """The rules file's ``groups:`` and everything after it, indented under ``spec:`` (comments and the
    folded descriptions kept as written)."""
    start = text.find("\ngroups:")
    if start < 0:
        raise SystemExit(f"{SOURCE}: no top-level `groups:`")
    body = text[start + 1:]
    return HEADER + "".join(f"  {line}".rstrip() + "\n" for line in body.splitlines())


if __name__ == "__main__":
    sys.stdout.write(render(SOURCE.read_text()))
