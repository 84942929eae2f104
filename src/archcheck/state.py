"""Where runs keep their state: XDG state dir, ARCHCHECK_STATE_DIR or --state-dir."""
from __future__ import annotations

import os
from pathlib import Path


def state_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("ARCHCHECK_STATE_DIR"):
        return Path(os.environ["ARCHCHECK_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "archcheck"
