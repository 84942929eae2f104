#!/usr/bin/env python3
"""Benchmark archcheck beside the reference tools on the same data, in one run.

    python bench/run_bench.py [--work DIR] [--size-gb 5] [--rounds 5] [--rebuild]

Builds (once) a realistic archive of about --size-gb GB: real files from this system plus a
PostgreSQL cluster made by `initdb --data-checksums` and `pgbench -i`, as bench.tar,
single-frame bench.tar.zst (`zstd -T2`) and multi-frame bench.multi.tar.zst (`pzstd -p 2`).
Then runs every command in interleaved rounds (the order rotates each round, the page cache is
warm) and prints medians, peak RSS of each command's whole process tree, and the target ratios,
each computed within a round and then taken as the median over rounds. Machines here are shared
and noisy: only ratios from one run compare. Needs zstd, pzstd, tar, PostgreSQL server binaries
and b3sum (`apt-get install b3sum`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proctree import tree_rss  # noqa: E402

ARCHCHECK = [sys.executable, "-m", "archcheck"]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SYSTEM_DIRS = ["usr/share", "usr/include", "root/.pyenv", "usr/lib", "opt"]
GB = 1000 ** 3
TARGETS = [  # (label, numerator, denominator, limit)
    ("full verify, single frame / zstd -t", "archcheck single", "zstd -t single", 1.0),
    ("full verify, multi-frame / zstd -t", "archcheck multi", "zstd -t single", 0.6),
    ("pzstd -p2 -t / zstd -t (reference)", "pzstd -t multi", "zstd -t single", None),
    ("--layers raw on tar / b3sum", "archcheck raw tar", "b3sum tar", 1.5),
]


def sh(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


# --- building the data --------------------------------------------------------------------------

def build_postgres(work: Path, scale: int) -> Path:
    """A real cluster with data checksums, filled by pgbench, stopped cleanly."""
    data = work / "pgdata"
    if data.exists():
        shutil.rmtree(data)
    work.mkdir(parents=True, exist_ok=True)
    shutil.chown(work, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    sh(*as_pg, PG_BIN / "initdb", "--data-checksums", "-D", data, stdout=subprocess.DEVNULL)
    options = f"-c listen_addresses='' -c unix_socket_directories={work} -p 54329"
    sh(*as_pg, PG_BIN / "pg_ctl", "-D", data, "-o", options, "-w", "-l", work / "pg.log", "start",
       stdout=subprocess.DEVNULL)
    try:
        sh(*as_pg, PG_BIN / "pgbench", "-i", "-q", "-s", scale, "-h", work, "-p", "54329", "postgres",
           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        sh(*as_pg, PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop", stdout=subprocess.DEVNULL)
    return data


def dir_size(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else 0


def build(work: Path, size_gb: float) -> None:
    pg_bytes = min(1.5 * GB, size_gb * GB * 0.3)
    build_postgres(work, scale=max(1, int(pg_bytes / 15_000_000)))
    budget = size_gb * GB - dir_size(work / "pgdata")
    chosen = []
    for rel in SYSTEM_DIRS:
        if budget <= 0:
            break
        if (Path("/") / rel).is_dir():
            chosen.append(rel)
            budget -= dir_size(Path("/") / rel)
    print(f"archiving /{', /'.join(chosen)} and a pgbench cluster", flush=True)
    tar = work / "bench.tar"
    subprocess.run(["tar", "-cf", tar, "--format=gnu", "--ignore-failed-read", "--warning=none",
                    "-C", "/", *chosen, "-C", work, "pgdata"], check=False)
    sh("zstd", "-q", "-f", "-T2", "-3", tar, "-o", work / "bench.tar.zst")
    sh("pzstd", "-q", "-f", "-p", "2", "-3", tar, "-o", work / "bench.multi.tar.zst")
    members = subprocess.run(["tar", "-tf", tar], capture_output=True, text=True).stdout.count("\n")
    print(f"bench.tar: {tar.stat().st_size / GB:.2f} GB, {members} members", flush=True)


# --- measuring ------------------------------------------------------------------------------

def measure(cmd: str) -> tuple[float, int]:
    """Wall seconds and peak RSS of the whole process tree; a failing command stops the run."""
    start = time.perf_counter()
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"FAILED (exit {proc.returncode}): {cmd}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, peak


def commands(work: Path, state: Path) -> dict[str, str]:
    ac = " ".join(ARCHCHECK) + f" verify --no-progress --state-dir {state}"
    single, multi, tar = work / "bench.tar.zst", work / "bench.multi.tar.zst", work / "bench.tar"
    cmds = {
        "zstd -t single": f"zstd -q -t {single}",
        "zstd -t multi": f"zstd -q -t {multi}",
        "pzstd -t multi": f"pzstd -q -t -p 2 {multi}",
        "zstd -dc | tar -t": f"zstd -q -dc {single} | tar -t > /dev/null",
        "archcheck single": f"{ac} {single}",
        "archcheck multi": f"{ac} {multi}",
        "archcheck raw tar": f"{ac} --layers raw {tar}",
        "archcheck full tar": f"{ac} {tar}",
    }
    if shutil.which("b3sum"):
        cmds["b3sum tar"] = f"b3sum --no-names {tar}"
    else:
        print("b3sum not found (apt-get install b3sum): its ratio is skipped", flush=True)
    return cmds


def run(work: Path, rounds: int) -> dict:
    for name in ("bench.tar", "bench.tar.zst", "bench.multi.tar.zst"):  # warm the page cache
        sh("cat", work / name, stdout=subprocess.DEVNULL)
    state = Path(tempfile.mkdtemp(prefix="archcheck-bench-"))
    cmds = commands(work, state)
    names = list(cmds)
    results: dict[str, list[tuple[float, int]]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            results[name].append(measure(cmds[name]))
            shutil.rmtree(state, ignore_errors=True)
        print(f"round {r + 1}/{rounds} done", flush=True)
    return {"commands": cmds, "results": results}


def report(data: dict) -> dict:
    results = data["results"]
    print(f"\n{'command':<22} {'median s':>9} {'min s':>7} {'max s':>7} {'peak RSS MiB':>13}")
    for name, runs in results.items():
        walls = [w for w, _ in runs]
        print(f"{name:<22} {statistics.median(walls):9.2f} {min(walls):7.2f} {max(walls):7.2f} "
              f"{statistics.median(p for _, p in runs) / 2**20:13.0f}")
    ratios = {}
    print()
    for label, num, den, limit in TARGETS:
        if num not in results or den not in results:
            continue
        per_round = [a[0] / b[0] for a, b in zip(results[num], results[den])]
        ratio = statistics.median(per_round)
        ratios[label] = ratio
        verdict = "" if limit is None else (" PASS" if ratio <= limit else " FAIL") + f" (target <= {limit})"
        print(f"{label:<42} {ratio:5.2f}x{verdict}")
    peak = max(p for name, runs in results.items() if name.startswith("archcheck") for _, p in runs)
    print(f"{'archcheck peak RSS (whole tree)':<42} {peak / 2**20:5.0f} MiB"
          f"{' PASS' if peak < 300 * 2**20 else ' FAIL'} (target < 300 MiB)")
    return {"ratios": ratios, "archcheck_peak_rss": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--size-gb", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5, help="0: build the data only")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    if args.rebuild or not (args.work / "bench.multi.tar.zst").exists():
        build(args.work, args.size_gb)
    if args.rounds == 0:  # build only
        return
    data = run(args.work, args.rounds)
    data.update(report(data))
    (args.work / "results.json").write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
