"""Derive the shipped default risk model (`reporting/models/model_c_default.json`).

The study (Bartoli et al. 2022) published Model C's adjusted odds ratios (Table 3) but not its
intercept nor the mean and SD used to standardise the automatic lesion extent. This script
fills those gaps by a stated, reproducible method:

1. Simulate a large cohort (n = 200 000, fixed seed) from Table 1's marginal proportions of the
   prognostic-value dataset (n = 1621): sex, age bands, onset > 7 days, comorbidities,
   drawn independently (only marginals are published).
2. Lesion extent: 13.1% without lesions (Table 1: 86.9% had lesions); the others lognormal,
   with the overall mean and SD set from the dataset's CT-SS 6.0 +/- 7.2 (out of 40) at an
   assumed 1.25% of lung per CT-SS point (mean 7.5%, SD 9.0%; see
   `reporting.cohort_simulation.EXTENT_PCT_PER_CT_SS_POINT` for the reasoning). The standardisation
   stored in the model is the simulated cohort's mean and SD of that extent.
3. Intercept: the value at which the mean predicted risk over the simulated cohort equals
   the published event rate, 227/1621 = 14.0%.
4. Cutoff: the Youden-optimal probability over the simulated cohort, each patient counting
   as an event with weight p and a non-event with weight 1 - p (the expected ROC curve of a
   calibrated model; no outcome sampling noise). For a calibrated model this optimum is,
   in theory, the event rate itself (J's derivative p/pi - (1-p)/(1-pi) vanishes at p = pi),
   which the derivation confirms: the cutoff comes out at 14.0%.

The result is marked "published odds ratios, not locally calibrated". Its absolute
probabilities depend on the assumed extent distribution; a site should refit with
`ldct-node risk fit` on its own cohort.

Run: `python -m reporting.derive_default_model [--check]` (writes the JSON, or with --check
compares the shipped file with a fresh derivation and exits 1 on a difference).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from reporting.cohort_simulation import (
    ASSUMED_EXTENT_MEAN_PCT,
    ASSUMED_EXTENT_SD_PCT,
    EXTENT_PCT_PER_CT_SS_POINT,
    PUBLISHED_EVENT_RATE,
    PUBLISHED_MODEL_C_ODDS_RATIOS,
    TABLE1_PROGNOSTIC_MARGINALS,
    intercept_for_event_rate,
    linear_predictor,
    simulate_covariates,
)
from reporting.risk import (
    CALIBRATION_NOT_LOCAL,
    DEFAULT_MODEL_PATH,
    RiskModel,
    covariate_specs_for,
    risk_model_from_dict,
)

DERIVATION_N = 200_000
DERIVATION_SEED = 20220607
MODEL_NAME = "bartoli2022-model-c"
MODEL_VERSION = "1.0.0"


def expected_youden_cutoff(probability: np.ndarray) -> tuple[float, float]:
    """(cutoff, J) maximising expected sensitivity + specificity - 1 of a calibrated model."""
    order = np.argsort(-probability, kind="mergesort")
    p = probability[order]
    true_pos = np.cumsum(p) / p.sum()
    false_pos = np.cumsum(1.0 - p) / (1.0 - p).sum()
    j = true_pos - false_pos
    best = int(np.argmax(j))
    return float(p[best]), float(j[best])


def expected_c_statistic(probability: np.ndarray) -> float:
    """Expected C-statistic of a calibrated model: P(risk of an event > risk of a non-event)."""
    order = np.argsort(probability, kind="mergesort")
    p = probability[order]
    negatives_below = np.cumsum(1.0 - p) - (1.0 - p)  # ties are negligible for continuous risk
    return float(np.sum(p * negatives_below) / (p.sum() * (1.0 - p).sum()))


def derive_default_model(n: int = DERIVATION_N, seed: int = DERIVATION_SEED) -> RiskModel:
    """The default model, derived as described in the module docstring."""
    cohort = simulate_covariates(n, seed)
    extent = cohort["lesion_extent_pct"].to_numpy(dtype=float)
    standardisation = {
        "lesion_extent_pct": {
            "mean": round(float(extent.mean()), 3),
            "sd": round(float(extent.std(ddof=1)), 3),
        }
    }
    coefficients = {k: round(math.log(v), 6) for k, v in PUBLISHED_MODEL_C_ODDS_RATIOS.items()}
    eta = linear_predictor(cohort, coefficients, 0.0, standardisation)
    intercept = round(intercept_for_event_rate(eta, PUBLISHED_EVENT_RATE), 6)
    probability = 1.0 / (1.0 + np.exp(-(intercept + eta)))
    cutoff, youden_j = expected_youden_cutoff(probability)
    implied_c = expected_c_statistic(probability)
    provenance = {
        "source": (
            "Bartoli et al. 2022, Table 3 Model C adjusted odds ratios (lesion extent per SD); "
            "Table 1 prognostic-value dataset marginals; event rate 227/1621"
        ),
        "method": (
            f"intercept, extent mean/SD and cutoff derived on a simulated cohort (n={n}, "
            f"seed={seed}) by reporting/derive_default_model.py: covariates independent with "
            "Table 1 marginals; lesion extent 0 in "
            f"{1 - TABLE1_PROGNOSTIC_MARGINALS['any_lesion']:.1%} (no lesion), lognormal "
            f"otherwise with overall mean {ASSUMED_EXTENT_MEAN_PCT:.2f}% and SD "
            f"{ASSUMED_EXTENT_SD_PCT:.2f}% (CT-SS 6.0 +/- 7.2 at an assumed "
            f"{EXTENT_PCT_PER_CT_SS_POINT}% of lung per point); intercept so that the mean "
            f"predicted risk is {PUBLISHED_EVENT_RATE:.4f}; cutoff = Youden-optimal "
            "probability on the expected ROC curve"
        ),
        "calibrated_locally": False,
        "notes": (
            "Odds ratios are published; intercept, extent standardisation and cutoff are not "
            "and rest on the stated assumptions, so absolute probabilities are approximate. "
            "Obesity is not in Table 3 and is not used. "
            f"Implied C-statistic on the simulated cohort {implied_c:.3f} (published 0.90 on "
            f"the study's validation part); Youden J {youden_j:.3f}. "
            "Refit on local data with `ldct-node risk fit`."
        ),
        "derivation": {"n": n, "seed": seed, "implied_c_statistic": round(implied_c, 4)},
    }
    return RiskModel(
        format_version=1,
        name=MODEL_NAME,
        version=MODEL_VERSION,
        coefficients=coefficients,
        intercept=intercept,
        standardisation=standardisation,
        cutoff=round(cutoff, 6),
        covariates=covariate_specs_for(coefficients),
        provenance=provenance,
        calibration_status=CALIBRATION_NOT_LOCAL,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file")
    parser.add_argument("--out", default=str(DEFAULT_MODEL_PATH))
    args = parser.parse_args(argv)
    derived = derive_default_model()
    if args.check:
        shipped = risk_model_from_dict(json.loads(DEFAULT_MODEL_PATH.read_text()), "shipped")
        same = shipped.to_dict() == derived.to_dict()
        print("shipped model matches the derivation" if same else "shipped model DIFFERS")
        return 0 if same else 1
    derived.save(args.out)
    print(
        f"wrote {args.out}: intercept {derived.intercept}, extent "
        f"{derived.standardisation['lesion_extent_pct']}, cutoff {derived.cutoff}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
