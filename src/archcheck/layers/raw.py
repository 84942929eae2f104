"""Raw layer: BLAKE3 of fixed 8 MiB leaves, and a tree root over them.

The leaves are fixed-size ranges of the archive file, so the root does not depend on the
segment size: root = BLAKE3(leaf_0 || leaf_1 || ...), each leaf_i = BLAKE3(bytes of leaf i).
A segment's digest is BLAKE3 over its own leaves.
"""
from __future__ import annotations

from typing import Any, Iterable

import blake3

from .. import _native
from . import LEAF_SIZE


def leaf_digests(reader: Any, offset: int, length: int) -> list[str]:
    """Hash [offset, offset+length) leaf by leaf, each read in place where the reader can (a
    local file, mapped: a copy out of the page cache costs as much as the hash) and hashed by
    the core with the GIL released. A short read is an error: the bytes are not there."""
    digests: list[str] = []
    reader.expect(offset, offset + length)
    for start in range(offset, offset + length, LEAF_SIZE):
        want = min(LEAF_SIZE, offset + length - start)
        with reader.view(start, want) as data:
            if len(data) < want:
                raise OSError(5, f"read {len(data)} of {want} bytes at {start}: the file ends early")
            digests += _native.leaf_digests(data, LEAF_SIZE)
    return digests


def leaf_digest(leaf: bytes) -> str:
    """The digest of one whole leaf held in memory."""
    return _native.leaf_digests(leaf, LEAF_SIZE)[0]


def combine(digests: Iterable[str]) -> str:
    hasher = blake3.blake3()
    for digest in digests:
        hasher.update(bytes.fromhex(digest))
    return hasher.hexdigest()
