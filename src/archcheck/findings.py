"""Findings: what archcheck says about an archive, as data.

Codes are a contract: append-only, each with its category, severity, layer and message
template. ``tests/test_findings.py`` fails when one changes or disappears.
"""
from __future__ import annotations

import collections
import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import _native


class Category(str, enum.Enum):
    CORRUPTION = "corruption"  # damage: exit 1
    TRANSIENT = "transient"  # could not read; retried; run incomplete (exit 3)
    UNVERIFIED = "unverified"  # readable but cannot be checked here (exit 3)
    DRIFT = "drift"  # differs from expectation, harmless (policy decides)
    WARNING = "warning"  # a hazard for a restore; does not fail the run unless a policy says so
    INFO = "info"  # a fact worth knowing; no effect on the verdict
    CHANGED = "changed"  # content added, removed or modified against a baseline (policy decides)
    POLICY = "policy"  # a rule of the gate's policy is broken: exit 4


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Code:
    code: str
    category: Category
    severity: Severity
    layer: str
    template: str


def _c(code: str, category: Category, severity: Severity, layer: str, template: str) -> Code:
    return Code(code, category, severity, layer, template)


G, P = Category.CHANGED, Category.POLICY
C, T, U, D, I = Category.CORRUPTION, Category.TRANSIENT, Category.UNVERIFIED, Category.DRIFT, Category.INFO
H = Category.WARNING  # a hazard
E, W, N = Severity.ERROR, Severity.WARNING, Severity.INFO

CATALOGUE: dict[str, Code] = {c.code: c for c in [
    # source / raw layer
    _c("SOURCE_READ_ERROR", T, E, "raw", "could not read bytes {start}-{end}: {error}"),
    _c("SOURCE_UNSTABLE", T, E, "raw", "bytes {start}-{end} read differently twice; re-run on stable storage"),
    # zstd layer
    _c("ZSTD_BAD_MAGIC", C, E, "zstd", "no zstd frame where one must start: {detail}"),
    _c("ZSTD_TRAILING_GARBAGE", C, E, "zstd", "{length} bytes after the last frame are not a zstd frame"),
    _c("ZSTD_RESERVED_BIT", C, E, "zstd", "frame header has the reserved bit set"),
    _c("ZSTD_RESERVED_BLOCK", C, E, "zstd", "block {block} has the reserved block type"),
    _c("ZSTD_BLOCK_TOO_LARGE", C, E, "zstd", "block {block} claims {size} bytes, over the limit of {limit}"),
    _c("ZSTD_TRUNCATED_FRAME", C, E, "zstd", "frame is cut off: it needs bytes past the end of the archive"),
    _c("ZSTD_DECODE_ERROR", C, E, "zstd", "frame does not decode: {error}"),
    _c("ZSTD_CHECKSUM_MISMATCH", C, E, "zstd", "decoded content does not match the frame's checksum"),
    _c("ZSTD_CONTENT_SIZE_MISMATCH", C, E, "zstd", "frame decodes to {actual} bytes, header says {expected}"),
    _c("ZSTD_SEEK_TABLE_MISMATCH", C, E, "zstd", "seek table disagrees with the frames: {detail}"),
    _c("ZSTD_DICTIONARY_REQUIRED", U, W, "zstd", "frame needs dictionary {dictionary_id}; content not checked"),
    _c("ZSTD_LEGACY_FRAME", U, W, "zstd", "legacy zstd frame format; content not checked"),
    _c("ZSTD_NO_CHECKSUM", I, N, "zstd", "{frames} frame(s) carry no content checksum; silent bit flips in them are caught only by deeper layers"),
    _c("ZSTD_LARGE_WINDOW", I, N, "zstd", "decoding needs a {window} window (zstd --long); restoring needs as much memory"),
    _c("ZSTD_SINGLE_FRAME", I, N, "zstd", "one frame of {size}: decoded on one core, and a resumed check must decode the finished part again; compress with pzstd or the seekable format for parallel checks that resume at the next frame"),
    # database pages: PostgreSQL (formats.md 3)
    _c("PG_PAGE_CHECKSUM", C, E, "pages", "page checksum is {actual}, the page says {expected}"),
    _c("PG_PAGE_HEADER", C, E, "pages", "page header is invalid: {problem}"),
    _c("PG_LINE_POINTER", C, E, "pages", "line pointer {item} is invalid: {problem}"),
    _c("PG_BTREE_PAGE", C, E, "pages", "btree page is invalid: {problem}"),
    _c("PG_PAGE_TORN", I, W, "pages", "{was} on a page PostgreSQL was writing while the backup copied it (page LSN {page_lsn}, backup start {start_lsn}): WAL replay rewrites it"),
    _c("PG_PARTIAL_PAGE", D, W, "pages", "the file ends with {length} bytes that are not a whole page (a relation caught mid-extension?)"),
    _c("PG_CONTROL_DAMAGED", C, E, "pages", "pg_control is damaged: {problem}"),
    _c("PG_CONTROL_UNKNOWN", U, W, "pages", "pg_control has an unknown layout (version {version}); page checksums not compared"),
    _c("PG_DATA_DIRECTORY", I, N, "pages", "PostgreSQL {version} data directory at {datadir}: {files} relation files, {pages} pages checked, checksums {checksums}, {backup} backup"),
    # pg_basebackup's backup_manifest and WAL (formats.md 3.9, 3.11)
    _c("PG_MANIFEST_DAMAGED", C, E, "pages", "backup_manifest is damaged: {problem}"),
    _c("PG_MANIFEST_FILE_SIZE", C, E, "pages", "{path} is {actual} bytes, backup_manifest says {expected}"),
    _c("PG_MANIFEST_FILE_CHECKSUM", C, E, "pages", "{path}: {algorithm} of the content is {actual}, backup_manifest says {expected}"),
    _c("PG_MANIFEST_FILE_MISSING", C, E, "pages", "{path} is listed in backup_manifest but is not in the backup"),
    _c("PG_MANIFEST_FILE_EXTRA", D, W, "pages", "{path} is in the backup but not listed in backup_manifest"),
    _c("WAL_SEGMENT_MISSING", C, E, "pages", "WAL segment {segment}, needed to make the backup consistent, is missing"),
    _c("WAL_SEGMENT_SIZE", C, E, "pages", "WAL segment is {size} bytes, not {expected}"),
    _c("WAL_PAGE_HEADER", C, E, "pages", "WAL page header is invalid: {problem}"),
    _c("WAL_RECORD_CRC", C, E, "pages", "WAL record at {lsn} fails its CRC-32C: {actual}, record says {expected}"),
    _c("WAL_RECORD_INVALID", C, E, "pages", "WAL record at {lsn} is invalid: {problem}"),
    # SQLite (formats.md 4) and InnoDB (formats.md 5)
    _c("SQLITE_HEADER", C, E, "pages", "SQLite header is invalid: {problem}"),
    _c("SQLITE_PAGE", C, E, "pages", "SQLite page {page} is invalid: {problem}"),
    _c("SQLITE_FREELIST", C, E, "pages", "SQLite freelist is invalid: {problem}"),
    _c("SQLITE_UNUSED_PAGE", C, E, "pages", "SQLite page {page} is never used (in no b-tree, overflow chain or freelist)"),
    _c("SQLITE_WAL_CHECKSUM", C, E, "pages", "SQLite WAL frame {frame} fails its checksum, and committed frames follow it: {problem}"),
    _c("SQLITE_TOO_LARGE", U, W, "pages", "SQLite database of {size} bytes is larger than {limit}: only its header was checked"),
    _c("INNODB_HEADER", C, E, "pages", "InnoDB tablespace header is invalid: {problem}"),
    _c("INNODB_PAGE_CHECKSUM", C, E, "pages", "InnoDB page {page} matches no checksum algorithm (stored {stored})"),
    _c("INNODB_PAGE_NUMBER", C, E, "pages", "InnoDB page {page} says it is page {stored}"),
    _c("INNODB_LSN_MISMATCH", C, E, "pages", "InnoDB page {page}: the LSN in its header and trailer differ (a torn write)"),
    _c("INNODB_PARTIAL_PAGE", D, W, "pages", "InnoDB file ends with {length} bytes that are not a whole page"),
    # gzip (formats.md 7): decoded in the zstd layer's place, its findings are its own
    _c("GZIP_BAD_HEADER", C, E, "gzip", "{error}"),
    _c("GZIP_HEADER_CRC", C, E, "gzip", "{error}"),
    _c("GZIP_DECODE_ERROR", C, E, "gzip", "the deflate data does not decode: {error}"),
    _c("GZIP_TRUNCATED", C, E, "gzip", "{error}"),
    _c("GZIP_CRC_MISMATCH", C, E, "gzip", "decoded content does not match its CRC-32: {detail}"),
    _c("GZIP_SIZE_MISMATCH", C, E, "gzip", "decoded length does not match the trailer: {detail}"),
    _c("GZIP_TRAILING_DATA", D, W, "gzip", "{length} bytes after the last gzip member ({nonzero} not zero): gzip -d warns and does not restore them"),
    # xz, lz4, bzip2 (formats.md 7): as gzip, each member (stream, frame) decoded in order
    _c("XZ_BAD_HEADER", C, E, "xz", "{error}"),
    _c("XZ_DECODE_ERROR", C, E, "xz", "{error}"),
    _c("XZ_TRUNCATED", C, E, "xz", "{error}"),
    _c("XZ_BAD_INDEX", C, E, "xz", "the index of xz stream {xz_stream} is damaged; every block before it decoded and passed its check: xz -d writes this stream's content, then fails"),
    _c("XZ_BAD_FOOTER", C, E, "xz", "the footer of xz stream {xz_stream} is damaged (its CRC-32, index size, flags or magic); every block before it decoded and passed its check, and the index is whole: xz -d writes this stream's content, then fails"),
    _c("XZ_MEMORY_LIMIT", U, W, "xz", "{error}; content not checked: raise --max-window to verify it"),
    _c("XZ_NO_CHECK", I, N, "xz", "the xz stream carries no integrity check (xz --check=none): damage in its data is caught only by deeper layers"),
    _c("XZ_UNSUPPORTED_CHECK", H, W, "xz", "an xz stream's check type {check} is reserved, not one xz knows: its blocks decode but are not checked"),
    _c("XZ_TRAILING_DATA", D, W, "xz", "{length} bytes after the last xz stream ({nonzero} not zero): xz -d restores the streams before them, then fails on them"),
    _c("LZ4_BAD_HEADER", C, E, "lz4", "{error}"),
    _c("LZ4_DECODE_ERROR", C, E, "lz4", "{error}"),
    _c("LZ4_BLOCK_CHECKSUM", C, E, "lz4", "{error}"),
    _c("LZ4_CONTENT_CHECKSUM", C, E, "lz4", "decoded content does not match its xxHash32: {detail}"),
    _c("LZ4_SIZE_MISMATCH", C, E, "lz4", "decoded length does not match the frame's content size: {detail}"),
    _c("LZ4_TRUNCATED", C, E, "lz4", "{error}"),
    _c("LZ4_NO_CHECKSUM", I, N, "lz4", "{members} lz4 frame(s) carry neither a content nor block checksums (lz4 --no-frame-crc), the first at lz4 frame {lz4_frame}: damage in their data is caught only by deeper layers"),
    _c("LZ4_TRAILING_DATA", D, W, "lz4", "{length} bytes after the last lz4 frame ({nonzero} not zero): lz4 -d restores the frames before them, then fails on them"),
    _c("BZIP2_BAD_HEADER", C, E, "bzip2", "{error}"),
    _c("BZIP2_DECODE_ERROR", C, E, "bzip2", "{error}"),
    _c("BZIP2_TRUNCATED", C, E, "bzip2", "{error}"),
    _c("BZIP2_TRAILING_DATA", D, W, "bzip2", "{length} bytes after the last bzip2 stream ({nonzero} not zero): bzip2 -d warns and ignores them"),
    # age (formats.md 8): the header, each STREAM chunk's tag, the final-chunk marker
    _c("AGE_BAD_HEADER", C, E, "age", "the age header is damaged: {error}"),
    _c("AGE_CHUNK_AUTH", C, E, "age", "{error}; plaintext bytes {plaintext_range}"),
    _c("AGE_TRUNCATED", C, E, "age", "{error}"),
    _c("AGE_NOT_DECRYPTED", U, W, "age", "age-encrypted to {recipients}; {why}: the header's structure and the chunk sizes were checked, the {chunks} chunks' authentication and everything inside them were not"),
    # tar layer
    _c("TAR_HEADER_CHECKSUM", C, E, "tar", "header checksum is {actual}, header says {expected}"),
    _c("TAR_BAD_NUMBER", C, E, "tar", "header field {field} is not a number: {value}"),
    _c("TAR_TRUNCATED", C, E, "tar", "archive ends inside {what}: {missing} bytes missing"),
    _c("TAR_MISSING_END", C, E, "tar", "archive has no end-of-archive marker (two zero blocks): likely cut off"),
    _c("TAR_END_MARKER_DAMAGED", H, W, "tar", "the end-of-archive marker has {nonzero} stray non-zero byte; every member before it is whole"),
    _c("TAR_LONE_ZERO_BLOCK", D, W, "tar", "a single zero block inside the archive (concatenated archives?)"),
    _c("TAR_TRAILING_DATA", D, W, "tar", "{length} non-zero bytes after the end-of-archive marker"),
    _c("TAR_PAX_MALFORMED", C, E, "tar", "pax extended header is malformed: {detail}"),
    _c("TAR_ORPHAN_EXTENSION", C, E, "tar", "{kind} header is not followed by a member header"),
    _c("TAR_RESYNC", I, N, "tar", "skipped {length} bytes of unreadable tar data to the next valid header"),
    _c("TAR_NOT_TAR", I, N, "tar", "decoded content is not a tar archive; tar and member checks skipped"),
    _c("ZSTD_SIZE_NOTE_MISMATCH", C, E, "zstd", "pzstd noted a {noted}-byte frame, its blocks take {actual} bytes"),
    _c("TAR_EMPTY", D, W, "tar", "the archive holds no members: its {size} bytes are only end-of-archive zeros"),
    _c("TAR_MEMBERS_AFTER_END", C, E, "tar", "members after the end-of-archive marker at byte {marker}, the first ({name!r}) at byte {offset}: tar stops at the marker and restores none of them"),
    _c("TAR_BAD_SPARSE_MAP", C, E, "tar", "the sparse map is damaged: {detail}"),
    # the run itself
    _c("ZSTD_BAD_WINDOW", C, E, "zstd", "frame header asks for a {window} window, {why}: the header is damaged"),
    _c("ZSTD_WINDOW_OVER_LIMIT", U, W, "zstd", "frame needs a {window} window, over --max-window {limit}; content not checked: raise --max-window to verify it (decoding needs that much memory)"),
    _c("SOURCE_CHANGED", T, E, "raw", "the archive changed during the run ({what}): nothing read from it can be judged; verify it again once it is stable"),
    _c("RAW_CHANGED", C, E, "raw", "bytes {start}-{end} changed since they were first read at {first_read}: read twice since, the same both times"),
    _c("TAR_UNSAFE_PATH", H, W, "tar", "{what} {path!r}: {restore}"),
    _c("FINDINGS_LIMITED", I, N, "run", "{dropped} more findings not kept (first {limit} kept): {by_code}"),
    # the CI gate: the archive against a baseline (diff), its expected checksum, its policy
    _c("DIFF_ADDED", G, N, "diff", "added since the baseline ({type}, {size} bytes)"),
    _c("DIFF_REMOVED", G, W, "diff", "removed since the baseline (was {type}, {size} bytes)"),
    _c("DIFF_MODIFIED", G, N, "diff", "changed since the baseline: {what}"),
    _c("DIFF_SUSPICIOUS", C, E, "diff", "content differs from the baseline while name, size ({size} bytes) and mtime are the same: bit rot or tampering at the source"),
    _c("DIFF_UNCOMPARED", U, W, "diff", "content not compared with the baseline: {why}"),
    _c("DRIFT_MTIME", D, N, "diff", "{count} member(s) differ from the baseline only in mtime, e.g. {examples}"),
    _c("DRIFT_OWNER", D, N, "diff", "{count} member(s) differ from the baseline in owner, e.g. {examples}"),
    _c("DRIFT_MODE", D, N, "diff", "{count} member(s) differ from the baseline in mode, e.g. {examples}"),
    _c("DRIFT_ORDER", D, N, "diff", "the same members as the baseline, in another order"),
    _c("DRIFT_COMPRESSION", D, N, "diff", "the same content as the baseline, compressed differently: {detail}"),
    _c("DRIFT_FRAMES", D, N, "diff", "the same content as the baseline, in another frame layout: {detail}"),
    _c("CHECKSUM_MISMATCH", C, E, "raw", "the archive's {algorithm} is {actual}, {source} expects {expected}"),
    _c("POLICY_REQUIRED", P, E, "policy", "no member matches the required pattern {pattern!r}"),
    _c("POLICY_SHRINK", P, E, "policy", "{what} shrank by {percent}% against the baseline ({before} to {after}), over max_shrink {limit}%"),
    _c("POLICY_GROWTH", P, E, "policy", "{what} grew by {percent}% against the baseline ({before} to {after}), over max_growth {limit}%"),
    _c("POLICY_MIN_MEMBERS", P, E, "policy", "{count} member(s), fewer than min_members {limit}"),
    _c("POLICY_MIN_BYTES", P, E, "policy", "{bytes} bytes of content, fewer than min_bytes {limit}"),
    _c("POLICY_MAX_AGE", P, E, "policy", "the newest member is {age} old (mtime {mtime}), over max_age {limit}: a backup of stale data"),
    _c("POLICY_DRIFT", P, E, "policy", "{kind} drift is not in allow_drift ({allowed})"),
    _c("POLICY_WAIVER_EXPIRED", P, E, "policy", "the waiver of {waived} (owner {owner}) expired on {expires}: renew it or remove the cause"),
    _c("POLICY_NOT_EVALUATED", U, W, "policy", "the policy was not evaluated: {why}"),
]}
del C, T, U, D, I, H, E, W, N, G, P


# characters of a text from the archive (a name, a path) a finding keeps: a hostile archive's
# megabyte names, copied into each finding, message and report, would grow without bound
TEXT_LIMIT = _native.TEXT_LIMIT  # PATH_MAX: no restore creates a longer path


def _too_long(value: Any) -> bool:
    return isinstance(value, str) and len(value) > TEXT_LIMIT


def bounded(value: Any) -> Any:
    """``value``, its texts cut as the core cuts them (text::bounded: at TEXT_LIMIT characters,
    with their length and BLAKE3, so distinct texts stay distinct; a cut text is kept)."""
    if _too_long(value):
        try:
            return _native.bounded_text(value)
        except UnicodeEncodeError:  # the bytes of a name that is not UTF-8 (os.fsdecode's surrogates)
            return _native.bounded_text(value.encode("utf-8", "backslashreplace").decode("utf-8"))
    if isinstance(value, (list, tuple)) and any(_too_long(v) for v in value):
        return type(value)(bounded(v) for v in value)
    return value


@dataclass(frozen=True)
class Location:
    """Where a finding is, from the archive's bytes down to the member."""

    archive: str
    byte_range: tuple[int, int] | None = None  # [start, end) in the archive file
    segment: int | None = None
    frame: int | None = None
    uncompressed_offset: int | None = None
    member: str | None = None
    member_offset: int | None = None
    relation: str | None = None  # a database file inside the member: base/16384/16397
    fork: str | None = None  # main, fsm, vm, init
    block: int | None = None  # the page's block number within its relation fork
    wal_segment: str | None = None  # a WAL segment file inside the member, and a position in WAL
    lsn: str | None = None
    space: int | None = None  # an InnoDB tablespace id
    page: int | None = None  # a page number in an SQLite or InnoDB file

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.byte_range is not None:
            data["byte_range"] = list(self.byte_range)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Location":
        data = dict(data)
        if "byte_range" in data:
            data["byte_range"] = tuple(data["byte_range"])
        return cls(**data)


@dataclass(frozen=True)
class Finding:
    code: str
    location: Location
    details: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def of(cls, code: str, location: Location, **details: Any) -> "Finding":
        if code not in CATALOGUE:
            raise KeyError(f"unknown finding code {code}")
        if _too_long(location.member):
            location = replace(location, member=bounded(location.member))
        return cls(code, location, tuple(sorted((key, bounded(value)) for key, value in details.items())))

    @property
    def spec(self) -> Code:
        return CATALOGUE[self.code]

    @property
    def category(self) -> Category:
        return self.spec.category

    @property
    def severity(self) -> Severity:
        return self.spec.severity

    @property
    def layer(self) -> str:
        return self.spec.layer

    @property
    def message(self) -> str:
        try:
            return self.spec.template.format(**dict(self.details))
        except (KeyError, IndexError, ValueError):
            return self.spec.template

    def with_location(self, **changes: Any) -> "Finding":
        fields = {k: v for k, v in asdict(self.location).items()}
        fields.update({k: v for k, v in changes.items() if v is not None})
        return Finding(self.code, Location(**fields), self.details)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "category": self.category.value,
            "severity": self.severity.value,
            "layer": self.layer,
            "message": self.message,
            "location": self.location.to_json(),
            "details": dict(self.details),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Finding":
        return cls(data["code"], Location.from_json(data["location"]),
                   tuple(sorted(data.get("details", {}).items())))


VERDICTS = {"intact": 0, "corrupt": 1, "incomplete": 3}


def verdict(findings: list[Finding], complete: bool = True) -> str:
    """corrupt beats incomplete beats intact; drift and info do not change the verdict."""
    categories = {f.category for f in findings}
    if Category.CORRUPTION in categories:
        return "corrupt"
    if not complete or categories & {Category.TRANSIENT, Category.UNVERIFIED}:
        return "incomplete"
    return "intact"


FINDINGS_LIMIT = 10_000


class Findings(list):
    """A list of findings that stops growing at a limit and counts what it drops, by code:
    a hostile archive can hold millions of defects, and memory must not follow it."""

    def __init__(self, limit: int = FINDINGS_LIMIT):
        super().__init__()
        self.limit = limit
        self.dropped: collections.Counter[str] = collections.Counter()

    def append(self, finding: Finding) -> None:
        if len(self) < self.limit:
            super().append(finding)
        else:
            self.dropped[finding.code] += 1

    def extend(self, findings) -> None:
        for finding in findings:
            self.append(finding)

    def closed(self, uri: str) -> list[Finding]:
        """The kept findings, plus one saying what was dropped."""
        if not self.dropped:
            return list(self)
        by_code = ", ".join(f"{n} {code}" for code, n in self.dropped.most_common())
        return list(self) + [Finding.of("FINDINGS_LIMITED", Location(uri), dropped=sum(self.dropped.values()),
                                        limit=self.limit, by_code=by_code)]
