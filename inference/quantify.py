"""Volumes (cm3) and extents (% of lung) from a label map.

Label values: 0 background, 1 normal lung, 2 GGO, 3 consolidation. Lung = 1+2+3,
lesion = GGO + consolidation, extent(X) = volume(X) / lung volume x 100 (paper 2.2.4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from inference.voxels import value_counts

BACKGROUND, NORMAL_LUNG, GGO, CONSOLIDATION = 0, 1, 2, 3


@dataclass(frozen=True)
class Quantification:
    lung_cm3: float
    normal_lung_cm3: float
    ggo_cm3: float
    consolidation_cm3: float
    lesion_cm3: float
    ggo_pct: float
    consolidation_pct: float
    lesion_pct: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def quantify(labels: np.ndarray, voxel_volume_ml: float) -> Quantification:
    """Measure a label map whose voxels each hold `voxel_volume_ml` cm3."""
    counts = value_counts(labels, 4)[:4].astype(np.float64)
    normal, ggo, cons = (counts[i] * voxel_volume_ml for i in (NORMAL_LUNG, GGO, CONSOLIDATION))
    lung = normal + ggo + cons

    def pct(v: float) -> float:
        return 100.0 * v / lung if lung > 0 else 0.0

    return Quantification(
        lung_cm3=lung,
        normal_lung_cm3=normal,
        ggo_cm3=ggo,
        consolidation_cm3=cons,
        lesion_cm3=ggo + cons,
        ggo_pct=pct(ggo),
        consolidation_pct=pct(cons),
        lesion_pct=pct(ggo + cons),
    )
