"""Risk model files, assess_risk and its missing-covariate policies, header age/sex."""

from __future__ import annotations

import json
import math

import pytest
from pydicom.dataset import Dataset

from reporting.derive_default_model import derive_default_model
from reporting.risk import (
    CALIBRATION_NOT_LOCAL,
    DEFAULT_MODEL_PATH,
    Covariates,
    RiskAssessment,
    RiskModelError,
    assess_risk,
    covariates_from_header,
    load_risk_model,
    parse_dicom_age,
)

HAND_MODEL = {
    "format_version": 1,
    "name": "hand-model",
    "version": "0.1",
    "coefficients": {
        "male": 0.2,
        "age_45_64": 0.5,
        "age_over_64": 1.5,
        "hypertension": 0.3,
        "diabetes": -0.1,
        "cancer": 0.8,
        "respiratory_disease": 0.05,
        "cardiac_disease": 0.4,
        "onset_over_7_days": -0.2,
        "lesion_extent_pct": 1.2,
    },
    "intercept": -3.0,
    "standardisation": {"lesion_extent_pct": {"mean": 10.0, "sd": 5.0}},
    "cutoff": 0.2,
    "covariates": [{"name": "age_years", "meaning": "age", "units": "years"}],
    "provenance": {"source": "test", "method": "by hand", "calibrated_locally": False},
}

ALL_KNOWN = Covariates(
    age_years=70,
    sex="M",
    hypertension=True,
    diabetes=False,
    cancer=True,
    respiratory_disease=False,
    cardiac_disease=False,
    days_since_onset=10,
)


def write_model(tmp_path, data) -> str:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    return str(path)


def expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_known_answer_probability_from_model_file(tmp_path):
    model = load_risk_model(write_model(tmp_path, HAND_MODEL))
    result = assess_risk(model, ALL_KNOWN, lesion_extent_pct=20.0)
    # male, >64, hypertension, cancer, onset > 7 days, extent (20 - 10) / 5 = 2 SD
    logit = -3.0 + 0.2 + 1.5 + 0.3 + 0.8 - 0.2 + 1.2 * 2.0
    assert result.computed
    assert result.probability == pytest.approx(expit(logit), rel=1e-12)
    assert result.category == "high" and result.cutoff == 0.2
    assert result.model_name == "hand-model" and result.model_version == "0.1"
    assert result.covariates_used["sex"] == "M"
    assert result.covariates_used["lesion_extent_pct"] == 20.0
    assert result.covariates_used["days_since_onset"] == 10.0
    assert result.covariates_missing == [] and result.covariates_assumed_absent == []


def test_known_answer_low_risk_young_woman(tmp_path):
    model = load_risk_model(write_model(tmp_path, HAND_MODEL))
    covariates = Covariates(
        age_years=30,
        sex="F",
        hypertension=False,
        diabetes=True,
        cancer=False,
        respiratory_disease=True,
        cardiac_disease=False,
        asymptomatic=True,
    )
    result = assess_risk(model, covariates, lesion_extent_pct=5.0)
    logit = -3.0 - 0.1 + 0.05 + 1.2 * (5.0 - 10.0) / 5.0
    assert result.probability == pytest.approx(expit(logit), rel=1e-12)
    assert result.category == "low"
    assert result.covariates_used["days_since_onset"] == "asymptomatic"


@pytest.mark.parametrize(
    ("age", "band_logit"),
    [(18, 0.0), (44.9, 0.0), (45, 0.5), (64.99, 0.5), (65, 1.5), (90, 1.5)],
)
def test_age_bands_on_completed_years(tmp_path, age, band_logit):
    model = load_risk_model(write_model(tmp_path, HAND_MODEL))
    covariates = Covariates(
        age_years=age,
        sex="F",
        hypertension=False,
        diabetes=False,
        cancer=False,
        respiratory_disease=False,
        cardiac_disease=False,
        days_since_onset=3,
    )
    result = assess_risk(model, covariates, lesion_extent_pct=10.0)
    assert result.probability == pytest.approx(expit(-3.0 + band_logit))


def test_omit_policy_lists_missing_and_does_not_compute(tmp_path):
    model = load_risk_model(write_model(tmp_path, HAND_MODEL))
    partial = Covariates(age_years=50, sex="F", hypertension=True)
    result = assess_risk(model, partial, lesion_extent_pct=12.0, missing_policy="omit")
    assert not result.computed
    assert result.probability is None and result.category is None and result.cutoff is None
    assert result.covariates_missing == [
        "diabetes",
        "cancer",
        "respiratory_disease",
        "cardiac_disease",
        "days_since_onset",
    ]
    assert "diabetes" in result.reason_not_computed
    assert result.covariates_assumed_absent == []


def test_assume_absent_policy_sets_comorbidities_and_onset_to_reference(tmp_path):
    model = load_risk_model(write_model(tmp_path, HAND_MODEL))
    partial = Covariates(age_years=50, sex="F", hypertension=True)
    result = assess_risk(model, partial, lesion_extent_pct=12.0, missing_policy="assume-absent")
    assert result.computed
    assert result.covariates_assumed_absent == [
        "diabetes",
        "cancer",
        "respiratory_disease",
        "cardiac_disease",
        "days_since_onset",
    ]
    assert result.covariates_missing == []
    assert result.covariates_used["diabetes"] == 0.0
    logit = -3.0 + 0.5 + 0.3 + 1.2 * (12.0 - 10.0) / 5.0
    assert result.probability == pytest.approx(expit(logit))


@pytest.mark.parametrize(
    ("covariates", "extent", "missing"),
    [
        (Covariates(sex="F"), 10.0, "age_years"),
        (Covariates(age_years=50), 10.0, "sex"),
        (Covariates(age_years=50, sex="O"), 10.0, "sex"),
        (Covariates(age_years=50, sex="F"), None, "lesion_extent_pct"),
    ],
)
def test_assume_absent_cannot_assume_age_sex_or_extent(tmp_path, covariates, extent, missing):
    model = load_risk_model(write_model(tmp_path, HAND_MODEL))
    result = assess_risk(model, covariates, extent, missing_policy="assume-absent")
    assert not result.computed
    assert result.covariates_missing == [missing]


def test_child_is_not_assessed(tmp_path):
    model = load_risk_model(write_model(tmp_path, HAND_MODEL))
    child = Covariates(age_years=parse_dicom_age("010Y"), sex="M")
    result = assess_risk(model, child, 5.0, missing_policy="assume-absent")
    assert not result.computed and "adults" in result.reason_not_computed


def test_unknown_policy_is_rejected(tmp_path):
    model = load_risk_model(write_model(tmp_path, HAND_MODEL))
    with pytest.raises(ValueError, match="missing_policy"):
        assess_risk(model, ALL_KNOWN, 5.0, missing_policy="guess")  # type: ignore[arg-type]


def test_shipped_default_uses_published_model_c_odds_ratios():
    model = load_risk_model()
    published = {
        "male": 1.00,
        "age_45_64": 2.35,
        "age_over_64": 6.85,
        "hypertension": 1.94,
        "diabetes": 0.97,
        "cancer": 2.34,
        "respiratory_disease": 0.99,
        "cardiac_disease": 1.52,
        "onset_over_7_days": 0.86,
        "lesion_extent_pct": 3.86,
    }
    assert set(model.coefficients) == set(published)
    for name, odds_ratio in published.items():
        assert math.exp(model.coefficients[name]) == pytest.approx(odds_ratio, abs=5e-6)
    assert model.calibration_status == CALIBRATION_NOT_LOCAL
    assert model.provenance["calibrated_locally"] is False
    assert 0.0 < model.cutoff < 1.0
    result = assess_risk(model, ALL_KNOWN, 8.0)
    assert result.calibration_status == "published odds ratios, not locally calibrated"


def test_shipped_default_is_reproduced_by_its_derivation():
    shipped = json.loads(DEFAULT_MODEL_PATH.read_text())
    assert derive_default_model().to_dict() == shipped


def test_default_intercept_gives_the_published_event_rate_on_a_fresh_simulation():
    """Mean predicted risk on an independent simulated cohort is the study's 14%."""
    from reporting.cohort_simulation import linear_predictor, simulate_covariates

    model = load_risk_model()
    cohort = simulate_covariates(50_000, seed=99)
    eta = linear_predictor(cohort, model.coefficients, model.intercept, model.standardisation)
    mean_risk = float((1.0 / (1.0 + __import__("numpy").exp(-eta))).mean())
    assert mean_risk == pytest.approx(227 / 1621, abs=0.004)


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda d: d.pop("intercept"), "intercept"),
        (lambda d: d.pop("provenance"), "provenance"),
        (lambda d: d["provenance"].pop("calibrated_locally"), "provenance.calibrated_locally"),
        (lambda d: d["coefficients"].update(shoe_size=1.0), "shoe_size"),
        (lambda d: d.update(standardisation={}), "standardisation.lesion_extent_pct"),
        (lambda d: d.update(cutoff=1.5), "cutoff"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.update(coefficients={"male": "big"}), "numbers"),
    ],
)
def test_malformed_model_file_names_the_problem(tmp_path, mutation, message):
    data = json.loads(json.dumps(HAND_MODEL))
    mutation(data)
    with pytest.raises(RiskModelError, match=message.replace(".", r"\.")):
        load_risk_model(write_model(tmp_path, data))


def test_unreadable_model_files(tmp_path):
    with pytest.raises(RiskModelError, match="cannot read"):
        load_risk_model(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RiskModelError, match="not valid JSON"):
        load_risk_model(bad)


def test_model_round_trips_through_save(tmp_path):
    model = load_risk_model()
    model.save(tmp_path / "copy.json")
    assert load_risk_model(tmp_path / "copy.json") == model


def test_risk_assessment_fields_the_sr_reads():
    fields = set(RiskAssessment.__dataclass_fields__)
    assert fields == {
        "computed",
        "probability",
        "category",
        "cutoff",
        "model_name",
        "model_version",
        "calibration_status",
        "covariates_used",
        "covariates_missing",
        "covariates_assumed_absent",
        "reason_not_computed",
    }


@pytest.mark.parametrize(
    ("value", "years"),
    [("055Y", 55.0), ("006M", 0.5), ("010W", 70 / 365.25), ("020D", 20 / 365.25), ("000Y", 0.0)],
)
def test_parse_dicom_age(value, years):
    assert parse_dicom_age(value) == pytest.approx(years)


@pytest.mark.parametrize("value", ["", "55Y", "055", "0x5Y", "055YY", "055A"])
def test_parse_dicom_age_rejects_malformed(value):
    assert parse_dicom_age(value) is None


def header(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_header_age_and_sex():
    assert covariates_from_header(header(PatientAge="067Y", PatientSex="F")) == (67.0, "F")
    assert covariates_from_header(header(PatientAge="006M", PatientSex="M")) == (0.5, "M")


def test_header_age_falls_back_to_birth_and_study_date():
    before_birthday = header(PatientBirthDate="19600615", StudyDate="20200614", PatientSex="O")
    assert covariates_from_header(before_birthday) == (59.0, None)
    on_birthday = header(PatientAge="", PatientBirthDate="19600615", StudyDate="20200615")
    assert covariates_from_header(on_birthday) == (60.0, None)
    with pytest.warns(UserWarning, match="AS"):  # pydicom flags the malformed value
        malformed_age = header(PatientAge="60", PatientBirthDate="19600615", StudyDate="20210101")
    assert covariates_from_header(malformed_age)[0] == 60.0


def test_header_without_age_or_sex():
    assert covariates_from_header(header()) == (None, None)
    assert covariates_from_header(header(PatientBirthDate="19600615")) == (None, None)
    assert covariates_from_header(header(PatientSex="")) == (None, None)


def test_merged_with_keeps_known_values_first():
    header_part = Covariates(age_years=60, sex="M")
    clinical = Covariates(age_years=61, hypertension=True, asymptomatic=True)
    merged = header_part.merged_with(clinical)
    assert merged.age_years == 60 and merged.sex == "M"
    assert merged.hypertension is True and merged.asymptomatic is True and merged.cancer is None


def test_assess_for_series_joins_header_and_stored_clinical_record(tmp_path):
    from reporting.clinical_records import ClinicalRecord
    from reporting.risk import assess_for_series

    ds = header(PatientAge="070Y", PatientSex="M", StudyDate="20200410")
    stored = ClinicalRecord(
        accession_number="A1",
        hypertension=True,
        diabetes=False,
        cancer=False,
        respiratory_disease=False,
        cardiac_disease=False,
        days_since_onset=3,
    ).to_dict()
    result = assess_for_series(ds, 12.0, json.loads(json.dumps(stored)))
    model = load_risk_model()
    expected = assess_risk(
        model,
        Covariates(
            age_years=70,
            sex="M",
            hypertension=True,
            diabetes=False,
            cancer=False,
            respiratory_disease=False,
            cardiac_disease=False,
            days_since_onset=3,
        ),
        12.0,
    )
    assert result == expected and result.computed

    header_only = assess_for_series(ds, 12.0, None, missing_policy="assume-absent")
    assert header_only.computed and "hypertension" in header_only.covariates_assumed_absent

    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    unavailable = assess_for_series(ds, 12.0, stored, model_path=broken)
    assert not unavailable.computed and "missing key" in unavailable.reason_not_computed
