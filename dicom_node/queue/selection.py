"""Per-study series selection (`series.per_study = "best"`): which reconstruction to analyse.

A study often holds the same scan several times: a thin lung-kernel reconstruction, a thick
soft-tissue one, MIPs, a localizer. Non-CT objects and localizers are never candidates ("not
processed"), nor is a series that fails the completeness checks (one orientation, axial,
consistent spacing, `min_slices`: `evaluate_series`). Of the eligible series one is processed,
chosen by these rules in order of precedence; the first rule on which two series differ decides:

1. original images: ImageType ORIGINAL before DERIVED (MIPs, MPRs and other reformats are
   derived; a MIP's voxels are slab maxima, which inflate dense findings);
2. lung kernel: a ConvolutionKernel value matching `series.lung_kernel_pattern` (a sharp kernel
   shows the fine lung structure that ground-glass opacity is judged on);
3. thinner slices: SliceThickness, or the spacing between slices where it is absent (to 0.01 mm);
4. more slices: the longer coverage;
5. the lower SeriesNumber, then the SeriesInstanceUID: a repeatable choice between equals.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from inference.volume import values_of

RULES = ("original images", "lung kernel", "thinner slices", "more slices", "lower series number", "series UID")


@dataclass(frozen=True)
class SeriesFeatures:
    """What the selection compares about one eligible series."""

    series_uid: str
    series_number: int | None
    original: bool
    kernel: str
    lung_kernel: bool
    thickness_mm: float
    slices: int

    def describe(self) -> str:
        """E.g. "lung kernel B60f, 1.0 mm, 120 slices" (a derived series says so first)."""
        kernel = f"{'lung kernel' if self.lung_kernel else 'kernel'} {self.kernel or '(none given)'}"
        return f"{'' if self.original else 'derived, '}{kernel}, {self.thickness_mm:g} mm, {self.slices} slices"

    def order(self) -> tuple[bool, bool, float, int, int, str]:
        """Sort key, best first: one element per rule in `RULES`."""
        number = self.series_number if self.series_number is not None else sys.maxsize
        thickness = round(self.thickness_mm, 2)
        return (not self.original, not self.lung_kernel, thickness, -self.slices, number, self.series_uid)


def series_features(headers: Sequence[Dataset], spacing_mm: float, lung_kernel_pattern: str) -> SeriesFeatures:
    """The features of an eligible series from its headers (one per slice, duplicates dropped)."""
    first = headers[0]
    image_type = [str(v).upper() for v in values_of(first.get("ImageType"))]
    kernels = [str(v).strip() for v in values_of(first.get("ConvolutionKernel")) if str(v).strip()]
    try:
        thickness = float(first.get("SliceThickness") or 0)
    except (TypeError, ValueError):
        thickness = 0.0
    try:
        number: int | None = int(first.get("SeriesNumber"))
    except (TypeError, ValueError):
        number = None
    pattern = re.compile(lung_kernel_pattern)
    return SeriesFeatures(
        series_uid=str(first.SeriesInstanceUID),
        series_number=number,
        original=not image_type or image_type[0] != "DERIVED",
        kernel="\\".join(kernels),
        lung_kernel=any(pattern.search(kernel) for kernel in kernels),
        thickness_mm=round(thickness if thickness > 0 else spacing_mm, 2),
        slices=len(headers),
    )


def rank(candidates: Sequence[SeriesFeatures]) -> list[SeriesFeatures]:
    """The candidates, the preferred one first."""
    return sorted(candidates, key=SeriesFeatures.order)


def deciding_rule(winner: SeriesFeatures, other: SeriesFeatures) -> str:
    """The first rule on which `winner` beats `other`."""
    return next((rule for rule, a, b in zip(RULES, winner.order(), other.order(), strict=True) if a != b), RULES[-1])


def selected_reason(winner: SeriesFeatures, others: int) -> str:
    preferred = f"; preferred to {others} other series of the study" if others else "; the study's only candidate"
    return f"selected: {winner.describe()}{preferred}"


def not_selected_reason(winner: SeriesFeatures, other: SeriesFeatures, processed_as_job: int | None = None) -> str:
    """E.g. "not selected: series 1.2.3 preferred (lung kernel B60f, 1.0 mm, 120 slices), by lung
    kernel; this series: kernel B30f, 5.0 mm, 24 slices"."""
    earlier = f", processed earlier as job {processed_as_job}" if processed_as_job is not None else ""
    return (
        f"not selected: series {winner.series_uid} preferred ({winner.describe()}{earlier}), "
        f"by {deciding_rule(winner, other)}; this series: {other.describe()}"
    )
