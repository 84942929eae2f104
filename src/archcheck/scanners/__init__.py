"""Checks over members' content: database files recognised in the tar stream. Pure, like the
layers: they know nothing of the pipeline, the manifest or the CLI."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Found:
    """A scanner's finding, in member coordinates; the walker places it in the archive."""

    code: str
    offset: int  # within the member
    length: int
    where: dict[str, Any] = field(default_factory=dict)  # relation, fork, block
    details: dict[str, Any] = field(default_factory=dict)


class Both:
    """Several scanners over the same member (a relation file the manifest also lists)."""

    def __init__(self, scanners: list[Any]):
        self.scanners = scanners

    @property
    def found(self) -> list[Found]:
        return [f for s in self.scanners for f in s.found]

    def feed(self, view: memoryview, offset: int) -> None:
        for scanner in self.scanners:
            scanner.feed(view, offset)

    def close(self, complete: bool) -> None:
        for scanner in self.scanners:
            scanner.close(complete)


def format_lsn(lsn: int) -> str:
    """A WAL position as PostgreSQL writes it: high and low 32 bits in hex, X/X."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
