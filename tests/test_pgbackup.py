"""A pg_basebackup -Ft directory verified as one backup, against a real PostgreSQL 15 backup:
backup_manifest's files, sizes and checksums, and the WAL the backup needs; the problems found
are the ones pg_verifybackup finds on a plain copy of the same backup."""
from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from archcheck import api
from pg import chown_tree, grant_traverse, run_pg


def _codes(result) -> list[tuple[str, str]]:
    found = [f for _, v in result.verifications if v for f in v.findings] + result.findings
    return sorted((f.code, dict(f.details).get("path") or dict(f.details).get("segment") or "")
                  for f in found if f.layer == "pages" and f.code != "PG_DATA_DIRECTORY")


def _copy(pgfx, tmp_path: Path, name: str = "backup-tar") -> Path:
    dst = tmp_path / name
    shutil.copytree(pgfx[0] / name, dst)
    return dst


def _rewrite(tar: Path, drop: str | None = None, add: tuple[str, bytes] | None = None) -> None:
    """The same tar without one member, or with one more."""
    out = tar.with_suffix(".new")
    with tarfile.open(tar) as src, tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as dst:
        for member in src:
            if member.name != drop:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        if add:
            info = tarfile.TarInfo(add[0])
            info.size = len(add[1])
            import io
            dst.addfile(info, io.BytesIO(add[1]))
    out.replace(tar)


def test_a_clean_backup_directory_is_intact(pgfx, tmp_path):
    for name in ("backup-tar", "backup-zst", "backup-busy"):
        result = api.run_drill([pgfx[0] / name], state=tmp_path / name, workers=1)
        assert result.verdict == "intact", (name, _codes(result))
        assert len(result.drill.archives) == 2 and not result.findings


def test_a_changed_file_a_missing_file_an_extra_file_and_a_missing_wal_segment(pgfx, tmp_path):
    backup = _copy(pgfx, tmp_path)
    with tarfile.open(backup / "base.tar") as t:
        data = t.getmember("PG_VERSION").offset_data
    with open(backup / "base.tar", "r+b") as f:  # "15\n" -> "16\n": same size, other checksum
        f.seek(data + 1)
        f.write(b"6")
    _rewrite(backup / "base.tar", drop="postgresql.conf", add=("stray.txt", b"not in the manifest\n"))
    with tarfile.open(backup / "pg_wal.tar") as t:
        segments = sorted(m.name for m in t if re.fullmatch(r"[0-9A-F]{24}", m.name))
    _rewrite(backup / "pg_wal.tar", drop=segments[0])
    result = api.run_drill([backup], state=tmp_path / "s", workers=1)
    assert result.verdict == "corrupt"
    assert _codes(result) == sorted([
        ("PG_MANIFEST_FILE_CHECKSUM", "PG_VERSION"), ("PG_MANIFEST_FILE_MISSING", "postgresql.conf"),
        ("PG_MANIFEST_FILE_EXTRA", "stray.txt"), ("WAL_SEGMENT_MISSING", segments[0])])
    [changed] = [f for _, v in result.verifications for f in v.findings if f.code == "PG_MANIFEST_FILE_CHECKSUM"]
    assert changed.location.member == "PG_VERSION" and dict(changed.details)["algorithm"] == "CRC32C"


def test_an_edited_manifest_is_damaged(pgfx, tmp_path):
    backup = _copy(pgfx, tmp_path)
    text = (backup / "backup_manifest").read_text()
    (backup / "backup_manifest").write_text(re.sub(r'("Path": "PG_VERSION", "Size": )3', r"\g<1>4", text))
    result = api.run_drill([backup], state=tmp_path / "s", workers=1)
    assert ("PG_MANIFEST_DAMAGED", "") in _codes(result)
    assert ("PG_MANIFEST_FILE_SIZE", "PG_VERSION") in _codes(result)


def test_the_same_problems_as_pg_verifybackup_on_a_plain_copy(pgfx, tmp_path):
    backup = _copy(pgfx, tmp_path)
    with tarfile.open(backup / "base.tar") as t:
        member = next(m for m in t if m.name.startswith("base/") and m.size > 16384)
    with open(backup / "base.tar", "r+b") as f:
        f.seek(member.offset_data + 9000)
        byte = f.read(1)[0]
        f.seek(member.offset_data + 9000)
        f.write(bytes([byte ^ 1]))
    _rewrite(backup / "base.tar", drop="pg_hba.conf", add=("extra.conf", b"x = 1\n"))
    plain = tmp_path / "plain"
    (plain / "pg_wal").mkdir(parents=True)
    subprocess.run(["tar", "-C", plain, "-xf", backup / "base.tar"], check=True)
    subprocess.run(["tar", "-C", plain / "pg_wal", "-xf", backup / "pg_wal.tar"], check=True)
    shutil.copyfile(backup / "backup_manifest", plain / "backup_manifest")
    chown_tree(plain)
    grant_traverse(plain)
    check = run_pg("pg_verifybackup", str(plain), check=False)
    assert check.returncode == 1
    kinds = {"checksum mismatch for file": "PG_MANIFEST_FILE_CHECKSUM",
             "is present on disk but not in the manifest": "PG_MANIFEST_FILE_EXTRA",
             "is present in the manifest but not on disk": "PG_MANIFEST_FILE_MISSING"}
    theirs = set()
    for line in check.stderr.splitlines():
        for text, code in kinds.items():
            if text in line:
                theirs.add((code, re.search(r'"([^"]+)"', line)[1]))
    ours = {c for c in _codes(api.run_drill([backup], state=tmp_path / "s", workers=1)) if c[0] in kinds.values()}
    assert ours == theirs and len(theirs) == 3


def test_a_damaged_wal_record_in_pg_wal_tar(pgfx, tmp_path):
    out, facts = pgfx
    backup = _copy(pgfx, tmp_path)
    start = facts["backup_tar"]["start_lsn_int"]
    segment = facts["backup_tar"]["start_wal_file"]
    with tarfile.open(backup / "pg_wal.tar") as t:
        data = t.getmember(segment).offset_data
    at = start % (16 * 1024 * 1024)
    with open(backup / "pg_wal.tar", "r+b") as f:  # a byte of the backup's first record's data
        f.seek(data + at + 30)
        byte = f.read(1)[0]
        f.seek(data + at + 30)
        f.write(bytes([byte ^ 0x40]))
    result = api.run_drill([backup], state=tmp_path / "s", workers=1)
    [finding] = [f for _, v in result.verifications for f in v.findings if f.code.startswith("WAL_")]
    assert finding.code == "WAL_RECORD_CRC" and result.verdict == "corrupt"
    assert (finding.location.member, finding.location.wal_segment) == (segment, segment)
    assert finding.location.lsn == facts["backup_tar"]["start_lsn"]


def test_pages_in_a_tablespace_tar_are_judged_with_base_tars_facts(pgfx, tmp_path):
    out, facts = pgfx
    backup = _copy(pgfx, tmp_path)
    with tarfile.open(backup / "base.tar") as t:
        page = bytearray(t.extractfile(facts["relations"]["pgbench_accounts"]).read(8192 * 2))
    page[8192 + 18] ^= 0xFF  # block 1's pd_pagesize_version
    tree = tmp_path / "tblspc" / "PG_15_202209061" / "5"
    tree.mkdir(parents=True)
    (tree / "16500").write_bytes(bytes(page))
    subprocess.run(["tar", "-C", tmp_path / "tblspc", "-cf", backup / "16385.tar", "PG_15_202209061"], check=True)
    result = api.run_drill([backup], state=tmp_path / "s", workers=1)
    assert [a.path.rsplit("/", 1)[1] for a in result.drill.archives] == ["base.tar", "16385.tar", "pg_wal.tar"]
    [header] = [f for _, v in result.verifications for f in v.findings if f.code == "PG_PAGE_HEADER"]
    assert (header.location.relation, header.location.block) == ("pg_tblspc/16385/PG_15_202209061/5/16500", 1)
    assert ("PG_MANIFEST_FILE_EXTRA", "pg_tblspc/16385/PG_15_202209061/5/16500") in _codes(result)
