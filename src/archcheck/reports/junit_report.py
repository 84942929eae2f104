"""JUnit XML (``--junit PATH``) for CI test reports (Jenkins, GitLab, ...): one testsuite per
archive, one testcase per layer checked and per rule of the CI gate. Rendered from the drill's
state alone; docs/outputs.md says what each element means."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..coverage import parse_iso
from ..findings import Category, Finding
from ..codecs import STREAM_CODECS
from ..gate import GatedFinding, GateOutcome
from ..manifest import output_file
from ..status import ExitCode, combine
from . import safe_text
from .text_report import where

__all__ = ["render", "write"]

LAYER_OF = dict.fromkeys(STREAM_CODECS, "zstd")  # a gzip (xz, ...) file is checked in the zstd layer's place
INCOMPLETE = (Category.TRANSIENT, Category.UNVERIFIED)
DONE = ("complete", "partial")  # an archive whose requested share was checked
FAILURE_TYPES = {ExitCode.CORRUPT: "corruption", ExitCode.POLICY: "policy", ExitCode.INCOMPLETE: "incomplete"}
# XML 1.0 cannot hold these at all, not even as character references
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass
class _Case:
    name: str
    outcome: str | None = None  # failure, error, skipped; None: passed
    type: str = ""
    message: str = ""
    text: str = ""
    out: list[str] = field(default_factory=list)


def _text(text: str) -> str:
    """Untrusted text (member names, paths) as inert, valid XML character data. GitLab links
    ``[[ATTACHMENT|path]]`` in a failed case's output to a file of the job: a name cannot."""
    return _NOT_XML.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"),
                        safe_text(text)).replace("[[", "[ [")


def _line(finding: Finding, weighed: GatedFinding | None = None) -> str:
    severity = (weighed.severity if weighed else finding.severity).value
    waiver = f", waived by {weighed.waiver}" if weighed and weighed.waiver else ""
    at = where(finding) or finding.location.archive
    return _text(f"{finding.code} ({finding.category.value}, {severity}{waiver}): {finding.message} at {at}")


def _codes(findings: Iterable[Finding]) -> str:
    return ", ".join(dict.fromkeys(f.code for f in findings))


def _layer_case(layer: str, findings: list[Finding], status: str, note: str | None) -> _Case:
    corrupt = [f for f in findings if f.category is Category.CORRUPTION]
    incomplete = [f for f in findings if f.category in INCOMPLETE]
    other = [f for f in findings if f.category is not Category.CORRUPTION and f.category not in INCOMPLETE]
    case = _Case(layer)
    if corrupt:
        case.outcome, case.type, case.message = "failure", "corruption", _codes(corrupt)
        case.text = "\n".join(_line(f) for f in corrupt)
        other = incomplete + other
    elif incomplete or status not in DONE:
        said = [_text(f"the archive is {status}" + (f": {note}" if note else ""))] if status not in DONE else []
        case.outcome, case.type = "error", "incomplete"
        case.message = _codes(incomplete) or said[0]
        case.text = "\n".join(said + [_line(f) for f in incomplete])
    case.out = [_line(f) for f in other]
    return case


def _gate_cases(gate: GateOutcome) -> list[_Case]:
    cases = []
    for rule in gate.rules:
        case = _Case(f"gate: {rule.rule}")
        lines = [_line(g.finding, g) for g in rule.findings]
        if rule.passed:
            case.out = [_text(rule.detail)] + lines
        else:
            code = combine(g.exit_code for g in rule.findings)
            case.outcome, case.type = "failure", FAILURE_TYPES.get(code, "policy")
            case.message, case.text = _text(rule.detail), "\n".join(lines)
        cases.append(case)
    return cases


def _seconds(started: str | None, finished: str | None) -> float:
    try:
        return max(0.0, (parse_iso(finished) - parse_iso(started)).total_seconds())
    except (TypeError, ValueError):
        return 0.0


def _classname(path: str) -> str:
    # Jenkins splits a classname at its last dot (package.class): dots of the file name would too
    return "archcheck." + _text(Path(path).name or path).replace(".", "_")


def _suite(parent: ET.Element, name: str, cases: list[_Case], timestamp: str, seconds: float,
           properties: dict[str, Any]) -> None:
    suite = ET.SubElement(parent, "testsuite", {
        "name": _text(name), "tests": str(len(cases)),
        "failures": str(sum(c.outcome == "failure" for c in cases)),
        "errors": str(sum(c.outcome == "error" for c in cases)),
        "skipped": str(sum(c.outcome == "skipped" for c in cases)),
        "time": f"{seconds:.3f}", "timestamp": timestamp})
    props = ET.SubElement(suite, "properties")
    for key, value in properties.items():
        ET.SubElement(props, "property", {"name": key, "value": _text(str(value))})
    classname = _classname(name)
    for case in cases:
        element = ET.SubElement(suite, "testcase", {"name": _text(case.name), "classname": classname})
        if case.outcome:
            attrs = {"message": case.message} if case.outcome == "skipped" else {"type": case.type,
                                                                                 "message": case.message}
            ET.SubElement(element, case.outcome, attrs).text = case.text or None
        if case.out:
            ET.SubElement(element, "system-out").text = "\n".join(case.out)


def render(result: Any, gates: Sequence[GateOutcome]) -> bytes:
    """The drill (a ``runner.DrillResult``) and the gate's outcomes (may be empty) as JUnit XML."""
    drill = result.drill
    root = ET.Element("testsuites", {"name": _text(f"archcheck {drill.id}")})
    by_uri = {g.archive: g for g in gates}
    shared: dict[str, list[Finding]] = defaultdict(list)  # findings about several archives, by where
    for finding in result.findings:
        shared[finding.location.archive].append(finding)
    for entry, verification in result.verifications:
        if verification is None:
            # never verified: why (failed to open, changed, skipped by policy, not reached) is the case
            skipped = entry.status in ("skipped", "deferred")  # by the drill's policy or budget: not a fault
            said = _text(f"{entry.status}: {entry.note or 'not verified'}")
            case = _Case("verify", "skipped" if skipped else "error", entry.status, said, said)
            code = 0 if skipped else entry.exit_code if entry.exit_code is not None else int(ExitCode.INCOMPLETE)
            _suite(root, entry.path, [case], drill.created, 0.0, {"status": entry.status, "exit_code": code})
            continue
        manifest = verification.manifest
        findings = verification.findings + shared.pop(entry.path, []) + shared.pop(manifest.archive.uri, [])
        by_layer: dict[str, list[Finding]] = {layer: [] for layer in manifest.config.get("layers", [])}
        for finding in findings:  # a finding of a layer not asked for still gets a case: none is dropped
            by_layer.setdefault(LAYER_OF.get(finding.layer, finding.layer), []).append(finding)
        cases = [_layer_case(layer, fs, entry.status, entry.note) for layer, fs in by_layer.items()]
        gate = by_uri.pop(manifest.archive.uri, None) or by_uri.pop(entry.path, None)
        cases += _gate_cases(gate) if gate else []
        properties = {"status": entry.status, "verdict": verification.verdict,
                      "exit_code": int(combine([verification.exit_code] + ([gate.exit_code] if gate else [])
                                               + ([ExitCode.INCOMPLETE] if entry.status not in DONE else [])))}
        _suite(root, entry.path, cases, manifest.created, _seconds(manifest.created, manifest.updated), properties)
    for uri, findings in shared.items():  # a backup set (a pg_basebackup directory) as a whole
        by_layer = defaultdict(list)
        for finding in findings:
            by_layer[LAYER_OF.get(finding.layer, finding.layer)].append(finding)
        cases = [_layer_case(f"backup set: {layer}", fs, "complete", None) for layer, fs in by_layer.items()]
        _suite(root, uri, cases, drill.updated, 0.0, {"status": drill.status})
    for uri, gate in by_uri.items():  # a gate about no verified archive of the drill: still said
        _suite(root, uri, _gate_cases(gate), drill.updated, 0.0, {"exit_code": int(gate.exit_code)})
    suites = root.findall("testsuite")
    for key in ("tests", "failures", "errors"):
        root.set(key, str(sum(int(s.get(key)) for s in suites)))
    root.set("time", f"{sum(float(s.get('time')) for s in suites):.3f}")
    ET.indent(root, space=" ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write(result: Any, gates: Sequence[GateOutcome], path: Path) -> None:
    """The JUnit XML file at ``path``, written atomically."""
    data = render(result, gates)
    with output_file(Path(path)) as out:
        out.write(data)
