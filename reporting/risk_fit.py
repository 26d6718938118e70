"""`ldct-node risk fit`: refit the study's prognostic models on a site's own cohort.

Reproduces the analysis of Bartoli et al. 2022 (section 2.4, Table 3) with statsmodels:
a seeded random 70/30 split; Model A (clinical covariates), Model B (+ visual CT severity
score `ct_ss`, when the cohort has it), Model C (+ automatic lesion extent); scores
standardised with the training part's mean and SD; odds ratios with 95% Wald CIs;
likelihood-ratio tests A vs B and A vs C (nested fits on the training part), and of each
second-order score x covariate interaction (reported, not kept); C-statistic on
the validation part with a DeLong 95% CI; the Youden-optimal probability cutoff of Model C on
the training part. Model C is written as a model file that `load_risk_model` reads.

`simulate_cohort` draws a synthetic cohort from Table 1's marginals of the prognostic-value
dataset (used by the tests and by the derivation of the shipped default model).

Cohort CSV columns: age (years), sex (M/F), hypertension, diabetes, cancer,
respiratory_disease, cardiac_disease, obesity (0/1), days_since_onset (days; blank =
asymptomatic), ct_ss (optional, 0-40), lesion_extent_pct (0-100), outcome (0/1).
Clinical covariates are those of the study's methods (section 2.4), obesity included although
Table 3 does not list it; `exclude` leaves any of them out. Every row must be complete:
there is no imputation, so a blank comorbidity is an error here.
"""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from reporting.risk import (
    COMORBIDITIES,
    MIN_ADULT_AGE_YEARS,
    RiskModel,
    covariate_specs_for,
)

# --- Study constants (Bartoli et al. 2022) ----------------------------------------------------

#: Table 3, Model C adjusted odds ratios (lesion extent per SD). Obesity is not in Table 3.
PUBLISHED_MODEL_C_ODDS_RATIOS: dict[str, float] = {
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

#: Table 1, prognostic-value dataset (n = 1621): proportions.
TABLE1_PROGNOSTIC_MARGINALS: dict[str, float] = {
    "male": 0.479,
    "age_18_44": 0.360,
    "age_45_64": 0.468,
    "age_over_64": 0.172,
    "onset_over_7_days": 0.348,
    "hypertension": 0.205,
    "diabetes": 0.118,
    "cancer": 0.046,
    "respiratory_disease": 0.119,
    "cardiac_disease": 0.083,
    "obesity": 0.144,
    "any_lesion": 0.869,
}
PUBLISHED_EVENT_RATE = 227 / 1621  # 14%

#: Assumption (not published): 1.25 % of lung volume per CT-SS point. The 0-40 CT-SS scores
#: 20 regions (5% of lung each) 0/1/2 for none/<50%/>=50% involvement, so one point covers
#: about 1.25-1.9% of the lung; 1.25 keeps the training set's CT-SS 8.6 +/- 8.1 consistent
#: with its published extent range 0-36%. Applied to the prognostic dataset's CT-SS
#: 6.0 +/- 7.2 this gives a lesion extent of mean 7.5%, SD 9.0%.
EXTENT_PCT_PER_CT_SS_POINT = 1.25
ASSUMED_EXTENT_MEAN_PCT = 6.0 * EXTENT_PCT_PER_CT_SS_POINT
ASSUMED_EXTENT_SD_PCT = 7.2 * EXTENT_PCT_PER_CT_SS_POINT
#: Assumption (not published): share of the "<= 7 days / asymptomatic" group with no symptoms.
ASSUMED_ASYMPTOMATIC_FRACTION_OF_EARLY = 0.2

REQUIRED_COLUMNS = (
    "age",
    "sex",
    *COMORBIDITIES,
    "days_since_onset",
    "lesion_extent_pct",
    "outcome",
)
OPTIONAL_COLUMNS = ("ct_ss",)
CLINICAL_MODEL_FEATURES = (
    "male",
    "age_45_64",
    "age_over_64",
    *COMORBIDITIES,
    "onset_over_7_days",
)
TRAIN_FRACTION = 0.7
MAX_ROWS_LISTED = 10


class CohortError(ValueError):
    """The cohort file cannot be used; the message lists every problem with lines/columns."""


class FitError(RuntimeError):
    """A model could not be estimated on this cohort (e.g. a covariate without variation)."""


# --- Simulation -------------------------------------------------------------------------------


def lognormal_parameters(mean: float, sd: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and SD."""
    sigma2 = math.log(1.0 + (sd / mean) ** 2)
    return math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2)


def simulate_extent(
    rng: np.random.Generator,
    n: int,
    mean: float = ASSUMED_EXTENT_MEAN_PCT,
    sd: float = ASSUMED_EXTENT_SD_PCT,
    lesion_fraction: float = TABLE1_PROGNOSTIC_MARGINALS["any_lesion"],
) -> np.ndarray:
    """Lesion extent (%): 0 without lesions, lognormal otherwise, with overall mean/SD given."""
    conditional_mean = mean / lesion_fraction
    conditional_var = (sd**2 + mean**2) / lesion_fraction - conditional_mean**2
    mu, sigma = lognormal_parameters(conditional_mean, math.sqrt(conditional_var))
    has_lesion = rng.random(n) < lesion_fraction
    extent = np.where(has_lesion, rng.lognormal(mu, sigma, n), 0.0)
    return np.clip(extent, 0.0, 100.0)


def simulate_covariates(n: int, seed: int) -> pd.DataFrame:
    """Cohort columns except `outcome`, drawn independently from Table 1's marginals.

    Independence between covariates (and between covariates and extent) is an assumption:
    Table 1 publishes marginals only.
    """
    rng = np.random.default_rng(seed)
    m = TABLE1_PROGNOSTIC_MARGINALS
    band = rng.choice(3, size=n, p=[m["age_18_44"], m["age_45_64"], m["age_over_64"]])
    low = np.array([18, 45, 65])[band]
    high = np.array([44, 64, 95])[band]
    age = rng.integers(low, high + 1)
    frame = pd.DataFrame(
        {
            "age": age,
            "sex": np.where(rng.random(n) < m["male"], "M", "F"),
        }
    )
    for name in COMORBIDITIES:
        frame[name] = (rng.random(n) < m[name]).astype(int)
    late = rng.random(n) < m["onset_over_7_days"]
    asymptomatic = ~late & (rng.random(n) < ASSUMED_ASYMPTOMATIC_FRACTION_OF_EARLY)
    days = np.where(late, rng.integers(8, 22, n), rng.integers(0, 8, n)).astype(float)
    frame["days_since_onset"] = np.where(asymptomatic, np.nan, days)
    extent = simulate_extent(rng, n)
    frame["lesion_extent_pct"] = np.round(extent, 2)
    noise = rng.normal(0.0, 2.5, n)
    frame["ct_ss"] = np.clip(np.round(extent / EXTENT_PCT_PER_CT_SS_POINT + noise), 0, 40).astype(int)
    return frame


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


def linear_predictor(
    frame: pd.DataFrame,
    coefficients: dict[str, float],
    intercept: float,
    standardisation: dict[str, dict[str, float]],
) -> np.ndarray:
    """Linear predictor of a cohort frame (log odds per feature, scores per SD)."""
    features = design_matrix(frame)
    eta = np.full(len(frame), float(intercept))
    for name, beta in coefficients.items():
        values = features[name].to_numpy(dtype=float)
        if name in standardisation:
            values = (values - standardisation[name]["mean"]) / standardisation[name]["sd"]
        eta += beta * values
    return eta


def intercept_for_event_rate(eta_without_intercept: np.ndarray, event_rate: float) -> float:
    """The intercept whose mean predicted probability equals `event_rate`."""

    def gap(b0: float) -> float:
        return float(np.mean(1.0 / (1.0 + np.exp(-(b0 + eta_without_intercept))))) - event_rate

    return float(optimize.brentq(gap, -30.0, 30.0, xtol=1e-10))


def simulate_cohort(
    n: int,
    seed: int,
    coefficients: dict[str, float] | None = None,
    intercept: float | None = None,
    standardisation: dict[str, dict[str, float]] | None = None,
    event_rate: float = PUBLISHED_EVENT_RATE,
) -> pd.DataFrame:
    """A synthetic cohort (the CSV columns, `outcome` included) with known true coefficients.

    `coefficients` are log odds per feature (scores per SD); by default the published Model C
    odds ratios. Scores are standardised with `standardisation` (default: the assumed
    population extent mean/SD and the CT-SS mean/SD of Table 1). When `intercept` is None it
    is chosen so that the expected event rate is `event_rate`. The truth is kept in
    `frame.attrs` ("coefficients", "intercept", "standardisation"); `true_probability(frame)`
    recomputes each patient's true risk from it.
    """
    if coefficients is None:
        coefficients = {k: math.log(v) for k, v in PUBLISHED_MODEL_C_ODDS_RATIOS.items()}
    if standardisation is None:
        standardisation = {
            "lesion_extent_pct": {"mean": ASSUMED_EXTENT_MEAN_PCT, "sd": ASSUMED_EXTENT_SD_PCT},
            "ct_ss": {"mean": 6.0, "sd": 7.2},
        }
    frame = simulate_covariates(n, seed)
    eta = linear_predictor(frame, coefficients, 0.0, standardisation)
    if intercept is None:
        intercept = intercept_for_event_rate(eta, event_rate)
    probability = 1.0 / (1.0 + np.exp(-(intercept + eta)))
    rng = np.random.default_rng([seed, 1])
    frame["outcome"] = (rng.random(n) < probability).astype(int)
    frame.attrs.update(
        coefficients=dict(coefficients),
        intercept=float(intercept),
        standardisation={k: dict(v) for k, v in standardisation.items()},
    )
    return frame


def true_probability(frame: pd.DataFrame) -> np.ndarray:
    """Each simulated patient's true risk, from the truth kept in `frame.attrs`."""
    eta = linear_predictor(
        frame, frame.attrs["coefficients"], frame.attrs["intercept"], frame.attrs["standardisation"]
    )
    return 1.0 / (1.0 + np.exp(-eta))


# --- Reading and validating a cohort ------------------------------------------------------


def _lines(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:MAX_ROWS_LISTED])
    more = len(rows) - MAX_ROWS_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _sniff_delimiter(path: Path) -> str:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        sample = handle.read(8192)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        return ","


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
            sep=_sniff_delimiter(path),
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
                f"column '{column}': {what} on line(s) {_lines(list(line_of[mask.to_numpy()]))}"
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
    report("age", age.notna() & ((age < MIN_ADULT_AGE_YEARS) | (age > 130)),
           f"age outside {MIN_ADULT_AGE_YEARS}-130 years (the model's bands start at 18)")
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
    report("lesion_extent_pct", extent.notna() & ((extent < 0) | (extent > 100)),
           "extent outside 0-100 %")
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


# --- Statistics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CStatistic:
    """Area under the ROC curve with a DeLong 95% confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    standard_error: float
    n: int
    events: int
    method: str = "DeLong"

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "standard_error": self.standard_error,
            "n": self.n,
            "events": self.events,
            "method": self.method,
        }


def c_statistic(outcome: np.ndarray, score: np.ndarray) -> CStatistic:
    """C-statistic (AUC, ties count one half) with DeLong's variance (DeLong et al. 1988)."""
    outcome = np.asarray(outcome).astype(bool)
    score = np.asarray(score, dtype=float)
    positives, negatives = score[outcome], score[~outcome]
    m, n = len(positives), len(negatives)
    if m == 0 or n == 0:
        raise FitError("the C-statistic needs both events and non-events")
    combined_ranks = stats.rankdata(np.concatenate([positives, negatives]))
    rank_pos_within = stats.rankdata(positives)
    rank_neg_within = stats.rankdata(negatives)
    v10 = (combined_ranks[:m] - rank_pos_within) / n
    v01 = 1.0 - (combined_ranks[m:] - rank_neg_within) / m
    auc = float(v10.mean())
    variance = (v10.var(ddof=1) if m > 1 else 0.0) / m + (v01.var(ddof=1) if n > 1 else 0.0) / n
    se = math.sqrt(max(variance, 0.0))
    z = stats.norm.ppf(0.975)
    return CStatistic(
        value=auc,
        ci_low=max(0.0, auc - z * se),
        ci_high=min(1.0, auc + z * se),
        standard_error=se,
        n=m + n,
        events=m,
    )


@dataclass(frozen=True)
class YoudenCutoff:
    threshold: float
    youden_j: float
    sensitivity: float
    specificity: float


def youden_cutoff(outcome: np.ndarray, score: np.ndarray) -> YoudenCutoff:
    """Threshold t maximising sensitivity + specificity - 1 with "positive" = score >= t."""
    outcome = np.asarray(outcome).astype(bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    sorted_scores, sorted_outcome = score[order], outcome[order]
    true_pos = np.cumsum(sorted_outcome)
    false_pos = np.cumsum(~sorted_outcome)
    # evaluate only at the last index of each run of equal scores (ties share one threshold)
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    sensitivity = true_pos[last_of_run] / max(outcome.sum(), 1)
    specificity = 1.0 - false_pos[last_of_run] / max((~outcome).sum(), 1)
    j = sensitivity + specificity - 1.0
    best = int(np.argmax(j))
    return YoudenCutoff(
        threshold=float(sorted_scores[last_of_run][best]),
        youden_j=float(j[best]),
        sensitivity=float(sensitivity[best]),
        specificity=float(specificity[best]),
    )


def sensitivity_specificity(outcome: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    outcome = np.asarray(outcome).astype(bool)
    predicted = np.asarray(score) >= threshold
    sens = float((predicted & outcome).sum() / max(outcome.sum(), 1))
    spec = float((~predicted & ~outcome).sum() / max((~outcome).sum(), 1))
    return sens, spec


# --- Fitting ------------------------------------------------------------------------------


@dataclass
class FittedModel:
    """One logistic regression fitted on the training part."""

    label: str
    features: list[str]
    params: dict[str, float]  # log odds, "const" included
    odds_ratios: dict[str, dict[str, float]]
    log_likelihood: float
    aic: float
    n_train: int
    c_statistic: CStatistic
    validation_probability: np.ndarray = field(repr=False)
    training_probability: np.ndarray = field(repr=False)
    covariance: pd.DataFrame = field(repr=False)  # of the log odds, "const" included

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "intercept": self.params["const"],
            "coefficients": {k: v for k, v in self.params.items() if k != "const"},
            "odds_ratios": self.odds_ratios,
            "log_likelihood": self.log_likelihood,
            "aic": self.aic,
            "n_train": self.n_train,
            "c_statistic": self.c_statistic.to_dict(),
        }


@dataclass
class FitResult:
    """Everything `risk fit` reports; `model` is Model C as a loadable RiskModel."""

    models: dict[str, FittedModel]
    lr_tests: dict[str, dict[str, float]]
    interaction_tests: dict[str, dict[str, dict[str, Any]]]
    cutoff: YoudenCutoff
    validation_sensitivity: float
    validation_specificity: float
    extent_cutoff: YoudenCutoff
    standardisation: dict[str, dict[str, float]]
    cohort: dict[str, Any]
    model: RiskModel

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": {k: m.to_dict() for k, m in self.models.items()},
            "lr_tests": self.lr_tests,
            "interaction_tests": self.interaction_tests,
            "cutoff": {
                "probability": self.cutoff.threshold,
                "youden_j": self.cutoff.youden_j,
                "training_sensitivity": self.cutoff.sensitivity,
                "training_specificity": self.cutoff.specificity,
                "validation_sensitivity": self.validation_sensitivity,
                "validation_specificity": self.validation_specificity,
                "selected_on": "training part, Model C predicted probability (Youden index)",
            },
            "lesion_extent_cutoff": {
                "lesion_extent_pct": self.extent_cutoff.threshold,
                "youden_j": self.extent_cutoff.youden_j,
                "training_sensitivity": self.extent_cutoff.sensitivity,
                "training_specificity": self.extent_cutoff.specificity,
                "selected_on": "training part, lesion extent alone (Youden index)",
            },
            "standardisation": self.standardisation,
            "cohort": self.cohort,
        }


def split_indices(n: int, seed: int, train_fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split (train, validation) of row positions."""
    permutation = np.random.default_rng(seed).permutation(n)
    n_train = int(round(train_fraction * n))
    return np.sort(permutation[:n_train]), np.sort(permutation[n_train:])


def _fit_logit(label: str, y: pd.Series, x: pd.DataFrame):
    # imported here so that loading the CLI does not pay for statsmodels
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import (
        ConvergenceWarning,
        HessianInversionWarning,
        PerfectSeparationError,
        PerfectSeparationWarning,
    )

    constant = [c for c in x.columns if x[c].nunique() < 2]
    if constant:
        raise FitError(
            f"Model {label}: covariate(s) {', '.join(constant)} take a single value in the "
            f"{len(x)} training rows, so their odds ratios cannot be estimated "
            "(exclude them with --exclude, or use a larger cohort)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", HessianInversionWarning)
        try:
            result = sm.Logit(y, sm.add_constant(x, has_constant="add")).fit(
                method="newton", maxiter=100, disp=0
            )
        except (PerfectSeparationError, PerfectSeparationWarning) as exc:
            raise FitError(
                f"Model {label}: perfect separation in the training part (some covariate "
                "predicts the outcome exactly); the odds ratios are not estimable"
            ) from exc
        except np.linalg.LinAlgError as exc:
            raise FitError(f"Model {label}: singular design matrix (collinear covariates)") from exc
    if not result.mle_retvals.get("converged", False):
        raise FitError(f"Model {label}: the maximum-likelihood fit did not converge")
    if not np.all(np.isfinite(result.bse)):
        raise FitError(f"Model {label}: standard errors are not finite (separation or collinearity)")
    return result


def _interaction_tests(
    models: dict[str, FittedModel],
    features: pd.DataFrame,
    y_train: pd.Series,
    train_idx: np.ndarray,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Second-order score x covariate interactions in Models B and C (as the study tested).

    Each interaction is added alone to the model and judged by a likelihood-ratio test on
    the training part; none is kept in the written model (the study reports none).
    """
    tests: dict[str, dict[str, dict[str, Any]]] = {}
    for label, score in (("B", "ct_ss"), ("C", "lesion_extent_pct")):
        if label not in models:
            continue
        base = models[label]
        tests[label] = {}
        for covariate in (f for f in base.features if f != score):
            x = features[base.features].iloc[train_idx].copy()
            x[f"{score}:{covariate}"] = x[score] * x[covariate]
            try:
                result = _fit_logit(f"{label} + {score}:{covariate}", y_train, x)
            except FitError as exc:
                tests[label][covariate] = {"error": str(exc)}
                continue
            statistic = 2.0 * (float(result.llf) - base.log_likelihood)
            tests[label][covariate] = {
                "statistic": statistic,
                "df": 1,
                "p_value": float(stats.chi2.sf(max(statistic, 0.0), 1)),
            }
    return tests


def fit_cohort(
    frame: pd.DataFrame,
    seed: int = 2022,
    exclude: tuple[str, ...] = (),
    source: str = "cohort",
    source_sha256: str | None = None,
    model_name: str = "model_c_local",
    interactions: bool = True,
) -> FitResult:
    """Fit Models A, B (when `ct_ss` is present) and C on a validated cohort frame.

    `interactions` also tests each score x covariate interaction (20 extra small fits).
    """
    unknown = [e for e in exclude if e not in CLINICAL_MODEL_FEATURES]
    if unknown:
        raise FitError(
            f"cannot exclude {', '.join(unknown)}; excludable: {', '.join(CLINICAL_MODEL_FEATURES)}"
        )
    features = design_matrix(frame)
    outcome = frame["outcome"].astype(int)
    train_idx, valid_idx = split_indices(len(frame), seed)
    y_train, y_valid = outcome.iloc[train_idx], outcome.iloc[valid_idx]
    for part, y in (("training", y_train), ("validation", y_valid)):
        if y.nunique() < 2:
            lacking = "events" if y.max() == 0 else "non-events"
            raise FitError(f"the {part} part has no {lacking}; use a larger cohort")

    scores = ["lesion_extent_pct"] + (["ct_ss"] if "ct_ss" in features else [])
    standardisation: dict[str, dict[str, float]] = {}
    for score in scores:
        train_values = features[score].iloc[train_idx]
        sd = float(train_values.std(ddof=1))
        if not sd > 0:
            raise FitError(f"'{score}' has no variation in the training part")
        standardisation[score] = {"mean": float(train_values.mean()), "sd": sd}
        features[score] = (features[score] - standardisation[score]["mean"]) / sd

    clinical = [f for f in CLINICAL_MODEL_FEATURES if f not in exclude]
    specs = {"A": clinical, "C": clinical + ["lesion_extent_pct"]}
    if "ct_ss" in features:
        specs = {"A": clinical, "B": clinical + ["ct_ss"], "C": specs["C"]}

    models: dict[str, FittedModel] = {}
    raw_results = {}
    for label, columns in specs.items():
        x_train = features[columns].iloc[train_idx]
        result = _fit_logit(label, y_train, x_train)
        raw_results[label] = result
        ci = result.conf_int(alpha=0.05)
        odds = {
            name: {
                "odds_ratio": float(math.exp(result.params[name])),
                "ci_low": float(math.exp(ci.loc[name, 0])),
                "ci_high": float(math.exp(ci.loc[name, 1])),
                "p_value": float(result.pvalues[name]),
                "log_odds": float(result.params[name]),
                "standard_error": float(result.bse[name]),
            }
            for name in columns
        }
        x_valid = features[columns].iloc[valid_idx].copy()
        x_valid.insert(0, "const", 1.0)
        p_valid = np.asarray(result.predict(x_valid))
        p_train = np.asarray(result.predict())
        models[label] = FittedModel(
            label=label,
            features=list(columns),
            params={k: float(v) for k, v in result.params.items()},
            odds_ratios=odds,
            log_likelihood=float(result.llf),
            aic=float(result.aic),
            n_train=int(result.nobs),
            c_statistic=c_statistic(y_valid.to_numpy(), p_valid),
            validation_probability=p_valid,
            training_probability=p_train,
            covariance=result.cov_params(),
        )

    lr_tests: dict[str, dict[str, float]] = {}
    for bigger in ("B", "C"):
        if bigger in models:
            statistic = 2.0 * (models[bigger].log_likelihood - models["A"].log_likelihood)
            dof = len(models[bigger].features) - len(models["A"].features)
            lr_tests[f"A_vs_{bigger}"] = {
                "statistic": float(statistic),
                "df": int(dof),
                "p_value": float(stats.chi2.sf(statistic, dof)),
            }

    interaction_tests = (
        _interaction_tests(models, features, y_train, train_idx) if interactions else {}
    )

    model_c = models["C"]
    cutoff = youden_cutoff(y_train.to_numpy(), model_c.training_probability)
    valid_sens, valid_spec = sensitivity_specificity(
        y_valid.to_numpy(), model_c.validation_probability, cutoff.threshold
    )
    extent_cutoff = youden_cutoff(
        y_train.to_numpy(), frame["lesion_extent_pct"].iloc[train_idx].to_numpy()
    )

    fitted_at = datetime.now(timezone.utc)
    cohort_info = {
        "source": source,
        "sha256": source_sha256,
        "n": int(len(frame)),
        "n_train": int(len(train_idx)),
        "n_validation": int(len(valid_idx)),
        "events": int(outcome.sum()),
        "event_rate": float(outcome.mean()),
        "seed": int(seed),
        "fitted_at": fitted_at.isoformat(timespec="seconds"),
        "excluded": list(exclude),
    }
    coefficients = {k: v for k, v in model_c.params.items() if k != "const"}
    calibration_status = (
        f"fitted locally on {len(frame)} patients ({fitted_at.date().isoformat()}); "
        "not externally validated"
    )
    model = RiskModel(
        format_version=1,
        name=model_name,
        version=f"{fitted_at.strftime('%Y%m%dT%H%M%SZ')}-n{len(frame)}",
        coefficients=coefficients,
        intercept=model_c.params["const"],
        standardisation={"lesion_extent_pct": standardisation["lesion_extent_pct"]},
        cutoff=cutoff.threshold,
        covariates=covariate_specs_for(coefficients),
        provenance={
            "source": f"ldct-node risk fit on {source}",
            "method": (
                "logistic regression (statsmodels Logit, Newton) on a seeded random 70% "
                "training part; lesion extent standardised with the training mean/SD; "
                "cutoff = Youden-optimal Model C probability on the training part"
            ),
            "calibrated_locally": True,
            "cohort_size": int(len(frame)),
            "cohort_events": int(outcome.sum()),
            "cohort_sha256": source_sha256,
            "fitted_at": cohort_info["fitted_at"],
            "seed": int(seed),
            "validation_c_statistic": model_c.c_statistic.value,
            "notes": "Model C of Bartoli et al. 2022 refitted on the site's cohort.",
        },
        calibration_status=calibration_status,
    )
    return FitResult(
        models=models,
        lr_tests=lr_tests,
        interaction_tests=interaction_tests,
        cutoff=cutoff,
        validation_sensitivity=valid_sens,
        validation_specificity=valid_spec,
        extent_cutoff=extent_cutoff,
        standardisation=standardisation,
        cohort=cohort_info,
        model=model,
    )


def fit_cohort_file(
    path: str | Path,
    seed: int = 2022,
    exclude: tuple[str, ...] = (),
    model_name: str = "model_c_local",
    interactions: bool = True,
) -> FitResult:
    """Read, validate and fit a cohort CSV (CohortError / FitError on bad input)."""
    path = Path(path)
    frame = read_cohort_csv(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return fit_cohort(
        frame,
        seed=seed,
        exclude=exclude,
        source=path.name,
        source_sha256=digest,
        model_name=model_name,
        interactions=interactions,
    )
