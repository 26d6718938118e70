"""One node process: the stages its command runs, wired together, started and stopped together.

| stage | package | `serve` | `serve --no-workers` | `worker` |
| --- | --- | --- | --- | --- |
| receive (Store SCP, receiver processes) | `receive/` | yes | yes | no |
| completeness sweep, lease reaper, retention | `queue/` | yes | yes | no |
| workers | `work/` | `node.workers` | no | `--count` |
| dispatch | `dispatch/` | `run_by = "serve"` (default) | same | `run_by = "worker"` |

On start the node cleans partial spool files, re-queues jobs its previous process left
running, and re-examines every spooled series that has no decision yet, so a restart
resumes where the crash stopped. The periodic sweeps run in APScheduler threads; workers
and the dispatcher in threads of their own.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from config.settings import Settings
from dicom_node import metrics
from dicom_node.dispatch.dispatcher import Dispatcher
from dicom_node.queue.jobstore import JobStore, worker_identity
from dicom_node.queue.retention import purge_expired
from dicom_node.queue.series import Completeness
from dicom_node.receive.receivers import ReceiverPool, receive_process_count
from dicom_node.receive.spool import Spool
from dicom_node.receive.store_scp import StoreSCP
from dicom_node.work.worker import Worker
from inference.engines import Engine

log = structlog.get_logger(__name__)


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data directory with owner-only permissions (it holds patient data)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    return data_dir


class Node:
    """`receive`: this process receives, decides and purges (`serve`); otherwise it only runs
    workers (`ldct-node worker`). Whether it dispatches is `[dispatch] run_by`."""

    def __init__(
        self, settings: Settings, *, workers: int | None = None, receive: bool = True, engine: Engine | None = None
    ) -> None:
        self.settings = settings
        self.receive = receive
        self.data_dir = prepare_data_dir(settings.node.data_dir)
        self.store = JobStore(settings.database_url)
        self.spool = Spool.from_settings(settings)
        self.dispatcher = (
            Dispatcher(settings, self.store) if settings.dispatch.run_by == ("serve" if receive else "worker") else None
        )
        self.completeness = Completeness(settings, self.store, self.spool, on_queued=self._wake_workers)
        self.receivers: ReceiverPool | None = None
        self.scp = (
            StoreSCP.from_settings(
                settings,
                self.spool,
                on_stored=self.completeness.instance_stored,
                on_rejected=self._on_association_rejected,
                hand_off=self._hand_off_to_receiver,
            )
            if receive
            else None
        )
        count = settings.node.workers if workers is None else workers
        self.workers = [
            Worker(
                settings,
                self.store,
                spool=self.spool,
                engine=engine,
                name=f"{worker_identity()}-{i}",
                on_done=self.dispatcher.wake if self.dispatcher is not None else None,
            )
            for i in range(count)
        ]
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.metrics = (
            metrics.MetricsEndpoint(self.store, self.data_dir, settings.metrics.bind_address, settings.metrics.port)
            if settings.metrics.port
            else None
        )

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        removed = self.spool.clean_temporary()
        if removed:
            log.warning("removed partial files left by a previous crash", count=removed)
        requeued = self.store.requeue_own_dead_leases(self.settings.jobs.max_attempts)
        if requeued:
            log.warning("re-queued jobs left running by a previous process", job_ids=requeued)
        if self.metrics is not None:  # before the DICOM port: once it answers, /metrics does too
            metrics.RECEIVE_PROCESSES.set_function(self._receive_processes_up)
            self.metrics.start()
        if self.scp is not None:
            self._start_receiving(self.scp)
        if self.dispatcher is not None:
            self.dispatcher.start()
        for worker in self.workers:
            worker.start()
        log.info(
            "node started",
            ae_title=self.settings.node.ae_title,
            port=self.settings.node.port,
            workers=len(self.workers),
            database=self.store.engine.dialect.name,
            receive=self.receive,
            dispatch=self.dispatcher is not None,
        )

    def _start_receiving(self, scp: StoreSCP) -> None:
        """Receiver processes, the Store SCP and the queue's sweeps."""
        self.completeness.resume_undecided()
        address, port = self.settings.node.bind_address, self.settings.node.port
        extra_receivers = receive_process_count(self.settings.node.receive_processes) - 1
        if extra_receivers:  # ready before the port opens: once it answers, every receiver is up
            self.receivers = ReceiverPool(
                self.settings,
                extra_receivers,
                spool=self.spool,
                local_associations=lambda: scp.acceptor.active_associations,
                on_stored=self.completeness.instance_stored,
                on_rejected=self._on_association_rejected,
                on_lost=self._resume_undecided_soon,
            )
            self.receivers.start()
        try:
            scp.start(address, port)
        except OSError:
            if self.receivers is not None:
                self.receivers.stop()
                self.receivers = None
            raise
        self.scheduler.add_job(
            self.completeness.sweep, "interval", seconds=1, id="completeness", max_instances=1, coalesce=True
        )
        self.scheduler.add_job(self.reap_leases, "interval", seconds=10, id="leases", max_instances=1, coalesce=True)
        self.scheduler.add_job(
            self.purge_retention, "interval", hours=1, id="retention", max_instances=1, coalesce=True
        )
        self.scheduler.start()

    def stop(self) -> None:
        if self.receivers is not None:
            self.receivers.stop()
            self.receivers = None
        if self.scp is not None:
            self.scp.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for worker in self.workers:
            worker.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.store.close()
        log.info("node stopped")

    # ---- receiving ---------------------------------------------------------------------
    def _on_association_rejected(self, calling_ae: str, peer: str) -> None:
        self.store.audit("association_rejected", calling_ae=calling_ae, peer=peer)

    def _hand_off_to_receiver(self, conn: socket.socket) -> bool:
        """A new association goes to the least busy receiving process (False: serve it here)."""
        return self.receivers is not None and self.receivers.hand_off(conn)

    def _receive_processes_up(self) -> int:
        if not self.receive:
            return 0
        return 1 + (self.receivers.alive() if self.receivers is not None else 0)

    def _resume_undecided_soon(self) -> None:
        """`Completeness.resume_undecided` in the scheduler's threads: the spool scan must not
        hold up the receivers' reports."""
        self.scheduler.add_job(self.completeness.resume_undecided, id="resume", replace_existing=True)

    def _wake_workers(self) -> None:
        for worker in self.workers:  # those in other processes find the job at their next poll
            worker.wake()

    # ---- sweeps ----------------------------------------------------------------------
    def reap_leases(self) -> None:
        released = self.store.requeue_expired_leases(self.settings.jobs.max_attempts)
        if released:
            log.warning("expired leases released", job_ids=released)

    def purge_retention(self) -> None:
        purge_expired(self.store, self.spool, self.completeness.tracker, self.settings.retention.keep_days)
