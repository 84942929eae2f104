"""`archcheck report --format md`: the drill's report as Markdown tables, and the pieces the
Markdown and HTML reports share. Both render the JSON report (``json_report``, plus the gate's
outcomes), so the three formats say the same things; everything is read from state alone."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable

from ..errors import format_size, plural
from ..findings import Finding
from . import json_report, safe_text
from .text_report import CONSEQUENCES, where

SHOWN = 1000  # findings listed per archive; the JSON report has them all
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~#!])")


def report_dict(result: Any) -> dict[str, Any]:
    """The JSON report (members named by their log), with the gate's outcomes (``gates``) when a
    gate ran for the drill: the result carries them, read from the drill's ``gate.json``."""
    return json.loads(json_report.sealed_bytes(result))


def split_gates(body: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The gate's outcomes by the archive they judge (its path or URI), and those of no archive
    in the report."""
    known = {name: item["path"] for item in body["archives"]
             for name in (item["path"], (item.get("archive") or {}).get("uri")) if name}
    by_archive: dict[str, list[dict[str, Any]]] = {}
    other = []
    for outcome in body.get("gates") or []:
        if outcome["archive"] in known:
            by_archive.setdefault(known[outcome["archive"]], []).append(outcome)
        else:
            other.append(outcome)
    return by_archive, other


def render_json(result: Any) -> str:
    return json.dumps(report_dict(result), indent=1) + "\n"


def place(finding: dict[str, Any]) -> str:
    """Where a finding sits, as the text report says it, with the WAL, InnoDB and SQLite
    coordinates it leaves out. Control characters are already escaped (safe_text)."""
    loc = finding["location"]
    parts = [where(Finding.from_json(finding))] + [f"{label} {safe_text(str(loc[key]))}" for key, label in
              (("wal_segment", "WAL segment"), ("lsn", "LSN"), ("space", "space"), ("page", "page"))
              if loc.get(key) is not None]
    return ", ".join(p for p in parts if p)


def consequences(finding: dict[str, Any]) -> list[str]:
    """'a restore loses ...', 'the walk resumes at ...': what the damage costs."""
    details = finding.get("details") or {}
    return [f"{label} {safe_text(str(details[key]))}" for key, label in CONSEQUENCES.items() if key in details]


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def coverage_text(cov: dict[str, Any]) -> str:
    if not cov.get("bytes"):
        return "nothing measured"
    text = (f"{format_size(cov['verified_bytes'])} of {format_size(cov['bytes'])} verified "
            f"({100 * cov['verified_bytes'] / cov['bytes']:.0f}%)")
    if cov.get("oldest_unverified_age_seconds") is not None and cov["verified_bytes"] < cov["bytes"]:
        text += f"; oldest unverified data last verified {age(cov['oldest_unverified_age_seconds'])} ago"
    return text


def summary_rows(body: dict[str, Any], now: datetime) -> list[tuple[str, str]]:
    """The drill's head as (label, value); values quote nothing untrusted but the plan's path."""
    rows = [("drill", body["drill"]), ("status", body["status"]), ("verdict", body["verdict"].upper()),
            ("exit code", str(body["exit_code"])), ("started", body["started"]), ("finished", body["finished"]),
            ("reported", now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")),
            ("coverage", coverage_text(body["coverage"])), ("archcheck", body["archcheck_version"])]
    if body.get("plan"):
        rows.append(("plan", safe_text(body["plan"])))
    if body.get("gate_failure"):
        rows.append(("gate", safe_text(body["gate_failure"])))
    return rows


def archive_rows(item: dict[str, Any]) -> list[tuple[str, str]]:
    """One archive's facts as (label, value)."""
    rows = [("status", item["status"] + (f": {safe_text(item['note'])}" if item.get("note") else ""))]
    if "verdict" in item:
        rows.append(("verdict", item["verdict"].upper()))
    if "exit_code" in item:
        rows.append(("exit code", str(item["exit_code"])))
    summary = item.get("summary")
    if summary:
        stream = summary.get("stream") or {}
        facts = [format_size(summary["size"]), item.get("format") or "?"]
        if stream.get("frames"):
            facts.append(plural(stream["frames"], "frame"))
        if "member_count" in stream and item.get("format") != "zstd":
            facts.append(plural(stream["member_count"], "member"))
        rows += [("archive", ", ".join(facts)),
                 ("segments", f"{summary['segments_verified']} of {summary['segments']} verified"),
                 ("layers", ", ".join(item.get("layers") or [])), ("when", f"{item['started']} to {item['finished']}")]
    if item.get("tree_root"):
        rows.append(("tree root", f"blake3-tree:{item['tree_root']}"))
    return rows


def diff_text(diff: dict[str, Any] | None) -> str:
    """A gate's comparison with its baseline in one line (the baseline's path is untrusted)."""
    if not diff:
        return ""
    counts = ", ".join(f"{diff[k]} {k}" for k in ("identical", "added", "removed", "modified", "suspicious",
                                                   "uncompared") if diff.get(k))
    drift = ", ".join(f"{k} {n}" for k, n in sorted((diff.get("drift") or {}).items()))
    members, content = diff.get("members", [0, 0]), diff.get("content_bytes", [0, 0])
    text = (f"against {safe_text(diff['baseline'])}: {counts or 'nothing compared'}; members {members[0]} to "
            f"{members[1]}, content {format_size(content[0])} to {format_size(content[1])}")
    return text + (f"; drift: {drift}" if drift else "")


def gate_head(outcome: dict[str, Any]) -> str:
    verdict = "passed" if outcome["exit_code"] == 0 else f"failed (exit {outcome['exit_code']})"
    policy = f", policy {safe_text(outcome['policy'])}" if outcome.get("policy") else ""
    return f"{safe_text(outcome['archive'])}: {verdict}{policy}"


def finding_line(finding: dict[str, Any]) -> str:
    waiver = f" (waived: {safe_text(finding['waiver'])})" if finding.get("waiver") else ""
    return f"{finding['severity']} {finding['code']}: {safe_text(finding['message'])}{waiver}"


# --- Markdown ------------------------------------------------------------------------------------

def md(text: str) -> str:
    """Untrusted text as inert Markdown: control characters escaped, then every character that
    could start markup (table pipes, code, emphasis, links, raw HTML) backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", safe_text(text))


class Raw(str):
    """A table cell of archcheck's own words (codes, categories): left as it is."""


def _table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    head = list(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(c if isinstance(c, Raw) else md(c) for c in row) + " |" for row in rows]


def _findings_md(findings: list[dict[str, Any]]) -> list[str]:
    rows = [(Raw(f["severity"]), Raw(f["code"]), Raw(f["category"]), " / ".join([safe_text(f["message"]), *consequences(f)]),
             place(f)) for f in findings[:SHOWN]]
    lines = _table(("severity", "code", "category", "message", "location"), rows)
    if len(findings) > SHOWN:
        lines.append(f"\n... and {len(findings) - SHOWN} more findings (see the JSON report)")
    return lines


def _gates_md(outcomes: list[dict[str, Any]], level: str) -> list[str]:
    out = []
    for outcome in outcomes:
        out += ["", f"{level} Gate: {md(gate_head(outcome))}", ""]
        if outcome.get("diff"):
            out += [md("Diff " + diff_text(outcome["diff"])), ""]
        out += _table(("rule", "result", "detail", "findings"), [
            (r["rule"], "passed" if r["passed"] else "FAILED", safe_text(r["detail"]),
             "; ".join(finding_line(f) for f in r["findings"])) for r in outcome["rules"]])
    return out


def render(result: Any, now: datetime | None = None) -> str:
    """The report as Markdown: a summary, the gate, then each archive with its findings."""
    now = now or datetime.now(timezone.utc)
    body = report_dict(result)
    out = [f"# archcheck report: {md(body['drill'])}", ""]
    out += _table(("", ""), summary_rows(body, now))
    gates, other = split_gates(body)
    out += _gates_md(other, "##")
    if body["findings"]:
        out += ["", "## The archives together", ""] + _findings_md(body["findings"])
    for item in body["archives"]:
        out += ["", f"## Archive {md(item['path'])}", ""] + _table(("", ""), archive_rows(item))
        out += _gates_md(gates.get(item["path"], []), "###")
        losses = [c for f in item.get("findings", []) for c in consequences(f) if c.startswith("a restore loses")]
        if losses:
            out += ["", "A restore of this archive:", ""] + [f"- {md(c)}" for c in losses]
        if item.get("findings"):
            out += [""] + _findings_md(item["findings"])
    return "\n".join(out) + "\n"
