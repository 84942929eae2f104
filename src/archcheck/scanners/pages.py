"""PostgreSQL page checks over many pages at once (formats.md 3.2-3.6), as numpy arrays.

Pure functions from page bytes to per-page verdicts: no paths, no findings. A page is checked
the way PostgreSQL's PageIsVerified does, plus the header and line-pointer rules that hold on
every correct heap and btree page.
"""
from __future__ import annotations

import numpy as np

BLCKSZ = 8192
HEADER = 24
LAYOUT = BLCKSZ | 4  # pd_pagesize_version of an 8 KiB page, layout 4 (PostgreSQL 8.3 and later)
MAX_HEAP_ITEMS = 291
FNV_PRIME = np.uint32(16777619)
BASE = np.array([
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
], dtype=np.uint32)


def checksums(pages: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """pg_checksum_page for each row of ``pages`` (n x 8192 uint8), with its absolute block
    number: 32 lanes of FNV-1a-style mixing over 64 rows, the checksum field counted as zero."""
    words = pages.view("<u4").reshape(len(pages), BLCKSZ // 128, 32)
    sums = np.repeat(BASE[None, :], len(pages), axis=0)
    t = np.empty_like(sums)
    for row in range(BLCKSZ // 128):
        np.bitwise_xor(sums, words[:, row, :], out=t)
        if row == 0:
            t[:, 2] = sums[:, 2] ^ (words[:, 0, 2] & np.uint32(0xFFFF0000))  # pd_checksum is bytes 8-9
        _mix(t, sums)
    for _ in range(2):
        t[:] = sums
        _mix(t, sums)
    h = np.bitwise_xor.reduce(sums, axis=1) ^ blocks.astype(np.uint32)
    return (h % np.uint32(65535) + np.uint32(1)).astype(np.uint16)


def _mix(t: np.ndarray, out: np.ndarray) -> None:
    """out = (t * FNV_PRIME) ^ (t >> 17), all mod 2**32."""
    np.multiply(t, FNV_PRIME, out=out)
    np.bitwise_xor(out, t >> np.uint32(17), out=out)


class Fields:
    """The page header fields of each page, as arrays."""

    def __init__(self, pages: np.ndarray):
        h16 = pages[:, :HEADER].copy().view("<u2")
        h32 = pages[:, :8].copy().view("<u4")
        self.lsn = (h32[:, 0].astype(np.uint64) << np.uint64(32)) | h32[:, 1].astype(np.uint64)
        self.checksum, self.flags, self.lower, self.upper, self.special, self.layout = (
            h16[:, 4], h16[:, 5], h16[:, 6].astype(np.int32), h16[:, 7].astype(np.int32),
            h16[:, 8].astype(np.int32), h16[:, 9])
        # only a page with pd_upper == 0 can be all zero: scan just those
        self.zero = self.upper == 0
        if self.zero.any():
            self.zero[self.zero] = ~pages[self.zero].any(axis=1)


def header_problems(f: Fields) -> dict[int, str]:
    """The first broken header rule of each page whose header is broken: page index -> problem."""
    rules = [
        (f.upper == 0, "pd_upper is 0 (a new page) but the page is not all zero"),
        ((f.flags & ~np.uint16(7)) != 0, "pd_flags has undefined bits set"),
        (f.layout != LAYOUT, "pd_pagesize_version is not 8192, layout 4"),
        (f.lower < HEADER, "pd_lower is inside the page header"),
        ((f.lower > f.upper) | (f.upper > f.special) | (f.special > BLCKSZ),
         "pd_lower <= pd_upper <= pd_special <= 8192 does not hold"),
        (f.special % 8 != 0, "pd_special is not a multiple of 8"),
    ]
    out: dict[int, str] = {}
    live = ~f.zero
    if not np.logical_or.reduce([mask & live for mask, _ in rules]).any():
        return out  # the common case: one test for the whole batch
    for mask, problem in reversed(rules):  # the first rule that fails wins
        for i in np.flatnonzero(mask & ~f.zero):
            out[int(i)] = problem
    return out


def item_problems(pages: np.ndarray, f: Fields, sound: np.ndarray) -> dict[int, tuple[int, str]]:
    """Line-pointer rules of heap and btree pages (formats.md 3.4-3.5): page index ->
    (item number, problem). Other access methods keep other layouts and are not judged."""
    if not sound.any():
        return {}
    special_size = BLCKSZ - f.special
    tail = pages[:, -2:].copy().view("<u2")[:, 0]
    flags_at = np.clip(f.special + 12, 0, BLCKSZ - 2)
    bt_flags = pages[np.arange(len(pages)), flags_at].astype(np.uint16) | (
        pages[np.arange(len(pages)), flags_at + 1].astype(np.uint16) << 8)
    heap = special_size == 0
    # not the metapage, nor a deleted or half-dead page (PG14+ keeps a safexid where items were)
    btree = (special_size == 16) & (tail <= 0xFF7F) & ((bt_flags & (0x8 | 0x4 | 0x10)) == 0)
    lines = np.where(f.lower > HEADER, (f.lower - HEADER) // 4, 0)
    judged = sound & ~f.zero & (heap | btree) & (lines > 0)
    if not judged.any():
        return {}
    rows = np.flatnonzero(judged)
    width = int(lines[rows].max())
    raw = pages[rows, HEADER:HEADER + 4 * width].copy().view("<u4")
    valid = np.arange(width)[None, :] < lines[rows, None]
    off, kind, length = raw & 0x7FFF, (raw >> 15) & 3, raw >> 17
    storage = valid & (length != 0)
    upper, special = f.upper[rows, None], f.special[rows, None]
    rules = [
        (storage & ((off < upper) | (off + length > special)), "its storage lies outside pd_upper..pd_special"),
        (storage & (off % 8 != 0), "its storage is not 8-byte aligned"),
        (valid & (kind == 2) & ((off < 1) | (off > lines[rows, None])), "it redirects to a missing item"),
    ]
    found: dict[int, tuple[int, str]] = {}
    for mask, problem in reversed(rules):
        hit = mask.any(axis=1)
        for r in np.flatnonzero(hit):
            found[int(rows[r])] = (int(np.argmax(mask[r])) + 1, problem)
    too_many = heap[rows] & (lines[rows] > MAX_HEAP_ITEMS)
    for r in np.flatnonzero(too_many):
        found[int(rows[r])] = (int(lines[rows][r]), f"a heap page holds at most {MAX_HEAP_ITEMS} items")
    return found


BTREE_META_MAGIC = 0x053162
BT_LEAF, BT_ROOT, BT_META = 0x1, 0x2, 0x8


def btree_problems(pages: np.ndarray, f: Fields, judged: np.ndarray, blocks: np.ndarray) -> dict[int, str]:
    """The btree special space (formats.md 3.5): flags, the metapage, the root's siblings."""
    btree = judged & (f.special == BLCKSZ - 16)
    if not btree.any():
        return {}
    rows = np.flatnonzero(btree)
    opaque = np.stack([pages[r, f.special[r]:f.special[r] + 16] for r in rows]).view("<u4")  # prev, next, level, flags|cycle
    prev, nxt, flags, cycle = opaque[:, 0], opaque[:, 1], opaque[:, 3] & 0xFFFF, opaque[:, 3] >> 16
    is_btree = cycle <= 0xFF7F  # hash, GiST and SP-GiST pages end in 0xFF80-0xFF82
    meta = pages[rows, 24:32].copy().view("<u4")
    rules = [
        (is_btree & (flags >= 0x200), "btpo_flags has undefined bits set"),
        (is_btree & ((flags & BT_META) != 0) & (blocks[rows] != 0), "a page other than block 0 is marked as the metapage"),
        (is_btree & ((flags & BT_META) != 0) & ((meta[:, 0] != BTREE_META_MAGIC) | (meta[:, 1] < 2) | (meta[:, 1] > 4)),
         "the metapage's magic or version is wrong"),
        (is_btree & ((flags & BT_ROOT) != 0) & ((prev != 0) | (nxt != 0)), "the root page has siblings"),
    ]
    found: dict[int, str] = {}
    for mask, problem in reversed(rules):
        for r in np.flatnonzero(mask):
            found[int(rows[r])] = problem
    return found
