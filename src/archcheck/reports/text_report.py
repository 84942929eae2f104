"""The human summary, rendered with rich from the manifest alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from ..codecs import STREAM_CODECS
from ..errors import format_size, plural
from ..findings import Finding, Severity, verdict
from ..diff import Comparison
from ..gate import GateOutcome, GatedFinding
from ..manifest import Manifest
from . import safe_text

STYLES = {"intact": "bold green", "corrupt": "bold red", "incomplete": "bold yellow"}
SEVERITY_STYLES = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "dim"}
SHOWN = 50
CONSEQUENCES = {"restore_loses": "a restore loses", "walk_resumes_at": "the walk resumes at"}  # detail -> label


def where(finding: Finding) -> str:
    loc = finding.location
    parts = []
    if loc.byte_range is not None:
        parts.append(f"bytes {loc.byte_range[0]}-{loc.byte_range[1]}")
    if loc.segment is not None:
        parts.append(f"segment {loc.segment}")
    if loc.frame is not None:
        parts.append(f"frame {loc.frame}")
    details = dict(finding.details)
    if details.get("block") is not None and loc.frame is not None:
        parts.append(f"zstd block {details['block']}")
    if finding.layer == "age" and details.get("chunk") is not None:
        parts.append(f"age chunk {details['chunk']}")
    for codec in STREAM_CODECS.values():
        if details.get(codec.detail_key) is not None:
            parts.append(f"{codec.unit} {details[codec.detail_key]}")
    if details.get("deflate_block") is not None:
        parts.append(f"deflate block {details['deflate_block']} ({details.get('deflate_block_type')}) "
                     f"at member output {details.get('deflate_block_output')}")
    if loc.uncompressed_offset is not None and loc.byte_range is not None and (
            loc.frame is not None or loc.uncompressed_offset != loc.byte_range[0]):  # in a plain tar they agree
        parts.append(f"uncompressed offset {loc.uncompressed_offset}")
    if loc.member is not None:
        inside = f" at +{loc.member_offset}" if loc.member_offset else ""
        parts.append(f"member '{safe_text(loc.member)}'{inside}")  # escaped once: repr() would double it
    if loc.relation is not None:
        block = f" block {loc.block}" if loc.block is not None else ""
        parts.append(f"relation {safe_text(loc.relation)} ({loc.fork or 'main'} fork){block}")
    return ", ".join(parts)


def render(console: Console, manifest: Manifest, manifest_path: Path | None = None,
           report_path: Path | None = None, quiet: bool = False) -> None:
    """The summary; ``quiet`` keeps only the verdict line and the findings that matter."""
    findings = manifest.findings
    result = verdict(findings, complete=manifest.status in ("complete", "partial"))
    if quiet:
        findings = [f for f in findings if f.severity is not Severity.INFO]
        console.print(Text("verdict   ").append(result.upper(), style=STYLES[result]).append(_counts(findings)))
        _render_findings(console, findings)
        return
    summary = manifest.stream.summary
    facts = [format_size(manifest.archive.size), manifest.format]
    if summary and summary.frames:
        facts.append(plural(summary.frames, "zstd frame"))
    if summary and manifest.format != "zstd":  # a lone .zst has no members
        facts.append(plural(summary.member_count, "member"))
    line = Text("archive   ")
    line.append(safe_text(manifest.archive.uri), style="bold")
    line.append(f"  ({', '.join(facts)})")
    console.print(line)
    counts = _counts(findings)
    console.print(Text("verdict   ").append(result.upper(), style=STYLES[result]).append(counts))
    if manifest.tree_root:
        console.print(Text(f"root      blake3-tree:{manifest.tree_root}"))
    if any(not r["rechecked"] for r in manifest.resumes):
        console.print(Text("trusted   what earlier runs verified was not read again (--trust-verified)"))
    if manifest_path:
        console.print(Text(f"manifest  {safe_text(str(manifest_path))}"))
    if report_path:
        console.print(Text(f"report    {safe_text(str(report_path))}"))
    _render_findings(console, findings)


def render_drill(console: Console, result: Any, report_path: Path | None = None, quiet: bool = False) -> None:
    """Each archive's summary, then the drill's: status, coverage, and how to go on."""
    drill = result.drill
    for entry, verification in result.verifications:
        failed = entry.status in ("failed", "changed")
        if verification is not None and entry.status not in ("skipped", "deferred"):
            if quiet and len(result.verifications) > 1:  # say which archive each verdict is for
                console.print(Text("archive   ").append(safe_text(entry.path), style="bold"))
            render(console, verification.manifest, verification.manifest_path, quiet=quiet)
            for gate in result.gates:
                if gate.archive == verification.manifest.archive.uri:
                    render_gate(console, gate, quiet)
        if verification is None or (failed and verification.manifest.status != entry.status):
            if failed or not quiet:  # why an archive has no verdict is never left out
                console.print(Text("archive   ").append(safe_text(entry.path), style="bold")
                              .append(f"  {entry.status}" + (f": {safe_text(entry.note)}" if entry.note else "")))
    if result.findings:
        console.print(Text("backup    ").append("the archives together", style="bold"))
        _render_findings(console, result.findings)
    if quiet and len(result.verifications) == 1:
        return
    cov = result.coverage
    line = Text("drill     ").append(drill.id, style="bold").append(f"  {drill.status}, ")
    line.append(Text(result.verdict.upper(), style=STYLES[result.verdict]))
    states = {}
    for entry in drill.archives:
        states[entry.status] = states.get(entry.status, 0) + 1
    line.append(f"  ({', '.join(f'{n} {state}' for state, n in states.items())})")
    console.print(line)
    if cov.get("bytes"):
        text = (f"coverage  {format_size(cov['verified_bytes'])} of {format_size(cov['bytes'])} verified "
                f"({100 * cov['verified_bytes'] / cov['bytes']:.0f}%)")
        if cov.get("oldest_unverified_age_seconds") is not None and cov["verified_bytes"] < cov["bytes"]:
            text += f"; oldest unverified data last verified {_age(cov['oldest_unverified_age_seconds'])} ago"
        console.print(Text(text))
    if drill.status in ("stopped", "interrupted"):
        console.print(Text(f"resume    archcheck resume {drill.id}", style="bold"))
    if drill.sealed and not quiet:
        sealed = safe_text(str(drill.root / drill.sealed["report"]))  # the ledger keeps it relative to the state dir
        console.print(Text(f"sealed    {sealed} (ledger entry {drill.sealed['seq']})"))
    if report_path and not quiet:
        console.print(Text(f"report    {safe_text(str(report_path))}"))


def render_gate(console: Console, gate: GateOutcome, quiet: bool = False) -> None:
    """The CI gate's rules, each passed or failed, and what it found against the baseline."""
    if not gate.rules:
        return
    failed = [rule for rule in gate.rules if not rule.passed]
    verdict_text = "PASSED" if gate.passed else f"FAILED (exit {int(gate.exit_code)})"
    line = Text("gate      ").append(verdict_text, style="bold green" if gate.passed else "bold red")
    if gate.policy:
        line.append(f"  policy {safe_text(gate.policy)}")
    console.print(line)
    for rule in gate.rules:
        if quiet and rule.passed:
            continue
        console.print(Text(f"  {'pass' if rule.passed else 'FAIL':<5}", style="green" if rule.passed else "red")
                      .append(f"{rule.rule:<12} {safe_text(rule.detail)}"))
    shown = [f for rule in gate.rules for f in rule.findings
             if not quiet or rule in failed or f.severity is not Severity.INFO]
    _render_findings(console, shown)


def render_comparison(console: Console, comparison: Comparison) -> None:
    """``archcheck diff``: the counts by class, then what names the members."""
    diff = comparison.summary
    line = Text("baseline  ").append(safe_text(diff.baseline), style="bold")
    line.append(f"  ({plural(diff.members[0], 'member')}, {format_size(diff.content_bytes[0])})")
    console.print(line)
    console.print(Text(f"this      {plural(diff.members[1], 'member')}, {format_size(diff.content_bytes[1])}"))
    counts = [f"{n} {kind}" for kind, n in (("identical", diff.identical), ("added", diff.added),
                                            ("removed", diff.removed), ("modified", diff.modified),
                                            ("suspicious", diff.suspicious), ("uncompared", diff.uncompared)) if n]
    counts += [f"{kind} drift on {n}" for kind, n in sorted(diff.drift.items())]
    verdict_text = ("SUSPICIOUS" if diff.suspicious else "CHANGED" if not diff.same_content
                    else "DRIFT" if diff.drift else "IDENTICAL")
    style = {"SUSPICIOUS": "bold red", "CHANGED": "bold yellow"}.get(verdict_text, "bold green")
    console.print(Text("diff      ").append(verdict_text, style=style).append(f"  ({', '.join(counts) or 'empty'})"))
    _render_findings(console, comparison.findings)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _render_findings(console: Console, findings: list[Finding] | list[GatedFinding]) -> None:
    """Findings, or findings as the gate weighs them (a waiver's severity, and whose it is)."""
    weighed = [f if isinstance(f, GatedFinding) else GatedFinding(f, f.severity) for f in findings]
    shown = sorted(weighed, key=lambda w: (list(Severity).index(w.severity),
                                           (w.finding.location.byte_range or (0,))[0]))
    for item in shown[:SHOWN]:
        finding = item.finding
        text = Text("  ")
        text.append(f"{item.severity.value:<7} {finding.code}", style=SEVERITY_STYLES[item.severity])
        text.append(f"  {safe_text(finding.message)}")
        if item.waiver:
            text.append(f" (waived: {safe_text(item.waiver)})", style="dim")
        place = where(finding)
        if place:
            text.append(f"\n          {place}", style="dim")
        details = dict(finding.details)
        for key, label in CONSEQUENCES.items():
            if key in details:
                text.append(f"\n          {label} {safe_text(str(details[key]))}")
        console.print(text)
    if len(shown) > SHOWN:
        console.print(Text(f"  ... and {len(shown) - SHOWN} more findings (see the JSON report)"))


def _counts(findings: list[Finding]) -> str:
    by: dict[str, int] = {}
    for f in findings:
        by[f.category.value] = by.get(f.category.value, 0) + 1
    shown = [f"{n} {cat}" for cat, n in sorted(by.items()) if cat != "info"]
    return f"  ({', '.join(shown)})" if shown else ""
