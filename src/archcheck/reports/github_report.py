"""GitHub Actions output (when ``GITHUB_ACTIONS=true``): workflow command lines that annotate the
run, and a Markdown step summary. Member names and paths are untrusted: every value is escaped
so that none can end a command line and start another, nor inject Markdown or HTML.
Rendered from the drill's state alone; docs/outputs.md."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..findings import Category, Finding, Severity
from ..gate import GatedFinding, GateOutcome
from ..manifest import atomic_file
from ..status import ExitCode, combine
from . import safe_text
from .text_report import where

__all__ = ["commands", "summary", "write_summary", "weighed_findings", "escape_data", "escape_property"]

MAX_ANNOTATIONS = 50  # GitHub shows 10 of each kind per step; the rest only clutter the log
SHOWN = 200  # findings in the summary's table; the JSON report has them all
LEVELS = ("error", "warning", "notice")
VERDICT_MARKS = {"intact": "✅", "corrupt": "❌", "incomplete": "⚠️"}
# Markdown and HTML syntax (links, emphasis, code, cells, tags, entities; autolinks' and emoji's
# ':', mentions' '@', math's '$'), written as character references: they show as themselves and
# mean nothing, inside a table cell too
_MD_SPECIAL = re.compile(r"[\\`*_\[\]()<>#!|~&:@$]")


def escape_data(text: str) -> str:
    """A workflow command's message: nothing in it can end the line."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (file=, title=): nor end the property list."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _md(text: Any) -> str:
    return _MD_SPECIAL.sub(lambda m: f"&#{ord(m.group())};", safe_text(str(text)))


def _key(finding: Finding) -> tuple:
    return (finding.code, finding.location, repr(finding.details))


def weighed_findings(result: Any, gates: Sequence[GateOutcome]) -> dict[str, list[GatedFinding]]:
    """Every finding by archive (the drill's archive path; a backup set's by its folder): the
    verification's, weighed as the gate weighed them (waivers), then the gate's own."""
    out: dict[str, list[GatedFinding]] = {}
    by_uri = {g.archive: g for g in gates}
    for entry, verification in result.verifications:
        found = out.setdefault(entry.path, [])
        if verification is None:
            continue
        gate = by_uri.pop(verification.manifest.archive.uri, None) or by_uri.pop(entry.path, None)
        gated: dict[tuple, GatedFinding] = {_key(g.finding): g for g in gate.findings} if gate else {}
        found += [gated.pop(_key(f), None) or GatedFinding(f, f.severity) for f in verification.findings]
        found += gated.values()
    for gate in by_uri.values():
        out.setdefault(gate.archive, []).extend(gate.findings)
    for finding in result.findings:  # about several archives at once
        out.setdefault(finding.location.archive, []).append(GatedFinding(finding, finding.severity))
    return out


def _level(weighed: GatedFinding) -> str | None:
    """error: corruption, or a broken rule of the gate; warning: what left the run incomplete,
    and warnings; the rest (drift, changes, info) is summed up in a notice."""
    code = weighed.exit_code
    if code in (ExitCode.CORRUPT, ExitCode.POLICY):
        return "error"
    if code == ExitCode.INCOMPLETE or weighed.severity is Severity.WARNING:
        return "warning"
    return None


def _command(level: str, archive: str, title: str, message: str) -> str:
    return (f"::{level} file={escape_property(safe_text(archive))},title={escape_property(safe_text(title))}"
            f"::{escape_data(safe_text(message))}")


def _message(weighed: GatedFinding) -> str:
    finding = weighed.finding
    at = where(finding)
    waiver = f" (waived to {weighed.severity.value} by {weighed.waiver})" if weighed.waiver else ""
    return f"{finding.message} at {at}{waiver}" if at else f"{finding.message}{waiver}"


def _diff_text(gate: GateOutcome) -> str | None:
    diff = gate.diff
    if diff is None:
        return None
    counts = [f"{n} {kind}" for kind in ("added", "removed", "modified", "suspicious", "uncompared")
              if (n := getattr(diff, kind))]
    counts += [f"{kind} drift on {n}" for kind, n in sorted(diff.drift.items())]
    return f"against {diff.baseline}: {', '.join(counts) or 'the same content'}"


def commands(result: Any, gates: Sequence[GateOutcome], limit: int = MAX_ANNOTATIONS) -> list[str]:
    """Workflow command lines, errors first, at most ``limit`` and then one saying how many more."""
    lines: list[tuple[int, str]] = []
    for entry, verification in result.verifications:
        if verification is None and entry.status in ("failed", "changed", "pending", "interrupted", "stopped"):
            level = "error" if entry.status == "failed" else "warning"
            title = "ARCHIVE_FAILED" if entry.status == "failed" else "NOT_VERIFIED"
            lines.append((LEVELS.index(level), _command(level, entry.path, title,
                                                        f"{entry.status}: {entry.note or 'not verified'}")))
    for archive, findings in weighed_findings(result, gates).items():
        summed: Counter[str] = Counter()
        for weighed in findings:
            level = _level(weighed)
            if level:
                lines.append((LEVELS.index(level), _command(level, archive, weighed.finding.code, _message(weighed))))
            elif weighed.finding.category in (Category.DRIFT, Category.CHANGED):
                summed[weighed.finding.code] += 1
        if summed:
            text = ", ".join(f"{n} {code}" for code, n in summed.most_common())
            lines.append((2, _command("notice", archive, "drift and changes", text)))
    for gate in gates:
        text = _diff_text(gate)
        if text:
            lines.append((2, _command("notice", gate.archive, "diff", text)))
    ordered = [line for _, line in sorted(lines, key=lambda item: item[0])]
    if len(ordered) <= limit:
        return ordered
    more = len(ordered) - limit
    return ordered[:limit] + [f"::notice title=archcheck::{more} more annotations not shown: see the step summary "
                              "or the JSON report"]


def summary(result: Any, gates: Sequence[GateOutcome]) -> str:
    """The step summary: the verdict of each archive, the findings, the gate's rules."""
    code = combine([result.exit_code] + [g.exit_code for g in gates])
    verdict = result.verdict
    out = [f"### archcheck {_md(result.drill.id)}: {VERDICT_MARKS[verdict]} {verdict} (exit {int(code)})", "",
           "| archive | status | verdict | findings | gate |", "| --- | --- | --- | --- | --- |"]
    weighed = weighed_findings(result, gates)
    by_uri = {g.archive: g for g in gates}
    for entry, verification in result.verifications:
        if verification is None:
            state = "skipped" if entry.status in ("skipped", "deferred") else "incomplete"
            out.append(f"| {_md(entry.path)} | {_md(entry.status)} | {_md(entry.note or state)} | | |")
            continue
        counts = Counter(g.finding.category.value for g in weighed[entry.path])
        gate = by_uri.get(verification.manifest.archive.uri) or by_uri.get(entry.path)
        gate_text = "" if gate is None else "✅ passed" if gate.passed else f"❌ failed (exit {int(gate.exit_code)})"
        mark = VERDICT_MARKS[verification.verdict]
        out.append(f"| {_md(entry.path)} | {_md(entry.status)} | {mark} {verification.verdict} | "
                   f"{', '.join(f'{n} {c}' for c, n in sorted(counts.items()))} | {gate_text} |")
    listed = [(archive, w) for archive, found in weighed.items() for w in found if w.severity is not Severity.INFO]
    if listed:
        out += ["", f"#### Findings ({len(listed)})", "",
                "| archive | code | category | severity | where | message |", "| --- | --- | --- | --- | --- | --- |"]
        for archive, w in listed[:SHOWN]:
            f = w.finding
            severity = f"{w.severity.value} (waived by {_md(w.waiver)})" if w.waiver else w.severity.value
            out.append(f"| {_md(archive)} | {f.code} | {f.category.value} | {severity} | {_md(where(f))} | "
                       f"{_md(f.message)} |")
        if len(listed) > SHOWN:
            out.append(f"\nand {len(listed) - SHOWN} more: see the JSON report")
    rules = [(g.archive, rule) for g in gates for rule in g.rules]
    if rules:
        out += ["", "#### Gate", "", "| archive | rule | result | detail |", "| --- | --- | --- | --- |"]
        out += [f"| {_md(archive)} | {_md(rule.rule)} | {'✅ pass' if rule.passed else '❌ fail'} | "
                f"{_md(rule.detail)} |" for archive, rule in rules]
    return "\n".join(out) + "\n\n"


def write_summary(result: Any, gates: Sequence[GateOutcome], path: Path) -> None:
    """Append the step summary to ``path`` (``$GITHUB_STEP_SUMMARY``): other steps write there
    too. The file is rewritten whole and renamed, so a reader never sees half a summary."""
    path = Path(path)
    try:
        before = path.read_bytes()
    except FileNotFoundError:
        before = b""
    gap = b"\n" if before and not before.endswith(b"\n\n") else b""  # a new block, not a cell of theirs
    with atomic_file(path) as out:
        out.write(before + gap + summary(result, gates).encode("utf-8", "backslashreplace"))
