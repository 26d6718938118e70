"""Checks on CT series without COVID-19: what a healthy lung must read as, on any scanner.

- `lesion_extent`: the lesion extent (% of lung) of a label map, with regions known to hold
  other disease (the tumour boxes of Lung-PET-CT-Dx) left out of both lesion and lung.
- `outside_body`: labelled voxels outside the patient's body. The body is found here
  independently of the engine's own clean-up (`inference.engines.cnn.clear_outside_body`):
  tissue above -300 HU, opened by a 3 mm disk (cuts the table, blankets and cables),
  its largest 3D component, holes filled per slice, then widened by `margin_mm`. Table pads,
  the table and the air around the patient are outside it: no label may be there.
- `add_noise`: low-dose noise (white Gaussian, per voxel at the acquired matrix) inside the
  field of view, seeded.

Used by `benchmarks/bench_healthy.py` (every real series in ../shared/data) and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from inference.quantify import CONSOLIDATION, GGO, NORMAL_LUNG

BODY_HU = -300.0


def body_mask(hu: np.ndarray, spacing: tuple[float, float, float], margin_mm: float = 3.0) -> np.ndarray:
    """The patient's body with its cavities (see the module docstring), bool like `hu`."""
    radius = max(1, round(3.0 / spacing[1]))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = yy**2 + xx**2 <= radius**2
    tissue = np.empty(hu.shape, bool)
    for k in range(hu.shape[0]):
        tissue[k] = ndimage.binary_opening(hu[k] > BODY_HU, structure=disk)
    labels, n = ndimage.label(tissue)
    if n == 0:
        return tissue
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    del labels
    grow = max(1, round(margin_mm / spacing[1]))
    yy, xx = np.mgrid[-grow : grow + 1, -grow : grow + 1]
    widen = yy**2 + xx**2 <= grow**2
    for k in range(body.shape[0]):
        if body[k].any():
            body[k] = ndimage.binary_dilation(ndimage.binary_fill_holes(body[k]), structure=widen)
    return body


def outside_body(labels: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> int:
    """Number of labelled voxels (any class) outside `body_mask`."""
    return int(np.count_nonzero((labels > 0) & ~body_mask(hu, spacing)))


@dataclass(frozen=True)
class Extent:
    lung_cm3: float
    lesion_pct: float
    ggo_pct: float
    consolidation_pct: float
    excluded_cm3: float


def lesion_extent(labels: np.ndarray, voxel_ml: float, exclude: np.ndarray | None = None) -> Extent:
    """Lung volume and lesion/GGO/consolidation extents, voxels in `exclude` left out of all."""
    keep = np.ones(labels.shape, bool) if exclude is None else ~exclude
    counts = np.bincount(labels[keep].ravel(), minlength=4)[:4].astype(float)
    lung = counts[NORMAL_LUNG] + counts[GGO] + counts[CONSOLIDATION]

    def pct(n: float) -> float:
        return 100.0 * n / lung if lung else 0.0

    excluded = 0.0 if exclude is None else float(np.count_nonzero((labels > 0) & exclude)) * voxel_ml
    return Extent(
        lung * voxel_ml,
        pct(counts[GGO] + counts[CONSOLIDATION]),
        pct(counts[GGO]),
        pct(counts[CONSOLIDATION]),
        excluded,
    )


def add_noise(hu: np.ndarray, sd_hu: float, seed: int = 0) -> np.ndarray:
    """`hu` plus white Gaussian noise of `sd_hu` inside the field of view (int16)."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(hu)
    for k in range(hu.shape[0]):
        noisy = hu[k] + rng.normal(0.0, sd_hu, hu.shape[1:]) * (hu[k] > -1500)
        out[k] = np.clip(np.rint(noisy), -1024, 3071)
    return out


def real_series(data_root: Path) -> list[Path]:
    """Every DICOM CT series folder under `data_root` (lidc-idri/*, lung-pet-ct-dx/*)."""
    found = []
    for collection in sorted(Path(data_root).iterdir()):
        if not collection.is_dir():
            continue
        for folder in sorted(collection.iterdir()):
            if folder.is_dir() and any(p.suffix == ".dcm" for p in folder.iterdir()):
                found.append(folder)
    return found


def tumour_mask(folder: Path, datasets: list, shape: tuple[int, int, int]) -> np.ndarray | None:
    """The tumour boxes of a Lung-PET-CT-Dx series (the CSV beside its folder), as given."""
    from inference.training.anatomy import box_mask, read_boxes

    csv_path = Path(folder).parent / "tumour-boxes.csv"
    if not csv_path.is_file():
        return None
    boxes = read_boxes(csv_path).get(Path(folder).name)
    return box_mask(datasets, shape, boxes) if boxes else None
