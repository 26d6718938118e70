"""Workers: claim a job with a lease, keep the lease alive, run the pipeline, record the result.

A worker runs in the node's process (`serve`) or alone on a GPU host (`ldct-node worker`),
against the same job store and a shared spool path.
"""

from __future__ import annotations

import threading
import traceback
from pathlib import Path

import structlog

from config.settings import Settings
from dicom_node import metrics
from dicom_node.queue.jobstore import Job, JobStore, worker_identity
from dicom_node.work.pipeline import ReportOptions, analyse_series
from inference.engines import Engine, get_engine

log = structlog.get_logger(__name__)


def report_options(settings: Settings) -> ReportOptions:
    return ReportOptions(key_images=settings.report.key_images,
                         omit_empty_seg_frames=settings.report.omit_empty_seg_frames,
                         risk_model_path=settings.risk.model,
                         risk_missing_policy=settings.risk.missing)


class Worker:
    """Processes queued jobs one at a time until stopped."""

    def __init__(self, settings: Settings, store: JobStore, *, engine: Engine | None = None,
                 name: str | None = None, poll_seconds: float = 1.0,
                 on_done=None) -> None:
        self.settings = settings
        self.store = store
        self.name = name or worker_identity()
        self.poll_seconds = poll_seconds
        self._engine = engine
        self._stop = threading.Event()
        self._wake = threading.Event()  # set when a job was queued in this process
        self._thread: threading.Thread | None = None
        self.on_done = on_done  # called with the job id after a successful completion

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = get_engine(self.settings.inference.engine, self.settings.inference.device)
        return self._engine

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name=f"worker-{self.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for a job now rather than at the next poll (the node queued one)."""
        self._wake.set()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        log.info("worker started", worker=self.name)
        self._load_engine()
        while not self._stop.is_set():
            try:
                self.store.worker_heartbeat(self.name, None)
                if not self.run_once():
                    self._wake.wait(self.poll_seconds)
                    self._wake.clear()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                log.exception("worker loop error", worker=self.name)
                self._stop.wait(5)

    def _load_engine(self) -> None:
        """Load the model before the first job: its second is not a patient's, and broken
        weights show in the log at start rather than at the first series."""
        try:
            self.engine
        except Exception as exc:  # noqa: BLE001 - each job retries the load and records the error
            log.error("inference engine failed to load", worker=self.name, error=f"{type(exc).__name__}: {exc}")

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
        bound = log.bind(job_id=job.id, series_uid=job.series_uid, worker=self.name)
        bound.info("job started", attempt=job.attempts, instances=job.instance_count)
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
            spool = Path(self.settings.node.data_dir) / "spool" / job.study_uid / job.series_uid
            files = [spool / f"{uid}.dcm" for uid in job.instance_uid_list()]
            missing = [p.name for p in files if not p.exists()]
            if missing:
                raise FileNotFoundError(f"{len(missing)} spooled instance(s) missing, e.g. {missing[0]}")
            out_dir = Path(self.settings.node.data_dir) / "results" / f"job-{job.id}"
            result = analyse_series(files, out_dir, engine=self.engine,
                                    options=report_options(self.settings),
                                    clinical=self._clinical_for(files[0]),
                                    supersedes=self.store.superseded_results(job))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
            stop_beat.set()
            state = self.store.fail_job(job.id, self.name, f"{type(exc).__name__}: {exc}",
                                        jobs.max_attempts)
            metrics.JOBS_FINISHED.labels(state or "lost").inc()
            bound.error("job failed", error=f"{type(exc).__name__}: {exc}", state=state,
                        trace=traceback.format_exc(limit=5))
            return
        finally:
            stop_beat.set()
            self.store.worker_heartbeat(self.name, None)
        if lease_lost.is_set():
            bound.warning("lease lost during processing: result discarded")
            return
        destinations = [d.name for d in self.settings.destinations]
        if self.store.complete_job(job.id, self.name, result_dir=str(out_dir), summary=result.summary,
                                   destinations=destinations):
            metrics.JOBS_FINISHED.labels("done").inc()
            metrics.observe_job(result.summary)
            self.store.audit("job_done", series_uid=job.series_uid, job_id=job.id,
                             seg=result.summary["seg"][1], sr=result.summary["sr"][1])
            bound.info("job done", lesion_pct=round(result.quantification.lesion_pct, 2),
                       timings=result.summary["timings"])
            if self.on_done:
                self.on_done(job.id)
        else:
            bound.warning("job was taken over by another worker: result discarded")

    def _clinical_for(self, first_file: Path) -> dict | None:
        """Imported clinical covariates for this study, looked up by accession or patient+date."""
        from dicom_node.work.clinical_lookup import lookup_clinical

        return lookup_clinical(self.store, first_file)
