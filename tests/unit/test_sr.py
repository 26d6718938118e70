"""TID 1500 SR round trip: volumes, extents, SEG references, risk section, supersedes."""

from __future__ import annotations

import re
import shutil
import subprocess

import highdicom as hd
import pydicom
import pytest

from inference.quantify import quantify
from inference.volume import load_series
from reporting import codes
from reporting.dicom_file import write_dataset
from reporting.risk import RiskAssessment
from reporting.seg import build_segmentation
from reporting.sr import ReportInputError, build_measurement_report
from tests.reporting_fixtures import (
    headers_only,
    make_ct_series,
    make_hu_volume,
    make_label_map,
    write_series,
)
from tests.validators import dciodvfy_report

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
needs_dsrdump = pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk not installed")

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

COMPUTED_RISK = RiskAssessment(
    computed=True,
    probability=0.2345,
    category="high",
    cutoff=0.14,
    model_name="model-c-logistic",
    model_version="2022.1",
    calibration_status="published odds ratios, not locally calibrated",
    covariates_used={"age_years": 66.0, "sex": "F", "lesion_extent_pct": 12.5},
    covariates_missing=[],
    covariates_assumed_absent=["diabetes", "obesity"],
)
NOT_COMPUTED_RISK = RiskAssessment(
    computed=False,
    probability=None,
    category=None,
    cutoff=None,
    model_name="model-c-logistic",
    model_version="2022.1",
    calibration_status="published odds ratios, not locally calibrated",
    covariates_used={"lesion_extent_pct": 12.5},
    covariates_missing=["age_years", "sex"],
    reason_not_computed="required covariates missing: age_years, sex",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    labels = make_label_map(16, 64)
    folder = tmp_path_factory.mktemp("ct")
    write_series(make_ct_series(hu=make_hu_volume(labels=labels), shuffle=True), folder)
    volume = load_series(folder)
    seg = build_segmentation(volume.datasets, labels, algorithm_name="fixture-unet", algorithm_version="1.2.3")
    quant = quantify(labels, volume.voxel_volume_ml)
    return volume, seg, quant


def _items(dataset, name_meaning: str | None = None, value_type: str | None = None):
    """All content items below `dataset` (depth first), optionally filtered."""
    found = []
    for item in dataset.get("ContentSequence", []):
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else None
        if (name_meaning is None or meaning == name_meaning) and (value_type is None or item.ValueType == value_type):
            found.append(item)
        found.extend(_items(item, name_meaning, value_type))
    return found


def _group(raw, tracking_identifier: str):
    for group in _items(raw, "Measurement Group", "CONTAINER"):
        ids = [i.TextValue for i in _items(group, "Tracking Identifier", "TEXT")]
        if ids == [tracking_identifier]:
            return group
    raise AssertionError(f"no measurement group {tracking_identifier!r}")


def _texts(group, meaning: str) -> list[str]:
    return [
        item.TextValue
        for item in group.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def _build_and_write(study, tmp_path, **kwargs):
    volume, seg, quant = study
    sr = build_measurement_report(
        volume.datasets, seg, quant, algorithm_name="fixture-unet", algorithm_version="1.2.3", **kwargs
    )
    path = write_dataset(sr, tmp_path / "sr.dcm")
    errors, warnings = dciodvfy_report(path)
    for line in warnings:
        print("dciodvfy:", line)
    assert errors == []
    return path


@needs_dciodvfy
def test_sr_round_trip_measurements_and_references(study, tmp_path):
    volume, seg, quant = study
    old_sr = (COMPREHENSIVE_3D_SR, "1.2.3.4.5.1", "1.2.3.4.5")
    old_seg = (SEG_STORAGE, "1.2.3.4.6.1", "1.2.3.4.6")
    path = _build_and_write(study, tmp_path, risk=COMPUTED_RISK, supersedes=[old_sr, old_seg])

    raw = pydicom.dcmread(path)
    source = volume.datasets[0]
    assert raw.SOPClassUID == COMPREHENSIVE_3D_SR
    assert raw.Modality == "SR"
    assert raw.SeriesNumber == 902
    assert raw.SeriesDescription == "LDCT lung lesions report"
    assert raw.Manufacturer == "ldct-node"
    assert raw.StudyInstanceUID == source.StudyInstanceUID
    assert raw.PatientID == source.PatientID
    assert raw.PatientName == source.PatientName
    assert raw.CompletionFlag == "COMPLETE"
    assert raw.VerificationFlag == "UNVERIFIED"
    assert [s.CodingSchemeDesignator for s in raw.CodingSchemeIdentificationSequence] == ["99LDCT"]

    # Evidence: the SEG and the CT series; predecessors: only the old SR.
    evidence = {
        str(series.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence}
        for study_item in raw.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
    }
    assert evidence[str(seg.SeriesInstanceUID)] == {str(seg.SOPInstanceUID)}
    assert evidence[str(source.SeriesInstanceUID)] == {str(ds.SOPInstanceUID) for ds in volume.datasets}
    predecessors = [
        str(instance.ReferencedSOPInstanceUID)
        for study_item in raw.PredecessorDocumentsSequence
        for series in study_item.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    ]
    assert predecessors == ["1.2.3.4.5.1"]
    supersedes = [i.TextValue for i in _items(raw, "Supersedes earlier result", "TEXT")]
    assert len(supersedes) == 2
    assert "SR instance 1.2.3.4.5.1" in supersedes[0]
    assert "SEG instance 1.2.3.4.6.1" in supersedes[1]
    assert "NOT FOR DIAGNOSTIC USE" in _items(raw, "Intended use", "TEXT")[0].TextValue

    # highdicom's reader: six TID 1501 groups; each names the SEG segment(s) it was measured on.
    report = hd.sr.srread(path).content
    expected = {
        "Normal lung": ([1], quant.normal_lung_cm3, 100 * quant.normal_lung_cm3 / quant.lung_cm3),
        "Ground glass opacity": ([2], quant.ggo_cm3, quant.ggo_pct),
        "Consolidation": ([3], quant.consolidation_cm3, quant.consolidation_pct),
        "Whole lung": ([1, 2, 3], quant.lung_cm3, None),
        "Lesions (GGO + consolidation)": ([2, 3], quant.lesion_cm3, quant.lesion_pct),
    }
    assert report.get_volumetric_roi_measurement_groups() == []  # see reporting/sr.py: why TID 1501
    groups = {g.tracking_identifier: g for g in report.get_image_measurement_groups()}
    assert set(groups) == {*expected, "Risk of severe COVID-19 course"}
    for name, (numbers, volume_cm3, extent_pct) in expected.items():
        group = groups[name]
        [source] = group.source_images
        reference = source.ReferencedSOPSequence[0]
        assert reference.ReferencedSOPClassUID == seg.SOPClassUID
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        segment_numbers = reference.ReferencedSegmentNumber  # US, VM 1-n
        assert [int(n) for n in ([segment_numbers] if isinstance(segment_numbers, int) else segment_numbers)] == numbers
        if len(numbers) == 1:
            segment = next(item for item in seg.SegmentSequence if int(item.SegmentNumber) == numbers[0])
            assert group.tracking_uid == segment.TrackingUID  # same lesion identity in SEG and SR
        values = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values[codes.VOLUME.value] == (round(volume_cm3, 1), "cm3")  # 0.1 cm3
        if extent_pct is None:
            assert codes.EXTENT.value not in values
        else:
            assert values[codes.EXTENT.value] == (round(extent_pct, 2), "%")  # 0.01 %
        assert [i.TextValue for i in _items(group[0], "Algorithm Name", "TEXT")] == ["fixture-unet"]
        assert [i.TextValue for i in _items(group[0], "Algorithm Version", "TEXT")] == ["1.2.3"]

    # Risk section.
    risk_group = groups["Risk of severe COVID-19 course"]
    risk_values = {m.name.meaning: (m.value, m.unit.value) for m in risk_group.get_measurements()}
    assert risk_values["Probability"] == (pytest.approx(23.45), "%")
    assert risk_values["Risk category cut-off probability"] == (pytest.approx(14.0), "%")
    evaluations = {q.name.meaning: q.value for q in risk_group.get_qualitative_evaluations()}
    assert evaluations["Risk computed"].value == codes.YES.value
    assert evaluations["Risk category"].value == codes.HIGH_RISK.value
    raw_risk = _group(raw, "Risk of severe COVID-19 course")
    assert [i.TextValue for i in _items(raw_risk, "Algorithm Name", "TEXT")] == ["model-c-logistic"]
    assert [i.TextValue for i in _items(raw_risk, "Algorithm Version", "TEXT")] == ["2022.1"]
    assert _texts(raw_risk, "Calibration status") == ["published odds ratios, not locally calibrated"]
    assert _texts(raw_risk, "Covariate used") == ["age_years = 66", "sex = F", "lesion_extent_pct = 12.5"]
    assert _texts(raw_risk, "Covariate assumed absent") == ["diabetes", "obesity"]
    assert _texts(raw_risk, "Covariate missing") == []


@needs_dciodvfy
def test_sr_risk_not_computed_lists_missing_covariates(study, tmp_path):
    path = _build_and_write(study, tmp_path, risk=NOT_COMPUTED_RISK)
    raw = pydicom.dcmread(path)
    raw_risk = _group(raw, "Risk of severe COVID-19 course")
    assert _items(raw_risk, "Probability") == []
    assert _items(raw_risk, "Risk category") == []
    computed = _items(raw_risk, "Risk computed", "CODE")
    assert [c.ConceptCodeSequence[0].CodeValue for c in computed] == [codes.NO.value]
    assert _texts(raw_risk, "Covariate missing") == ["age_years", "sex"]
    assert _texts(raw_risk, "Reason risk not computed") == ["required covariates missing: age_years, sex"]
    assert _texts(raw_risk, "Calibration status") == ["published odds ratios, not locally calibrated"]
    assert "PredecessorDocumentsSequence" not in raw


@needs_dciodvfy
def test_sr_without_risk_has_no_risk_group(study, tmp_path):
    path = _build_and_write(study, tmp_path)
    raw = pydicom.dcmread(path)
    identifiers = [i.TextValue for i in _items(raw, "Tracking Identifier", "TEXT")]
    assert "Risk of severe COVID-19 course" not in identifiers
    assert len(identifiers) == 5


@needs_dsrdump
def test_dsrdump_shows_numbers_as_a_radiologist_reads_them(study, tmp_path):
    """0.1 cm3 and 0.01 %, not "209.573000000000 cm3" or "93.0077361217377 %"."""
    volume, seg, quant = study
    sr = build_measurement_report(
        volume.datasets, seg, quant, algorithm_name="u", algorithm_version="1", risk=COMPUTED_RISK
    )
    path = write_dataset(sr, tmp_path / "sr.dcm")
    dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=True).stdout
    numbers = re.findall(r'NUM:\(,,"([^"]+)"\)="([-0-9.]+)" \((cm3|%),UCUM', dump)
    assert len(numbers) == 11, dump  # 5 volumes, 4 extents, probability and cut-off
    for name, value, unit in numbers:
        decimals = len(value.partition(".")[2])
        assert decimals <= (1 if unit == "cm3" else 2), f"{name} = {value} {unit}"
    lesion_section = dump[dump.index('"Lesions (GGO + consolidation)"') :]
    extent = re.search(r'NUM:\(,,"Extent \(percent of total lung volume\)"\)="([0-9.]+)" \(%,UCUM', lesion_section)
    assert extent is not None, dump
    assert float(extent.group(1)) == round(quant.lesion_pct, 2)
    volume_text = re.search(r'NUM:\(,,"Volume"\)="([0-9.]+)" \(cm3,UCUM', lesion_section).group(1)
    assert float(volume_text) == round(quant.lesion_cm3, 1)
    assert '"Probability")="23.45" (%,UCUM' in dump
    assert '"Risk category cut-off probability")="14.0" (%,UCUM' in dump
    assert '(15508007,SCT,"High risk")' in dump


def test_sr_rejects_bad_inputs(study):
    volume, seg, quant = study
    other_study = headers_only(make_ct_series(4, 32))
    with pytest.raises(ReportInputError, match="another study"):
        build_measurement_report(other_study, seg, quant, algorithm_name="u", algorithm_version="1")
    with pytest.raises(ReportInputError, match="not a Segmentation"):
        build_measurement_report(volume.datasets, volume.datasets[0], quant, algorithm_name="u", algorithm_version="1")
    bad_probability = RiskAssessment(**{**COMPUTED_RISK.__dict__, "probability": 23.4})
    with pytest.raises(ReportInputError, match="between 0 and 1"):
        build_measurement_report(
            volume.datasets, seg, quant, algorithm_name="u", algorithm_version="1", risk=bad_probability
        )
    bad_category = RiskAssessment(**{**COMPUTED_RISK.__dict__, "category": "medium"})
    with pytest.raises(ReportInputError, match="'high' or 'low'"):
        build_measurement_report(
            volume.datasets, seg, quant, algorithm_name="u", algorithm_version="1", risk=bad_category
        )
