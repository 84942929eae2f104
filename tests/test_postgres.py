"""PostgreSQL pages inside archives, against backups of a real PostgreSQL 15 cluster (tests/pg.py):
damage at known pages is named exactly, clean backups (cold, hot, busy, without checksums) give
no false alarm, and the blocks found equal those pg_checksums finds."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from archcheck import api
from archcheck.layers import stream
from archcheck.layers.stream import StreamCheck
from archcheck.scanners import ScanConfig
from archcheck.sources import open_source
from pg import copy_datadir, run_pg

BLCKSZ = 8192


def _verify(path: Path, state: Path):
    return api.verify(path, state=state, workers=1)


def _pg(result) -> list:
    return [f for f in result.findings if f.layer == "pages" and f.code != "PG_DATA_DIRECTORY"]


def _member_data_offset(tar: Path, name: str) -> int:
    with tarfile.open(tar) as t:
        return t.getmember(name).offset_data


def _flip(path: Path, at: int, mask: int = 0x20) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ mask]))


def _damaged_copy(src: Path, tmp_path: Path, name: str, pages: list[tuple[int, int]]) -> tuple[Path, int]:
    """A copy of ``src`` with a bit flipped at (block, byte in page) of member ``name``."""
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    data = _member_data_offset(dst, name)
    for block, at in pages:
        _flip(dst, data + block * BLCKSZ + at)
    return dst, data


@pytest.mark.parametrize("backup", ["backup-tar/base.tar", "backup-zst/base.tar.zst", "cold-datadir.tar",
                                    "backup-busy/base.tar", "nochecksums.tar"])
def test_clean_backups_give_no_false_alarm(pgfx, tmp_path, backup):
    out, facts = pgfx
    result = _verify(out / backup, tmp_path)
    assert result.verdict == "intact" and not _pg(result)
    [summary] = [f for f in result.findings if f.code == "PG_DATA_DIRECTORY"]
    details = dict(summary.details)
    assert details["datadir"] == "the archive root" and details["files"] > 700 and details["pages"] > 4000
    assert details["checksums"] == ("off in pg_control" if backup == "nochecksums.tar" else "compared")
    assert details["backup"] == ("cold" if backup.endswith("datadir.tar") or backup == "nochecksums.tar" else "hot")


@pytest.mark.parametrize("table,fork,block", [("pgbench_accounts", "main", 7), ("pgbench_accounts_pkey", "main", 3),
                                              ("pgbench_accounts", "fsm", 1), ("pgbench_accounts", "vm", 0)])
def test_a_flipped_bit_is_named_by_relation_fork_block_and_archive_offset(pgfx, tmp_path, table, fork, block):
    out, facts = pgfx
    relation = facts["relations"][table]
    member = relation + ("" if fork == "main" else f"_{fork}")
    archive, data = _damaged_copy(out / "cold-datadir.tar", tmp_path, "./" + member, [(block, 5000)])
    result = _verify(archive, tmp_path / "s")
    assert result.verdict == "corrupt"
    [finding] = _pg(result)
    loc = finding.location
    assert finding.code == "PG_PAGE_CHECKSUM"
    assert (loc.relation, loc.fork, loc.block) == (relation, fork, block)
    assert (loc.member, loc.member_offset) == ("./" + member, block * BLCKSZ)
    assert loc.byte_range == (data + block * BLCKSZ, data + (block + 1) * BLCKSZ)


def _first_normal_item(content: bytes, from_block: int) -> tuple[int, int]:
    """(block, item number) of the first line pointer with storage (LP_NORMAL) at or after a
    block: pgbench's updates and pruning leave some items unused, dead or redirected."""
    for block in range(from_block, len(content) // BLCKSZ):
        page = content[block * BLCKSZ:(block + 1) * BLCKSZ]
        lines = (int.from_bytes(page[12:14], "little") - 24) // 4
        for item in range(lines):
            word = int.from_bytes(page[24 + 4 * item:28 + 4 * item], "little")
            if (word >> 15) & 3 == 1 and word >> 17:
                return block, item + 1
    raise AssertionError("no normal item")


def test_a_broken_page_header_and_line_pointer(pgfx, tmp_path):
    out, facts = pgfx
    relation = facts["relations"]["pgbench_accounts"]
    with tarfile.open(out / "cold-datadir.tar") as t:
        block, item = _first_normal_item(t.extractfile("./" + relation).read(), 4)
    # byte 13 is pd_lower's high byte: lower > upper; the item's second byte holds offset bits 8-14
    archive, _ = _damaged_copy(out / "cold-datadir.tar", tmp_path, "./" + relation,
                               [(2, 13), (block, 24 + 4 * (item - 1) + 1)])
    found = {(f.code, f.location.block): dict(f.details) for f in _pg(_verify(archive, tmp_path / "s"))}
    assert found[("PG_PAGE_HEADER", 2)]["problem"] == "pd_lower <= pd_upper <= pd_special <= 8192 does not hold"
    assert found[("PG_LINE_POINTER", block)] == {
        **found[("PG_LINE_POINTER", block)], "item": item, "problem": "its storage lies outside pd_upper..pd_special"}
    assert ("PG_PAGE_CHECKSUM", block) in found  # the checksum fails too; the header one stops it on block 2
    assert ("PG_PAGE_CHECKSUM", 2) not in found


def test_damaged_pg_control(pgfx, tmp_path):
    out, _ = pgfx
    archive, data = _damaged_copy(out / "cold-datadir.tar", tmp_path, "./global/pg_control", [(0, 100)])
    [finding] = _pg(_verify(archive, tmp_path / "s"))
    assert finding.code == "PG_CONTROL_DAMAGED" and finding.location.relation == "global/pg_control"
    assert dict(finding.details)["problem"].startswith("CRC-32C is ")


def test_checksums_off_means_no_checksum_findings(pgfx, tmp_path):
    out, facts = pgfx
    relation = facts["nochecksums"]["relations"]["pgbench_accounts"]
    archive, _ = _damaged_copy(out / "nochecksums.tar", tmp_path, "./" + relation, [(3, 6000)])
    result = _verify(archive, tmp_path / "s")
    assert result.verdict == "intact" and not _pg(result)


def test_a_page_that_merely_looks_like_one_outside_a_data_directory(pgfx, tmp_path):
    out, facts = pgfx
    relation = facts["relations"]["pgbench_accounts"]
    tree = tmp_path / "tree"
    (tree / Path(relation).parent).mkdir(parents=True)
    with tarfile.open(out / "cold-datadir.tar") as t:
        (tree / relation).write_bytes(t.extractfile("./" + relation).read())
    _flip(tree / relation, 3 * BLCKSZ + 5000)
    archive = tmp_path / "loose.tar"
    subprocess.run(["tar", "-C", tree, "-cf", archive, relation], check=True)
    result = _verify(archive, tmp_path / "s")
    assert result.verdict == "intact" and not [f for f in result.findings if f.layer == "pages"]


def test_a_page_written_during_a_hot_backup_is_torn_not_corrupt(pgfx, tmp_path):
    """pg_basebackup's rule (formats.md 3.10): a page whose LSN is at or after the backup's start is
    rewritten by WAL replay, so its checksum proves nothing. Block 5 is made such a page (a new LSN,
    its old checksum: what a copy torn mid-write looks like); block 9 keeps its old LSN."""
    out, facts = pgfx
    base = out / "backup-tar" / "base.tar"
    start = facts["backup_tar"]["start_lsn_int"]
    relation = facts["relations"]["pgbench_accounts"]
    archive, data = _damaged_copy(base, tmp_path, relation, [(9, 6000)])
    with open(archive, "r+b") as f:
        f.seek(data + 5 * BLCKSZ)
        f.write((start >> 32).to_bytes(4, "little") + ((start & 0xFFFFFFFF) + 0x100).to_bytes(4, "little"))
    result = _verify(archive, tmp_path / "s")
    found = {f.location.block: f for f in _pg(result)}
    assert found[5].code == "PG_PAGE_TORN" and dict(found[5].details)["was"] == "PG_PAGE_CHECKSUM"
    assert found[9].code == "PG_PAGE_CHECKSUM" and result.verdict == "corrupt"


def test_a_hot_copy_of_a_page_being_added_is_torn_but_a_garbage_header_is_not(pgfx, tmp_path):
    out, facts = pgfx
    relation = facts["relations"]["pgbench_accounts"]
    archive, data = _damaged_copy(out / "backup-tar" / "base.tar", tmp_path, relation, [])
    with open(archive, "r+b") as f:
        f.seek(data + 20 * BLCKSZ)
        f.write(bytes(4096))  # the first half of the page not yet written: pd_upper is 0
        f.seek(data + 10 * BLCKSZ)
        f.write(bytes(range(256)) * 32)  # garbage: a torn write cannot break the 24-byte header
    found = {f.location.block: f for f in _pg(_verify(archive, tmp_path / "s"))}
    assert found[20].code == "PG_PAGE_TORN" and dict(found[20].details)["was"] == "PG_PAGE_HEADER"
    assert found[10].code == "PG_PAGE_HEADER"


def test_the_same_blocks_as_pg_checksums(pgfx, tmp_path):
    out, facts = pgfx
    datadir = copy_datadir(out / "cold-datadir.tar", tmp_path / "copy")
    rels = facts["relations"]
    damage = [(rels["pgbench_accounts"], 0, 100), (rels["pgbench_accounts"], 40, 4000),
              (rels["pgbench_accounts_pkey"], 10, 7000), (rels["pgbench_branches"], 0, 8000),
              (rels["pgbench_accounts"] + "_fsm", 2, 300)]
    for rel, block, at in damage:
        _flip(datadir / rel, block * BLCKSZ + at)
    check = run_pg("pg_checksums", "--check", "-D", str(datadir), check=False)
    assert check.returncode == 1
    failed = re.finditer(r'checksum verification failed in file "([^"]+)", block (\d+)', check.stderr)
    theirs = {(str(Path(m[1]).relative_to(datadir)), int(m[2])) for m in failed}
    assert len(theirs) == len(damage)
    archive = tmp_path / "copy.tar"
    subprocess.run(["tar", "-C", datadir, "-cf", archive, "."], check=True)
    result = _verify(archive, tmp_path / "s")
    ours = {(f.location.relation + ("" if f.location.fork == "main" else f"_{f.location.fork}"), f.location.block)
            for f in _pg(result) if f.code == "PG_PAGE_CHECKSUM"}
    assert ours == theirs


def test_resuming_a_page_scan_from_any_checkpoint_gives_the_same_findings(pgfx, tmp_path, monkeypatch):
    # no checkpoint is taken in a piece with findings, which would be found again: small pieces
    monkeypatch.setattr(stream, "RAW_PIECE", 1 << 20)
    out, facts = pgfx
    relation = facts["relations"]["pgbench_accounts"]
    archive, _ = _damaged_copy(out / "backup-tar" / "base.tar", tmp_path, relation, [(5, 5000), (900, 100)])

    def run(resume=None, checkpoints=None, members=None):
        reader = open_source(archive).ref().open()
        sink = members if members is not None else []
        check = StreamCheck(reader, str(archive), codec="tar", check_tar=True,
                            on_members=lambda line, count: sink.extend(json.loads(line)),
                            resume_from=resume, checkpoint_every=0, checkpoint_from=0, scan=ScanConfig(),
                            on_checkpoint=(lambda cp: checkpoints.append((json.loads(json.dumps(cp)), len(sink))))
                            if checkpoints is not None else None)
        try:
            return check.run(), sink
        finally:
            reader.close()
    checkpoints = []
    whole, members = run(checkpoints=checkpoints)
    assert [f.code for f in whole.findings if f.code.startswith("PG_PAGE")] == ["PG_PAGE_CHECKSUM"] * 2
    assert len(checkpoints) > 3
    for checkpoint, written in checkpoints:
        again, rest = run(resume=checkpoint, members=list(members[:written]))
        assert sorted(map(repr, again.findings)) == sorted(map(repr, whole.findings)) and rest == members


def test_a_damaged_btree_metapage(pgfx, tmp_path):
    out, facts = pgfx
    index = facts["relations"]["pgbench_accounts_pkey"]
    archive, _ = _damaged_copy(out / "cold-datadir.tar", tmp_path, "./" + index, [(0, 25)])  # btm_magic
    found = {f.code: f for f in _pg(_verify(archive, tmp_path / "s"))}
    assert set(found) == {"PG_PAGE_CHECKSUM", "PG_BTREE_PAGE"}
    assert dict(found["PG_BTREE_PAGE"].details)["problem"] == "the metapage's magic or version is wrong"
    assert (found["PG_BTREE_PAGE"].location.relation, found["PG_BTREE_PAGE"].location.block) == (index, 0)


def test_without_checksums_line_pointers_are_still_checked(pgfx, tmp_path):
    out, facts = pgfx
    relation = facts["nochecksums"]["relations"]["pgbench_accounts"]
    with tarfile.open(out / "nochecksums.tar") as t:
        block, item = _first_normal_item(t.extractfile("./" + relation).read(), 4)
    archive, _ = _damaged_copy(out / "nochecksums.tar", tmp_path, "./" + relation, [(block, 24 + 4 * (item - 1) + 1)])
    [finding] = _pg(_verify(archive, tmp_path / "s"))
    assert (finding.code, finding.location.block, dict(finding.details)["item"]) == ("PG_LINE_POINTER", block, item)


def test_all_zero_pages_are_new_pages_not_damage(pgfx, tmp_path):
    """Relations grow by zero pages, and a crash can leave them behind (formats.md 3.3)."""
    out, facts = pgfx
    relation = facts["relations"]["pgbench_branches"]
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["tar", "-C", tree, "-xf", out / "cold-datadir.tar"], check=True)
    with open(tree / relation, "ab") as f:
        f.write(bytes(3 * BLCKSZ))
    archive = tmp_path / "zeros.tar"
    subprocess.run(["tar", "-C", tree, "-cf", archive, "."], check=True)
    result = _verify(archive, tmp_path / "s")
    assert result.verdict == "intact" and not _pg(result)


def test_without_checksums_many_pages_do_not_crowd_out_real_damage(pgfx, tmp_path):
    """Until pg_control is read, every page of a cluster without checksums looks like a checksum
    mismatch; those wait apart and must not fill the findings cap before real damage comes."""
    out, facts = pgfx
    relation = facts["nochecksums"]["relations"]["pgbench_accounts"]
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["tar", "-C", tree, "-xf", out / "nochecksums.tar"], check=True)
    content = (tree / relation).read_bytes()
    base = Path(relation).parent
    for n in range(7):  # 7 x 1640 pages: past the 10,000-finding cap
        (tree / base / f"{990001 + n}").write_bytes(content)
    broken = bytearray(content)
    broken[3 * BLCKSZ + 18] ^= 0xFF  # pd_pagesize_version
    (tree / base / "990100").write_bytes(bytes(broken))
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    names.remove("global/pg_control")  # pg_control last, as pg_basebackup sends it
    archive = tmp_path / "many.tar"
    subprocess.run(["tar", "-C", tree, "-cf", archive, *names, "global/pg_control"], check=True)
    result = _verify(archive, tmp_path / "s")
    assert [(f.code, f.location.relation, f.location.block) for f in _pg(result)] == [
        ("PG_PAGE_HEADER", f"{base}/990100", 3)]
    assert not [f for f in result.findings if f.code == "FINDINGS_LIMITED"]
