"""Whether the user pressed Ctrl-C during a command.

A Ctrl-C in a terminal signals the whole foreground process group: this process, and the
processes it started there (Dask workers). Python raises KeyboardInterrupt in the main thread,
but a thread of the orchestration libraries can fail first because a child process stopped
(a lost worker, a closed connection), and that error may reach the command's top level before,
or instead of, the KeyboardInterrupt. :func:`watching` records the SIGINT itself, so that the
command's outcome is "interrupted" whenever one was received, whichever error came first.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["seen", "watching"]

_seen = threading.Event()


def seen() -> bool:
    """Whether a SIGINT was received inside the current :func:`watching` block."""
    return _seen.is_set()


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """For the block: SIGINT is recorded (:func:`seen`), silences the orchestration libraries'
    loggers (their reports of the work failing under the interrupt are not the user's concern)
    and raises KeyboardInterrupt as usual.

    Only in the main thread with Python's default SIGINT handler (a test runner or an embedding
    program that installed its own handler keeps it)."""
    _seen.clear()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def note(signum: int, frame: object) -> None:
        _seen.set()
        _silence_libraries()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _silence_libraries() -> None:
    import logging

    families = ("prefect", "distributed", "asyncio")
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(families)]
    for name in (*families, *names):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
