"""Join imported clinical covariates to a study (by AccessionNumber, else PatientID + StudyDate)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from dicom_node.jobstore import JobStore


def clinical_keys(accession_number: str, patient_id: str, study_date: str) -> list[str]:
    """Store keys under which a study's covariates may have been imported, best first."""
    keys = []
    if accession_number:
        keys.append(f"accession:{accession_number}")
    if patient_id and study_date:
        keys.append(f"patient:{patient_id}:{study_date}")
    return keys


def lookup_clinical(store: JobStore, instance_file: Path) -> dict | None:
    ds = pydicom.dcmread(instance_file, stop_before_pixels=True,
                         specific_tags=["AccessionNumber", "PatientID", "StudyDate"])
    for key in clinical_keys(str(ds.get("AccessionNumber", "")), str(ds.get("PatientID", "")),
                             str(ds.get("StudyDate", ""))):
        found = store.get_clinical(key)
        if found is not None:
            return found
    return None
