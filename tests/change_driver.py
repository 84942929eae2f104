"""Verifies archives while changing them at a chosen moment of the run (for the tests).

Run as a script, so that a run that hangs is bounded by the test's timeout:
``python change_driver.py CASES_JSON`` where each case is
``{"archive", "state", "kind", "at", "other"}``: ``kind`` is how the archive changes
(replace, rewrite, append, truncate, touch, none), ``kill-workers`` (SIGKILL the pool's
processes) or ``interrupt`` (SIGINT), ``at`` the fraction of the run's progress at which it happens (0 = at its first
report). ``before`` lists archives verified first in the same drill. Prints one JSON line per case.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys

MiB = 1024 * 1024


def change(path: str, kind: str, other: str | None) -> None:
    size = os.path.getsize(path)
    if kind == "replace":  # another archive renamed over it, as a backup job's upload does
        shutil.copyfile(other, path + ".new")
        os.rename(path + ".new", path)
    elif kind == "rewrite":  # new bytes in place, same size, mtime put back: only ctime tells
        before = os.stat(path)
        with open(path, "r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(4096))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif kind == "append":
        with open(path, "ab") as f:
            f.write(os.urandom(3 * MiB))
    elif kind == "truncate":
        os.truncate(path, size // 2)
    elif kind == "touch":
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif kind == "interrupt":  # as Ctrl-C would: the drill stops cleanly, resumable
        os.kill(os.getpid(), signal.SIGINT)
    elif kind == "kill-workers":
        for pid in grandchildren(os.getpid()):  # the pool's workers live under the forkserver
            os.kill(pid, signal.SIGKILL)
    elif kind != "none":
        raise ValueError(kind)


def grandchildren(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    return [g for c in children.get(pid, []) for g in children.get(c, [])]


def run_case(case: dict) -> dict:
    from archcheck import api

    fired = []

    size = os.path.getsize(case["archive"])

    def on_progress(done: int, total: int) -> None:
        if not fired and total == size and done / total >= case["at"]:
            fired.append(done / total)
            change(case["archive"], case["kind"], case.get("other"))

    result = api.run_drill([*case.get("before", []), case["archive"]], state=case["state"],
                           on_progress=on_progress, segment_size=8 * MiB, workers=2)
    findings = [f for _, v in result.verifications if v is not None for f in v.findings] + result.findings
    sealed = os.path.join(case["state"], "reports", f"{result.drill.id}.json")
    sealed_report = json.load(open(sealed)) if os.path.exists(sealed) else None
    return {"case": case, "fired": fired, "exit": int(result.exit_code), "verdict": result.verdict,
            "statuses": [e.status for e in result.drill.archives], "drill": result.drill.status,
            "notes": [e.note for e in result.drill.archives],
            "findings": [(f.code, f.category.value, dict(f.details)) for f in findings],
            "sealed": sealed_report and {"verdict": sealed_report["verdict"],
                                         "codes": [f["code"] for a in sealed_report["archives"]
                                                   for f in a.get("findings", [])]}}


if __name__ == "__main__":
    for case in json.loads(sys.argv[1]):
        print(json.dumps(run_case(case)), flush=True)
