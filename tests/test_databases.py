"""SQLite and InnoDB files inside archives, through the whole pipeline: found by name and
content, damage named by page, and files that only look like databases left alone."""
from __future__ import annotations

import gzip
import sqlite3
import subprocess
from pathlib import Path

from archcheck import api

ROOT = Path(__file__).resolve().parents[1]


def _tar(tmp_path: Path, files: dict[str, bytes], zstd: bool = False) -> Path:
    tree = tmp_path / "tree"
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    archive = tmp_path / "db.tar"
    subprocess.run(["tar", "-C", tree, "-cf", archive, *files], check=True)
    if zstd:
        subprocess.run(["zstd", "-q", "--rm", archive], check=True)
        archive = archive.with_suffix(".tar.zst")
    return archive


def _sqlite(tmp_path: Path) -> bytes:
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA page_size=1024")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
    con.execute("CREATE INDEX t_name ON t(name)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"name-{i}", bytes(300)) for i in range(400)])
    con.commit()
    con.close()
    return path.read_bytes()


def _db_findings(result) -> list[tuple]:
    return sorted((f.code, f.location.member, f.location.page) for f in result.findings if f.layer == "pages")


def test_clean_databases_and_lookalikes_give_no_findings(tmp_path):
    innodb = gzip.decompress((ROOT / "fixtures/innodb/full_crc32/orders.ibd.gz").read_bytes())
    archive = _tar(tmp_path, {"srv/app.db": _sqlite(tmp_path), "mysql/shop/orders.ibd": innodb,
                              "notes.db": b"a text file that is not SQLite\n" * 100}, zstd=True)
    result = api.verify(archive, state=tmp_path / "s", workers=1)
    assert result.verdict == "intact" and _db_findings(result) == []


def test_damaged_sqlite_and_innodb_pages_are_named(tmp_path):
    db = bytearray(_sqlite(tmp_path))
    db[1024 * 2] = 0x07  # page 3's type byte: not a b-tree page type
    innodb = bytearray(gzip.decompress((ROOT / "fixtures/innodb/full_crc32/orders.ibd.gz").read_bytes()))
    innodb[16384 * 3 + 5000] ^= 0x01  # a byte in page 3's body
    archive = _tar(tmp_path, {"srv/app.db": bytes(db), "mysql/shop/orders.ibd": bytes(innodb)})
    result = api.verify(archive, state=tmp_path / "s", workers=1)
    found = _db_findings(result)
    assert ("INNODB_PAGE_CHECKSUM", "mysql/shop/orders.ibd", 3) in found
    assert ("SQLITE_PAGE", "srv/app.db", 3) in found
    assert result.verdict == "corrupt"
    [innodb_finding] = [f for f in result.findings if f.code == "INNODB_PAGE_CHECKSUM"]
    assert innodb_finding.location.member_offset == 16384 * 3
