"""The dispatch stage: send each finished job's SEG, SR and key images to every destination.

It runs in a thread of its own in the process whose role it is (`[dispatch] run_by`: the
`serve` process by default, whose address the PACS knows), so a slow or unreachable PACS
never holds a worker or its GPU: a worker marks its job done and wakes the dispatcher.
One row per (job, destination). A failed send is retried with exponential backoff; past the
maximum age it is dead with its error kept, visible in `status`, revived by `retry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import structlog
from pydicom.errors import InvalidDicomError
from structlog.typing import FilteringBoundLogger

from config.settings import ConfigError, Destination, DicomWebDestination, Settings
from dicom_node import metrics
from dicom_node.dispatch.dicomweb import Endpoint, query_check, stow
from dicom_node.dispatch.dimse import echo, send_files
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
    """How results reach `destination`: DICOMweb STOW-RS, or C-STORE."""
    if isinstance(destination, DicomWebDestination):

        def store(paths: Sequence[Path]) -> SendResult:
            return stow(paths, Endpoint.of(settings, destination))  # the secret is read at each send

        return store
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


def check_destination(settings: Settings, destination: Destination, timeout: float = 10) -> str:
    """Whether `destination` answers (`echo`, `health`): C-ECHO, or a QIDO-RS query for DICOMweb.

    Returns what answered; raises SendError (or TLSError) when it does not.
    """
    if isinstance(destination, DicomWebDestination):
        endpoint = Endpoint.of(settings, destination)
        return query_check(replace(endpoint, timeout=min(endpoint.timeout, timeout)))
    echo(
        destination.host,
        destination.port,
        destination.ae_title,
        calling_ae=settings.node.ae_title,
        timeout=timeout,
        tls=destination_tls(settings, destination),
    )
    return f"C-ECHO {destination.address()}: success"


class Dispatcher(PollingThread):
    def __init__(self, settings: Settings, store: JobStore, *, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__("dispatcher", poll_seconds)
        self.settings = settings
        self.store = store

    def poll(self) -> bool:
        return self.run_due() > 0

    def run_due(self) -> int:
        """Send every due dispatch; returns how many were sent successfully."""
        timeouts = [self.settings.dispatch.timeout_seconds]
        timeouts += [
            d.timeout_seconds
            for d in self.settings.destinations
            if isinstance(d, DicomWebDestination) and d.timeout_seconds is not None
        ]
        sent = 0
        for dispatch in self.store.claim_dispatches(lease_seconds=max(timeouts) * 4 + 60):
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
                reasons = "; ".join(f"{name}: {why}" for name, why in sent.failed)
                raise SendError(f"{len(sent.failed)} of {len(outputs)} refused: {reasons}")
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
            instances=sent.sent,
            **(
                {"url": destination.url}
                if isinstance(destination, DicomWebDestination)
                else {"ae_title": destination.ae_title}
            ),
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
