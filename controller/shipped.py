"""Where the files peakpilot ships beside its code are: ``configs/`` (the policies) and ``data/`` (the sample trace).

The design keeps them at the top of the project, next to the packages, which is where a checkout and
an editable install find them. A wheel cannot put files beside site-packages, so ``pyproject.toml``
installs them as data files under ``<prefix>/share/peakpilot``, the prefix being the one the packages
went into (a virtual environment, ``--user``, ``--prefix``): the packages' own location is searched
first, so it is found whichever prefix pip chose.
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path

# The directory that holds the packages: the checkout's root, or site-packages in a wheel install.
PACKAGES_DIR = Path(__file__).resolve().parent.parent
SHARE = Path("share") / "peakpilot"


def _candidates() -> list[Path]:
    roots = [PACKAGES_DIR]
    # <prefix>/lib/pythonX.Y/site-packages (POSIX) or <prefix>/Lib/site-packages (Windows) -> <prefix>/share/peakpilot
    roots += [PACKAGES_DIR.parents[n] / SHARE for n in (2, 1) if len(PACKAGES_DIR.parents) > n]
    roots.append(Path(sysconfig.get_path("data")) / SHARE)  # this interpreter's prefix
    return roots


@functools.cache
def shipped_root() -> Path | None:
    """The first place that holds ``configs/policy.yaml``: a checkout, or a wheel's data files (looked up
    once per process)."""
    for root in _candidates():
        if (root / "configs" / "policy.yaml").is_file():
            return root
    return None


def is_checkout() -> bool:
    """Whether the packages run from a checkout (or an editable install of one)."""
    return shipped_root() == PACKAGES_DIR


def shipped(relative: str) -> Path:
    """A shipped file by its path in the project (``configs/policy.yaml``). Where none is installed, the
    path beside the packages, so the error a user sees names the file that is missing."""
    return (shipped_root() or PACKAGES_DIR) / relative


DEFAULT_POLICY = shipped("configs/policy.yaml")
SAMPLE_TRACE = shipped("data/servegen_llm_m_small.csv")


def default_runs_dir() -> Path:
    """Where the demo's store goes: ``runs/`` in the checkout, or in the working directory otherwise."""
    return (PACKAGES_DIR if is_checkout() else Path.cwd()) / "runs"
