"""Render ``deploy/monitoring/grafana-dashboard.yaml`` from ``configs/grafana/peakpilot-dashboard.json``: the
Grafana dashboard as a ConfigMap that Grafana's dashboard sidecar (kube-prometheus-stack's) loads, so the two
cannot drift (``tests/test_deploy.py`` checks they agree).

Usage: ``python deploy/render_grafana_dashboard.py > deploy/monitoring/grafana-dashboard.yaml`` (``make
manifests``)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "configs" / "grafana" / "peakpilot-dashboard.json"

HEADER = """\
# peakpilot's Grafana dashboard, for the dashboard sidecar of kube-prometheus-stack's Grafana, which loads
# every ConfigMap labelled grafana_dashboard: "1" in the namespaces it searches (its
# sidecar.dashboards.searchNamespace: set ALL, or apply this in Grafana's namespace). Generated from
# configs/grafana/peakpilot-dashboard.json by deploy/render_grafana_dashboard.py (`make manifests`): edit
# the dashboard there, or import that file by hand (Dashboards > New > Import).
apiVersion: v1
kind: ConfigMap
metadata:
  name: peakpilot-grafana-dashboard
  namespace: inference
  labels: {app.kubernetes.io/name: peakpilot, grafana_dashboard: "1"}
data:
  peakpilot.json: |
"""


def render(text: str) -> str:
    """The dashboard's JSON (checked to be JSON), as the ConfigMap's one key."""
    try:
        json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"{SOURCE}: not JSON: {exc}") from None
    return HEADER + "".join(f"    {line}".rstrip() + "\n" for line in text.strip().splitlines())


if __name__ == "__main__":
    sys.stdout.write(render(SOURCE.read_text()))
