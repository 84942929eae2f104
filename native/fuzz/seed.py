#!/usr/bin/env python3
"""Fill native/fuzz/corpus/<target>/ with seeds made from the repository's fixtures.

    python3 native/fuzz/seed.py            # every target's seeds (existing files are rewritten)
    python3 native/fuzz/seed.py zstd wal   # only these targets

Needs only the standard library and the `zstd` command. Every seed is the 8 control bytes the
targets read first (see src/lib.rs), then the data: a tar, a zstd file, pages, a WAL segment...
The control bytes are fixed per seed (a hash of its name, with the target's own choices where
a target needs one), so the same fixtures make the same corpus. No seed is over 1 MiB.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURES = REPO / "fixtures"
ORACLE = FIXTURES / "oracle" / "corpus"
CORPUS = HERE / "corpus"
TARGETS = ["tar_walk", "zstd", "stream", "age", "pg_pages", "innodb", "wal", "sqlite_wal", "sqlite_collect"]
AGE_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"  # of src/lib.rs's AGE_IDENTITY
CONTROL = 8
MAX_SEED = 1 << 20
PAGE = 8192


def control(target: str, name: str, first: int | None = None) -> bytes:
    c = bytearray(hashlib.sha256(f"{target}/{name}".encode()).digest()[:CONTROL])
    if first is not None:
        c[0] = first
    return bytes(c)


def write(target: str, name: str, data: bytes, first: int | None = None) -> None:
    data = data[:MAX_SEED - CONTROL]
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    (out / f"seed-{name}").write_bytes(control(target, name, first) + data)


def unzstd(path: Path) -> bytes:
    return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout


def zstd(data: bytes, *flags: str) -> bytes | None:
    """`zstd -c` of data, or None when this zstd has not got a flag."""
    done = subprocess.run(["zstd", "-q", "-c", *flags], input=data, capture_output=True)
    return done.stdout if done.returncode == 0 else None


def sample_tar() -> bytes:
    return unzstd(FIXTURES / "sample.tar.zst")


def sample_relations() -> dict[str, bytes]:
    """The relation-like files under ./data/base/ of the sample archive."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(sample_tar())) as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith("./data/base/"):
                out[m.name.rsplit("/", 1)[1]] = tar.extractfile(m).read()
    return out


# --- synthetic database files ------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


WAL_MAGIC = 0xD110  # PostgreSQL 15
XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER = 0x1, 0x2
SEG_SIZE = 16 << 20
SYSID = 7_300_000_000_000_000_001


def pg_wal(segno: int = 1, payloads: tuple[int, ...] = (26, 100, 300, 8000, 50, 60), switch: bool = False,
           pages: int = 2) -> bytes:
    """A WAL segment's first pages (timeline 1): a long page header, records with good CRCs (one
    runs on to the second page, which says so), then zeros (the end of WAL)."""
    seg_start = segno * SEG_SIZE
    out = bytearray(pages * PAGE)
    out[0:40] = struct.pack("<HHIQI4xQII", WAL_MAGIC, XLP_LONG_HEADER, 1, seg_start, 0, SYSID, SEG_SIZE, PAGE)
    rng = random.Random(segno)
    pos, prev = 40, max(0, seg_start - 0x28)
    records = [(rng.randbytes(n), 10, 0x00) for n in payloads]  # rmid 10: RM_HEAP_ID
    if switch:
        records.append((b"", 0, 0x40))  # RM_XLOG_ID, XLOG_SWITCH
    for payload, rmid, info in records:
        pos = (pos + 7) & ~7
        if pos % PAGE > PAGE - 24 or pos + 24 + len(payload) + 24 > len(out):
            break  # keep record headers whole on a page, and the records inside the pages made
        if pos % PAGE == 0:  # a record starts the page: a plain page header before it
            out[pos:pos + 24] = struct.pack("<HHIQI4x", WAL_MAGIC, 0, 1, seg_start + pos, 0)
            pos += 24
        tot = 24 + len(payload)
        head = struct.pack("<IIQBB2x", tot, 1000, prev, info, rmid)
        crc = crc32c(head[:20], crc32c(payload))
        record = head + struct.pack("<I", crc) + payload
        prev = seg_start + pos
        i = 0
        while i < len(record):
            if pos % PAGE == 0:
                rem = len(record) - i
                out[pos:pos + 24] = struct.pack("<HHIQI4x", WAL_MAGIC, XLP_FIRST_IS_CONTRECORD, 1, seg_start + pos, rem)
                pos += 24
            take = min(len(record) - i, PAGE - pos % PAGE)
            out[pos:pos + take] = record[i:i + take]
            pos += take
            i += take
    return bytes(out)  # the pages after the last record are zero: the end of WAL


def sqlite_wal_checksum(data: bytes, big: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    fmt = ">II" if big else "<II"
    for i in range(0, len(data), 8):
        a, b = struct.unpack(fmt, data[i:i + 8])
        s0 = (s0 + a + s1) & 0xFFFFFFFF
        s1 = (s1 + b + s0) & 0xFFFFFFFF
    return s0, s1


def sqlite_wal(page_size: int = 1024, frames: int = 3, big: bool = False) -> bytes:
    """A SQLite WAL: a header with its checksum, then frames chained by their checksums; the last
    one commits."""
    magic = 0x377F0683 if big else 0x377F0682
    salts = (0x1234_5678, 0x9ABC_DEF0)
    head = struct.pack(">IIIIII", magic, 3007000, page_size, 0, *salts)
    sums = sqlite_wal_checksum(head, big)
    out = bytearray(head + struct.pack(">II", *sums))
    rng = random.Random(page_size + frames)
    for n in range(frames):
        page = rng.randbytes(page_size)
        commit = frames if n == frames - 1 else 0
        first = struct.pack(">II", n + 1, commit)
        sums = sqlite_wal_checksum(first, big, *sums)
        sums = sqlite_wal_checksum(page, big, *sums)
        out += first + struct.pack(">II", *salts) + struct.pack(">II", *sums) + page
    return bytes(out)


def real_sqlite() -> tuple[bytes, bytes]:
    """A small SQLite database and its -wal, made by the sqlite3 module (the WAL copied while the
    connection is open, before any checkpoint)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.db"
        db = sqlite3.connect(path)
        db.execute("PRAGMA page_size=1024")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        db.execute("CREATE INDEX t_name ON t (name)")
        rng = random.Random(7)
        for i in range(40):
            db.execute("INSERT INTO t VALUES (?, ?, ?)", (i, f"name-{i}", rng.randbytes(rng.randint(0, 300))))
            db.commit()
        wal = Path(str(path) + "-wal").read_bytes()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        main = path.read_bytes()
        db.close()
    return main, wal


def innodb_files() -> dict[str, bytes]:
    out = {}
    for path in sorted((FIXTURES / "innodb").glob("*/*.gz")):
        with gzip.open(path) as f:
            out[f"{path.parent.name}-{path.name[:-3]}"] = f.read(6 * 16384)
    return out


# --- the targets' seeds ------------------------------------------------------------------------

def seed_tar_walk() -> None:
    for path in sorted(ORACLE.glob("*.tar")):
        write("tar_walk", path.name, path.read_bytes())
    for path in sorted(ORACLE.glob("*.tar.zst")):
        write("tar_walk", path.name[:-4], unzstd(path))  # pzstd's is cut at 1 MiB: a truncated tar
    write("tar_walk", "sample.tar", sample_tar())
    # the database scanners' members, behind the router
    pages = sample_relations()
    db, wal = real_sqlite()
    innodb = innodb_files()
    members = [
        ("data/PG_VERSION", b"15\n"),
        ("data/backup_label", b"START WAL LOCATION: 0/1000028 (file 000000010000000000000001)\nCHECKPOINT LOCATION: 0/1000060\n"),
        ("data/base/1/16384", pages["16384"]),
        ("data/base/1/16385_fsm", pages["16389"]),
        ("data/global/1262", pages["16389"]),
        ("data/pg_wal/000000010000000000000001", pg_wal()),
        ("mysql/db/orders.ibd", innodb["crc32-orders.ibd"][:4 * 16384]),
        ("app/app.db", db),
        ("app/app.db-wal", wal),
    ]
    for fmt, name in ((tarfile.GNU_FORMAT, "databases-gnu.tar"), (tarfile.PAX_FORMAT, "databases-pax.tar")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode = len(data), 1767225600, 0o600
                tar.addfile(info, io.BytesIO(data))
        write("tar_walk", name, buf.getvalue(), first=0)  # xxh3, checksums as they are, no loss


def seed_zstd() -> None:
    for path in sorted(ORACLE.glob("*.zst")):
        write("zstd", path.name, path.read_bytes())
    write("zstd", "sample.tar.zst", (FIXTURES / "sample.tar.zst").read_bytes())
    rng = random.Random(3)
    text = b"".join(b"backup restore page segment frame %d\n" % i for i in range(6000)) + rng.randbytes(20000)
    variants = {  # from a file, the frame header holds the content size; from stdin, not
        "level1.zst": ("-1", "FILE"),
        "level19-nocheck.zst": ("-19", "--no-check", "FILE"),
        "small-blocks.zst": ("--target-compressed-block-size=1340", "FILE"),
        "stdin-no-size.zst": (),
    }
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "text"
        source.write_bytes(text)
        for name, flags in variants.items():
            flags = tuple(str(source) if f == "FILE" else f for f in flags)
            data = zstd(b"" if str(source) in flags else text, *flags)
            if data:
                write("zstd", name, data)
                frames.append(data)
    empty = zstd(b"")
    small = zstd(b"x" * 1000, "-1")
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"note"
    if empty and small and frames:
        write("zstd", "skippable-empty-cut-frames.zst", skippable + empty + frames[0][:4000] + empty)
        # pzstd's size note before a frame, then the frame
        note = struct.pack("<III", 0x184D2A50, 4, len(frames[0]))
        write("zstd", "size-note.zst", note + frames[0] + small)


def seed_stream() -> None:
    """gzip and pigz output of the sample tar, two members back to back, with a header CRC, trailing
    bytes, and cut short; xz, lz4 and bzip2 output of it, whole, two back to back and cut short."""
    tar = sample_tar()
    made = {name: subprocess.run(cmd, input=tar, capture_output=True, check=True).stdout
            for name, cmd in [("gzip-9", ["gzip", "-9", "-c"]), ("gzip-n", ["gzip", "-n", "-1", "-c"])]}
    if shutil.which("pigz"):
        made["pigz"] = subprocess.run(["pigz", "-c"], input=tar, capture_output=True, check=True).stdout
    plain = made["gzip-n"]
    header = bytearray(plain[:10])
    header[3] |= 0x02
    made["fhcrc"] = bytes(header) + (zlib.crc32(bytes(header)) & 0xFFFF).to_bytes(2, "little") + plain[10:]
    made["two-members"] = plain + made["gzip-9"]
    made["trailing"] = plain + b"\0\0junk"
    made["cut"] = plain[:len(plain) // 2]
    for tool, flags in [("xz", ["-c"]), ("xz", ["-T2", "--block-size=64KiB", "-c"]), ("lz4", ["-c"]),
                        ("lz4", ["-BD", "-BX", "-B4", "-c"]), ("bzip2", ["-1", "-c"])]:
        if shutil.which(tool):
            packed = subprocess.run([tool, *flags], input=tar, capture_output=True, check=True).stdout
            name = tool + "".join(flags[:-1])
            made[name] = packed
            made[name + "-two"] = packed + packed
            made[name + "-cut"] = packed[:len(packed) * 2 // 3]
    for name, data in made.items():
        write("stream", name, data)


def seed_age() -> None:
    """The sample tar and its zstd, encrypted to the fuzz identity by the real age: whole, cut at
    and inside a chunk, with a chunk's bit flipped, and with bytes appended."""
    if not shutil.which("age"):
        return
    tar = sample_tar()
    for name, plain in (("tar", tar[:200_000]), ("zst", zstd(tar) or b""), ("empty", b""), ("one", b"x")):
        sealed = subprocess.run(["age", "-r", AGE_RECIPIENT], input=plain, capture_output=True, check=True).stdout
        start = sealed.index(b"\n", sealed.index(b"\n--- ") + 1) + 1 + 16
        write("age", name, sealed)
        write("age", name + "-appended", sealed + b"garbage")
        if len(sealed) > start + 65552 + 100:
            write("age", name + "-at-chunk", sealed[:start + 65552])
            write("age", name + "-in-chunk", sealed[:start + 65552 + 100])
            flipped = bytearray(sealed)
            flipped[start + 70] ^= 1
            write("age", name + "-flipped", bytes(flipped))


def seed_pg_pages() -> None:
    pages = sample_relations()
    for k, (name, data) in enumerate(sorted(pages.items())):
        name_index = k % 8  # the relation names of the target's NAMES
        write("pg_pages", f"{name}-page0", data[:PAGE], first=name_index)
        write("pg_pages", f"{name}-pages", data[:4 * PAGE], first=name_index | 0x20)  # checksums on
    write("pg_pages", "zero-page", bytes(PAGE), first=0)
    write("pg_pages", "pg-version", b"16\n", first=12)
    write("pg_pages", "backup-label", b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n", first=11)


def seed_innodb() -> None:
    for name, data in innodb_files().items():
        write("innodb", name, data[:4 * 16384], first=0)
    ibdata = innodb_files().get("crc32-ibdata1")
    if ibdata:
        write("innodb", "crc32-ibdata1-6pages", ibdata[:6 * 16384], first=0)  # the doublewrite page


def seed_wal() -> None:
    write("wal", "two-pages", pg_wal(), first=0)
    write("wal", "switch", pg_wal(payloads=(40, 80), switch=True), first=0x20)  # keep LSNs
    write("wal", "segment-0", pg_wal(segno=0, pages=1), first=1)
    write("wal", "four-pages", pg_wal(payloads=(26, 9000, 300, 7000, 50, 60, 16000, 10), pages=5), first=0x20)


def seed_sqlite() -> None:
    db, wal = real_sqlite()
    write("sqlite_wal", "synthetic-le", sqlite_wal(), first=0)
    write("sqlite_wal", "synthetic-be-512", sqlite_wal(512, 4, big=True), first=0)
    write("sqlite_wal", "real", wal, first=0)
    write("sqlite_collect", "real", db, first=0)
    write("sqlite_collect", "real-head", db[:4096], first=1)


SEEDERS = {
    "tar_walk": seed_tar_walk,
    "zstd": seed_zstd,
    "stream": seed_stream,
    "age": seed_age,
    "pg_pages": seed_pg_pages,
    "innodb": seed_innodb,
    "wal": seed_wal,
    "sqlite_wal": seed_sqlite,
    "sqlite_collect": seed_sqlite,
}


def main(argv: list[str]) -> int:
    targets = argv or TARGETS
    unknown = [t for t in targets if t not in SEEDERS]
    if unknown:
        print(f"seed.py: unknown targets {unknown}; known: {TARGETS}", file=sys.stderr)
        return 2
    done = set()
    for target in targets:
        seeder = SEEDERS[target]
        if seeder not in done:
            seeder()
            done.add(seeder)
    for target in targets:
        files = list((CORPUS / target).glob("seed-*"))
        print(f"{target}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
