"""TID 1500 Measurement Report (Comprehensive 3D SR) with volumes, extents and the risk.

Content tree (Imaging Measurement Report, TID 1500):

- Observation context: device observer "ldct-node" (the segmentation model as model name).
- Procedure reported: LN 25045-6 "CT unspecified body region".
- Imaging Measurements: six TID 1501 Measurement Groups.

  * "Normal lung", "Ground glass opacity", "Consolidation": one group per SEG segment; its
    "Source of Measurement" (DCM 121112, IMAGE) references the SEG instance and that segment
    number, and its Tracking Unique Identifier is the segment's TrackingUID. Measurements:
    Volume (SCT 118565006, cm3) and Extent (99LDCT, % of total lung volume). Algorithm
    identification (TID 4019) of the segmentation model.
  * "Whole lung" and "Lesions (GGO + consolidation)": the same kind of group over several
    segments (its Source of Measurement lists segments 1-3 and 2-3). Lung: Volume. Lesion:
    Volume and Extent. Finding type SCT Lung / SCT Lesion, same algorithm identification.
  * "Risk of severe COVID-19 course" (when a risk is given): algorithm identification of the
    risk model (name, version). Qualitative evaluations: "Risk computed" Yes/No and the
    category (SCT High risk / Low risk, CID 3118). Measurements: probability (DCM 122157, %)
    and the category cut-off (%). TEXT items: calibration status, each covariate used
    ("name = value"), missing, assumed absent, and the reason when not computed.

- Qualitative Evaluations (TID 1500 row, UMLS C0034375): TEXT items "Intended use", one
  "Supersedes earlier result" per replaced SEG/SR, and "Source images lossy compressed" when
  the CT was (LossyImageCompression 01 or a lossy transfer syntax: the measurements may differ
  from those on the original images). Replaced SR documents are also listed in
  the Predecessor Documents Sequence.

Why no TID 1411 (Volumetric ROI) groups: the standard lets one Imaging Measurements container
mix TID 1411 and TID 1501 groups, but PixelMed's DicomSRValidator (Debian pixelmed-apps
20220618) picks one template for the whole container: as soon as one group has a Referenced
Segment it checks every group as TID 1411, and the totals and the risk, which belong to no
single segment, fail ("Missing conditional content item"). TID 1420 in Derived Imaging
Measurements, the other place for totals, makes that validator report an internal error. So
every group is a TID 1501 group and the link to the SEG is the group's Source of Measurement
(an IMAGE item, TID 1501's row for the images a group was measured on) with the Referenced
Segment Number(s), which works for the totals too.

Numbers are stored as a radiologist reads them: volumes to 0.1 cm3, extents and probabilities
to 0.01 %.

Private concepts use the 99LDCT scheme declared in the Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import structlog
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ContainerContentItem,
    FindingSite,
    ImageContentItem,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from inference.quantify import CONSOLIDATION, GGO, NORMAL_LUNG, Quantification
from reporting import codes
from reporting.charset import with_plain_character_set
from reporting.seg import DEFAULT_MANUFACTURER, SOFTWARE_VERSION

if TYPE_CHECKING:
    from reporting.risk import RiskAssessment

log = structlog.get_logger(__name__)

INTENDED_USE_TEXT = "Automatic research measurements, NOT FOR DIAGNOSTIC USE; not reviewed by a radiologist."
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


class ReportInputError(ValueError):
    """Inputs of the report do not fit together; the message says how."""


def _algorithm(name: str, version: str, family: Code | CodedConcept | None = None) -> AlgorithmIdentification:
    return AlgorithmIdentification(name=name, version=version, family=family)


# Precision of the stored numbers: what a radiologist reads, not binary noise.
VOLUME_DECIMALS = 1  # 0.1 cm3
PERCENT_DECIMALS = 2  # 0.01 %


def _volume(value_cm3: float) -> Measurement:
    return Measurement(name=codes.VOLUME, value=round(float(value_cm3), VOLUME_DECIMALS), unit=codes.UNIT_CM3)


def _extent(value_pct: float) -> Measurement:
    return Measurement(name=codes.EXTENT, value=round(float(value_pct), PERCENT_DECIMALS), unit=codes.UNIT_PERCENT)


def _seg_source(seg: Dataset, numbers: Sequence[int]) -> SourceImageForMeasurementGroup:
    """Source of Measurement: the SEG instance and the segments a group was measured on."""
    item = ImageContentItem(
        name=codes.SOURCE_OF_MEASUREMENT,
        referenced_sop_class_uid=str(seg.SOPClassUID),
        referenced_sop_instance_uid=str(seg.SOPInstanceUID),
        referenced_segment_numbers=list(numbers),
        relationship_type="CONTAINS",
    )
    return SourceImageForMeasurementGroup.from_dataset(item, copy=False)


def _segment_description(seg: Dataset, number: int) -> Dataset:
    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) == number:
            return item
    raise ReportInputError(f"the SEG {seg.SOPInstanceUID} has no segment {number}")


def _segment_group(
    seg: Dataset, number: int, volume_cm3: float, extent_pct: float, algorithm: AlgorithmIdentification
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for one SEG segment (its Source of Measurement names the segment)."""
    description = _segment_description(seg, number)
    property_type = hd.sr.CodedConcept.from_dataset(description.SegmentedPropertyTypeCodeSequence[0])
    category = hd.sr.CodedConcept.from_dataset(description.SegmentedPropertyCategoryCodeSequence[0])
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=str(description.get("TrackingUID", "")) or hd.UID(),
            identifier=str(description.SegmentLabel),
        ),
        finding_type=property_type,
        finding_category=category,
        algorithm_id=algorithm,
        finding_sites=None if number == NORMAL_LUNG else [FindingSite(codes.LUNG)],
        measurements=[_volume(volume_cm3), _extent(extent_pct)],
        source_images=[_seg_source(seg, [number])],
    )


def _summary_group(
    label: str,
    finding: Code | CodedConcept,
    measurements: list[Measurement],
    algorithm: AlgorithmIdentification,
    source: SourceImageForMeasurementGroup,
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for a quantity over several segments (lung, lesion)."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=label),
        finding_type=finding,
        finding_sites=[FindingSite(codes.LUNG)],
        algorithm_id=algorithm,
        measurements=measurements,
        source_images=[source],
    )


def _format_covariate(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{float(value):g}"
    return str(value)


def _probability_pct(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ReportInputError(f"risk {what} {value!r} is not a probability between 0 and 1")
    return round(100.0 * value, PERCENT_DECIMALS)


def _risk_group(risk: RiskAssessment) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group holding the prognostic model's result (or why there is none)."""
    measurements: list[Measurement] = []
    evaluations = [QualitativeEvaluation(name=codes.RISK_COMPUTED, value=codes.YES if risk.computed else codes.NO)]
    if risk.computed:
        if risk.probability is None:
            raise ReportInputError("risk marked computed but has no probability")
        measurements.append(
            Measurement(
                name=codes.PROBABILITY, value=_probability_pct(risk.probability, "probability"), unit=codes.UNIT_PERCENT
            )
        )
        if risk.cutoff is not None:
            measurements.append(
                Measurement(
                    name=codes.RISK_CUTOFF, value=_probability_pct(risk.cutoff, "cut-off"), unit=codes.UNIT_PERCENT
                )
            )
        if risk.category is not None:
            category = {"high": codes.HIGH_RISK, "low": codes.LOW_RISK}.get(str(risk.category).lower())
            if category is None:
                raise ReportInputError(f"risk category {risk.category!r} is not 'high' or 'low'")
            evaluations.append(QualitativeEvaluation(name=codes.RISK_CATEGORY, value=category))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="Risk of severe COVID-19 course"),
        finding_type=codes.RISK_OF_SEVERE_COURSE,
        algorithm_id=_algorithm(risk.model_name, risk.model_version),
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )
    # TID 1501 allows TEXT qualitative evaluations; highdicom builds only CODE ones.
    texts = [(codes.CALIBRATION_STATUS, risk.calibration_status)]
    texts += [
        (codes.COVARIATE_USED, f"{name} = {_format_covariate(value)}") for name, value in risk.covariates_used.items()
    ]
    texts += [(codes.COVARIATE_MISSING, name) for name in risk.covariates_missing]
    texts += [(codes.COVARIATE_ASSUMED_ABSENT, name) for name in risk.covariates_assumed_absent]
    if not risk.computed:
        texts.append((codes.REASON_NOT_COMPUTED, risk.reason_not_computed or "not given"))
    container = group[0]
    for concept, text in texts:
        container.ContentSequence.append(
            TextContentItem(name=concept, value=str(text)[:1024] or "-", relationship_type="CONTAINS")
        )
    return group


def _predecessor_stubs(study_uid: str, supersedes: Sequence[tuple[str, str, str]]) -> list[Dataset]:
    """Minimal datasets for highdicom's Predecessor Documents Sequence (SR documents only)."""
    stubs = []
    for sop_class_uid, sop_instance_uid, series_uid in supersedes:
        if str(sop_class_uid).startswith(SR_SOP_CLASS_PREFIX):
            stub = Dataset()
            stub.SOPClassUID = sop_class_uid
            stub.SOPInstanceUID = sop_instance_uid
            stub.SeriesInstanceUID = series_uid
            stub.StudyInstanceUID = study_uid
            stubs.append(stub)
    return stubs


def _supersedes_text(sop_class_uid: str, sop_instance_uid: str, series_uid: str) -> str:
    kind = {
        "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
        "1.2.840.10008.5.1.4.1.1.66.7": "SEG",
        "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    }.get(str(sop_class_uid), "SR" if str(sop_class_uid).startswith(SR_SOP_CLASS_PREFIX) else "object")
    return f"{kind} instance {sop_instance_uid} (series {series_uid}, SOP class {sop_class_uid})"


def _lossy_text(source_lossy: str) -> str:
    return (
        f"The source images were lossy compressed ({source_lossy}): the measurements may differ "
        "from those on the original images."
    )[:1024]


def _check_inputs(source_datasets: Sequence[Dataset], seg: Dataset) -> None:
    if len(source_datasets) == 0:
        raise ReportInputError("no source images")
    if str(seg.get("Modality", "")) != "SEG":
        raise ReportInputError("the `seg` argument is not a Segmentation (Modality SEG)")
    if str(seg.StudyInstanceUID) != str(source_datasets[0].StudyInstanceUID):
        raise ReportInputError("the SEG belongs to another study than the source images")
    for number in (NORMAL_LUNG, GGO, CONSOLIDATION):
        _segment_description(seg, number)


def build_measurement_report(
    source_datasets: Sequence[Dataset],
    seg: Dataset,
    quant: Quantification,
    *,
    algorithm_name: str,
    algorithm_version: str,
    risk: RiskAssessment | None = None,
    series_number: int = 902,
    series_description: str = "LDCT lung lesions report",
    series_instance_uid: str | None = None,
    supersedes: Sequence[tuple[str, str, str]] = (),
    manufacturer: str = DEFAULT_MANUFACTURER,
    instance_number: int = 1,
    source_lossy: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Comprehensive 3D SR of `quant`, referencing `seg` and the source series.

    `supersedes`: (SOP class UID, SOP instance UID, series UID) of earlier results (SEG/SR of
    the same series) that this report replaces. `source_lossy`: how the source images were
    lossy-compressed (`inference.volume.lossy_compression`), said in the report; None: they were not.
    """
    _check_inputs(source_datasets, seg)
    source_series_uid = str(source_datasets[0].SeriesInstanceUID)
    algorithm = _algorithm(algorithm_name, algorithm_version, codes.ARTIFICIAL_INTELLIGENCE)
    normal_pct = 100.0 * quant.normal_lung_cm3 / quant.lung_cm3 if quant.lung_cm3 > 0 else 0.0

    groups: list = [
        _segment_group(seg, NORMAL_LUNG, quant.normal_lung_cm3, normal_pct, algorithm),
        _segment_group(seg, GGO, quant.ggo_cm3, quant.ggo_pct, algorithm),
        _segment_group(seg, CONSOLIDATION, quant.consolidation_cm3, quant.consolidation_pct, algorithm),
        _summary_group(
            "Whole lung",
            codes.LUNG,
            [_volume(quant.lung_cm3)],
            algorithm,
            _seg_source(seg, [NORMAL_LUNG, GGO, CONSOLIDATION]),
        ),
        _summary_group(
            "Lesions (GGO + consolidation)",
            codes.LESION,
            [_volume(quant.lesion_cm3), _extent(quant.lesion_pct)],
            algorithm,
            _seg_source(seg, [GGO, CONSOLIDATION]),
        ),
    ]
    if risk is not None:
        groups.append(_risk_group(risk))

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        # a stable UID per node software and model, so reports of one device group together
        uid=generate_uid(entropy_srcs=["ldct-node", algorithm_name, algorithm_version]),
        name="ldct-node",
        manufacturer_name=manufacturer,
        model_name=f"{algorithm_name} {algorithm_version}"[:64],
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DEVICE, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.CT_PROCEDURE,
        imaging_measurements=groups,
    )
    evaluations = ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    evaluations.ContentSequence = DicomSequence(
        [TextContentItem(name=codes.INTENDED_USE, value=INTENDED_USE_TEXT, relationship_type="CONTAINS")]
        + [
            TextContentItem(name=codes.SUPERSEDES, value=_supersedes_text(*entry), relationship_type="CONTAINS")
            for entry in supersedes
        ]
        + (
            [TextContentItem(name=codes.SOURCE_LOSSY, value=_lossy_text(source_lossy), relationship_type="CONTAINS")]
            if source_lossy
            else []
        )
    )
    report[0].ContentSequence.append(evaluations)

    study_uid = str(source_datasets[0].StudyInstanceUID)
    predecessors = _predecessor_stubs(study_uid, supersedes)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*with_plain_character_set(source_datasets), seg],
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,  # automatic, unreviewed measurements
        is_verified=False,
        previous_versions=predecessors or None,
        series_description=series_description,
        software_versions=SOFTWARE_VERSION,
        coding_schemes=[codes.private_coding_scheme_item()],
    )
    log.info(
        "sr_built",
        sop_instance_uid=str(sr.SOPInstanceUID),
        seg_sop_instance_uid=str(seg.SOPInstanceUID),
        source_series_uid=source_series_uid,
        risk_computed=None if risk is None else bool(risk.computed),
        supersedes=len(supersedes),
        source_lossy=bool(source_lossy),
    )
    return sr
