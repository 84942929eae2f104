"""The implementation gives what the oracle recorded (fixtures/oracle/expected.json, recorded
from the Python implementation before the native core replaced it) on every case of the
corpus: 35 archives made by real tar, zstd and pzstd, and 840 seeded mutations of them.

Where the new implementation is right and the old one was wrong, the case is in
fixtures/oracle/corrected.json with the rule that explains it (fixtures/oracle/correct.py) and
its new outcome, which is then held exactly; nothing else may differ."""
from __future__ import annotations

import json
import sys

import pytest

from oracle import ORACLE, canonical, case_bytes, cases
from oracle_run import outcome

sys.path.insert(0, str(ORACLE))
from correct import RULES  # noqa: E402

EXPECTED = json.loads((ORACLE / "expected.json").read_text())
CORRECTED = json.loads((ORACLE / "corrected.json").read_text())  # name -> {why, outcome}


def _batches(size: int = 125) -> list[list[dict]]:
    listed = cases()
    return [listed[i:i + size] for i in range(0, len(listed), size)]


@pytest.mark.parametrize("batch", _batches(), ids=lambda b: f"{b[0]['name']}..")
def test_the_core_gives_what_the_oracle_recorded(batch):
    differ = {}
    for case in batch:
        got = canonical(outcome(case_bytes(case)), full_members=not case["ops"])
        want = CORRECTED[case["name"]]["outcome"] if case["name"] in CORRECTED else EXPECTED[case["name"]]
        if got != want:
            differ[case["name"]] = _difference(want, got)
    assert not differ, json.dumps(differ, indent=1)[:6000]


def _difference(expected: dict, got: dict) -> dict:
    return {key: {"expected": expected.get(key), "got": got.get(key)}
            for key in sorted(set(expected) | set(got)) if expected.get(key) != got.get(key)}


def test_every_case_is_recorded_and_every_correction_is_explained():
    names = {case["name"] for case in cases()}
    assert names == set(EXPECTED) and set(CORRECTED) <= names
    assert all(correction["why"] and set(correction["why"]) <= set(RULES) for correction in CORRECTED.values())
    assert all(correction["outcome"] != EXPECTED[name] for name, correction in CORRECTED.items())
