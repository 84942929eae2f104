"""Gate policies (``--policy policy.yaml``): what a new backup must be, beyond intact.

Read as YAML nodes (yamlfile.py): an unknown key, a wrong type or broken YAML is one line with
the file, line and key (exit 2). Member patterns are shell globs over member names with a
leading ``./`` or ``/`` and a trailing ``/`` ignored; ``*`` crosses ``/``.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable

import yaml

from .diff import DriftKind
from .errors import UsageError
from .findings import CATALOGUE, Category, Severity
from .units import parse_duration, parse_size
from .yamlfile import describe, line, mapping, text


class PolicyError(UsageError):
    """A policy cannot be read or is wrong: one line, with file, line and key."""


# a waiver changes how a finding weighs in the gate; these categories decide the verdict itself
UNWAIVABLE = (Category.CORRUPTION, Category.TRANSIENT, Category.UNVERIFIED)


@dataclass(frozen=True)
class Limit:
    """A percentage of content bytes and of members (max_shrink, max_growth); None: unchecked."""

    bytes: float | None
    members: float | None


@dataclass(frozen=True)
class Waiver:
    code: str
    severity: Severity
    owner: str
    expires: date  # the last day it applies
    reason: str = ""

    def active(self, today: date) -> bool:
        return today <= self.expires

    @property
    def label(self) -> str:
        return f"{self.owner} until {self.expires.isoformat()}"


@dataclass(frozen=True)
class Policy:
    path: Path
    required: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    max_shrink: Limit | None = None
    max_growth: Limit | None = None
    min_members: int | None = None
    min_bytes: int | None = None
    max_age: float | None = None  # seconds
    allow_drift: frozenset[DriftKind] | None = None  # None: every kind passes
    waivers: tuple[Waiver, ...] = ()
    line_of: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    def ignored(self, name: str) -> bool:
        return bool(self.ignore) and matches_any(name, self.ignore)

    def waiver_for(self, code: str) -> Waiver | None:
        return next((w for w in self.waivers if w.code == code), None)


def member_path(name: str) -> str:
    """A member name as patterns see it: ./a/b/ and /a/b are a/b."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    path = member_path(name)
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _percent(node: yaml.Node, option: str) -> Limit:
    """20% (bytes and members), or {bytes: 20%, members: 10%}."""
    if isinstance(node, yaml.MappingNode):
        values: dict[str, float] = {}
        for key_node, value_node in node.value:
            key = text(key_node, f"{option} keys")
            if key not in ("bytes", "members"):
                raise UsageError(f"{option}: unknown key {key!r} (known: bytes, members)")
            values[key] = _one_percent(text(value_node, f"{option}.{key}"), f"{option}.{key}")
        return Limit(values.get("bytes"), values.get("members"))
    value = _one_percent(text(node, option), option)
    return Limit(value, value)


def _one_percent(value: str, option: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", value)
    if not match or float(match.group(1)) > 1000:
        raise UsageError(f"{option} must be a percentage such as 20%, not {value!r}")
    return float(match.group(1))


def _count(node: yaml.Node, option: str) -> int:
    if node.tag != "tag:yaml.org,2002:int" or not node.value.isdigit():
        raise UsageError(f"{option} must be a whole number, not {describe(node)}")
    return int(node.value)


def _globs(node: yaml.Node, option: str) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise UsageError(f"{option} must be a non-empty list of patterns, not {describe(node)}")
    patterns = tuple(member_path(text(item, f"{option} entries")) for item in node.value)
    if not all(patterns):
        raise UsageError(f"{option} entries must not be empty")
    return patterns


def _drift(node: yaml.Node, option: str) -> frozenset[DriftKind]:
    if not isinstance(node, yaml.SequenceNode):
        raise UsageError(f"{option} must be a list of drift kinds, not {describe(node)}")
    kinds = set()
    for item in node.value:
        value = text(item, f"{option} entries")
        try:
            kinds.add(DriftKind(value))
        except ValueError:
            raise UsageError(f"{option}: unknown drift kind {value!r} (known: "
                             f"{', '.join(k.value for k in DriftKind)})") from None
    return frozenset(kinds)


WAIVER_KEYS = ("code", "severity", "owner", "expires", "reason")


def _waivers(node: yaml.Node, option: str) -> tuple[Waiver, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise UsageError(f"{option} must be a list of waivers, not {describe(node)}")
    return tuple(_waiver(item, f"{option}[{index}]") for index, item in enumerate(node.value))


def _waiver(node: yaml.Node, option: str) -> Waiver:
    if not isinstance(node, yaml.MappingNode):
        raise _AtLine(f"{option} must be a mapping ({', '.join(WAIVER_KEYS)}), not {describe(node)}", line(node))
    values: dict[str, str] = {}
    for key_node, value_node in node.value:
        key = text(key_node, f"{option} keys")
        if key not in WAIVER_KEYS:
            raise _AtLine(f"{option}: unknown key {key!r} (known keys: {', '.join(WAIVER_KEYS)})", line(key_node))
        values[key] = text(value_node, f"{option}.{key}")
    missing = [key for key in WAIVER_KEYS[:4] if not values.get(key)]
    if missing:
        raise _AtLine(f"{option}: a waiver needs {', '.join(missing)}", line(node))
    code = values["code"]
    if code not in CATALOGUE:
        raise _AtLine(f"{option}.code: unknown finding code {code!r} (see docs/findings.md)", line(node))
    if CATALOGUE[code].category in UNWAIVABLE:
        raise _AtLine(f"{option}.code: {code} is {CATALOGUE[code].category.value}: it decides the verdict and "
                      "cannot be waived", line(node))
    try:
        severity = Severity(values["severity"])
    except ValueError:
        raise _AtLine(f"{option}.severity must be error, warning or info, not {values['severity']!r}",
                      line(node)) from None
    try:
        expires = date.fromisoformat(values["expires"])
    except ValueError:
        raise _AtLine(f"{option}.expires must be a date (YYYY-MM-DD), not {values['expires']!r}", line(node)) from None
    return Waiver(code, severity, values["owner"], expires, values.get("reason", ""))


class _AtLine(UsageError):
    def __init__(self, message: str, at: int):
        super().__init__(message)
        self.line = at


# key -> parser of the value node (node, option) -> value
KEYS: dict[str, Callable[[yaml.Node, str], Any]] = {
    "required": _globs,
    "ignore": _globs,
    "max_shrink": _percent,
    "max_growth": _percent,
    "min_members": _count,
    "min_bytes": lambda node, option: parse_size(text(node, option), option),
    "max_age": lambda node, option: parse_duration(text(node, option), option),
    "allow_drift": _drift,
    "waivers": _waivers,
}


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    root = mapping(path, "policy", PolicyError, "required: ..., max_shrink: ...")
    if root is None:
        raise PolicyError(f"{path}: the policy is empty (keys: {', '.join(KEYS)})")
    values: dict[str, Any] = {}
    line_of: dict[str, int] = {}
    for key_node, value_node in root.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key not in KEYS:
            shown = repr(key) if key is not None else describe(key_node)
            raise PolicyError(f"{path}:{line(key_node)}: unknown key {shown} (known keys: {', '.join(KEYS)})")
        if key in line_of:
            raise PolicyError(f"{path}:{line(key_node)}: duplicate key '{key}' (first at line {line_of[key]})")
        line_of[key] = line(key_node)
        if value_node.tag == "tag:yaml.org,2002:null" and not value_node.value:
            raise PolicyError(f"{path}:{line(key_node)}: '{key}' has no value; give one or leave the key out")
        try:
            values[key] = KEYS[key](value_node, f"'{key}'")
        except UsageError as exc:
            raise PolicyError(f"{path}:{getattr(exc, 'line', line(key_node))}: {exc}") from None
    return Policy(path=path, line_of=line_of, **values)
