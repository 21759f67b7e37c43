"""What kind of crash a run's `error` is: a field of its index entry (`error_kind`), read by memory.md's counts and
`next:`, never parsed from the text (older entries, written before the field, by the prefix their text began with)."""

from __future__ import annotations

import enum


class ErrorKind(str, enum.Enum):
    """What kind of crash a run's `error` is, stored beside it in the index entry (`error_kind`): the readers that
    act on it (memory.md's counts, `next:`) read this field, never the text."""
    KILLED = "killed"                  # killed outright (OOM killer, SIGKILL); recorded afterwards from its log
    RECOMPILED = "recompiled"          # a graph compiled in counted steps: budget seconds went to the compiler
    STOPPED_SHORT = "stopped_short"    # under max_steps, the hard limit ended it before them


# the text each kind's error began with before the field existed: how entries of older ledgers are read
LEGACY_PREFIXES = {ErrorKind.KILLED: "killed: ", ErrorKind.RECOMPILED: "recompiled after the warm-up",
                   ErrorKind.STOPPED_SHORT: "stopped at step"}


def error_kind(entry: dict) -> ErrorKind | None:
    """The kind of a run's crash: its entry's `error_kind`, or in an older entry, the prefix its error began with."""
    kind = entry.get("error_kind")
    if kind in ErrorKind._value2member_map_:
        return ErrorKind(kind)
    text = str(entry.get("error") or "")
    return next((k for k, prefix in LEGACY_PREFIXES.items() if text.startswith(prefix)), None)
