"""The node process: Store SCP + scheduler sweeps + in-process workers, started and stopped together.

Sweeps (APScheduler): completeness (every second), expired leases, dispatch retries,
retention purge. On start the node cleans partial spool files, re-queues jobs its previous
process left running, and re-examines every spooled series that has no decision yet, so a
restart resumes where the crash stopped.
"""

from __future__ import annotations

import os
import shutil
import threading
from datetime import timedelta
from pathlib import Path

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from config.settings import Settings
from dicom_node import metrics
from dicom_node.dispatch.dispatcher import Dispatcher
from dicom_node.queue.jobstore import SERIES_DUPLICATE, JobStore, utcnow
from dicom_node.queue.series import SeriesTracker, evaluate_series, instance_set_hash
from dicom_node.receive.spool import Spool
from dicom_node.receive.acceptor import Peer
from dicom_node.receive.receivers import ReceiverPool, receive_process_count
from dicom_node.receive.store_scp import InstanceHeader, StoreSCP
from dicom_node.work.worker import Worker

log = structlog.get_logger(__name__)


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data directory with owner-only permissions (it holds patient data)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    return data_dir


class Node:
    def __init__(self, settings: Settings, *, workers: int | None = None, receive: bool = True,
                 engine=None) -> None:
        self.settings = settings
        self.data_dir = prepare_data_dir(settings.node.data_dir)
        self.store = JobStore(settings.database_url)
        self.spool = Spool.from_settings(settings)
        self.tracker = SeriesTracker()
        self.dispatcher = Dispatcher(settings, self.store)
        self.receive = receive
        self.receivers: ReceiverPool | None = None
        self.scp = StoreSCP.from_settings(settings, self.spool, on_stored=self._on_instance_stored,
                                          on_rejected=self._on_association_rejected,
                                          hand_off=self._hand_off_to_receiver) if receive else None
        count = settings.node.workers if workers is None else workers
        self.workers = [Worker(settings, self.store, spool=self.spool, engine=engine, name=f"{_identity()}-{i}",
                               on_done=self._on_job_done)
                        for i in range(count)]
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._dispatch_lock = threading.Lock()
        self._decide_lock = threading.Lock()  # a series is resumed or decided, never both at once
        self._series_seen: set[str] = set()
        self.metrics = (metrics.MetricsEndpoint(self.store, self.data_dir, settings.metrics.bind_address,
                                                settings.metrics.port) if settings.metrics.port else None)

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        removed = self.spool.clean_temporary()
        if removed:
            log.warning("removed partial files left by a previous crash", count=removed)
        requeued = self.store.requeue_own_dead_leases(self.settings.jobs.max_attempts)
        if requeued:
            log.warning("re-queued jobs left running by a previous process", job_ids=requeued)
        if self.receive:
            self._resume_undecided_series()
            address, port = self.settings.node.bind_address, self.settings.node.port
            extra_receivers = receive_process_count(self.settings.node.receive_processes) - 1
            if extra_receivers:  # ready before the port opens: once it answers, every receiver is up
                self.receivers = ReceiverPool(self.settings, extra_receivers, spool=self.spool,
                                              local_associations=lambda: self.scp.acceptor.active_associations,
                                              on_stored=self._on_instance_stored,
                                              on_rejected=self._on_association_rejected,
                                              on_lost=self._resume_undecided_series_soon)
                self.receivers.start()
            try:
                self.scp.start(address, port)
            except OSError:
                if self.receivers is not None:
                    self.receivers.stop()
                    self.receivers = None
                raise
            self.scheduler.add_job(self.sweep_completeness, "interval", seconds=1, id="completeness",
                                   max_instances=1, coalesce=True)
        self.scheduler.add_job(self.reap_leases, "interval", seconds=10, id="leases",
                               max_instances=1, coalesce=True)
        self.scheduler.add_job(self.run_dispatch, "interval", seconds=2, id="dispatch",
                               max_instances=1, coalesce=True)
        self.scheduler.add_job(self.purge_retention, "interval", hours=1, id="retention",
                               max_instances=1, coalesce=True)
        self.scheduler.start()
        if self.metrics is not None:
            metrics.RECEIVE_PROCESSES.set_function(
                lambda: (1 + (self.receivers.alive() if self.receivers is not None else 0)) if self.receive else 0)
            self.metrics.start()
        for worker in self.workers:
            worker.start()
        log.info("node started", ae_title=self.settings.node.ae_title, port=self.settings.node.port,
                 workers=len(self.workers), database=self.store.engine.dialect.name,
                 receive=self.receive)

    def stop(self) -> None:
        if self.receivers is not None:
            self.receivers.stop()
            self.receivers = None
        if self.scp is not None:
            self.scp.stop()
        self.scheduler.shutdown(wait=False)
        for worker in self.workers:
            worker.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.store.close()
        log.info("node stopped")

    # ---- receiving ---------------------------------------------------------------------
    def _on_association_rejected(self, calling_ae: str, peer: str) -> None:
        self.store.audit("association_rejected", calling_ae=calling_ae, peer=peer)

    def _hand_off_to_receiver(self, conn) -> bool:
        """A new association goes to the least busy receiving process (False: serve it here)."""
        return self.receivers is not None and self.receivers.hand_off(conn)

    def _on_instance_stored(self, peer: Peer, header: InstanceHeader) -> None:
        """Every instance stored, here or by a receiver process: the one tracker lives here."""
        series_uid = header.series_uid
        self.tracker.touch(header.study_uid, series_uid, peer.ae_title)
        metrics.INSTANCES_RECEIVED.inc()
        if series_uid not in self._series_seen:
            self._series_seen.add(series_uid)
            self.store.audit("receiving", series_uid=series_uid, calling_ae=peer.ae_title, peer=peer.address)

    def _resume_undecided_series_soon(self) -> None:
        """`_resume_undecided_series` in the scheduler's threads: the spool scan must not hold
        up the receivers' reports."""
        self.scheduler.add_job(self._resume_undecided_series, id="resume", replace_existing=True)

    def _resume_undecided_series(self) -> None:
        """Series spooled but never decided on and not being received are swept again: at
        start (after a crash) and after a receiver process died (it may have stored an
        instance it never reported, the only one of its series).

        Each gets a full idle window from now: a sender whose association the crash cut
        re-sends, and the series is decided once, complete, instead of twice.
        """
        with self._decide_lock:
            for study_uid, series_uid, folder in self.spool.series_dirs():
                if self.tracker.is_active(series_uid):
                    continue
                uids = [p.stem for p in self.spool.instance_files(folder)]
                if uids and not self.store.known_instance_set(series_uid, instance_set_hash(uids)):
                    self.tracker.touch(study_uid, series_uid, "")
                    log.info("resuming undecided series", series_uid=series_uid, instances=len(uids))

    # ---- sweeps ----------------------------------------------------------------------
    def sweep_completeness(self) -> None:
        with self._decide_lock:
            for activity in self.tracker.pop_idle(self.settings.series.idle_seconds):
                try:
                    self.decide_series(activity.study_uid, activity.series_uid, activity.calling_ae)
                except Exception:  # noqa: BLE001 - one bad series must not stop the sweep
                    log.exception("completeness check failed", series_uid=activity.series_uid)

    def decide_series(self, study_uid: str, series_uid: str, calling_ae: str) -> None:
        self._series_seen.discard(series_uid)
        folder = self.spool.series_dir(study_uid, series_uid)
        files = self.spool.instance_files(folder)
        decision = evaluate_series(files, self.settings.series)
        common = dict(series_uid=series_uid, study_uid=study_uid, calling_ae=calling_ae,
                      description=decision.description, instance_count=len(files),
                      instance_set_hash=decision.instance_set_hash)
        bound = log.bind(series_uid=series_uid, instances=len(files), calling_ae=calling_ae)
        if self.store.known_instance_set(series_uid, decision.instance_set_hash):
            metrics.SERIES_DECIDED.labels(SERIES_DUPLICATE).inc()
            self.store.record_series(**common, outcome=SERIES_DUPLICATE,
                                     reason="same set of instances as an earlier decision: not processed again")
            bound.info("identical re-send ignored")
            return
        metrics.SERIES_DECIDED.labels(decision.outcome).inc()
        if not decision.eligible:
            self.store.record_series(**common, outcome=decision.outcome, reason=decision.reason)
            bound.warning("series not processed", outcome=decision.outcome, reason=decision.reason)
            return
        job_id = self.store.enqueue_job(series_uid=series_uid, study_uid=study_uid,
                                        instance_uids=decision.instance_uids,
                                        instance_set_hash=decision.instance_set_hash,
                                        max_attempts=self.settings.jobs.max_attempts)
        self.store.record_series(**common, outcome="queued", job_id=job_id)
        self.store.audit("series_complete", series_uid=series_uid, job_id=job_id, calling_ae=calling_ae,
                         instances=len(decision.instance_uids))
        bound.info("series complete: job queued", job_id=job_id)
        for worker in self.workers:  # those on other hosts find it at their next poll
            worker.wake()

    def reap_leases(self) -> None:
        released = self.store.requeue_expired_leases(self.settings.jobs.max_attempts)
        if released:
            log.warning("expired leases released", job_ids=released)

    def run_dispatch(self) -> None:
        if not self._dispatch_lock.acquire(blocking=False):
            return
        try:
            self.dispatcher.run_due()
        finally:
            self._dispatch_lock.release()

    def _on_job_done(self) -> None:
        """Send at once instead of waiting for the next dispatch sweep."""
        self.run_dispatch()

    def purge_retention(self) -> None:
        cutoff = utcnow() - timedelta(days=self.settings.retention.keep_days)
        for job in self.store.purge_finished_before(cutoff):
            shutil.rmtree(job.result_dir, ignore_errors=True)
            if not self.tracker.is_active(job.series_uid):
                shutil.rmtree(self.spool.series_dir(job.study_uid, job.series_uid), ignore_errors=True)
            self.store.mark_purged(job.id)
            log.info("retention purge", job_id=job.id, series_uid=job.series_uid)


def _identity() -> str:
    from dicom_node.queue.jobstore import worker_identity

    return worker_identity()
