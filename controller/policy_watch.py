"""The policy folders a daemon runs from, looked at before every cycle: services come and go with files.

``peakpilot run --policy FOLDER`` (a mounted ConfigMap in a pod) runs every ``*.yaml`` in it. A file
that appears while the daemon runs starts a service; a file that disappears stops it being run (its
nodes are left as they are: deleting a policy is not an order to scale to zero). A new file that is
refused is said once per version of the file, not every cycle (one that names a service another file
runs, again when the services run change). Changes to a file already running are the service's own to
reload (``ServiceController.reload_policy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.policy import Policy, PolicyError, backend_problems, load_policy


@dataclass
class PolicyChanges:
    added: list[tuple[Path, Policy]] = field(default_factory=list)  # start these services
    removed: list[Path] = field(default_factory=list)  # stop running these
    refused: list[tuple[Path, str]] = field(default_factory=list)  # new files refused (or changed and still refused)
    forgotten: list[Path] = field(default_factory=list)  # refused files since deleted or left to another daemon


class PolicyWatch:
    def __init__(self, folders, backend: str = "simulated", selects=lambda policy: True):
        self.folders = [Path(f) for f in folders if Path(f).is_dir()]
        self.backend = backend
        self.selects = selects  # whether this daemon runs a policy's service (ServiceParts.selects)
        # file -> (its mtime, the services run then) when last refused or left to another daemon: looked at
        # again when either changes (a file refused for naming a running service may start once that goes);
        # None for the services: looked at again only when the file changes
        self._passed: dict[Path, tuple[float, tuple[str, ...] | None]] = {}
        self._refused: set[Path] = set()

    def files(self) -> set[Path]:
        return {p for folder in self.folders for p in folder.glob("*.yaml")}

    def scan(self, running: dict[Path, str]) -> PolicyChanges:
        """What changed in the folders, given the services run now (file -> service name)."""
        changes = PolicyChanges()
        if not self.folders:
            return changes
        present = self.files()
        changes.removed = sorted(p for p in running if p.parent in self.folders and p not in present)
        for path in sorted(self._refused - present):
            self._refused.discard(path)
            changes.forgotten.append(path)
        for path in list(self._passed):
            if path not in present:
                del self._passed[path]
        names = {name: path for path, name in running.items() if path not in changes.removed}
        for path in sorted(present - set(running)):
            try:
                mtime = path.stat().st_mtime
            except OSError:  # gone between the listing and now
                continue
            passed = self._passed.get(path)
            if passed and passed[0] == mtime and passed[1] in (None, tuple(sorted(names))):
                continue
            self._passed[path] = (mtime, None)
            try:
                policy = load_policy(path)
            except PolicyError as exc:
                self._refuse(changes, path, str(exc))
                continue
            if not self.selects(policy):  # another daemon's service: not refused, not this one's to run
                if path in self._refused:
                    self._refused.discard(path)
                    changes.forgotten.append(path)
                continue
            problems = backend_problems(path, policy, self.backend)
            if policy.service in names:
                self._passed[path] = (mtime, tuple(sorted(names)))
                problems.append(f"{path}: service {policy.service!r} is also the service of {names[policy.service]}")
            if problems:
                self._refuse(changes, path, "; ".join(problems))
                continue
            del self._passed[path]
            self._refused.discard(path)
            names[policy.service] = path
            changes.added.append((path, policy))
        return changes

    def refuse(self, path: Path) -> None:
        """A file that loaded but whose service could not be built (say, a trace it needs is missing):
        passed over until it changes, as a refused one."""
        try:
            self._passed[path] = (path.stat().st_mtime, None)
        except OSError:
            pass
        self._refused.add(path)

    def _refuse(self, changes: PolicyChanges, path: Path, reason: str) -> None:
        self._refused.add(path)
        changes.refused.append((path, reason))
