"""Workers: claim a job with a lease, keep the lease alive, run the pipeline, record the result.

A worker runs in the node's process (`serve`) or alone on a GPU host (`ldct-node worker`),
against the same job store and a shared spool path. It never sends anything: a finished job
is marked done (with its dispatch rows) and the dispatch stage sends it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

import structlog

from config.settings import Settings
from dicom_node import metrics
from dicom_node.polling import PollingThread
from dicom_node.queue.jobstore import Job, JobStore, worker_identity
from dicom_node.receive.spool import Spool
from dicom_node.results import ResultFolders
from dicom_node.work.clinical_lookup import lookup_clinical
from dicom_node.work.pipeline import ReportOptions, analyse_series
from inference.engines import Engine, get_engine

log = structlog.get_logger(__name__)


class Worker(PollingThread):
    """Processes queued jobs one at a time until stopped (woken when this process queues one)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        spool: Spool | None = None,
        engine: Engine | None = None,
        name: str | None = None,
        poll_seconds: float = 1.0,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """`on_done()`: told after each job is done (the node wakes its dispatcher)."""
        self.name = name or worker_identity()
        super().__init__(f"worker-{self.name}", poll_seconds)
        self.settings = settings
        self.store = store
        self.spool = spool or Spool.from_settings(settings)
        self.results = ResultFolders.from_settings(settings)
        self._engine = engine
        self.on_done = on_done

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = get_engine(
                self.settings.inference.engine, self.settings.inference.device, weights=self.settings.inference.weights
            )
        return self._engine

    def started(self) -> None:
        log.info("worker started", worker=self.name)
        self._load_engine()

    def poll(self) -> bool:
        self.store.worker_heartbeat(self.name, None)
        return self.run_once()

    def _load_engine(self) -> None:
        """Load the model before the first job: its second is not a patient's, and broken
        weights show in the log at start rather than at the first series."""
        try:
            _ = self.engine
        except Exception as exc:  # each job retries the load and records the error
            log.error(
                "inference engine failed to load", worker=self.name, error=f"{type(exc).__name__}: {exc}", exc_info=True
            )

    def run_once(self) -> bool:
        """Claim and process one job; False when the queue was empty."""
        jobs = self.settings.jobs
        job = self.store.claim_job(self.name, jobs.lease_seconds)
        if job is None:
            return False
        self.process(job)
        return True

    def process(self, job: Job) -> None:
        jobs = self.settings.jobs
        job_logger = log.bind(job_id=job.id, series_uid=job.series_uid, worker=self.name)
        job_logger.info("job started", attempt=job.attempts, instances=job.instance_count)
        self.store.worker_heartbeat(self.name, job.id)
        lease_lost = threading.Event()
        stop_beat = threading.Event()

        def beat() -> None:
            while not stop_beat.wait(jobs.heartbeat_seconds):
                if not self.store.heartbeat(job.id, self.name, jobs.lease_seconds):
                    lease_lost.set()
                    return

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            files = self.spool.instances_of(job.study_uid, job.series_uid, job.instance_uid_list())
            out_dir = self.results.for_job(job.id)
            summary = analyse_series(
                files,
                out_dir,
                engine=self.engine,
                options=ReportOptions.from_settings(self.settings),
                in_slice_order=job.in_slice_order,
                clinical=partial(lookup_clinical, self.store),
                supersedes=self.store.superseded_objects(job),
            )
        except Exception as exc:  # every failure is recorded on the job
            stop_beat.set()
            error = f"{type(exc).__name__}: {exc}"
            state = self.store.fail_job(job.id, self.name, error, jobs.max_attempts)
            metrics.JOBS_FINISHED.labels(state or "lost").inc()
            job_logger.error("job failed", error=error, state=state, exc_info=True)
            return
        finally:
            stop_beat.set()
            self.store.worker_heartbeat(self.name, None)
        if lease_lost.is_set():
            job_logger.warning("lease lost during processing: result discarded")
            return
        destinations = [d.name for d in self.settings.destinations]
        if self.store.complete_job(
            job.id, self.name, result_dir=str(out_dir), summary=summary, destinations=destinations
        ):
            metrics.JOBS_FINISHED.labels("done").inc()
            metrics.observe_job(summary.timings)
            self.store.audit(
                "job_done",
                series_uid=job.series_uid,
                job_id=job.id,
                seg=summary.seg.sop_instance_uid,
                sr=summary.sr.sop_instance_uid,
            )
            job_logger.info("job done", lesion_pct=round(summary.quantification.lesion_pct, 2), timings=summary.timings)
            if self.on_done is not None:
                self.on_done()
        else:
            job_logger.warning("job was taken over by another worker: result discarded")
