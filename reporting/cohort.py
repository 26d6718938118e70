"""A site's cohort for `ldct-node risk fit`: reading and validating the CSV, and the model's features.

Cohort CSV columns: age (years), sex (M/F), hypertension, diabetes, cancer,
respiratory_disease, cardiac_disease, obesity (0/1), days_since_onset (days; blank =
asymptomatic), ct_ss (optional, 0-40), lesion_extent_pct (0-100), outcome (0/1).
Every row must be complete: there is no imputation, so a blank comorbidity is an error here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reporting.csv_input import line_list, sniff_delimiter
from reporting.risk import COMORBIDITIES, MIN_ADULT_AGE_YEARS

REQUIRED_COLUMNS = (
    "age",
    "sex",
    *COMORBIDITIES,
    "days_since_onset",
    "lesion_extent_pct",
    "outcome",
)
OPTIONAL_COLUMNS = ("ct_ss",)


class CohortError(ValueError):
    """The cohort file cannot be used; the message lists every problem with lines/columns."""


def _delimiter_of(path: Path) -> str:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return sniff_delimiter(handle.read(8192))


def read_cohort_csv(path: str | Path) -> pd.DataFrame:
    """Read and validate a cohort file; CohortError lists every problem at once.

    Lines are numbered as in a text editor (the header is line 1).
    """
    path = Path(path)
    try:
        raw = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            sep=_delimiter_of(path),
            encoding="utf-8-sig",
            skipinitialspace=True,
            skip_blank_lines=False,  # keep the index aligned with the file's line numbers
        )
    except FileNotFoundError as exc:
        raise CohortError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CohortError(f"{path}: cannot read as CSV ({exc})") from exc
    return validate_cohort(raw, source=str(path))


def validate_cohort(raw: pd.DataFrame, source: str = "cohort") -> pd.DataFrame:
    """Typed cohort frame from string columns, or CohortError naming rows and columns."""
    raw = raw.rename(columns=lambda c: str(c).strip().lower())
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise CohortError(
            f"{source}: missing column(s) {', '.join(missing)} "
            f"(required: {', '.join(REQUIRED_COLUMNS)}; optional: ct_ss)"
        )
    if raw.empty:
        raise CohortError(f"{source}: no data rows")
    raw = raw.apply(lambda col: col.fillna("").astype(str).str.strip())
    raw = raw[(raw != "").any(axis=1)]  # blank lines
    if raw.empty:
        raise CohortError(f"{source}: no data rows")
    line_of = raw.index.to_numpy() + 2
    problems: list[str] = []
    frame = pd.DataFrame(index=raw.index)

    def report(column: str, mask: pd.Series, what: str) -> None:
        if mask.any():
            first = raw.loc[mask, column].iloc[0]
            problems.append(
                f"column '{column}': {what} on line(s) {line_list(list(line_of[mask.to_numpy()]))}"
                f" (first value: {first!r})"
            )

    def numeric(column: str, allow_blank: bool) -> pd.Series:
        text = raw[column]
        values = pd.to_numeric(text, errors="coerce")
        blank = text == ""
        report(column, ~blank & values.isna(), "not a number")
        if not allow_blank:
            report(column, blank, "blank value")
        return values

    age = numeric("age", allow_blank=False)
    report(
        "age",
        age.notna() & ((age < MIN_ADULT_AGE_YEARS) | (age > 130)),
        f"age outside {MIN_ADULT_AGE_YEARS}-130 years (the model's bands start at 18)",
    )
    frame["age"] = age

    sex = raw["sex"].str.upper()
    report("sex", ~sex.isin(["M", "F"]), "sex must be M or F")
    frame["sex"] = sex

    for column in (*COMORBIDITIES, "outcome"):
        values = raw[column]
        report(column, ~values.isin(["0", "1"]), "must be 0 or 1")
        frame[column] = pd.to_numeric(values, errors="coerce")

    days = numeric("days_since_onset", allow_blank=True)
    report("days_since_onset", days.notna() & (days < 0), "negative number of days")
    frame["days_since_onset"] = days

    extent = numeric("lesion_extent_pct", allow_blank=False)
    report("lesion_extent_pct", extent.notna() & ((extent < 0) | (extent > 100)), "extent outside 0-100 %")
    frame["lesion_extent_pct"] = extent

    if "ct_ss" in raw.columns and (raw["ct_ss"] != "").any():
        ct_ss = numeric("ct_ss", allow_blank=False)
        report("ct_ss", ct_ss.notna() & ((ct_ss < 0) | (ct_ss > 40)), "CT-SS outside 0-40")
        frame["ct_ss"] = ct_ss

    if problems:
        raise CohortError(f"{source}: " + "; ".join(problems))
    if frame["outcome"].nunique() < 2:
        raise CohortError(f"{source}: column 'outcome' has a single value; need events and non-events")
    return frame.reset_index(drop=True)


def design_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """Model features from validated cohort columns (scores not yet standardised)."""
    age_completed = np.floor(frame["age"].astype(float))
    features = pd.DataFrame(index=frame.index)
    features["male"] = (frame["sex"] == "M").astype(float)
    features["age_45_64"] = ((age_completed >= 45) & (age_completed <= 64)).astype(float)
    features["age_over_64"] = (age_completed >= 65).astype(float)
    for name in COMORBIDITIES:
        features[name] = frame[name].astype(float)
    # blank days_since_onset = asymptomatic = the reference group "<= 7 days / asymptomatic"
    features["onset_over_7_days"] = (frame["days_since_onset"].fillna(0) > 7).astype(float)
    features["lesion_extent_pct"] = frame["lesion_extent_pct"].astype(float)
    if "ct_ss" in frame:
        features["ct_ss"] = frame["ct_ss"].astype(float)
    return features
