"""Logging that a flood of identical failures cannot turn into a flood of lines."""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs a repeated message once per *interval*, saying how many were left out.

    An attacker who makes the server refuse thousands of requests a second must not also
    fill its logs with a line for each.

    :param logger: where to log.
    :param interval: the least time between two lines, in seconds.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next = 0.0
        self._left_out = 0

    def log(self, level: int, message: str, *args: object) -> None:
        """Log *message* (``%`` formatted with *args*) unless one was logged lately."""
        now = time.monotonic()
        if now < self._next:
            self._left_out += 1
            return
        self._next = now + self.interval
        if self._left_out:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, self._left_out, self.interval)
            self._left_out = 0
        self.logger.log(level, message, *args)
