"""Load progress: kernel compilation and weight loading, logged to the "qwen3_rs" logger and drawn as a
one-line progress bar on stderr."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

logger = logging.getLogger("qwen3_rs")

__all__ = ["LoadProgress"]


class LoadProgress:
    """The ``on_event`` callback of the engine's constructor.

    Called as ``(kind, done, total, name, cached, seconds)``: kind "kernel" when kernel ``done`` of
    ``total`` is ready (``cached``: nothing had to be compiled), kind "layers" when ``done`` of ``total``
    layers are loaded. ``show`` draws a bar on ``stream`` (default: stderr, when it is a terminal).
    """

    WIDTH = 24

    def __init__(self, show: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        if show is None:
            isatty = getattr(self.stream, "isatty", None)
            show = bool(isatty and isatty())
        self.show = show
        self.compiled = 0
        self.cached = 0
        self._open_line = False
        self._start = time.perf_counter()
        self._label = None

    def __call__(self, kind: str, done: int, total: int, name: str, cached: bool, seconds: float) -> None:
        if kind == "kernel":
            label = "compiling kernels"
            if cached:
                self.cached += 1
                logger.debug("kernel %s ready (cached) in %.3f s", name, seconds)
            else:
                self.compiled += 1
                logger.info("compiled kernel %s in %.2f s", name, seconds)
            if done == total:
                logger.info("%d kernels ready: %d compiled, %d from the cache", total, self.compiled, self.cached)
        else:
            label = "loading weights"
            if done == total:
                logger.info("loaded %d layers in %.1f s", total, time.perf_counter() - self._start)
        if self.show:
            self._draw(label, done, total)

    def _draw(self, label: str, done: int, total: int) -> None:
        if self._label not in (None, label) and self._open_line:
            self.stream.write("\n")
        self._label = label
        filled = self.WIDTH * done // max(total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[qwen3-rs] {label:<17} [{bar}] {done}/{total}")
        self._open_line = done < total
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends an unfinished progress line (a load that failed part way)."""
        if self.show and self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
