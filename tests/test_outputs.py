"""The outputs CI systems and monitoring read (docs/outputs.md): JUnit XML checked against the
schema Jenkins reads and the way GitLab reads it, GitHub workflow commands and step summary, and
the Prometheus textfile; rendered from real drills over archives made by real tar and zstd."""
from __future__ import annotations

import dataclasses
import math
import re
import shutil
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import xmlschema
from prometheus_client.parser import text_string_to_metric_families

from archcheck.api import run_drill
from archcheck.diff import DiffSummary
from archcheck.drills import DrillArchive
from archcheck.findings import Finding, Location, Severity
from archcheck.gate import GatedFinding, GateOutcome, RuleOutcome
from archcheck.reports import github_report, junit_report, prometheus_report
from conftest import maker, member_offsets

MiB = 1024 * 1024
SCHEMA = Path(__file__).parent / "data" / "junit-10.xsd"
EVIL = "evil\n::error::x %0A 100% <b>|`tick`"  # a member name that must stay inert everywhere
WEIRD = 'we"ird\\na\nme.tar.zst'  # an archive name with what the exposition format escapes
T1 = datetime(2026, 11, 26, 3, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """Archives made by real tar and zstd: clean, with a damaged tar header, and one whose member
    has a hostile name, stored with its absolute path (a TAR_UNSAFE_PATH warning) and cut off
    inside its data (TAR_TRUNCATED)."""
    out = tmp_path_factory.mktemp("outputs")
    maker.make_tree(out / "tree", big=1 * MiB)
    clean = maker.tar(out / "tree", out / "clean.tar", "--format=gnu")
    maker.run("zstd", "-q", "-f", str(clean), "-o", str(out / "clean.tar.zst"))
    shutil.copyfile(out / "clean.tar.zst", out / WEIRD)
    header = member_offsets(clean)["./etc/config-05.conf"][0]
    bad = out / "bad.tar"
    data = bytearray(clean.read_bytes())
    data[header + 10] ^= 0x01
    bad.write_bytes(data)
    (out / "evil-tree").mkdir()
    evil_file = out / "evil-tree" / EVIL
    evil_file.write_bytes(b"x" * 70000)
    evil = out / "evil.tar"
    maker.run("tar", "-cPf", str(evil), "--format=gnu", *maker.TAR_FLAGS, str(evil_file))
    [(name, (_, start))] = member_offsets(evil).items()
    cut = out / "evil-cut.tar"
    cut.write_bytes(evil.read_bytes()[:start + 30000])
    paths = {"clean": out / "clean.tar.zst", "bad": bad, "evil": cut, "weird": out / WEIRD}
    mixed = run_drill([paths["clean"], bad, cut], state=out / "state-mixed", now=lambda: T1)
    intact = run_drill([paths["clean"], paths["weird"]], state=out / "state-intact", now=lambda: T1)
    return {**paths, "member": name, "header": header, "mixed": mixed, "intact": intact}


def gate_for(uri: str, member: str) -> GateOutcome:
    """What a gate with --expect, a baseline and a policy requiring a missing pattern says."""
    required = Finding.of("POLICY_REQUIRED", Location(uri), pattern="etc/missing-*")
    added = Finding.of("DIFF_ADDED", Location(uri, member=member), type="file", size=70000)
    return GateOutcome(uri, (
        RuleOutcome("expect", True, "matches sha256 0123456789abcdef... (--expect)"),
        RuleOutcome("diff", True, "against old.tar.zst: 1 added", (GatedFinding(added, Severity.INFO),)),
        RuleOutcome("required", False, required.message, (GatedFinding(required, Severity.ERROR),)),
    ), DiffSummary("old.tar.zst", identical=50, added=1, drift={"mtime": 3}), "policy.yaml")


@pytest.fixture(scope="module")
def gates(made) -> list[GateOutcome]:
    return [gate_for(str(made["clean"]), made["member"])]


def with_entries(result, *extra):
    """The drill's result with archives it could not verify, as a drill records them."""
    return dataclasses.replace(result, verifications=result.verifications + list(extra))


def failed_entry(path: str) -> tuple:
    return (DrillArchive(path, "archives/9/manifest.json", {}, "failed", "cannot read it: Permission denied", 5), None)


# --- JUnit -------------------------------------------------------------------------------------

def junit(result, gates, tmp_path) -> ET.Element:
    path = tmp_path / "junit.xml"
    junit_report.write(result, gates, path)
    return ET.parse(path).getroot()


def cases(suite: ET.Element) -> dict[str, ET.Element]:
    return {case.get("name"): case for case in suite.findall("testcase")}


def test_junit_fails_the_layer_that_found_corruption_and_names_the_code(made, gates, tmp_path):
    root = junit(made["mixed"], gates, tmp_path)
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == [str(made["clean"]), str(made["bad"]), str(made["evil"])]
    bad = suites[str(made["bad"])]
    assert {k: bad.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "5", "failures": "1", "errors": "0", "skipped": "0"}
    assert re.fullmatch(r"\d+\.\d{3}", bad.get("time")) and bad.get("timestamp").endswith("Z")
    by_name = cases(bad)
    assert list(by_name) == ["raw", "zstd", "tar", "members", "pages"]
    assert {c.get("classname") for c in by_name.values()} == {"archcheck.bad_tar"}
    failure = by_name["tar"].find("failure")
    assert failure.attrib == {"type": "corruption", "message": "TAR_HEADER_CHECKSUM"}
    header = made["header"]
    assert failure.text.startswith("TAR_HEADER_CHECKSUM (corruption, error): header checksum is ")
    assert failure.text.endswith(f" at bytes {header}-{header + 512}")
    assert "TAR_RESYNC (info, info): skipped " in by_name["tar"].find("system-out").text  # not a failure
    assert all(len(by_name[layer]) == 0 for layer in ("raw", "zstd", "members", "pages"))  # passed
    assert {p.get("name"): p.get("value") for p in bad.find("properties")} == {
        "status": "complete", "verdict": "corrupt", "exit_code": "1"}
    # the gate's rules follow the layers: the failing one names its finding
    clean = cases(suites[str(made["clean"])])
    assert list(clean) == ["raw", "zstd", "tar", "members", "pages", "gate: expect", "gate: diff", "gate: required"]
    assert len(clean["gate: expect"]) == 1 and clean["gate: expect"].find("system-out") is not None
    required = clean["gate: required"].find("failure")
    assert required.attrib == {"type": "policy", "message": "no member matches the required pattern 'etc/missing-*'"}
    assert required.text.startswith("POLICY_REQUIRED (policy, error): no member matches")
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("18", "3", "0")


def test_junit_escapes_a_hostile_member_name(made, tmp_path):
    root = junit(made["mixed"], [], tmp_path)
    evil = cases(root.findall("testsuite")[2])
    text = evil["tar"].find("failure").text
    assert evil["tar"].find("failure").get("message") == "TAR_TRUNCATED"
    assert "evil\\n::error::x %0A 100% <b>|`tick`" in text and "\n::error" not in text
    assert "TAR_UNSAFE_PATH (warning, warning)" in evil["tar"].find("system-out").text
    raw = (tmp_path / "junit.xml").read_text()
    assert "&lt;b&gt;|`tick`" in raw and "<b>" not in raw


def test_junit_archives_not_verified_are_one_errored_or_skipped_case(made, tmp_path):
    entry, verification = made["mixed"].verifications[1]
    stopped = (dataclasses.replace(entry, status="stopped", note="the deadline came"), verification)
    skipped = (DrillArchive("/backups/old.tar", "archives/8/manifest.json", {}, "skipped",
                            "unchanged and verified in full 2h ago"), None)
    result = with_entries(made["intact"], failed_entry("/backups/locked.tar.zst"), stopped, skipped)
    suites = junit(result, [], tmp_path).findall("testsuite")
    locked = cases(suites[2])
    assert list(locked) == ["verify"] and suites[2].get("errors") == "1"
    assert locked["verify"].find("error").attrib == {"type": "failed",
                                                     "message": "failed: cannot read it: Permission denied"}
    assert {p.get("name"): p.get("value") for p in suites[2].find("properties")}["exit_code"] == "5"
    # an archive the deadline stopped: every layer it was checking could not be completed
    assert suites[3].get("errors") == "4" and suites[3].get("failures") == "1"  # corruption still fails tar
    assert cases(suites[3])["raw"].find("error").get("message") == "the archive is stopped: the deadline came"
    old = cases(suites[4])["verify"]
    assert suites[4].get("skipped") == "1" and old.find("skipped").get("message").startswith("skipped: unchanged")


def test_junit_validates_against_the_schema_jenkins_reads(made, gates, tmp_path):
    schema = xmlschema.XMLSchema(SCHEMA)
    entry, verification = made["mixed"].verifications[0]
    stopped = (dataclasses.replace(entry, status="changed", note="it changed during the run"), verification)
    skipped = (DrillArchive("/b/old.tar", "m", {}, "deferred", "budget used up"), None)
    for n, (result, gated) in enumerate([(made["mixed"], gates), (made["intact"], []),
                                         (with_entries(made["mixed"], failed_entry("/b/x"), stopped, skipped), gates)]):
        path = tmp_path / f"junit-{n}.xml"
        junit_report.write(result, gated, path)
        schema.validate(path)


def test_junit_reads_as_gitlab_reads_it(made, gates, tmp_path):
    """GitLab (lib/gitlab/ci/parsers/test/junit.rb) walks testsuites > testsuite > testcase and takes
    the status from the first of failure, error, skipped and the details from its text; Rails'
    Hash.from_xml reads a ``type`` attribute as a type to cast the text to, so none may be one."""
    root = junit(with_entries(made["mixed"], failed_entry("/b/x")), gates, tmp_path)
    assert root.tag == "testsuites"
    statuses = []
    for suite in root.findall("testsuite"):
        for case in suite.findall("testcase"):
            assert case.get("name") and case.get("classname").startswith("archcheck.")
            status = next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "success")
            if status != "success":
                element = case.find(status)
                assert element.text and element.get("type") not in (
                    "array", "file", "symbol", "date", "datetime", "dateTime", "integer", "float", "decimal",
                    "boolean", "string", "yaml", "base64Binary")
            statuses.append(status)
    assert statuses.count("failure") == 3 and statuses.count("error") == 1


# --- GitHub Actions ----------------------------------------------------------------------------

COMMAND = re.compile(r"::(error|warning|notice) file=([^:,\r\n]*),title=([^:,\r\n]*)::([^\r\n]*)")


def unescape(text: str) -> str:
    """What the runner makes of an escaped value."""
    for escaped, char in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(escaped, char)
    return text


def test_escaping_per_githubs_rules():
    assert github_report.escape_data("100%\r\n::x: a,b") == "100%25%0D%0A::x: a,b"
    assert github_report.escape_property("100%\r\n::x: a,b") == "100%25%0D%0A%3A%3Ax%3A a%2Cb"


def test_github_annotations_cannot_be_forged_by_a_member_name(made, gates):
    lines = github_report.commands(made["mixed"], gates)
    parsed = [COMMAND.fullmatch(line) for line in lines]
    assert all(parsed), lines  # one command per line, properties without a bare ':' or ','
    got = [(m[1], unescape(m[2]), unescape(m[3])) for m in parsed]
    clean, bad, evil = str(made["clean"]), str(made["bad"]), str(made["evil"])
    assert got == [("error", clean, "POLICY_REQUIRED"), ("error", bad, "TAR_HEADER_CHECKSUM"),
                   ("error", evil, "TAR_TRUNCATED"), ("warning", evil, "TAR_UNSAFE_PATH"),
                   ("notice", clean, "drift and changes"), ("notice", clean, "diff")]
    truncated = unescape(parsed[2][4])
    assert "\n" not in truncated and "%0A" in truncated  # the name's own '%0A' stays text
    assert truncated.startswith("archive ends inside /") and "evil\\n::error::x %0A 100% <b>|`tick`" in truncated
    assert f"member '{made['member']}'".replace("\n", "\\n") in truncated
    assert "%250A 100%25" in lines[2]  # escaped, so GitHub's unescaping gives the text back
    assert unescape(parsed[5][4]) == "against old.tar.zst: 1 added, mtime drift on 3"
    assert unescape(parsed[4][4]) == "1 DIFF_ADDED"


def test_github_annotations_are_limited(made, gates):
    lines = github_report.commands(with_entries(made["mixed"], failed_entry("/b/x")), gates, limit=3)
    assert lines[:2] == ["::error file=/b/x,title=ARCHIVE_FAILED::failed: cannot read it: Permission denied",
                         f"::error file={made['clean']},title=POLICY_REQUIRED::no member matches the required "
                         "pattern 'etc/missing-*'"]
    assert lines[3] == "::notice title=archcheck::4 more annotations not shown: see the step summary or the JSON report"
    assert len(lines) == 4


def test_github_step_summary_appends_and_escapes(made, gates, tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("## an earlier step\n")
    github_report.write_summary(made["mixed"], gates, path)
    text = path.read_text()
    drill = made["mixed"].drill.id
    assert text.startswith(f"## an earlier step\n\n### archcheck {drill}: ❌ corrupt (exit 1)\n\n"
                           "| archive | status | verdict | findings | gate |\n")
    assert f"| {made['clean']} | complete | ✅ intact | 1 changed, 1 policy | ❌ failed (exit 4) |\n" in text
    assert f"| {made['bad']} | complete | ❌ corrupt | 1 corruption, 1 info |  |\n" in text
    assert f"| {made['bad']} | TAR_HEADER_CHECKSUM | corruption | error | bytes {made['header']}-" in text
    assert (f"| {made['clean']} | required | ❌ fail | no member matches the required pattern "
            "'etc/missing-&#42;' |\n") in text
    assert "evil\\n::error::x" not in text  # ':' and '\' are character references too
    assert "evil&#92;n&#58;&#58;error&#58;&#58;x %0A 100% &#60;b&#62;&#124;&#96;tick&#96;" in text
    for line in text.splitlines():
        if line.startswith("| ") and "TAR_" in line:
            assert line.count("|") == 7, line  # six cells: no name adds one
    assert "<" not in text.replace("<!--", "") and "`" not in text
    github_report.write_summary(made["intact"], [], path)  # a second step's summary follows the first
    assert path.read_text().startswith(text) and path.read_text().count("### archcheck") == 2


# --- Prometheus --------------------------------------------------------------------------------

def metrics(path: Path) -> dict[str, list]:
    """Samples by name (a histogram's _bucket, _sum and _count apart), as Prometheus parses them."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(found: dict, name: str, **labels) -> float:
    [sample] = [s for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    return sample.value


def test_prometheus_metrics_of_an_intact_drill(made, tmp_path):
    path = tmp_path / "textfile" / "archcheck.prom"
    result = made["intact"]
    prometheus_report.write(result, [], path, now=T1)
    assert [p.name for p in path.parent.iterdir()] == ["archcheck.prom"]  # no temp file left
    found = metrics(path)
    drill = result.drill.id
    assert value(found, "archcheck_last_success_timestamp_seconds", drill=drill) == T1.timestamp()
    assert value(found, "archcheck_last_run_timestamp_seconds", drill=drill) == T1.timestamp()
    assert value(found, "archcheck_exit_code", drill=drill) == 0 and value(found, "archcheck_success") == 1
    weird = str(made["weird"])
    assert {s.labels["archive"] for s in found["archcheck_archive_verified_bytes"]} == {str(made["clean"]), weird}
    size = made["weird"].stat().st_size
    assert value(found, "archcheck_archive_verified_bytes", archive=weird) == size
    assert value(found, "archcheck_archive_size_bytes", archive=weird) == size
    assert value(found, "archcheck_coverage_bytes") == 2 * size == value(found, "archcheck_coverage_verified_bytes")
    assert value(found, "archcheck_coverage_oldest_unverified_age_seconds") == 0
    assert value(found, "archcheck_duration_seconds") == result.drill.runs[-1]["seconds"]
    seconds = [s.seconds for _, v in result.verifications for s in v.manifest.segments]
    assert len(seconds) == 2 and all(0 < s < 30 for s in seconds)
    buckets = {s.labels["le"]: s.value for s in found["archcheck_segment_hash_seconds_bucket"]}
    assert list(buckets) == ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf"]
    assert buckets["+Inf"] == 2 and buckets["0.05"] == sum(s <= 0.05 for s in seconds)
    assert value(found, "archcheck_segment_hash_seconds_count") == 2
    assert math.isclose(value(found, "archcheck_segment_hash_seconds_sum"), sum(seconds))
    assert '/we\\"ird\\\\na\\nme.tar.zst"' in path.read_text()  # escaped as the format says


def test_prometheus_last_success_is_carried_over_a_failing_run(made, gates, tmp_path):
    path = tmp_path / "archcheck.prom"
    assert prometheus_report.last_success(path) is None
    prometheus_report.write(made["intact"], [], path, now=T1)
    later = T1 + timedelta(hours=30)
    prometheus_report.write(made["mixed"], gates, path, now=later)
    found = metrics(path)
    assert value(found, "archcheck_last_success_timestamp_seconds") == T1.timestamp()
    assert value(found, "archcheck_last_run_timestamp_seconds") == later.timestamp()
    assert value(found, "archcheck_success") == 0 and value(found, "archcheck_exit_code") == 1
    bad, evil, clean = str(made["bad"]), str(made["evil"]), str(made["clean"])
    assert value(found, "archcheck_findings", archive=bad, category="corruption", code="TAR_HEADER_CHECKSUM") == 1
    assert value(found, "archcheck_findings", archive=evil, category="corruption", code="TAR_TRUNCATED") == 1
    assert value(found, "archcheck_findings", archive=clean, category="policy", code="POLICY_REQUIRED") == 1
    assert value(found, "archcheck_archive_exit_code", archive=bad) == 1
    assert value(found, "archcheck_gate_passed", archive=clean) == 0
    assert value(found, "archcheck_archive_verified_bytes", archive=evil) == made["evil"].stat().st_size
    # a run that fails with no earlier success says so, and a success after it is the new time
    assert value(metrics(_written(made["mixed"], tmp_path / "fresh.prom", later)),
                 "archcheck_last_success_timestamp_seconds") == 0
    prometheus_report.write(made["intact"], [], path, now=later + timedelta(hours=1))
    assert prometheus_report.last_success(path) == (later + timedelta(hours=1)).timestamp()
    path.write_text("not metrics at all\narchcheck_last_success_timestamp_seconds{x=\"1\"} garbage\n")
    assert prometheus_report.last_success(path) is None


def _written(result, path: Path, now: datetime) -> Path:
    prometheus_report.write(result, [], path, now=now)
    return path


# --- what the outputs are built from -----------------------------------------------------------

def test_segment_hashing_time_is_recorded_and_older_manifests_still_load(made):
    from archcheck.manifest import SegmentRecord
    record = made["intact"].verifications[0][1].manifest.segments[0]  # as loaded from the manifest's log
    assert record.seconds > 0 and SegmentRecord.from_json(record.to_json()) == record
    older = record.to_json()
    del older["seconds"]
    assert SegmentRecord.from_json(older).seconds is None


def test_findings_about_a_backup_set_are_reported_too(made, tmp_path):
    folder = "/backups/pg/2026-11-26"
    missing = Finding.of("WAL_SEGMENT_MISSING", Location(folder, relation="pg_wal/000000010000000000000003"),
                         segment="000000010000000000000003")
    result = dataclasses.replace(made["intact"], drill=dataclasses.replace(made["intact"].drill,
                                                                          findings=[missing.to_json()]))
    suite = junit(result, [], tmp_path).findall("testsuite")[2]
    assert suite.get("name") == folder and suite.get("failures") == "1"
    assert cases(suite)["backup set: pages"].find("failure").get("message") == "WAL_SEGMENT_MISSING"
    xmlschema.XMLSchema(SCHEMA).validate(tmp_path / "junit.xml")
    assert github_report.commands(result, []) == [
        f"::error file={folder},title=WAL_SEGMENT_MISSING::WAL segment 000000010000000000000003, needed to make "
        "the backup consistent, is missing at relation pg_wal/000000010000000000000003 (main fork)"]
    found = metrics(_written(result, tmp_path / "m.prom", T1))
    assert value(found, "archcheck_findings", archive=folder, code="WAL_SEGMENT_MISSING") == 1
    assert value(found, "archcheck_success") == 0 and value(found, "archcheck_exit_code") == 1
