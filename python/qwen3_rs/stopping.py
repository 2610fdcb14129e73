"""Stop strings over streamed text: text is released only once it cannot be the start of a stop string."""

from __future__ import annotations

from collections.abc import Iterable

from . import errors

__all__ = ["StopMatcher"]


class StopMatcher:
    """Feed text pieces in order; get back what is safe to show and whether a stop string was completed.

    ``feed(piece) -> (text, stopped)``: ``text`` excludes the stop string and everything after it. A tail
    that could still grow into a stop string is held back until it can't, or until ``flush()``.
    """

    def __init__(self, stop_strings: str | Iterable[str]) -> None:
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        stops = list(stop_strings)
        for s in stops:
            if not isinstance(s, str) or not s:
                raise errors.InvalidArgumentError(f"stop_strings must be non-empty strings, got {s!r}")
        self.stop_strings = stops
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        text = self._held + piece
        first = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if first >= 0:
            self._held = ""
            self.stopped = True
            return text[:first], True
        hold = 0
        for s in self.stop_strings:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        self._held = text[len(text) - hold :]
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """The held-back text (generation ended without completing a stop string)."""
        out, self._held = self._held, ""
        return out
