"""The native boundary: what Python calls on the core (archcheck._native), as Protocols.

The core is sans-I/O and coarse: it is handed buffers, one call per buffer with the GIL
released, and hands back batches. These Protocols are the whole surface the layers use, so the
boundary is read in one place and a type checker holds the callers to it.
"""
from __future__ import annotations

from typing import Any, Protocol, Union

# a finding of the walk: (code, start, end, member, member_offset, place, details)
WalkFinding = tuple[str, int, int, Union[str, None], Union[int, None], dict, dict]
# a database scanner's finding, in member coordinates: (code, offset, length, place, details)
ScanFinding = tuple[str, int, int, dict, dict]
# a member handed over whole (an SQLite database): (kind, name, data_offset, size, received,
# complete, head, data or None, limit)
Handoff = tuple[str, str, int, int, int, bool, bytes, Union[bytes, None], int]


class Chunk(Protocol):
    """Decoded bytes the core owns; Python passes it from a decoder to the walker and back."""

    @property
    def capacity(self) -> int: ...

    def __len__(self) -> int: ...


class Decoder(Protocol):
    """One zstd frame at a time (FrameDecoder), or a whole gzip, xz, lz4 or bzip2 file (StreamDecoder), fed
    compressed pieces in order."""

    consumed: int  # compressed bytes of the frame taken in
    trailing: Union[tuple[int, int, int], None]  # stream codecs: bytes after the last member (offset, length, non-zero)
    unchecked: Union[tuple[int, int, int], None]  # stream codecs: members no check covers (first, its offset, count)
    withheld: int  # output of a unit that failed its check, not handed on (a bzip2 block's): its length, about
    # a zstd frame's content checksum, once decoded whole, when the caller checks it (XXH64 of
    # the output, low 32 bits, made off the decoding thread); None: the decoder checked it, or none
    stored_checksum: Union[int, None]
    checksum_outside: bool  # the caller checks the frame's content checksum

    def decode(self, data: bytes, start: int, chunk: Chunk) -> tuple[int, bool, Union[tuple, None]]:
        """Decode ``data[start:]`` into the chunk's spare room: (input taken, frame finished,
        None or (message, finding code, unit index, unit start, unit end)), the unit being the
        zstd block or stream member (gzip member, xz stream, ...) that failed."""

    def finish(self) -> Union[tuple, None]:
        """The input ends here: None, or the failure as ``decode`` gives it (a gzip member, xz stream, ... cut short)."""


class Walker(Protocol):
    """The tar walk over decoded output fed in order (TarWalker), with member digests and,
    when built with ``scan``, the database scanners."""

    count: int  # members so far
    position: int  # uncompressed offset walked to

    def feed(self, data: Union[Chunk, bytes], offset: int, skip: int = 0) -> None: ...

    def finish(self, end: int, upstream_damage: bool) -> None: ...

    def lost(self, offset: int) -> tuple[Union[str, None], Union[int, None]]:
        """Output is lost from ``offset`` on (a frame that failed): the member cut there."""

    def flush(self) -> None: ...

    def has_findings(self) -> bool: ...

    def take_findings(self) -> list[WalkFinding]: ...

    def take_members(self) -> Union[tuple[bytes, int, list[tuple]], None]:
        """(one JSON line of member records, how many, restore hazards among them)."""

    def take_handoffs(self) -> list[Handoff]: ...

    def member_at(self, offset: int) -> tuple[Union[str, None], Union[int, None]]: ...

    def members_since(self, start: int, first_count: int) -> tuple[list[str], int]: ...

    def first_member_after(self, offset: int) -> Union[tuple[str, int], None]: ...

    def recent_json(self, offset: int, limit: int) -> str: ...

    def data_dirs(self) -> str:
        """What the scanners learnt of each data directory, as JSON."""

    def checkpoint(self) -> Union[str, None]:
        """Where a later walk can take over (versioned JSON); None while there is no such point."""

    def restore(self, checkpoint: str, recent: str) -> None:
        """Go on from ``checkpoint()``; ValueError for another version's."""


class ContentScanner(Protocol):
    """One database file read on its own (Scanner): the tests' and tools' way in."""

    kind: str
    found: list[ScanFinding]
    facts: dict[str, Any]  # what it learnt of the file: page size, records read...

    def feed(self, data: bytes, offset: int) -> None: ...

    def close(self, complete: bool) -> None: ...

    def take_handoff(self) -> Union[tuple, None]: ...
