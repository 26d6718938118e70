"""Prognostic risk of a severe COVID-19 course (the reference study's Model C).

The study (Bartoli et al. 2022, Table 3) fitted a logistic regression of a severe outcome
(oxygen therapy, ICU, hospitalisation >= 10 days or death) on clinical covariates plus the
automatic lesion extent, standardised to mean 0 / SD 1. This module holds the result types
that the SR and key-image code read; the model file loader and the computation follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RiskAssessment:
    """Outcome of applying a risk model to one study.

    `computed` is False when a required covariate was missing under the chosen policy; then
    `probability`, `category` and `cutoff` are None and `reason_not_computed` says why.
    `covariates_used` maps covariate names to the values that entered the model
    (after any assumption); `covariates_assumed_absent` lists comorbidities set to 0 because
    the policy was "assume-absent".
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
