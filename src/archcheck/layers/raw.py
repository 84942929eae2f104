"""Raw layer: BLAKE3 of fixed 8 MiB leaves, and a tree root over them.

The leaves are fixed-size ranges of the archive file, so the root does not depend on the
segment size: root = BLAKE3(leaf_0 || leaf_1 || ...), each leaf_i = BLAKE3(bytes of leaf i).
A segment's digest is BLAKE3 over its own leaves.
"""
from __future__ import annotations

from typing import Callable, Iterable

import blake3

LEAF_SIZE = 8 * 1024 * 1024


def leaf_digests(view_range: Callable, offset: int, length: int) -> list[str]:
    """Hash [offset, offset+length) leaf by leaf; ``view_range(o, n)`` maps one leaf at a time."""
    digests = []
    for start in range(offset, offset + length, LEAF_SIZE):
        with view_range(start, min(LEAF_SIZE, offset + length - start)) as view:
            digests.append(blake3.blake3(view).hexdigest())
    return digests


def combine(digests: Iterable[str]) -> str:
    hasher = blake3.blake3()
    for digest in digests:
        hasher.update(bytes.fromhex(digest))
    return hasher.hexdigest()
