"""The real-PostgreSQL fixture helper (tests/pg.py) builds what it promises."""
from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest

from pg import Cluster, copy_datadir, parse_lsn, pg_bin, pg_unavailable_reason, run_pg

_REASON = pg_unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def test_pg_bin_finds_tools():
    for name in ("initdb", "pg_ctl", "pg_basebackup", "pg_checksums", "pg_verifybackup"):
        path = pg_bin(name)
        assert path and Path(path).is_file()
    assert pg_bin("no-such-postgres-tool") is None


def test_backups_exist(pgfx):
    out, facts = pgfx
    for name in ("base.tar", "pg_wal.tar", "backup_manifest"):
        assert (out / "backup-tar" / name).stat().st_size > 0
        assert (out / "backup-busy" / name).stat().st_size > 0
    for name in ("base.tar.zst", "pg_wal.tar.zst", "backup_manifest"):
        assert (out / "backup-zst" / name).stat().st_size > 0
    assert (out / "backup-zst" / "base.tar.zst").read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert (out / "backup-plain" / "backup_manifest").is_file()
    assert (out / "backup-plain" / "PG_VERSION").is_file()
    assert (out / "cold-datadir.tar").stat().st_size > 0
    assert (out / "nochecksums.tar").stat().st_size > 0
    assert json.loads((out / "pg-index.json").read_text()) == facts
    # the same backup manifest format in every backup
    manifest = json.loads((out / "backup-tar" / "backup_manifest").read_text())
    assert manifest["PostgreSQL-Backup-Manifest-Version"] == 1
    assert {f["Checksum-Algorithm"] for f in manifest["Files"]} == {"CRC32C"}


def test_pg_verifybackup_passes_on_plain_backup(pgfx):
    out, _ = pgfx
    cp = run_pg("pg_verifybackup", out / "backup-plain", check=False)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "successfully verified" in cp.stdout


def test_pg_checksums_passes_on_copy_of_stopped_datadir(pgfx, tmp_path):
    out, facts = pgfx
    copy = copy_datadir(out / "cold-datadir.tar", tmp_path / "cold")
    cp = run_pg("pg_checksums", "--check", "-D", copy, check=False)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert re.search(r"Bad checksums:\s+0", cp.stdout)
    # and pg_checksums notices a flipped byte in pgbench_accounts block 1
    rel = copy / facts["relations"]["pgbench_accounts"]
    with open(rel, "r+b") as f:
        f.seek(8192 + 4000)
        b = f.read(1)
        f.seek(8192 + 4000)
        f.write(bytes([b[0] ^ 0xFF]))
    cp = run_pg("pg_checksums", "--check", "-D", copy, check=False)
    assert cp.returncode != 0
    assert "checksum verification failed" in cp.stderr and "block 1" in cp.stderr


def test_nochecksums_cluster_has_checksums_off(pgfx, tmp_path):
    out, facts = pgfx
    assert facts["nochecksums"]["data_checksums"] == "off"
    copy = copy_datadir(out / "nochecksums.tar", tmp_path / "nock")
    ctl = run_pg("pg_controldata", "-D", copy).stdout
    assert re.search(r"Data page checksum version:\s+0", ctl)
    assert (copy / facts["nochecksums"]["relations"]["pgbench_accounts"]).stat().st_size > 0


def test_facts_are_sane(pgfx):
    out, facts = pgfx
    assert facts["data_checksums"] == "on"
    assert facts["cold_state"] == "shut down"
    assert facts["block_size"] == 8192
    rels = facts["relations"]
    assert re.fullmatch(rf"base/{facts['db_oid']}/\d+", rels["pgbench_accounts"])
    assert len({rels[k] for k in ("pgbench_accounts", "pgbench_accounts_pkey",
                                  "pgbench_accounts_abalance_idx", "pgbench_branches")}) == 4
    assert facts["blocks"]["pgbench_accounts"] > 0
    assert facts["blocks"]["pgbench_branches"] >= 1
    assert facts["cold_blocks"]["pgbench_accounts"] >= facts["blocks"]["pgbench_accounts"]
    assert re.fullmatch(r"\d+", facts["system_identifier"])
    with tarfile.open(out / "backup-tar" / "base.tar") as tf:
        members = {m.name: m for m in tf.getmembers()}
    for key in ("pgbench_accounts", "pgbench_accounts_pkey", "pgbench_branches"):
        assert rels[key] in members, rels[key]
    acc = members[rels["pgbench_accounts"]]
    assert acc.size == facts["blocks"]["pgbench_accounts"] * 8192
    assert rels["pgbench_accounts"] + "_fsm" in members
    assert rels["pgbench_accounts"] + "_vm" in members
    for key in ("backup_tar", "backup_busy"):
        lsn = facts[key]["start_lsn"]
        assert parse_lsn(lsn) == facts[key]["start_lsn_int"] > 0
        assert facts[key]["start_wal_file"].endswith(f"{facts[key]['start_lsn_int'] >> 24:08X}")
    assert facts["backup_busy"]["start_lsn_int"] > facts["backup_tar"]["start_lsn_int"]
    assert facts["busy_pgbench_transactions"] > 0
    # the cold datadir tar holds the same relation, as written by GNU tar ("./base/...")
    with tarfile.open(out / "cold-datadir.tar") as tf:
        names = set(tf.getnames())
    assert "./" + rels["pgbench_accounts"] in names
    # system identifier is the same in the backup's copy of pg_control: check via plain backup
    ctl = run_pg("pg_controldata", "-D", out / "backup-plain").stdout
    assert facts["system_identifier"] in ctl


def test_cluster_stops_on_error(tmp_path):
    root = tmp_path / "c"
    with pytest.raises(RuntimeError):
        with Cluster(root, checksums=False) as c:
            assert c.sql("SELECT 1") == "1"
            c.sql("SELECT no_such_column")
    assert not (root / "data" / "postmaster.pid").exists()
