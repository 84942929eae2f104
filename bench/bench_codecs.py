#!/usr/bin/env python3
"""Benchmark the verification of gzip, xz, lz4, bzip2 and age-encrypted archives beside each tool's own test, in one run.

Usage:
    python3 bench/bench_codecs.py --codec gzip|gzip-members|bgzf|xz|lz4|bzip2|age [--data DIR] [--tar pgdata.tar] [--rounds 3]

bgzf: the tar as `bgzip -@ 2` writes it (NAME.bgz), beside `gzip -t` and `bgzip -t -@ 2`.

gzip-members: the tar as gzip members of 16 MiB of it each, back to back (`split -b 16M
--filter="gzip -6"`, NAME.m16.gz: what `cat a.gz b.gz` and appending backup scripts make),
beside `gzip -t` and `pigz -t`, and archcheck's gzip layer on one worker (the members then
decode on one thread; on two, a scout decodes the next member ahead).

age: the tar as `zstd -T0 | age -r` makes it (NAME.zst.age, with a key made by age-keygen in
--data), beside `age -d | zstd -t` (what a user would run to test it) and `age -d` alone;
archcheck is given the key with --identity.

The data (--data, default bench/out): a plain tar from make-anchor-data.sh (--tar: pgdata.tar,
a pgbench cluster of 1.46 GB, or data.tar, 5.18 GB of real files and the cluster), compressed
once as the tools usually are (MAKERS: `pigz -6`, one gzip member as `tar czf` writes; `xz -T0`,
several blocks; `lz4`; `lbzip2`) into NAME.EXT. Each round runs, in an order that rotates
(run_bench's scheme), the tools' own tests (REFERENCES: `gzip -t` and `pigz -t`; `xz -t -T0`;
`lz4 -t`; `bzip2 -t` and `lbzip2 -t`), then

    archcheck verify --layers zstd                the codec's layer alone (decode and its checks)
    archcheck verify (default layers)             raw, the codec, tar, members and pages

and prints medians, the per-round ratios to the first reference (median over rounds) and peak
RSS of each command's process tree. Every run must exit 0, archcheck's with an intact verdict.
The machine's load from other work is sampled before each round: only ratios from one quiet
run count.
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


EXTENSION = {"gzip": ".gz", "gzip-members": ".m16.gz", "bgzf": ".bgz", "xz": ".xz", "lz4": ".lz4", "bzip2": ".bz2", "age": ".zst.age"}
# each reads the tar named by its last argument ({key}: the age identity in --data)
MAKERS = {"gzip": ["pigz", "-6", "-c"], "gzip-members": ["sh", "-c", 'split -b 16M --filter="gzip -6" "$0"'],
          "bgzf": ["bgzip", "-@", "2", "-c"], "xz": ["xz", "-T0", "-6", "-c"], "lz4": ["lz4", "-c"],
          "bzip2": ["lbzip2", "-9", "-c"],
          "age": ["sh", "-c", 'zstd -T0 -q -c "$1" | age -R "$0.pub"', "{key}"]}
REFERENCES = {"gzip": [["gzip", "-t"], ["pigz", "-t"]], "gzip-members": [["gzip", "-t"], ["pigz", "-t"]],
              "bgzf": [["gzip", "-t"], ["bgzip", "-t", "-@", "2"]], "xz": [["xz", "-t", "-T0"]], "lz4": [["lz4", "-t"]],
              "bzip2": [["bzip2", "-t"], ["lbzip2", "-t"]],
              "age": [["sh", "-c", 'age -d -i "$0" "$1" | zstd -t -q', "{key}"],
                      ["age", "-d", "-i", "{key}", "-o", "/dev/null"]]}
AGE_NAMES = {"sh -c": "age -d | zstd -t", "age -d": "age -d"}


def _age_key(data: Path) -> Path:
    """The identity the age archive is encrypted to (and its recipient, KEY.pub), made once."""
    key = data / "age-key.txt"
    if not key.exists():
        subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
        key.with_suffix(".txt.pub").write_text(
            subprocess.run(["age-keygen", "-y", key], check=True, capture_output=True, text=True).stdout)
    return key


def _named(ref: list[str], key: Path) -> tuple[str, list[str]]:
    argv = [a.replace("{key}", str(key)) for a in ref]
    return next((n for p, n in AGE_NAMES.items() if shlex.join(ref).startswith(p)), shlex.join(ref)), argv


def commands(codec: str, archive: Path, archcheck: str, key: Path) -> dict[str, list[str]]:
    verify = [archcheck, "verify", "--no-progress", "--state-dir", "{state}",
              *(["--identity", str(key)] if codec == "age" else [])]
    cmds = {name: [*argv, str(archive)] for name, argv in (_named(ref, key) for ref in REFERENCES[codec])}
    cmds[f"archcheck {codec} layer"] = [*verify, "--layers", "zstd", str(archive)]
    if codec == "gzip-members":  # its members on one thread: what decoding them on two gains
        cmds["archcheck layer, 1 worker"] = [*verify, "--layers", "zstd", "--workers", "1", str(archive)]
    cmds["archcheck all layers"] = [*verify, str(archive)]
    return cmds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", choices=list(MAKERS), required=True)
    parser.add_argument("--data", type=Path, default=HERE / "out")
    parser.add_argument("--tar", default="pgdata.tar", help="the plain tar in --data to compress and verify")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--archcheck", default=default_archcheck())
    args = parser.parse_args()
    tar, archive = args.data / args.tar, args.data / (args.tar + EXTENSION[args.codec])
    if not tar.exists():
        sys.exit(f"{tar} is missing: run ../shared/tools/make-anchor-data.sh {args.data}")
    key = _age_key(args.data) if args.codec == "age" else Path()
    if not archive.exists():
        maker = [a.replace("{key}", str(key)) for a in MAKERS[args.codec]]
        print(f"making {archive} with {shlex.join(maker)} ...", flush=True)
        with open(archive.with_suffix(".part"), "wb") as out:
            subprocess.run([*maker, str(tar)], stdout=out, check=True)
        archive.with_suffix(".part").rename(archive)
    compile_bytecode(args.archcheck)
    subprocess.run(["cat", str(archive)], stdout=subprocess.DEVNULL, check=True)  # a warm page cache
    cmds = commands(args.codec, archive, args.archcheck, key)
    names = list(cmds)
    print(f"data: {archive} {archive.stat().st_size / 1e9:.2f} GB (of {tar.stat().st_size / 1e9:.2f} GB)")
    for name, argv in cmds.items():
        print(f"  {name:<22} {shlex.join(argv)}")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    busy = []
    failed = False
    with tempfile.TemporaryDirectory(prefix=f"archcheck-bench-{args.codec}-") as tmp:
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
    first = names[0]
    print(f"\n{'command':<22} {'median s':>9} {'x ' + first:>14} {'peak RSS MiB':>13}")
    for name in names:
        seconds = statistics.median(run["wall_s"] for run in runs[name])
        ratio = statistics.median(a["wall_s"] / b["wall_s"] for a, b in zip(runs[name], runs[first]))
        rss = max(run["peak_rss_bytes"] for run in runs[name]) / MiB
        print(f"{name:<22} {seconds:>9.3f} {ratio:>13.3f}x {rss:>13.1f}")
    print(f"\nCPU load from other work before each round (CPUs busy): {', '.join(f'{b:.2f}' for b in busy)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
