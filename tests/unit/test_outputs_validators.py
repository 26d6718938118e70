"""SEG, SR and key images pass both independent validators: dciodvfy and PixelMed (0 errors)."""

from __future__ import annotations

import pydicom
import pytest

from inference.quantify import quantify
from inference.volume import load_series
from reporting.dicom_file import write_dataset
from reporting.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from reporting.key_images import build_key_images
from reporting.seg import build_segmentation
from reporting.sr import build_measurement_report
from tests.reporting_fixtures import make_ct_series, make_hu_volume, make_label_map, write_series
from tests.unit.test_sr import COMPREHENSIVE_3D_SR, COMPUTED_RISK, NOT_COMPUTED_RISK
from tests.validators import INSTANCE_VALIDATOR, SR_VALIDATOR, needs_validators, pixelmed, reports

LOSSY = "LossyImageCompression 01 (ISO_10918_1, ratio 10), 16 of 16 images"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """SEG, two SRs (risk computed and superseding; risk not computed, from lossy-compressed
    images) and one key image (from lossy-compressed images)."""
    folder = tmp_path_factory.mktemp("outputs")
    labels = make_label_map(16, 64)
    hu = make_hu_volume(labels=labels)
    write_series(make_ct_series(hu=hu), folder / "ct")
    volume = load_series(folder / "ct")
    names = {"algorithm_name": "fixture-unet", "algorithm_version": "1.2.3"}
    seg = build_segmentation(volume.datasets, labels, **names)
    quant = quantify(labels, volume.voxel_volume_ml)
    old_sr = (COMPREHENSIVE_3D_SR, "1.2.3.4.5.1", "1.2.3.4.5")
    computed = build_measurement_report(volume.datasets, seg, quant, risk=COMPUTED_RISK, supersedes=[old_sr], **names)
    not_computed = build_measurement_report(
        volume.datasets, seg, quant, risk=NOT_COMPUTED_RISK, source_lossy=LOSSY, **names
    )
    key_image = build_key_images(hu, labels, volume.datasets, quant, COMPUTED_RISK, max_images=1, source_lossy=True)[0]
    return {
        "seg": write_dataset(seg, folder / "seg.dcm"),
        "sr": write_dataset(computed, folder / "sr.dcm"),
        "sr_not_computed": write_dataset(not_computed, folder / "sr_not_computed.dcm"),
        "key_image": write_dataset(key_image, folder / "key_image.dcm"),
    }


def test_lossy_source_is_said_in_the_sr_and_kept_in_key_images(outputs):
    said = [
        item.TextValue
        for container in pydicom.dcmread(outputs["sr_not_computed"]).ContentSequence
        for item in container.get("ContentSequence", [])
        if item.ConceptNameCodeSequence[0].CodeValue == "LDCT0022"
    ]
    assert len(said) == 1 and LOSSY in said[0]
    assert pydicom.dcmread(outputs["key_image"], stop_before_pixels=True).LossyImageCompression == "01"
    assert not any(
        item.ConceptNameCodeSequence[0].CodeValue == "LDCT0022"
        for container in pydicom.dcmread(outputs["sr"]).ContentSequence
        for item in container.get("ContentSequence", [])
    )


def test_outputs_name_ldct_node_as_their_writer(outputs):
    """PS3.10 7.1: the File Meta's implementation is the one that wrote the file, not highdicom."""
    for path in outputs.values():
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        assert (meta.ImplementationClassUID, meta.ImplementationVersionName) == (
            IMPLEMENTATION_CLASS_UID,
            IMPLEMENTATION_VERSION_NAME,
        ), path.name


@needs_validators
def test_outputs_pass_dciodvfy_and_pixelmed(outputs):
    found = reports(list(outputs.values()))
    errors = [line for report in found for line in report.error_lines()]
    assert errors == []
    by_file = {(r.path.stem, r.validator): r for r in found}
    # PixelMed really checked what it knows: the SEG's IOD, the SR's IOD and TID 1500 tree.
    assert "Found Segmentation IOD" in by_file["seg", "DicomInstanceValidator"].found
    for name in ("sr", "sr_not_computed"):
        assert by_file[name, "DicomSRValidator"].found == [
            "Found Comprehensive3DSR IOD",
            "Found Root Template TID_1500 (MeasurementReport)",
        ]
    # The 2022 jar knows neither Secondary Capture nor SR IODs in DicomInstanceValidator:
    # it says so instead of checking (dciodvfy checks the key image's IOD).
    assert by_file["key_image", "DicomInstanceValidator"].found == []


@needs_validators
def test_pixelmed_errors_are_caught(outputs, tmp_path):
    """The checks can fail: the SR layout this replaced, and a SEG without any laterality.

    One group with a Referenced Segment (TID 1411 style) next to groups without one is what the
    node wrote before: PixelMed then checks every group as TID 1411 and reports each that has
    no segment ("Missing conditional content item"), see reporting/sr.py.
    """
    from highdicom.sr import ImageContentItem
    from pydicom.sr.codedict import codes

    mixed = pydicom.dcmread(outputs["sr"])
    measurements = next(
        item for item in mixed.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    )  # Imaging Measurements
    reference = measurements.ContentSequence[0].ContentSequence[-1].ReferencedSOPSequence[0]
    measurements.ContentSequence[0].ContentSequence.append(
        ImageContentItem(
            name=codes.DCM.ReferencedSegment,
            referenced_sop_class_uid=reference.ReferencedSOPClassUID,
            referenced_sop_instance_uid=reference.ReferencedSOPInstanceUID,
            referenced_segment_numbers=[1],
            relationship_type="CONTAINS",
        )
    )
    mixed.save_as(tmp_path / "mixed_sr.dcm")
    errors = pixelmed(tmp_path / "mixed_sr.dcm", SR_VALIDATOR).errors
    assert errors and all("Missing conditional content item" in line for line in errors), errors

    seg = pydicom.dcmread(outputs["seg"])
    del seg.ImageLaterality  # PixelMed then wants the series Laterality (see reporting/seg.py)
    seg.save_as(tmp_path / "seg_no_laterality.dcm")
    assert any("Laterality" in line for line in pixelmed(tmp_path / "seg_no_laterality.dcm", INSTANCE_VALIDATOR).errors)
