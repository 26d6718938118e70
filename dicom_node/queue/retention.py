"""Retention: results of finished jobs and spooled images go after `retention.keep_days`.

Never what another stage still needs: a job with a dispatch pending or sending keeps its
results (`JobStore.purge_finished_before`), and a result folder another job still points at is
kept. A spooled series goes `keep_days` after its last decision (processed, not processed, not
selected, refused: one rule for all), unless it is being received or a job of it is unfinished
or keeps its results (a reissue reads the images); a series never decided on stays (a study
waiting for per-study selection, or one the next start resumes).
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta

import structlog

from dicom_node.queue.jobstore import JobStore, utcnow
from dicom_node.queue.series import SeriesTracker
from dicom_node.receive.spool import Spool

log = structlog.get_logger(__name__)


def purge_expired(store: JobStore, spool: Spool, tracker: SeriesTracker, keep_days: float) -> list[int]:
    """Purge every settled job finished more than `keep_days` ago, then the spooled series
    nothing needs any more; returns the ids of the jobs purged."""
    cutoff = utcnow() - timedelta(days=keep_days)
    purged = []
    for job in store.purge_finished_before(cutoff):
        if job.result_dir and not store.result_dir_in_use(job.result_dir, other_than=job.id):
            shutil.rmtree(job.result_dir, ignore_errors=True)
        store.mark_purged(job.id)
        purged.append(job.id)
        log.info("retention purge", job_id=job.id, series_uid=job.series_uid)
    purge_spool(store, spool, tracker, cutoff)
    return purged


def purge_spool(store: JobStore, spool: Spool, tracker: SeriesTracker, cutoff: datetime) -> list[str]:
    """Remove the spooled series last decided on before `cutoff` that nothing needs; returns
    their UIDs."""
    removed = []
    for study_uid, series_uid, _ in spool.series_dirs():
        if tracker.is_active(series_uid) or not store.spooled_series_expired(series_uid, cutoff):
            continue
        spool.remove_series(study_uid, series_uid)
        removed.append(series_uid)
        log.info("retention purge: spooled series", series_uid=series_uid)
    return removed
