"""Exit codes and the precedence that combines them: a contract, listed in ``--help`` and the
README (a test compares both with this table)."""
from __future__ import annotations

import enum
from typing import Iterable


class ExitCode(enum.IntEnum):
    """What a command's exit status means. Append-only: a code never changes its meaning."""

    INTACT = 0
    CORRUPT = 1
    USAGE = 2
    INCOMPLETE = 3
    POLICY = 4
    UNUSABLE = 5
    BUSY = 6
    REFUSED = 7
    STATE = 8
    SEAL_FAILED = 9
    WORKER_FAILED = 10
    INTERNAL = 11

    @property
    def meaning(self) -> str:
        return MEANINGS[self]


MEANINGS = {  # one line each: --help shows them as they are
    ExitCode.INTACT: "intact: every requested layer of every archive checked, nothing wrong",
    ExitCode.CORRUPT: "corruption found (for audit verify: the ledger was tampered with)",
    ExitCode.USAGE: "usage error: a bad command line, option value or plan file",
    ExitCode.INCOMPLETE: "incomplete: not everything verified (resumable unless it changed)",
    ExitCode.POLICY: "policy violated (the CI gate): nothing corrupt, but a rule of --policy is broken",
    ExitCode.UNUSABLE: "an archive cannot be opened or is not a format archcheck verifies",
    ExitCode.BUSY: "the drill is being run by another process",
    ExitCode.REFUSED: "resume refused: no such drill, or it has ended",
    ExitCode.STATE: "state cannot be trusted or written (damaged, edited, unwritable)",
    ExitCode.SEAL_FAILED: "verdict reported, but sealing it in the audit ledger failed",
    ExitCode.WORKER_FAILED: "a worker process died (killed, out of memory); resumable",
    ExitCode.INTERNAL: "internal error: a bug in archcheck (ARCHCHECK_DEBUG=1 shows it)",
}

# When several apply (several archives, or a run that ends badly after findings): the first wins.
# Corruption is never hidden; then what stops archcheck from doing its job; incomplete last.
# Every code is ranked (a test checks), so combining can never drop one.
PRECEDENCE = (ExitCode.CORRUPT, ExitCode.INTERNAL, ExitCode.WORKER_FAILED, ExitCode.STATE, ExitCode.BUSY,
              ExitCode.REFUSED, ExitCode.USAGE, ExitCode.SEAL_FAILED, ExitCode.UNUSABLE, ExitCode.POLICY,
              ExitCode.INCOMPLETE,
              ExitCode.INTACT)


def combine(codes: Iterable[int]) -> ExitCode:
    """The exit code of several outcomes, by PRECEDENCE."""
    present = {ExitCode(c) for c in codes}
    return next((c for c in PRECEDENCE if c in present), ExitCode.INTACT)


def help_text() -> str:
    """The exit-code section of ``--help``."""
    lines = [f"  {int(code):>2}  {code.meaning}" for code in ExitCode]
    order = " > ".join(str(int(c)) for c in PRECEDENCE)
    return "Exit codes:\n" + "\n".join(lines) + f"\n  When several apply: {order}."
