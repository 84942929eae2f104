"""The library entry point: drills over archives, each archive source -> plan -> pipeline ->
manifest, with coverage memory, deadlines, budgets and sealed reports."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .coverage import ArchiveCoverage, CoverageStore, iso, parse_iso, record_run, unverified_bytes
from .drills import Drill, DrillArchive, DrillLock, create_drill, load_drill
from .errors import StateError, UsageError, format_size
from .findings import VERDICTS, Category, Finding, verdict
from .layers import ALL_LAYERS
from .layers.detect import detect_format
from .layers.members import DEFAULT_DIGEST, DIGESTS
from .layers.raw import LEAF_SIZE
from .layers.zstd import DEFAULT_MAX_WINDOW
from .ledger import seal_report
from .manifest import Manifest, SegmentRecord, iter_members, load, utc_now
from .pipeline import STREAM_LAYERS, ProgressCallback, Run, RunLimits, RunOptions
from .segments import DEFAULT_SEGMENT_SIZE, new_nonce, plan_segments
from .sources import ArchiveIdentity, open_source
from .state import state_dir
from .plans import Plan, expand_archives, load_plan
from .units import Budget, format_duration, parse_until, parse_window

MiB = 1024 * 1024
DEFAULT_MAX_MEMORY = 256 * MiB
MIN_MAX_MEMORY = 32 * MiB
NoticeCallback = Callable[[str], None]


@dataclass(frozen=True)
class Verification:
    """The outcome for one archive; everything in it is read from the manifest."""

    manifest: Manifest
    manifest_path: Path

    @property
    def findings(self) -> list[Finding]:
        return self.manifest.findings

    @property
    def verdict(self) -> str:
        return verdict(self.findings, complete=self.manifest.status in ("complete", "partial"))

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.verdict]

    def members(self) -> Iterator[dict]:
        """Every member with its digest, read from the run's members file."""
        return iter_members(self.manifest, self.manifest_path)


@dataclass
class DrillResult:
    drill: Drill
    verifications: list[tuple[DrillArchive, Verification | None]]
    coverage: dict
    notices: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """Corruption anywhere wins; a drill cut short (deadline, signal) or a check that could
        not be made is incomplete; a budget's planned share, done, is not."""
        verdicts = {v.verdict for _, v in self.verifications if v is not None}
        if "corrupt" in verdicts:
            return "corrupt"
        if "incomplete" in verdicts or self.drill.status in ("stopped", "interrupted", "running"):
            return "incomplete"
        return "intact"

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.verdict]


def verify(archive: str | os.PathLike, **kwargs) -> Verification:
    """Verify one archive (a drill of one); see ``run_drill`` for the options."""
    result = run_drill([archive], **kwargs)
    return result.verifications[0][1]


def run_drill(archives: Iterable[str | os.PathLike], *, layers: Iterable[str] = ALL_LAYERS,
              segment_size: int = DEFAULT_SEGMENT_SIZE, max_memory: int = DEFAULT_MAX_MEMORY,
              workers: int | None = None, max_window: int = DEFAULT_MAX_WINDOW, digest: str = DEFAULT_DIGEST,
              state: str | os.PathLike | None = None, drill_id: str | None = None, plan: str | None = None,
              deadline: datetime | None = None, budget: Budget | None = None,
              skip_verified_within: float | None = None, on_progress: ProgressCallback | None = None,
              on_notice: NoticeCallback | None = None, now: Callable[[], datetime] | None = None) -> DrillResult:
    """Start a drill: verify every requested layer of each archive. Damage comes back as
    findings; only archcheck's own failures (usage, unreadable source, state) raise ArchcheckError."""
    options = RunOptions(_check_layers(layers), segment_size, _check_memory(max_memory),
                         _check_workers(workers), max_window, _check_digest(digest))
    paths = [Path(a) for a in archives]
    if not paths:
        raise UsageError("no archive to verify")
    # a missing or unreadable archive is one clear line before anything starts; what each one
    # is now is what resume holds it to
    identities = [asyncio.run(open_source(path).identity()).to_json() for path in paths]
    limits = {"budget": {"seconds": budget.seconds, "bytes": budget.bytes} if budget else None, "skip_verified_within": skip_verified_within}
    drill = create_drill(state_dir(state), paths, identities, _config(options), drill_id=drill_id, limits=limits,
                         plan=plan)
    return _DrillRunner(drill, options, deadline, on_progress, on_notice, now).run()


def run_plan(plan_path: str | os.PathLike, *, state: str | os.PathLike | None = None,
             deadline: datetime | None = None, on_progress: ProgressCallback | None = None,
             on_notice: NoticeCallback | None = None, now: Callable[[], datetime] | None = None
             ) -> tuple[DrillResult, Plan]:
    """Start a drill from a plan file; ``state`` and ``deadline`` override the plan's."""
    plan = load_plan(plan_path)
    paths, unmatched = expand_archives(plan)
    for pattern in unmatched:
        (on_notice or (lambda text: None))(f"warning: {pattern} matches no archive")
    if not paths:
        raise UsageError(f"{plan.path}: no archive matches {', '.join(plan.archives)}")
    clock = now or (lambda: datetime.now(timezone.utc))
    options = {k: getattr(plan, k) for k in ("layers", "segment_size", "max_memory", "workers",
                                             "max_window", "digest") if getattr(plan, k) is not None}
    result = run_drill(paths, **options, state=state or plan.state_dir, plan=str(plan.path),
                       deadline=deadline or plan_deadline(plan, clock()), budget=plan.budget,
                       skip_verified_within=plan.skip_verified_within, on_progress=on_progress,
                       on_notice=on_notice, now=now)
    return result, plan


def plan_deadline(plan: Plan, now: datetime) -> datetime | None:
    """When a plan's drill must stop: its deadline, its until, or the end of its window."""
    local = now.astimezone()
    if plan.deadline:
        return now + timedelta(seconds=plan.deadline)
    if plan.until:
        return parse_until(plan.until, "until", local)
    if plan.window:
        return parse_window(plan.window, "window", local)[1]
    return None


def resume(drill_id: str, *, state: str | os.PathLike | None = None, deadline: datetime | None = None,
           on_progress: ProgressCallback | None = None, on_notice: NoticeCallback | None = None,
           now: Callable[[], datetime] | None = None) -> DrillResult:
    """Continue a drill where it stopped: nothing verified is verified again."""
    drill = load_drill(state_dir(state), drill_id)
    return _DrillRunner(drill, _options(drill.options), deadline, on_progress, on_notice, now).run()


def drill_status(drill_id: str, *, state: str | os.PathLike | None = None) -> DrillResult:
    """A drill's state as it stands, without running anything."""
    drill = load_drill(state_dir(state), drill_id)
    return _DrillRunner(drill, _options(drill.options), None, None, None, None).result()


def list_drills(*, state: str | os.PathLike | None = None) -> list:
    """Every drill in the state directory, oldest first (a damaged one as its StateError)."""
    from .drills import list_drills as listed
    return listed(state_dir(state))


def remaining_bytes(result: DrillResult) -> int:
    """Archive bytes of the drill not yet verified, by the archives' manifests."""
    left = 0
    for entry, verification in result.verifications:
        if entry.status in ("complete", "skipped"):
            continue
        if verification is None:
            left += os.stat(entry.path).st_size if os.path.exists(entry.path) else 0
            continue
        manifest = verification.manifest
        done = manifest.archive.size if manifest.stream.get("status") == "done" else \
            (manifest.stream.get("checkpoint") or {}).get("covered", 0)
        left += manifest.archive.size - done
    return left


def throughput(*, state: str | os.PathLike | None = None) -> float | None:
    """Verified bytes per second, as measured by earlier drills."""
    return _read_throughput(state_dir(state))


def audit(*, state: str | os.PathLike | None = None):
    """Check the audit ledger and the sealed reports."""
    from .ledger import verify_ledger
    return verify_ledger(state_dir(state))


class _DrillRunner:
    """Runs a drill's archives in order (budget order when there is a budget), holding its lock."""

    def __init__(self, drill: Drill, options: RunOptions, deadline: datetime | None,
                 on_progress: ProgressCallback | None, on_notice: NoticeCallback | None,
                 now: Callable[[], datetime] | None):
        self.drill, self.options, self.on_progress = drill, options, on_progress
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.notices: list[str] = []
        self.cut_short = False  # the deadline came before every archive was reached
        self.on_notice = on_notice or (lambda text: None)
        self.coverage = CoverageStore(drill.root)
        self.deadline = None
        if deadline is not None:
            self.deadline = time.monotonic() + (deadline - self.now()).total_seconds()
        budget = drill.limits.get("budget") or {}
        self.budget_bytes = budget.get("bytes")
        self.budget_deadline = time.monotonic() + budget["seconds"] if budget.get("seconds") else None

    def notice(self, text: str) -> None:
        self.notices.append(text)
        self.on_notice(text)

    def run(self) -> DrillResult:
        drill = self.drill
        if drill.status == "complete":
            self.notice(f"{drill.id} is complete; nothing to resume")
            return self.result()
        with DrillLock(drill) as lock:
            if lock.previous:
                self.notice(f"took over {drill.id} from a runner that is gone ({lock.previous})")
            started = time.monotonic()
            drill.runs.append({"started": iso(self.now()), "ended": None, "status": "running"})
            drill.status = "running"
            drill.save()
            try:
                self._run_archives()
            except KeyboardInterrupt:
                drill.status = "interrupted"
            finally:
                self._finish(time.monotonic() - started)
        return self.result()

    def _run_archives(self) -> None:
        todo = self._schedule()
        self._predict(todo)
        for entry, cov in todo:
            if self.deadline is not None and self.deadline <= time.monotonic():
                self.cut_short = True  # what is left stays pending, for resume
                break
            if (self.budget_bytes is not None and self.budget_bytes <= 0) or (
                    self.budget_deadline is not None and self.budget_deadline <= time.monotonic()):
                entry.status, entry.note = "deferred", "budget used up; a later drill takes it first"
                continue
            self._run_archive(entry, cov)
            self.drill.save()
            if entry.status in ("stopped", "interrupted"):
                break

    def _time_left(self) -> float | None:
        ends = [t for t in (self.deadline, self.budget_deadline) if t is not None]
        return min(ends) - time.monotonic() if ends else None

    def _schedule(self) -> list[tuple[DrillArchive, ArchiveCoverage]]:
        """What to verify, in order: with a budget, unfinished and new archives first, then the
        least recently verified; archives verified in full within the policy age are skipped."""
        skip_within = self.drill.limits.get("skip_verified_within")
        now = self.now()
        todo = []
        for entry in self.drill.archives:
            if entry.status in ("complete", "partial", "skipped"):
                continue
            cov = self.coverage.get(self._identity(entry), self.options.segment_size, now)
            self.coverage.put(cov)  # remembered from the first sight, for the age of unverified data
            if (skip_within and cov.complete and cov.in_progress is None
                    and (now - parse_iso(cov.complete)).total_seconds() < skip_within):
                entry.status = "skipped"
                entry.note = (f"unchanged and verified in full {format_duration((now - parse_iso(cov.complete)).total_seconds())}"
                              f" ago (policy: within {format_duration(skip_within)})")
                continue
            todo.append((entry, cov))
        if self.drill.limits.get("budget"):
            todo.sort(key=lambda item: _rotation_key(item[1]))
        return todo

    def _identity(self, entry: DrillArchive) -> ArchiveIdentity:
        return asyncio.run(open_source(entry.path).identity())

    def _predict(self, todo: list) -> None:
        """Warn when earlier drills' throughput says the work will not fit the time given."""
        left = self._time_left()
        rate = _read_throughput(self.drill.root)
        if left is None or not rate or not todo:
            return
        pending = sum(cov.size for _, cov in todo)
        if pending / rate > left:
            self.notice(f"warning: {format_size(pending)} to verify at {format_size(rate)}/s needs about "
                        f"{format_duration(pending / rate)}, more than the {format_duration(left)} given; "
                        "the drill will stop when time is up and can be resumed")

    def _run_archive(self, entry: DrillArchive, cov: ArchiveCoverage) -> None:
        source = open_source(entry.path)
        identity = asyncio.run(source.identity())
        path = self.drill.manifest_path(entry)
        manifest = self._manifest(entry, source, identity, cov, path)
        if cov.in_progress is None or cov.in_progress.get("manifest") != str(path):
            since = cov.in_progress["since"] if cov.in_progress else iso(self.now())
            cov.in_progress = {"drill": self.drill.id, "manifest": str(path), "since": since}
        stop_offset = start = None
        if self.budget_bytes is not None:
            start = cov.size - unverified_bytes(cov, cov.in_progress["since"])
            stop_offset = start + self.budget_bytes
        left = self._time_left()
        status = "partial" if self.budget_deadline is not None and (
            self.deadline is None or self.budget_deadline < self.deadline) else "stopped"
        limits = RunLimits(time.monotonic() + left if left is not None else None, status, stop_offset)
        started = time.monotonic()
        entry.status = "running"
        self.drill.save()
        run = Run(source, manifest, path, self.options, self.on_progress, limits)
        try:
            asyncio.run(run.run())
        finally:
            entry.status = manifest.status
            since = cov.in_progress["since"]
            newly = record_run(cov, manifest, self.options.stream, since, self.now())
            if manifest.status != "complete":
                cov.in_progress = {"drill": self.drill.id, "manifest": str(path), "since": since}
            self.coverage.put(cov)
            if self.budget_bytes is not None:  # the share planned for it, or what it took to finish
                self.budget_bytes -= (cov.size if manifest.status == "complete" else stop_offset) - start
            _update_throughput(self.drill.root, newly, time.monotonic() - started)

    def _manifest(self, entry: DrillArchive, source, identity: ArchiveIdentity, cov: ArchiveCoverage,
                  path: Path) -> Manifest:
        """This drill's manifest for the archive: the one it has (checked against the archive),
        an unfinished pass of an earlier drill to go on with, or a new plan."""
        if not path.exists() and cov.in_progress and Path(cov.in_progress["manifest"]).exists():
            _adopt(Path(cov.in_progress["manifest"]), path)
        changes = _changes(ArchiveIdentity(**entry.identity), identity)
        if path.exists() and not changes:
            manifest = load(path)
            changes = _changes(manifest.archive, identity)
        if changes:
            raise StateError(f"{entry.path} changed since {self.drill.id} began ({changes}); "
                             "its results cannot be mixed with new ones: start a new drill")
        if path.exists():
            if changes:
                raise StateError(f"{entry.path} changed since {self.drill.id} began ({changes}); "
                                 "its results cannot be mixed with new ones: start a new drill")
            for record in manifest.segments:
                if record.status != "done":
                    record.nonce = new_nonce()  # an answer to an earlier run's attempt cannot count
            if manifest.status != "complete":
                manifest.status = "running"
            return manifest
        head = asyncio.run(source.read(0, 1024))
        fmt = detect_format(head, entry.path)
        segments = plan_segments(source.size, self.options.segment_size) if "raw" in self.options.layers else []
        run_id = f"{self.drill.id}/{Path(entry.manifest).parent.name}"
        return Manifest(run_id, identity, fmt, self.drill.options, [SegmentRecord.planned(s) for s in segments])

    def _finish(self, elapsed: float) -> None:
        drill = self.drill
        states = {a.status for a in drill.archives}
        if drill.status != "interrupted":
            if states & {"stopped", "interrupted", "running"} or self.cut_short:
                drill.status = "stopped" if "stopped" in states or self.cut_short else "interrupted"
            elif states & {"partial", "deferred", "pending"}:
                drill.status = "partial"
            else:
                drill.status = "complete"
        for entry in drill.archives:
            if entry.status == "running":
                entry.status = "interrupted"
        drill.runs[-1].update(ended=iso(self.now()), status=drill.status, seconds=round(elapsed, 3))
        drill.save()
        if drill.status in ("complete", "partial") and drill.sealed is None:
            from .reports import json_report
            entry = seal_report(drill.root, drill.id, json_report.sealed_bytes(self.result()), self.now())
            drill.sealed = entry.to_json()
            drill.save()

    def result(self) -> DrillResult:
        drill = self.drill
        verifications = []
        for entry in drill.archives:
            path = drill.manifest_path(entry)
            verifications.append((entry, Verification(load(path), path) if path.exists() else None))
        return DrillResult(drill, verifications, self._coverage_summary(), self.notices)

    def _coverage_summary(self) -> dict:
        """Across the drill's archives: the bytes verified at least once, and how long ago the least
        recently verified data was verified (or first seen, if it never was)."""
        now = self.now()
        total = verified = 0
        oldest: str | None = None
        for entry in self.drill.archives:
            try:
                identity = self._identity(entry)
            except Exception:  # noqa: BLE001 - a vanished archive has no coverage to report
                continue
            cov = self.coverage.get(identity, self.options.segment_size, now)
            total += cov.size
            verified += cov.size - unverified_bytes(cov, None)
            stamp = cov.oldest()
            oldest = stamp if oldest is None or (stamp and stamp < oldest) else oldest
        age = (now - parse_iso(oldest)).total_seconds() if oldest else None
        return {"bytes": total, "verified_bytes": verified, "oldest_unverified": oldest,
                "oldest_unverified_age_seconds": age}


def _rotation_key(cov: ArchiveCoverage) -> tuple:
    """Unfinished or never verified first (oldest seen first), then least recently verified."""
    if cov.in_progress or cov.complete is None:
        return (0, cov.first_seen)
    return (1, cov.oldest() or "")


def _changes(before: ArchiveIdentity, now: ArchiveIdentity) -> str:
    names = {"size": "size", "mtime_ns": "modification time", "head_blake3": "first 64 KiB",
             "tail_blake3": "last 64 KiB"}
    changed = [label for key, label in names.items() if getattr(before, key) != getattr(now, key)]
    return ", ".join(changed) + " differ" if changed else ""


def _adopt(old: Path, new: Path) -> None:
    """Go on with an earlier drill's unfinished pass: its manifest and members file, copied."""
    manifest = load(old)
    new.parent.mkdir(parents=True, exist_ok=True)
    nonce = manifest.stream.get("nonce")
    if nonce and (old.parent / f".members.{nonce}.jsonl").exists():
        shutil.copyfile(old.parent / f".members.{nonce}.jsonl", new.parent / f".members.{nonce}.jsonl")
    if (old.parent / "members.jsonl").exists():
        shutil.copyfile(old.parent / "members.jsonl", new.parent / "members.jsonl")
    manifest.save(new)


def _read_throughput(root: Path) -> float | None:
    try:
        return float(json.loads((Path(root) / "throughput.json").read_text())["bytes_per_second"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _update_throughput(root: Path, done: int, seconds: float) -> None:
    """A moving average of verified bytes per second, for predicting later drills."""
    if seconds < 1 or done <= 0:
        return
    rate = done / seconds
    old = _read_throughput(root)
    rate = rate if old is None else 0.7 * old + 0.3 * rate
    from .manifest import write_atomic
    write_atomic(Path(root) / "throughput.json", json.dumps({"bytes_per_second": rate}).encode())


def _options(config: dict) -> RunOptions:
    return RunOptions(tuple(config["layers"]), config["segment_size"], config["max_memory"],
                      config["workers"], config["max_window"], config["digest"])


def _config(options: RunOptions) -> dict:
    return {"layers": list(options.layers), "segment_size": options.segment_size, "leaf_size": LEAF_SIZE,
            "digest": options.digest, "max_window": options.max_window, "workers": options.workers,
            "max_memory": options.max_memory}


def _check_layers(layers: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(layers))
    unknown = [layer for layer in chosen if layer not in ALL_LAYERS]
    if unknown or not chosen:
        raise UsageError(f"unknown layer {', '.join(unknown) or '(none)'}; choose from {', '.join(ALL_LAYERS)}")
    return chosen


def _check_memory(max_memory: int) -> int:
    if max_memory < MIN_MAX_MEMORY:
        raise UsageError(f"--max-memory must be at least {MIN_MAX_MEMORY // MiB} MiB")
    return max_memory


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    return workers


def _check_digest(digest: str) -> str:
    if digest not in DIGESTS:
        raise UsageError(f"unknown digest {digest}; choose from {', '.join(DIGESTS)}")
    return digest
