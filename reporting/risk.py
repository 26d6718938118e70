"""Prognostic risk of a severe COVID-19 course (the reference study's Model C).

The study (Bartoli et al. 2022, section 2.4 and Table 3) fitted a logistic regression of a
severe outcome (oxygen therapy, ICU, hospitalisation >= 10 days or death; 14% of 1621
patients) on clinical covariates plus the automatic lesion extent, standardised to mean 0 /
SD 1. A `RiskModel` is that regression stored as a versioned JSON file (coefficients as log
odds, intercept, score standardisation, high-risk cutoff, provenance); `assess_risk` applies
it to one study's covariates.

Covariates and the model's features
-----------------------------------
The model's linear predictor is built from *features* derived from patient-level
*covariates*:

| feature             | from covariate      | value                                   |
| ------------------- | ------------------- | --------------------------------------- |
| male                | sex                 | 1 if "M", 0 if "F"                      |
| age_45_64           | age_years           | 1 if 45 <= completed years <= 64        |
| age_over_64         | age_years           | 1 if completed years >= 65              |
| hypertension, ...   | same name           | 0/1                                     |
| onset_over_7_days   | days_since_onset    | 1 if > 7 days; 0 if <= 7 or asymptomatic|
| lesion_extent_pct   | lesion extent (%)   | (x - mean) / sd  (score, standardised)  |
| ct_ss               | CT severity score   | (x - mean) / sd  (score, standardised)  |

Unknown versus asymptomatic: in a cohort file a blank `days_since_onset` means the patient
had no symptoms (the study's reference group is "<= 7 days / asymptomatic"). At the node a
`None` means *unknown*; a patient known to be asymptomatic is `Covariates(asymptomatic=True)`.
Only the latter counts as "<= 7 days" without an assumption.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import structlog

log = structlog.get_logger(__name__)

DEFAULT_MODEL_PATH = Path(__file__).parent / "models" / "model_c_default.json"
SUPPORTED_FORMAT_VERSIONS = (1,)
MIN_ADULT_AGE_YEARS = 18

COMORBIDITIES = (
    "hypertension",
    "diabetes",
    "cancer",
    "respiratory_disease",
    "cardiac_disease",
    "obesity",
)
SCORES = ("lesion_extent_pct", "ct_ss")
CLINICAL_FEATURES = ("male", "age_45_64", "age_over_64", *COMORBIDITIES, "onset_over_7_days")
KNOWN_FEATURES = (*CLINICAL_FEATURES, *SCORES)

# Which patient-level covariate each feature is derived from (see module docstring).
FEATURE_SOURCE: dict[str, str] = {
    "male": "sex",
    "age_45_64": "age_years",
    "age_over_64": "age_years",
    **{name: name for name in COMORBIDITIES},
    "onset_over_7_days": "days_since_onset",
    "lesion_extent_pct": "lesion_extent_pct",
    "ct_ss": "ct_ss",
}

CALIBRATION_NOT_LOCAL = "published odds ratios, not locally calibrated"

MissingPolicy = Literal["omit", "assume-absent"]


class RiskModelError(ValueError):
    """A risk model file is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class RiskAssessment:
    """Outcome of applying a risk model to one study.

    `computed` is False when a required covariate was missing under the chosen policy; then
    `probability`, `category` and `cutoff` are None and `reason_not_computed` says why.
    `covariates_used` maps covariate names to the values that entered the model
    (numbers as float, sex as "M"/"F", a known asymptomatic patient's onset as
    "asymptomatic"); `covariates_assumed_absent` lists covariates set to their reference
    value (comorbidity absent, onset not > 7 days) because the policy was "assume-absent".
    """

    computed: bool
    probability: float | None
    category: str | None  # "high" or "low"
    cutoff: float | None
    model_name: str
    model_version: str
    calibration_status: str
    covariates_used: dict[str, str | float] = field(default_factory=dict)
    covariates_missing: list[str] = field(default_factory=list)
    covariates_assumed_absent: list[str] = field(default_factory=list)
    reason_not_computed: str | None = None


@dataclass(frozen=True)
class Covariates:
    """Patient-level covariates of one study; None means unknown.

    `days_since_onset` is days from symptom onset to the scan. `asymptomatic=True` says the
    patient had no symptoms (then `days_since_onset` stays None); see the module docstring
    for why "unknown" and "asymptomatic" are kept apart.
    """

    age_years: float | None = None
    sex: str | None = None  # "M" or "F"
    hypertension: bool | None = None
    diabetes: bool | None = None
    cancer: bool | None = None
    respiratory_disease: bool | None = None
    cardiac_disease: bool | None = None
    obesity: bool | None = None
    days_since_onset: float | None = None
    asymptomatic: bool | None = None

    def merged_with(self, other: Covariates) -> Covariates:
        """Fill this record's unknown values from `other` (this record wins where both know)."""
        values = {
            name: getattr(self, name) if getattr(self, name) is not None else getattr(other, name)
            for name in self.__dataclass_fields__
        }
        return Covariates(**values)


@dataclass(frozen=True)
class CovariateSpec:
    """Meaning and units of one covariate, as stored in the model file."""

    name: str
    meaning: str
    units: str


@dataclass(frozen=True)
class RiskModel:
    """A logistic regression loaded from a model file (see `load_risk_model`)."""

    format_version: int
    name: str
    version: str
    coefficients: dict[str, float]  # log odds per unit of each feature (per SD for scores)
    intercept: float
    standardisation: dict[str, dict[str, float]]  # score -> {"mean", "sd"}
    cutoff: float  # probability at or above which the category is "high"
    covariates: list[CovariateSpec]
    provenance: dict[str, Any]
    calibration_status: str

    @property
    def calibrated_locally(self) -> bool:
        return bool(self.provenance.get("calibrated_locally", False))

    def required_covariates(self) -> list[str]:
        """Covariate names the model needs, in a stable order."""
        needed: list[str] = []
        for feature in self.coefficients:
            source = FEATURE_SOURCE[feature]
            if source not in needed:
                needed.append(source)
        return needed

    def linear_predictor(self, features: dict[str, float]) -> float:
        """Intercept + sum of coefficient x feature; scores are standardised here."""
        total = self.intercept
        for feature, beta in self.coefficients.items():
            value = features[feature]
            if feature in SCORES:
                stats = self.standardisation[feature]
                value = (value - stats["mean"]) / stats["sd"]
            total += beta * value
        return total

    def probability(self, features: dict[str, float]) -> float:
        return _sigmoid(self.linear_predictor(features))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "calibration_status": self.calibration_status,
            "coefficients": dict(self.coefficients),
            "intercept": self.intercept,
            "standardisation": {k: dict(v) for k, v in self.standardisation.items()},
            "cutoff": self.cutoff,
            "covariates": [{"name": c.name, "meaning": c.meaning, "units": c.units} for c in self.covariates],
            "provenance": dict(self.provenance),
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


COVARIATE_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "age_years": ("age at the scan; bands 18-44 (reference), 45-64, >64", "years"),
    "sex": ("sex; male versus female (reference)", "M/F"),
    "hypertension": ("hypertension", "0/1"),
    "diabetes": ("diabetes mellitus", "0/1"),
    "cancer": ("cancer", "0/1"),
    "respiratory_disease": ("chronic respiratory disease", "0/1"),
    "cardiac_disease": ("cardiac (coronary artery) disease", "0/1"),
    "obesity": ("obesity (BMI >= 30)", "0/1"),
    "days_since_onset": (
        "time from symptom onset to the scan; > 7 days versus <= 7 days or asymptomatic (reference)",
        "days",
    ),
    "lesion_extent_pct": (
        "automatic lesion (GGO + consolidation) extent, standardised with the model's mean/SD",
        "% of lung volume",
    ),
    "ct_ss": ("visual CT severity score, standardised with the model's mean/SD", "points (0-40)"),
}


def covariate_specs_for(coefficients: dict[str, float]) -> list[CovariateSpec]:
    """The `covariates` section of a model file for these coefficients."""
    names: list[str] = []
    for feature in coefficients:
        source = FEATURE_SOURCE[feature]
        if source not in names:
            names.append(source)
    return [CovariateSpec(n, *COVARIATE_DESCRIPTIONS[n]) for n in names]


_REQUIRED_KEYS = (
    "format_version",
    "name",
    "version",
    "coefficients",
    "intercept",
    "standardisation",
    "cutoff",
    "covariates",
    "provenance",
)


def risk_model_from_dict(data: dict[str, Any], source: str = "<dict>") -> RiskModel:
    """Validate a parsed model file; RiskModelError names the first problem found."""
    if not isinstance(data, dict):
        raise RiskModelError(f"{source}: a risk model file must hold a JSON object")
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise RiskModelError(f"{source}: missing key(s) {', '.join(missing)}")
    if data["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
        raise RiskModelError(
            f"{source}: format_version {data['format_version']!r} is not supported "
            f"(supported: {SUPPORTED_FORMAT_VERSIONS})"
        )
    coefficients = data["coefficients"]
    if not isinstance(coefficients, dict) or not coefficients:
        raise RiskModelError(f"{source}: 'coefficients' must be a non-empty object")
    unknown = [k for k in coefficients if k not in KNOWN_FEATURES]
    if unknown:
        raise RiskModelError(
            f"{source}: unknown coefficient(s) {', '.join(unknown)} (known: {', '.join(KNOWN_FEATURES)})"
        )
    try:
        coefficients = {k: float(v) for k, v in coefficients.items()}
        intercept = float(data["intercept"])
        cutoff = float(data["cutoff"])
    except (TypeError, ValueError) as exc:
        raise RiskModelError(f"{source}: coefficients, intercept and cutoff must be numbers") from exc
    if not all(math.isfinite(v) for v in (*coefficients.values(), intercept)):
        raise RiskModelError(f"{source}: coefficients and intercept must be finite")
    if not 0.0 < cutoff < 1.0:
        raise RiskModelError(f"{source}: cutoff must be a probability in (0, 1), got {cutoff}")
    standardisation = data["standardisation"]
    if not isinstance(standardisation, dict):
        raise RiskModelError(f"{source}: 'standardisation' must be an object")
    for score in (k for k in coefficients if k in SCORES):
        stats = standardisation.get(score)
        if not isinstance(stats, dict) or "mean" not in stats or "sd" not in stats:
            raise RiskModelError(f"{source}: standardisation.{score} needs 'mean' and 'sd'")
        if not float(stats["sd"]) > 0:
            raise RiskModelError(f"{source}: standardisation.{score}.sd must be > 0")
    standardisation = {k: {"mean": float(v["mean"]), "sd": float(v["sd"])} for k, v in standardisation.items()}
    provenance = data["provenance"]
    if not isinstance(provenance, dict):
        raise RiskModelError(f"{source}: 'provenance' must be an object")
    for key in ("source", "method", "calibrated_locally"):
        if key not in provenance:
            raise RiskModelError(f"{source}: missing key provenance.{key}")
    try:
        covariates = [CovariateSpec(str(c["name"]), str(c["meaning"]), str(c["units"])) for c in data["covariates"]]
    except (TypeError, KeyError) as exc:
        raise RiskModelError(f"{source}: each entry of 'covariates' needs name, meaning and units") from exc
    calibration_status = data.get("calibration_status") or (
        "locally calibrated" if provenance["calibrated_locally"] else CALIBRATION_NOT_LOCAL
    )
    return RiskModel(
        format_version=int(data["format_version"]),
        name=str(data["name"]),
        version=str(data["version"]),
        coefficients=coefficients,
        intercept=intercept,
        standardisation=standardisation,
        cutoff=cutoff,
        covariates=covariates,
        provenance=dict(provenance),
        calibration_status=str(calibration_status),
    )


def load_risk_model(path: str | Path | None = None) -> RiskModel:
    """Load a model file; None loads the shipped default (published Model C odds ratios)."""
    model_path = Path(path) if path is not None else DEFAULT_MODEL_PATH
    try:
        text = model_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RiskModelError(f"cannot read risk model file {model_path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RiskModelError(f"{model_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    model = risk_model_from_dict(data, source=str(model_path))
    log.debug("risk_model_loaded", name=model.name, version=model.version)
    return model


def onset_over_7_days(covariates: Covariates) -> float | None:
    """1/0 for the onset feature, or None when neither the delay nor asymptomatic is known."""
    if covariates.days_since_onset is not None:
        return 1.0 if covariates.days_since_onset > 7 else 0.0
    if covariates.asymptomatic:
        return 0.0
    return None


def age_band_features(age_years: float) -> dict[str, float]:
    """Indicators of the study's age bands, on completed years (reference 18-44)."""
    completed = math.floor(age_years)
    return {
        "age_45_64": 1.0 if 45 <= completed <= 64 else 0.0,
        "age_over_64": 1.0 if completed >= 65 else 0.0,
    }


def assess_risk(
    model: RiskModel,
    covariates: Covariates,
    lesion_extent_pct: float | None,
    missing_policy: MissingPolicy = "omit",
    ct_ss: float | None = None,
) -> RiskAssessment:
    """Apply `model` to one study.

    missing_policy "omit": any covariate the model needs that is unknown -> not computed,
    with the missing ones listed. "assume-absent": unknown comorbidities are taken as absent
    and an unknown onset as "<= 7 days" (the reference groups), each listed in
    `covariates_assumed_absent`; age, sex and scores cannot be assumed, so when one of them
    is unknown the risk is not computed.
    """
    if missing_policy not in ("omit", "assume-absent"):
        raise ValueError(f"missing_policy must be 'omit' or 'assume-absent', not {missing_policy!r}")
    needed = model.required_covariates()
    used: dict[str, str | float] = {}
    missing: list[str] = []
    assumed: list[str] = []
    features: dict[str, float] = {}
    problems: list[str] = []

    for name in needed:
        if name == "age_years":
            age = covariates.age_years
            if age is None:
                missing.append(name)
            elif age < MIN_ADULT_AGE_YEARS:
                problems.append(f"age {age:g} years is below {MIN_ADULT_AGE_YEARS}: the model was derived in adults")
            else:
                used[name] = float(age)
                features.update(age_band_features(age))
        elif name == "sex":
            sex = (covariates.sex or "").upper()
            if sex in ("M", "F"):
                used[name] = sex
                features["male"] = 1.0 if sex == "M" else 0.0
            else:
                missing.append(name)
        elif name in COMORBIDITIES:
            value = getattr(covariates, name)
            if value is not None:
                used[name] = 1.0 if value else 0.0
                features[name] = used[name]  # type: ignore[assignment]
            elif missing_policy == "assume-absent":
                used[name] = 0.0
                features[name] = 0.0
                assumed.append(name)
            else:
                missing.append(name)
        elif name == "days_since_onset":
            flag = onset_over_7_days(covariates)
            if flag is not None:
                used[name] = (
                    float(covariates.days_since_onset) if covariates.days_since_onset is not None else "asymptomatic"
                )
                features["onset_over_7_days"] = flag
            elif missing_policy == "assume-absent":
                used[name] = "not > 7 days (assumed)"
                features["onset_over_7_days"] = 0.0
                assumed.append(name)
            else:
                missing.append(name)
        elif name == "lesion_extent_pct":
            if lesion_extent_pct is None or not math.isfinite(lesion_extent_pct):
                missing.append(name)
            else:
                used[name] = float(lesion_extent_pct)
                features[name] = float(lesion_extent_pct)
        elif name == "ct_ss":
            if ct_ss is None:
                missing.append(name)
            else:
                used[name] = float(ct_ss)
                features[name] = float(ct_ss)

    assessment = partial(
        RiskAssessment,
        model_name=model.name,
        model_version=model.version,
        calibration_status=model.calibration_status,
        covariates_used=used,
        covariates_missing=missing,
        covariates_assumed_absent=assumed,
    )
    if missing or problems:
        reasons = list(problems)
        if missing:
            reasons.insert(0, "missing covariate(s): " + ", ".join(missing))
        reason = "; ".join(reasons)
        log.info("risk_not_computed", model=model.name, missing=missing, policy=missing_policy)
        return assessment(
            computed=False,
            probability=None,
            category=None,
            cutoff=None,
            reason_not_computed=reason,
        )
    probability = model.probability(features)
    category = "high" if probability >= model.cutoff else "low"
    log.info(
        "risk_computed",
        model=model.name,
        version=model.version,
        category=category,
        assumed_absent=assumed,
    )
    return assessment(
        computed=True,
        probability=probability,
        category=category,
        cutoff=model.cutoff,
    )


_MODEL_CACHE: dict[tuple[str, float], RiskModel] = {}


def _cached_model(path: str | Path | None) -> RiskModel:
    """Load a model file once per (path, modification time): workers assess many series."""
    model_path = Path(path) if path else DEFAULT_MODEL_PATH
    try:
        stamp = model_path.stat().st_mtime
    except OSError:
        stamp = -1.0
    key = (str(model_path), stamp)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_risk_model(model_path)
    return _MODEL_CACHE[key]


def assess_for_series(
    header: Any,
    lesion_extent_pct: float | None,
    clinical: dict[str, Any] | None,
    model_path: str | Path | None = None,
    missing_policy: MissingPolicy = "omit",
) -> RiskAssessment:
    """The node's entry point: header age/sex + imported clinical record -> risk.

    `clinical` is a stored `ClinicalRecord.to_dict()` (or None when nothing was imported).
    A model file that cannot be loaded does not fail the job: the assessment comes back
    not computed, with the loader's message as the reason, so SEG and SR still go out.
    """
    from reporting.clinical_records import ClinicalRecord, covariates_for_study

    record = ClinicalRecord.from_dict(clinical) if clinical else None
    covariates = covariates_for_study(header, record)
    try:
        model = _cached_model(model_path)
    except RiskModelError as exc:
        log.error("risk_model_unavailable", error=str(exc))
        return RiskAssessment(
            computed=False,
            probability=None,
            category=None,
            cutoff=None,
            model_name="unavailable",
            model_version="-",
            calibration_status="not applicable",
            reason_not_computed=f"risk model unavailable: {exc}",
        )
    return assess_risk(model, covariates, lesion_extent_pct, missing_policy=missing_policy)


def parse_dicom_age(value: str) -> float | None:
    """A DICOM AS value ("055Y", "006M", "010W", "020D") in years; None when unparseable."""
    text = str(value).strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in "DWMY":
        return None
    number = int(text[:3])
    days_per_unit = {"D": 1.0, "W": 7.0}
    if text[3] == "Y":
        return float(number)
    if text[3] == "M":
        return number / 12.0
    return number * days_per_unit[text[3]] / 365.25


def _parse_dicom_date(value: Any) -> date | None:
    text = str(value or "").strip()
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def completed_years(birth: date, on: date) -> int:
    """Age in completed years on a date (birthday not yet reached -> one less)."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def covariates_from_header(ds: Any) -> tuple[float | None, str | None]:
    """Age (years) and sex ("M"/"F") from a DICOM header.

    Age comes from PatientAge; when that is absent or malformed, from PatientBirthDate and
    StudyDate (completed years). Sex is PatientSex when it is M or F, else None ("O" or
    empty tells the model nothing it can use).
    """
    age = parse_dicom_age(getattr(ds, "PatientAge", "") or "")
    if age is None:
        birth = _parse_dicom_date(getattr(ds, "PatientBirthDate", ""))
        study = _parse_dicom_date(getattr(ds, "StudyDate", ""))
        if birth is not None and study is not None and study >= birth:
            age = float(completed_years(birth, study))
    sex = str(getattr(ds, "PatientSex", "") or "").strip().upper()
    return age, (sex if sex in ("M", "F") else None)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
