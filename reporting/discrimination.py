"""How well a risk score separates events from non-events: C-statistic (DeLong CI) and cutoffs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


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
        raise ValueError("the C-statistic needs both events and non-events")
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
