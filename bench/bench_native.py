#!/usr/bin/env python3
"""Benchmark the native core (issue "A native core") against its targets, in one run.

Usage (as root: pg_checksums then runs as the postgres user through runuser):
    /work/shared/tools/make-anchor-data.sh bench/out       # the data, once (about 2 minutes)
    python3 bench/bench_native.py [--data DIR] [--rounds 3] [--only 1,2,3] [--json OUT]

Data (--data, default bench/out), as make-anchor-data.sh builds it: data.tar (real system files
and a pgbench -s 50 cluster with data checksums), data.tar.zst (one zstd frame), data-mf.tar.zst
(pzstd frames), pgdata.tar and pgdata/ (the cluster alone, cleanly shut down, owned by postgres).

Rows (each ratio is computed within a round, then the median over rounds is compared):
   1  verify data.tar.zst (default layers)             / zstd -t data.tar.zst           <= 0.95
   2  verify data.tar.zst --layers raw,zstd,tar,members / zstd -t data.tar.zst           <= 0.90
   3  verify data.tar.zst --layers zstd                / zstd -t data.tar.zst           <= 0.90
   4  verify data-mf.tar.zst                           / zstd -t data-mf.tar.zst        <= 0.65
   5  verify data-mf.tar.zst                           / pzstd -t -p 2 data-mf.tar.zst  <= 1.15
   6  verify data.tar --layers raw                     / b3sum data.tar                 <= 1.20
   7  cost of pages: row 1's verify / row 2's verify, minus 1                          <= +5 %
   8  verify pgdata.tar --layers tar,pages             / pg_checksums --check -D pgdata <= 2.5
   9  archcheck --help    (per round: the median of 10 runs), absolute                 <= 0.15 s
  10  archcheck --version (per round: the median of 10 runs), absolute                <= 0.15 s
  11  peak RSS of the whole process tree of every archcheck run above                  <= 200 MiB

Before timing (untimed): the tools and files are checked, the cluster must be cleanly shut down,
owned by postgres and mode 0700; pg_checksums must report "Bad checksums: 0"; --help and
--version must print what they should; archcheck's modules are compiled to bytecode (as a wheel
install does; an editable install under PYTHONDONTWRITEBYTECODE would compile them at every
start); the archives, pgdata.tar and pgdata/ are read once so every
command reads from a warm page cache.

Timing: every command needed by the chosen rows (--only) runs once per round, in an order that
rotates each round (run_bench's scheme), each archcheck verify with a fresh --state-dir in a temp
dir; wall time and peak summed VmRSS of its whole process tree (run_bench.measure, polled every
20 ms: forkserver and workers count). The machine's CPU load from other work is sampled for a
second before each round (run_bench.busy_cpus) and printed: only ratios from one quiet run count.

A verify run counts only when it exits 0 and its sealed report (STATE/reports/*.json) says
complete and intact, with the layers asked for and every byte covered; with the pages layer it
must also hold the PG_DATA_DIRECTORY finding with checksums compared. Any other outcome is an
error, printed as it happens and again at the end (exit status 1); a FAIL against a target is a
result, not an error. --json OUT writes every run, median and row.
"""
from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_bench import (BUSY_LIMIT, GB, MiB, busy_cpus, default_archcheck, environment, fmt,  # noqa: E402
                       measure, say, tail)

DEFAULT_DATA = HERE / "out"
FILES = ("data.tar", "data.tar.zst", "data-mf.tar.zst", "pgdata.tar")
ALL_LAYERS = ["raw", "zstd", "tar", "members", "pages"]  # verify's default
NO_PAGES = ["raw", "zstd", "tar", "members"]
STARTUP_REPEATS = 10  # --help and --version: runs per round, their median is the round's time
RSS_LIMIT = 200 * MiB
STATE = "{state}"  # replaced by a fresh state directory for each run


@dataclass
class Command:
    argv: list[str]
    tool: str  # the executable that must exist
    layers: list[str] | None = None  # set for archcheck verify: its report is checked
    repeat: int = 1
    archcheck: bool = False


@dataclass
class Row:
    number: int
    label: str
    numerator: str
    denominator: str | None  # None: the numerator's own seconds (or MiB, for the RSS row)
    limit: float
    kind: str = "ratio"  # ratio | pct (ratio - 1) | seconds | rss


ROWS = [
    Row(1, "verify zst (default) / zstd -t", "verify zst", "zstd -t zst", 0.95),
    Row(2, "verify zst -pages / zstd -t", "verify zst -pages", "zstd -t zst", 0.90),
    Row(3, "verify zst --layers zstd / zstd -t", "verify zst zstd-only", "zstd -t zst", 0.90),
    Row(4, "verify mf / zstd -t mf", "verify mf", "zstd -t mf", 0.65),
    Row(5, "verify mf / pzstd -t -p 2 mf", "verify mf", "pzstd -t -p2 mf", 1.15),
    Row(6, "verify tar --layers raw / b3sum tar", "verify tar raw", "b3sum tar", 1.20),
    Row(7, "cost of pages (row 1 / row 2 verify)", "verify zst", "verify zst -pages", 0.05, "pct"),
    Row(8, "verify pgdata.tar tar,pages / pg_checksums", "verify pgdata tar,pages", "pg_checksums", 2.5),
    Row(9, "archcheck --help", "archcheck --help", None, 0.15, "seconds"),
    Row(10, "archcheck --version", "archcheck --version", None, 0.15, "seconds"),
    Row(11, "archcheck peak RSS, whole tree", "", None, RSS_LIMIT / MiB, "rss"),
]


# --- commands ------------------------------------------------------------------------------------

def pg_bin() -> Path:
    """The newest installed PostgreSQL's binaries, as make-anchor-data.sh picks them."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                   if p.parent.name.isdigit() else 0)
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


def as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def all_commands(data: Path, archcheck: str) -> dict[str, Command]:
    tar, zst, mf, pgtar = (str(data / n) for n in FILES)
    verify = [archcheck, "verify", "--no-progress", "--state-dir", STATE]

    def ours(args: list[str], layers: list[str]) -> Command:
        return Command([*verify, *args], archcheck, layers, archcheck=True)

    return {
        "verify zst": ours([zst], ALL_LAYERS),
        "verify zst -pages": ours(["--layers", ",".join(NO_PAGES), zst], NO_PAGES),
        "verify zst zstd-only": ours(["--layers", "zstd", zst], ["zstd"]),
        "verify mf": ours([mf], ALL_LAYERS),
        "verify tar raw": ours(["--layers", "raw", tar], ["raw"]),
        "verify pgdata tar,pages": ours(["--layers", "tar,pages", pgtar], ["tar", "pages"]),
        "archcheck --help": Command([archcheck, "--help"], archcheck, repeat=STARTUP_REPEATS, archcheck=True),
        "archcheck --version": Command([archcheck, "--version"], archcheck, repeat=STARTUP_REPEATS,
                                       archcheck=True),
        "zstd -t zst": Command(["zstd", "-q", "-t", zst], "zstd"),
        "zstd -t mf": Command(["zstd", "-q", "-t", mf], "zstd"),
        "pzstd -t -p2 mf": Command(["pzstd", "-q", "-t", "-p", "2", mf], "pzstd"),
        "b3sum tar": Command(["b3sum", tar], "b3sum"),
        "pg_checksums": Command([*as_postgres(), str(pg_bin() / "pg_checksums"), "--check", "-D",
                                 str(data / "pgdata")], str(pg_bin() / "pg_checksums")),
    }


def rows_chosen(only: str | None) -> list[Row]:
    if not only:
        return ROWS
    wanted = {int(n) for n in only.split(",") if n.strip()}
    unknown = wanted - {r.number for r in ROWS}
    if unknown:
        sys.exit(f"--only: no row {', '.join(map(str, sorted(unknown)))} (rows are 1-{len(ROWS)})")
    return [r for r in ROWS if r.number in wanted]


def commands_for(rows: list[Row], cmds: dict[str, Command]) -> dict[str, Command]:
    """The commands the rows need, in the table's order; the RSS row alone needs every archcheck one."""
    names = {n for r in rows for n in (r.numerator, r.denominator) if n}
    if not names:  # row 11 alone
        names = {n for n, c in cmds.items() if c.archcheck}
    return {n: c for n, c in cmds.items() if n in names}


# --- preflight -----------------------------------------------------------------------------------

def missing_tools(cmds: dict[str, Command]) -> list[str]:
    tools = {c.tool for c in cmds.values()} | ({"runuser"} if "pg_checksums" in cmds and as_postgres() else set())
    return sorted(t for t in tools if not (shutil.which(t) or Path(t).is_file()))


def missing_files(data: Path, cmds: dict[str, Command]) -> list[str]:
    used = " ".join(a for c in cmds.values() for a in c.argv)
    wanted = [n for n in FILES if str(data / n) in used]
    if "pg_checksums" in cmds:
        wanted.append("pgdata/PG_VERSION")
    return [n for n in wanted if not (data / n).exists()]


def postgres_ids() -> tuple[int, int] | None:
    try:
        return pwd.getpwnam("postgres").pw_uid, grp.getgrnam("postgres").gr_gid
    except KeyError:
        return None


def check_cluster(datadir: Path) -> list[str]:
    """pg_checksums needs a cleanly shut down cluster in a postgres-owned 0700 directory, and must
    find no bad checksum; returns the problems (none: ready)."""
    problems = []
    control = subprocess.run([*as_postgres(), str(pg_bin() / "pg_controldata"), "-D", str(datadir)],
                             capture_output=True, text=True, check=False).stdout
    state = re.search(r"^Database cluster state:\s*(.*)$", control, re.M)
    if not state or state.group(1).strip() != "shut down":
        problems.append(f"cluster state {state.group(1).strip() if state else 'unknown'!r}, not 'shut down'")
    if (datadir / "postmaster.pid").exists():
        problems.append("postmaster.pid exists: is a server running?")
    st = datadir.stat()
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != postgres_ids():
        problems.append("not owned by postgres:postgres")
    if st.st_mode & 0o777 != 0o700:
        problems.append(f"mode {st.st_mode & 0o777:o}, not 700")
    return problems


def first_pg_checksums(cmd: Command) -> tuple[str, list[str]]:
    """pg_checksums once, untimed: its counts, and a problem unless it found no bad checksum."""
    proc = subprocess.run(cmd.argv, capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    blocks, bad = re.search(r"Blocks scanned:\s*(\d+)", out), re.search(r"Bad checksums:\s*(\d+)", out)
    note = f"{blocks.group(1) if blocks else '?'} blocks scanned, {bad.group(1) if bad else '?'} bad checksums"
    ok = proc.returncode == 0 and bad is not None and bad.group(1) == "0"
    return note, [] if ok else [f"pg_checksums: exit {proc.returncode}\n{tail(out)}"]


def check_startup_output(name: str, cmd: Command) -> list[str]:
    """--help must print the usage, --version the version line, both exiting 0."""
    proc = subprocess.run(cmd.argv, capture_output=True, text=True, check=False)
    expected = r"^Usage: archcheck " if name.endswith("--help") else r"^archcheck \d+\.\d+"
    if proc.returncode == 0 and re.search(expected, proc.stdout, re.M):
        return []
    return [f"{name}: exit {proc.returncode}, expected /{expected}/ in:\n{tail(proc.stdout + proc.stderr)}"]


def warm_cache(data: Path, cmds: dict[str, Command]) -> None:
    """Read every input once (the cluster through tar: GNU tar skips reading into /dev/null)."""
    used = " ".join(a for c in cmds.values() for a in c.argv)
    files = [data / n for n in FILES if str(data / n) in used]
    total = sum(f.stat().st_size for f in files)
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    if total > 0.8 * available:
        say(f"!!! the inputs ({total / GB:.1f} GB) may not stay in the page cache "
            f"({available / GB:.1f} GB available): times will include disk reads")
    if files:
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    if "pg_checksums" in cmds:
        subprocess.run(["bash", "-c", f"tar -cf - -C {shlex.quote(str(data))} pgdata | cat > /dev/null"],
                       check=True)


# --- one run -------------------------------------------------------------------------------------

def check_report(state: Path, cmd: Command) -> tuple[str | None, str]:
    """(a problem or None, a note) from the report sealed in ``state`` by a verify run."""
    reports = sorted((state / "reports").glob("*.json"))
    if len(reports) != 1:
        return f"expected one sealed report in {state}/reports, found {len(reports)}", ""
    report = json.loads(reports[0].read_text())
    archive = (report.get("archives") or [{}])[0]
    coverage = report.get("coverage", {})
    if (report.get("status"), report.get("verdict"), report.get("exit_code")) != ("complete", "intact", 0):
        return f"report: status {report.get('status')}, verdict {report.get('verdict')}", ""
    if archive.get("verdict") != "intact" or archive.get("layers") != cmd.layers:
        return f"archive: verdict {archive.get('verdict')}, layers {archive.get('layers')} != {cmd.layers}", ""
    if coverage.get("verified_bytes") != coverage.get("bytes"):
        return f"coverage {coverage.get('verified_bytes')} of {coverage.get('bytes')} bytes", ""
    note = "INTACT"
    if "pages" in cmd.layers:
        found = [f for f in archive.get("findings", []) if f.get("code") == "PG_DATA_DIRECTORY"]
        if not found or found[0].get("details", {}).get("checksums") != "compared":
            return "pages layer: no PG_DATA_DIRECTORY finding with checksums compared", ""
        note += f", {found[0]['details'].get('pages')} pages, checksums compared"
    return None, note


def run_verify(cmd: Command, state: Path) -> dict:
    """One verify with a fresh state directory; its report must say intact."""
    state.mkdir(parents=True)
    run = measure([state.as_posix() if a == STATE else a for a in cmd.argv])
    if run["exit"] == 0:
        run["problem"], run["note"] = check_report(state, cmd)
    shutil.rmtree(state, ignore_errors=True)
    return run


def run_repeated(cmd: Command) -> dict:
    """``cmd.repeat`` runs back to back: the median wall time, the largest peak RSS."""
    runs = [measure(cmd.argv) for _ in range(cmd.repeat)]
    failed = [r for r in runs if r["exit"] != 0]
    run = failed[0] if failed else {"exit": 0}
    return {**run, "wall_s": statistics.median(r["wall_s"] for r in runs),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
            "walls_s": [r["wall_s"] for r in runs]}


def run_once(cmd: Command, state: Path) -> dict:
    if cmd.layers is not None:
        return run_verify(cmd, state)
    if cmd.repeat > 1:
        return run_repeated(cmd)
    return measure(cmd.argv)


def succeeded(run: dict) -> bool:
    return run["exit"] == 0 and not run.get("problem")


def report_failure(name: str, cmd: Command, run: dict) -> None:
    why = run.get("problem") or f"exited {run['exit']}"
    print(f"\n!!! FAILED: {name} in round {run['round'] + 1}: {why}\n    {shlex.join(cmd.argv)}"
          + (f"\n--- stdout:\n{run.get('stdout_tail') or '(empty)'}\n--- stderr:\n{run.get('stderr_tail') or '(empty)'}"
             if run["exit"] != 0 else "") + "\n", file=sys.stderr, flush=True)


# --- rounds --------------------------------------------------------------------------------------

def run_rounds(cmds: dict[str, Command], rounds: int, tmp: Path) -> tuple[dict, list[dict], list[float]]:
    """Every command once per round, the order rotating each round (as run_bench.run_rounds does),
    with the other CPU load sampled before each round."""
    names = list(cmds)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    failures, busy = [], []
    for r in range(rounds):
        busy.append(busy_cpus())
        say(f"round {r + 1}/{rounds}: other work busy on {busy[-1]:.2f} CPUs before the round"
            + (" -- this round's times are suspect" if busy[-1] > BUSY_LIMIT else ""))
        shift = r % len(names)
        for i, name in enumerate(names[shift:] + names[:shift]):
            run = run_once(cmds[name], tmp / f"round{r + 1}-{i}" / "state")
            run["round"] = r
            runs[name].append(run)
            if not succeeded(run):
                failures.append({"command": name, **run})
                report_failure(name, cmds[name], run)
        say(f"round {r + 1}/{rounds} done: " + ", ".join(
            f"{n} {runs[n][-1]['wall_s']:.2f}s" for n in names))
    return runs, failures, busy


# --- results -------------------------------------------------------------------------------------

def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per command: successful runs, median/min/max wall seconds, largest peak RSS."""
    summary = {}
    for name, rs in runs.items():
        walls = [r["wall_s"] for r in rs if succeeded(r)]
        summary[name] = {"ok": len(walls), "runs": len(rs),
                         "median_s": statistics.median(walls) if walls else None,
                         "min_s": min(walls, default=None), "max_s": max(walls, default=None),
                         "max_peak_rss_mib": max((r["peak_rss_bytes"] for r in rs), default=0) / MiB}
    return summary


def per_round_values(row: Row, runs: dict[str, list[dict]]) -> tuple[list[float], int]:
    """The row's value in every round where its commands succeeded, and how many rounds failed."""
    nums = runs.get(row.numerator, [])
    if row.kind == "seconds":
        values = [r["wall_s"] for r in nums if succeeded(r)]
        return values, len(nums) - len(values)
    pairs = list(zip(nums, runs.get(row.denominator, [])))
    values = [a["wall_s"] / b["wall_s"] - (row.kind == "pct") for a, b in pairs if succeeded(a) and succeeded(b)]
    return values, len(pairs) - len(values)


def evaluate_rss(row: Row, runs: dict[str, list[dict]], cmds: dict[str, Command]) -> dict:
    ours = [(n, r) for n, rs in runs.items() if cmds[n].archcheck for r in rs]
    if not ours:
        return {"row": row.number, "label": row.label, "value": None, "verdict": "not measured"}
    name, run = max(ours, key=lambda nr: nr[1]["peak_rss_bytes"])
    failed = sum(not succeeded(r) for _, r in ours)
    peak = run["peak_rss_bytes"] / MiB
    return {"row": row.number, "label": row.label, "kind": row.kind, "value": peak, "command": name,
            "limit": row.limit, "failed_runs": failed,
            "verdict": "PASS" if peak <= row.limit and not failed else "FAIL"}


def evaluate(row: Row, runs: dict[str, list[dict]], cmds: dict[str, Command]) -> dict:
    if row.kind == "rss":
        return evaluate_rss(row, runs, cmds)
    if row.numerator not in runs or (row.denominator and row.denominator not in runs):
        return {"row": row.number, "label": row.label, "value": None, "verdict": "not measured"}
    values, failed = per_round_values(row, runs)
    value = statistics.median(values) if values else None
    verdict = "PASS" if value is not None and value <= row.limit and not failed else "FAIL"
    return {"row": row.number, "label": row.label, "kind": row.kind, "value": value, "per_round": values,
            "limit": row.limit, "failed_rounds": failed, "verdict": verdict}


def show(kind: str, x: float | None) -> str:
    if x is None:
        return "-"
    return {"ratio": f"{x:.3f}x", "pct": f"{100 * x:+.1f}%", "seconds": f"{x:.3f}s", "rss": f"{x:.0f} MiB"}[kind]


def print_commands(summary: dict) -> None:
    say("", f"{'command':<24} {'ok':>5} {'median s':>9} {'min s':>8} {'max s':>8} {'peak RSS MiB':>13}")
    for name, s in summary.items():
        say(f"{name:<24} {s['ok']:>2}/{s['runs']:<2} {fmt(s['median_s'], '9.3f')} {fmt(s['min_s'], '8.3f')} "
            f"{fmt(s['max_s'], '8.3f')} {s['max_peak_rss_mib']:13.1f}")


def print_rows(results: list[dict]) -> None:
    say("", "rows (per-round ratio, median over rounds; per-round values in brackets):")
    for res in results:
        kind = res.get("kind", "ratio")
        if res["value"] is None and res["verdict"] == "not measured":
            say(f"  {res['row']:>2}  {res['label']:<42} {'-':>10}  {'':<26} {'':<12} NOT MEASURED")
            continue
        spread = " ".join(show(kind, v) for v in res.get("per_round", []))
        where = f"({res['command']})" if kind == "rss" else f"[{spread}]"
        limit = ("<= " + ("+" if kind == "pct" else "") + show(kind, res["limit"]).lstrip("+"))
        extra = f" ({res['failed_rounds']} round(s) failed)" if res.get("failed_rounds") else ""
        extra += f" ({res['failed_runs']} archcheck run(s) failed)" if res.get("failed_runs") else ""
        say(f"  {res['row']:>2}  {res['label']:<42} {show(kind, res['value']):>10}  {where}".ljust(90)
            + f" target {limit:<12} {res['verdict']}{extra}")


def print_load(busy: list[float]) -> None:
    say("", "CPU load from other work before each round (CPUs busy): "
        + ", ".join(f"{b:.2f}" for b in busy))
    if busy and max(busy) > BUSY_LIMIT:
        say(f"!!! other work was running before {sum(b > BUSY_LIMIT for b in busy)} of {len(busy)} rounds "
            f"(> {BUSY_LIMIT} CPUs): the times are suspect, rerun on a quiet machine")


def print_errors(errors: list[str], failures: list[dict]) -> None:
    if not errors and not failures:
        return
    say("", f"!!! ERRORS: {len(errors)} check(s) before timing, {len(failures)} failed run(s)")
    for e in errors:
        say(f"!!!   {e.splitlines()[0]}")
    for f in failures:
        say(f"!!!   {f['command']} (round {f['round'] + 1}): {f.get('problem') or 'exit ' + str(f['exit'])}")


# --- main ----------------------------------------------------------------------------------------

def preflight(data: Path, cmds: dict[str, Command], rows: list[Row]) -> tuple[dict[str, Command], dict, list[str]]:
    """Drop the commands that cannot run (and say which rows go unmeasured); check the rest's
    outputs once, untimed. Returns the runnable commands, notes and errors."""
    notes, errors = {}, []
    tools, files = missing_tools(cmds), missing_files(data, cmds)
    for problem in [f"missing tool {t}" for t in tools] + [f"missing file {data / f}" for f in files]:
        errors.append(problem)
        say(f"!!! {problem}")
    runnable = {n: c for n, c in cmds.items()
                if c.tool not in tools and not any(str(data / f.split("/")[0]) in c.argv for f in files)}
    if "pg_checksums" in runnable:
        problems = check_cluster(data / "pgdata")
        if not problems:
            notes["pg_checksums"], problems = first_pg_checksums(runnable["pg_checksums"])
        if problems:
            errors += [f"pgdata: {p}" for p in problems]
            say(*(f"!!! pgdata: {p}" for p in problems))
            del runnable["pg_checksums"]
    for name in ("archcheck --help", "archcheck --version"):
        if name in runnable:
            problems = check_startup_output(name, runnable[name])
            errors += problems
            say(*(f"!!! {p}" for p in problems))
    for row in rows:
        gone = [n for n in (row.numerator, row.denominator) if n and n in cmds and n not in runnable]
        if gone:
            say(f"!!! row {row.number} cannot be measured: {', '.join(gone)} cannot run")
    return runnable, notes, errors


def compile_bytecode(archcheck: str) -> None:
    """An editable install under PYTHONDONTWRITEBYTECODE (set on these machines) compiles every
    module of archcheck at every start, about 0.1 s that no installed copy pays: write the .pyc
    files once, with the interpreter archcheck runs on."""
    interpreter = Path(archcheck).read_text(errors="replace").splitlines()[0].removeprefix("#!").strip()
    package = subprocess.run([interpreter, "-c", "import archcheck, os; print(os.path.dirname(archcheck.__file__))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([interpreter, "-m", "compileall", "-q", package], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the data (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--only", help="rows to run, e.g. 1,2,3 (default: all)")
    parser.add_argument("--json", type=Path, help="write every run, median and row here")
    parser.add_argument("--archcheck", default=default_archcheck(), help="archcheck executable")
    args = parser.parse_args()
    data = args.data.resolve()
    if not args.archcheck:
        sys.exit("archcheck not found: install it (pip install -e .) or pass --archcheck")

    rows = rows_chosen(args.only)
    cmds, notes, errors = preflight(data, commands_for(rows, all_commands(data, args.archcheck)), rows)
    env = environment(args.archcheck)
    env["pg_checksums"] = subprocess.run([str(pg_bin() / "pg_checksums"), "--version"], capture_output=True,
                                         text=True, check=False).stdout.strip() or "missing"
    env["data"] = {n: (data / n).stat().st_size for n in FILES if (data / n).exists()}
    say(*(f"{k}: {v}" for k, v in env.items() if k != "data"),
        "data: " + ", ".join(f"{n} {s / GB:.2f} GB" for n, s in env["data"].items()),
        *(f"{n}: {v}" for n, v in notes.items()), "commands:",
        *(f"  {n:<24} {shlex.join(c.argv)}" + (f"  (x{c.repeat} per round)" if c.repeat > 1 else "")
          for n, c in cmds.items()))
    say("compiling archcheck's bytecode (as a wheel install does) ...")
    compile_bytecode(args.archcheck)
    say("warming the page cache ...")
    warm_cache(data, cmds)
    with tempfile.TemporaryDirectory(prefix="archcheck-bench-native-") as tmp:
        runs, failures, busy = run_rounds(cmds, args.rounds, Path(tmp))

    summary = summarize(runs)
    results = [evaluate(r, runs, cmds) for r in rows]
    print_commands(summary)
    print_rows(results)
    print_load(busy)
    print_errors(errors, failures)
    if args.json:
        args.json.write_text(json.dumps({
            "environment": env, "notes": notes, "commands": {n: shlex.join(c.argv) for n, c in cmds.items()},
            "busy_cpus_before_round": busy, "runs": runs, "summary": summary, "rows": results,
            "failures": failures, "errors": errors}, indent=1))
        say("", f"results: {args.json}")
    sys.exit(1 if errors or failures else 0)


if __name__ == "__main__":
    main()
