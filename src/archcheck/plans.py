"""Drill plans (``drills/*.yaml``): which archives to verify, and within what limits.

A plan is read from YAML nodes, never with a YAML constructor, so a tag such as
``!!python/object`` is refused and nothing in the file is ever executed. Every problem is one
PlanError line naming the file and line. Relative paths in a plan are read from the plan file's
directory, not the working directory: cron runs jobs from / (or $HOME), CI from wherever.
"""
from __future__ import annotations

import glob
import os
import re
import string
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml

from .sources import LISTED, is_remote, list_objects
from .errors import UsageError
from .layers import ALL_LAYERS
from .layers.members import DIGESTS
from .yamlfile import describe, mapping, line as node_line, text as text_of
from .units import Budget, parse_budget, parse_duration, parse_size, parse_until, parse_window

TIME_LIMITS = ("deadline", "until", "window")  # a drill stops at one of them, at most
REPORT_FIELDS = ("drill", "plan", "date")


class PlanError(UsageError):
    """A drill plan cannot be read or is wrong; the message is one line, with file and line."""


class _EntryError(UsageError):
    """A wrong list entry: the message points at the entry's line, not the key's."""

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    archives: tuple[str, ...]  # as written; expand_archives reads them from the plan's directory
    layers: tuple[str, ...] | None = None
    deadline: float | None = None  # seconds
    until: str | None = None  # as written: its meaning depends on when the drill starts
    window: str | None = None  # likewise
    budget: Budget | None = None
    skip_verified_within: float | None = None  # unchanged archives verified within this age are skipped
    workers: int | None = None
    max_memory: int | None = None
    segment_size: int | None = None
    max_window: int | None = None
    digest: str | None = None
    state_dir: Path | None = None  # absolute
    report: str | None = None  # an absolute path template, with {drill} (its id), {plan} (name) and {date}; or -
    baseline: Path | None = None  # the CI gate's (absolute): a catalog or an archive
    policy: Path | None = None
    expect_file: Path | None = None
    save_catalog: Path | None = None
    executor: str | None = None  # local, dask://HOST:PORT, dask-local[:N]
    retries: int | None = None  # object stores: api.remote_options
    in_flight: int | None = None
    request_timeout: float | None = None
    retry_max_elapsed: float | None = None
    breaker_threshold: int | None = None
    breaker_cooldown: float | None = None
    line_of: dict[str, int] = field(default_factory=dict, compare=False, hash=False)  # "archives[0]" too


def _name(text: str, option: str) -> str:
    if not re.fullmatch(r"[\w.-]+", text):  # it names report files
        raise UsageError(f"{option} must be letters, digits, '.', '_' or '-', not {text!r}")
    return text


def _path(text: str, option: str) -> str:
    if not text.strip():
        raise UsageError(f"{option} must not be empty")
    return text


def _one_of(choices) -> Callable[[str, str], str]:
    def check(text: str, option: str) -> str:
        if text not in choices:
            raise UsageError(f"{option} must be one of {', '.join(choices)}, not {text!r}")
        return text
    return check


def _positive_size(text: str, option: str) -> int:
    size = parse_size(text, option)
    if size <= 0:
        raise UsageError(f"{option} must be more than zero, not {text!r}")
    return size


def _until(text: str, option: str) -> str:
    parse_until(text, option, datetime.now().astimezone())  # checked now, computed when the drill starts
    return text


def _window(text: str, option: str) -> str:
    parse_window(text, option, datetime.now().astimezone())
    return text


def _report(text: str, option: str) -> str:
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError:
        fields = [("", "", "")]  # an unmatched brace
    if any(name not in REPORT_FIELDS or spec or conv for name, spec, conv in fields):
        raise UsageError(f"{option} may contain {{drill}}, {{plan}} and {{date}} and no other braces, not {text!r}")
    return _path(text, option)


# key -> (kind, parser). Kinds: "text" is one scalar, read as the text written (so 6:00 is not
# YAML 1.1's sexagesimal 360, and "no" is not false); "list" a sequence of those; "int" a
# plain positive integer. Parsers take (text, option) and raise UsageError.
KEYS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "name": ("text", _name),
    "archives": ("list", _path),
    "layers": ("list", _one_of(ALL_LAYERS)),
    "deadline": ("text", parse_duration),
    "until": ("text", _until),
    "window": ("text", _window),
    "budget": ("text", parse_budget),
    "skip_verified_within": ("text", parse_duration),
    "workers": ("int", int),
    "max_memory": ("text", _positive_size),
    "segment_size": ("text", _positive_size),
    "max_window": ("text", _positive_size),
    "digest": ("text", _one_of(tuple(DIGESTS))),
    "state_dir": ("text", _path),
    "report": ("text", _report),
    "baseline": ("text", _path),
    "policy": ("text", _path),
    "expect_file": ("text", _path),
    "save_catalog": ("text", _path),
    "executor": ("text", _path),
    "retries": ("int", int),
    "in_flight": ("int", int),
    "request_timeout": ("text", parse_duration),
    "retry_max_elapsed": ("text", parse_duration),
    "breaker_threshold": ("int", int),
    "breaker_cooldown": ("text", parse_duration),
}
GATE_KEYS = ("baseline", "policy", "expect_file", "save_catalog")


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    root = mapping(path, "plan", PlanError, "archives: ..., budget: ...")
    if root is None:
        raise PlanError(f"{path}: the plan is empty; it needs at least 'archives'")
    values: dict[str, Any] = {}
    line_of: dict[str, int] = {}
    for key_node, value_node in root.value:
        key = _key(key_node, line_of, path)
        try:
            values[key] = _value(key, value_node, line_of)
        except UsageError as exc:
            raise PlanError(f"{path}:{getattr(exc, 'line', line_of[key])}: {exc}") from None
    if "archives" not in values:
        raise PlanError(f"{path}: no 'archives': list the archives to verify (archives: [/backups/*.tar.zst])")
    limits = sorted((line_of[key], key) for key in TIME_LIMITS if key in values)
    if len(limits) > 1:
        (first_line, first), (line, key) = limits[:2]
        raise PlanError(f"{path}:{line}: '{key}' conflicts with '{first}' (line {first_line}): "
                        f"set at most one of {', '.join(TIME_LIMITS)}")
    base = path.absolute().parent
    for key in ("state_dir", "report", *GATE_KEYS):  # Path("/a") / "/b" is "/b": absolute paths stay as written
        if key in values and not (key == "report" and values[key] == "-"):  # "-": stdout, as --report -
            values[key] = base / os.path.expanduser(values[key])
    if "report" in values:
        values["report"] = str(values["report"])
    values.setdefault("name", path.stem)
    return Plan(path=path, line_of=line_of, **values)


def _key(node: yaml.Node, line_of: dict[str, int], path: Path) -> str:
    key, line = node.value, node_line(node)
    if not isinstance(node, yaml.ScalarNode) or key not in KEYS:
        shown = repr(key) if isinstance(node, yaml.ScalarNode) else describe(node)
        raise PlanError(f"{path}:{line}: unknown key {shown} (known keys: {', '.join(sorted(KEYS))})")
    if key in line_of:  # YAML would silently keep the last one
        raise PlanError(f"{path}:{line}: duplicate key '{key}' (first at line {line_of[key]})")
    line_of[key] = line
    return key


def _value(key: str, node: yaml.Node, line_of: dict[str, int]) -> Any:
    kind, parse = KEYS[key]
    option = f"'{key}'"
    if node.tag == "tag:yaml.org,2002:null" and not node.value:
        raise UsageError(f"{option} has no value; give one or leave the key out")
    if kind == "int":
        if node.tag != "tag:yaml.org,2002:int" or not node.value.isdigit() or not int(node.value):
            raise UsageError(f"{option} must be a positive integer, not {describe(node)}")
        return parse(node.value)
    if kind == "text":
        return parse(text_of(node, option), option)
    if not isinstance(node, yaml.SequenceNode):
        raise UsageError(f"{option} must be a list, not {describe(node)}")
    if not node.value:
        raise UsageError(f"{option} is empty: {'list at least one archive' if key == 'archives' else 'leave it out'}")
    items = []
    for index, item in enumerate(node.value):
        line_of[f"{key}[{index}]"] = node_line(item)
        try:
            items.append(parse(text_of(item, f"{option} entries"), f"{option} entries"))
        except UsageError as exc:
            raise _EntryError(str(exc), node_line(item)) from None
    return tuple(items)


def expand_archives(plan: Plan, remote=None) -> tuple[list[Path | str], list[str]]:
    """The regular files and objects the plan's patterns match, and the patterns that matched none.

    Relative patterns are read from the plan file's directory; ``**`` spans directories. Files
    come in pattern order, sorted within a pattern, each once. An s3:// or gs:// pattern is listed in
    its bucket (with the plan's retries and timeouts: ``remote``); another URI is taken as it is.
    """
    base = glob.escape(str(plan.path.absolute().parent))
    found: dict[str, Path | str] = {}
    unmatched = []
    for pattern in plan.archives:
        if is_remote(pattern):  # only object stores list; a '?' in a URL is its query, never a glob
            listed = pattern.startswith(LISTED) and glob.has_magic(pattern)
            uris = list_objects(pattern, remote) if listed else [pattern]
            unmatched += [] if uris else [pattern]
            found.update((uri, uri) for uri in uris if uri not in found)
            continue
        expanded = os.path.expanduser(pattern)
        if not os.path.isabs(expanded):
            expanded = os.path.join(base, expanded)
        files = [name for name in sorted(glob.glob(expanded, recursive=True)) if os.path.isfile(name)]
        if not files:
            unmatched.append(pattern)
        for name in files:
            found.setdefault(os.path.normpath(name), Path(os.path.normpath(name)))
    return list(found.values()), unmatched
