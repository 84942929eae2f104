#!/usr/bin/env python3
"""Benchmark catalogs and diffs at scale: two catalogs of N members (2 million by default),
written by archcheck's own catalog writer (an external sort in runs of catalog.RUN members),
then compared, each step in its own process so its peak RSS is its own.

Usage:
    python3 bench/bench_catalog.py [--members 2000000] [--out bench/out/catalogs]

The members are synthetic (names in a shuffled order, as a directory walk gives them, sizes,
digests); the second catalog has 0.1% modified, 0.1% added, 0.1% removed members, mtime drift
on 1% and one suspicious member (content changed under an unchanged size and mtime). Prints
the time and peak RSS of writing each catalog and of the diff, and checks the diff's counts.
The target (issue 12): the diff in under 200 MiB.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def records(count: int, variant: bool, seed: int = 7):
    """Member records in archive order (a shuffled walk), the variant with its changes."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    for i in order:
        if variant and i % 1000 == 1:
            continue  # removed
        size, mtime, digest = i * 7 % 100_000, 1_700_000_000 + i, f"{i * 2654435761 % (1 << 64):032x}"
        if variant and i % 1000 == 2:
            size, mtime, digest = size + 1, mtime + 5, "f" * 32  # modified
        if variant and i % 100 == 3:
            mtime += 60  # drift
        if variant and i == 4:
            digest = "e" * 32  # suspicious
        yield {"name": f"data/dir{i % 997:03d}/file{i:08d}.dat", "type": "file", "size": size, "mode": 0o644,
               "mtime": mtime, "uid": 1000, "gid": 1000, "uname": "app", "gname": "app", "digest": digest}
        if variant and i % 1000 == 5:
            yield {"name": f"data/new/file{i:08d}.dat", "type": "file", "size": 10, "mode": 0o644,
                   "mtime": mtime, "digest": "d" * 32}  # added


FACTS = {"archive": {"uri": "synthetic", "size": 0}, "format": "tar+zstd", "digest": "xxh3-128", "tree_root": None,
         "frames": 1, "checksummed_frames": 1, "uncompressed_size": None, "verdict": "intact"}


def step_write(path: str, count: int, variant: bool) -> dict:
    from archcheck.catalog import write_records
    write_records(records(count, variant), Path(path), {**FACTS, "archive": {"uri": path, "size": 0}})
    return {}


def step_diff(old: str, new: str) -> dict:
    from archcheck.catalog import open_catalog
    from archcheck.diff import compare
    with open_catalog(old) as a, open_catalog(new) as b:
        summary = compare(a, b, new).summary
    return summary.to_json()


def child(args: list[str]) -> None:
    step, *rest = args
    started = time.perf_counter()
    out = step_write(rest[0], int(rest[1]), rest[2] == "1") if step == "write" else step_diff(*rest)
    out["seconds"] = time.perf_counter() - started
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=2_000_000)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "catalogs")
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    args.out.mkdir(parents=True, exist_ok=True)
    old, new = args.out / "old.catalog", args.out / "new.catalog"
    n = args.members
    for path, variant in ((old, "0"), (new, "1")):
        result = run("write", str(path), str(n), variant)
        print(f"write {path.name:<12} {n:>9} members  {result['seconds']:7.1f} s  peak RSS {result['rss_mib']:6.0f} MiB"
              f"  {path.stat().st_size / 2**20:7.0f} MiB on disk")
    result = run("diff", str(old), str(new))
    print(f"diff  {n:>9} x 2 members  {result['seconds']:7.1f} s  peak RSS {result['rss_mib']:6.0f} MiB "
          f"({'PASS' if result['rss_mib'] <= 200 else 'FAIL'} <= 200 MiB)")
    expected = {"removed": n // 1000 + (n % 1000 > 1), "added": n // 1000 + (n % 1000 > 5),
                "modified": n // 1000 + (n % 1000 > 2), "suspicious": 1}
    got = {k: result[k] for k in expected}
    print(f"counts {got}; mtime drift on {result['drift'].get('mtime', 0)}")
    assert got == expected, (got, expected)


if __name__ == "__main__":
    main()
