"""`ldct-node report JOB --reissue`: an amended SR when clinical covariates arrive late.

The segmentation is not rerun: the SR is rebuilt from the job's stored quantification, its
SEG and the spooled source headers, with the risk assessed on the covariates known now. The
amended SR supersedes the previous one (Predecessor Documents Sequence) and goes out through
the ordinary dispatch stage as a finished job of its own, so it is retried like any other
result. It is written into a result folder of its own, next to a link to the SEG it
references, so purging the original job removes neither the queued SR nor what a later
reissue reads. A reissue that cannot be made changes nothing (ReissueRefused says why).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom

from config.settings import Settings
from dicom_node.queue.jobstore import Job, JobStore, ReissueRefused
from dicom_node.receive.spool import Spool
from dicom_node.results import DicomRef, ResultFolders, RiskSummary
from dicom_node.work.clinical_lookup import lookup_clinical
from dicom_node.work.pipeline import ReportOptions, assess_risk_for, write_report
from inference.volume import read_headers, sort_by_position

AMENDED_SR = "sr-amended.dcm"


def reissue_report(settings: Settings, store: JobStore, job_id: int, options: ReportOptions) -> Job:
    """Write an amended SR for a finished job and queue it for every destination."""
    job = store.reissuable_job(job_id)
    summary = job.result()
    seg_path = Path(job.result_dir or "missing") / "seg.dcm"
    if summary is None or not job.result_dir or not seg_path.is_file():
        raise ReissueRefused(f"the results of job {job_id} are no longer on disk (retention)")
    try:
        files = Spool.from_settings(settings).instances_of(job.study_uid, job.series_uid, job.instance_uid_list())
    except FileNotFoundError:
        raise ReissueRefused(f"the source images of job {job_id} are no longer in the spool (retention)") from None
    headers = read_headers(files)
    if not job.in_slice_order:
        headers, _ = sort_by_position(headers)
    seg = pydicom.dcmread(seg_path)
    risk = assess_risk_for(headers[0], summary.quantification, lookup_clinical(store, headers[0]), options)
    folder = ResultFolders.from_settings(settings).for_amended_report()
    try:
        _link_or_copy(seg_path, folder / "seg.dcm")  # what the SR references, for a later reissue
        sr = write_report(
            headers,
            seg,
            summary.quantification,
            summary.engine,
            risk,
            [summary.sr],
            folder / AMENDED_SR,
            summary.source_lossy,
        )
        amended = summary.model_copy(
            update={
                "risk": RiskSummary.of(risk),
                "outputs": [AMENDED_SR],
                "reissue_of": job.id,
                "sr": DicomRef.of(sr),
                "supersedes": [summary.sr],
            }
        )
        new_job = store.add_amended_report(
            job.id, summary=amended, result_dir=str(folder), destinations=[d.name for d in settings.destinations]
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    store.audit(
        "report_reissued",
        series_uid=job.series_uid,
        job_id=new_job.id,
        reissue_of=job.id,
        sr=amended.sr.sop_instance_uid,
    )
    return new_job


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
