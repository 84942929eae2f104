#!/usr/bin/env python3
"""Benchmark what resumable drills cost: a kill + resume, and the periodic manifest saves.

Usage:
    python3 bench/bench_resume.py [--archive PATH.tar.zst] [--rounds 3] [--kills 1] [--size-gb 1.8]

Archive: --archive, else run_bench.py's multi-frame bench/work/bench.multi.tar.zst if present,
else a synthetic tar of about --size-gb GB (half random, half text files, sizes log-uniform
from 512 B to 16 MiB), built once with GNU tar and `pzstd -p 2 -3` into bench/work/resume/.

Each round runs, in an order that rotates each round (the first round starts with "default"):
  default     `archcheck verify` uninterrupted, fresh state dir (ARCHCHECK_SAVE_INTERVAL unset: 0.5 s)
  kill+resume the same verify, its whole process tree SIGKILLed at a random point in 30-70 % of
              the default runs' median time so far, then `archcheck resume` until it exits 0.
              With --kills K each of the first K processes is killed after that point / K.
              Its time is the sum of all the processes' wall times.
  no-save     default with ARCHCHECK_SAVE_INTERVAL=1e9 (no periodic manifest saves or checkpoints)
  save 0.25s  default with ARCHCHECK_SAVE_INTERVAL=0.25
Every run's final result (the verdict line, member count and `root blake3-tree:` line) must equal
the first default run's; any difference or failed run exits 1. Target FAILs are results, not errors.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proctree import descendants  # noqa: E402
from run_bench import BUSY_LIMIT, GB, MULTI, busy_cpus, check, default_archcheck, say, tail  # noqa: E402

WORK = HERE / "work"
SYNTH = WORK / "resume" / "synthetic.tar.zst"
TARGET = 0.05  # at most 5 % extra wall time
KILL_WINDOW = (0.3, 0.7)
MAX_RESUMES = 10
MODES = {  # name: ARCHCHECK_SAVE_INTERVAL (None: unset, the default 0.5 s)
    "default": None, "kill+resume": None, "no-save": "1e9", "save 0.25s": "0.25"}
WORDS = ("backup restore archive segment frame member checksum tree verify drill manifest resume the "
         "of and to in is that for it with as was on be by at this from or have an they which").split()


# --- synthetic archive ---------------------------------------------------------------------------

def build_synthetic(out: Path, size_gb: float) -> None:
    """Random and text files (text sliced from a 64 MiB pool: beyond zstd -3's window, so it
    compresses like text, not like repeats), tarred and compressed multi-frame."""
    src, tar = out.parent / "src", out.parent / "synthetic.tar"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    rng = random.Random(42)
    pool = " ".join(rng.choices(WORDS, k=12_000_000)).encode()[:64 << 20]
    total, n, target = 0, 0, int(size_gb * GB)
    say(f"build: synthetic files, ~{size_gb} GB in {src} ...")
    while total < target:
        size = min(int(2 ** rng.uniform(9, 24)), target - total)
        if n % 2:
            at = rng.randrange(len(pool) - size)
            data = pool[at:at + size]
        else:
            data = os.urandom(size)
        path = src / f"d{n % 37:02d}" / f"f{n:05d}.{'txt' if n % 2 else 'bin'}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        total, n = total + size, n + 1
    say(f"build: {n} files, {total / GB:.2f} GB; tar + pzstd -p 2 -3 ...")
    check(["tar", "-cf", tar, "--format=gnu", "-C", src, "."], "tar")
    partial = out.with_name(out.name + ".partial")
    check(["pzstd", "-q", "-f", "-p", "2", "-3", tar, "-o", partial], "pzstd")
    partial.rename(out)  # only a complete archive carries the final name
    tar.unlink()
    shutil.rmtree(src)


def choose_archive(args: argparse.Namespace) -> Path:
    if args.archive:
        return args.archive.resolve()
    if (WORK / MULTI).exists():
        return WORK / MULTI
    if not SYNTH.exists():
        build_synthetic(SYNTH, args.size_gb)
    return SYNTH


# --- runs ----------------------------------------------------------------------------------------

def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the command and everything under it at once, as a crash or power loss would."""
    pids = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # started in its own session: the forkserver and workers too
    for pid in pids:  # any that left the process group
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run(cmd: list[str], env: dict, kill_after: float | None = None) -> dict:
    """Wall seconds, exit code and output of one process; SIGKILLed after ``kill_after`` s if given."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        killed = False
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            killed = True
        wall = time.perf_counter() - start
        out.seek(0)
        return {"wall_s": wall, "exit": proc.returncode, "killed": killed, "output": out.read().decode(errors="replace")}


def result_of(output: str) -> tuple[str | None, str | None, str | None]:
    """(verdict line, member count, tree root) as printed; None where a line is missing."""
    def find(pattern: str) -> str | None:
        m = re.search(pattern, output, re.M)
        return m.group(1).strip() if m else None
    return find(r"^(verdict .*)$"), find(r"^archive .*?([\d,]+) members"), find(r"^root\s+(blake3-tree:\S+)")


def one(mode: str, archcheck: str, archive: Path, state: Path, r: int, kill_at: float | None, kills: int) -> dict:
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    env = dict(os.environ)
    env.pop("ARCHCHECK_SAVE_INTERVAL", None)
    if MODES[mode] is not None:
        env["ARCHCHECK_SAVE_INTERVAL"] = MODES[mode]
    drill = f"bench-{r + 1}-{mode.replace(' ', '').replace('+', '-').replace('.', '')}"
    common = ["--no-progress", "--state-dir", str(state)]
    cmd = [archcheck, "verify", str(archive), "--drill", drill, *common]
    procs = []
    while True:
        after = kill_at / kills if kill_at is not None and len(procs) < kills else None
        p = run(cmd, env, after)
        procs.append(p)
        if p["killed"] or (p["exit"] == 3 and len(procs) <= MAX_RESUMES):  # 3: incomplete, resumable
            cmd = [archcheck, "resume", drill, *common]
            continue
        break
    last = procs[-1]
    return {"mode": mode, "round": r, "wall_s": sum(p["wall_s"] for p in procs), "exit": last["exit"],
            "processes": len(procs), "killed": sum(p["killed"] for p in procs),
            "result": result_of(last["output"]), "output_tail": tail(last["output"], 1500)}


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, help="an existing .tar.zst (default: see above)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=1, help="SIGKILLs per kill+resume run")
    parser.add_argument("--size-gb", type=float, default=1.8, help="synthetic archive size, when one is built")
    parser.add_argument("--seed", type=int, help="for the kill points (default: random)")
    parser.add_argument("--archcheck", default=default_archcheck())
    args = parser.parse_args()
    if not args.archcheck:
        sys.exit("archcheck not found: install it (pip install -e .) or pass --archcheck")
    archive = choose_archive(args)
    rng = random.Random(args.seed)
    say(f"archive: {archive} ({archive.stat().st_size / GB:.2f} GB)", f"archcheck: {args.archcheck}")
    check(["cat", archive], "warming the page cache")

    names, runs, errors, busy = list(MODES), [], [], []
    reference = None
    with tempfile.TemporaryDirectory(prefix="archcheck-bench-resume-") as tmp:
        state = Path(tmp) / "state"
        for r in range(args.rounds):
            busy.append(busy_cpus())
            if busy[-1] > BUSY_LIMIT:
                say(f"!!! round {r + 1}: the machine is busy with other work ({busy[-1]:.1f} CPUs)")
            shift = r % len(names)
            for mode in names[shift:] + names[:shift]:
                kill_at = None
                if mode == "kill+resume":
                    base = statistics.median(x["wall_s"] for x in runs if x["mode"] == "default" and x["exit"] == 0)
                    kill_at = rng.uniform(*KILL_WINDOW) * base
                x = one(mode, args.archcheck, archive, state, r, kill_at, args.kills)
                runs.append(x)
                if reference is None and mode == "default" and x["exit"] == 0 and None not in x["result"]:
                    reference = x["result"]
                note = f", killed at {kill_at:.1f}s, {x['processes']} processes" if kill_at else ""
                say(f"  round {r + 1} {mode:<12} {x['wall_s']:7.2f}s exit {x['exit']}{note}")
                if x["exit"] != 0 or None in x["result"] or x["result"] != reference:
                    errors.append(x)
                    say(f"!!! {mode} round {r + 1}: exit {x['exit']}, result {x['result']} "
                        f"(expected {reference})\n{x['output_tail']}")
                if mode == "kill+resume" and x["killed"] < args.kills:
                    say(f"  (only {x['killed']} of {args.kills} kills landed: a process ended first)")

    med = {m: statistics.median([x["wall_s"] for x in runs if x["mode"] == m and x["exit"] == 0] or [float("nan")])
           for m in names}
    say("", f"reference result: {reference}", "", f"{'mode':<12} {'median s':>9}  all runs s")
    for m in names:
        walls = ", ".join(f"{x['wall_s']:.2f}" for x in runs if x["mode"] == m)
        say(f"{m:<12} {med[m]:9.2f}  {walls}")
    say("", "overheads (ratio of medians - 1):")
    for label, num, den, limit in (
            (f"kill+resume ({args.kills} kill) vs uninterrupted", "kill+resume", "default", TARGET),
            ("manifest saves 0.5 s (default) vs none", "default", "no-save", TARGET),
            ("manifest saves 0.25 s vs none", "save 0.25s", "no-save", None)):
        extra = med[num] / med[den] - 1
        verdict = "reference" if limit is None else ("PASS" if extra < limit and not errors else "FAIL")
        say(f"  {label:<42} {100 * extra:+6.1f} %  {'target < 5 %' if limit else '':<13} {verdict}")
    # what a kill costs does not grow with the archive: the work since the last save (at most the
    # save interval) plus start-up; so the ratio falls with the drill's length
    lost = med["kill+resume"] - med["default"]
    say(f"  kill+resume extra time {lost:.2f} s per kill: {100 * lost / 3600:.2f} % of a 1-hour drill, "
        f"{100 * lost / 60:.1f} % of a 1-minute one")
    if max(busy, default=0) > BUSY_LIMIT:
        say(f"!!! other work ran before some rounds (CPUs busy: {', '.join(f'{b:.1f}' for b in busy)})")
    if errors:
        say("", f"!!! {len(errors)} run(s) FAILED or gave a different result: " +
            ", ".join(f"{x['mode']} round {x['round'] + 1}" for x in errors))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
