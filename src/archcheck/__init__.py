"""archcheck: prove that backup archives would restore, without restoring them."""
from __future__ import annotations

__version__ = "0.1.0"

from .api import Verification, verify  # noqa: E402
from .errors import (ArchcheckError, SourceError, StateError, UnsupportedArchive,  # noqa: E402
                     UsageError, WindowTooLarge)
from .findings import CATALOGUE, Category, Finding, Location, Severity  # noqa: E402
from .layers import ALL_LAYERS  # noqa: E402

__all__ = ["verify", "Verification", "Finding", "Location", "Category", "Severity", "CATALOGUE",
           "ALL_LAYERS", "ArchcheckError", "UsageError", "SourceError", "UnsupportedArchive",
           "WindowTooLarge", "StateError", "__version__"]
