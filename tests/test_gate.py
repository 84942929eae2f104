"""The CI gate on real archive pairs made by tar and zstd: catalogs, diffs, policies, expected
checksums, and the exit codes a CI job reads (0 pass, 1 corrupt, 2 usage, 4 policy)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from archcheck import api, catalog as catalog_module
from archcheck.catalog import open_catalog
from archcheck.gate import load_outcomes
from conftest import cli

MTIME = 1767225600  # 2026-01-01


def make_tree(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    for name, size in (("a.bin", 40_000), ("b.bin", 70_000), ("c.txt", 3_000)):
        (root / "data" / name).write_bytes(hashlib.sha256(name.encode()).digest() * (size // 32))
    (root / "PG_VERSION").write_text("15\n")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (MTIME, MTIME))
    return root


def tar_zst(tree: Path, out: Path, *, level: int = 3, tar_args: tuple[str, ...] = (), frames: int = 1,
            names: list[str] | None = None) -> Path:
    """A .tar.zst of ``tree`` by GNU tar and zstd; ``frames`` > 1 compresses pieces separately
    and concatenates them, as pzstd does."""
    plain = out.with_suffix("")
    listed = names or ["."]
    subprocess.run(["tar", "-C", str(tree), "--format=gnu", "--owner=0", "--group=0", *tar_args,
                    "-cf", str(plain), *listed], check=True)
    data = plain.read_bytes()
    cut = [len(data) * i // frames // 512 * 512 for i in range(frames)] + [len(data)]
    pieces = [subprocess.run(["zstd", "-q", f"-{level}", "-c"], input=data[a:b], capture_output=True,
                             check=True).stdout for a, b in zip(cut, cut[1:])]
    out.write_bytes(b"".join(pieces))
    return out


@pytest.fixture
def base(tmp_path) -> tuple[Path, Path]:
    """(tree, baseline archive)."""
    tree = make_tree(tmp_path / "tree")
    return tree, tar_zst(tree, tmp_path / "base.tar.zst")


def gate(archive: Path, state: Path, **spec) -> api.DrillResult:
    spec = {k: Path(v) if isinstance(v, (str, Path)) else v for k, v in spec.items()}
    return api.run_drill([archive], state=state, gate=api.GateSpec(**spec))


def gate_codes(result) -> list[str]:
    return sorted(f.finding.code for g in result.gates for f in g.findings)


def findings_by_code(result, code):
    return [f.finding for g in result.gates for f in g.findings if f.finding.code == code]


def test_a_catalog_records_each_member_in_name_order(base, tmp_path, state):
    _, archive = base
    result = api.catalog(archive, tmp_path / "base.cat", state=state)
    assert result.exit_code == 0 and result.gates[0].catalog == str(tmp_path / "base.cat")
    with open_catalog(tmp_path / "base.cat") as cat:
        entries = list(cat.entries())
        header = cat.header
    assert [e.name for e in entries] == sorted(e.name for e in entries)
    assert {e.name for e in entries} == {"./", "./data/", "./data/a.bin", "./data/b.bin", "./data/c.txt",
                                        "./PG_VERSION"}
    b = next(e for e in entries if e.name == "./data/b.bin")
    assert (b.type, b.size, b.mtime, b.uid, b.gid, b.uname, b.gname) == ("file", 70_000 // 32 * 32, MTIME, 0, 0,
                                                                         "root", "root")
    assert header.members == 6 and header.format == "tar+zstd" and header.verdict == "intact"
    assert header.tree_root == result.verifications[0][1].manifest.tree_root


def test_the_catalog_sorts_in_runs_on_disk_and_keeps_the_last_of_a_duplicate(base, tmp_path, state, monkeypatch):
    tree, _ = base
    plain = tmp_path / "dup.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(plain), "data/c.txt", "PG_VERSION", "data/a.bin"], check=True)
    (tree / "data" / "c.txt").write_text("second version\n")
    subprocess.run(["tar", "-C", str(tree), "-rf", str(plain), "data/c.txt"], check=True)
    monkeypatch.setattr(catalog_module, "RUN", 2)  # three runs of two, merged
    api.catalog(plain, tmp_path / "dup.cat", state=state)
    with open_catalog(tmp_path / "dup.cat") as cat:
        entries = list(cat.entries())
        assert cat.duplicates == 1
    assert [e.name for e in entries] == ["PG_VERSION", "data/a.bin", "data/c.txt"]
    assert entries[2].size == len("second version\n") and entries[2].index == 3  # the one a restore leaves


@pytest.mark.parametrize("variant, drift", [
    ("mtime", {"mtime": 1}),
    ("owner", {"owner": 6}),
    ("order", {"order": 1}),
    ("level", {"compression": 1}),
    ("frames", {"frames": 1}),
])
def test_the_same_tree_archived_differently_is_drift_and_passes(base, tmp_path, state, variant, drift):
    tree, archive = base
    new = tmp_path / "new.tar.zst"
    if variant == "mtime":
        os.utime(tree / "data" / "a.bin", (MTIME + 60, MTIME + 60))
        tar_zst(tree, new)
    elif variant == "owner":
        tar_zst(tree, new, tar_args=("--owner=1234", "--group=5678"))
    elif variant == "order":
        tar_zst(tree, new, names=["PG_VERSION", "data/c.txt", "data/b.bin", "data/a.bin", "data"][:4])
        tar_zst(tree, archive, names=["data/a.bin", "data/b.bin", "data/c.txt", "PG_VERSION"])
    elif variant == "level":
        tar_zst(tree, new, level=19)
    else:
        tar_zst(tree, new, frames=3)
    result = gate(new, state, baseline=archive)
    assert result.exit_code == 0, result.gates
    summary = result.gates[0].diff
    assert summary.drift == drift and summary.same_content
    assert gate_codes(result) == [f"DRIFT_{kind.upper()}" for kind in drift]


def test_drift_a_policy_does_not_allow_exits_4(base, tmp_path, state):
    tree, archive = base
    new = tar_zst(tree, tmp_path / "new.tar.zst", tar_args=("--owner=1234",))
    policy = tmp_path / "policy.yaml"
    policy.write_text("allow_drift: [mtime, compression, frames]\n")
    result = gate(new, state, baseline=archive, policy=policy)
    assert result.exit_code == 4
    [violation] = findings_by_code(result, "POLICY_DRIFT")
    assert violation.message == "owner drift is not in allow_drift (compression, frames, mtime)"


def test_added_removed_and_modified_members_are_named(base, tmp_path, state):
    tree, archive = base
    (tree / "data" / "new.txt").write_text("fresh\n")
    (tree / "data" / "c.txt").unlink()
    (tree / "data" / "a.bin").write_bytes(b"x" * 100)
    new = tar_zst(tree, tmp_path / "new.tar.zst")
    result = gate(new, state, baseline=archive)
    assert result.exit_code == 0  # changes are a policy's business, not corruption
    named = {f.code: f.location.member for f in (x.finding for x in result.gates[0].findings)
             if f.code.startswith("DIFF_")}
    assert named == {"DIFF_ADDED": "./data/new.txt", "DIFF_REMOVED": "./data/c.txt",
                     "DIFF_MODIFIED": "./data/a.bin"}
    [modified] = findings_by_code(result, "DIFF_MODIFIED")
    assert modified.message == "changed since the baseline: size 40000 became 100 bytes"


def test_content_replaced_under_an_untouched_header_is_suspicious(base, tmp_path, state):
    tree, archive = base
    target = tree / "data" / "b.bin"
    data = bytearray(target.read_bytes())
    data[1000] ^= 0x01  # one bit, same size
    target.write_bytes(bytes(data))
    os.utime(target, (MTIME, MTIME))
    new = tar_zst(tree, tmp_path / "new.tar.zst")
    run = cli("verify", new, "--baseline", archive, "--state-dir", state, "--no-progress")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "DIFF_SUSPICIOUS" in run.stdout and "member './data/b.bin'" in run.stdout
    [outcome] = load_outcomes(next((state / "drills").iterdir()))
    [finding] = [f.finding for f in outcome.findings if f.finding.code == "DIFF_SUSPICIOUS"]
    assert finding.location.member == "./data/b.bin" and dict(finding.details)["size"] == len(data)


def test_a_damaged_archive_fails_as_corrupt_whatever_the_baseline_says(base, tmp_path, state):
    _, archive = base
    damaged = tmp_path / "damaged.tar.zst"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_members: 1\n")
    result = gate(damaged, state, baseline=archive, policy=policy)
    assert result.exit_code == 1 and result.verdict == "corrupt"
    [outcome] = result.gates
    assert [r.rule for r in outcome.rules] == ["policy"]  # a partial content is not judged as a backup
    assert gate_codes(result) == ["POLICY_NOT_EVALUATED"]
    assert outcome.rules[0].detail == "the policy was not evaluated: the archive is corrupt: what is left of it " \
                                      "is not judged as a backup"


def test_a_policy_violation_on_intact_data_exits_4(base, tmp_path, state):
    tree, archive = base
    shutil.rmtree(tree / "data")
    (tree / "data").mkdir()
    (tree / "data" / "small").write_text("x")
    new = tar_zst(tree, tmp_path / "new.tar.zst")
    policy = tmp_path / "policy.yaml"
    policy.write_text("required: [PG_VERSION, 'global/pg_control']\nmax_shrink: 50%\nmin_bytes: 1K\n"
                      "ignore: ['*.tmp']\n")
    run = cli("verify", new, "--baseline", archive, "--policy", policy, "--state-dir", state, "--no-progress")
    assert run.returncode == 4, run.stdout + run.stderr
    assert "verdict   INTACT" in run.stdout and "gate      FAILED (exit 4)" in run.stdout
    [outcome] = load_outcomes(next((state / "drills").iterdir()))
    assert {r.rule: r.passed for r in outcome.rules} == {"diff": True, "required": False, "min_bytes": False,
                                                        "max_shrink": False}
    messages = sorted(f.finding.message for f in outcome.findings if f.finding.code.startswith("POLICY"))
    before = outcome.diff.content_bytes[0]
    assert outcome.diff.content_bytes == (before, 4)  # 'x' and PG_VERSION's '15\n'
    assert messages == [
        "4 bytes of content, fewer than min_bytes 1024",
        f"content bytes shrank by {100 * (before - 4) / before:.1f}% against the baseline ({before} to 4), "
        "over max_shrink 50%",
        "no member matches the required pattern 'global/pg_control'",
    ]


def test_waivers_weigh_findings_until_they_expire(base, tmp_path, state):
    _, archive = base
    policy = tmp_path / "policy.yaml"
    waiver = ("required: ['global/pg_control']\nwaivers:\n  - code: POLICY_REQUIRED\n    severity: warning\n"
              "    owner: dba-team\n    expires: {date}\n    reason: no cluster in this test\n")
    policy.write_text(waiver.format(date="2099-12-31"))
    result = gate(archive, state, policy=policy)
    assert result.exit_code == 0
    [waived] = [f for f in result.gates[0].findings if f.finding.code == "POLICY_REQUIRED"]
    assert (waived.severity.value, waived.waiver) == ("warning", "dba-team until 2099-12-31")
    policy.write_text(waiver.format(date="2026-01-31"))
    result = gate(archive, state, policy=policy)
    assert result.exit_code == 4
    [expired] = findings_by_code(result, "POLICY_WAIVER_EXPIRED")
    assert expired.message == ("the waiver of POLICY_REQUIRED (owner dba-team) expired on 2026-01-31: "
                               "renew it or remove the cause")
    assert [f.severity.value for f in result.gates[0].findings if f.finding.code == "POLICY_REQUIRED"] == ["error"]


def test_a_waiver_can_raise_a_warning_to_fail_the_gate(fx, tmp_path, state):
    appended = tmp_path / "appended.tar"
    appended.write_bytes((fx / "gnu.tar").read_bytes() + b"junk" * 100)
    policy = tmp_path / "policy.yaml"
    policy.write_text("waivers:\n  - {code: TAR_TRAILING_DATA, severity: error, owner: sre, expires: 2099-01-01}\n")
    result = gate(appended, state, policy=policy)
    assert result.verdict == "intact" and result.exit_code == 4
    [rule] = [r for r in result.gates[0].rules if not r.passed]
    assert rule.rule == "findings" and [f.finding.code for f in rule.findings] == ["TAR_TRAILING_DATA"]


@pytest.mark.parametrize("text, message", [
    ("requird: [x]\n", "policy.yaml:1: unknown key 'requird' (known keys: required, ignore, max_shrink"),
    ("min_members: lots\n", "policy.yaml:1: 'min_members' must be a whole number, not 'lots'"),
    ("required: [x\n", "policy.yaml:2: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("max_shrink: {bytes: 10%, files: 5%}\n", "policy.yaml:1: 'max_shrink': unknown key 'files' (known: bytes, members)"),
    ("waivers:\n  - code: ZSTD_CHECKSUM_MISMATCH\n    severity: info\n    owner: x\n    expires: 2099-01-01\n",
     "policy.yaml:2: 'waivers'[0].code: ZSTD_CHECKSUM_MISMATCH is corruption: it decides the verdict and "
     "cannot be waived"),
    ("allow_drift: [mtime, colour]\n", "policy.yaml:1: 'allow_drift': unknown drift kind 'colour'"),
    ("x: !!python/object:os.system ls\n", "policy.yaml:1: YAML tag '!!python/object:os.system' is not allowed"),
])
def test_a_bad_policy_is_one_line_and_exit_2_before_anything_runs(base, tmp_path, state, text, message):
    _, archive = base
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    run = cli("verify", archive, "--policy", policy, "--state-dir", state)
    assert run.returncode == 2
    assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1
    assert message in run.stderr, run.stderr
    assert not (state / "drills").exists() or not any((state / "drills").iterdir())


def test_expected_checksums_are_checked_in_the_same_run(base, tmp_path, state):
    _, archive = base
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  other.tar.zst\n{sha}  {archive.name}\n")
    import xxhash
    xxh3 = xxhash.xxh3_128_hexdigest(archive.read_bytes())  # (the core's digest)
    result = gate(archive, state, expect_file=sums, expect=("blake3:" + _b3(archive), "xxh3-128:" + xxh3))
    assert result.exit_code == 0 and [r.rule for r in result.gates[0].rules] == ["expect"]
    assert "xxh3-128" in str(result.gates[0].rules[0])
    run = cli("verify", archive, "--expect", "sha256:" + "ab" * 32, "--state-dir", state, "--no-progress")
    assert run.returncode == 1
    assert f"CHECKSUM_MISMATCH  the archive's sha256 is {sha}, --expect expects {'ab' * 32}" in run.stdout
    bad = cli("verify", archive, "--expect", "sha256:abc", "--state-dir", state)
    assert bad.returncode == 2 and "a sha256 digest has 64 hex digits, not 3" in bad.stderr
    missing = cli("verify", archive, "--expect-file", tmp_path / "nope", "--state-dir", state)
    assert missing.returncode == 2 and "cannot read the checksum file" in missing.stderr


def _b3(path: Path) -> str:
    import blake3
    return blake3.blake3(path.read_bytes()).hexdigest()


def test_diff_takes_archives_and_catalogs_in_any_mix(base, tmp_path, state):
    tree, archive = base
    (tree / "data" / "new.txt").write_text("fresh\n")
    os.utime(tree / "data", (MTIME, MTIME))  # adding a file touches its directory: that would be drift
    new = tar_zst(tree, tmp_path / "new.tar.zst")
    run = cli("catalog", archive, "-o", tmp_path / "base.cat", "--state-dir", state, "--no-progress")
    assert run.returncode == 0 and "catalog written to" in run.stderr
    for old in (tmp_path / "base.cat", archive):
        run = cli("diff", old, new)
        assert run.returncode == 0, run.stderr
        assert "diff      CHANGED  (6 identical, 1 added)" in run.stdout
        assert "DIFF_ADDED  added since the baseline (file, 6 bytes)" in run.stdout


def test_a_baseline_of_another_digest_is_refused(base, tmp_path, state):
    _, archive = base
    api.catalog(archive, tmp_path / "b3.cat", state=state, digest="blake3")
    run = cli("verify", archive, "--baseline", tmp_path / "b3.cat", "--state-dir", state)
    assert run.returncode == 2 and "verify both with the same --digest" in run.stderr


def test_the_report_carries_the_gate(base, tmp_path, state):
    tree, archive = base
    new = tar_zst(tree, tmp_path / "new.tar.zst", level=19)
    report = tmp_path / "report.json"
    run = cli("verify", new, "--baseline", archive, "--report", report, "--state-dir", state, "--no-progress")
    assert run.returncode == 0
    [gate_json] = json.loads(report.read_text())["gates"]
    assert gate_json["exit_code"] == 0 and gate_json["diff"]["drift"] == {"compression": 1}
    assert [r["rule"] for r in gate_json["rules"]] == ["diff"]
    [sealed] = (state / "reports").glob("drill-*.json")  # the auditor's copy holds the gate too
    assert json.loads(sealed.read_text())["gates"] == [gate_json]
    assert cli("audit", "verify", "--state-dir", state).returncode == 0


def test_a_plan_gates_with_its_baseline_and_policy(base, tmp_path, state):
    tree, archive = base
    api.catalog(archive, tmp_path / "baseline.catalog", state=state)
    (tree / "PG_VERSION").unlink()
    tar_zst(tree, tmp_path / "backup.tar.zst")
    (tmp_path / "policy.yaml").write_text("required: [PG_VERSION]\n")
    plan = tmp_path / "gate.yaml"
    plan.write_text("archives: [./backup.tar.zst]\nbaseline: ./baseline.catalog\npolicy: ./policy.yaml\n"
                    "save_catalog: ./backup.catalog\n")
    run = cli("drill", "run", plan, "--state-dir", state, "--no-progress")
    assert run.returncode == 4, run.stdout + run.stderr
    assert "FAIL required     no member matches the required pattern 'PG_VERSION'" in run.stdout
    assert "DIFF_REMOVED  removed since the baseline (was file, 3 bytes)" in run.stdout
    with open_catalog(tmp_path / "backup.catalog") as saved:
        assert saved.header.members == 5


def test_the_cli_writes_junit_prometheus_and_github_outputs(base, tmp_path, state):
    from prometheus_client.parser import text_string_to_metric_families
    _, archive = base
    policy = tmp_path / "policy.yaml"
    policy.write_text("required: ['global/pg_control']\n")
    summary = tmp_path / "summary.md"
    run = cli("verify", archive, "--policy", policy, "--junit", tmp_path / "junit.xml", "--prometheus",
              tmp_path / "archcheck.prom", "--state-dir", state, "--no-progress",
              env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert run.returncode == 4, run.stderr
    assert "<testcase" in (tmp_path / "junit.xml").read_text() and "gate: required" in (tmp_path / "junit.xml").read_text()
    names = {f.name for f in text_string_to_metric_families((tmp_path / "archcheck.prom").read_text())}
    assert "archcheck_last_success_timestamp_seconds" in names
    assert any(line.startswith("::error ") and "POLICY_REQUIRED" in line for line in run.stdout.splitlines())
    assert "POLICY_REQUIRED" in summary.read_text()
