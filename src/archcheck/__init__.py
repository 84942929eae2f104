"""archcheck: prove that backup archives would restore, without restoring them."""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

# The public API, loaded on first use: worker processes import archcheck.worker without
# paying for asyncio and the coordinator's modules (their start-up is on the critical path).
_EXPORTS = {
    "verify": "api", "Verification": "api", "run_drill": "api", "resume": "api", "run_plan": "api",
    "drill_status": "api", "DrillResult": "api",
    "Finding": "findings", "Location": "findings", "Category": "findings", "Severity": "findings",
    "CATALOGUE": "findings", "ALL_LAYERS": "layers",
    "ArchcheckError": "errors", "UsageError": "errors", "SourceError": "errors",
    "UnsupportedArchive": "errors", "SourceChanged": "errors", "StateError": "errors", "WorkerCrashed": "errors",
    "ExitCode": "status",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'archcheck' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
