"""The JSON report (schema ``archcheck.report`` version 3), documented in docs/report.md: one
drill, with one entry per archive built from its manifest alone. Members are named by their
log (files, lengths, digests), or listed on request."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..findings import VERDICTS, verdict
from ..manifest import Manifest, iter_members, output_file

SCHEMA, VERSION = "archcheck.report", 3


def _sort_key(finding: dict) -> tuple:
    loc = finding["location"]
    return (loc.get("byte_range", [float("inf")])[0], loc.get("uncompressed_offset", -1), finding["code"])


def build(manifest: Manifest, manifest_path: Path | None = None) -> dict[str, Any]:
    """One archive's entry."""
    findings = manifest.findings
    result = verdict(findings, complete=manifest.status in ("complete", "partial"))
    segments = manifest.segments
    return {
        "run_id": manifest.run_id, "status": manifest.status,
        "verdict": result, "exit_code": VERDICTS[result],
        "started": manifest.created, "finished": manifest.updated,
        "archive": manifest.archive.to_json(), "format": manifest.format,
        "layers": manifest.config.get("layers", []),
        "tree_root": manifest.tree_root,
        "summary": {
            "size": manifest.archive.size,
            "segments": len(segments),
            "segments_verified": sum(s.status == "done" for s in segments),
            "segment_reads_retried": sum(s.attempt > 1 for s in segments),
            "dead_letters": manifest.dead_letters,
            "stream": {k: v for k, v in manifest.stream.to_json().items() if k not in ("nonce", "checkpoint")},
            "findings": dict(Counter(f.category.value for f in findings)),
            "resumes": manifest.resumes,
        },
        # a resume that trusted what earlier runs verified, without reading it again
        "trusted_without_recheck": any(not r["rechecked"] for r in manifest.resumes),
        "findings": sorted((f.to_json() for f in findings), key=_sort_key),
        "manifest": str(manifest_path) if manifest_path else None,
    }


def build_drill(result: Any) -> dict[str, Any]:
    """The drill's head: everything but the archives."""
    from .. import __version__
    drill = result.drill
    head = {"schema": SCHEMA, "version": VERSION, "archcheck_version": __version__, "drill": drill.id,
            "status": drill.status, "verdict": result.verdict, "exit_code": result.exit_code,
            "started": drill.created, "finished": drill.updated, "plan": drill.plan, "limits": drill.limits,
            "coverage": result.coverage, "runs": drill.runs,
            "findings": sorted((f.to_json() for f in result.findings), key=_sort_key)}
    if getattr(result, "gates", None) or getattr(result, "gate_failure", None):
        head["gates"] = [gate.to_json() for gate in result.gates]
        head["gate_failure"] = result.gate_failure[0] if result.gate_failure else None
    return head


def _archive_entry(entry: Any, verification: Any) -> dict[str, Any]:
    """The drill's word on the archive (status, note) wins over its manifest's: a manifest left
    by an earlier run says "running" of an archive that has since changed or failed."""
    head = {"path": entry.path, "status": entry.status, "note": entry.note}
    if entry.status in ("failed", "changed"):
        head["exit_code"] = entry.exit_code if entry.status == "failed" else 3
    if verification is None:
        return {**head, "verdict": "incomplete"} if "exit_code" in head else head
    return {**build(verification.manifest, verification.manifest_path), **head}


def _members_log(verification: Any) -> dict[str, Any] | None:
    """Where an archive's members are: the log beside its manifest, each part with its length
    and BLAKE3, so that the report vouches for them without holding them."""
    info = verification.manifest.members if verification else {}
    if not info:
        return None
    return {"folder": str(Path(verification.manifest_path).parent), "count": info["count"],
            "fields": info["fields"], "parts": [{"file": f, "length": n, "blake3": d} for f, n, d in info["log"]]}


def sealed_bytes(result: Any) -> bytes:
    """The report sealed into the audit ledger: members named by their log, never listed, so it
    stays small however many members there are."""
    archives = []
    for entry, verification in result.verifications:
        item = _archive_entry(entry, verification)
        log = _members_log(verification)
        if log:
            item["members_log"] = log
        archives.append(item)
    return (json.dumps({**build_drill(result), "archives": archives}, indent=1) + "\n").encode()


def write(result: Any, path: Path, members: bool = False) -> None:
    """The report; ``members`` lists every member too, streamed from their log rather than held
    in memory (a million members make it hundreds of MB)."""
    with output_file(path) as f:
        f.write(json.dumps(build_drill(result), indent=1)[:-2].encode() + b',\n "archives": [')
        for n, (entry, verification) in enumerate(result.verifications):
            item = _archive_entry(entry, verification)
            log = _members_log(verification)
            if log:
                item["members_log"] = log
            text = json.dumps(item, indent=1)
            if not members:
                f.write((",\n" if n else "\n").encode() + text.encode())
                continue
            f.write((",\n" if n else "\n").encode() + text[:-2].encode() + b',\n "members": [')
            listed = iter_members(verification.manifest, verification.manifest_path) if verification else ()
            for i, member in enumerate(listed):
                f.write((",\n  " if i else "\n  ").encode() + json.dumps(member, ensure_ascii=False).encode())
            f.write(b"\n ]\n}")
        f.write(b"\n ]\n}\n")
