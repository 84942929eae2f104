#!/usr/bin/env python3
"""Benchmark the `pages` layer (PostgreSQL page headers and data checksums) against its targets.

Usage (as root; PostgreSQL tools then run as the postgres user):
    python3 bench/bench_pages.py [--rounds 5] [--scale 60] [--rebuild] [--archive PATH.tar.zst]
    python3 bench/bench_pages.py --rounds 0           # build the data only

Targets (from the issue), measured on the same data in one run:
  1. verify with page scanning costs at most 15 % more wall time than without it:
       archcheck verify A --layers raw,zstd,tar,members,pages   vs   --layers raw,zstd,tar,members
     A: --archive, else run_bench.py's bench/work/bench.tar.zst if present (a pgbench cluster among
     system files), else the cluster.tar.zst built here.
  2. page scanning alone is at least as fast as pg_checksums on the same data:
       archcheck verify cluster.tar --layers tar,pages   vs   pg_checksums --check -D datadir
     (a plain tar: no decompression; the datadir is the cluster the tar was made of, cleanly shut
     down, owned by postgres, mode 0700).

build (skipped when WORK/build.json matches --scale, unless --rebuild), into --work (default
bench/work/pages/): a PostgreSQL 15 cluster by `initdb --data-checksums` (tests/pg.py's Cluster,
server on a Unix socket only), `pgbench -i -s SCALE` (60: about 900 MB), CHECKPOINT, a clean stop,
then `tar -C datadir -cf cluster.tar .` and `zstd -T2 -3 cluster.tar -o cluster.tar.zst`.

run: the files are read once to warm the page cache, then every command runs once untimed
(whose output must show archcheck's `PG_DATA_DIRECTORY` info line with "checksums compared" for
each run with the pages layer, and pg_checksums' "Bad checksums: 0"), then --rounds interleaved
rounds (order rotating each round, a fresh state dir per run, the machine's other CPU load sampled
before each round: run_bench.run_rounds). Prints per-command medians and peak RSS of the whole
process tree, and each target's ratio (per round, median over rounds) with PASS/FAIL.

Exit status 1 when any run failed or the data-directory check failed; target FAILs are results,
not errors.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
from run_bench import (BUSY_LIMIT, GB, SINGLE, check, default_archcheck, environment,  # noqa: E402
                       run_rounds, say, summarize, tail, fmt)
from pg import Cluster, grant_traverse, pg_bin, pg_unavailable_reason, run_pg  # noqa: E402

WORK = HERE / "work" / "pages"
PG_CHECKSUMS = Path("/usr/lib/postgresql/15/bin/pg_checksums")
ALL = "raw,zstd,tar,members,pages"
NO_PAGES = "raw,zstd,tar,members"
TARGETS = [  # (label, numerator, denominator, upper limit of the ratio)
    ("with pages / without pages", "verify +pages", "verify -pages", 1.15),
    ("tar,pages / pg_checksums", "tar,pages", "pg_checksums", 1.0),
]
DATADIR_LINE = re.compile(r"^.*PG_DATA_DIRECTORY.*$", re.M)


# --- build ---------------------------------------------------------------------------------------

def build(work: Path, scale: int, port: int) -> dict:
    started = time.monotonic()
    for name in ("build.json", "cluster.tar", "cluster.tar.zst"):
        (work / name).unlink(missing_ok=True)
    if (work / "cluster").exists():
        shutil.rmtree(work / "cluster")
    work.mkdir(parents=True, exist_ok=True)
    say(f"build: PostgreSQL cluster (initdb --data-checksums), pgbench -i -s {scale} ...")
    with Cluster(work / "cluster", checksums=True, port=port) as c:
        c.pgbench("-i", "-q", "-s", str(scale))
        c.sql("CHECKPOINT")
        version = c.sql("SHOW server_version")
        c.stop()  # clean shutdown: pg_checksums needs it, and the tar is a cold copy
    datadir = c.datadir
    state = controldata_state(datadir)
    if state != "shut down":
        sys.exit(f"\n!!! BUILD FAILED: the cluster is not cleanly shut down ({state!r})")
    du = int(subprocess.run(["du", "-sb", datadir], capture_output=True, text=True, check=True).stdout.split()[0])
    say(f"build: datadir {du / GB:.2f} GB; tar ...")
    partial = work / "cluster.tar.partial"
    check(["tar", "-C", datadir, "-cf", partial, "."], "tar")
    partial.rename(work / "cluster.tar")
    say("build: zstd -T2 -3 ...")
    partial = work / "cluster.tar.zst.partial"
    check(["zstd", "-q", "-f", "-T2", "-3", work / "cluster.tar", "-o", partial], "zstd")
    partial.rename(work / "cluster.tar.zst")
    info = {"pg_scale": scale, "server_version": version, "datadir": str(datadir), "datadir_bytes": du,
            "tar_bytes": (work / "cluster.tar").stat().st_size,
            "zst_bytes": (work / "cluster.tar.zst").stat().st_size,
            "build_seconds": round(time.monotonic() - started)}
    (work / "build.json").write_text(json.dumps(info, indent=1))
    return info


def controldata_state(datadir: Path) -> str:
    out = run_pg("pg_controldata", "-D", datadir).stdout
    m = re.search(r"^Database cluster state:\s*(.*)$", out, re.M)
    return m.group(1).strip() if m else "unknown"


def ready_datadir(datadir: Path) -> None:
    """pg_checksums wants a cleanly stopped cluster in a postgres-owned 0700 directory."""
    state = controldata_state(datadir)
    if state != "shut down":
        sys.exit(f"!!! {datadir}: cluster state {state!r}, not 'shut down': pass --rebuild")
    if (datadir / "postmaster.pid").exists():
        sys.exit(f"!!! {datadir}/postmaster.pid exists: is a server running on it?")
    st = datadir.stat()
    if st.st_mode & 0o777 != 0o700:
        os.chmod(datadir, 0o700)
    grant_traverse(datadir)


def snapshot(rev: str, work: Path) -> str:
    """An executable running archcheck as committed at ``rev``: the working tree may be mid-edit."""
    sha = check(["git", "-C", REPO, "rev-parse", "--verify", f"{rev}^{{commit}}"], f"git rev-parse {rev}",
                stdout=subprocess.PIPE, text=True).stdout.strip()
    dest = work / f"rev-{sha[:12]}"
    if not (dest / "archcheck").exists():
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "tree").mkdir(parents=True)
        check(["bash", "-o", "pipefail", "-c", f"git -C {shlex.quote(str(REPO))} archive {sha} src | "
               f"tar -x -C {shlex.quote(str(dest / 'tree'))}"], "git archive")
        # PYTHONPATH comes before the venv's editable-install path (a plain .pth entry)
        script = dest / "archcheck"
        script.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(dest / 'tree' / 'src'))} "
                          f"exec {shlex.quote(str(REPO / '.venv' / 'bin' / 'python'))} -m archcheck \"$@\"\n")
        script.chmod(0o755)
    say(f"archcheck: commit {sha[:12]} ({dest / 'archcheck'})")
    return str(dest / "archcheck")


# --- run -----------------------------------------------------------------------------------------

def commands(archive: Path, work: Path, datadir: Path, archcheck: str, state: Path) -> dict[str, list[str]]:
    verify = [archcheck, "verify", "--no-progress", "--state-dir", str(state)]
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    checksums = str(PG_CHECKSUMS) if PG_CHECKSUMS.exists() else pg_bin("pg_checksums")
    return {
        "verify +pages": [*verify, "--layers", ALL, str(archive)],
        "verify -pages": [*verify, "--layers", NO_PAGES, str(archive)],
        "tar,pages": [*verify, "--layers", "tar,pages", str(work / "cluster.tar")],
        "pg_checksums": [*as_pg, checksums, "--check", "-D", str(datadir)],
    }


def first_runs(cmds: dict[str, list[str]], state: Path) -> tuple[dict[str, str], list[str]]:
    """Each command once, untimed (the page cache then holds what it reads); their outputs are
    checked: archcheck must exit 0 and, with the pages layer, report the data directory with
    checksums compared; pg_checksums must find no bad checksum."""
    notes, errors = {}, []
    for name, cmd in cmds.items():
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        out = proc.stdout + proc.stderr
        if name == "pg_checksums":
            blocks = re.search(r"Blocks scanned:\s*(\d+)", out)
            bad = re.search(r"Bad checksums:\s*(\d+)", out)
            notes[name] = f"{blocks.group(1) if blocks else '?'} blocks scanned, {bad.group(1) if bad else '?'} bad"
            ok = proc.returncode == 0 and bad is not None and bad.group(1) == "0"
        else:
            lines = DATADIR_LINE.findall(out)
            verdict = re.search(r"^verdict.*$", out, re.M)
            notes[name] = "; ".join(l.strip() for l in lines) or "(no PG_DATA_DIRECTORY line)"
            if verdict:
                notes[name] += f" | {verdict.group().strip()}"
            ok = proc.returncode == 0
            if "pages" in cmd[cmd.index("--layers") + 1].split(","):
                ok = ok and any("checksums compared" in l for l in lines)
        say(f"  first run {name:<14} {wall:6.2f}s exit {proc.returncode}: {notes[name]}")
        if not ok:
            errors.append(name)
            say(f"!!! {name}: check failed (exit {proc.returncode})\n    {shlex.join(cmd)}\n{tail(out)}")
    return notes, errors


def ratios(runs: dict[str, list[dict]]) -> dict:
    """Each target's ratio within every round both commands succeeded in, and their median."""
    result = {}
    for label, num, den, limit in TARGETS:
        pairs = list(zip(runs[num], runs[den]))
        per_round = [a["wall_s"] / b["wall_s"] for a, b in pairs if a["exit"] == 0 and b["exit"] == 0]
        failed = len(pairs) - len(per_round)
        median = statistics.median(per_round) if per_round else None
        verdict = "PASS" if median is not None and median <= limit and not failed else "FAIL"
        result[label] = {"median": median, "per_round": per_round, "limit": limit,
                         "failed_rounds": failed, "verdict": verdict}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=WORK, help="data (default: %(default)s)")
    parser.add_argument("--scale", type=int, default=60, help="pgbench scale (default: 60, ~900 MB)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (0: build only)")
    parser.add_argument("--rebuild", action="store_true", help="build again even if the data exist")
    parser.add_argument("--archive", type=Path, help="the .tar.zst of target 1 (default: see above)")
    parser.add_argument("--pg-port", type=int, default=54331, help="names the server's socket file only")
    parser.add_argument("--archcheck", default=default_archcheck(), help="archcheck executable")
    parser.add_argument("--rev", help="benchmark this commit's archcheck (a `git archive` copy in WORK, "
                                      "run by the venv's python), not the working tree's")
    args = parser.parse_args()
    work = args.work.resolve()
    if args.rev:
        args.archcheck = snapshot(args.rev, work)
    if not args.archcheck:
        sys.exit("archcheck not found: install it (pip install -e .) or pass --archcheck")
    why = pg_unavailable_reason()
    if why:
        sys.exit(f"cannot run PostgreSQL: {why}")

    build_json = work / "build.json"
    info = json.loads(build_json.read_text()) if build_json.exists() else None
    if (args.rebuild or info is None or info.get("pg_scale") != args.scale
            or not all((work / n).exists() for n in ("cluster.tar", "cluster.tar.zst"))):
        info = build(work, args.scale, args.pg_port)
    else:
        say(f"build: skipped, the data exist in {work} (--rebuild to build again)")
    datadir = Path(info["datadir"])
    say(f"cluster: PostgreSQL {info['server_version']}, pgbench scale {info['pg_scale']}, datadir "
        f"{info['datadir_bytes'] / GB:.2f} GB; cluster.tar {info['tar_bytes'] / GB:.2f} GB, "
        f"cluster.tar.zst {info['zst_bytes'] / GB:.2f} GB (built in {info['build_seconds']} s)")
    if args.rounds == 0:
        return

    ready_datadir(datadir)
    if args.archive:
        archive = args.archive.resolve()
    elif (HERE / "work" / SINGLE).exists():
        archive = HERE / "work" / SINGLE
    else:
        archive = work / "cluster.tar.zst"
    say(f"target 1 archive: {archive} ({archive.stat().st_size / GB:.2f} GB)")
    env = environment(args.archcheck)
    if args.rev:  # environment() describes the working tree, which this run does not use
        env["archcheck"] = f"{args.archcheck} (commit {Path(args.archcheck).parent.name[4:]}, --rev {args.rev})"
    env["pg_checksums"] = subprocess.run([str(PG_CHECKSUMS), "--version"], capture_output=True,
                                         text=True).stdout.strip()
    say(*(f"{k}: {v}" for k, v in env.items() if k not in ("pzstd", "b3sum")))

    say("warming the page cache ...")
    check(["cat", archive, work / "cluster.tar"], "warming the page cache (archives)")
    # GNU tar skips reading file data when the output is /dev/null: read the datadir for real
    check(["bash", "-c", f"tar -cf - -C {shlex.quote(str(datadir))} . | cat > /dev/null"],
          "warming the page cache (datadir)")

    with tempfile.TemporaryDirectory(prefix="archcheck-bench-pages-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        cmds = commands(archive, work, datadir, args.archcheck, state)
        for name, cmd in cmds.items():
            say(f"  {name:<14} {shlex.join(cmd)}")
        notes, errors = first_runs(cmds, state)
        runs, failures, busy = run_rounds(cmds, args.rounds, state)

    summary, targets = summarize(runs), ratios(runs)
    say("", f"{'command':<15} {'ok':>5} {'median s':>9} {'min s':>7} {'max s':>7} {'peak RSS MiB':>13}")
    for name, s in summary.items():
        say(f"{name:<15} {s['ok']:>2}/{s['runs']:<2} {fmt(s['median_s'], '9.2f')} {fmt(s['min_s'], '7.2f')} "
            f"{fmt(s['max_s'], '7.2f')} {s['max_peak_rss_mib']:13.0f}")
    say("", "targets (ratio per round, median over rounds; range in brackets):")
    for label, t in targets.items():
        spread = f"[{min(t['per_round']):.2f}-{max(t['per_round']):.2f}]" if t["per_round"] else ""
        extra = f" ({100 * (t['median'] - 1):+.1f} %)" if t["median"] is not None else ""
        failed = f" (a command failed in {t['failed_rounds']} round(s))" if t["failed_rounds"] else ""
        say(f"  {label:<28} {fmt(t['median'], '5.2f')}x{extra:<11} {spread:<12} "
            f"target <= {t['limit']:.2f}  {t['verdict']}{failed}")
    rss = max((n for n in summary if n != "pg_checksums"), key=lambda n: summary[n]["max_peak_rss_mib"])
    say(f"  archcheck peak RSS, whole tree: {summary[rss]['max_peak_rss_mib']:.0f} MiB ({rss})")
    say("", "data directory as reported (first runs):", *(f"  {n:<14} {v}" for n, v in notes.items()))
    if max(busy, default=0) > BUSY_LIMIT:
        say("", f"!!! other work was running before {sum(b > BUSY_LIMIT for b in busy)} of {len(busy)} "
                f"rounds (CPUs busy: {', '.join(f'{b:.1f}' for b in busy)}): rerun on a quiet machine")
    if failures or errors:
        say("", f"!!! FAILED: {len(failures)} timed run(s) failed"
                + (f"; data-directory check failed for {', '.join(errors)}" if errors else ""))
    results = {"environment": env, "build": info, "archive": str(archive),
               "commands": {n: shlex.join(c) for n, c in cmds.items()}, "busy_cpus_before_round": busy,
               "runs": runs, "summary": summary, "targets": targets, "first_runs": notes,
               "failures": failures, "check_errors": errors}
    (work / "results.json").write_text(json.dumps(results, indent=1))
    say("", f"results: {work / 'results.json'}")
    sys.exit(1 if failures or errors else 0)


if __name__ == "__main__":
    main()
