"""A stage's thread: it polls until stopped, and can be woken to poll at once.

Workers (poll: claim a job) and the dispatcher (poll: send what is due) run this way: woken
by their own process when there is work, they find what other processes queued at their next
poll.
"""

from __future__ import annotations

import threading

import structlog

log = structlog.get_logger(__name__)

ERROR_PAUSE_SECONDS = 5.0  # after an unexpected error (a database hiccup), before polling again


class PollingThread:
    """Calls `poll()` in a daemon thread until `stop()`: again at once while it finds work,
    otherwise after `poll_seconds` or as soon as `wake()` is called."""

    def __init__(self, name: str, poll_seconds: float) -> None:
        self.thread_name = name
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        """One round of work; True when there may be more to do right away."""
        raise NotImplementedError

    def started(self) -> None:
        """Called in the thread before the first poll."""

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Poll now rather than at the next interval."""
        self._wake.set()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        self.started()
        while not self._stop.is_set():
            self._wake.clear()
            try:
                busy = self.poll()
            except Exception:  # an error in one round must not end the thread
                log.exception("polling failed", thread=self.thread_name)
                self._stop.wait(ERROR_PAUSE_SECONDS)
                continue
            if not busy:
                self._wake.wait(self.poll_seconds)
