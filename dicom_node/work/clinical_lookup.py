"""Join imported clinical covariates to a study (by AccessionNumber, else PatientID + StudyDate)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from dicom_node.queue.jobstore import JobStore
from reporting.clinical import candidate_keys


def lookup_clinical(store: JobStore, instance_file: Path) -> dict | None:
    """The stored clinical record for the study this instance belongs to, if imported."""
    ds = pydicom.dcmread(instance_file, stop_before_pixels=True,
                         specific_tags=["AccessionNumber", "PatientID", "StudyDate"])
    for key in candidate_keys(ds):
        found = store.get_clinical(key)
        if found is not None:
            return found
    return None
