"""Every coded concept the DICOM outputs use, in one place.

Standard codes were checked against the DICOM content mapping resource (PS3.16) as shipped in
pydicom's code dictionaries (``pydicom.sr.codedict.codes``), which list the context groups (CID)
each code belongs to:

- SCT 39607008 "Lung": CID 7151 Segmentation Property Type (anatomical structures).
- SCT 91723000 "Anatomical Structure" and SCT 49755003 "Morphologically Abnormal Structure":
  CID 7150 Segmentation Property Category.
- DCM 112120 "Ground glass opacity": a DICOM code in CID 6102 (Chest Finding or Feature
  Modifier) and CID 6104 (Abnormal Opacity Finding or Feature). It is the standard's own term
  for the finding, so it beats a SNOMED code we could not verify (SCT 50427001 was suggested,
  but no DICOM context group or dictionary we checked lists it as "ground glass opacity").
- SCT 95436008 "Lung consolidation": no DICOM context group has consolidation; this SNOMED
  concept is the usual choice (e.g. OMOP/SNOMED browsers list 95436008 as "Lung
  consolidation"). It is a disorder concept, used here as segmented property type.
- DCM 123110 "Artificial Intelligence": CID 7162, the context group of Algorithm Family Code
  Sequence (the earlier suggestion DCM 113037 is "Rejected for Patient Safety Reasons").
- SCT 118565006 "Volume": the TID 300 measurement concept highdicom itself uses.
- LN 25045-6 "CT unspecified body region": CID 100 Quantitative Diagnostic Imaging Procedure
  (procedure reported in TID 1500).
- SCT 15508007 "High risk" / 75976002 "Low risk": CID 3118 Level of Risk.
- DCM 122157 "Probability"; SCT 373066001 "Yes" / 373067005 "No" (CID 230).
- DCM 121112 "Source of Measurement" (CID 7551): names the SEG segments a measurement group was
  measured on.

Concepts with no standard code (lesion extent as % of lung, the risk model's covariates,
calibration status, superseded results, lossy-compressed source images) use the private coding scheme ``99LDCT``. The SR
declares it in its Coding Scheme Identification Sequence (``private_coding_scheme_item``).
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

# ---------------------------------------------------------------- private coding scheme
PRIVATE_SCHEME = "99LDCT"
PRIVATE_SCHEME_NAME = "ldct-node local codes"
PRIVATE_SCHEME_ORGANIZATION = "ldct-node project"


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def private_coding_scheme_item() -> CodingSchemeIdentificationItem:
    """Item for CodingSchemeIdentificationSequence declaring the private scheme."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        responsible_organization=PRIVATE_SCHEME_ORGANIZATION,
    )


# ---------------------------------------------------------------- segmentation property codes
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # SCT 91723000
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
LUNG = codes.SCT.Lung  # SCT 39607008
GROUND_GLASS_OPACITY = codes.DCM.GroundGlassOpacity  # DCM 112120
LUNG_CONSOLIDATION = CodedConcept(value="95436008", scheme_designator="SCT", meaning="Lung consolidation")
LESION = codes.SCT.Lesion  # SCT 52988006

ARTIFICIAL_INTELLIGENCE = codes.DCM.ArtificialIntelligence  # DCM 123110 (CID 7162)

# ---------------------------------------------------------------- measurement codes
VOLUME = codes.SCT.Volume  # SCT 118565006
PROBABILITY = codes.DCM.Probability  # DCM 122157
SOURCE_OF_MEASUREMENT = codes.DCM.SourceOfMeasurement  # DCM 121112 (TID 1501 source images)
CT_PROCEDURE = codes.LN.CTUnspecifiedBodyRegion  # LN 25045-6 (CID 100)
HIGH_RISK = codes.SCT.HighRisk  # SCT 15508007 (CID 3118)
LOW_RISK = codes.SCT.LowRisk  # SCT 75976002 (CID 3118)
DEVICE = codes.DCM.Device  # observer type in TID 1002
YES = codes.SCT.Yes
NO = codes.SCT.No
# TID 1500 row "Qualitative Evaluations" container (the standard uses this UMLS concept)
QUALITATIVE_EVALUATIONS = CodedConcept(value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations")

# UCUM units
UNIT_CM3 = CodedConcept(value="cm3", scheme_designator="UCUM", meaning="cubic centimeter")
UNIT_PERCENT = CodedConcept(value="%", scheme_designator="UCUM", meaning="percent")

# ---------------------------------------------------------------- private concepts
EXTENT = _private("LDCT0001", "Extent (percent of total lung volume)")
WHOLE_LUNG_SUMMARY = _private("LDCT0002", "Whole lung summary")
RISK_OF_SEVERE_COURSE = _private("LDCT0010", "Risk of severe COVID-19 course")
RISK_COMPUTED = _private("LDCT0011", "Risk computed")
RISK_CATEGORY = _private("LDCT0012", "Risk category")
RISK_CUTOFF = _private("LDCT0013", "Risk category cut-off probability")
CALIBRATION_STATUS = _private("LDCT0014", "Calibration status")
COVARIATE_USED = _private("LDCT0015", "Covariate used")
COVARIATE_MISSING = _private("LDCT0016", "Covariate missing")
COVARIATE_ASSUMED_ABSENT = _private("LDCT0017", "Covariate assumed absent")
REASON_NOT_COMPUTED = _private("LDCT0018", "Reason risk not computed")
SUPERSEDES = _private("LDCT0020", "Supersedes earlier result")
INTENDED_USE = _private("LDCT0021", "Intended use")
SOURCE_LOSSY = _private("LDCT0022", "Source images lossy compressed")
