"""The CI gate's outcome: an archive judged beyond "intact" (against a baseline, an expected
checksum and a policy), as data that the reports render and the exit code follows.

A gate never weakens the verification's verdict: corruption found by the layers or by the gate
(content that changed under an unchanged header, a checksum that does not match) exits 1 whatever
the policy says; a broken rule with nothing corrupt exits 4.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .catalog import open_catalog
from .checksums import Expectation
from .diff import Comparison, DiffSummary, DriftKind, compare
from .findings import Category, Finding, Location, Severity
from .manifest import atomic_file
from .status import ExitCode, combine
from .units import format_duration

if TYPE_CHECKING:  # policies (and YAML) load only when a gate judges: not for every verify's outcome
    from .policies import Policy

__all__ = ["DiffSummary", "DriftKind", "GatedFinding", "RuleOutcome", "GateOutcome", "save_outcomes",
           "load_outcomes"]

GATE_FILE = "gate.json"  # beside drill.json: the gate's outcomes, one per archive
SCHEMA, VERSION = "archcheck.gate", 1


# what fails the gate by category; anything else fails it only at (effective) severity error
FAILS_AS = {Category.CORRUPTION: ExitCode.CORRUPT, Category.TRANSIENT: ExitCode.INCOMPLETE,
            Category.UNVERIFIED: ExitCode.INCOMPLETE}


@dataclass(frozen=True)
class GatedFinding:
    """A finding as the gate weighs it: its severity after any waiver, and who waived it."""

    finding: Finding
    severity: Severity
    waiver: str | None = None  # "owner until YYYY-MM-DD"

    @property
    def exit_code(self) -> ExitCode:
        category = self.finding.category
        if category in FAILS_AS:
            return FAILS_AS[category]
        return ExitCode.POLICY if self.severity is Severity.ERROR else ExitCode.INTACT

    def to_json(self) -> dict[str, Any]:
        data = self.finding.to_json()
        data["severity"] = self.severity.value
        if self.waiver:
            data["waiver"] = self.waiver
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "GatedFinding":
        return cls(Finding.from_json(data), Severity(data["severity"]), data.get("waiver"))


@dataclass(frozen=True)
class RuleOutcome:
    """One check of the gate (a JUnit test case): diff, expect, or a policy rule by its key."""

    rule: str
    passed: bool
    detail: str  # one plain line; it may quote member names (untrusted: renderers escape it)
    findings: tuple[GatedFinding, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "detail": self.detail,
                "findings": [f.to_json() for f in self.findings]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RuleOutcome":
        return cls(data["rule"], data["passed"], data["detail"],
                   tuple(GatedFinding.from_json(f) for f in data.get("findings", [])))


@dataclass(frozen=True)
class GateOutcome:
    """The gate's judgment of one archive."""

    archive: str
    rules: tuple[RuleOutcome, ...]
    diff: DiffSummary | None = None
    policy: str | None = None  # the policy file
    catalog: str | None = None  # where this archive's catalog was saved, if it was

    @property
    def findings(self) -> list[GatedFinding]:
        return [f for rule in self.rules for f in rule.findings]

    @property
    def exit_code(self) -> ExitCode:
        return combine([f.exit_code for f in self.findings])

    @property
    def passed(self) -> bool:
        return self.exit_code == ExitCode.INTACT

    def to_json(self) -> dict[str, Any]:
        return {"archive": self.archive, "policy": self.policy, "catalog": self.catalog, "exit_code": int(self.exit_code),
                "diff": self.diff.to_json() if self.diff else None, "rules": [r.to_json() for r in self.rules]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "GateOutcome":
        diff = DiffSummary.from_json(data["diff"]) if data.get("diff") else None
        return cls(data["archive"], tuple(RuleOutcome.from_json(r) for r in data["rules"]), diff, data.get("policy"),
                   data.get("catalog"))


def save_outcomes(folder: Path, outcomes: Iterable[GateOutcome]) -> Path:
    """The gate's outcomes beside the drill's state, written atomically."""
    path = folder / GATE_FILE
    body = {"schema": SCHEMA, "version": VERSION, "outcomes": [o.to_json() for o in outcomes]}
    with atomic_file(path) as out:
        out.write(json.dumps(body, indent=1, ensure_ascii=False).encode())
    return path


def load_outcomes(folder: Path) -> list[GateOutcome]:
    """What the gate decided for a drill; none when no gate ran."""
    path = folder / GATE_FILE
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [GateOutcome.from_json(o) for o in data.get("outcomes", [])]


@dataclass(frozen=True)
class GateInputs:
    """What the gate weighs for one archive."""

    uri: str
    complete: bool  # the verification checked everything it was asked to
    intact: bool  # and found nothing corrupt: only then is its content judged as a backup
    findings: tuple[Finding, ...]  # the verification's
    catalog: Path | None = None  # this archive's catalog (needed for a baseline or a policy)
    baseline: Path | None = None  # the baseline's catalog
    policy: Policy | None = None
    expectations: tuple[Expectation, ...] = ()
    digests: dict[str, str] | None = None  # the whole file's, by algorithm
    digest_error: str | None = None


class _Weigher:
    """Findings as the gate weighs them: waivers applied, expired ones refused."""

    def __init__(self, policy: Policy | None, today: date):
        self.policy, self.today = policy, today

    def __call__(self, finding: Finding) -> GatedFinding:
        from .policies import UNWAIVABLE
        waiver = self.policy.waiver_for(finding.code) if self.policy else None
        if waiver is None or not waiver.active(self.today) or finding.category in UNWAIVABLE:
            return GatedFinding(finding, finding.severity)
        return GatedFinding(finding, waiver.severity, waiver.label)

    def rule(self, rule: str, findings: Iterable[Finding], passed_detail: str) -> RuleOutcome:
        weighed = tuple(self(f) for f in findings)
        failing = [f for f in weighed if f.exit_code != ExitCode.INTACT]
        detail = passed_detail if not failing else "; ".join(f.finding.message for f in failing[:3]) + (
            f"; and {len(failing) - 3} more" if len(failing) > 3 else "")
        return RuleOutcome(rule, not failing, detail, weighed)


def judge(inputs: GateInputs, now: datetime, saved: Path | None = None) -> GateOutcome:
    """The gate's outcome for one archive: its expected checksum, its diff with the baseline and
    each rule of the policy, in that order; ``saved``: where its catalog was kept."""
    weigh = _Weigher(inputs.policy, now.date())
    rules = []
    if inputs.expectations:
        rules.append(_expect_rule(inputs, weigh))
    diff = None
    wants_content = inputs.baseline is not None or inputs.policy is not None
    if wants_content and (not inputs.intact or inputs.catalog is None):
        why = ("the archive is corrupt: what is left of it is not judged as a backup" if inputs.complete else
               "the verification is incomplete: run it to the end (archcheck resume) to judge its content")
        rules.append(weigh.rule("policy", [Finding.of("POLICY_NOT_EVALUATED", Location(inputs.uri), why=why)], ""))
    elif wants_content:
        if inputs.baseline is not None:
            comparison = _compare(inputs)
            diff = comparison.summary
            rules.append(weigh.rule("diff", comparison.findings, _diff_detail(diff)))
        if inputs.policy is not None:
            rules.extend(_policy_rules(inputs, inputs.policy, diff, weigh, now))
    return GateOutcome(inputs.uri, tuple(rules), diff, str(inputs.policy.path) if inputs.policy else None,
                       str(saved) if saved else None)


def _expect_rule(inputs: GateInputs, weigh: _Weigher) -> RuleOutcome:
    findings = []
    for expected in inputs.expectations:
        actual = (inputs.digests or {}).get(expected.algorithm)
        if actual is None:
            why = f"its {expected.algorithm} could not be computed: {inputs.digest_error or 'not read'}"
            findings.append(Finding.of("POLICY_NOT_EVALUATED", Location(inputs.uri), why=why))
        elif actual != expected.hexdigest:
            findings.append(Finding.of("CHECKSUM_MISMATCH", Location(inputs.uri), algorithm=expected.algorithm,
                                       actual=actual, expected=expected.hexdigest, source=expected.source))
    shown = ", ".join(f"{e.algorithm} {e.hexdigest[:16]}... ({e.source})" for e in inputs.expectations)
    return weigh.rule("expect", findings, f"matches {shown}")


def _compare(inputs: GateInputs) -> Comparison:
    ignored = inputs.policy.ignored if inputs.policy else (lambda name: False)
    with open_catalog(inputs.baseline) as baseline, open_catalog(inputs.catalog) as current:
        return compare(baseline, current, inputs.uri, ignored)


def _diff_detail(diff: DiffSummary) -> str:
    parts = [f"{n} {kind}" for kind, n in (("identical", diff.identical), ("added", diff.added),
                                            ("removed", diff.removed), ("modified", diff.modified),
                                            ("suspicious", diff.suspicious), ("uncompared", diff.uncompared)) if n]
    parts += [f"{kind} drift on {n}" for kind, n in sorted(diff.drift.items())]
    return f"against {diff.baseline}: " + (", ".join(parts) or "both empty")


@dataclass
class _Content:
    """This archive's content as the policy counts it (ignored members left out)."""

    members: int = 0
    content_bytes: int = 0
    newest_mtime: int | None = None
    missing: list[str] | None = None  # required patterns no member matches


def _count_content(catalog: Path, policy: Policy) -> _Content:
    from .policies import matches_any
    content = _Content(missing=list(policy.required))
    with open_catalog(catalog) as current:
        for entry in current.entries():
            if policy.ignored(entry.name):
                continue
            content.members += 1
            content.content_bytes += entry.size
            content.newest_mtime = entry.mtime if content.newest_mtime is None else max(content.newest_mtime,
                                                                                         entry.mtime)
            if content.missing:
                content.missing = [p for p in content.missing if not matches_any(entry.name, (p,))]
    return content


def _policy_rules(inputs: GateInputs, policy: Policy, diff: DiffSummary | None, weigh: _Weigher,
                  now: datetime) -> list[RuleOutcome]:
    assert inputs.catalog is not None
    content = _count_content(inputs.catalog, policy)
    at = Location(inputs.uri)
    rules = []
    if policy.required:
        rules.append(weigh.rule("required", [Finding.of("POLICY_REQUIRED", at, pattern=p) for p in content.missing or ()],
                                f"{len(policy.required)} pattern(s) matched"))
    if policy.min_members is not None:
        found = [Finding.of("POLICY_MIN_MEMBERS", at, count=content.members, limit=policy.min_members)
                 ] if content.members < policy.min_members else []
        rules.append(weigh.rule("min_members", found, f"{content.members} members"))
    if policy.min_bytes is not None:
        found = [Finding.of("POLICY_MIN_BYTES", at, bytes=content.content_bytes, limit=policy.min_bytes)
                 ] if content.content_bytes < policy.min_bytes else []
        rules.append(weigh.rule("min_bytes", found, f"{content.content_bytes} bytes of content"))
    if policy.max_age is not None:
        rules.append(weigh.rule("max_age", _stale(content, policy.max_age, at, now), "fresh enough"))
    if diff is not None:
        for key, code, limit in (("max_shrink", "POLICY_SHRINK", policy.max_shrink),
                                 ("max_growth", "POLICY_GROWTH", policy.max_growth)):
            if limit is not None:
                rules.append(weigh.rule(key, _size_change(diff, code, limit, at), "within the limit"))
        if policy.allow_drift is not None:
            allowed = ", ".join(sorted(k.value for k in policy.allow_drift)) or "none"
            found = [Finding.of("POLICY_DRIFT", at, kind=kind, allowed=allowed) for kind in sorted(diff.drift)
                     if DriftKind(kind) not in policy.allow_drift]
            rules.append(weigh.rule("allow_drift", found, f"drift allowed: {allowed}"))
    elif policy.max_shrink or policy.max_growth or policy.allow_drift is not None:
        rules.append(RuleOutcome("baseline", True, "max_shrink, max_growth and allow_drift need --baseline: not checked"))
    rules.extend(_waiver_rules(inputs, policy, weigh, now))
    return rules


def _stale(content: _Content, max_age: float, at: Location, now: datetime) -> list[Finding]:
    if content.newest_mtime is None:
        return []
    age = now.timestamp() - content.newest_mtime
    if age <= max_age:
        return []
    mtime = datetime.fromtimestamp(content.newest_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [Finding.of("POLICY_MAX_AGE", at, age=format_duration(age), mtime=mtime, limit=format_duration(max_age))]


def _size_change(diff: DiffSummary, code: str, limit, at: Location) -> list[Finding]:
    found = []
    for what, (before, after), percent_limit in (("content bytes", diff.content_bytes, limit.bytes),
                                                 ("members", diff.members, limit.members)):
        if percent_limit is None or before == 0:
            continue
        change = (before - after) if code == "POLICY_SHRINK" else (after - before)
        percent = 100.0 * change / before
        if percent > percent_limit:
            found.append(Finding.of(code, at, what=what, percent=f"{percent:.1f}", before=before, after=after,
                                    limit=f"{percent_limit:g}"))
    return found


def _waiver_rules(inputs: GateInputs, policy: Policy, weigh: _Weigher, now: datetime) -> list[RuleOutcome]:
    """Expired waivers fail the gate; verification findings a waiver weighs anew are listed."""
    if not policy.waivers:
        return []
    expired = [Finding.of("POLICY_WAIVER_EXPIRED", Location(inputs.uri), waived=w.code, owner=w.owner,
                          expires=w.expires.isoformat())
               for w in policy.waivers if not w.active(now.date())]
    rules = [weigh.rule("waivers", expired, f"{len(policy.waivers)} waiver(s) in force")]
    waived = [f for f in inputs.findings if policy.waiver_for(f.code)]
    if waived:
        rules.append(weigh.rule("findings", waived, "waived findings weighed by their waivers"))
    return rules
