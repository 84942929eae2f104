#!/usr/bin/env python3
"""Benchmark gzip verification beside gzip's own test, in one run.

Usage:
    python3 bench/bench_gzip.py [--data DIR] [--tar pgdata.tar] [--rounds 3]

The data (--data, default bench/out): a plain tar from make-anchor-data.sh (--tar: pgdata.tar,
a pgbench cluster of 1.46 GB that gzip shrinks 18-fold, or data.tar, 5.18 GB of real files and
the cluster), compressed once by `pigz -6` into NAME.gz (one gzip member, as `tar czf` writes). Each round runs, in an order that rotates (run_bench's scheme):

    gzip -t pgdata.tar.gz                         the reference: inflate and CRC-32, one core
    pigz -t pgdata.tar.gz                         pigz's test (inflate is serial in pigz too)
    archcheck verify --layers zstd                the gzip layer alone (decode, CRC-32, ISIZE)
    archcheck verify (default layers)             raw, gzip, tar, members and pages

and prints medians, the per-round ratios to `gzip -t` (median over rounds) and peak RSS of each
command's process tree. Every archcheck run must exit 0 with an intact verdict. The machine's
load from other work is sampled before each round: only ratios from one quiet run count.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_native import compile_bytecode  # noqa: E402
from run_bench import MiB, busy_cpus, default_archcheck, measure  # noqa: E402


def commands(archive: Path, archcheck: str) -> dict[str, list[str]]:
    verify = [archcheck, "verify", "--no-progress", "--state-dir", "{state}"]
    return {
        "gzip -t": ["gzip", "-t", str(archive)],
        "pigz -t": ["pigz", "-t", str(archive)],
        "archcheck gzip layer": [*verify, "--layers", "zstd", str(archive)],
        "archcheck all layers": [*verify, str(archive)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE / "out")
    parser.add_argument("--tar", default="pgdata.tar", help="the plain tar in --data to compress and verify")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--archcheck", default=default_archcheck())
    args = parser.parse_args()
    tar, archive = args.data / args.tar, args.data / (args.tar + ".gz")
    if not tar.exists():
        sys.exit(f"{tar} is missing: run ../shared/tools/make-anchor-data.sh {args.data}")
    if not archive.exists():
        print(f"making {archive} with pigz -6 ...", flush=True)
        with open(archive, "wb") as out:
            subprocess.run(["pigz", "-6", "-c", str(tar)], stdout=out, check=True)
    compile_bytecode(args.archcheck)
    subprocess.run(["cat", str(archive)], stdout=subprocess.DEVNULL, check=True)  # a warm page cache
    cmds = commands(archive, args.archcheck)
    names = list(cmds)
    print(f"data: {archive} {archive.stat().st_size / 1e9:.2f} GB (of {tar.stat().st_size / 1e9:.2f} GB)")
    for name, argv in cmds.items():
        print(f"  {name:<22} {shlex.join(argv)}")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    busy = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="archcheck-bench-gzip-") as tmp:
        for r in range(args.rounds):
            busy.append(busy_cpus())
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                state = Path(tmp) / f"{r}-{names.index(name)}"
                run = measure([a.replace("{state}", str(state)) for a in cmds[name]])
                if run["exit"] != 0:
                    print(f"!!! {name} exited {run['exit']} in round {r + 1}", file=sys.stderr)
                    failed = True
                runs[name].append(run)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {runs[n][-1]['wall_s']:.2f}s" for n in names),
                  flush=True)
    print(f"\n{'command':<22} {'median s':>9} {'x gzip -t':>10} {'peak RSS MiB':>13}")
    for name in names:
        seconds = statistics.median(run["wall_s"] for run in runs[name])
        ratio = statistics.median(a["wall_s"] / b["wall_s"] for a, b in zip(runs[name], runs["gzip -t"]))
        rss = max(run["peak_rss_bytes"] for run in runs[name]) / MiB
        print(f"{name:<22} {seconds:>9.3f} {ratio:>9.3f}x {rss:>13.1f}")
    print(f"\nCPU load from other work before each round (CPUs busy): {', '.join(f'{b:.2f}' for b in busy)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
