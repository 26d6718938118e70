"""Completeness and eligibility decisions on spooled files."""

import pydicom
import pytest
from pydicom.uid import EnhancedCTImageStorage, SecondaryCaptureImageStorage

from config.settings import SeriesSettings
from dicom_node.queue.series import SeriesTracker, evaluate_series
from inference.synthetic import generate_phantom, write_series


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s")
    return write_series(generate_phantom(shape=(24, 32, 32), spacing=(5, 10, 10), seed=2), folder)


def test_complete_axial_series_is_queued_in_slice_order(series):
    decision = evaluate_series(list(reversed(series)), SeriesSettings())
    assert decision.eligible and decision.outcome == "queued"
    assert len(decision.instance_uids) == 24
    headers = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in series)}
    zs = [float(headers[uid].ImagePositionPatient[2]) for uid in decision.instance_uids]
    assert zs == sorted(zs)


def test_missing_slice_is_inconsistent_with_reason(series):
    files = series[:10] + series[11:]
    decision = evaluate_series(files, SeriesSettings())
    assert decision.outcome == "inconsistent" and "missing" in decision.reason


def test_too_few_slices_is_ineligible(series):
    decision = evaluate_series(series[:5], SeriesSettings())
    assert decision.outcome == "ineligible" and "min_slices" in decision.reason


def test_description_filters(series):
    assert "exclude" in evaluate_series(series, SeriesSettings(exclude_descriptions=["chest"])).reason
    assert "include" in evaluate_series(series, SeriesSettings(include_descriptions=["^LUNG$"])).reason


def test_duplicate_positions_dropped(series, tmp_path):
    dup = pydicom.dcmread(series[3])
    dup.SOPInstanceUID = dup.SOPInstanceUID + ".9"
    path = tmp_path / f"{dup.SOPInstanceUID}.dcm"
    dup.save_as(path)
    decision = evaluate_series([*series, path], SeriesSettings())
    assert decision.eligible and len(decision.instance_uids) == 24


def test_non_ct_and_corrupt_files(series, tmp_path):
    mr = pydicom.dcmread(series[0])
    mr.Modality = "MR"
    mr.save_as(tmp_path / "mr.dcm")
    assert evaluate_series([tmp_path / "mr.dcm", *series[1:]], SeriesSettings()).outcome == "ineligible"
    (tmp_path / "bad.dcm").write_bytes(b"not dicom at all")
    decision = evaluate_series([*series, tmp_path / "bad.dcm"], SeriesSettings())
    assert decision.outcome == "inconsistent" and "unreadable" in decision.reason


def test_other_sop_classes_are_not_processed_and_left_out_of_a_ct_series(series, tmp_path):
    enhanced = pydicom.dcmread(series[0])
    enhanced.SOPClassUID = enhanced.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    enhanced.save_as(tmp_path / "enhanced.dcm")
    decision = evaluate_series([tmp_path / "enhanced.dcm"], SeriesSettings())
    assert decision.outcome == "not processed" and not decision.eligible
    assert decision.reason == (
        "not processed: Enhanced CT Image (multi-frame; send CT Image Storage to have it analysed)"
    )
    screen = pydicom.dcmread(series[0])  # a dose screen filed in the CT series: left out, the CT is processed
    screen.SOPClassUID = screen.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    screen.SOPInstanceUID = screen.SOPInstanceUID + ".7"
    screen.save_as(tmp_path / "screen.dcm")
    decision = evaluate_series([*series, tmp_path / "screen.dcm"], SeriesSettings())
    assert decision.eligible and len(decision.instance_uids) == 24
    assert screen.SOPInstanceUID not in decision.instance_uids


def test_tilted_series_is_not_axial(series, tmp_path):
    files = []
    for i, p in enumerate(series):
        ds = pydicom.dcmread(p)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
        files.append(tmp_path / f"{i}.dcm")
        ds.save_as(files[-1])
    assert "axial" in evaluate_series(files, SeriesSettings()).reason


def test_tracker_reports_only_idle_series():
    tracker = SeriesTracker()
    tracker.touch("1", "1.1", "CT", at=0.0)
    tracker.touch("1", "1.2", "CT")
    idle = tracker.pop_idle(5)
    assert [a.series_uid for a in idle] == ["1.1"]
    assert tracker.is_active("1.2") and not tracker.is_active("1.1")


def test_two_acquisitions_at_the_same_positions_are_inconsistent(series, tmp_path):
    second = []
    for i, p in enumerate(series):
        ds = pydicom.dcmread(p)
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID[:50]}.{i + 1}"
        ds.AcquisitionNumber = 2
        second.append(tmp_path / f"{i}.dcm")
        ds.save_as(second[-1])
    decision = evaluate_series(series + second, SeriesSettings())
    assert decision.outcome == "inconsistent" and "acquisitions" in decision.reason
