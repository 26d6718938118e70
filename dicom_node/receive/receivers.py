"""Extra receiving processes, so that concurrent associations are not serialised by one
Python interpreter lock.

`node.receive_processes = N` runs N - 1 receiver processes beside the node's own Store SCP.
The node alone listens on the port; each association it accepts goes to the process serving
the fewest associations at that moment (itself included; ties in turn), the socket passed
over a UNIX pipe (SCM_RIGHTS) before a byte is read, so TLS, the caller policy and the DICOM
exchange all happen in the receiving process, which writes into the same spool with the same
checks (dcmtk's `storescp --fork` forks a process per association for the same reason). A
receiver reports every stored instance, refused and ended association to the node; the node
keeps the one series tracker, the audit trail and the metrics. A receiver that dies is
restarted; receivers exit when the node stops or disappears.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import astuple
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import recv_handle, send_handle
from types import FrameType
from typing import Any, cast

import structlog

from config.settings import Settings
from dicom_node import metrics
from dicom_node.logging import configure_logging
from dicom_node.receive.acceptor import Peer
from dicom_node.receive.spool import Spool
from dicom_node.receive.store_scp import InstanceHeader, StoreSCP

log = structlog.get_logger(__name__)

RESTART_DELAY_SECONDS = 1.0
READY_TIMEOUT_SECONDS = 60.0


class ReceiverStartError(OSError):
    """A receiver process did not come up (its reason is in the message)."""


def receive_process_count(configured: int) -> int:
    """`node.receive_processes`, with 0 meaning one per CPU core, at most 4."""
    return configured or max(
        1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )


StoredCallback = Callable[[Peer, InstanceHeader], None]
Report = tuple[Any, ...]  # ("stored", ae title, address, port, *header), ("closed",), ("rejected", ae, address), ...
RejectedCallback = Callable[[str, str], None]


class _Receiver:
    """The node's side of one receiver process: its process, pipes and open associations."""

    def __init__(self, process: BaseProcess, reports: Connection, sockets: Connection) -> None:
        self.process, self.reports, self.sockets = process, reports, sockets
        self.associations = 0


class ReceiverPool:
    """Starts, feeds, watches and stops the extra receiver processes of one node.

    `local_associations()` says how many associations the node serves itself; `hand_off` is
    what the node's acceptor calls (through `Node._hand_off_to_receiver`) to give a new
    connection to the least busy process.
    """

    def __init__(
        self,
        settings: Settings,
        count: int,
        *,
        spool: Spool,
        local_associations: Callable[[], int],
        on_stored: StoredCallback,
        on_rejected: RejectedCallback,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """`on_lost()`: called (in the reports thread) after a receiver died and its partial
        files were removed: it may have stored instances it never reported."""
        self.settings, self.count, self.spool = settings, count, spool
        self.local_associations = local_associations
        self.on_stored, self.on_rejected, self.on_lost = on_stored, on_rejected, on_lost
        self._context = multiprocessing.get_context("spawn")
        self._receivers: dict[Connection, _Receiver] = {}  # by their reports pipe
        self._lock = threading.Lock()
        self._turn = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._respawn_at: list[float] = []  # monotonic times at which to replace dead receivers

    def start(self) -> None:
        """Start the receivers and return once each is ready (ReceiverStartError otherwise)."""
        for _ in range(self.count):
            self._spawn()
        for receiver in list(self._receivers.values()):
            ready = receiver.reports.poll(READY_TIMEOUT_SECONDS)
            report: Report = receiver.reports.recv() if ready else ("timeout",)
            if report[0] != "ready":
                self.stop()
                raise ReceiverStartError(
                    f"receiver process {receiver.process.pid} did not start: "
                    f"{report[1] if len(report) > 1 else report[0]}"
                )
        self._thread = threading.Thread(target=self._listen, name="receiver-reports", daemon=True)
        self._thread.start()
        log.info("receiver processes started", count=self.count, pids=self.pids)

    def stop(self, timeout: float = 10) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        receivers = list(self._receivers.values())
        for receiver in receivers:
            with contextlib.suppress(OSError):
                receiver.reports.send(("stop",))
        deadline = time.monotonic() + timeout
        for receiver in receivers:
            receiver.process.join(max(0.1, deadline - time.monotonic()))
            if receiver.process.is_alive():
                log.warning("receiver process did not stop: terminated", pid=receiver.process.pid)
                receiver.process.terminate()
                receiver.process.join(2)
            receiver.reports.close()
            receiver.sockets.close()
        self._receivers.clear()

    @property
    def pids(self) -> list[int | None]:
        return [r.process.pid for r in self._receivers.values()]

    def alive(self) -> int:
        """Receiver processes running now (a dead one is replaced about a second later)."""
        with self._lock:
            return sum(r.process.is_alive() for r in self._receivers.values())

    def hand_off(self, conn: socket.socket) -> bool:
        """Pass `conn` to the least busy receiver; False: the node serves it itself."""
        with self._lock:
            loads: list[tuple[int, _Receiver | None]] = [(self.local_associations(), None)]
            loads += [(r.associations, r) for r in self._receivers.values() if r.process.is_alive()]
            least = min(load for load, _ in loads)
            candidates = [r for load, r in loads if load == least]
            self._turn += 1
            receiver = candidates[self._turn % len(candidates)]
            if receiver is None:
                return False
            try:
                send_handle(receiver.sockets, conn.fileno(), receiver.process.pid)
            except OSError as exc:
                log.warning("hand-off to a receiver failed: served here", pid=receiver.process.pid, error=str(exc))
                return False
            receiver.associations += 1
            return True

    def _spawn(self) -> None:
        reports, their_reports = self._context.Pipe(duplex=True)
        sockets, their_sockets = self._context.Pipe(duplex=True)  # a UNIX socket pair: it carries file descriptors
        process = self._context.Process(
            target=run_receiver,
            args=(self.settings, their_reports, their_sockets),
            name="ldct-node-receiver",
            daemon=True,
        )
        process.start()
        their_reports.close()
        their_sockets.close()
        with self._lock:
            self._receivers[reports] = _Receiver(process, reports, sockets)

    def _listen(self) -> None:
        """Apply the receivers' reports; restart a receiver whose pipe closed (it died)."""
        while not self._stopping.is_set():
            while self._respawn_at and self._respawn_at[0] <= time.monotonic():
                self._respawn_at.pop(0)
                self._spawn()  # its "ready" arrives as a report
            if not self._receivers:
                time.sleep(0.2)
                continue
            for ready in wait(list(self._receivers), timeout=0.2):
                connection = cast(Connection, ready)  # wait() gives back what it was given
                try:
                    report = connection.recv()
                except (EOFError, OSError):
                    self._replace(connection)
                    continue
                try:
                    self._apply(self._receivers[connection], report)
                except Exception:  # a bad report must not stop the others
                    log.exception("receiver report failed", kind=report[0] if report else None)

    def _apply(self, receiver: _Receiver, report: Report) -> None:
        kind = report[0]
        if kind == "stored":
            _, ae_title, address, port, *uids = report
            self.on_stored(Peer(ae_title, address, port), InstanceHeader(*uids))
        elif kind == "closed":
            with self._lock:
                receiver.associations = max(0, receiver.associations - 1)
        elif kind == "rejected":
            self.on_rejected(report[1], report[2])
        elif kind == "ready":
            log.info("receiver process restarted and ready", pid=receiver.process.pid)

    def _replace(self, connection: Connection) -> None:
        with self._lock:
            receiver = self._receivers.pop(connection)
        receiver.reports.close()
        receiver.sockets.close()
        receiver.process.join(1)
        if self._stopping.is_set():
            return
        log.error(
            "receiver process died: restarting",
            pid=receiver.process.pid,
            exitcode=receiver.process.exitcode,
            associations_lost=receiver.associations,
        )
        metrics.RECEIVER_RESTARTS.inc()
        removed = self.spool.clean_temporary()  # its partial files were never acknowledged
        if removed:
            log.warning("removed partial files of the dead receiver", count=removed)
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:  # the replacement must still start
                log.exception("recovering after the dead receiver failed")
        self._respawn_at.append(time.monotonic() + RESTART_DELAY_SECONDS)  # not at once: no tight crash loop


def run_receiver(settings: Settings, connection: Connection, sockets: Connection) -> None:
    """A receiver process: serves the associations the node hands it, reporting back."""
    configure_logging(settings.logging.format, settings.logging.level)
    # Ctrl-C in a terminal reaches the whole process group: the node stops its receivers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)  # e.g. systemd stopping the whole unit
    send_lock = threading.Lock()

    def report(*message: object) -> None:
        with send_lock:
            connection.send(message)

    def stored(peer: Peer, header: InstanceHeader) -> None:
        report("stored", peer.ae_title, peer.address, peer.port, *astuple(header))

    scp = StoreSCP.from_settings(
        settings,
        Spool.from_settings(settings),
        on_stored=stored,
        on_rejected=lambda ae_title, address: report("rejected", ae_title, address),
        on_closed=lambda: report("closed"),
    )
    threading.Thread(target=_serve_handed_sockets, args=(scp, sockets), name="receiver-sockets", daemon=True).start()
    report("ready")
    log.info("receiver ready", pid=os.getpid())
    try:
        while True:  # until the node says stop or its end of the pipe closes (it died)
            if connection.recv()[0] == "stop":
                break
    except (EOFError, OSError, SystemExit):
        pass
    finally:
        scp.stop()


def _serve_handed_sockets(scp: StoreSCP, sockets: Connection) -> None:
    """Serve every connection the node passes over `sockets` until that pipe closes."""
    while True:
        try:
            fd = recv_handle(sockets)
        except (EOFError, OSError):
            return
        conn = socket.socket(fileno=fd)
        try:
            address = conn.getpeername()
        except OSError:  # the peer left before we got it
            conn.close()
            continue
        scp.acceptor.serve(conn, address)


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
