"""Clinical covariates imported from a CSV (`ldct-node clinical import FILE.csv`).

Comorbidities and symptom onset are not in the DICOM header, so a site supplies them in a
CSV keyed by `accession_number`, or by `patient_id` + `study_date`. Each row becomes a
`ClinicalRecord`, a plain dataclass the job store keeps as JSON (`to_dict` / `from_dict`)
under `key()`; when a job runs, the record is joined with the header's age and sex
(`covariates_for_study`).

Columns (header names case-insensitive; `,`, `;` or tab separated; UTF-8, BOM allowed):

| column               | values                                                        |
| -------------------- | ------------------------------------------------------------- |
| accession_number     | key (or patient_id + study_date)                              |
| patient_id           | key part                                                      |
| study_date           | YYYYMMDD or YYYY-MM-DD                                        |
| hypertension, diabetes, cancer, respiratory_disease, cardiac_disease, obesity | 0, 1 or blank (unknown) |
| days_since_onset     | days from symptom onset to the scan, >= 0, or blank (unknown) |
| symptom_onset_date   | optional alternative to days_since_onset (needs a study date) |
| asymptomatic         | optional 0/1: 1 = no symptoms (then onset columns stay blank) |

A blank is *unknown*, never "absent": whether an unknown comorbidity may be assumed absent
is the node's `[risk] missing` policy, decided when the risk is computed. Unlike the
`risk fit` cohort file (where blank `days_since_onset` means asymptomatic), a blank onset
here is unknown; say `asymptomatic = 1` for a patient without symptoms.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

from reporting.csv_input import line_list, sniff_delimiter
from reporting.risk import COMORBIDITIES, Covariates, covariates_from_header

KEY_COLUMNS = ("accession_number", "patient_id", "study_date")
VALUE_COLUMNS = (*COMORBIDITIES, "days_since_onset", "symptom_onset_date", "asymptomatic")
KNOWN_COLUMNS = (*KEY_COLUMNS, *VALUE_COLUMNS)


class ClinicalCsvError(ValueError):
    """The clinical CSV is unusable; the message lists every problem (lines and columns)."""


def _parse_date(text: str) -> date | None:
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _dicom_date(value: date) -> str:
    return value.strftime("%Y%m%d")


@dataclass(frozen=True)
class ClinicalRecord:
    """Clinical covariates of one study. None = unknown. Dates are DICOM DA (YYYYMMDD).

    Holds a patient identifier when keyed by patient_id: never log `key()` or
    `patient_id`; log counts or the study/series UID instead.
    """

    accession_number: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    hypertension: bool | None = None
    diabetes: bool | None = None
    cancer: bool | None = None
    respiratory_disease: bool | None = None
    cardiac_disease: bool | None = None
    obesity: bool | None = None
    days_since_onset: float | None = None
    symptom_onset_date: str | None = None
    asymptomatic: bool | None = None

    def key(self) -> str:
        """Join key: "accession:<AccessionNumber>" or "patient:<PatientID>:<StudyDate>".

        The node looks records up with `candidate_keys` of the study's header.
        """
        key = (
            study_key(accession_number=self.accession_number)
            if self.accession_number
            else study_key(patient_id=self.patient_id, study_date=self.study_date)
        )
        if key is None:  # parse_clinical_csv refuses such rows
            raise ValueError("a clinical record needs an accession number, or a patient ID and a study date")
        return key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClinicalRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def days_since_onset_at(self, study_date: str | date | None = None) -> float | None:
        """Days from onset to the scan: the given number, else onset date to study date."""
        if self.days_since_onset is not None:
            return self.days_since_onset
        if self.symptom_onset_date is None:
            return None
        onset = _parse_date(self.symptom_onset_date)
        if isinstance(study_date, date):
            scan: date | None = study_date
        else:
            scan = _parse_date(str(study_date or self.study_date or ""))
        if onset is None or scan is None or scan < onset:
            return None
        return float((scan - onset).days)

    def to_covariates(self, study_date: str | date | None = None) -> Covariates:
        """The clinical part of the model's covariates (age and sex come from the header)."""
        return Covariates(
            hypertension=self.hypertension,
            diabetes=self.diabetes,
            cancer=self.cancer,
            respiratory_disease=self.respiratory_disease,
            cardiac_disease=self.cardiac_disease,
            obesity=self.obesity,
            days_since_onset=self.days_since_onset_at(study_date),
            asymptomatic=self.asymptomatic,
        )


def study_key(
    accession_number: str | None = None,
    patient_id: str | None = None,
    study_date: str | date | None = None,
) -> str | None:
    """The key a study is looked up by (same form as `ClinicalRecord.key()`); None if no key.

    The worker calls it with the header's AccessionNumber, PatientID and StudyDate and tries
    the accession key first, then the patient/date key.
    """
    if accession_number and str(accession_number).strip():
        return f"accession:{str(accession_number).strip()}"
    if patient_id and str(patient_id).strip() and study_date:
        day = study_date if isinstance(study_date, date) else _parse_date(str(study_date).strip())
        if day is None:
            return None
        return f"patient:{str(patient_id).strip()}:{_dicom_date(day)}"
    return None


def candidate_keys(ds: Any) -> list[str]:
    """Keys to look up for a DICOM header, most specific first."""
    keys = [
        study_key(accession_number=getattr(ds, "AccessionNumber", None)),
        study_key(patient_id=getattr(ds, "PatientID", None), study_date=getattr(ds, "StudyDate", None)),
    ]
    return [k for k in keys if k]


def covariates_for_study(ds: Any, record: ClinicalRecord | None) -> Covariates:
    """Header age/sex joined with the imported clinical record (if any) for one study."""
    age, sex = covariates_from_header(ds)
    header = Covariates(age_years=age, sex=sex)
    if record is None:
        return header
    return header.merged_with(record.to_covariates(getattr(ds, "StudyDate", None)))


def parse_clinical_csv(path: str | Path) -> list[ClinicalRecord]:
    """Parse and validate a clinical CSV; ClinicalCsvError lists every problem at once.

    Lines are numbered as in a text editor (the header is line 1).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise ClinicalCsvError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ClinicalCsvError(f"{path}: cannot read ({exc})") from exc
    return parse_clinical_text(text, source=str(path))


def parse_clinical_text(text: str, source: str = "clinical CSV") -> list[ClinicalRecord]:
    """`parse_clinical_csv` on text already read."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ClinicalCsvError(f"{source}: empty file (a header line is required)")
    reader = csv.reader(lines, delimiter=sniff_delimiter(text))
    header = [h.strip().lower() for h in next(reader)]
    unknown = [h for h in header if h and h not in KNOWN_COLUMNS]
    problems: list[str] = []
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)} (known: {', '.join(KNOWN_COLUMNS)})")
    duplicated = sorted({h for h in header if h and header.count(h) > 1})
    if duplicated:
        problems.append(f"duplicated column(s) {', '.join(duplicated)}")
    has_accession = "accession_number" in header
    has_patient_key = "patient_id" in header and "study_date" in header
    if not has_accession and not has_patient_key:
        problems.append("no key column: need accession_number, or patient_id and study_date")
    if problems:
        raise ClinicalCsvError(f"{source}: " + "; ".join(problems))

    # column -> problem description -> line numbers
    bad: dict[tuple[str, str], list[int]] = {}

    def flag(column: str, what: str, line: int) -> None:
        bad.setdefault((column, what), []).append(line)

    records: list[ClinicalRecord] = []
    seen_keys: dict[str, int] = {}
    for line_number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            flag("*", f"more fields than the {len(header)} header columns", line_number)
            continue
        cells = {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(header)}
        values: dict[str, Any] = {}
        for column in (*COMORBIDITIES, "asymptomatic"):
            cell = cells.get(column, "")
            if cell == "":
                values[column] = None
            elif cell in ("0", "1"):
                values[column] = cell == "1"
            else:
                flag(column, "must be 0, 1 or blank", line_number)
        days_text = cells.get("days_since_onset", "")
        values["days_since_onset"] = None
        if days_text:
            try:
                days = float(days_text)
                if not days >= 0 or days != days:
                    raise ValueError
                values["days_since_onset"] = days
            except ValueError:
                flag("days_since_onset", "must be a number of days >= 0 or blank", line_number)
        study_day = None
        if cells.get("study_date"):
            study_day = _parse_date(cells["study_date"])
            if study_day is None:
                flag("study_date", "not a date (YYYYMMDD or YYYY-MM-DD)", line_number)
        values["study_date"] = _dicom_date(study_day) if study_day else None
        values["symptom_onset_date"] = None
        if cells.get("symptom_onset_date"):
            onset = _parse_date(cells["symptom_onset_date"])
            if onset is None:
                flag("symptom_onset_date", "not a date (YYYYMMDD or YYYY-MM-DD)", line_number)
            elif study_day is not None and onset > study_day:
                flag("symptom_onset_date", "after the study date", line_number)
            else:
                values["symptom_onset_date"] = _dicom_date(onset)
        if values.get("asymptomatic") and (days_text or cells.get("symptom_onset_date")):
            flag("asymptomatic", "is 1 but an onset is given", line_number)
        accession = cells.get("accession_number") or None
        patient_id = cells.get("patient_id") or None
        if not accession and not (patient_id and study_day):
            flag(
                "accession_number",
                "no key (blank accession_number and no patient_id + study_date)",
                line_number,
            )
            continue
        record = ClinicalRecord(accession_number=accession, patient_id=patient_id, **values)
        key = record.key()
        if key in seen_keys:
            flag("accession_number" if accession else "patient_id", "duplicate key", line_number)
        else:
            seen_keys[key] = line_number
        records.append(record)

    if bad:
        messages = [
            f"column '{column}': {what} on line(s) {line_list(lines_)}"
            if column != "*"
            else f"{what} on line(s) {line_list(lines_)}"
            for (column, what), lines_ in bad.items()
        ]
        raise ClinicalCsvError(f"{source}: " + "; ".join(messages))
    if not records:
        raise ClinicalCsvError(f"{source}: no data rows")
    return records
