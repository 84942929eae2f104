"""The JSON report (schema ``archcheck.report`` version 2), documented in docs/report.md: one
drill, with one entry per archive built from its manifest alone."""
from __future__ import annotations

import json
from collections import Counter

import blake3
from pathlib import Path
from typing import Any

from ..findings import VERDICTS, verdict
from ..manifest import Manifest, atomic_file, iter_members

SCHEMA, VERSION = "archcheck.report", 2


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
            "stream": {k: v for k, v in manifest.stream.items() if k not in ("nonce", "checkpoint")},
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
    return {"schema": SCHEMA, "version": VERSION, "archcheck_version": __version__, "drill": drill.id,
            "status": drill.status, "verdict": result.verdict, "exit_code": result.exit_code,
            "started": drill.created, "finished": drill.updated, "plan": drill.plan, "limits": drill.limits,
            "coverage": result.coverage, "runs": drill.runs,
            "findings": sorted((f.to_json() for f in result.findings), key=_sort_key)}


def _archive_entry(entry: Any, verification: Any) -> dict[str, Any]:
    """The drill's word on the archive (status, note) wins over its manifest's: a manifest left
    by an earlier run says "running" of an archive that has since changed or failed."""
    head = {"path": entry.path, "status": entry.status, "note": entry.note}
    if entry.status in ("failed", "changed"):
        head["exit_code"] = entry.exit_code if entry.status == "failed" else 3
    if verification is None:
        return {**head, "verdict": "incomplete"} if "exit_code" in head else head
    return {**build(verification.manifest, verification.manifest_path), **head}


def sealed_bytes(result: Any) -> bytes:
    """The report sealed into the audit ledger: members are named by their file's digest rather
    than listed, so it stays small however many members there are."""
    archives = []
    for entry, verification in result.verifications:
        item = _archive_entry(entry, verification)
        info = verification.manifest.members if verification else {}
        if info:
            members = Path(verification.manifest_path).parent / info["file"]
            item["members_file"] = {"path": str(members), "count": info["count"], "blake3": _file_digest(members)}
        archives.append(item)
    return (json.dumps({**build_drill(result), "archives": archives}, indent=1) + "\n").encode()


def _file_digest(path: Path) -> str:
    digest = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write(result: Any, path: Path) -> None:
    """The full report, with each archive's members streamed from their file rather than held
    in memory."""
    with atomic_file(path) as f:
        f.write(json.dumps(build_drill(result), indent=1)[:-2].encode() + b',\n "archives": [')
        for n, (entry, verification) in enumerate(result.verifications):
            item = json.dumps(_archive_entry(entry, verification), indent=1)
            f.write((",\n" if n else "\n").encode() + item[:-2].encode() + b',\n "members": [')
            members = iter_members(verification.manifest, verification.manifest_path) if verification else ()
            for i, member in enumerate(members):
                f.write((",\n  " if i else "\n  ").encode() + json.dumps(member, ensure_ascii=False).encode())
            f.write(b"\n ]\n}")
        f.write(b"\n ]\n}\n")
