"""One database file fed to one of the core's scanners, in pieces, as the tar walker feeds it:
its findings (as the stream check receives them) and what it learnt of the file."""
from __future__ import annotations

import itertools
from typing import Any, Iterable

from archcheck import _native
from archcheck.layers.boundary import ContentScanner
from archcheck.scanners import Found


class Scanned:
    """A scanner's findings (``found``) and facts, as attributes (``page_size``, ``records``...)."""

    def __init__(self, scanner: ContentScanner):
        self.scanner = scanner

    @property
    def found(self) -> list[Found]:
        return [Found(*f) for f in self.scanner.found]

    def __getattr__(self, name: str) -> Any:
        facts = self.__dict__["scanner"].facts
        if name not in facts:
            raise AttributeError(f"the {self.scanner.kind} scanner has no fact {name!r}")
        return facts[name]


def scan_pieces(kind: str, name: str, data: bytes, pieces: Iterable[int], size: int | None = None,
                complete: bool = True, **options: Any) -> Scanned:
    """Feed ``data`` in pieces cycling through ``pieces``; ``size``: the member's size if not
    ``len(data)`` (a member cut short)."""
    scanner = _native.Scanner(kind, name, len(data) if size is None else size, **options)
    at = 0
    for piece in itertools.cycle(list(pieces)):
        if at >= len(data):
            break
        scanner.feed(data[at:at + piece], at)
        at += piece
    scanner.close(complete)
    return Scanned(scanner)


def scan_sqlite(data: bytes, pieces: Iterable[int], limit: int | None = None) -> list[tuple]:
    """A database collected by the core in pieces, then walked by Python, as in a run:
    (code, offset, where, details) of each finding."""
    from archcheck.scanners.sqlite import scan_handoff
    options = {} if limit is None else {"limit": limit}
    scanned = scan_pieces("sqlite", "x.db", data, pieces, **options)
    _kind, *handoff = scanned.scanner.take_handoff()
    return [(code, offset, where, details) for code, offset, _length, where, details in scan_handoff(*handoff)]
