"""Training cache: downsampled HU slices with labels, built once, stored as compressed npz.

Each source volume (a real LIDC series with synthetic lesions in several random variants,
a site's labelled study, a synthetic phantom) becomes one `<name>.npz` with
`hu` int16 (n, S, S), `labels` uint8 (n, S, S) (0 bg, 1 lung, 2 GGO, 3 consolidation;
255 = not labelled, ignored by the loss) and `spacing` (dz, dy, dx) mm after resampling.
Building takes minutes; a training run (or a resumed one) then starts in seconds.
covid-semiseg-val is validation-only data: `build_cache` refuses any path that names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
import torch
from torch.nn import functional as F

from inference.lesions import insert_lesions_with_parameters
from inference.training.lung_reference import reference_lung_mask

log = structlog.get_logger(__name__)

CACHE_SIZE = 256
IGNORE_LABEL = 255
FORBIDDEN_SOURCES = ("covid-semiseg",)


class TrainingDataError(ValueError):
    """A training source that cannot be used; the message says why."""


@dataclass
class CacheEntry:
    name: str
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


@dataclass
class SiteStudy:
    """A site's labelled study: an image (DICOM folder or NIfTI) and its label (SEG or NIfTI)."""

    image: Path
    label: Path
    kind: str  # "dicom-seg" or "nifti"
    label_values: dict[str, int] = field(default_factory=lambda: {"ggo": 1, "consolidation": 2})


def check_allowed(path: Path) -> None:
    """Refuse validation-only data as a training source."""
    if any(token in str(path).lower() for token in FORBIDDEN_SOURCES):
        raise TrainingDataError(f"{path} is validation-only data (covid-semiseg-val): it must never be used to train")


def resample_slices(hu: np.ndarray, size: int = CACHE_SIZE) -> np.ndarray:
    """Area-average (z, H, W) HU slices to (z, size, size) int16 (square inputs expected)."""
    t = torch.from_numpy(hu.astype(np.float32))[:, None]
    out = F.interpolate(t, size=(size, size), mode="area")[:, 0]
    return out.round().clamp(-32768, 32767).numpy().astype(np.int16)


def resample_mask(mask: np.ndarray, size: int = CACHE_SIZE) -> np.ndarray:
    """Downsample a boolean (z, H, W) mask by area fraction >= 0.5."""
    t = torch.from_numpy(mask.astype(np.float32))[:, None]
    return (F.interpolate(t, size=(size, size), mode="area")[:, 0] >= 0.5).numpy()


def resample_labels(labels: np.ndarray, size: int = CACHE_SIZE) -> np.ndarray:
    """Downsample a label map by majority of its one-hot channels."""
    classes = int(labels[labels != IGNORE_LABEL].max(initial=0)) + 1
    onehot = np.stack([(labels == c) for c in [*range(classes), IGNORE_LABEL]], 1)
    t = torch.from_numpy(onehot.astype(np.float32))
    pooled = F.interpolate(t, size=(size, size), mode="area").argmax(1).numpy()
    values = np.array([*range(classes), IGNORE_LABEL], np.uint8)
    return values[pooled]


def lesion_variants(
    name: str,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    variants: int,
    seed: int,
    size: int = CACHE_SIZE,
) -> list[CacheEntry]:
    """Real anatomy at `size` px with `variants` random lesion insertions (variant 0: none)."""
    lung_full = reference_lung_mask(hu, spacing)
    small_hu = resample_slices(hu, size)
    lung = resample_mask(lung_full, size)
    small_spacing = (spacing[0], spacing[1] * hu.shape[1] / size, spacing[2] * hu.shape[2] / size)
    has_lung = lung.reshape(len(lung), -1).any(1)
    # Keep the lung slices and every 4th slice without lung (neck, abdomen) as negatives.
    keep = has_lung | (np.arange(len(lung)) % 4 == 0)
    rng = np.random.default_rng(seed)
    entries = []
    for k in range(variants):
        extent = 0.0 if k == 0 else None
        lesioned, labels, params = insert_lesions_with_parameters(
            small_hu, lung, small_spacing, rng, target_extent_pct=extent
        )
        entries.append(CacheEntry(f"{name}-v{k:02d}", lesioned[keep], labels[keep], small_spacing))
        log.info(
            "cache.variant",
            source=name,
            variant=k,
            extent_pct=round(params.target_extent_pct, 2),
            consolidation_share=round(params.consolidation_fraction, 2),
        )
    return entries


def save_entry(entry: CacheEntry, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry.name}.npz"
    np.savez_compressed(path, hu=entry.hu, labels=entry.labels, spacing=np.array(entry.spacing))
    return path


def load_cache(folder: Path) -> list[CacheEntry]:
    """Every cached entry in `folder`, in name order."""
    entries = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path) as data:
            entries.append(CacheEntry(path.stem, data["hu"], data["labels"], tuple(float(v) for v in data["spacing"])))
    if not entries:
        raise TrainingDataError(f"no cached training data in {folder}")
    return entries


def build_cache(
    folder: Path,
    lidc_series: list[Path],
    variants: int,
    seed: int,
    synthetic_count: int = 0,
    site_studies: list[SiteStudy] | None = None,
    rebuild: bool = False,
) -> list[Path]:
    """Build (or reuse) the cache for these sources; returns the npz paths."""
    from inference.volume import load_series

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    wanted = {
        "lidc": [str(p) for p in lidc_series],
        "variants": variants,
        "seed": seed,
        "synthetic_count": synthetic_count,
        "site": [[str(s.image), str(s.label), s.kind, s.label_values] for s in site_studies or []],
        "size": CACHE_SIZE,
    }
    if not rebuild and manifest_path.exists() and json.loads(manifest_path.read_text()) == wanted:
        log.info("cache.reuse", folder=str(folder))
        return sorted(folder.glob("*.npz"))
    for old in folder.glob("*.npz"):
        old.unlink()
    paths = []
    for i, series in enumerate(lidc_series):
        check_allowed(Path(series))
        volume = load_series(Path(series))
        for entry in lesion_variants(Path(series).name, volume.hu, volume.spacing, variants, seed + 1000 * i):
            paths.append(save_entry(entry, folder))
    if synthetic_count:
        from inference.training.sources import synthetic_entries

        for entry in synthetic_entries(synthetic_count, seed):
            paths.append(save_entry(entry, folder))
    for study in site_studies or []:
        check_allowed(study.image)
        check_allowed(study.label)
        from inference.training.sources import site_entry

        paths.append(save_entry(site_entry(study), folder))
    manifest_path.write_text(json.dumps(wanted, indent=1))
    return paths
