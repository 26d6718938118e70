"""Join imported clinical covariates to a study (by AccessionNumber, else PatientID + StudyDate)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from dicom_node.queue.jobstore import JobStore
from reporting.clinical_records import candidate_keys


def lookup_clinical(store: JobStore, header: Dataset) -> dict[str, Any] | None:
    """The stored clinical record for the study of this header (any instance of it), if imported."""
    for key in candidate_keys(header):
        found = store.get_clinical(key)
        if found is not None:
            return found
    return None
