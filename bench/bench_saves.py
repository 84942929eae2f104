#!/usr/bin/env python3
"""Benchmark what the run's periodic state saves cost on an archive of very many small members.

Usage:
    .venv/bin/python bench/bench_saves.py [--members 2000000] [--rounds 3] [--work DIR] [--rebuild]
                                          [--src SRC_DIR] [--vs SRC2] [--frames-archive] [--json]

build (once, cached in --work, default bench/work/saves/; --rebuild forces it): a tar of --members
small members (`d{i//1000:04d}/f{i:07d}.txt`, 100-600 bytes of deterministic text sliced from a
16 MiB word pool, GNU format), streamed by Python's tarfile (no files on disk), then compressed
multi-frame by `pzstd -p 2 -q` into members.tar.zst; the plain tar is deleted afterwards.
--frames-archive: the rounds run instead on members.f256k.tar.zst, the same tar cut into
independent zstd frames of 256 KiB of input each (level 3, content checksums; ~8,600 frames),
compressed by the `zstandard` package as the tar is generated (no plain tar on disk).

run: each round is a fresh subprocess (clean imports and forkserver) that puts --src first on
sys.path (default: the src directory next to this script's repo), wraps these points before
calling the library, then runs `archcheck.api.verify(archive, state=<fresh dir>, workers=2)`:
  archcheck.pipeline.Run._snapshot              loop-thread cost of each save (+ snapshot bytes)
  archcheck.pipeline.Run._write                 write_atomic of each save (in its thread)
  archcheck.layers.stream.StreamCheck.checkpoint  each stream checkpoint (walker thread)
  archcheck.manifest.MembersWriter.sync         fsync of the members file (inside a checkpoint,
                                                and once at close)
  archcheck.runner.seal_report                  extra: sealing the report into the audit ledger
A point missing from the loaded code is reported as absent. Then the `--report` cost:
archcheck.reports.json_report.write(DrillResult, path), the DrillResult taken from the finished
drill by api.drill_status (no second verify; api.run_drill only if that is unavailable); where
write() takes `members`, also write(..., members=True) ("report --report-members"), since the
default then no longer lists the members.

Prints per point the median over rounds of: calls, total s, max s per call, median s per call
(and snapshot bytes), the verify wall time, and the share of that wall time spent in
snapshot + write + checkpoint. ARCHCHECK_SAVE_INTERVAL is left as the environment has it.

--vs SRC2: rounds alternate between --src (A) and SRC2 (B), A B A B, each in a fresh subprocess;
both tables are printed, then per round the ratio B/A of the main costs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work" / "saves"
MARK = "BENCH_SAVES_STATS "
BUILD_VERSION = 1
WORDS = ("backup restore archive segment frame member checksum tree verify drill manifest resume the "
         "of and to in is that for it with as was on be by at this from or have an they which "
         "postgres wal page relation tablespace index vacuum commit xact lsn timeline").split()
POINTS = [  # (label, module, attribute path)
    ("snapshot", "archcheck.pipeline", "Run._snapshot"),
    ("write", "archcheck.pipeline", "Run._write"),
    ("checkpoint", "archcheck.layers.stream", "StreamCheck.checkpoint"),
    ("sync", "archcheck.manifest", "MembersWriter.sync"),
    ("seal (extra)", "archcheck.runner", "seal_report"),
]
SHARE_OF = ("snapshot", "write", "checkpoint")  # sync runs inside checkpoint: not added again
MB = 1024 * 1024
FRAMES_VERSION = 1
FRAME_INPUT = 256 * 1024  # --frames-archive: uncompressed bytes per zstd frame
FRAME_LEVEL = 3


def say(text: str) -> None:
    print(text, flush=True)


# --- build -----------------------------------------------------------------------------------------

def cached(meta_path: Path, zst: Path, wanted: dict, rebuild: bool) -> dict | None:
    if not rebuild and zst.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in wanted} == wanted and meta.get("zst_size") == zst.stat().st_size:
            say(f"build: cached {zst} ({wanted['members']:,} members)")
            return {**meta, "cached": True}
    return None


def build(work: Path, members: int, rebuild: bool) -> dict:
    meta_path, zst = work / "build.json", work / "members.tar.zst"
    wanted = {"version": BUILD_VERSION, "members": members}
    if (meta := cached(meta_path, zst, wanted, rebuild)) is not None:
        return meta
    if shutil.which("pzstd") is None:
        sys.exit("pzstd is not on PATH")
    work.mkdir(parents=True, exist_ok=True)
    for name in ("build.json", "members.tar", "members.tar.zst", "members.tar.zst.partial"):
        (work / name).unlink(missing_ok=True)
    tar_path = work / "members.tar"
    say(f"build: tar of {members:,} members, streamed by tarfile ...")
    started = time.monotonic()
    tar_size = write_tar(tar_path, members)
    tar_time = time.monotonic() - started
    say(f"build: tar {tar_size / MB:,.1f} MiB in {tar_time:.1f} s; pzstd -p 2 -q ...")
    started = time.monotonic()
    partial = work / "members.tar.zst.partial"
    subprocess.run(["pzstd", "-p", "2", "-q", "-f", str(tar_path), "-o", str(partial)], check=True)
    partial.rename(zst)
    zst_time = time.monotonic() - started
    tar_path.unlink()  # the verify needs only the .tar.zst
    meta = {**wanted, "tar_size": tar_size, "zst_size": zst.stat().st_size, "tar_seconds": round(tar_time, 2),
            "pzstd_seconds": round(zst_time, 2), "format": "gnu", "compressor": "pzstd -p 2 -q"}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return {**meta, "cached": False}


def build_frames(work: Path, members: int, rebuild: bool) -> dict:
    """members.f256k.tar.zst: the same tar, one independent zstd frame per FRAME_INPUT bytes."""
    meta_path, zst = work / "members.f256k.json", work / "members.f256k.tar.zst"
    wanted = {"version": FRAMES_VERSION, "members": members, "frame_input": FRAME_INPUT, "level": FRAME_LEVEL}
    if (meta := cached(meta_path, zst, wanted, rebuild)) is not None:
        return meta
    import zstandard

    work.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    zst.unlink(missing_ok=True)
    partial = work / "members.f256k.tar.zst.partial"
    say(f"build: tar of {members:,} members into zstd frames of {FRAME_INPUT // 1024} KiB (level {FRAME_LEVEL}) ...")
    started = time.monotonic()
    with open(partial, "wb", buffering=8 * MB) as out:
        framed = FrameWriter(out, zstandard.ZstdCompressor(level=FRAME_LEVEL, write_checksum=True))
        write_tar_to(framed, members)
        framed.close()
    partial.rename(zst)
    meta = {**wanted, "tar_size": framed.size, "zst_size": zst.stat().st_size, "frames": framed.frames,
            "seconds": round(time.monotonic() - started, 2), "format": "gnu",
            "compressor": f"zstandard {zstandard.__version__} level {FRAME_LEVEL}, checksums, "
                          f"{FRAME_INPUT // 1024} KiB per frame"}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return {**meta, "cached": False}


class FrameWriter:
    """A file-like sink: every FRAME_INPUT bytes written become one zstd frame in ``out``."""

    def __init__(self, out, compressor):
        self.out, self.compressor = out, compressor
        self.buffer = bytearray()
        self.size = self.frames = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.size += len(data)
        if len(self.buffer) >= FRAME_INPUT:
            view = memoryview(self.buffer)
            whole = len(view) - len(view) % FRAME_INPUT
            for at in range(0, whole, FRAME_INPUT):
                self._frame(view[at:at + FRAME_INPUT])
            view.release()
            del self.buffer[:whole]
        return len(data)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if self.buffer:
            self._frame(self.buffer)
            self.buffer = bytearray()

    def _frame(self, chunk) -> None:
        self.out.write(self.compressor.compress(chunk))  # each call: a whole frame, with its checksum
        self.frames += 1


def write_tar(path: Path, members: int) -> int:
    with open(path, "wb", buffering=8 * MB) as raw:
        write_tar_to(raw, members)
    return path.stat().st_size


def write_tar_to(raw, members: int) -> None:
    """The tar stream into ``raw`` (anything with write and tell)."""
    import tarfile

    rng = random.Random(20240601)
    pool = " ".join(rng.choices(WORDS, k=3_000_000)).encode()[:16 * MB]
    span = len(pool) - 700
    info = tarfile.TarInfo()
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 1_700_000_000, 0o644, 0, 0, "", ""
    for i in range(members):  # tarfile's headers, written here: TarFile keeps every member in memory
        size = rng.randrange(100, 601)
        at = rng.randrange(span)
        data = b"file %d\n" % i + pool[at:at + size]
        info.name, info.size = f"d{i // 1000:04d}/f{i:07d}.txt", len(data)
        raw.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        raw.write(data + tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE))
        if i and i % 500_000 == 0:
            say(f"build:   {i:,} members ...")
    end = 2 * tarfile.BLOCKSIZE  # the end-of-archive blocks, padded to a whole record
    raw.write(tarfile.NUL * (end + -(raw.tell() + end) % tarfile.RECORDSIZE))


# --- child: one verify, in its own process -----------------------------------------------------------

def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(args.src).resolve()))
    import importlib

    import archcheck
    samples: dict[str, dict] = {}

    def resolve(module_name: str, attr_path: str):
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            return None, None
        *outer, name = attr_path.split(".")
        for part in outer:
            owner = getattr(owner, part, None)
            if owner is None:
                return None, None
        return owner, name if getattr(owner, name, None) is not None else None

    def snapshot_bytes(result) -> int | None:
        if isinstance(result, (bytes, bytearray, memoryview)):
            return len(result)
        if isinstance(result, tuple):
            return next((len(x) for x in result if isinstance(x, (bytes, bytearray, memoryview))), None)
        return None

    def wrap(label: str, fn):
        record = samples[label] = {"present": True, "seconds": [], "bytes": [], "frame_spans": []}

        def timed(*a, **kw):
            started = time.perf_counter()
            try:
                result = fn(*a, **kw)
            finally:
                record["seconds"].append(time.perf_counter() - started)
            if label == "snapshot":
                record["bytes"].append(snapshot_bytes(result))
            elif label == "checkpoint" and a:
                spans = getattr(a[0], "frame_spans", None)
                record["frame_spans"].append(len(spans) if spans is not None else None)
            return result
        timed.__wrapped__ = fn
        return timed

    for label, module_name, attr_path in POINTS:
        owner, name = resolve(module_name, attr_path)
        if owner is None or name is None:
            samples[label] = {"present": False}
            continue
        setattr(owner, name, wrap(label, getattr(owner, name)))

    from archcheck import api
    import inspect
    params = inspect.signature(api.verify).parameters
    kwargs = {"state": args.state}
    if "workers" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["workers"] = 2
    started = time.perf_counter()
    verification = api.verify(args.archive, **kwargs)
    wall = time.perf_counter() - started

    manifest = getattr(verification, "manifest", None)
    stream = getattr(manifest, "stream", None) or {}
    manifest_path = getattr(verification, "manifest_path", None)
    members_info = getattr(manifest, "members", None) or {}
    members_size = None
    if manifest_path is not None:  # old: {"file": name}; new: {"log": [[file, length, blake3], ...]}
        names = [members_info["file"]] if members_info.get("file") else [p[0] for p in members_info.get("log") or ()]
        files = [Path(manifest_path).parent / name for name in names]
        if files and all(f.exists() for f in files):
            members_size = sum(f.stat().st_size for f in files)
    frame_table = stream.get("frame_table") or {}
    stats = {
        "archcheck_file": archcheck.__file__,
        "worker_archcheck_file": worker_archcheck_file(),
        "pipeline_file": sys.modules["archcheck.pipeline"].__file__,
        "verify_kwargs": kwargs,
        "wall": wall,
        "verdict": getattr(verification, "verdict", None),
        "status": getattr(manifest, "status", None),
        "member_count": stream.get("member_count", members_info.get("count")),
        "frames": stream.get("frames", len(frame_table.get("rows", ()))),
        "findings": [f"{getattr(f, 'code', f)}" for f in (getattr(verification, "findings", None) or [])],
        "manifest_path": str(manifest_path) if manifest_path is not None else None,
        "manifest_size": Path(manifest_path).stat().st_size if manifest_path and Path(manifest_path).exists() else None,
        "members_file_size": members_size,
        "save_interval": os.environ.get("ARCHCHECK_SAVE_INTERVAL", "unset (0.5)"),
        "points": samples,
    }
    # the --report cost: the finished drill's result, then the JSON report
    report = Path(args.state) / "bench-report.json"
    result, how, result_wall = None, None, None
    started = time.perf_counter()
    try:
        drills = [d for d in api.list_drills(state=args.state) if hasattr(d, "id")]
        if drills and hasattr(api, "drill_status"):
            result, how = api.drill_status(drills[-1].id, state=args.state), "api.drill_status"
    except Exception as exc:  # noqa: BLE001 - fall back to a second drill
        how = f"drill_status failed: {exc!r}"
    if result is None:
        result, how = api.run_drill([args.archive], state=Path(args.state) / "second", workers=2), "api.run_drill"
    result_wall = time.perf_counter() - started
    from archcheck.reports import json_report
    started = time.perf_counter()
    json_report.write(result, report)
    stats["report"] = {"result_via": how, "result_seconds": result_wall,
                       "write_seconds": time.perf_counter() - started, "size": report.stat().st_size}
    report.unlink()
    if "members" in inspect.signature(json_report.write).parameters:  # new: the default no longer lists them
        started = time.perf_counter()
        json_report.write(result, report, members=True)
        stats["report"].update(members_write_seconds=time.perf_counter() - started,
                               members_size=report.stat().st_size)
        report.unlink()
    print(MARK + json.dumps(stats), flush=True)


def _archcheck_file() -> str:
    import archcheck
    return archcheck.__file__


def worker_archcheck_file() -> str:
    """Which archcheck a forkserver worker imports (the verify's forkserver is still running)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
            return pool.submit(_archcheck_file).result(timeout=60)
    except Exception as exc:  # noqa: BLE001 - informative only
        return f"unknown ({exc!r})"


# --- parent --------------------------------------------------------------------------------------------

def one_round(args: argparse.Namespace, src: Path, archive: Path, r: int) -> dict:
    state = Path(tempfile.mkdtemp(prefix=f"state-r{r}-", dir=args.work))
    # PYTHONPATH as well as sys.path: Python 3.11's forkserver ignores the parent's sys.path, so
    # without it the pool's workers would import the venv's editable archcheck
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",  # leave no __pycache__ in the src tree
           "PYTHONPATH": os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--src", str(src),
           "--archive", str(archive), "--state", str(state)]
    try:
        started = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            sys.exit(f"round {r}: the verify subprocess failed (exit {proc.returncode})")
        stats = json.loads(lines[-1][len(MARK):])
        stats["process_wall"] = elapsed
        return stats
    finally:
        shutil.rmtree(state, ignore_errors=True)


def point_summary(record: dict) -> dict:
    if not record.get("present"):
        return {"present": False}
    secs = record["seconds"]
    sizes = [b for b in record.get("bytes", []) if b is not None]
    spans = [s for s in record.get("frame_spans", []) if s is not None]
    return {"present": True, "count": len(secs), "total": sum(secs), "max": max(secs, default=0.0),
            "median": statistics.median(secs) if secs else 0.0,
            "bytes_median": statistics.median(sizes) if sizes else None, "bytes_max": max(sizes, default=None),
            "frame_spans_last": spans[-1] if spans else None}


def med(values: list):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rounds: list[dict]) -> dict:
    points = {}
    for label, _, _ in POINTS:
        per = [point_summary(s["points"].get(label, {"present": False})) for s in rounds]
        if not all(p["present"] for p in per):
            points[label] = {"present": False, "rounds_present": sum(p["present"] for p in per)}
            continue
        points[label] = {"present": True, **{k: med([p[k] for p in per]) for k in per[0] if k != "present"}}
    shares = [sum(point_summary(s["points"].get(l, {})).get("total", 0.0) for l in SHARE_OF) / s["wall"]
              for s in rounds]
    return {
        "points": points, "wall": med([s["wall"] for s in rounds]), "walls": [s["wall"] for s in rounds],
        "save_share": med(shares), "save_shares": shares,
        "manifest_size": med([s["manifest_size"] for s in rounds]),
        "members_file_size": med([s["members_file_size"] for s in rounds]),
        "report_write": med([s["report"]["write_seconds"] for s in rounds]),
        "report_result": med([s["report"]["result_seconds"] for s in rounds]),
        "report_size": med([s["report"]["size"] for s in rounds]),
        "report_members_write": med([s["report"].get("members_write_seconds") for s in rounds]),
        "report_members_size": med([s["report"].get("members_size") for s in rounds]),
        "report_via": sorted({s["report"]["result_via"] for s in rounds}),
        "verdicts": sorted({str(s["verdict"]) for s in rounds}),
        "member_counts": sorted({s["member_count"] for s in rounds}, key=str),
        "frames": sorted({s["frames"] for s in rounds}, key=str),
        "findings": sorted({c for s in rounds for c in s["findings"]}),
        "archcheck_files": sorted({s["archcheck_file"] for s in rounds}),
        "worker_archcheck_files": sorted({s["worker_archcheck_file"] for s in rounds}),
        "save_interval": rounds[0]["save_interval"],
    }


def fmt_s(v) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.2f} ms" if v < 1 else f"{v:.3f} s"


def fmt_b(v) -> str:
    return "-" if v is None else f"{v / MB:.2f} MiB" if v >= MB else f"{v / 1024:.1f} KiB" if v >= 1024 else f"{v:.0f} B"


def print_table(summary: dict, build_meta: dict, args: argparse.Namespace, rounds: int) -> None:
    say("")
    say(f"archcheck loaded from: {', '.join(summary['archcheck_files'])} "
        f"(pool workers: {', '.join(summary['worker_archcheck_files'])})")
    say(f"archive: {build_meta['members']:,} members; tar {fmt_b(build_meta['tar_size'])}, "
        f"zst {fmt_b(build_meta['zst_size'])}; zstd frames {', '.join(map(str, summary['frames']))}")
    say(f"verdict {summary['verdicts']}, member_count {summary['member_counts']}, findings {summary['findings']}, "
        f"ARCHCHECK_SAVE_INTERVAL {summary['save_interval']}")
    say(f"\nmedian over {rounds} rounds (each value: the median of the per-round values)")
    head = f"{'point':<14}{'calls':>7}{'total':>12}{'max/call':>12}{'median/call':>13}{'bytes (med/max)':>24}"
    say(head)
    say("-" * len(head))
    for label, module, attr in POINTS:
        p = summary["points"][label]
        if not p["present"]:
            say(f"{label:<14}  absent ({module}.{attr})")
            continue
        extra = f"{fmt_b(p['bytes_median'])} / {fmt_b(p['bytes_max'])}" if label == "snapshot" else ""
        if label == "checkpoint" and p.get("frame_spans_last") is not None:
            extra = f"frame_spans {p['frame_spans_last']:.0f}"
        say(f"{label:<14}{p['count']:>7.0f}{fmt_s(p['total']):>12}{fmt_s(p['max']):>12}{fmt_s(p['median']):>13}"
            f"{extra:>24}")
    say("")
    say(f"verify wall time        {summary['wall']:.2f} s   (rounds: {', '.join(f'{w:.2f}' for w in summary['walls'])})")
    say(f"snapshot+write+checkpoint share of wall: {summary['save_share'] * 100:.2f} %   "
        f"(rounds: {', '.join(f'{s * 100:.2f} %' for s in summary['save_shares'])})")
    say(f"manifest.json on disk   {fmt_b(summary['manifest_size'])}")
    say(f"members file on disk    {fmt_b(summary['members_file_size'])}")
    say(f"report: json_report.write {fmt_s(summary['report_write'])}, {fmt_b(summary['report_size'])} "
        f"(DrillResult via {', '.join(summary['report_via'])}: {fmt_s(summary['report_result'])})")
    if summary["report_members_write"] is not None:
        say(f"report --report-members: json_report.write(members=True) {fmt_s(summary['report_members_write'])}, "
            f"{fmt_b(summary['report_members_size'])}")


RATIOS = [  # (label, key in B's round_costs, key in A's)
    ("verify wall", "wall", "wall"),
    ("save total (snap+write+ckpt)", "saves", "saves"),
    ("checkpoint median/call", "checkpoint", "checkpoint"),
    ("snapshot median/call", "snapshot", "snapshot"),
    ("snapshot bytes (median)", "snapshot_bytes", "snapshot_bytes"),
    ("report", "report", "report"),
    ("report --report-members / A report", "report_members", "report"),
]


def round_costs(stats: dict) -> dict:
    points = {label: point_summary(stats["points"].get(label, {"present": False})) for label in SHARE_OF}
    return {"wall": stats["wall"], "saves": sum(p.get("total", 0.0) for p in points.values()),
            "checkpoint": points["checkpoint"].get("median"), "snapshot": points["snapshot"].get("median"),
            "snapshot_bytes": points["snapshot"].get("bytes_median"), "report": stats["report"]["write_seconds"],
            "report_members": stats["report"].get("members_write_seconds")}


def ratios(rounds_a: list[dict], rounds_b: list[dict]) -> dict:
    out = {}
    for label, key_b, key_a in RATIOS:
        per = []
        for a, b in zip(map(round_costs, rounds_a), map(round_costs, rounds_b)):
            per.append(b[key_b] / a[key_a] if a[key_a] and b[key_b] is not None else None)
        if any(v is not None for v in per):
            out[label] = per
    return out


def print_ratios(table: dict, src_a: Path, src_b: Path) -> None:
    say(f"\nratio B/A per round (A = {src_a}, B = {src_b}; A and B of a round ran back to back)")
    n = max(map(len, table.values()), default=0)
    head = f"{'':<36}" + "".join(f"{f'round {r}':>10}" for r in range(1, n + 1)) + f"{'median':>10}"
    say(head)
    say("-" * len(head))
    def cell(v) -> str:
        return f"{'-' if v is None else f'{v:.3f}' if v >= 0.01 else f'{v:.1e}':>10}"

    for label, per in table.items():
        say(f"{label:<36}{''.join(map(cell, per))}{cell(med(per))}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=2_000_000)
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--src", type=Path, default=REPO / "src", help="the src directory to import archcheck from")
    p.add_argument("--vs", type=Path, metavar="SRC2",
                   help="also run SRC2's archcheck, rounds interleaved A B A B, and print the ratios B/A")
    p.add_argument("--frames-archive", action="store_true",
                   help=f"run on the archive of {FRAME_INPUT // 1024} KiB zstd frames (built once in --work)")
    p.add_argument("--json", action="store_true", help="also print a machine-readable summary")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--archive", help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    args.work = args.work.resolve()
    sides = [("A", args.src.resolve()), ("B", args.vs.resolve())] if args.vs else [("", args.src.resolve())]
    for _, src in sides:
        if not (src / "archcheck" / "__init__.py").exists():
            sys.exit(f"{src}: no archcheck package there")
    started = time.monotonic()
    if args.frames_archive:
        meta = build_frames(args.work, args.members, args.rebuild)
        archive, how = args.work / "members.f256k.tar.zst", f"tar+zstd {meta.get('seconds')} s"
    else:
        meta = build(args.work, args.members, args.rebuild)
        archive, how = args.work / "members.tar.zst", f"tar {meta.get('tar_seconds')} s, pzstd {meta.get('pzstd_seconds')} s"
    say(f"build: {'cached' if meta['cached'] else f'{time.monotonic() - started:.1f} s'}; "
        f"tar {fmt_b(meta['tar_size'])} ({meta['tar_size']:,} B), zst {fmt_b(meta['zst_size'])} ({meta['zst_size']:,} B)"
        + ("" if meta["cached"] else f" ({how})")
        + (f"; {meta['frames']:,} frames of {FRAME_INPUT // 1024} KiB input" if args.frames_archive else ""))
    runs: list[list[dict]] = [[] for _ in sides]
    for r in range(1, args.rounds + 1):
        for (tag, src), rounds in zip(sides, runs):  # A B A B: drift in the machine hits both alike
            stats = one_round(args, src, archive, r)
            snap = point_summary(stats["points"]["snapshot"])
            say(f"round {r}{f' {tag}' if tag else ''}: verify {stats['wall']:.2f} s, verdict {stats['verdict']}, "
                f"members {stats['member_count']}, snapshots {snap.get('count', 'absent')}, "
                f"loaded {stats['archcheck_file']}")
            rounds.append(stats)
    if not runs[0]:
        return
    summaries = [summarize(rounds) for rounds in runs]
    for (tag, src), summary, rounds in zip(sides, summaries, runs):
        if tag:
            say(f"\n=== {tag}: {src} ===")
        print_table(summary, meta, args, len(rounds))
    table = ratios(*runs) if args.vs else None
    if table is not None:
        print_ratios(table, sides[0][1], sides[1][1])
    if args.json:
        if not args.vs:
            print(json.dumps({"build": meta, "src": str(sides[0][1]), "rounds": runs[0], "summary": summaries[0]}))
        else:
            print(json.dumps({"build": meta, "ratios": table, "sides": [
                {"side": tag, "src": str(src), "rounds": rounds, "summary": summary}
                for (tag, src), rounds, summary in zip(sides, runs, summaries)]}))


if __name__ == "__main__":
    main()
