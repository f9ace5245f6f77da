"""Wildcard matching (PS3.4 C.2.2.2.4) in time linear in the stored value's length.

A key such as ``*A*A*A*B`` compiled to one regular expression (``.*A.*A.*A.*B``) backtracks:
the work grows with the value's length to the power of the number of ``*``, and Python's
``re`` holds the GIL for the whole match, so one C-FIND once froze every association of the
server for minutes. Here ``*`` runs are collapsed and the key is cut at each ``*`` into
segments of fixed width (literal characters and ``?``). A value matches when the first
segment matches its start, the last its end, and the others can be placed left to right
without overlap; placing each at its leftmost position is always right (it leaves the most
room for the rest), so no choice is ever revisited. Each segment is a regular expression
without quantifiers, searched once from where the previous one ended: at most
``len(value) * len(segment)`` steps per segment, so ``len(value) * len(key)`` in all.

The key itself is bounded (:data:`MAX_KEY_LENGTH`, :data:`MAX_STARS`): a longer one is
refused ``0xC000`` before any work is done (docs/conformance.md, section 2.5.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mimic_server.errors import QueryError, Status

#: Characters in one wildcard key value (a PN of three 64-character groups fits).
MAX_KEY_LENGTH = 256
#: ``*`` in one wildcard key value, after runs of ``*`` are collapsed into one.
MAX_STARS = 16


def collapse_stars(key: str) -> str:
    """``key`` with every run of ``*`` made one ``*`` (the same set of matches)."""
    return re.sub(r"\*{2,}", "*", key)


def check_bounds(keyword: str, key: str) -> str:
    """The collapsed key, or :class:`QueryError` ``0xC000`` when it is past the bounds."""
    collapsed = collapse_stars(key)
    if len(collapsed) > MAX_KEY_LENGTH:
        raise QueryError(
            f"{keyword}: wildcard key longer than {MAX_KEY_LENGTH}", Status.UNABLE_TO_PROCESS
        )
    if collapsed.count("*") > MAX_STARS:
        raise QueryError(
            f"{keyword}: more than {MAX_STARS} '*' in a key", Status.UNABLE_TO_PROCESS
        )
    return collapsed


@dataclass(frozen=True)
class WildcardPattern:
    """A compiled wildcard key: fixed-width segments between the ``*``."""

    segments: tuple[re.Pattern[str], ...]
    widths: tuple[int, ...]
    #: False when the key has no ``*``: one segment that must cover the whole value.
    starred: bool

    @classmethod
    def compile(cls, key: str, *, ignore_case: bool = False) -> WildcardPattern:
        """``key`` with ``*`` (any run of characters) and ``?`` (one character)."""
        parts = collapse_stars(key).split("*")
        flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
        segments = tuple(
            re.compile("".join("." if c == "?" else re.escape(c) for c in part), flags)
            for part in parts
        )
        return cls(segments, tuple(len(p) for p in parts), len(parts) > 1)

    def fullmatch(self, value: str) -> bool:
        """Whether the whole of ``value`` matches the key."""
        first, last = self.segments[0], self.segments[-1]
        if not self.starred:
            return first.fullmatch(value) is not None
        if sum(self.widths) > len(value):
            return False
        # The last segment is anchored at the end; the others must fit before it.
        end = len(value) - self.widths[-1]
        if last.fullmatch(value, end) is None or first.match(value, 0, end) is None:
            return False
        position = self.widths[0]
        for segment, width in zip(self.segments[1:-1], self.widths[1:-1], strict=True):
            if not width:
                continue
            found = segment.search(value, position, end)
            if found is None:
                return False
            position = found.end()
        return True
