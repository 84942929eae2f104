"""Metrics for node_exporter's textfile collector (``--prometheus PATH``, a ``.prom`` file in the
directory it reads): written whole by atomic rename, so it never reads half a file. Rendered from
the drill's state alone, except the last success, carried over from the file it replaces: a run
that fails keeps the time of the last one that succeeded, so an alert on its age works.
docs/outputs.md lists the metrics."""
from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..gate import GateOutcome
from ..manifest import Manifest, output_file, written_into
from ..status import ExitCode, combine
from .github_report import weighed_findings

__all__ = ["BUCKETS", "render", "write", "last_success"]

PREFIX = "archcheck_"
LAST_SUCCESS = PREFIX + "last_success_timestamp_seconds"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds to hash one segment


def _label(value: Any) -> str:
    """A label value as the exposition format escapes it (a name's stray bytes as text first)."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2 ** 53 else repr(float(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, Any], float]], suffix: str = "") -> None:
        """HELP and TYPE, then each sample (``suffix``: a histogram's _bucket, _sum, _count)."""
        samples = list(samples)
        if not samples:
            return
        self.lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}"]
        self.samples(name, samples, suffix)

    def samples(self, name: str, samples: Iterable[tuple[dict[str, Any], float]], suffix: str = "") -> None:
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{PREFIX}{name}{suffix}{{{text}}} {_number(value)}")


def _verified_bytes(manifest: Manifest, status: str) -> int:
    """Archive bytes that every requested layer checked."""
    if status == "changed":
        return 0  # what was read from a moving file is set aside
    layers = manifest.config.get("layers", [])
    size = manifest.archive.size
    covered = []
    if "raw" in layers:
        covered.append(sum(s.length for s in manifest.segments if s.status == "done"))
    if set(layers) - {"raw"}:
        covered.append(manifest.stream.covered(size))
    return min(covered) if covered else 0


def last_success(path: Path) -> float | None:
    """The last success the file at ``path`` records, if it exists and says one."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = []
    for line in text.splitlines():
        if line.startswith(LAST_SUCCESS) and line[len(LAST_SUCCESS):][:1] in ("{", " "):
            try:  # the value is the last field: no timestamp is ever written after it
                found.append(float(line.rsplit(" ", 1)[1]))
            except (IndexError, ValueError):
                continue
    found = [v for v in found if v > 0 and not math.isnan(v)]
    return max(found) if found else None


def render(result: Any, gates: Sequence[GateOutcome], now: datetime | None = None,
           previous_success: float | None = None) -> str:
    """The metrics, in the text exposition format. ``previous_success``: the last success before
    this run (unix seconds), kept when this run is not one."""
    now = now or datetime.now(timezone.utc)
    drill = {"drill": result.drill.id}
    code = combine([result.exit_code] + [g.exit_code for g in gates])
    success = result.verdict == "intact" and all(g.passed for g in gates)
    last = now.timestamp() if success else previous_success
    out = _Text()
    out.metric("last_success_timestamp_seconds", "gauge",
               "Unix time of the last run whose verdict was intact and whose gate passed (0: none yet).",
               [(drill, last or 0)])
    out.metric("last_run_timestamp_seconds", "gauge", "Unix time of the last run.", [(drill, now.timestamp())])
    out.metric("success", "gauge", "1 if the last run's verdict was intact and its gate passed, else 0.",
               [(drill, int(success))])
    out.metric("exit_code", "gauge", "The last run's exit code (the README's table).", [(drill, int(code))])
    runs = result.drill.runs
    seconds = (runs[-1].get("seconds") if runs else None)
    out.metric("duration_seconds", "gauge", "How long the last run (start or resume) of the drill took.",
               [(drill, seconds)] if seconds is not None else [])
    verified = [(entry, v) for entry, v in result.verifications if v is not None]
    out.metric("archive_size_bytes", "gauge", "The archive's size.",
               [({**drill, "archive": e.path}, v.manifest.archive.size) for e, v in verified])
    out.metric("archive_verified_bytes", "gauge", "Archive bytes every requested layer has checked.",
               [({**drill, "archive": e.path}, _verified_bytes(v.manifest, e.status)) for e, v in verified])
    out.metric("archive_exit_code", "gauge", "Each archive's exit code (a failed archive's own).",
               [({**drill, "archive": e.path}, _archive_code(e, v)) for e, v in result.verifications])
    counts: Counter[tuple[str, str, str]] = Counter()
    for archive, findings in weighed_findings(result, gates).items():
        for weighed in findings:
            counts[(archive, weighed.finding.category.value, weighed.finding.code)] += 1
    out.metric("findings", "gauge", "Findings of the last run, by archive, category and code.",
               [({**drill, "archive": a, "category": c, "code": k}, n) for (a, c, k), n in sorted(counts.items())])
    out.metric("gate_passed", "gauge", "1 if the CI gate passed the archive, else 0.",
               [({**drill, "archive": g.archive}, int(g.passed)) for g in gates])
    cov = result.coverage or {}
    out.metric("coverage_bytes", "gauge", "Bytes of the drill's archives.",
               [(drill, cov["bytes"])] if cov.get("bytes") is not None else [])
    out.metric("coverage_verified_bytes", "gauge", "Bytes of the drill's archives verified at least once.",
               [(drill, cov["verified_bytes"])] if cov.get("verified_bytes") is not None else [])
    age = cov.get("oldest_unverified_age_seconds")
    out.metric("coverage_oldest_unverified_age_seconds", "gauge",
               "How long ago the least recently verified data of the drill was verified (or first seen).",
               [(drill, age)] if age is not None else [])
    _histogram(out, drill, [s.seconds for _, v in verified for s in v.manifest.segments if s.seconds is not None])
    return "\n".join(out.lines) + "\n"


def _archive_code(entry: Any, verification: Any) -> int:
    if entry.status == "failed" and entry.exit_code is not None:
        return int(entry.exit_code)
    if verification is None:
        return 0 if entry.status in ("skipped", "deferred") else int(ExitCode.INCOMPLETE)
    unfinished = [ExitCode.INCOMPLETE] if entry.status not in ("complete", "partial") else []
    return int(combine([verification.exit_code] + unfinished))


def _histogram(out: _Text, labels: dict[str, Any], values: list[float]) -> None:
    name = "segment_hash_seconds"
    out.lines += [f"# HELP {PREFIX}{name} Time to hash one segment (raw layer), over the drill's archives.",
                  f"# TYPE {PREFIX}{name} histogram"]
    bounds = [*BUCKETS, math.inf]
    out.samples(name, [({**labels, "le": _number(b)}, sum(v <= b for v in values)) for b in bounds], "_bucket")
    out.samples(name, [(labels, sum(values))], "_sum")
    out.samples(name, [(labels, len(values))], "_count")


def write(result: Any, gates: Sequence[GateOutcome], path: Path, now: datetime | None = None) -> None:
    """The ``.prom`` file at ``path``, by atomic rename; the last success is carried over from the
    file it replaces when this run is not one."""
    # (a pipe or stdout holds no earlier file: reading one would wait for a writer)
    earlier = None if str(path) == "-" or written_into(Path(path)) else last_success(Path(path))
    text = render(result, gates, now, earlier)
    with output_file(Path(path)) as out:
        out.write(text.encode("utf-8", "backslashreplace"))
