"""Globs over an object store's listing: ``*`` and ``?`` within one path segment, ``**``
across; the store is asked only for the names under the glob's literal prefix."""
from __future__ import annotations

import re
from typing import Callable

_MAGIC = re.compile(r"[*?\[]")
MAX_PAGES = 100_000  # a listing of 100 million names is someone else's problem

# (prefix, the previous page's continuation token or None) -> (names, the next token or None)
Pages = Callable[[str, "str | None"], "tuple[list[str], str | None]"]


def matching(pattern: str, page: Pages) -> list[str]:
    """The names a glob matches, sorted; ``page`` fetches one page of the listing."""
    match = _MAGIC.search(pattern)
    prefix = pattern[:match.start()] if match else pattern
    regex = re.compile(glob_regex(pattern))
    names: list[str] = []
    token = None
    for _ in range(MAX_PAGES):
        found, token = page(prefix, token)
        names += [name for name in found if regex.fullmatch(name)]
        if not token:
            break
    return sorted(names)


def glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)
