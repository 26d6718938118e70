"""`ldct-node risk fit`: refit the study's prognostic models on a site's own cohort.

Reproduces the analysis of Bartoli et al. 2022 (section 2.4, Table 3) with statsmodels:
a seeded random 70/30 split; Model A (clinical covariates), Model B (+ visual CT severity
score `ct_ss`, when the cohort has it), Model C (+ automatic lesion extent); scores
standardised with the training part's mean and SD; odds ratios with 95% Wald CIs;
likelihood-ratio tests A vs B and A vs C (nested fits on the training part), and of each
second-order score x covariate interaction (reported, not kept); C-statistic on
the validation part with a DeLong 95% CI; the Youden-optimal probability cutoff of Model C on
the training part. Model C is written as a model file that `load_risk_model` reads.

The cohort file is read and checked by `reporting.cohort`. Clinical covariates are those of
the study's methods (section 2.4), obesity included although Table 3 does not list it;
`exclude` leaves any of them out.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from reporting.cohort import design_matrix, read_cohort_csv
from reporting.discrimination import CStatistic, YoudenCutoff, c_statistic, sensitivity_specificity, youden_cutoff
from reporting.risk import CLINICAL_FEATURES, RiskModel, covariate_specs_for

TRAIN_FRACTION = 0.7


class FitError(RuntimeError):
    """A model could not be estimated on this cohort (e.g. a covariate without variation)."""


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
    n_train = round(train_fraction * n)
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
            result = sm.Logit(y, sm.add_constant(x, has_constant="add")).fit(method="newton", maxiter=100, disp=0)
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
    unknown = [e for e in exclude if e not in CLINICAL_FEATURES]
    if unknown:
        raise FitError(f"cannot exclude {', '.join(unknown)}; excludable: {', '.join(CLINICAL_FEATURES)}")
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

    clinical = [f for f in CLINICAL_FEATURES if f not in exclude]
    specs = {"A": clinical, "C": [*clinical, "lesion_extent_pct"]}
    if "ct_ss" in features:
        specs = {"A": clinical, "B": [*clinical, "ct_ss"], "C": specs["C"]}

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

    interaction_tests = _interaction_tests(models, features, y_train, train_idx) if interactions else {}

    model_c = models["C"]
    cutoff = youden_cutoff(y_train.to_numpy(), model_c.training_probability)
    valid_sens, valid_spec = sensitivity_specificity(
        y_valid.to_numpy(), model_c.validation_probability, cutoff.threshold
    )
    extent_cutoff = youden_cutoff(y_train.to_numpy(), frame["lesion_extent_pct"].iloc[train_idx].to_numpy())

    fitted_at = datetime.now(UTC)
    cohort_info = {
        "source": source,
        "sha256": source_sha256,
        "n": len(frame),
        "n_train": len(train_idx),
        "n_validation": len(valid_idx),
        "events": int(outcome.sum()),
        "event_rate": float(outcome.mean()),
        "seed": int(seed),
        "fitted_at": fitted_at.isoformat(timespec="seconds"),
        "excluded": list(exclude),
    }
    coefficients = {k: v for k, v in model_c.params.items() if k != "const"}
    calibration_status = (
        f"fitted locally on {len(frame)} patients ({fitted_at.date().isoformat()}); not externally validated"
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
            "cohort_size": len(frame),
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
