#!/usr/bin/env python3
"""Benchmark archcheck beside the reference tools on the same data, in one run.

Usage:
    python3 bench/run_bench.py [--work DIR] [--size-gb 5] [--rounds 5] [--rebuild]
    python3 bench/run_bench.py --size-gb 0.3 --rounds 2       # a quick try, under a minute
    python3 bench/run_bench.py --rounds 0                     # build the data only

build (skipped when the archives exist, unless --rebuild): a realistic archive of about
--size-gb GB, run as root (PostgreSQL tools then run as the postgres user). A PostgreSQL 15
cluster made by `initdb --data-checksums` and `pgbench -i` (30 % of the size), then system
files (/usr/share, /usr/include, /root/.pyenv, /usr/lib, taken whole while they fit, otherwise
entry by entry), tarred in place into bench.tar (GNU format), compressed to the single-frame
bench.tar.zst (`zstd -T2 -3`) and the multi-frame bench.multi.tar.zst (`pzstd -p 2 -3`).

run: the page cache is warmed, then every command runs once per round, in an order that
rotates each round. Each run's wall time and peak RSS of its whole process tree
(summed VmRSS, polled every 20 ms: archcheck's forkserver and workers count) are recorded.
Prints per-command medians, the target ratios (each computed within a round, then the median
over rounds) with PASS/FAIL, and writes everything to WORK/results.json. Only ratios from one
run compare: machines are shared and noisy, so the CPU load of other work is sampled for a
second before each round and a busy machine is reported.

Exit status 1 when any command failed (each failure is printed as it happens and again at
the end); target FAILs are results, not errors. Needs zstd, pzstd, tar, PostgreSQL 15 server
binaries in /usr/lib/postgresql/15/bin and b3sum (`apt-get install b3sum`; without it its
ratio is skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from proctree import TreeSampler  # noqa: E402

GB = 1000**3
MiB = 1024**2
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_SHARE = 0.3  # 1.5 GB of the default 5 GB
# Measured with PostgreSQL 15: tables and indexes ~15.5 MB and WAL ~13 MB per scale unit (the
# WAL stays below the default max_wal_size of 1 GB up to scale ~75).
PG_BYTES_PER_SCALE = 28.5e6
SYSTEM_ROOTS = ["usr/share", "usr/include", "root/.pyenv", "usr/lib"]
TAR, SINGLE, MULTI = "bench.tar", "bench.tar.zst", "bench.multi.tar.zst"
BLOCK = 512
FILL_SLACK = 1_000_000  # stop looking for entries that fit once this little budget is left
POLL_S = 0.02
BUSY_LIMIT = 0.2  # CPUs' worth of other work before a round that makes its numbers suspect
RSS_LIMIT = 300 * MiB
TARGETS = [  # (label, numerator, denominator, upper limit or None for reference only)
    ("archcheck single / zstd -t single", "archcheck single", "zstd -t single", 1.0),
    ("archcheck multi / zstd -t single", "archcheck multi", "zstd -t single", 0.6),
    ("pzstd -p2 -t multi / zstd -t single", "pzstd -p2 -t multi", "zstd -t single", None),
    ("archcheck raw tar / b3sum tar", "archcheck raw tar", "b3sum tar", 1.5),
]


def say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def tail(text: str | bytes, n: int = 2000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-n:].rstrip()


def check(cmd: list, what: str, ok: tuple[int, ...] = (0,), **kw) -> subprocess.CompletedProcess:
    """Run a build step; any unexpected exit code stops the build with the step's stderr."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    proc = subprocess.run([str(c) for c in cmd], stderr=subprocess.PIPE, check=False, **kw)
    if proc.returncode not in ok:
        sys.exit(f"\n!!! BUILD FAILED: {what} (exit {proc.returncode})\n"
                 f"    {shlex.join(str(c) for c in cmd)}\n{tail(proc.stderr)}")
    return proc


# --- build ---------------------------------------------------------------------------------------

def as_postgres() -> list[str]:
    # initdb refuses to run as root; the server and its files belong to postgres.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def build_postgres(pg: Path, scale: int, port: int) -> Path:
    """A cluster with data checksums filled by pgbench, then stopped cleanly (also on errors)."""
    if pg.exists():
        shutil.rmtree(pg)
    pg.mkdir(mode=0o700, parents=True)  # trust authentication: nobody else may reach the socket
    if os.geteuid() == 0:
        shutil.chown(pg, "postgres", "postgres")
    data, run_pg = pg / "pgdata", as_postgres()
    check([*run_pg, PG_BIN / "initdb", "--data-checksums", "-A", "trust", "-D", data], "initdb")
    options = (f"-c listen_addresses='' -c unix_socket_directories={shlex.quote(str(pg))} "
               f"-c unix_socket_permissions=0700 -p {port}")
    try:
        check([*run_pg, PG_BIN / "pg_ctl", "-D", data, "-o", options, "-w", "-l", pg / "pg.log",
               "start"], f"pg_ctl start (log: {pg / 'pg.log'})")
        check([*run_pg, PG_BIN / "pgbench", "-i", "-q", "-s", scale, "-h", pg, "-p", port,
               "postgres"], f"pgbench -i -s {scale}")
    finally:
        if (data / "postmaster.pid").exists():
            check([*run_pg, PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], "pg_ctl stop")
    return data


def entry_bytes(entry: os.DirEntry) -> int:
    """Bytes a non-directory entry takes in a GNU tar (hard links counted as copies: rare here)."""
    st = entry.stat(follow_symlinks=False)
    size = BLOCK + (-(-st.st_size // BLOCK) * BLOCK if entry.is_file(follow_symlinks=False) else 0)
    if len(entry.path) >= 100:  # a ././@LongLink header and the name's blocks
        size += BLOCK + -(-(len(entry.path) + 1) // BLOCK) * BLOCK
    return size


def tree_bytes(path: str, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Tar bytes and member count of the tree at ``path``; every directory's total goes to ``sizes``."""
    total, count = BLOCK, 1
    try:
        entries = list(os.scandir(path))
    except OSError:  # unreadable: tar --ignore-failed-read skips it too
        entries = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                size, n = tree_bytes(entry.path, sizes)
            else:
                size, n = entry_bytes(entry), 1
        except OSError:  # vanished meanwhile
            continue
        total, count = total + size, count + n
    sizes[path] = (total, count)
    return total, count


def pick(path: str, budget: int, sizes: dict[str, tuple[int, int]]) -> tuple[list[str], int, int]:
    """``path`` whole if it fits in ``budget``, otherwise those of its entries that fit, in name order."""
    if sizes[path][0] <= budget:
        return [path], *sizes[path]
    chosen, used, members = [], 0, 0
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if budget - used < FILL_SLACK:
            break
        if entry.path in sizes:
            paths, size, n = pick(entry.path, budget - used, sizes)
        else:
            try:
                size, n = entry_bytes(entry), 1
            except OSError:
                continue
            paths = [entry.path] if size <= budget - used else []
        if paths:
            chosen, used, members = chosen + paths, used + size, members + n
    return chosen, used, members


def choose_system_files(budget: int) -> tuple[list[str], int, int]:
    """System paths (relative to /) filling ``budget`` tar bytes, whole directories first."""
    chosen, used, members = [], 0, 0
    for rel in SYSTEM_ROOTS:
        if budget - used < FILL_SLACK or not (Path("/") / rel).is_dir():
            continue
        sizes: dict[str, tuple[int, int]] = {}
        tree_bytes(rel, sizes)
        paths, size, n = pick(rel, budget - used, sizes)
        chosen, used, members = chosen + paths, used + size, members + n
    return chosen, used, members


def frame_count(path: Path) -> int:
    out = check(["zstd", "-l", path], f"zstd -l {path.name}", stdout=subprocess.PIPE, text=True).stdout
    return int(out.splitlines()[1].split()[0])


def build(work: Path, size_gb: float, port: int) -> dict:
    started = time.monotonic()
    for name in (TAR, SINGLE, MULTI, "build.json", "results.json"):
        (work / name).unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    target = int(size_gb * GB)
    scale = max(1, round(target * PG_SHARE / PG_BYTES_PER_SCALE))
    say(f"build: PostgreSQL cluster, pgbench scale {scale} ...")
    build_postgres(work / "pg", scale, port)
    os.chdir(work / "pg")  # paths are measured as tar names them, relative to its -C directory
    pg_bytes, pg_members = tree_bytes("pgdata", {})
    say(f"build: pgdata {pg_bytes / GB:.2f} GB, {pg_members} entries; choosing system files ...")
    os.chdir("/")
    paths, sys_bytes, sys_members = choose_system_files(target - pg_bytes)
    say(f"build: system files {sys_bytes / GB:.2f} GB, ~{sys_members} entries from "
        f"{len(paths)} paths ({', '.join(paths[:6])}{', ...' if len(paths) > 6 else ''})")

    listing = work / "paths.txt"
    listing.write_bytes(b"".join(os.fsencode(p) + b"\0" for p in paths))
    partial = work / (TAR + ".partial")
    say("build: tar ...")
    proc = check(["tar", "-cf", partial, "--format=gnu", "--ignore-failed-read", "-C", "/", "--null",
                  "-T", listing, "-C", work / "pg", "pgdata"], "tar", ok=(0, 1))
    if proc.returncode == 1 or proc.stderr:  # 1: some files changed while being read
        say(f"build: tar warnings (exit {proc.returncode}):\n{tail(proc.stderr, 800)}")
    partial.rename(work / TAR)
    for name, cmd in ((SINGLE, ["zstd", "-q", "-f", "-T2", "-3"]), (MULTI, ["pzstd", "-q", "-f", "-p", "2", "-3"])):
        say(f"build: {shlex.join(cmd)} ...")
        out = work / (name + ".partial")
        check([*cmd, work / TAR, "-o", out], name)
        out.rename(work / name)  # only complete archives ever carry the final name

    listing_out = check(["tar", "-tf", work / TAR], "tar -tf", stdout=subprocess.PIPE).stdout
    info = {
        "size_gb_requested": size_gb,
        "pg_scale": scale,
        "pgdata_bytes": pg_bytes,
        "system_paths": paths,
        "tar_bytes": (work / TAR).stat().st_size,
        "members": listing_out.count(b"\n"),
        "single_bytes": (work / SINGLE).stat().st_size,
        "single_frames": frame_count(work / SINGLE),
        "multi_bytes": (work / MULTI).stat().st_size,
        "multi_frames": frame_count(work / MULTI),
        "build_seconds": round(time.monotonic() - started),
    }
    (work / "build.json").write_text(json.dumps(info, indent=1))
    return info


def describe(info: dict) -> str:
    return (f"bench.tar {info['tar_bytes'] / GB:.2f} GB, {info['members']} members "
            f"(pgdata {info['pgdata_bytes'] / GB:.2f} GB, pgbench scale {info['pg_scale']}); "
            f"bench.tar.zst {info['single_bytes'] / GB:.2f} GB, {info['single_frames']} frame(s); "
            f"bench.multi.tar.zst {info['multi_bytes'] / GB:.2f} GB, {info['multi_frames']} frames")


# --- run -----------------------------------------------------------------------------------------

def commands(work: Path, archcheck: str, state: Path) -> dict[str, list[str]]:
    tar, single, multi = str(work / TAR), str(work / SINGLE), str(work / MULTI)
    verify = [archcheck, "verify", "--no-progress", "--state-dir", str(state)]
    cmds = {
        "zstd -t single": ["zstd", "-q", "-t", single],
        "zstd -t multi": ["zstd", "-q", "-t", multi],
        "pzstd -p2 -t multi": ["pzstd", "-q", "-t", "-p", "2", multi],
        # pipefail: a failing zstd must not hide behind a succeeding tar
        "zstd -dc | tar -t": ["bash", "-o", "pipefail", "-c",
                              f"zstd -q -dc {shlex.quote(single)} | tar -tf - > /dev/null"],
        "archcheck single": [*verify, single],
        "archcheck multi": [*verify, multi],
        "archcheck raw tar": [*verify, "--layers", "raw", tar],
        "archcheck full tar": [*verify, tar],  # reference: all layers on the uncompressed tar
    }
    if shutil.which("b3sum"):
        cmds["b3sum tar"] = ["b3sum", "--no-names", tar]
    else:
        say("!!! b3sum is missing (apt-get install b3sum): the raw-layer ratio is skipped")
    return cmds


def measure(cmd: list[str]) -> dict:
    """Wall seconds, peak summed RSS of the process tree, exit code and (on failure) output tails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        finished, end = threading.Event(), [0.0]

        def wait() -> None:  # timestamps the exit at once, not at the next poll
            proc.wait()
            end[0] = time.perf_counter()
            finished.set()

        threading.Thread(target=wait, daemon=True).start()
        sampler, peak = TreeSampler(proc.pid), 0
        while not finished.is_set():
            peak = max(peak, sampler.rss())
            finished.wait(POLL_S)
        run = {"wall_s": end[0] - start, "peak_rss_bytes": peak, "exit": proc.returncode}
        if proc.returncode != 0:
            out.seek(0)
            err.seek(0)
            run["stdout_tail"], run["stderr_tail"] = tail(out.read()), tail(err.read())
    return run


def warm_cache(work: Path) -> None:
    """Read the archives once so every tool reads from the page cache, none from the disk."""
    total = sum((work / n).stat().st_size for n in (TAR, SINGLE, MULTI))
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    if total > 0.8 * available:
        say(f"!!! the archives ({total / GB:.1f} GB) may not stay in the page cache "
            f"({available / GB:.1f} GB available): times will include disk reads")
    check(["cat", *(work / n for n in (TAR, SINGLE, MULTI))], "warming the page cache")


def busy_cpus(seconds: float = 1.0) -> float:
    """CPUs' worth of work the machine does while this process sleeps: other users' load."""
    def busy_idle() -> tuple[int, int]:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = ticks[3] + ticks[4]  # idle and iowait
        return sum(ticks[:8]) - idle, idle

    (b0, i0), _, (b1, i1) = busy_idle(), time.sleep(seconds), busy_idle()
    return (b1 - b0) / max(1, (b1 - b0) + (i1 - i0)) * (os.cpu_count() or 1)


def run_rounds(cmds: dict[str, list[str]], rounds: int, state: Path) -> tuple[dict, list[dict], list[float]]:
    names = list(cmds)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    failures, busy = [], []
    for r in range(rounds):
        busy.append(busy_cpus())
        if busy[-1] > BUSY_LIMIT:
            say(f"!!! round {r + 1}: the machine is busy with other work ({busy[-1]:.1f} CPUs): "
                f"this round's times are suspect")
        shift = r % len(names)  # each command meets a different neighbour and position each round
        for name in names[shift:] + names[:shift]:
            shutil.rmtree(state, ignore_errors=True)  # a fresh state dir: no earlier run to find
            state.mkdir()
            run = measure(cmds[name])
            run["round"] = r
            runs[name].append(run)
            if run["exit"] != 0:
                failures.append({"command": name, **run})
                print(f"\n!!! FAILED: {name} exited {run['exit']} in round {r + 1}\n"
                      f"    {shlex.join(cmds[name])}\n--- stdout:\n{run['stdout_tail'] or '(empty)'}\n"
                      f"--- stderr:\n{run['stderr_tail'] or '(empty)'}\n", file=sys.stderr, flush=True)
        say(f"round {r + 1}/{rounds} done")
    return runs, failures, busy


# --- report --------------------------------------------------------------------------------------

def summarize(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for name, rs in runs.items():
        ok = [r for r in rs if r["exit"] == 0]
        walls = [r["wall_s"] for r in ok]
        summary[name] = {
            "ok": len(ok), "runs": len(rs),
            "median_s": statistics.median(walls) if ok else None,
            "min_s": min(walls, default=None), "max_s": max(walls, default=None),
            "median_peak_rss_mib": statistics.median(r["peak_rss_bytes"] for r in rs) / MiB,
            "max_peak_rss_mib": max(r["peak_rss_bytes"] for r in rs) / MiB,
        }
    return summary


def ratios(runs: dict[str, list[dict]]) -> dict:
    """Each target's ratio within every round both commands succeeded in, and their median."""
    result = {}
    for label, num, den, limit in TARGETS:
        if num not in runs or den not in runs:
            continue
        pairs = list(zip(runs[num], runs[den]))
        per_round = [a["wall_s"] / b["wall_s"] for a, b in pairs if a["exit"] == 0 and b["exit"] == 0]
        failed = len(pairs) - len(per_round)
        median = statistics.median(per_round) if per_round else None
        if limit is None:
            verdict = "reference"
        else:
            verdict = "PASS" if median is not None and median <= limit and not failed else "FAIL"
        result[label] = {"median": median, "per_round": per_round, "limit": limit,
                         "failed_rounds": failed, "verdict": verdict}
    return result


def rss_target(runs: dict[str, list[dict]]) -> dict:
    """The largest peak over every archcheck run: the budget must hold in each one. A failed run
    may have stopped before its buffers filled, so any failure fails the target."""
    ours = [(n, r) for n, rs in runs.items() if n.startswith("archcheck") for r in rs]
    name, run = max(ours, key=lambda nr: nr[1]["peak_rss_bytes"])
    peak, failed = run["peak_rss_bytes"], sum(r["exit"] != 0 for _, r in ours)
    return {"peak_mib": peak / MiB, "command": name, "limit_mib": RSS_LIMIT / MiB, "failed_runs": failed,
            "verdict": "PASS" if peak < RSS_LIMIT and not failed else "FAIL"}


def fmt(x: float | None, spec: str) -> str:
    return "-".rjust(int(spec.split(".")[0])) if x is None else format(x, spec)


def print_report(summary: dict, targets: dict, rss: dict, failures: list[dict]) -> None:
    say("", f"{'command':<20} {'ok':>5} {'median s':>9} {'min s':>7} {'max s':>7} "
            f"{'peak RSS MiB':>13}")
    for name, s in summary.items():
        say(f"{name:<20} {s['ok']:>2}/{s['runs']:<2} {fmt(s['median_s'], '9.2f')} "
            f"{fmt(s['min_s'], '7.2f')} {fmt(s['max_s'], '7.2f')} "
            f"{s['median_peak_rss_mib']:13.0f}")
    say("", "ratios (per round, median over rounds; range in brackets):")
    for label, t in targets.items():
        spread = f"[{min(t['per_round']):.2f}-{max(t['per_round']):.2f}]" if t["per_round"] else ""
        target = "" if t["limit"] is None else f"target <= {t['limit']}"
        failed = f" (a command failed in {t['failed_rounds']} round(s))" if t["failed_rounds"] else ""
        say(f"  {label:<38} {fmt(t['median'], '5.2f')}x {spread:<12} {target:<14} {t['verdict']}{failed}")
    say(f"  {'archcheck peak RSS, whole tree':<38} {rss['peak_mib']:5.0f} MiB ({rss['command']}) "
        f"target < {rss['limit_mib']:.0f} MiB  {rss['verdict']}"
        + (f" ({rss['failed_runs']} archcheck run(s) failed)" if rss["failed_runs"] else ""))
    if failures:
        say("", f"!!! {len(failures)} command run(s) FAILED:")
        for f in failures:
            say(f"!!!   {f['command']} (round {f['round'] + 1}): exit {f['exit']}")


def environment(archcheck: str) -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError:
            return "missing"
        return ((proc.stdout or proc.stderr).strip().splitlines() or [""])[0]

    commit = first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(), "kernel": platform.release(),
        "archcheck": f"{archcheck} (commit {commit})",
        "zstd": first_line(["zstd", "--version"]), "pzstd": first_line(["pzstd", "--version"]),
        "tar": first_line(["tar", "--version"]), "b3sum": first_line(["b3sum", "--version"]),
    }


def default_archcheck() -> str | None:
    venv = REPO / ".venv" / "bin" / "archcheck"
    return str(venv) if venv.exists() else shutil.which("archcheck")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "work", help="data and results (default: %(default)s)")
    parser.add_argument("--size-gb", type=float, default=5.0, help="uncompressed archive size (default: 5)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every command (0: build only)")
    parser.add_argument("--rebuild", action="store_true", help="build again even if the archives exist")
    parser.add_argument("--pg-port", type=int, default=54329, help="names the server's socket file only")
    parser.add_argument("--archcheck", default=default_archcheck(), help="archcheck executable")
    args = parser.parse_args()
    work = args.work.resolve()
    if not args.archcheck:
        sys.exit("archcheck not found: install it (pip install -e .) or pass --archcheck")

    if args.rebuild or not all((work / n).exists() for n in (TAR, SINGLE, MULTI)):
        info = build(work, args.size_gb, args.pg_port)
    else:
        say(f"build: skipped, the archives exist in {work} (--rebuild to build again)")
        build_json = work / "build.json"
        info = json.loads(build_json.read_text()) if build_json.exists() else None
        if info and info["size_gb_requested"] != args.size_gb:
            say(f"!!! these archives were built with --size-gb {info['size_gb_requested']}, "
                f"not {args.size_gb}: pass --rebuild for the size asked for")
    if info:
        say(describe(info))
    if args.rounds == 0:
        return

    env = environment(args.archcheck)
    say(*(f"{k}: {v}" for k, v in env.items()))
    warm_cache(work)
    with tempfile.TemporaryDirectory(prefix="archcheck-bench-") as tmp:
        state = Path(tmp) / "state"
        cmds = commands(work, args.archcheck, state)
        runs, failures, busy = run_rounds(cmds, args.rounds, state)
    summary, targets, rss = summarize(runs), ratios(runs), rss_target(runs)
    print_report(summary, targets, rss, failures)
    if max(busy) > BUSY_LIMIT:
        say("", f"!!! other work was running before {sum(b > BUSY_LIMIT for b in busy)} of {len(busy)} "
                f"rounds (CPUs busy: {', '.join(f'{b:.1f}' for b in busy)}): rerun on a quiet machine")
    results = {"environment": env, "build": info, "commands": {n: shlex.join(c) for n, c in cmds.items()},
               "busy_cpus_before_round": busy, "runs": runs, "summary": summary, "ratios": targets, "rss": rss, "failures": failures}
    (work / "results.json").write_text(json.dumps(results, indent=1))
    say("", f"results: {work / 'results.json'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
