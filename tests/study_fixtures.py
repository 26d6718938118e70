"""A whole study as a scanner or PACS routes it, built with pydicom and highdicom.

One synthetic chest (the phantom of `inference.synthetic`) in two axial reconstructions, a thin
lung-kernel one and a thick soft-tissue one (every other slice of the same volume), plus what
scanners send with them: a localizer (CT Image Storage, ImageType LOCALIZER, coronal), an X-Ray
Radiation Dose SR, a dose screen as Secondary Capture (Modality CT, as some scanners write it:
the node must decide by SOP class, not modality) and a grayscale presentation state on the lung
series. Small images (96 x 96) keep the tests fast; every object has fresh UIDs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    XRayRadiationDoseSRStorage,
    generate_uid,
)

from inference.synthetic import generate_phantom, write_series

LUNG_KERNEL, SOFT_KERNEL = "B60f", "B30f"


@dataclass
class MixedStudy:
    """The files of one study by what they are; `series_uid(kind)` names each one's series."""

    study_uid: str
    lung: list[Path]
    soft: list[Path]
    localizer: Path
    dose_sr: Path
    dose_screen: Path
    presentation_state: Path

    KINDS = ("lung", "soft", "localizer", "dose_sr", "dose_screen", "presentation_state")

    def files(self, kind: str) -> list[Path]:
        value = getattr(self, kind)
        return list(value) if isinstance(value, list) else [value]

    @property
    def all_files(self) -> list[Path]:
        return [path for kind in self.KINDS for path in self.files(kind)]

    def series_uid(self, kind: str) -> str:
        return str(pydicom.dcmread(self.files(kind)[0], stop_before_pixels=True).SeriesInstanceUID)


def write_mixed_study(folder: Path, *, lung_slices: int = 40, size: int = 96, seed: int = 21) -> MixedStudy:
    """Write the study into `folder` (one sub-folder per series)."""
    folder = Path(folder)
    phantom = generate_phantom(shape=(lung_slices, size, size), spacing=(6.0, 3.6, 3.6), seed=seed)
    study_uid, frame_uid = generate_uid(), generate_uid()
    lung = write_series(phantom, folder / "lung", study_uid=study_uid, series_description="Thorax 6.0 lung")
    thick = dataclasses.replace(
        phantom, hu=phantom.hu[::2], labels=phantom.labels[::2], airway=phantom.airway[::2], spacing=(12.0, 3.6, 3.6)
    )
    soft = write_series(thick, folder / "soft", study_uid=study_uid, series_description="Thorax 12.0 soft tissue")
    _rewrite(lung, SeriesNumber=3, ConvolutionKernel=LUNG_KERNEL, FrameOfReferenceUID=frame_uid)
    _rewrite(soft, SeriesNumber=2, ConvolutionKernel=SOFT_KERNEL, FrameOfReferenceUID=frame_uid)
    template = pydicom.dcmread(lung[0], stop_before_pixels=True)
    ct_headers = [pydicom.dcmread(path) for path in lung]
    return MixedStudy(
        study_uid=study_uid,
        lung=lung,
        soft=soft,
        localizer=_save(localizer(template, phantom.hu), folder / "localizer" / "localizer.dcm"),
        dose_sr=_save(dose_report(template), folder / "dose" / "dose_sr.dcm"),
        dose_screen=_save(dose_screen(template), folder / "screen" / "dose_screen.dcm"),
        presentation_state=_save(presentation_state(ct_headers), folder / "pr" / "gsps.dcm"),
    )


def _rewrite(paths: list[Path], **attributes: object) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _new_instance(template: Dataset, sop_class: str, modality: str, series_number: int, description: str) -> Dataset:
    """Patient and study of `template`, a new series and instance of `sop_class`."""
    ds = Dataset()
    for keyword in (
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
    ):
        if keyword in template:
            setattr(ds, keyword, template.data_element(keyword).value)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.SeriesDescription = description
    ds.Manufacturer = "ldct-node test scanner"
    ds.ContentDate, ds.ContentTime = template.StudyDate, template.StudyTime
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def localizer(template: Dataset, hu: np.ndarray) -> Dataset:
    """A coronal scout: CT Image Storage whose ImageType says LOCALIZER."""
    ds = _new_instance(template, CTImageStorage, "CT", 1, "Topogram")
    image = (np.clip(hu.max(axis=1), -1024, 3071) + 1024).astype(np.uint16)[::-1]  # z from top, x across
    for keyword in ("FrameOfReferenceUID", "KVP", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, template.data_element(keyword).value)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.ImagePositionPatient = [-170, 0, 0]
    ds.PixelSpacing = [6.0, 3.6]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = image.tobytes()
    return ds


def dose_report(template: Dataset) -> Dataset:
    """An X-Ray Radiation Dose SR (TID 10011 root, one CT accumulated dose item)."""
    ds = _new_instance(template, XRayRadiationDoseSRStorage, "SR", 990, "Dose Report")
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("113701", "DCM", "X-Ray Radiation Dose Report")]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    total = Dataset()
    total.RelationshipType, total.ValueType = "CONTAINS", "NUM"
    total.ConceptNameCodeSequence = [_code("113813", "DCM", "CT Dose Length Product Total")]
    value = Dataset()
    value.NumericValue = "123.4"
    value.MeasurementUnitsCodeSequence = [_code("mGy.cm", "UCUM", "mGy.cm")]
    total.MeasuredValueSequence = [value]
    ds.ContentSequence = [total]
    return ds


def dose_screen(template: Dataset) -> Dataset:
    """A dose summary screen as a Secondary Capture image, with Modality CT."""
    ds = _new_instance(template, SecondaryCaptureImageStorage, "CT", 991, "Patient Protocol")
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)).tobytes()
    return ds


def presentation_state(ct: list[Dataset]) -> Dataset:
    """A grayscale softcopy presentation state (lung window) on the CT series."""
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=ct,
        series_instance_uid=hd.UID(),
        series_number=992,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ldct-node test scanner",
        manufacturer_model_name="workstation",
        software_versions="1",
        device_serial_number="1",
        content_label="LUNG_WINDOW",
        voi_lut_transformations=[
            hd.pr.SoftcopyVOILUTTransformation(window_center=-600.0, window_width=1500.0, referenced_images=None)
        ],
    )


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item
