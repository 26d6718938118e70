"""Synthetic cohorts from the study's published figures (Bartoli et al. 2022, Tables 1 and 3).

`simulate_cohort` draws patients from Table 1's marginals of the prognostic-value dataset with
outcomes from known coefficients: the tests check that `risk fit` recovers them, and
`derive_default_model` derives the shipped model's intercept, extent scale and cutoff from it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize

from reporting.cohort import design_matrix
from reporting.risk import COMORBIDITIES

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
    eta = linear_predictor(frame, frame.attrs["coefficients"], frame.attrs["intercept"], frame.attrs["standardisation"])
    return 1.0 / (1.0 + np.exp(-eta))
