"""The layering of shared/design.md holds: `lint-imports` keeps every contract in pyproject.toml.

The second test breaks a copy of the tree on purpose, so the contracts are shown to catch what they
are there to catch (an upward import; the cycle reaching for the cluster).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("peakpilot", "dashboard", "controller", "forecaster", "inference_node")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
         "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 8 kept, 0 broken." in result.stdout


def test_an_upward_import_and_a_cycle_that_reaches_the_cluster_break_their_contracts(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "forecaster" / "history.py", "a") as f:
        f.write("\n\ndef _upward():\n    from controller.store import Store  # noqa: F401\n")
    with open(tmp_path / "controller" / "cycle.py", "a") as f:
        f.write("\n\nimport kubernetes  # noqa: E402,F401\n")
    with open(tmp_path / "peakpilot" / "cli" / "forecast_commands.py", "a") as f:  # one part's commands on another's
        f.write("\n\nfrom peakpilot.cli.controller_commands import replay  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = " ".join(result.stdout.split())  # contract names wrap in the report
    assert "Packages import downwards only: CLI -> dashboard -> controller -> forecaster BROKEN" in out
    assert "Decide, then act: the cycle is a function of plain data" in out and "Contracts: 4 kept, 4 broken." in out
    assert "forecaster.history -> controller.store" in out and "controller.cycle -> kubernetes" in out
    # the upward import also lets one edge of the controller reach another (signals -> store)
    assert "controller.signals is not allowed to import controller.store" in out
    assert "peakpilot.cli.forecast_commands is not allowed to import peakpilot.cli.controller_commands" in out
