"""Write DICOM files in a fixed encoding and check them with dciodvfy (dicom3tools).

dciodvfy checks a file against the IOD definitions of the standard; the node's outputs must
give no "Error" lines. Warnings are returned separately for information.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from reporting.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = structlog.get_logger(__name__)

DCIODVFY = "dciodvfy"


class ValidatorMissingError(RuntimeError):
    """dciodvfy is not installed (Debian/Ubuntu: `apt-get install dicom3tools`)."""


class DicomWriteError(ValueError):
    """A dataset that cannot be written as a DICOM file; the message says why."""


def write_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write `ds` as a Part 10 file in Explicit VR Little Endian (preamble + file meta).

    File meta is completed from the dataset (SOP class/instance; `ds.file_meta` is updated in
    place) and names ldct-node as the implementation that wrote the file. Datasets that carry compressed (encapsulated) pixel data keep their transfer
    syntax. The file appears atomically (temporary name, then rename).
    """
    path = Path(path)
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword not in ds:
            raise DicomWriteError(f"cannot write {path.name}: dataset has no {keyword}")
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    transfer_syntax = meta.get("TransferSyntaxUID")
    if transfer_syntax is None or not transfer_syntax.is_compressed:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID  # the writer (PS3.10 7.1), not highdicom
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    # write next to the target and rename, so a reader (the dispatcher) never sees half a file
    partial = path.with_name(f".{path.name}.partial")
    try:
        ds.save_as(partial, enforce_file_format=True)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def dciodvfy_report(path_or_dataset: str | Path | Dataset) -> tuple[list[str], list[str]]:
    """Run dciodvfy; return (error lines, warning lines)."""
    executable = shutil.which(DCIODVFY)
    if executable is None:
        raise ValidatorMissingError(
            "dciodvfy not found on PATH: install dicom3tools (apt-get install dicom3tools)"
        )
    with tempfile.TemporaryDirectory(prefix="ldct-dciodvfy-") as tmp:
        if isinstance(path_or_dataset, Dataset):
            path = write_dataset(path_or_dataset, Path(tmp) / "object.dcm")
        else:
            path = Path(path_or_dataset)
            if not path.is_file():
                raise FileNotFoundError(f"no such DICOM file: {path}")
        # -new: use the current standard's rules (not retired ones); output goes to stderr.
        completed = subprocess.run(
            [executable, "-new", str(path)], capture_output=True, text=True, errors="replace",
            timeout=300,
        )
    lines = (completed.stdout + completed.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    log.debug("dciodvfy", errors=len(errors), warnings=len(warnings))
    return errors, warnings


def dciodvfy_errors(path_or_dataset: str | Path | Dataset) -> list[str]:
    """Lines of dciodvfy output that start with "Error" (empty list: the object is valid)."""
    return dciodvfy_report(path_or_dataset)[0]
