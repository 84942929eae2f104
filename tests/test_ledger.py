"""Sealed reports and the hash-chained audit ledger, on real files: every kind of tampering the
issue names is made by hand here and must be named by verify_ledger, line and drill."""
from __future__ import annotations

import json
import multiprocessing
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import blake3
import pytest

from archcheck import ledger
from archcheck.errors import StateError
from archcheck.ledger import GENESIS, AuditResult, entry_hash, seal_report, verify_ledger

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def report(n: int) -> bytes:
    return json.dumps({"drill": f"drill-{n}", "status": "complete", "findings": []}).encode()


def seal(root: Path, n: int) -> ledger.LedgerEntry:
    return seal_report(root, f"drill-{n}", report(n), now=T0 + timedelta(minutes=n))


def chain(root: Path, count: int) -> list[ledger.LedgerEntry]:
    return [seal(root, n) for n in range(1, count + 1)]


def ledger_lines(root: Path) -> list[str]:
    return (root / "audit" / "ledger.jsonl").read_text().splitlines(keepends=True)


def write_lines(root: Path, lines: list[str]) -> None:
    (root / "audit" / "ledger.jsonl").write_text("".join(lines))


def edit_entry(root: Path, lineno: int, rehash: bool = False, **changes) -> None:
    lines = ledger_lines(root)
    entry = json.loads(lines[lineno - 1])
    entry.update(changes)
    if rehash:  # the smarter attacker: the entry is consistent in itself again
        entry["hash"] = entry_hash(entry)
    lines[lineno - 1] = json.dumps(entry, separators=(",", ":")) + "\n"
    write_lines(root, lines)


def problems(root: Path) -> list[str]:
    return verify_ledger(root).problems


# -- sealing -------------------------------------------------------------------------------------

def test_seal_writes_a_read_only_report_and_the_first_entry(tmp_path):
    entry = seal(tmp_path, 42)
    path = tmp_path / "reports" / "drill-42.json"
    assert path.read_bytes() == report(42)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert entry == ledger.LedgerEntry(
        seq=1, time="2024-05-01T12:42:00Z", drill="drill-42", report="reports/drill-42.json",
        report_blake3=blake3.blake3(report(42)).hexdigest(), prev=GENESIS, hash=entry.hash)
    body = {k: v for k, v in entry.to_json().items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert entry.hash == blake3.blake3(canonical).hexdigest()
    line, = ledger_lines(tmp_path)
    assert list(json.loads(line)) == ["seq", "time", "drill", "report", "report_blake3", "prev", "hash"]
    assert json.loads(line) == entry.to_json()
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]  # no temp left


def test_entries_chain_onto_each_other(tmp_path):
    entries = chain(tmp_path, 3)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.prev for e in entries] == [GENESIS, entries[0].hash, entries[1].hash]


def test_sealing_the_same_report_twice_is_idempotent(tmp_path):
    first = seal(tmp_path, 1)
    again = seal_report(tmp_path, "drill-1", report(1), now=T0 + timedelta(days=1))
    assert again == first
    assert len(ledger_lines(tmp_path)) == 1


def test_sealing_a_different_report_is_refused(tmp_path):
    seal(tmp_path, 1)
    with pytest.raises(StateError, match="drill-1's report is sealed already and differs: "
                                         "reports/drill-1.json has BLAKE3 "):
        seal_report(tmp_path, "drill-1", b'{"tampered": true}')
    assert (tmp_path / "reports" / "drill-1.json").read_bytes() == report(1)
    assert len(ledger_lines(tmp_path)) == 1


def test_a_crash_between_report_and_entry_recovers(tmp_path, monkeypatch):
    seal(tmp_path, 1)

    def crash(*args):
        raise KeyboardInterrupt  # stands for the process dying: nothing after it runs

    with monkeypatch.context() as m:
        m.setattr(ledger, "_append", crash)
        with pytest.raises(KeyboardInterrupt):
            seal(tmp_path, 2)
    assert (tmp_path / "reports" / "drill-2.json").read_bytes() == report(2)
    assert problems(tmp_path) == ["reports/drill-2.json has no ledger entry (entry removed?)"]
    entry = seal(tmp_path, 2)
    assert (entry.seq, entry.drill) == (2, "drill-2")
    assert verify_ledger(tmp_path) == AuditResult(entries=2, head=entry.hash, problems=[])


def test_a_clock_stepped_back_does_not_make_time_go_backwards(tmp_path):
    first = seal(tmp_path, 5)
    second = seal_report(tmp_path, "drill-6", report(6), now=T0)
    assert second.time == first.time
    assert problems(tmp_path) == []


@pytest.mark.parametrize("drill_id", ["../escape", "a/b", "/abs", "", ".", "..", ".hidden",
                                      "drill 1", "drill-1\n", "drill\x00"])
def test_hostile_drill_ids_are_refused(tmp_path, drill_id):
    root = tmp_path / "state"
    with pytest.raises(StateError, match="is not a valid drill id"):
        seal_report(root, drill_id, b"{}")
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_torn_last_line_is_reported_and_blocks_appending(tmp_path):
    chain(tmp_path, 3)
    with open(tmp_path / "audit" / "ledger.jsonl", "a") as f:
        f.write('{"seq":4,"time":"2024-05')  # a crash in the middle of an append
    assert problems(tmp_path) == ["line 4: not a JSON object (torn or edited)"]
    with pytest.raises(StateError, match=r"the last line is torn or damaged .* "
                                         r"run `archcheck audit verify`"):
        seal(tmp_path, 4)
    assert not (tmp_path / "reports" / "drill-4.json").exists()


def test_a_garbled_last_line_with_its_newline_blocks_appending_too(tmp_path):
    chain(tmp_path, 2)
    with open(tmp_path / "audit" / "ledger.jsonl", "a") as f:
        f.write("garbage\n")
    with pytest.raises(StateError, match="archcheck audit verify"):
        seal(tmp_path, 3)


# -- verifying -----------------------------------------------------------------------------------

def test_a_missing_ledger_with_no_reports_is_fine(tmp_path):
    assert verify_ledger(tmp_path) == AuditResult(entries=0, head=None, problems=[])
    assert verify_ledger(tmp_path / "absent") == AuditResult(entries=0, head=None, problems=[])
    assert not (tmp_path / "audit").exists()  # verifying creates nothing


def test_a_clean_chain_verifies_with_its_head(tmp_path):
    entries = chain(tmp_path, 5)
    assert verify_ledger(tmp_path) == AuditResult(entries=5, head=entries[-1].hash, problems=[])


@pytest.mark.parametrize("change", [{"report_blake3": "0" * 64}, {"time": "2024-05-01T12:03:30Z"},
                                    {"drill": "drill-33"}, {"seq": 3, "prev": GENESIS}])
def test_an_edited_entry_is_detected(tmp_path, change):
    chain(tmp_path, 5)
    edit_entry(tmp_path, 3, **change)
    drill = change.get("drill", "drill-3")
    expected = [f"line 3 ({drill}): entry was edited (hash does not match its content)"]
    if "prev" in change:
        expected.append(f"line 3 ({drill}): previous hash does not match line 2: "
                        f"an entry was removed or reordered")
    assert problems(tmp_path) == expected


def test_an_edited_entry_with_its_hash_recomputed_breaks_the_next_link(tmp_path):
    chain(tmp_path, 5)
    edit_entry(tmp_path, 3, rehash=True, time="2024-05-01T12:03:30Z")
    assert problems(tmp_path) == [
        "line 4 (drill-4): previous hash does not match line 3: an entry was removed or reordered"]


def test_a_rehashed_entry_with_a_forged_digest_is_caught_twice(tmp_path):
    chain(tmp_path, 5)
    edit_entry(tmp_path, 3, rehash=True, report_blake3="0" * 64)
    assert problems(tmp_path) == [
        "line 3 (drill-3): report reports/drill-3.json was edited (digest differs)",
        "line 4 (drill-4): previous hash does not match line 3: an entry was removed or reordered"]


def test_time_going_backwards_is_detected(tmp_path):
    chain(tmp_path, 3)
    edit_entry(tmp_path, 2, rehash=True, time="2024-05-01T11:00:00Z")
    assert problems(tmp_path) == [
        "line 2 (drill-2): time goes backwards (2024-05-01T11:00:00Z is before line 1's "
        "2024-05-01T12:01:00Z)",
        "line 3 (drill-3): previous hash does not match line 2: an entry was removed or reordered"]


def test_a_removed_middle_entry_is_detected(tmp_path):
    chain(tmp_path, 5)
    lines = ledger_lines(tmp_path)
    write_lines(tmp_path, lines[:2] + lines[3:])
    assert problems(tmp_path) == [
        "line 3 (drill-4): sequence number 4, expected 3",
        "line 3 (drill-4): previous hash does not match line 2: an entry was removed or reordered",
        "reports/drill-3.json has no ledger entry (entry removed?)"]


def test_a_removed_first_entry_is_detected(tmp_path):
    chain(tmp_path, 3)
    write_lines(tmp_path, ledger_lines(tmp_path)[1:])
    assert problems(tmp_path) == [
        "line 1 (drill-2): sequence number 2, expected 1",
        "line 1 (drill-2): previous hash does not match the start of the chain: "
        "an entry was removed or reordered",
        "reports/drill-1.json has no ledger entry (entry removed?)"]


def test_swapped_entries_are_detected(tmp_path):
    chain(tmp_path, 4)
    lines = ledger_lines(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(tmp_path, lines)
    assert problems(tmp_path) == [
        "line 2 (drill-3): sequence number 3, expected 2",
        "line 2 (drill-3): previous hash does not match line 1: an entry was removed or reordered",
        "line 3 (drill-2): sequence number 2, expected 4",
        "line 3 (drill-2): previous hash does not match line 2: an entry was removed or reordered",
        "line 3 (drill-2): time goes backwards (2024-05-01T12:02:00Z is before line 2's "
        "2024-05-01T12:03:00Z)",
        "line 4 (drill-4): sequence number 4, expected 3",
        "line 4 (drill-4): previous hash does not match line 3: an entry was removed or reordered"]


def test_an_edited_report_is_detected(tmp_path):
    chain(tmp_path, 3)
    path = tmp_path / "reports" / "drill-2.json"
    path.chmod(0o644)
    path.write_bytes(report(2).replace(b"complete", b"failed"))
    assert problems(tmp_path) == ["line 2 (drill-2): report reports/drill-2.json was edited (digest differs)"]


def test_a_deleted_report_is_detected(tmp_path):
    chain(tmp_path, 3)
    (tmp_path / "reports" / "drill-2.json").unlink()
    assert problems(tmp_path) == ["line 2 (drill-2): report reports/drill-2.json is missing"]


def test_a_removed_last_entry_is_a_report_without_entry(tmp_path):
    chain(tmp_path, 3)
    write_lines(tmp_path, ledger_lines(tmp_path)[:-1])
    result = verify_ledger(tmp_path)
    assert (result.entries, result.problems) == (2, ["reports/drill-3.json has no ledger entry (entry removed?)"])


def test_removing_the_last_entry_and_its_report_shows_only_in_the_head(tmp_path):
    entries = chain(tmp_path, 3)
    write_lines(tmp_path, ledger_lines(tmp_path)[:-1])
    (tmp_path / "reports" / "drill-3.json").unlink()
    # The documented limit: consistent in itself; only a head recorded elsewhere tells
    assert verify_ledger(tmp_path) == AuditResult(entries=2, head=entries[1].hash, problems=[])
    assert entries[1].hash != entries[2].hash


def test_a_report_path_outside_the_state_directory_is_not_read(tmp_path):
    root = tmp_path / "state"
    chain(root, 3)
    (tmp_path / "outside.json").write_bytes(report(3))
    edit_entry(root, 3, rehash=True, report="../outside.json")
    edit_entry(root, 2, rehash=True, report="/etc/passwd")
    assert problems(root) == [
        "line 2 (drill-2): report path '/etc/passwd' leaves the state directory (not read)",
        "line 3 (drill-3): previous hash does not match line 2: an entry was removed or reordered",
        "line 3 (drill-3): report path '../outside.json' leaves the state directory (not read)",
        "reports/drill-2.json has no ledger entry (entry removed?)",
        "reports/drill-3.json has no ledger entry (entry removed?)"]


def test_a_report_symlinked_outside_is_not_read(tmp_path):
    root = tmp_path / "state"
    chain(root, 1)
    (tmp_path / "outside.json").write_bytes(report(1))
    path = root / "reports" / "drill-1.json"
    path.unlink()
    path.symlink_to(tmp_path / "outside.json")
    assert problems(root) == [
        "line 1 (drill-1): report reports/drill-1.json links outside the state directory (not read)"]


def test_garbage_lines_are_named_and_the_rest_still_checked(tmp_path):
    chain(tmp_path, 4)
    lines = ledger_lines(tmp_path)
    lines[1] = "hello\n"
    lines[2] = json.dumps({"seq": "3"}) + "\n"
    write_lines(tmp_path, lines[:3] + ["x" * 100_000 + "\n"] + lines[3:])
    result = verify_ledger(tmp_path)
    assert result.problems == [
        "line 2: not a JSON object (torn or edited)",
        "line 3: not a ledger entry (bad or missing fields: drill, hash, prev, report, "
        "report_blake3, time, seq)",
        "line 4: not a JSON object (torn or edited)",
        "line 5 (drill-4): sequence number 4, expected 5",
        "reports/drill-2.json has no ledger entry (entry removed?)",
        "reports/drill-3.json has no ledger entry (entry removed?)"]
    assert result.entries == 2


# -- concurrency ---------------------------------------------------------------------------------

def _seal_many(root: str, prefix: str, count: int, start) -> None:
    start.wait()
    for i in range(count):
        seal_report(Path(root), f"{prefix}-{i}", f'{{"n": {i}}}'.encode())


def test_two_processes_appending_at_once_keep_the_chain_unbroken(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    workers = [ctx.Process(target=_seal_many, args=(str(tmp_path), p, 20, start)) for p in ("a", "b")]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    result = verify_ledger(tmp_path)
    assert (result.entries, result.problems) == (40, [])
    entries = [json.loads(line) for line in ledger_lines(tmp_path)]
    assert [e["seq"] for e in entries] == list(range(1, 41))
    assert {e["drill"] for e in entries} == {f"{p}-{i}" for p in "ab" for i in range(20)}
    assert result.head == entries[-1]["hash"]
