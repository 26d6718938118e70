"""Small synthetic CT series and label maps for the reporting tests.

The series is a complete CT Image Storage instance set (patient, study, series, frame of
reference, equipment, image plane, image pixel, CT image and SOP common modules) so that the
SEG/SR/key-image builders see what a scanner would send. Sizes are tiny (default 16 x 64 x 64)
to keep the tests fast.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

FIXTURE_PATIENT_NAME = "Fixture^Reporting"
FIXTURE_PATIENT_ID = "FIXTURE-0001"


def make_ct_series(
    n_slices: int = 16,
    size: int = 64,
    *,
    slice_spacing_mm: float = 2.5,
    pixel_spacing_mm: float = 0.7,
    hu: np.ndarray | None = None,
    shuffle: bool = False,
    seed: int = 0,
) -> list[Dataset]:
    """CT Image Storage datasets (with pixel data), slice i at z = -100 + i * spacing.

    `hu` (z, y, x) int16 gives the pixel values in HU (default: `make_hu_volume`). The list is
    sorted from lowest to highest z (the loader's order) unless `shuffle` is set.
    """
    if hu is None:
        hu = make_hu_volume(n_slices, size)
    n_slices, rows, cols = hu.shape
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for index in range(n_slices):
        ds = Dataset()
        sop_uid = generate_uid()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = "20260101"
        ds.SeriesDate = "20260101"
        ds.StudyTime = "101500"
        ds.SeriesTime = "101600"
        ds.ContentDate = "20260101"
        ds.ContentTime = "101600"
        ds.AccessionNumber = "ACC0001"
        ds.Modality = "CT"
        ds.Manufacturer = "FixtureScanner"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "LDCT chest"
        ds.SeriesDescription = "Fixture low-dose chest"
        ds.PatientName = FIXTURE_PATIENT_NAME
        ds.PatientID = FIXTURE_PATIENT_ID
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "F"
        ds.PatientAge = "066Y"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{slice_spacing_mm:g}"
        ds.KVP = "120"
        ds.PatientPosition = "FFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [
            f"{-cols * pixel_spacing_mm / 2:g}",
            f"{-rows * pixel_spacing_mm / 2:g}",
            f"{-100 + index * slice_spacing_mm:g}",
        ]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{-100 + index * slice_spacing_mm:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [f"{pixel_spacing_mm:g}", f"{pixel_spacing_mm:g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        stored = (hu[index].astype(np.int32) + 1024).clip(-32768, 32767).astype(np.int16)
        ds.PixelData = stored.tobytes()
        datasets.append(ds)
    if shuffle:
        np.random.default_rng(seed).shuffle(datasets)
    return datasets


def headers_only(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Copies without pixel data, as the node passes them (read with stop_before_pixels)."""
    headers = []
    for ds in datasets:
        header = copy.deepcopy(ds)
        del header.PixelData
        headers.append(header)
    return headers


def write_series(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write each dataset as <folder>/<n>.dcm (explicit VR little endian, with preamble)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ellipsoid(shape: tuple[int, int, int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (
        ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2
    ) <= 1.0


def make_label_map(n_slices: int = 16, size: int = 64) -> np.ndarray:
    """uint8 (z, y, x) labels: two lungs (1) with a GGO blob (2) and a consolidation blob (3).

    The lesions sit in different slices and are asymmetric so that any flip or slice-order
    error in a round trip changes the masks.
    """
    shape = (n_slices, size, size)
    labels = np.zeros(shape, dtype=np.uint8)
    lung_radii = (n_slices * 0.42, size * 0.3, size * 0.17)
    labels[_ellipsoid(shape, (n_slices * 0.45, size * 0.5, size * 0.3), lung_radii)] = 1
    labels[_ellipsoid(shape, (n_slices * 0.45, size * 0.5, size * 0.7), lung_radii)] = 1
    lung = labels == 1
    ggo = _ellipsoid(shape, (n_slices * 0.6, size * 0.4, size * 0.28), (n_slices * 0.2, size * 0.12, size * 0.08))
    cons = _ellipsoid(shape, (n_slices * 0.3, size * 0.6, size * 0.72), (n_slices * 0.12, size * 0.08, size * 0.06))
    labels[ggo & lung] = 2
    labels[cons & lung] = 3
    return labels


def make_hu_volume(n_slices: int = 16, size: int = 64, labels: np.ndarray | None = None) -> np.ndarray:
    """int16 HU volume: soft tissue body, air lungs, GGO at -500 HU, consolidation at 20 HU."""
    if labels is None:
        labels = make_label_map(n_slices, size)
    shape = labels.shape
    hu = np.full(shape, -1000, dtype=np.int16)
    body = _ellipsoid(
        shape, (shape[0] / 2, shape[1] / 2, shape[2] / 2), (shape[0] * 4, shape[1] * 0.45, shape[2] * 0.48)
    )
    hu[body] = 40
    hu[labels == 1] = -850
    hu[labels == 2] = -500
    hu[labels == 3] = 20
    return hu


def make_trachea_phantom(
    n_slices: int = 40, size: int = 64, split_index: int = 24, bronchi_labelled_lung: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(hu, labels) with two lung columns and a trachea that splits at `split_index`.

    Slice index grows towards the head. The trachea (radius 3 px, -1000 HU, not lung) runs
    from the top slice down to `split_index`, the last single-lumen slice; below it two
    bronchi (radius 2 px) diverge by 1 px per slice. With `bronchi_labelled_lung` the bronchi
    carry label 1, as a model that counts the main bronchi as lung would give.
    """
    labels = np.zeros((n_slices, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    left_lung = ((yy - size / 2) / (size * 0.35)) ** 2 + ((xx - size * 0.22) / (size * 0.16)) ** 2 <= 1
    right_lung = ((yy - size / 2) / (size * 0.35)) ** 2 + ((xx - size * 0.78) / (size * 0.16)) ** 2 <= 1
    labels[:, left_lung | right_lung] = 1
    hu = np.full(labels.shape, 40, np.int16)
    hu[labels == 1] = -850
    centre_y, centre_x = size // 2, size // 2
    for index in range(n_slices):
        if index >= split_index:
            lumens = [((yy - centre_y) ** 2 + (xx - centre_x) ** 2) <= 9]
        else:
            offset = 3 + (split_index - index)
            lumens = [
                ((yy - centre_y) ** 2 + (xx - (centre_x - offset)) ** 2) <= 4,
                ((yy - centre_y) ** 2 + (xx - (centre_x + offset)) ** 2) <= 4,
            ]
        for lumen in lumens:
            hu[index][lumen] = -1000
            if index < split_index and bronchi_labelled_lung:
                labels[index][lumen] = 1
    return hu, labels
