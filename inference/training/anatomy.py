"""Real anatomy for training: CT series without COVID-19, at the network's pixel size, as
acquired and as thick slices, without lesions and with synthetic ones.

Why: a model trained on one thin-slice series from one scanner called vessels blurred by
thick slices, soft kernels and dependent density GGO on other scanners (issue 14). Every
real series we may train on is therefore used as anatomy, and what we lack is simulated:

- pixel size: slices are area-resampled to `TRAINING_PIXEL_MM` (the engine's working pixel
  size), so a 512 x 0.84 mm slice becomes 315 px and a 512 x 0.65 mm one 242 px;
- slice thickness: a thin series (< 2 mm) is also averaged over `slab_factors` consecutive
  slices (1.25 mm x 2, 3, 4, 6 = 2.5, 3.75, 5 and 7.5 mm), voxel fractions for the labels:
  lesion where at least half the slab is lesion, else lung where at least half is lung. The
  partial volume at the diaphragm, heart and pleura that this makes is labelled lung or
  background, never lesion: exactly what a thick slice must not be called;
- lesions: `inference.lesions` inserted on the thin volume before averaging, so that thick
  lesions have the partial volume real ones have.

Lung truth is `reference_lung_mask` (classical engine AND air connectivity). Regions known
not to be normal lung in these series (the tumour boxes of Lung-PET-CT-Dx) are IGNORE: the
loss neither rewards nor punishes any class there. Kernels, noise and exports are left to
augmentation (`inference.training.augment`), so each draw gets a new one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
import torch
from torch.nn import functional as F

from inference.lesions import COVID_STYLE, NORMAL_VARIATION_STYLE, LesionStyle, insert_lesions_with_parameters
from inference.quantify import BACKGROUND, CONSOLIDATION, GGO, NORMAL_LUNG

log = structlog.get_logger(__name__)

#: The engine's working pixel size (inference.engines.cnn.TRAINING_PIXEL_MM).
TRAINING_PIXEL_MM = 1.37
IGNORE_LABEL = 255
THIN_SLICE_MM = 2.0
#: 1.25 mm x (2, 3, 4, 6): 2.5, 3.75, 5 and 7.5 mm, the thicknesses scanners reconstruct.
DEFAULT_SLAB_FACTORS = (2, 3, 4, 6)
#: In-plane margin (mm) and slices added around each box before it is ignored: a box is
#: drawn on the slices the annotators chose; the tumour's edge reaches a little further.
BOX_MARGIN_MM = 4.0
BOX_MARGIN_SLICES = 1


@dataclass(frozen=True)
class Box:
    """A region to ignore on one slice (pixel coordinates, inclusive), by SOP Instance UID."""

    sop_instance_uid: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int


def read_boxes(csv_path: Path) -> dict[str, list[Box]]:
    """Boxes of a Lung-PET-CT-Dx style CSV (sop_instance_uid, xmin, ymin, xmax, ymax), by series folder."""
    boxes: dict[str, list[Box]] = {}
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            boxes.setdefault(row["series_folder"], []).append(
                Box(row["sop_instance_uid"], int(row["xmin"]), int(row["ymin"]), int(row["xmax"]), int(row["ymax"]))
            )
    return boxes


def box_mask(
    datasets: list, shape: tuple[int, int, int], boxes: list[Box], margin_px: int = 0, margin_slices: int = 0
) -> np.ndarray:
    """Boolean (z, y, x) mask of the boxes on the slices they name (SOP Instance UID)."""
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(datasets)}
    mask = np.zeros(shape, bool)
    for box in boxes:
        k = index.get(box.sop_instance_uid)
        if k is None:
            continue
        z0, z1 = max(0, k - margin_slices), min(shape[0], k + margin_slices + 1)
        mask[
            z0:z1,
            max(0, box.ymin - margin_px) : box.ymax + margin_px + 1,
            max(0, box.xmin - margin_px) : box.xmax + margin_px + 1,
        ] = True
    return mask


def working_size(shape: tuple[int, int], row_mm: float, col_mm: float) -> tuple[int, int]:
    """(rows, cols) of a slice at the training pixel size (as the engine computes it)."""
    return (
        max(16, round(shape[0] * row_mm / TRAINING_PIXEL_MM)),
        max(16, round(shape[1] * col_mm / TRAINING_PIXEL_MM)),
    )


def resample_hu(hu: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average (z, H, W) HU to (z, *size) int16, in chunks of slices."""
    out = np.empty((hu.shape[0], *size), np.int16)
    for start in range(0, hu.shape[0], 32):
        t = torch.from_numpy(hu[start : start + 32].astype(np.float32))[:, None]
        out[start : start + 32] = F.interpolate(t, size=size, mode="area")[:, 0].round().numpy()
    return out


def resample_fractions(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per-class area fractions (z, 5, *size) float32 of a label map: bg, lung, GGO, cons, ignore."""
    out = np.empty((labels.shape[0], 5, *size), np.float32)
    values = (BACKGROUND, NORMAL_LUNG, GGO, CONSOLIDATION, IGNORE_LABEL)
    for start in range(0, labels.shape[0], 16):
        part = labels[start : start + 16]
        onehot = torch.from_numpy(np.stack([part == v for v in values], 1).astype(np.float32))
        out[start : start + 16] = F.interpolate(onehot, size=size, mode="area").numpy()
    return out


def labels_from_fractions(fractions: np.ndarray) -> np.ndarray:
    """The label rule for partial volume: lesion where >= half the voxel is lesion
    (consolidation if it is at least half of that lesion), else lung where >= half is lung
    (lesion included), else background; ignored wherever any of the voxel is ignored."""
    bg, lung, ggo, cons, ignore = (fractions[:, i] for i in range(5))
    lesion = ggo + cons
    labels = np.full(bg.shape, BACKGROUND, np.uint8)
    labels[lung + lesion >= 0.5] = NORMAL_LUNG
    labels[lesion >= 0.5] = GGO
    labels[(lesion >= 0.5) & (cons >= 0.5 * lesion)] = CONSOLIDATION
    labels[ignore > 0] = IGNORE_LABEL
    return labels


def average_slabs(hu: np.ndarray, fractions: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Thick slices: the mean of `factor` consecutive slices (HU and class fractions)."""
    n = hu.shape[0] // factor * factor
    thick_hu = hu[:n].reshape(-1, factor, *hu.shape[1:]).astype(np.float32).mean(1)
    thick_fr = fractions[:n].reshape(-1, factor, *fractions.shape[1:]).mean(1)
    return np.rint(thick_hu).astype(np.int16), thick_fr


@dataclass
class AnatomyVolume:
    """One real series at the training pixel size: HU, lung truth (with IGNORE) and spacing."""

    name: str
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


def load_anatomy(folder: Path, boxes: list[Box] | None = None) -> AnatomyVolume:
    """A DICOM series as training anatomy: resampled, lung truth, boxes ignored."""
    from inference.training.lung_reference import reference_lung_mask
    from inference.volume import load_series

    volume = load_series(Path(folder))
    lung = reference_lung_mask(volume.hu, volume.spacing)
    labels = np.where(lung, NORMAL_LUNG, BACKGROUND).astype(np.uint8)
    if boxes:
        margin = round(BOX_MARGIN_MM / volume.spacing[1])
        labels[box_mask(volume.datasets, volume.hu.shape, boxes, margin, BOX_MARGIN_SLICES)] = IGNORE_LABEL
    size = working_size(volume.hu.shape[1:], volume.spacing[1], volume.spacing[2])
    hu = resample_hu(volume.hu, size)
    small = labels_from_fractions(resample_fractions(labels, size))
    spacing = (
        volume.spacing[0],
        volume.spacing[1] * volume.hu.shape[1] / size[0],
        volume.spacing[2] * volume.hu.shape[2] / size[1],
    )
    log.info(
        "anatomy.loaded",
        source=Path(folder).name,
        slices=int(hu.shape[0]),
        size=list(size),
        ignored=int((small == IGNORE_LABEL).sum()),
    )
    return AnatomyVolume(Path(folder).name, hu, small, spacing)


@dataclass
class AnatomyEntry:
    """A stack of training slices from one anatomy variant (see `anatomy_entries`)."""

    name: str
    kind: str  # "healthy" (no lesion inserted) or "lesion"
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


def _keep_slices(labels: np.ndarray) -> np.ndarray:
    """Slices with lung, plus every 4th slice without (neck, abdomen) as negatives."""
    has_lung = ((labels >= NORMAL_LUNG) & (labels <= CONSOLIDATION)).reshape(len(labels), -1).any(1)
    return has_lung | (np.arange(len(labels)) % 4 == 0)


def anatomy_entries(
    anatomy: AnatomyVolume,
    healthy_variants: int,
    lesion_variants: int,
    rng: np.random.Generator,
    style: LesionStyle | None = COVID_STYLE,
    slab_factors: tuple[int, ...] = DEFAULT_SLAB_FACTORS,
    normal_style: LesionStyle | None = NORMAL_VARIATION_STYLE,
) -> list[AnatomyEntry]:
    """Variants of one real series: `healthy_variants` without lesions (each at every slab
    thickness; the first as acquired, the others, with `style`, with normal variation:
    dependent density, perfusion patches) and `lesion_variants` with lesions
    (each at one thickness, cycling through as-acquired and the slabs)."""
    thin = anatomy.spacing[0] < THIN_SLICE_MM
    factors = (1, *slab_factors) if thin else (1,)
    lung = anatomy.labels == NORMAL_LUNG
    ignore = anatomy.labels == IGNORE_LABEL
    entries = []
    for v in range(healthy_variants + lesion_variants):
        healthy = v < healthy_variants
        extent = 0.0 if healthy else None
        if healthy and (v == 0 or style is None or normal_style is None):
            hu, labels = anatomy.hu, np.where(ignore, IGNORE_LABEL, anatomy.labels).astype(np.uint8)
            patterns: tuple[str, ...] = ()
        else:
            hu, labels, params = insert_lesions_with_parameters(
                anatomy.hu,
                lung,
                anatomy.spacing,
                rng,
                target_extent_pct=extent,
                noise_sd_hu=0.0,
                style=normal_style if healthy else style,
            )
            labels[ignore] = IGNORE_LABEL
            patterns = params.patterns
        chosen = factors if healthy else (factors[(v - healthy_variants) % len(factors)],)
        fractions = None
        for factor in chosen:
            if factor == 1:
                thick_hu, thick_labels = hu, labels
            else:
                if fractions is None:
                    fractions = np.stack(
                        [labels == c for c in (BACKGROUND, NORMAL_LUNG, GGO, CONSOLIDATION, IGNORE_LABEL)], 1
                    )
                    fractions = fractions.astype(np.float32)
                thick_hu, thick_fr = average_slabs(hu, fractions, factor)
                thick_labels = labels_from_fractions(thick_fr)
            keep = _keep_slices(thick_labels)
            spacing = (anatomy.spacing[0] * factor, *anatomy.spacing[1:])
            kind = "healthy" if healthy else "lesion"
            entries.append(
                AnatomyEntry(
                    f"{anatomy.name}-{kind}{v:02d}-x{factor}", kind, thick_hu[keep], thick_labels[keep], spacing
                )
            )
            log.info(
                "anatomy.variant",
                source=anatomy.name,
                variant=v,
                slab=factor,
                slices=int(keep.sum()),
                patterns=list(patterns),
                lesion_pct=round(
                    100.0
                    * float(np.isin(thick_labels, (GGO, CONSOLIDATION)).sum())
                    / max(1, int(np.isin(thick_labels, (1, 2, 3)).sum())),
                    2,
                ),
            )
    return entries
