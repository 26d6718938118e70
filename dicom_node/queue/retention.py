"""Retention: results and spooled images of finished jobs go after `retention.keep_days`.

Never what another stage still needs: a job with a dispatch pending or sending keeps its
results (`JobStore.purge_finished_before`), a result folder another job still points at is
kept, and a series' spooled images stay while the series is being received or any other job
of it is unfinished or keeps its results (a reissue reads them).
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import structlog

from dicom_node.queue.jobstore import JobStore, utcnow
from dicom_node.queue.series import SeriesTracker
from dicom_node.receive.spool import Spool

log = structlog.get_logger(__name__)


def purge_expired(store: JobStore, spool: Spool, tracker: SeriesTracker, keep_days: float) -> list[int]:
    """Purge every settled job finished more than `keep_days` ago; returns their ids."""
    cutoff = utcnow() - timedelta(days=keep_days)
    purged = []
    for job in store.purge_finished_before(cutoff):
        if job.result_dir and not store.result_dir_in_use(job.result_dir, other_than=job.id):
            shutil.rmtree(job.result_dir, ignore_errors=True)
        if not tracker.is_active(job.series_uid) and not store.series_in_use(job.series_uid, other_than=job.id):
            shutil.rmtree(spool.series_dir(job.study_uid, job.series_uid), ignore_errors=True)
        store.mark_purged(job.id)
        purged.append(job.id)
        log.info("retention purge", job_id=job.id, series_uid=job.series_uid)
    return purged
