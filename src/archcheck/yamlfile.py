"""YAML files read as nodes, never with a YAML constructor: a tag such as ``!!python/object`` is
refused and nothing in the file is ever executed, and every node keeps its line, so each problem
is one line naming the file and line (drill plans, gate policies)."""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UsageError, describe_error

YAML_TAGS = {f"tag:yaml.org,2002:{name}" for name in
             ("str", "int", "float", "bool", "null", "timestamp", "seq", "map")}


def compose(path: Path, what: str, error: type[UsageError]) -> yaml.Node | None:
    """The file's root node (None when empty); ``what`` names it in errors ("plan", "policy")."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what}: {describe_error(exc)}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark, problem = exc.problem_mark or exc.context_mark, exc.problem or ""
        if exc.context and (not problem or problem.startswith("but")):  # "but found another document"
            problem = f"{exc.context}, {problem}" if problem else exc.context
        raise error(f"{path}:{mark.line + 1}: not valid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:  # a control character, found before any token
        line = text.count("\n", 0, exc.position) + 1
        raise error(f"{path}:{line}: not valid YAML: character #x{exc.character:04x}: {exc.reason}") from None
    if root is not None:
        refuse_tags(root, path, what, error)
    return root


def mapping(path: Path, what: str, error: type[UsageError], example: str) -> yaml.MappingNode | None:
    """The file's root, which must be a mapping of keys (None when the file is empty)."""
    root = compose(path, what, error)
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise error(f"{path}:{line(root)}: a {what} is a mapping of keys ({example}), not {describe(root)}")
    return root


def refuse_tags(root: yaml.Node, path: Path, what: str, error: type[UsageError]) -> None:
    """Only YAML's plain types: a tag like !!python/object is refused, whatever key it is under."""
    seen, todo = set(), [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:  # aliases share nodes, and may even loop
            continue
        seen.add(id(node))
        if node.tag not in YAML_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise error(f"{path}:{line(node)}: YAML tag '{tag}' is not allowed in a {what}")
        if isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            todo.extend(part for pair in node.value for part in pair)


def line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return f"the string {node.value!r}" if node.style in ("'", '"') else repr(node.value)


def text(node: yaml.Node, option: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise UsageError(f"{option} must be a single value, not {describe(node)}")
    return node.value
