"""Where runs keep their state: XDG state dir, ARCHCHECK_STATE_DIR or --state-dir."""
from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path


def state_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("ARCHCHECK_STATE_DIR"):
        return Path(os.environ["ARCHCHECK_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "archcheck"


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"verify-{stamp}-{secrets.token_hex(3)}"


def run_manifest_path(root: Path, run_id: str) -> Path:
    return root / "runs" / run_id / "manifest.json"
