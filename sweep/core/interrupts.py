"""Ctrl-C and SIGTERM: the first one stops the command, the ones right behind it are absorbed.

A user who presses Ctrl-C twice, or a terminal that sends SIGINT to a worker which its parent
then sends SIGTERM, must not stop the code that records the first interruption (the trial's
reason and its queued retry, Optuna's FAIL, the one line the command prints): a second
KeyboardInterrupt raised there left the trial FAIL with no reason and no retry, or printed a
traceback. So the first signal raises KeyboardInterrupt; signals within ``ABSORB_SECONDS`` of it,
or inside a ``held()`` section, are absorbed. A later one raises again: a user who insists,
after the first was swallowed by code that ignores exceptions (a garbage-collection callback),
can still stop the command.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

ABSORB_SECONDS = 5.0  # signals this soon after the first are taken as the same interruption
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_first: float | None = None  # monotonic time of the interruption being handled (None: none yet)
_holds = 0  # held() sections open: every signal is absorbed


def on_signal(signum, frame) -> None:
    """The handler of SIGINT and SIGTERM: KeyboardInterrupt on the first, nothing on those right behind it."""
    global _first
    now = time.monotonic()
    if _holds or (_first is not None and now - _first < ABSORB_SECONDS):
        if _first is None:
            _first = now
        return
    _first = now
    raise KeyboardInterrupt


def install() -> dict:
    """Make ``on_signal`` the handler of SIGINT and SIGTERM (SIGTERM ends a command as Ctrl-C
    does); returns the previous handlers, for ``restore``."""
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, on_signal)
    return previous


def restore(previous: dict) -> None:
    """Put back the handlers ``install`` replaced, and forget the interruption."""
    global _first
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    _first = None


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A section that a signal must not cut in two (recording an interruption, swapping a folder in):
    signals that arrive inside it are absorbed, and count as the interruption being handled."""
    global _holds
    _holds += 1
    try:
        yield
    finally:
        _holds -= 1


def ignore_until_exit() -> None:
    """The process is ending after an interruption: ignore SIGINT and SIGTERM through interpreter
    shutdown, which resets a Python handler to the default (a signal there killed the process
    with exit -2) but keeps an ignored signal ignored."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def interrupted() -> bool:
    """Whether a signal arrived (raised or absorbed) since ``install``."""
    return _first is not None
