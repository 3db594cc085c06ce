"""A wheel install (``pip install peakpilot``, not editable) finds the default policy and the sample trace.

From a checkout they sit beside the packages; a wheel installs them under <prefix>/share/peakpilot.
The test builds the wheel from a copy of the project's files, installs it into a fresh virtual
environment (the dependencies come from this one through a .pth line, so nothing is downloaded and
this environment's own install is left alone), and runs the installed ``peakpilot`` from elsewhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from controller import shipped

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in [p.rstrip("*") for p in PACKAGES] + ["configs", "data"]:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(src)], check=True, capture_output=True, text=True)
    (found,) = out.glob("peakpilot-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.run([venv / "bin" / "python", "-c", purelib], check=True, capture_output=True,
                               text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, text=True)
    return venv


def test_the_wheel_carries_every_policy_the_alerting_rules_the_sample_trace_and_the_license(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    share = [n.split("/data/share/peakpilot/", 1)[1] for n in names if "/data/share/peakpilot/" in n]
    expected = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    expected += ["configs/policy.schema.json", "configs/prometheus/peakpilot-rules.yml",
                 "configs/prometheus/prometheus.yml"]
    expected += [str(shipped.SAMPLE_TRACE.relative_to(ROOT)), "data/README.md"]
    assert sorted(share) == sorted(expected)


def test_an_installed_wheel_runs_on_its_own_defaults(installed, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([installed / "bin" / "python", "-c", "import controller.shipped as s; "
                            "print(s.__file__); print(s.DEFAULT_POLICY); print(s.SAMPLE_TRACE)"],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(installed) for p in where), where  # not this checkout
    assert Path(where[1]) == installed / "share" / "peakpilot" / "configs" / "policy.yaml"

    args = ["recommend-reserved", "--json"]
    from_wheel = subprocess.run([installed / "bin" / "peakpilot", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
    assert from_wheel.returncode == 0, from_wheel.stderr
    from_checkout = subprocess.run([sys.executable, "-m", "peakpilot.cli", *args], cwd=ROOT, check=True,
                                   capture_output=True, text=True)
    assert json.loads(from_wheel.stdout) == json.loads(from_checkout.stdout)


def test_a_checkout_uses_its_own_files_and_runs_folder():
    assert shipped.shipped_root() == ROOT and shipped.is_checkout()
    assert shipped.DEFAULT_POLICY == ROOT / "configs" / "policy.yaml"
    assert shipped.default_runs_dir() == ROOT / "runs"
