"""The library entry point: drills over archives, each archive source -> plan -> pipeline ->
manifest, with coverage memory, deadlines, budgets and sealed reports."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from . import events
from .catalog import is_catalog, open_catalog, write_catalog
from .diff import Comparison, compare
from .checksums import Expectation, FileDigests, parse_expect, read_sums
from .coverage import iso
from .drills import create_drill, load_drill
from .errors import ArchcheckError, SourceChanged, UsageError
from .events import Event
from .gate import GateInputs, GateOutcome, judge, save_outcomes
from .layers.age import HEAD as AGE_HEAD, AgeKey, check_identity, identity_from
from .layers.detect import detect_format
from .layers import ALL_LAYERS, DEFAULT_DIGEST, DEFAULT_MAX_WINDOW, LEAF_SIZE
from .layers.members import DIGESTS
from .pipeline import ProgressCallback, RunOptions
from .runner import SEALABLE, DrillResult, DrillRunner, NoticeCallback, Verification, read_throughput
from .scanners.pgbackup import expand as expand_backups
from .segments import DEFAULT_SEGMENT_SIZE
from .sources import is_remote, open_source
from .sources.remote import RemoteOptions
from .executors import ExecutorSpec, parse_executor, start_cluster
from .sources.resilience import RetryPolicy
from .state import state_dir
from .status import ExitCode
from .units import DEFAULT_MAX_MEMORY, MIN_MAX_MEMORY, Budget, parse_until, parse_window

if TYPE_CHECKING:  # plans and policies (and YAML) load when a command reads one
    from .plans import Plan
    from .policies import Policy

__all__ = ["verify", "run_drill", "GateSpec", "catalog", "diff", "run_plan", "resume", "drill_status", "list_drills", "remaining_bytes",
           "throughput", "audit", "audit_repair", "Verification", "DrillResult", "DEFAULT_MAX_MEMORY"]

MiB = 1024 * 1024

def verify(archive: str | os.PathLike, **kwargs) -> Verification:
    """Verify one archive (a drill of one); see ``run_drill`` for the options."""
    result = run_drill([archive], **kwargs)
    return result.verifications[0][1]


@dataclass(frozen=True)
class GateSpec:
    """The CI gate asked for: a baseline (a catalog or an archive), a policy file, expected
    checksums (ALGORITHM:HEX, or a sha256sum-style file), and where to save this archive's catalog."""

    baseline: Path | None = None
    policy: Path | None = None
    expect: tuple[str, ...] = ()
    expect_file: Path | None = None
    save_catalog: Path | None = None

    @property
    def wants_catalog(self) -> bool:
        return bool(self.baseline or self.policy or self.save_catalog)

    def to_json(self) -> dict:
        """Kept in the drill, paths made absolute: a resume from elsewhere judges the same."""
        def absolute(path: Path | None) -> str | None:
            return str(Path(path).absolute()) if path is not None else None
        return {"baseline": absolute(self.baseline), "policy": absolute(self.policy), "expect": list(self.expect),
                "expect_file": absolute(self.expect_file), "save_catalog": absolute(self.save_catalog)}

    @classmethod
    def from_json(cls, data: dict) -> "GateSpec":
        def path(key: str) -> Path | None:
            return Path(data[key]) if data.get(key) else None
        return cls(path("baseline"), path("policy"), tuple(data.get("expect") or ()), path("expect_file"),
                   path("save_catalog"))


@dataclass
class _Gate:
    """A GateSpec checked before anything is verified, with its baseline's catalog at hand."""

    spec: GateSpec
    policy: Policy | None
    expectations: dict[str, tuple[Expectation, ...]]  # archive path -> what its digest must be
    baseline: Path | None  # a catalog
    scratch: Path  # temporary catalogs


def run_drill(archives: Iterable[str | os.PathLike], *, layers: Iterable[str] = ALL_LAYERS,
              segment_size: int = DEFAULT_SEGMENT_SIZE, max_memory: int = DEFAULT_MAX_MEMORY,
              workers: int | None = None, max_window: int = DEFAULT_MAX_WINDOW, digest: str = DEFAULT_DIGEST,
              state: str | os.PathLike | None = None, drill_id: str | None = None, plan: str | None = None,
              deadline: datetime | None = None, budget: Budget | None = None,
              skip_verified_within: float | None = None, on_progress: ProgressCallback | None = None,
              on_notice: NoticeCallback | None = None, now: Callable[[], datetime] | None = None,
              recheck: bool = True, gate: GateSpec | None = None,
              remote: RemoteOptions = RemoteOptions(), executor: str | None = None,
              identity: str | os.PathLike | None = None) -> DrillResult:
    """Start a drill: verify every requested layer of each archive. Damage comes back as
    findings; only archcheck's own failures (usage, unreadable source, state) raise ArchcheckError.
    ``recheck=False`` trusts what an adopted unfinished pass verified, without reading it again.
    ``gate``: judge each archive beyond intact (baseline, policy, checksums); see ``GateSpec``.
    ``remote``: retries, read-ahead and timeouts for archives in object storage (``remote_options``).
    ``executor``: "local" (default), "dask://HOST:PORT" or "dask-local[:N]" (executors.py).
    ``identity``: an age identity file for encrypted archives (else AGE_IDENTITY, see layers/age.py)."""
    archives = tuple(archives)
    spec = parse_executor(executor)
    layers, max_memory, digest = _check_layers(layers), _check_memory(max_memory), _check_digest(digest)
    age = identity_from(identity)
    paths, backups = expand_backups(a if is_remote(a) else Path(a) for a in archives)
    if not paths:
        raise UsageError("no archive to verify")
    start_cluster(spec, tuple(map(str, paths)))  # the cluster starts while the archives are opened
    # a missing, unreadable or unknown file is one clear line before anything starts; what each
    # one is now is what resume holds it to
    identities = [_usable(path, remote, age).to_json() for path in paths]
    options = RunOptions(layers, segment_size, max_memory, _workers_for(spec, workers), max_window, digest, remote,
                         spec, age)
    limits = {"budget": {"seconds": budget.seconds, "bytes": budget.bytes} if budget else None,
              "deadline": iso(deadline) if deadline else None, "skip_verified_within": skip_verified_within}
    with _gated(gate, paths, options, now) as judge_drill:
        drill = create_drill(state_dir(state), paths, identities, _config(options), drill_id=drill_id,
                             limits=limits, plan=plan, backups=[b.to_json() for b in backups],
                             gate=gate.to_json() if gate else None)
        return DrillRunner(drill, options, deadline, on_progress, on_notice, now, recheck, judge_drill).run()


@contextmanager
def _gated(spec: GateSpec | None, paths: list[Path], options: RunOptions,
           now: Callable[[], datetime] | None) -> Iterator[Callable[[DrillResult], tuple[str, int] | None] | None]:
    """The gate's judge for a run (None without a gate), its usage errors raised before
    anything is verified; the checksum thread runs beside the drill."""
    if spec is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="archcheck-gate-") as scratch:
        prepared = _prepare_gate(spec, paths, options, Path(scratch), now)
        digests = _start_digests(prepared)
        try:
            yield functools.partial(_gate, gate=prepared, digests=digests, now=now or _utc_now)
        finally:
            if digests is not None:  # a run that failed before judging: the thread ends with it
                digests.stop()
                digests.join()


def _gate(result: DrillResult, *, gate: _Gate, digests: FileDigests | None,
          now: Callable[[], datetime]) -> tuple[str, int] | None:
    """The gate's judgment, saved beside the drill; what fails here never hides the verdict."""
    try:
        if digests is not None:
            if result.drill.status not in ("complete", "partial"):
                digests.stop()  # a drill cut short: its checksum is not judged either
            digests.join()
        outcomes = _judge(result, gate, digests, now())
        save_outcomes(result.drill.folder, outcomes)
        for outcome in outcomes:
            with events.bound(archive=outcome.archive):
                events.emit(Event.GATE_JUDGED, logging.INFO if outcome.passed else logging.ERROR,
                            status="passed" if outcome.passed else "failed", exit_code=int(outcome.exit_code),
                            broken=[r.rule for r in outcome.rules if not r.passed])
        return None
    except ArchcheckError as exc:
        return f"the gate could not judge: {exc}", int(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - a bug in the gate: the verification still stands
        if os.environ.get("ARCHCHECK_DEBUG"):
            raise
        return f"the gate could not judge (internal error): {type(exc).__name__}: {exc}", int(ExitCode.INTERNAL)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _prepare_gate(spec: GateSpec, paths: list[Path], options: RunOptions, scratch: Path,
                  now: Callable[[], datetime] | None) -> _Gate:
    """Every usage error of the gate before anything is verified; an archive given as the
    baseline is verified now (in a scratch state directory) and its catalog kept."""
    single = [name for name, given in (("--baseline", spec.baseline), ("--expect", spec.expect),
                                       ("--save-catalog", spec.save_catalog)) if given]
    if single and len(paths) != 1:
        raise UsageError(f"{', '.join(single)} judge one archive; {len(paths)} were given")
    if spec.wants_catalog and "members" not in options.layers:
        raise UsageError("a baseline, a policy or a catalog needs the members layer (--layers ...,members)")
    from .policies import load_policy
    policy = load_policy(spec.policy) if spec.policy else None
    expectations: dict[str, tuple[Expectation, ...]] = {}
    if (spec.expect or spec.expect_file) and any(is_remote(p) for p in paths):
        raise UsageError("--expect and --expect-file check local files; an object store's own checksums "
                         "(ETag) pin an object instead")
    if spec.expect:
        expectations[str(paths[0])] = tuple(parse_expect(value) for value in spec.expect)
    if spec.expect_file:
        for path, expected in read_sums(spec.expect_file, paths).items():
            expectations[str(path)] = expectations.get(str(path), ()) + (expected,)
    baseline = _baseline_catalog(spec.baseline, options, scratch, now) if spec.baseline else None
    return _Gate(spec, policy, expectations, baseline, scratch)


def _baseline_catalog(baseline: Path, options: RunOptions, scratch: Path,
                      now: Callable[[], datetime] | None, name: str = "baseline") -> Path:
    """The catalog of an intact archive: the file itself if it is a catalog, else made by
    verifying the archive in a scratch state directory."""
    if not baseline.exists():
        raise UsageError(f"{baseline}: no such file (a catalog or an archive)")
    if is_catalog(baseline):
        with open_catalog(baseline) as opened:  # readable: checked now, not after the verification
            if opened.header.verdict != "intact":
                raise UsageError(f"{baseline}: the catalog of a {opened.header.verdict} archive: compare with "
                                 "an intact backup's")
        return baseline
    result = run_drill([baseline], layers=options.layers, segment_size=options.segment_size,
                       max_memory=options.max_memory, workers=options.workers, max_window=options.max_window,
                       digest=options.digest, state=scratch / f"{name}-state", now=now)
    entry, verification = result.verifications[0]
    if verification is None or verification.verdict != "intact":
        raise UsageError(f"{baseline}: the archive is not intact ({entry.note or verification.verdict}): "
                         "compare intact backups, or their catalogs")
    path = scratch / f"{name}.catalog"
    write_catalog(verification.manifest, verification.manifest_path, path, verification.verdict)
    return path


def catalog(archive: str | os.PathLike, output: str | os.PathLike, **options) -> DrillResult:
    """Verify one archive and record its catalog at ``output`` (when the verification is
    complete); ``options`` as for ``run_drill``."""
    return run_drill([archive], gate=GateSpec(save_catalog=Path(output)), **options)


def diff(old: str | os.PathLike, new: str | os.PathLike, *, digest: str = DEFAULT_DIGEST,
         workers: int | None = None, now: Callable[[], datetime] | None = None) -> Comparison:
    """Compare two backups by content, each a catalog or an (intact) archive, verified on the way."""
    options = RunOptions(ALL_LAYERS, DEFAULT_SEGMENT_SIZE, DEFAULT_MAX_MEMORY, _check_workers(workers),
                         DEFAULT_MAX_WINDOW, _check_digest(digest))
    with tempfile.TemporaryDirectory(prefix="archcheck-diff-") as scratch:
        catalogs = [_baseline_catalog(Path(path), options, Path(scratch), now, name)
                    for path, name in ((old, "old"), (new, "new"))]
        with open_catalog(catalogs[0]) as baseline, open_catalog(catalogs[1]) as current:
            return compare(baseline, current, current.header.archive.get("uri", str(new)))


def _start_digests(gate: _Gate | None) -> FileDigests | None:
    if gate is None or not gate.expectations:
        return None
    return FileDigests({Path(p): tuple(dict.fromkeys(e.algorithm for e in expected))
                        for p, expected in gate.expectations.items()}).start()


def _judge(result: DrillResult, gate: _Gate, digests: FileDigests | None, now: datetime) -> list[GateOutcome]:
    outcomes = []
    for number, (entry, verification) in enumerate(result.verifications):
        if verification is None:
            continue  # not verified: its failure is the verdict
        manifest = verification.manifest
        complete = manifest.status == "complete" and verification.verdict != "incomplete"
        catalog = None
        if gate.spec.wants_catalog and complete:
            catalog = gate.spec.save_catalog or gate.scratch / f"archive-{number}.catalog"
            write_catalog(manifest, verification.manifest_path, catalog, verification.verdict)
        path = Path(entry.path)
        inputs = GateInputs(manifest.archive.uri, complete, complete and verification.verdict == "intact",
                            tuple(verification.findings), catalog, gate.baseline,
                            gate.policy, gate.expectations.get(entry.path, ()),
                            digests.digests.get(path) if digests else None,
                            digests.errors.get(path) if digests else None)
        outcomes.append(judge(inputs, now, catalog if gate.spec.save_catalog else None))
    return outcomes


def run_plan(plan_path: str | os.PathLike | Plan, *, state: str | os.PathLike | None = None,
             deadline: datetime | None = None, on_progress: ProgressCallback | None = None,
             on_notice: NoticeCallback | None = None, now: Callable[[], datetime] | None = None,
             recheck: bool = True, executor: str | None = None,
             identity: str | os.PathLike | None = None) -> tuple[DrillResult, Plan]:
    """Start a drill from a plan file (or a plan loaded from one); ``state``, ``deadline`` and
    ``executor`` override the plan's; ``identity`` as for ``run_drill``."""
    from .plans import Plan, expand_archives, load_plan
    plan = plan_path if isinstance(plan_path, Plan) else load_plan(plan_path)
    remote = remote_options(retries=plan.retries, in_flight=plan.in_flight, timeout=plan.request_timeout,
                            max_elapsed=plan.retry_max_elapsed, breaker_threshold=plan.breaker_threshold,
                            breaker_cooldown=plan.breaker_cooldown)
    paths, unmatched = expand_archives(plan, remote)
    for pattern in unmatched:
        events.emit(Event.NOTICE, logging.WARNING, message=f"warning: {pattern} matches no archive")
        (on_notice or (lambda text: None))(f"warning: {pattern} matches no archive")
    if not paths:
        raise UsageError(f"{plan.path}: no archive matches {', '.join(plan.archives)}")
    clock = now or (lambda: datetime.now(timezone.utc))
    options = {k: getattr(plan, k) for k in ("layers", "segment_size", "max_memory", "workers",
                                             "max_window", "digest") if getattr(plan, k) is not None}
    gate = GateSpec(plan.baseline, plan.policy, (), plan.expect_file, plan.save_catalog)
    result = run_drill(paths, **options, state=state or plan.state_dir, plan=str(plan.path),
                       deadline=deadline or plan_deadline(plan, clock()), budget=plan.budget,
                       skip_verified_within=plan.skip_verified_within, on_progress=on_progress,
                       on_notice=on_notice, now=now, recheck=recheck, gate=gate if gate != GateSpec() else None,
                       remote=remote,
                       executor=executor or plan.executor, identity=identity)
    return result, plan


def _usable(path: Path | str, remote: RemoteOptions, key: AgeKey | None = None):
    """The archive's identity, once it is known to be a format archcheck verifies (and, if it
    is age-encrypted and an identity is given, one the identity opens)."""
    source = open_source(path, remote)
    try:
        head = asyncio.run(source.read(0, AGE_HEAD))
        if detect_format(head, str(path)) == "age" and key is not None:
            check_identity(head, source.size, key, str(path))
        return asyncio.run(source.identity())
    except SourceChanged as exc:
        raise SourceChanged(f"{path} changed while it was being opened ({exc.what}); try again") from None


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
           now: Callable[[], datetime] | None = None, recheck: bool = True,
           identity: str | os.PathLike | None = None) -> DrillResult:
    """Continue a drill where it stopped: what was verified is read again (hashing only) and
    not checked again unless it changed; ``recheck=False`` trusts it without reading it.
    ``identity``: as for ``run_drill``; it is never saved, so an age archive needs it again."""
    drill = load_drill(state_dir(state), drill_id)
    options = dataclasses.replace(_options(drill.options), age=identity_from(identity))
    start_cluster(options.executor, tuple(a.path for a in drill.archives))
    spec = GateSpec.from_json(drill.gate) if drill.gate and drill.status not in SEALABLE else None
    paths = [a.path if is_remote(a.path) else Path(a.path) for a in drill.archives]
    with _gated(spec, paths, options, now) as judge_drill:
        return DrillRunner(drill, options, deadline, on_progress, on_notice, now, recheck, judge_drill).run()


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
    remote = config.get("remote") or {}
    return RunOptions(tuple(config["layers"]), config["segment_size"], config["max_memory"],
                      config["workers"], config["max_window"], config["digest"],
                      RemoteOptions(RetryPolicy(**remote.get("policy", {})), remote.get("in_flight", 4),
                                    remote.get("timeout", 30.0)),
                      parse_executor(config.get("executor")))


def _config(options: RunOptions) -> dict:
    remote = options.remote
    return {"layers": list(options.layers), "segment_size": options.segment_size, "leaf_size": LEAF_SIZE,
            "digest": options.digest, "max_window": options.max_window, "workers": options.workers,
            "max_memory": options.max_memory, "executor": options.executor.text,
            "remote": {"policy": dataclasses.asdict(remote.policy), "in_flight": remote.in_flight,
                       "timeout": remote.timeout}}


def remote_options(*, retries: int | None = None, in_flight: int | None = None, timeout: float | None = None,
                   max_elapsed: float | None = None, breaker_threshold: int | None = None,
                   breaker_cooldown: float | None = None) -> RemoteOptions:
    """Object-store tunables; what is not given keeps its default (docs/remote.md)."""
    for name, value in (("--retries", retries), ("--in-flight", in_flight), ("--request-timeout", timeout),
                        ("--retry-max-elapsed", max_elapsed), ("--breaker-threshold", breaker_threshold),
                        ("--breaker-cooldown", breaker_cooldown)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be more than zero, not {value}")
    default = RemoteOptions()
    given = {"attempts": retries + 1 if retries is not None else None, "max_elapsed": max_elapsed,
             "breaker_threshold": breaker_threshold, "breaker_cooldown": breaker_cooldown}
    policy = dataclasses.replace(default.policy, **{k: v for k, v in given.items() if v is not None})
    return RemoteOptions(policy, in_flight or default.in_flight, timeout or default.timeout)


def _workers_for(spec: ExecutorSpec, workers: int | None) -> int:
    """Tasks at once: the CPU count here, or what a Dask cluster's workers can take."""
    if workers is None and spec.is_dask:
        from .executors import cluster_threads
        return cluster_threads(spec)
    return _check_workers(workers)


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


MAX_WORKERS = 1024  # processes (and threads) a run starts for them: more is a typo, not a machine


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}")
    return workers


def _check_digest(digest: str) -> str:
    if digest not in DIGESTS:
        raise UsageError(f"unknown digest {digest}; choose from {', '.join(DIGESTS)}")
    return digest
