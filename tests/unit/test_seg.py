"""SEG round trip: build from a fixture series, validate with dciodvfy, read back, compare."""

from __future__ import annotations

import shutil
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest

from inference.volume import load_series
from reporting import codes
from reporting.dicom_file import DicomWriteError, write_dataset
from reporting.seg import SegmentationInputError, build_segmentation
from tests import validators
from tests.reporting_fixtures import (
    headers_only,
    make_ct_series,
    make_hu_volume,
    make_label_map,
    write_series,
)
from tests.validators import ValidatorMissingError, dciodvfy_errors, dciodvfy_report

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A fixture series written in shuffled file order and loaded (sorted) by the node's loader."""
    labels = make_label_map(16, 64)
    series = make_ct_series(hu=make_hu_volume(labels=labels), shuffle=True)
    folder = tmp_path_factory.mktemp("ct")
    write_series(series, folder)
    volume = load_series(folder)
    return volume, labels


def _frame_source_index(seg: pydicom.Dataset, volume) -> list[int]:
    """Source slice index of each SEG frame, from its plane position AND its source reference."""
    uid_to_index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(volume.datasets)}
    z_to_index = {round(float(ds.ImagePositionPatient[2]), 3): i for i, ds in enumerate(volume.datasets)}
    indices = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        by_position = z_to_index[round(float(position[2]), 3)]
        source_uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert uid_to_index[source_uid] == by_position, "frame position and source reference disagree"
        assert [float(v) for v in position] == pytest.approx(
            [float(v) for v in volume.datasets[by_position].ImagePositionPatient]
        )
        indices.append(by_position)
    return indices


@needs_dciodvfy
@pytest.mark.parametrize("omit_empty_frames", [False, True])
def test_seg_round_trip(loaded, tmp_path, omit_empty_frames):
    volume, labels = loaded
    seg = build_segmentation(
        volume.datasets,
        labels,
        algorithm_name="fixture-unet",
        algorithm_version="1.2.3",
        omit_empty_frames=omit_empty_frames,
    )
    path = write_dataset(seg, tmp_path / "seg.dcm")
    errors, warnings = dciodvfy_report(path)
    for line in warnings:
        print("dciodvfy:", line)
    assert errors == []

    raw = pydicom.dcmread(path)
    assert raw.Modality == "SEG"
    assert raw.SegmentationType == "BINARY"
    assert raw.SeriesNumber == 901
    assert raw.SeriesDescription == "LDCT lung lesions SEG"
    assert raw.Manufacturer == "ldct-node"
    assert raw.PatientID == volume.datasets[0].PatientID
    assert raw.StudyInstanceUID == volume.datasets[0].StudyInstanceUID
    assert raw.FrameOfReferenceUID == volume.datasets[0].FrameOfReferenceUID
    if omit_empty_frames:
        assert raw.NumberOfFrames < 3 * labels.shape[0]
    else:
        assert raw.NumberOfFrames == 3 * labels.shape[0]

    # Independent of highdicom's reader: decode each frame, find its slice by position.
    frames = raw.pixel_array.reshape(int(raw.NumberOfFrames), *labels.shape[1:])
    source_index = _frame_source_index(raw, volume)
    rebuilt = np.zeros_like(labels)
    seen = set()
    for frame_pixels, index, item in zip(frames, source_index, raw.PerFrameFunctionalGroupsSequence, strict=True):
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frame_pixels.astype(bool), labels[index] == segment)
        rebuilt[index][frame_pixels.astype(bool)] = segment
        seen.add((segment, index))
    np.testing.assert_array_equal(rebuilt, labels)
    if not omit_empty_frames:
        assert len(seen) == 3 * labels.shape[0]

    # highdicom's reader agrees, per class, in source order.
    reread = hd.seg.segread(path)
    assert reread.get_segment_numbers() == [1, 2, 3]
    expected = {
        1: ("Normal lung", codes.LUNG),
        2: ("Ground glass opacity", codes.GROUND_GLASS_OPACITY),
        3: ("Consolidation", codes.LUNG_CONSOLIDATION),
    }
    source_uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    for number, (label, property_type) in expected.items():
        description = reread.get_segment_description(number)
        assert description.segment_label == label
        assert description.segmented_property_type == property_type
        algorithm = description.algorithm_identification[0]
        assert algorithm.AlgorithmName == "fixture-unet"
        assert algorithm.AlgorithmVersion == "1.2.3"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        mask = reread.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[number])[
            ..., 0
        ]
        np.testing.assert_array_equal(mask.astype(bool), labels == number)


def test_seg_from_headers_without_pixels():
    """Headers read without pixel data are enough; the default series UID is fresh."""
    series = make_ct_series(4, 32)
    labels = np.zeros((4, 32, 32), np.uint8)
    labels[1, 5:10, 5:10] = 2
    seg = build_segmentation(headers_only(series), labels, algorithm_name="a", algorithm_version="1")
    assert seg.SeriesInstanceUID != series[0].SeriesInstanceUID
    assert int(seg.NumberOfFrames) == 12


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((3, 32, 32), np.uint8), "3 slices but there are 4"),
        (np.zeros((4, 16, 32), np.uint8), "16x32"),
        (np.full((4, 32, 32), 7, np.uint8), "label value 7"),
        (np.zeros((32, 32), np.uint8), "3-D"),
    ],
)
def test_seg_rejects_mismatched_labels(labels, message):
    series = headers_only(make_ct_series(4, 32))
    with pytest.raises(SegmentationInputError, match=message):
        build_segmentation(series, labels, algorithm_name="a", algorithm_version="1")


def test_seg_rejects_unsorted_source_images():
    series = headers_only(make_ct_series(4, 32))
    series[1], series[2] = series[2], series[1]
    with pytest.raises(SegmentationInputError, match="not sorted"):
        build_segmentation(series, np.zeros((4, 32, 32), np.uint8), algorithm_name="a", algorithm_version="1")
    descending = headers_only(make_ct_series(4, 32))[::-1]  # head-first order is fine
    seg = build_segmentation(descending, np.zeros((4, 32, 32), np.uint8), algorithm_name="a", algorithm_version="1")
    assert int(seg.NumberOfFrames) == 12


@pytest.mark.slow
def test_seg_encoding_time_full_size_series():
    """261 slices of 512x512 x 3 segments, empty frames kept: encoded in <= 2 s."""
    n, size = 261, 512
    headers = headers_only(make_ct_series(hu=np.zeros((n, size, size), np.int16)))
    labels = np.zeros((n, size, size), np.uint8)
    labels[20:240, 100:420, 60:250] = 1
    labels[20:240, 100:420, 270:460] = 1
    labels[80:140, 150:250, 100:200] = 2
    labels[150:200, 300:380, 300:400] = 3
    best = np.inf
    for _ in range(2):
        started = time.perf_counter()
        seg = build_segmentation(headers, labels, algorithm_name="a", algorithm_version="1")
        best = min(best, time.perf_counter() - started)
    print(f"SEG 261x512x512x3 built in {best:.2f} s")
    assert int(seg.NumberOfFrames) == 3 * n
    assert best <= 2.0


@needs_dciodvfy
def test_dciodvfy_reports_errors_of_a_broken_object(tmp_path):
    """The validator is not a no-op: a CT image without required attributes gives errors."""
    broken = make_ct_series(1, 16)[0]
    del broken.ImagePositionPatient
    del broken.Rows
    errors = dciodvfy_errors(write_dataset(broken, tmp_path / "broken.dcm"))
    assert errors and all(line.startswith("Error") for line in errors)
    assert any("ImagePositionPatient" in line or "Image Position" in line for line in errors)
    assert dciodvfy_errors(make_ct_series(1, 16)[0]) == []  # a Dataset is written for the check


def test_dciodvfy_missing_binary_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(validators.shutil, "which", lambda name: None)
    with pytest.raises(ValidatorMissingError, match="dicom3tools"):
        dciodvfy_errors(make_ct_series(1, 16)[0])


def test_write_dataset_enforces_explicit_little_endian(tmp_path):
    ds = make_ct_series(1, 16)[0]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    del ds.file_meta.MediaStorageSOPInstanceUID
    path = write_dataset(ds, tmp_path / "sub" / "ct.dcm")
    assert path.read_bytes()[128:132] == b"DICM"
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.Rows == 16
    no_uid = make_ct_series(1, 16)[0]
    del no_uid.SOPInstanceUID
    with pytest.raises(DicomWriteError, match="SOPInstanceUID"):
        write_dataset(no_uid, tmp_path / "x.dcm")
