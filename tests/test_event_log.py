"""The event log (--log-format json|text, --log-file; docs/outputs.md): every line parses, carries
its time in RFC 3339 UTC, level, event, drill, archive and a correlation id per segment; findings
are events with their exact location; hostile names stay inert; stderr holds log lines only."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from conftest import cli, maker, member_offsets

MiB = 1024 * 1024
EVIL = "evil\x1b[31m\nlevel=error event=forged\u202e"  # a member name that must stay inert
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """Archives made by real tar and zstd: clean (several segments), one with a damaged tar
    header, and one whose hostile-named member is cut off inside its data."""
    out = tmp_path_factory.mktemp("events")
    maker.make_tree(out / "tree", big=20 * MiB)
    clean = maker.tar(out / "tree", out / "clean.tar", "--format=gnu")
    maker.run("zstd", "-q", "-f", str(clean), "-o", str(out / "clean.tar.zst"))
    header = member_offsets(clean)["./etc/config-05.conf"][0]
    data = bytearray(clean.read_bytes())
    data[header + 10] ^= 0x01
    (out / "bad.tar").write_bytes(data)
    (out / "evil-tree").mkdir()
    (out / "evil-tree" / EVIL).write_bytes(b"x" * 70000)
    evil = out / "evil.tar"
    maker.run("tar", "-cf", str(evil), "-C", str(out / "evil-tree"), "--format=gnu", *maker.TAR_FLAGS, EVIL)
    [(_, (_, start))] = member_offsets(evil).items()
    (out / "evil-cut.tar").write_bytes(evil.read_bytes()[:start + 30000])
    return {"dir": out, "clean": out / "clean.tar.zst", "bad": out / "bad.tar", "evil": out / "evil-cut.tar",
            "header": header}


def lines(text: str) -> list[dict]:
    events = [json.loads(line) for line in text.splitlines()]
    for event in events:
        assert RFC3339_UTC.fullmatch(event["time"]), event
        assert event["level"] in ("debug", "info", "warning", "error") and event["event"]
    return events


def test_json_log_of_a_drill_over_an_intact_and_a_damaged_archive(made, tmp_path):
    r = cli("verify", made["clean"], made["bad"], "--segment-size", "8M", "--log-format", "json",
            "--state-dir", tmp_path / "state", "--drill", "nightly")
    assert r.returncode == 1, r.stderr
    events = lines(r.stderr)  # stderr holds log lines only: no bar, no "archcheck:" lines
    assert "verdict   CORRUPT" in r.stdout  # the human summary stays on stdout
    assert {e["drill"] for e in events} == {"nightly"}
    names = [e["event"] for e in events]
    assert names[0] == "drill.started" and names[-1] == "drill.finished"
    assert events[-1] | {"time": None} == {"time": None, "level": "error", "event": "drill.finished",
                                           "drill": "nightly", "status": "complete", "verdict": "corrupt",
                                           "exit_code": 1, "archives": 2}
    assert names[-2] == "drill.sealed" and events[-2]["seq"] == 1

    clean = [e for e in events if e.get("archive") == str(made["clean"])]
    assert [e["event"] for e in clean if e["event"].startswith("archive.")] == ["archive.started", "archive.finished"]
    segments = [e for e in clean if e["event"] == "segment.verified"]
    size = made["clean"].stat().st_size
    assert sorted(e["segment"] for e in segments) == list(range(-(-size // (8 * MiB))))
    assert sum(e["length"] for e in segments) == size
    assert len({e["correlation_id"] for e in segments}) == len(segments)  # one per segment
    assert all(re.fullmatch(r"[0-9a-f]{16}", e["correlation_id"]) and e["status"] == "done" for e in segments)
    manifest = json.loads((tmp_path / "state" / "drills" / "nightly" / "archives" / "0001" / "manifest.json")
                          .read_text())
    assert manifest["status"] == "complete"
    finished = next(e for e in clean if e["event"] == "archive.finished")
    assert (finished["status"], finished["verdict"], finished["exit_code"], finished["findings"]) == (
        "complete", "intact", 0, 0)

    bad = [e for e in events if e.get("archive") == str(made["bad"])]
    findings = [e for e in bad if e["event"] == "finding"]
    header = made["header"]
    corrupt = [e for e in findings if e["category"] == "corruption"]
    assert [(e["code"], e["level"], e["location"]["byte_range"]) for e in corrupt] == [
        ("TAR_HEADER_CHECKSUM", "error", [header, header + 512])]
    assert corrupt[0]["location"]["archive"] == str(made["bad"])
    finished = next(e for e in bad if e["event"] == "archive.finished")
    assert (finished["level"], finished["verdict"], finished["exit_code"]) == ("error", "corrupt", 1)
    assert all("correlation_id" not in e for e in bad if e["event"] != "segment.verified")


def test_a_hostile_member_name_stays_inert_in_both_formats(made, tmp_path):
    log = tmp_path / "run.log"
    r = cli("verify", made["evil"], "--log-format", "text", "--log-file", log, "--state-dir", tmp_path / "s1",
            "--no-progress")
    assert r.returncode == 1
    text = log.read_text(encoding="ascii")  # nothing but ASCII: no escape codes, no bidi override
    assert "\x1b" not in text and "\u202e" not in text
    finding = [line for line in text.splitlines() if " finding " in line and "TAR_TRUNCATED" in line]
    assert len(finding) == 1
    assert not any(line.startswith("level=error") or " event=forged" in line.split('"')[0]
                   for line in text.splitlines())  # the name's newline did not start a line
    assert re.match(r"\S+Z error finding drill=drill-1 archive=\S+ code=TAR_TRUNCATED ", finding[0])
    assert json.dumps(EVIL)[1:-1] in finding[0]  # quoted and escaped as a JSON string
    assert "TAR_TRUNCATED" not in r.stderr  # the log went to the file

    r = cli("verify", made["evil"], "--log-format", "json", "--state-dir", tmp_path / "s2")
    events = lines(r.stderr)
    (truncated,) = [e for e in events if e.get("code") == "TAR_TRUNCATED"]
    assert truncated["location"]["member"] == EVIL  # exact, once decoded
    assert r.stderr.isascii()


def test_the_log_file_appends_and_stderr_keeps_the_usual_lines(made, tmp_path):
    log = tmp_path / "runs.jsonl"
    for _ in range(2):
        r = cli("verify", made["clean"], "--log-file", log, "--state-dir", tmp_path / "state", "--no-progress")
        assert r.returncode == 0, r.stderr
    events = lines(log.read_text())
    assert [e["drill"] for e in events if e["event"] == "drill.finished"] == ["drill-1", "drill-2"]
    assert "{" not in r.stderr  # the log went to the file


def test_levels_filter_and_a_failed_command_is_an_event(made, tmp_path):
    r = cli("verify", made["clean"], "--log-format", "json", "--log-level", "warning",
            "--state-dir", tmp_path / "state")
    assert r.returncode == 0 and r.stderr == ""  # nothing to warn about
    r = cli("verify", tmp_path / "missing.tar.zst", "--log-format", "json", "--state-dir", tmp_path / "state")
    assert r.returncode == 5, r.stderr
    [event] = lines(r.stderr)
    assert (event["event"], event["level"], event["status"], event["exit_code"]) == (
        "command.failed", "error", "failed", 5)
    assert "missing.tar.zst" in event["message"]


@pytest.mark.parametrize("args, says", [
    (("--log-format", "xml"), "--log-format must be json or text, not 'xml'"),
    (("--log-level", "loud", "--log-format", "json"), "--log-level must be one of debug, info, warning, error"),
    (("--log-file", "/nonexistent/dir/x.log"), "--log-file /nonexistent/dir/x.log: No such file or directory"),
])
def test_bad_log_options_are_one_line_and_exit_2(made, tmp_path, args, says):
    r = cli("verify", made["clean"], *args, "--state-dir", tmp_path / "state")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("archcheck: " + says), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists()  # refused before anything ran


def test_a_resumed_drill_logs_under_the_same_drill_and_judges_its_gate(made, tmp_path):
    state = tmp_path / "state"
    sha256 = hashlib.sha256(made["clean"].read_bytes()).hexdigest()
    # reads of 0.2 s: the run has begun when the deadline comes, however busy the machine, and
    # goes on past it (a deadline that passes before the archive starts halts no run)
    first = cli("verify", made["clean"], "--segment-size", "8M", "--deadline", "1s", "--log-format", "json",
                "--state-dir", state, "--expect", f"sha256:{sha256}",
                env={"ARCHCHECK_FAILPOINT": "slow-read", "ARCHCHECK_SLOW_READ_SECONDS": "0.2"})
    assert first.returncode == 3, first.stderr
    events = lines(first.stderr)
    (finished,) = [e for e in events if e["event"] == "drill.finished"]
    assert (finished["status"], finished["verdict"], finished["exit_code"]) == ("stopped", "incomplete", 3)
    assert events[-1]["event"] == "notice" and events[-1]["level"] == "error"  # the CLI's "resume" line
    assert any(e["event"] == "run.halted" and e["level"] == "warning" and e["status"] == "stopped" for e in events)
    assert any(e["event"] == "notice" and "archcheck resume drill-1" in e["message"] for e in events)
    second = cli("resume", "drill-1", "--log-format", "json", "--state-dir", state)
    assert second.returncode == 0, second.stderr
    events = lines(second.stderr)
    assert {e["drill"] for e in events} == {"drill-1"}
    (started,) = [e for e in events if e["event"] == "drill.started"]
    assert started["run"] == 2
    # the deadline passed: the notice of a new window comes first, under the drill too
    assert events[0]["event"] == "notice" and "new window" in events[0]["message"]
    assert events[-1]["verdict"] == "intact"
    # the gate given to verify is judged when the resumed drill ends, and sealed with it
    (gate,) = [e for e in events if e["event"] == "gate.judged"]
    assert (gate["status"], gate["exit_code"], gate["broken"]) == ("passed", 0, [])
    sealed = json.loads((state / "drills" / "drill-1" / "sealed-report.json").read_text())
    assert [r["rule"] for r in sealed["gates"][0]["rules"]] == ["expect"]
    assert sealed["gates"][0]["rules"][0]["passed"] is True


def test_the_gate_judgment_is_an_event(made, tmp_path):
    r = cli("verify", made["clean"], "--expect", "sha256:" + "0" * 64, "--log-format", "json",
            "--state-dir", tmp_path / "state")
    assert r.returncode == 1, r.stderr
    (gate,) = [e for e in lines(r.stderr) if e["event"] == "gate.judged"]
    assert gate | {"time": None} == {"time": None, "level": "error", "event": "gate.judged", "drill": "drill-1",
                                     "archive": str(made["clean"]), "status": "failed", "exit_code": 1,
                                     "broken": ["expect"]}
