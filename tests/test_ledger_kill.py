"""SIGKILL a process that is sealing reports, at random instants, fifty times over: the ledger must
never look tampered with, the next seal must always succeed, and repair must leave it whole."""
from __future__ import annotations

import collections
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from archcheck.ledger import repair_ledger, seal_report, verify_ledger

KILLS = 50
PAUSE = 0.010  # seconds between the two halves of the child's ledger line: the window for a tear

# Seals drill-<n>, drill-<n+1>, ... until killed, each report's bytes first kept in the drill folder
# as the runner does. Only here, never in the library: the ledger line is written in two halves
# with a pause between, so that many kills land in the middle of an append.
CHILD = r'''
import json, os, sys, time
from pathlib import Path

from archcheck.ledger import seal_report

root, n, pause = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
real_write = os.write


def write_in_two(fd, data):
    if not data.startswith(b'{"seq":'):
        return real_write(fd, data)
    half = len(data) // 2
    first = real_write(fd, data[:half])
    time.sleep(pause)
    return first + real_write(fd, data[half:])


os.write = write_in_two


def keep(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


print("ready", flush=True)
while True:
    drill = f"drill-{n}"
    data = json.dumps({"drill": drill, "status": "complete", "findings": []}).encode()
    keep(root / "drills" / drill / "sealed-report.json", data)
    seal_report(root, drill, data)
    n += 1
'''


def next_number(root: Path) -> int:
    drills = root / "drills"
    taken = [int(p.name.split("-")[1]) for p in drills.iterdir()] if drills.is_dir() else []
    return max(taken, default=0) + 1


def test_kills_at_random_instants_never_look_like_tampering(tmp_path):
    rng = random.Random(20240501)
    root = tmp_path / "state"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    torn = cut_off = 0
    cut_off_before: set[str] = set()
    started = time.monotonic()
    for kill in range(KILLS):
        child = subprocess.Popen([sys.executable, str(script), str(root), str(next_number(root)), str(PAUSE)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout.readline() == b"ready\n", child.stderr.read().decode()
            time.sleep(rng.uniform(0.001, 0.030))
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(10)
            child.stdout.close()
            errors = child.stderr.read().decode()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL, errors  # killed, not failed on its own

        audit = verify_ledger(root)
        assert audit.problems == [], (kill, audit)
        tails = [c for c in audit.crashes if "an append was cut off by a crash" in c]
        seals = {c for c in audit.crashes if "its seal was cut off by a crash" in c}
        assert len(tails) <= 1 and len(tails) + len(seals) == len(audit.crashes), audit.crashes
        torn += bool(tails)
        cut_off += bool(seals - cut_off_before)
        cut_off_before = seals

        notices: list[str] = []
        entry = seal_report(root, f"parent-{kill}", json.dumps({"kill": kill}).encode(),
                            on_notice=notices.append)
        assert len(notices) == len(tails), notices
        after = verify_ledger(root)
        assert after.problems == [] and after.head == entry.hash, after
        assert not [c for c in after.crashes if "an append was cut off" in c], after.crashes

    # What the kills did, so the test cannot pass without having torn anything
    print(f"\n{KILLS} kills: {torn} tore the last ledger line, {cut_off} cut a seal off before its "
          f"entry; {time.monotonic() - started:.1f}s")
    assert torn >= 5 and cut_off >= 5, (torn, cut_off)
    assert len(list((root / "audit" / "torn").iterdir())) == torn

    result = repair_ledger(root)
    assert result.refused == [] and len(result.actions) == len(cut_off_before), result
    audit = verify_ledger(root)
    assert (audit.ok, audit.problems, audit.crashes) == (True, [], [])
    entries = [json.loads(line) for line in (root / "audit" / "ledger.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    counts = collections.Counter(e["drill"] for e in entries)
    reports = {p.name[:-len(".json")] for p in (root / "reports").iterdir() if not p.name.startswith(".")}
    assert set(counts) == reports and set(counts.values()) == {1}
    assert audit.entries == len(entries) and audit.head == entries[-1]["hash"]
