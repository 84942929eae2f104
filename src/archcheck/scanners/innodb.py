"""InnoDB tablespaces inside an archive: ``*.ibd`` and ``ibdata*`` files (formats.md 5, 6.5).

Page 0's FSP flags give the page size and the page format (MariaDB full_crc32 or the older
innodb/crc32 format, possibly ROW_FORMAT=COMPRESSED), then every page that streams past is
checked on its own: its number is its position, its space ID is page 0's, the low 32 bits of
its LSN are repeated in the trailer, and its checksum matches one of the algorithms InnoDB
accepts in its non-strict modes (as MariaDB's ``buf_page_is_corrupted`` and innochecksum do).
All-zero pages (allocated, never written) are fine.

Not checked: MariaDB page_compressed pages in the old format (the server skips them too) and
the old-format encryption checksum. A data file that does not start with page 0 (``ibdata2``
and further files of the system tablespace) has no FSP header: its page size and format are
taken from the first page whose checksum holds at one of the possible sizes.
"""
from __future__ import annotations

import struct
import zlib
from typing import Any

import crc32c

from . import Found

FSP_FLAGS_AT = 38 + 16  # FIL_PAGE_DATA + FSP_SPACE_FLAGS
FSP_SPACE_ID_AT = 38  # FIL_PAGE_DATA + FSP_SPACE_ID
FCRC32_MARKER = 0x10  # FSP flag: MariaDB full_crc32 format
COMPRESS_FCRC32_MARKER = 1 << 15  # page type bit: a page_compressed page in full_crc32
PAGE_COMPRESSED_TYPES = (34354, 37401)  # old-format MariaDB page_compressed (and encrypted)
TRX_SYS_PAGE = 5  # in space 0: where the doublewrite buffer is described
DOUBLEWRITE_MAGIC = 536853855  # TRX_SYS_DOUBLEWRITE_MAGIC_N
NO_CHECKSUM = 0xDEADBEEF  # BUF_NO_CHECKSUM_MAGIC: innodb_checksum_algorithm=none
SIZES = (16384, 4096, 8192, 32768, 65536)  # tried in this order when there is no page 0
MASK = 0xFFFFFFFF
U32 = struct.Struct(">I")
ZERO = bytes(max(SIZES))


def fold(data: bytes | memoryview) -> int:
    """ut_fold_binary, low 32 bits (the higher bits never reach them)."""
    f = 0
    for b in bytes(data):
        f = (((((f ^ b ^ 1653893711) << 8) & MASK) + f) ^ 1463735687) + b & MASK
    return f


def page_size(flags: int) -> tuple[int, int, bool] | str:
    """(logical page size, physical page size, full_crc32) from FSP flags, or a problem."""
    if flags & FCRC32_MARKER:
        ssize = flags & 0xF
        if not 3 <= ssize <= 7:
            return f"full_crc32 page size code {ssize} in FSP flags {flags:#x}"
        return 512 << ssize, 512 << ssize, True
    ssize, zip_ssize = (flags >> 6) & 0xF, (flags >> 1) & 0xF
    if ssize and not 3 <= ssize <= 7:
        return f"page size code {ssize} in FSP flags {flags:#x}"
    logical = 512 << ssize if ssize else 16384
    if zip_ssize:
        if zip_ssize > 5 or 512 << zip_ssize > logical:
            return f"compressed page size code {zip_ssize} in FSP flags {flags:#x}"
        return logical, 512 << zip_ssize, False
    return logical, logical, False


def full_crc32_problem(page: bytes | memoryview, ps: int) -> tuple[str, dict[str, Any]] | None:
    """MariaDB full_crc32: CRC-32C over the page (or its compressed part) minus its last 4
    bytes, stored there; the LSN check is left to the caller."""
    kind = U32.unpack_from(page, 24)[0] >> 16
    size = ps
    if kind & COMPRESS_FCRC32_MARKER:
        size = (kind & ~COMPRESS_FCRC32_MARKER) << 8
        if not 8 <= size < ps:
            return "INNODB_PAGE_CHECKSUM", {"algorithm": "full_crc32", "problem": f"compressed size {size}"}
    stored = U32.unpack_from(page, size - 4)[0]
    actual = crc32c.crc32c(page[:size - 4])
    if stored != actual:
        return "INNODB_PAGE_CHECKSUM", {"algorithm": "full_crc32", "stored": f"{stored:08x}", "actual": f"{actual:08x}"}
    return None


def old_checksum_problem(page: bytes | memoryview, ps: int) -> dict[str, Any] | None:
    """crc32, innodb (legacy) or none, whichever holds (buf_page_is_corrupted, non-strict)."""
    first, second = U32.unpack_from(page, 0)[0], U32.unpack_from(page, ps - 8)[0]
    crc = crc32c.crc32c(page[4:26]) ^ crc32c.crc32c(page[38:ps - 8])
    if first == second == crc:
        return None
    if first == second == NO_CHECKSUM:
        return None
    new = (fold(page[4:26]) + fold(page[38:ps - 8])) & MASK
    if (second == U32.unpack_from(page, 16)[0] or second == fold(page[0:26])) and first in (0, new):
        return None
    return {"algorithm": ["crc32", "innodb", "none"], "stored": f"{first:08x}/{second:08x}", "crc32": f"{crc:08x}",
            "innodb": f"{new:08x}"}


def zip_checksum_problem(page: bytes | memoryview, ps: int) -> dict[str, Any] | None:
    """ROW_FORMAT=COMPRESSED pages (page_zip_calc_checksum): one field at offset 0."""
    stored = U32.unpack_from(page, 0)[0]
    parts = (page[4:16], page[24:26], page[34:ps])
    crc = crc32c.crc32c(parts[0]) ^ crc32c.crc32c(parts[1]) ^ crc32c.crc32c(parts[2])
    if stored in (crc, NO_CHECKSUM):
        return None
    adler = 0
    for part in parts:
        adler = zlib.adler32(part, adler)
    if stored == adler:
        return None
    return {"algorithm": ["crc32", "innodb", "none"], "stored": f"{stored:08x}", "crc32": f"{crc:08x}",
            "innodb": f"{adler:08x}"}


class InnodbScanner:
    """The pages of one InnoDB data file, checked as they stream past."""

    def __init__(self, name: str, size: int):
        self.name, self.size = name, size
        self.ps: int | None = None  # physical page size, once known
        self.logical = 0
        self.full_crc32 = False
        self.zipped = False
        self.space: int | None = None
        self.base = 0  # the page number of the file's first page (not 0 in ibdata2...)
        self.dead = False  # page 0 was unreadable: the pages are not judged
        self.doublewrite: list[range] = []  # ibdata1: copies of other pages, not judged here
        self.carry = bytearray()
        self.seen = 0  # pages checked
        self.found: list[Found] = []

    # --- streaming ------------------------------------------------------------------------------

    def feed(self, view: memoryview, offset: int) -> None:
        if self.dead:
            return
        if self.ps is None:
            self.carry += view
            if not self._start(final=False):
                return
            view = memoryview(bytes(self.carry))
            self.carry.clear()
            if self.dead:
                return
        ps = self.ps
        if self.carry:
            take = min(len(view), ps - len(self.carry))
            self.carry += view[:take]
            view = view[take:]
            if len(self.carry) < ps:
                return
            self._check(bytes(self.carry))
            self.carry.clear()
        whole = len(view) - len(view) % ps
        for start in range(0, whole, ps):
            self._check(view[start:start + ps])
        self.carry += view[whole:]

    def close(self, complete: bool) -> None:
        if self.ps is None and not self.dead:
            if not complete:
                return
            if not self.carry:
                self._header("empty file")
                return
            data = bytes(self.carry)
            self.carry.clear()
            if self._start(final=True, data=data) and not self.dead:
                self.feed(memoryview(data), 0)
        if complete and self.carry and not self.dead:
            at = self.seen * self.ps
            self.found.append(Found("INNODB_PARTIAL_PAGE", at, len(self.carry),
                                    {"space": self.space, "page": self.base + self.seen},
                                    {"length": len(self.carry)}))

    # --- page 0 ---------------------------------------------------------------------------------

    def _start(self, final: bool, data: bytes | None = None) -> bool:
        """Page size and format, from page 0's FSP header; False: more bytes are needed."""
        head = data if data is not None else self.carry
        if len(head) < FSP_FLAGS_AT + 4:
            if final:
                self.found.append(Found("INNODB_PARTIAL_PAGE", 0, len(head), {"space": None, "page": 0},
                                        {"length": len(head)}))
                self.dead = True
            return final
        number = U32.unpack_from(head, 4)[0]
        if number != 0:
            return self._start_without_page0(head, number, final)
        self.space = U32.unpack_from(head, 34)[0]
        flags = U32.unpack_from(head, FSP_FLAGS_AT)[0]
        sizes = page_size(flags)
        if isinstance(sizes, str):
            self._header(sizes)
            return True
        self.logical, self.ps, self.full_crc32 = sizes
        self.zipped = self.ps != self.logical
        fsp_space = U32.unpack_from(head, FSP_SPACE_ID_AT)[0]
        if fsp_space != self.space and any(head[:FSP_FLAGS_AT + 4]):
            self.found.append(Found("INNODB_HEADER", 0, self.ps, {"space": self.space, "page": 0},
                                    {"problem": f"FSP header space ID {fsp_space}, FIL header {self.space}"}))
        return True

    def _start_without_page0(self, head: bytes | bytearray, number: int, final: bool) -> bool:
        """A further data file of the system tablespace: find the page size by checksum."""
        if len(head) < max(SIZES) and not final:
            return False
        for ps in SIZES:
            if len(head) < ps:
                continue
            page = bytes(head[:ps])
            if full_crc32_problem(page, ps) is None:
                self.full_crc32 = True
            elif old_checksum_problem(page, ps) is not None:
                continue
            self.ps = self.logical = ps
            self.base, self.space = number, U32.unpack_from(page, 34)[0]
            return True
        self._header(f"the file starts at page {number}, not 0, and its first page matches no checksum at any page size")
        return True

    def _header(self, problem: str) -> None:
        self.found.append(Found("INNODB_HEADER", 0, self.ps or len(self.carry), {"space": self.space, "page": 0},
                                {"problem": problem}))
        self.dead = True

    # --- each page ------------------------------------------------------------------------------

    def _check(self, page: bytes | memoryview) -> None:
        ps, index = self.ps, self.base + self.seen
        self.seen += 1
        if page[:26] == ZERO[:26] and page[34:] == ZERO[:ps - 34]:
            if not self.full_crc32 or page[26:34] == ZERO[:8]:
                return  # allocated, never written
        if any(index in blocks for blocks in self.doublewrite):
            return  # like innochecksum: these hold other pages, checked by recovery if ever used
        if index == TRX_SYS_PAGE and self.space == 0:
            self._find_doublewrite(page)
        stored = U32.unpack_from(page, 4)[0]
        if stored != index:
            self._page("INNODB_PAGE_NUMBER", index, stored=stored)
        compressed = self.full_crc32 and U32.unpack_from(page, 24)[0] >> 16 & COMPRESS_FCRC32_MARKER
        space = U32.unpack_from(page, 34)[0]
        if space != self.space and not compressed:  # compressed data starts at byte 26 there
            self._page("INNODB_PAGE_NUMBER", index, stored=stored, stored_space=space)
        if self.full_crc32:
            self._check_full_crc32(page, index)
        elif self.zipped:
            if problem := zip_checksum_problem(page, ps):
                self._page("INNODB_PAGE_CHECKSUM", index, **problem)
        else:
            if page[20:24] != page[ps - 4:ps]:
                self._page("INNODB_LSN_MISMATCH", index, header=page[20:24].hex(), trailer=page[ps - 4:ps].hex())
            if U32.unpack_from(page, 24)[0] >> 16 in PAGE_COMPRESSED_TYPES:
                return  # MariaDB page_compressed: checked after decompression by the server
            if problem := old_checksum_problem(page, ps):
                self._page("INNODB_PAGE_CHECKSUM", index, **problem)

    def _find_doublewrite(self, page: bytes | memoryview) -> None:
        """TRX_SYS_DOUBLEWRITE (ps - 200): an FSEG header, then magic, block 1, block 2 (twice)."""
        at = self.logical - 200 + 10
        magic, first, second = struct.unpack_from(">3I", page, at)
        if U32.unpack_from(page, 24)[0] >> 16 == 7 and magic == DOUBLEWRITE_MAGIC:
            extent = (1 << 20) // self.logical if self.logical <= 16384 else 64
            self.doublewrite = [range(first, first + extent), range(second, second + extent)]

    def _check_full_crc32(self, page: bytes | memoryview, index: int) -> None:
        ps = self.ps
        if problem := full_crc32_problem(page, ps):
            self._page(problem[0], index, **problem[1])
        compressed = U32.unpack_from(page, 24)[0] >> 16 & COMPRESS_FCRC32_MARKER
        key_version = U32.unpack_from(page, 0)[0]
        if not compressed and not key_version and page[20:24] != page[ps - 8:ps - 4]:
            self._page("INNODB_LSN_MISMATCH", index, header=page[20:24].hex(), trailer=page[ps - 8:ps - 4].hex())

    def _page(self, code: str, index: int, **details: Any) -> None:
        at = (index - self.base) * self.ps
        self.found.append(Found(code, at, self.ps, {"space": self.space, "page": index}, {"page": index, **details}))
