"""Render ``deploy/controller-rbac.yaml`` from the policies of ``deploy/policy-configmap.yaml``: the
least-privilege RBAC of ``controller/rbac.py`` (what ``peakpilot check-policy --backend kubernetes --rbac``
prints), so that the Role cannot drift from the Deployments the deployed policy scales
(``tests/test_deploy.py`` checks they agree, and that the Role allows every request of a leader).

Usage: ``python deploy/render_rbac.py > deploy/controller-rbac.yaml`` (``make manifests``)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.policy import Policy  # noqa: E402
from controller.rbac import render_rbac  # noqa: E402

SOURCE = ROOT / "deploy" / "policy-configmap.yaml"


def render(text: str) -> str:
    configmap = yaml.safe_load(text)
    policies = [Policy.model_validate(yaml.safe_load(body)) for _, body in sorted(configmap["data"].items())]
    return render_rbac(policies, how="python deploy/render_rbac.py (make manifests), from the policies of "
                                     "deploy/policy-configmap.yaml")


if __name__ == "__main__":
    sys.stdout.write(render(SOURCE.read_text()))
