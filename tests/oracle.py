"""The oracle: what every layer says of one archive, as canonical data, so that two
implementations can be compared case by case (tests/test_oracle.py, fixtures/oracle/)."""
from __future__ import annotations

import json
from pathlib import Path

import blake3

ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT / "fixtures" / "oracle"


def mutate(data: bytes, ops) -> bytes:
    """The property tests' operations: flip a bit, truncate, insert a run, zero a run."""
    out = bytearray(data)
    for kind, where, value in ops:
        if not out:
            break
        pos = where % len(out)
        if kind == "flip":
            out[pos] ^= 1 << (value % 8)
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = bytes([value % 256]) * (1 + value % 700)
        else:  # zero a run
            out[pos:pos + 1 + value % 4096] = bytes(len(out[pos:pos + 1 + value % 4096]))
    return bytes(out)


def cases() -> list[dict]:
    return json.loads((ORACLE / "cases.json").read_text())


def case_bytes(case: dict) -> bytes:
    return mutate((ORACLE / "corpus" / case["base"]).read_bytes(), case["ops"])


RECORDED_FIELDS = 10


def canonical(result: dict, full_members: bool) -> dict:
    """Members in full for a base, by digest for a mutation (the JSON stays small)."""
    # the fields the recording holds: owner fields (uid, gid, uname, gname) came after it and are
    # checked by tests/test_gate.py's catalogs
    members = [list(m)[:RECORDED_FIELDS] for m in result.pop("members")]
    result["member_list"] = members if full_members else None
    result["members_digest"] = blake3.blake3(json.dumps(members).encode()).hexdigest()
    result["findings"] = sorted(result["findings"], key=lambda f: json.dumps(f, sort_keys=True))
    return json.loads(json.dumps(result))  # tuples become lists, as in the recording
