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
