"""Reports render from the manifest alone."""
from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def safe_text(text: str) -> str:
    """Untrusted text (member names, paths) made inert: control, C1 and bidi characters are
    shown as escapes, so no escape sequence reaches a terminal. Markup is handled by
    rendering through rich ``Text`` objects, which never parse markup."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
