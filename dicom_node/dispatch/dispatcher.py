"""Dispatch: send each finished job's SEG, SR and key images to every configured destination.

One row per (job, destination). A failed send is retried with exponential backoff; past the
maximum age it is dead with its error kept, visible in `status`, revived by `retry`.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from config.settings import Settings
from dicom_node import metrics
from dicom_node.queue.jobstore import DEAD, JobStore
from dicom_node.dispatch.dimse import SendError, send_files
from dicom_node.tls import destination_tls

log = structlog.get_logger(__name__)


class Dispatcher:
    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store

    def run_due(self) -> int:
        """Send every due dispatch; returns how many were sent successfully."""
        cfg = self.settings.dispatch
        sent = 0
        for dispatch in self.store.claim_dispatches(lease_seconds=cfg.timeout_seconds * 4 + 60):
            bound = log.bind(job_id=dispatch.job_id, destination=dispatch.destination)
            try:
                destination = self.settings.destination(dispatch.destination)
                job = self.store.get_job(dispatch.job_id)
                bound = bound.bind(series_uid=job.series_uid)
                summary = job.result()
                if not job.result_dir or summary is None:
                    raise SendError("the job's results were purged")
                outputs = [Path(job.result_dir) / name for name in summary.outputs]
                result = send_files(outputs, destination.host, destination.port, destination.ae_title,
                                    calling_ae=self.settings.node.ae_title, timeout=cfg.timeout_seconds,
                                    tls=destination_tls(self.settings, destination))
                if not result.ok:
                    raise SendError(f"{len(result.failed)} of {len(outputs)} refused: {result.failed[0][1]}")
            except Exception as exc:  # noqa: BLE001 - every failure is kept on the dispatch row
                state = self.store.dispatch_failed(dispatch.id, f"{type(exc).__name__}: {exc}",
                                                   first_retry=cfg.first_retry_seconds,
                                                   max_retry=cfg.max_retry_seconds,
                                                   max_age_hours=cfg.max_age_hours)
                metrics.DISPATCH_ATTEMPTS.labels("failed").inc()
                (bound.error if state == DEAD else bound.warning)(
                    "dispatch failed", error=str(exc), state=state, attempt=dispatch.attempts + 1)
                continue
            self.store.dispatch_sent(dispatch.id)
            metrics.DISPATCH_ATTEMPTS.labels("sent").inc()
            self.store.audit("dispatched", job_id=dispatch.job_id, destination=dispatch.destination,
                             ae_title=destination.ae_title, instances=result.sent)
            bound.info("results sent", instances=result.sent)
            sent += 1
        return sent
