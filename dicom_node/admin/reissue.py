"""`ldct-node report JOB --reissue`: an amended SR when clinical covariates arrive late.

The segmentation is not rerun: the SR is rebuilt from the job's stored quantification, its
SEG and the spooled source headers, with the risk assessed on the covariates known now. The
amended SR supersedes the previous one (Predecessor Documents Sequence) and goes out through
the ordinary dispatch path as a job of its own, so it is retried like any other result.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
from sqlalchemy import func, select

from config.settings import Settings
from dicom_node.work.clinical_lookup import lookup_clinical
from dicom_node.queue.jobstore import DONE, Dispatch, Job, JobStore, utcnow
from dicom_node.receive.spool import Spool
from dicom_node.results import DicomRef, RiskSummary
from dicom_node.work.pipeline import ReportOptions, assess_risk_for, write_report
from inference.volume import read_headers, sort_by_position


class ReissueError(RuntimeError):
    """The report cannot be reissued; the message says why."""


def reissue_report(settings: Settings, store: JobStore, job_id: int, options: ReportOptions) -> Job:
    """Write an amended SR for a finished job and queue it for every destination."""
    job = store.get_job(job_id)
    if job is None:
        raise ReissueError(f"no job {job_id}")
    if job.state != DONE or not job.result_dir:
        raise ReissueError(f"job {job_id} is {job.state}{' (results purged)' if not job.result_dir else ''}:"
                           " only a finished job with its results can be reissued")
    if job.superseded_by:
        raise ReissueError(f"job {job_id} was superseded by job {job.superseded_by}: reissue that one")
    summary = job.result()
    if summary is None:
        raise ReissueError(f"job {job_id} has no summary of its results")
    result_dir = Path(job.result_dir)
    try:
        files = Spool.from_settings(settings).instances_of(job.study_uid, job.series_uid, job.instance_uid_list())
    except FileNotFoundError:
        raise ReissueError(f"the source images of job {job_id} are no longer in the spool (retention)") from None
    headers = read_headers(files)
    if not job.in_slice_order:
        headers, _ = sort_by_position(headers)
    seg = pydicom.dcmread(result_dir / "seg.dcm")
    risk = assess_risk_for(headers[0], summary.quantification, lookup_clinical(store, headers[0]), options)
    with store.session() as s:
        previous = s.scalar(select(func.count()).select_from(Job).where(Job.series_uid == job.series_uid))
    amended_name = f"sr-amended-{previous}.dcm"
    sr = write_report(headers, seg, summary.quantification, summary.engine, risk, [summary.sr],
                      result_dir / amended_name)
    amended = summary.model_copy(update={
        "risk": RiskSummary.of(risk), "outputs": [amended_name], "reissue_of": job.id, "sr": DicomRef.of(sr),
        "supersedes": [summary.sr]})
    now = utcnow()
    with store.session() as s:
        new_job = Job(series_uid=job.series_uid, study_uid=job.study_uid,
                      instance_set_hash=hashlib.sha256(f"{job.instance_set_hash}:{amended_name}".encode()).hexdigest(),
                      instance_uids=job.instance_uids, instance_count=job.instance_count,
                      in_slice_order=job.in_slice_order, state=DONE, attempts=0, created_at=now, started_at=now,
                      finished_at=now, result_dir=str(result_dir), summary=amended.to_json())
        s.add(new_job)
        s.flush()
        s.get(Job, job.id).superseded_by = new_job.id
        for destination in settings.destinations:
            s.add(Dispatch(job_id=new_job.id, destination=destination.name, next_try_at=now))
    store.audit("report_reissued", series_uid=job.series_uid, job_id=new_job.id, reissue_of=job.id,
                sr=amended.sr.sop_instance_uid)
    return store.get_job(new_job.id)
