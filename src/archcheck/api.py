"""The library entry point: drills over archives, each archive source -> plan -> pipeline ->
manifest, with coverage memory, deadlines, budgets and sealed reports."""
from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

from .coverage import iso
from .drills import create_drill, load_drill
from .errors import UsageError
from .layers import ALL_LAYERS
from .layers.detect import detect_format
from .layers.members import DEFAULT_DIGEST, DIGESTS
from .layers.raw import LEAF_SIZE
from .layers.zstd import DEFAULT_MAX_WINDOW
from .pipeline import ProgressCallback, RunOptions
from .plans import Plan, expand_archives, load_plan
from .runner import DrillResult, DrillRunner, NoticeCallback, Verification, read_throughput
from .scanners.pgbackup import expand as expand_backups
from .segments import DEFAULT_SEGMENT_SIZE
from .sources import open_source
from .state import state_dir
from .units import DEFAULT_MAX_MEMORY, MIN_MAX_MEMORY, Budget, parse_until, parse_window

__all__ = ["verify", "run_drill", "run_plan", "resume", "drill_status", "list_drills", "remaining_bytes",
           "throughput", "audit", "audit_repair", "Verification", "DrillResult", "DEFAULT_MAX_MEMORY"]

MiB = 1024 * 1024

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
              on_notice: NoticeCallback | None = None, now: Callable[[], datetime] | None = None,
              recheck: bool = True) -> DrillResult:
    """Start a drill: verify every requested layer of each archive. Damage comes back as
    findings; only archcheck's own failures (usage, unreadable source, state) raise ArchcheckError.
    ``recheck=False`` trusts what an adopted unfinished pass verified, without reading it again."""
    options = RunOptions(_check_layers(layers), segment_size, _check_memory(max_memory),
                         _check_workers(workers), max_window, _check_digest(digest))
    paths, backups = expand_backups(Path(a) for a in archives)
    if not paths:
        raise UsageError("no archive to verify")
    # a missing, unreadable or unknown file is one clear line before anything starts; what each
    # one is now is what resume holds it to
    identities = [_usable(path).to_json() for path in paths]
    limits = {"budget": {"seconds": budget.seconds, "bytes": budget.bytes} if budget else None,
              "deadline": iso(deadline) if deadline else None, "skip_verified_within": skip_verified_within}
    drill = create_drill(state_dir(state), paths, identities, _config(options), drill_id=drill_id, limits=limits,
                         plan=plan, backups=[b.to_json() for b in backups])
    return DrillRunner(drill, options, deadline, on_progress, on_notice, now, recheck).run()


def run_plan(plan_path: str | os.PathLike, *, state: str | os.PathLike | None = None,
             deadline: datetime | None = None, on_progress: ProgressCallback | None = None,
             on_notice: NoticeCallback | None = None, now: Callable[[], datetime] | None = None,
             recheck: bool = True) -> tuple[DrillResult, Plan]:
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
                       on_notice=on_notice, now=now, recheck=recheck)
    return result, plan


def _usable(path: Path):
    """The archive's identity, once it is known to be a format archcheck verifies."""
    source = open_source(path)
    detect_format(asyncio.run(source.read(0, 1024)), str(path))
    return asyncio.run(source.identity())


def plan_deadline(plan: Plan, now: datetime) -> datetime | None:
    """When a plan's drill must stop: its deadline, its until, or the end of its window."""
    local = now.astimezone()
    if plan.deadline:
        return now + timedelta(seconds=plan.deadline)
    if plan.until:
        return parse_until(plan.until, "until", local)
    if plan.window:
        start, end = parse_window(plan.window, "window", local)
        if start > local:
            raise UsageError(f"{plan.path}: the window {plan.window} is not open now (it opens at "
                             f"{start:%H:%M}); give --deadline or --until to run outside it")
        return end
    return None


def resume(drill_id: str, *, state: str | os.PathLike | None = None, deadline: datetime | None = None,
           on_progress: ProgressCallback | None = None, on_notice: NoticeCallback | None = None,
           now: Callable[[], datetime] | None = None, recheck: bool = True) -> DrillResult:
    """Continue a drill where it stopped: what was verified is read again (hashing only) and
    not checked again unless it changed; ``recheck=False`` trusts it without reading it."""
    drill = load_drill(state_dir(state), drill_id)
    return DrillRunner(drill, _options(drill.options), deadline, on_progress, on_notice, now, recheck).run()


def drill_status(drill_id: str, *, state: str | os.PathLike | None = None) -> DrillResult:
    """A drill's state as it stands, without running anything."""
    drill = load_drill(state_dir(state), drill_id)
    return DrillRunner(drill, _options(drill.options), None, None, None, None).result()


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
        left += manifest.archive.size - manifest.stream.covered(manifest.archive.size)
    return left


def throughput(*, state: str | os.PathLike | None = None) -> float | None:
    """Verified bytes per second, as measured by earlier drills."""
    return read_throughput(state_dir(state))


def audit(*, state: str | os.PathLike | None = None):
    """Check the audit ledger and the sealed reports."""
    from .ledger import verify_ledger
    return verify_ledger(state_dir(state))


def audit_repair(*, state: str | os.PathLike | None = None):
    """Repair what crashes left in the ledger, and only that (see ledger.repair_ledger)."""
    from .ledger import repair_ledger
    return repair_ledger(state_dir(state))


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
