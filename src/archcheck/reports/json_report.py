"""The JSON report (schema ``archcheck.report`` version 1), documented in docs/report.md."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..findings import VERDICTS, verdict
from ..manifest import Manifest, atomic_file, iter_members

SCHEMA, VERSION = "archcheck.report", 1


def _sort_key(finding: dict) -> tuple:
    loc = finding["location"]
    return (loc.get("byte_range", [float("inf")])[0], loc.get("uncompressed_offset", -1), finding["code"])


def build(manifest: Manifest, manifest_path: Path | None = None) -> dict[str, Any]:
    from .. import __version__
    findings = manifest.findings
    result = verdict(findings, complete=manifest.status == "complete")
    segments = manifest.segments
    return {
        "schema": SCHEMA, "version": VERSION, "archcheck_version": __version__,
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
            "stream": {k: v for k, v in manifest.stream.items() if k != "nonce"},
            "findings": dict(Counter(f.category.value for f in findings)),
        },
        "findings": sorted((f.to_json() for f in findings), key=_sort_key),
        "manifest": str(manifest_path) if manifest_path else None,
    }


def write(manifest: Manifest, path: Path, manifest_path: Path) -> None:
    """The report, with the members streamed from their file rather than held in memory."""
    head = json.dumps(build(manifest, manifest_path), indent=1)
    with atomic_file(path) as f:
        f.write(head[:-2].encode() + b',\n "members": [')
        for i, member in enumerate(iter_members(manifest, manifest_path)):
            f.write((",\n  " if i else "\n  ").encode() + json.dumps(member, ensure_ascii=False).encode())
        f.write(b"\n ]\n}\n")
