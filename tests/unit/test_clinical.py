"""Clinical covariate CSV intake and the join with the DICOM header."""

from __future__ import annotations

import json

import pydicom
import pytest
import typer
from pydicom.dataset import Dataset

from reporting.clinical_records import (
    ClinicalCsvError,
    ClinicalRecord,
    candidate_keys,
    covariates_for_study,
    parse_clinical_csv,
    study_key,
)
from reporting.commands import clinical_import_parse, clinical_import_summary
from reporting.risk import assess_risk, load_risk_model


def write(tmp_path, text: str, name: str = "clinical.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_accession_keyed_rows_with_blanks_as_unknown(tmp_path):
    path = write(
        tmp_path,
        "accession_number,hypertension,diabetes,cancer,respiratory_disease,cardiac_disease,"
        "obesity,days_since_onset\n"
        "ACC1,1,0,,0,1,0,4\n"
        "ACC2,0,0,0,0,0,1,\n",
    )
    first, second = parse_clinical_csv(path)
    assert first.key() == "accession:ACC1"
    assert first.hypertension is True and first.diabetes is False and first.cancer is None
    assert first.days_since_onset == 4.0
    assert second.days_since_onset is None and second.asymptomatic is None
    assert second.to_covariates().obesity is True


def test_patient_and_date_key_dates_normalised_and_onset_date(tmp_path):
    path = write(
        tmp_path,
        "\ufeffPatient_ID;Study_Date;hypertension;symptom_onset_date\nP001;2020-04-10;1;2020-04-01\nP002;20200411;;\n",
    )
    first, second = parse_clinical_csv(path)
    assert first.key() == "patient:P001:20200410"
    assert first.study_date == "20200410" and first.symptom_onset_date == "20200401"
    assert first.days_since_onset_at() == 9.0
    assert first.to_covariates("20200403").days_since_onset == 2.0
    assert second.hypertension is None and second.days_since_onset_at() is None


def test_all_problems_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        "accession_number,study_date,hypertension,diabetes,days_since_onset,symptom_onset_date,asymptomatic\n"
        "A1,20200410,yes,0,3,,\n"  # line 2
        "A2,20200410,1,2,-1,,\n"  # line 3
        "A3,notadate,1,0,,20200420,\n"  # line 4
        "A4,20200410,1,0,,20200420,\n"  # line 5: onset after study
        "A1,20200410,1,0,,,\n"  # line 6: duplicate
        ",20200410,1,0,,,\n"  # line 7: no key
        "A7,20200410,0,0,5,,1\n",  # line 8: asymptomatic with onset
    )
    with pytest.raises(ClinicalCsvError) as caught:
        parse_clinical_csv(path)
    message = str(caught.value)
    assert "column 'hypertension': must be 0, 1 or blank on line(s) 2" in message
    assert "column 'diabetes': must be 0, 1 or blank on line(s) 3" in message
    assert "column 'days_since_onset': must be a number of days >= 0 or blank on line(s) 3" in message
    assert "column 'study_date': not a date (YYYYMMDD or YYYY-MM-DD) on line(s) 4" in message
    assert "column 'symptom_onset_date': after the study date on line(s) 5" in message
    assert "column 'accession_number': duplicate key on line(s) 6" in message
    assert "no key" in message and "line(s) 7" in message
    assert "column 'asymptomatic': is 1 but an onset is given on line(s) 8" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accession_number,hypertention\nA1,1\n", "unknown column.*hypertention"),
        ("hypertension,diabetes\n1,0\n", "no key column"),
        ("patient_id,hypertension\nP1,1\n", "no key column"),
        ("", "empty file"),
        ("accession_number,hypertension\n", "no data rows"),
        ("accession_number,hypertension\nA1,1,0\n", "more fields"),
    ],
)
def test_structural_errors(tmp_path, text, message):
    with pytest.raises(ClinicalCsvError, match=message):
        parse_clinical_csv(write(tmp_path, text))


def test_missing_file_is_a_clinical_error(tmp_path):
    with pytest.raises(ClinicalCsvError, match="no such file"):
        parse_clinical_csv(tmp_path / "absent.csv")


def test_records_round_trip_through_json(tmp_path):
    path = write(
        tmp_path,
        "accession_number,hypertension,cancer,days_since_onset,asymptomatic\nA1,1,,2.5,\nA2,,0,,1\n",
    )
    for record in parse_clinical_csv(path):
        stored = json.dumps(record.to_dict())
        assert ClinicalRecord.from_dict(json.loads(stored)) == record


def header(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_keys_from_header_match_record_keys():
    ds = header(AccessionNumber="ACC9", PatientID="P9", StudyDate="20200410")
    assert candidate_keys(ds) == ["accession:ACC9", "patient:P9:20200410"]
    assert candidate_keys(header(PatientID="P9")) == []
    record = ClinicalRecord(patient_id="P9", study_date="20200410")
    assert record.key() in candidate_keys(ds)
    assert study_key() is None


def test_covariates_for_study_joins_header_and_record_and_feeds_the_model():
    ds = header(PatientAge="070Y", PatientSex="M", StudyDate="20200410", AccessionNumber="A")
    record = ClinicalRecord(
        accession_number="A",
        hypertension=True,
        diabetes=False,
        cancer=False,
        respiratory_disease=False,
        cardiac_disease=False,
        symptom_onset_date="20200401",
    )
    covariates = covariates_for_study(ds, record)
    assert covariates.age_years == 70.0 and covariates.sex == "M"
    assert covariates.days_since_onset == 9.0 and covariates.hypertension is True
    result = assess_risk(load_risk_model(), covariates, 12.0, missing_policy="omit")
    assert result.computed and result.covariates_missing == []

    header_only = covariates_for_study(ds, None)
    omitted = assess_risk(load_risk_model(), header_only, 12.0, missing_policy="omit")
    assert not omitted.computed and "hypertension" in omitted.covariates_missing


def test_asymptomatic_record_is_not_an_assumption():
    ds = header(PatientAge="040Y", PatientSex="F")
    record = ClinicalRecord(
        accession_number="A",
        hypertension=False,
        diabetes=False,
        cancer=False,
        respiratory_disease=False,
        cardiac_disease=False,
        asymptomatic=True,
    )
    result = assess_risk(load_risk_model(), covariates_for_study(ds, record), 1.0, "assume-absent")
    assert result.computed and result.covariates_assumed_absent == []
    assert result.covariates_used["days_since_onset"] == "asymptomatic"


def test_cli_helpers(tmp_path, capsys):
    good = write(tmp_path, "accession_number,hypertension\nA1,1\nA2,\n", "good.csv")
    records = clinical_import_parse(good)
    summary = clinical_import_summary(records)
    assert summary.startswith("2 record(s)") and "hypertension 1" in summary
    assert "A1" not in summary  # identifiers stay out of the output

    bad = write(tmp_path, "accession_number,hypertension\nA1,7\n", "bad.csv")
    with pytest.raises(typer.Exit) as caught:
        clinical_import_parse(bad)
    assert caught.value.exit_code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "line(s) 2" in err[0]


def test_node_finds_imported_records_by_accession_then_patient_and_date(tmp_path):
    """Records stored under `key()` are found by the worker's lookup from a DICOM header."""
    from dicom_node.queue.jobstore import JobStore
    from dicom_node.work.clinical_lookup import lookup_clinical

    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    by_patient = ClinicalRecord(patient_id="P9", study_date="20200410", hypertension=1)
    store.put_clinical(by_patient.key(), by_patient.to_dict())
    ds = header(AccessionNumber="", PatientID="P9", StudyDate="20200410")
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.3.4"
    ds.save_as(tmp_path / "i.dcm", enforce_file_format=True)
    assert ClinicalRecord.from_dict(lookup_clinical(store, pydicom.dcmread(tmp_path / "i.dcm"))).hypertension == 1
    by_accession = ClinicalRecord(accession_number="ACC9", hypertension=0)
    store.put_clinical(by_accession.key(), by_accession.to_dict())
    ds.AccessionNumber = "ACC9"
    ds.save_as(tmp_path / "i.dcm", enforce_file_format=True)
    assert ClinicalRecord.from_dict(lookup_clinical(store, pydicom.dcmread(tmp_path / "i.dcm"))).hypertension == 0
    store.close()
