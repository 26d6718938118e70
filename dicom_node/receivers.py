"""Extra receiving processes, so that concurrent associations are not serialised by one
Python interpreter lock.

`node.receive_processes = N` runs N - 1 receiver processes beside the node's own Store SCP,
all listening on the same port (SO_REUSEPORT: the kernel spreads new associations across
them), each writing into the same spool with the same checks and policy (dcmtk's
`storescp --fork` forks a process per association for the same reason). A
receiver reports every stored instance and refused association to the node over a pipe;
the node keeps the one series tracker, the audit trail and the metrics. A receiver that
dies is restarted; receivers exit when the node stops or disappears.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Callable

import structlog

from config.settings import Settings
from dicom_node import metrics
from dicom_node.acceptor import Peer
from dicom_node.spool import Spool
from dicom_node.store_scp import InstanceHeader

log = structlog.get_logger(__name__)

RESTART_DELAY_SECONDS = 1.0
READY_TIMEOUT_SECONDS = 60.0


class ReceiverStartError(OSError):
    """A receiver process did not come up (its reason is in the message)."""


def ensure_port_free(address: str, port: int, wait_seconds: float = 5) -> None:
    """Fail when something already listens on the port: with SO_REUSEPORT a second node started
    by mistake would otherwise share it silently and take half the associations. Waits a few
    seconds first, for the receivers of a node that was just killed to notice and exit."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            socket.create_server((address, port), family=family).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ReceiverStartError(f"port {port} on {address} is in use: {exc.strerror or exc}") from exc
            time.sleep(0.2)


def receive_process_count(configured: int) -> int:
    """`node.receive_processes`, with 0 meaning one per CPU core, at most 4."""
    return configured or max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                    else os.cpu_count() or 1))


StoredCallback = Callable[[Peer, InstanceHeader], None]
RejectedCallback = Callable[[str, str], None]


class ReceiverPool:
    """Starts, watches and stops the extra receiver processes of one node."""

    def __init__(self, settings: Settings, count: int, port: int, *, spool: Spool, on_stored: StoredCallback,
                 on_rejected: RejectedCallback) -> None:
        self.settings, self.count, self.port, self.spool = settings, count, port, spool
        self.on_stored, self.on_rejected = on_stored, on_rejected
        self._context = multiprocessing.get_context("spawn")
        self._receivers: dict[Connection, multiprocessing.process.BaseProcess] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._respawn_at: list[float] = []  # monotonic times at which to replace dead receivers

    def start(self) -> None:
        """Start the receivers and return once each listens (ReceiverStartError otherwise)."""
        for _ in range(self.count):
            self._spawn()
        for connection, process in self._receivers.items():
            report = connection.recv() if connection.poll(READY_TIMEOUT_SECONDS) else ("timeout",)
            if report[0] != "ready":
                self.stop()
                raise ReceiverStartError(f"receiver process {process.pid} did not start: "
                                         f"{report[1] if len(report) > 1 else report[0]}")
        self._thread = threading.Thread(target=self._listen, name="receiver-reports", daemon=True)
        self._thread.start()
        log.info("receiver processes started", count=self.count,
                 pids=[p.pid for p in self._receivers.values()])

    def stop(self, timeout: float = 10) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for connection, process in list(self._receivers.items()):
            try:
                connection.send(("stop",))
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for connection, process in list(self._receivers.items()):
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("receiver process did not stop: terminated", pid=process.pid)
                process.terminate()
                process.join(2)
            connection.close()
        self._receivers.clear()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._receivers.values()]

    def _spawn(self) -> None:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=run_receiver, args=(self.settings, self.port, theirs),
                                        name="ldct-node-receiver", daemon=True)
        process.start()
        theirs.close()
        self._receivers[ours] = process

    def _listen(self) -> None:
        """Apply the receivers' reports; restart a receiver whose pipe closed (it died)."""
        while not self._stopping.is_set():
            while self._respawn_at and self._respawn_at[0] <= time.monotonic():
                self._respawn_at.pop(0)
                self._spawn()  # its "ready" arrives as a report
            if not self._receivers:
                time.sleep(0.2)
                continue
            for connection in wait(list(self._receivers), timeout=0.2):
                try:
                    report = connection.recv()
                except (EOFError, OSError):
                    self._replace(connection)
                    continue
                try:
                    self._apply(report)
                except Exception:  # noqa: BLE001 - a bad report must not stop the others
                    log.exception("receiver report failed", kind=report[0] if report else None)

    def _apply(self, report: tuple) -> None:
        kind = report[0]
        if kind == "ready":
            log.info("receiver process restarted and listening")
        elif kind == "stored":
            _, ae_title, address, port, study_uid, series_uid, sop_uid = report
            self.on_stored(Peer(ae_title, address, port),
                           InstanceHeader("", sop_uid, study_uid, series_uid))
        elif kind == "rejected":
            self.on_rejected(report[1], report[2])

    def _replace(self, connection: Connection) -> None:
        process = self._receivers.pop(connection)
        connection.close()
        process.join(1)
        if self._stopping.is_set():
            return
        log.error("receiver process died: restarting", pid=process.pid, exitcode=process.exitcode)
        metrics.RECEIVER_RESTARTS.inc()
        removed = self.spool.clean_temporary()  # its partial files were never acknowledged
        if removed:
            log.warning("removed partial files of the dead receiver", count=removed)
        self._respawn_at.append(time.monotonic() + RESTART_DELAY_SECONDS)  # not at once: no tight crash loop


def run_receiver(settings: Settings, port: int, connection: Connection) -> None:
    """A receiver process: the node's Store SCP on the shared port, reporting to the node."""
    from dicom_node.logging import configure_logging
    from dicom_node.node import allowed_peers, make_spool  # noqa: F401 - node imports this module
    from dicom_node.store_scp import StoreSCP
    from dicom_node.tls import scp_context

    configure_logging(settings.logging.format, settings.logging.level)
    # Ctrl-C in a terminal reaches the whole process group: the node stops its receivers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)  # e.g. systemd stopping the whole unit
    send_lock = threading.Lock()

    def report(*message) -> None:
        with send_lock:
            connection.send(message)

    def stored(peer: Peer, header: InstanceHeader) -> None:
        report("stored", peer.ae_title, peer.address, peer.port, header.study_uid, header.series_uid,
               header.sop_instance_uid)

    node = settings.node
    scp = StoreSCP(ae_title=node.ae_title, spool=make_spool(settings),
                   allowed_calling_ae_titles=node.allowed_calling_ae_titles, max_pdu_size=node.max_pdu_size,
                   on_stored=stored, allowed_peers=allowed_peers(settings), ssl_context=scp_context(settings),
                   on_rejected=lambda ae_title, address: report("rejected", ae_title, address))
    try:
        scp.start(node.bind_address, port, reuse_port=True)
    except OSError as exc:
        report("failed", f"cannot listen on port {port}: {exc}")
        return
    report("ready")
    try:
        while True:  # until the node says stop or its end of the pipe closes (it died)
            if connection.recv()[0] == "stop":
                break
    except (EOFError, OSError, SystemExit):
        pass
    finally:
        scp.stop()


def _exit_quietly(signum, frame) -> None:
    raise SystemExit(0)
