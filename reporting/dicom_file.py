"""Write the node's DICOM objects as Part 10 files: a fixed encoding, the node's identity, atomically."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from reporting.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


class DicomWriteError(ValueError):
    """A dataset that cannot be written as a DICOM file; the message says why."""


def write_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write `ds` as a Part 10 file in Explicit VR Little Endian (preamble + file meta).

    File meta is completed from the dataset (SOP class/instance; `ds.file_meta` is updated in
    place) and names ldct-node as the implementation that wrote the file. Datasets that carry
    compressed (encapsulated) pixel data keep their transfer syntax. The file appears
    atomically (temporary name, then rename).
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
