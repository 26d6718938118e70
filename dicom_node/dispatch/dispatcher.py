"""The dispatch stage: send each finished job's SEG, SR and key images to every destination.

It runs in a thread of its own in the process whose role it is (`[dispatch] run_by`: the
`serve` process by default, whose address the PACS knows), so a slow or unreachable PACS
never holds a worker or its GPU: a worker marks its job done and wakes the dispatcher.
One row per (job, destination). A failed send is retried with exponential backoff; past the
maximum age it is dead with its error kept, visible in `status`, revived by `retry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog
from pydicom.errors import InvalidDicomError
from structlog.typing import FilteringBoundLogger

from config.settings import ConfigError, Destination, Settings
from dicom_node import metrics
from dicom_node.dispatch.dimse import send_files
from dicom_node.dispatch.sender import Sender, SendError, SendResult
from dicom_node.polling import PollingThread
from dicom_node.queue.jobstore import DEAD, Dispatch, JobStore
from dicom_node.tls import TLSError, destination_tls

log = structlog.get_logger(__name__)

POLL_SECONDS = 2.0  # due retries and jobs finished by workers in other processes are found this often
# What a send is expected to fail with (a PACS that is down, refuses, or files gone); anything
# else is a bug, logged with its traceback, and kept on the dispatch row all the same.
EXPECTED_FAILURES = (SendError, TLSError, ConfigError, OSError, InvalidDicomError)


def sender_for(settings: Settings, destination: Destination) -> Sender:
    """How results reach `destination`: by C-STORE (another kind of destination joins here)."""
    tls = destination_tls(settings, destination)

    def send(paths: Sequence[Path]) -> SendResult:
        return send_files(
            paths,
            destination.host,
            destination.port,
            destination.ae_title,
            calling_ae=settings.node.ae_title,
            timeout=settings.dispatch.timeout_seconds,
            tls=tls,
        )

    return send


class Dispatcher(PollingThread):
    def __init__(self, settings: Settings, store: JobStore, *, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__("dispatcher", poll_seconds)
        self.settings = settings
        self.store = store

    def poll(self) -> bool:
        return self.run_due() > 0

    def run_due(self) -> int:
        """Send every due dispatch; returns how many were sent successfully."""
        cfg = self.settings.dispatch
        sent = 0
        for dispatch in self.store.claim_dispatches(lease_seconds=cfg.timeout_seconds * 4 + 60):
            if self._send(dispatch):
                sent += 1
        return sent

    def _send(self, dispatch: Dispatch) -> bool:
        job_logger = log.bind(job_id=dispatch.job_id, destination=dispatch.destination)
        try:
            destination = self.settings.destination(dispatch.destination)
            job = self.store.get_job(dispatch.job_id)
            if job is None:
                raise SendError(f"job {dispatch.job_id} is gone")
            job_logger = job_logger.bind(series_uid=job.series_uid)
            result = job.result()
            if not job.result_dir or result is None:
                raise SendError("the job's results were purged")
            outputs = [Path(job.result_dir) / name for name in result.outputs]
            sent = sender_for(self.settings, destination)(outputs)
            if not sent.ok:
                raise SendError(f"{len(sent.failed)} of {len(outputs)} refused: {sent.failed[0][1]}")
        except EXPECTED_FAILURES as exc:
            self._failed(dispatch, exc, job_logger)
            return False
        except Exception as exc:
            job_logger.exception("dispatch failed unexpectedly")
            self._failed(dispatch, exc, job_logger)
            return False
        self.store.dispatch_sent(dispatch.id)
        metrics.DISPATCH_ATTEMPTS.labels("sent").inc()
        self.store.audit(
            "dispatched",
            job_id=dispatch.job_id,
            destination=dispatch.destination,
            ae_title=destination.ae_title,
            instances=sent.sent,
        )
        job_logger.info("results sent", instances=sent.sent)
        return True

    def _failed(self, dispatch: Dispatch, exc: Exception, job_logger: FilteringBoundLogger) -> None:
        """Keep the failure on the dispatch row: retried with backoff, or dead past the maximum age."""
        cfg = self.settings.dispatch
        state = self.store.dispatch_failed(
            dispatch.id,
            f"{type(exc).__name__}: {exc}",
            first_retry=cfg.first_retry_seconds,
            max_retry=cfg.max_retry_seconds,
            max_age_hours=cfg.max_age_hours,
        )
        metrics.DISPATCH_ATTEMPTS.labels("failed").inc()
        (job_logger.error if state == DEAD else job_logger.warning)(
            "dispatch failed", error=str(exc), state=state, attempt=dispatch.attempts + 1
        )
