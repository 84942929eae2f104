"""The process tree under a pid, read from /proc: its members and their summed RSS.
archcheck runs a forkserver and worker processes, so a command's memory is the whole tree's."""
from __future__ import annotations

import os


def _tree() -> tuple[dict[int, list[int]], dict[int, int]]:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        children.setdefault(int(fields["PPid"]), []).append(int(entry))
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    return children, rss


def descendants(root: int) -> list[int]:
    children, _ = _tree()
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def tree_rss(root: int) -> int:
    """Summed VmRSS of ``root`` and all its descendants, in bytes."""
    children, rss = _tree()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class TreeSampler:
    """Summed VmRSS of ``root``'s tree, cheap enough to poll every few milliseconds.

    Reading every /proc/*/status on each poll costs milliseconds of CPU, which on a small machine
    is taken from the command being measured. A pid's parent is read once, when the pid is first
    seen; only the tree's own members then have their VmRSS read."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._parent: dict[int, int] = {}

    def members(self) -> list[int]:
        live = {int(e) for e in os.listdir("/proc") if e.isdigit()}
        for pid in self._parent.keys() - live:  # gone: forget it, its pid may be reused
            del self._parent[pid]
        for pid in live - self._parent.keys():
            ppid = _ppid(pid)
            if ppid is not None:
                self._parent[pid] = ppid
        children: dict[int, list[int]] = {}
        for pid, ppid in self._parent.items():
            children.setdefault(ppid, []).append(pid)
        found, stack = [], [self.root]
        while stack:
            pid = stack.pop()
            found.append(pid)
            stack.extend(children.get(pid, []))
        return found

    def rss(self) -> int:
        return sum(_vmrss(pid) for pid in self.members())


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])  # the name may hold spaces or ")"
    except (OSError, IndexError, ValueError):
        return None


def _vmrss(pid: int) -> int:
    """VmRSS in bytes; 0 for a process that is gone or a zombie (no memory left)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
