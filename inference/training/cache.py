"""Training cache: HU slices with labels at the network's pixel size, built once, stored as npz.

Each source becomes one or more `<name>.npz` with `hu` int16 (n, H, W), `labels` uint8
(n, H, W) (0 bg, 1 lung, 2 GGO, 3 consolidation; 254 = not a lesion, lung or background
unknown; 255 = not labelled, ignored by the loss), `spacing` (dz, dy, dx) mm after resampling
and `kind`, the sampling group: "healthy" (real anatomy, no lesion inserted), "lesion" (real
anatomy or a phantom with synthetic lesions, or a site's labelled study) or "real" (real 2D
slices with expert lesion labels). Building takes minutes; a training run (or a resumed one)
then starts in seconds.

covid-semiseg-val may be trained on only as labelled slices (`inference.training.sources.
labelled_slice_entries`), never as anatomy or a site study; weights that learn from it carry
its non-commercial terms (the trainer records the licence in the weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
import torch
from torch.nn import functional as F

log = structlog.get_logger(__name__)

CACHE_SIZE = 256
IGNORE_LABEL = 255
#: Pixels known not to be a lesion whose lung/background class is unknown (lesion-only labels).
NOT_LESION_LABEL = 254
ANATOMY_FORBIDDEN = ("covid-semiseg",)
FORBIDDEN_SOURCES = ANATOMY_FORBIDDEN
KINDS = ("healthy", "lesion", "real")


class TrainingDataError(ValueError):
    """A training source that cannot be used; the message says why."""


@dataclass
class CacheEntry:
    name: str
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    kind: str = "lesion"


@dataclass
class SiteStudy:
    """A site's labelled study: an image (DICOM folder or NIfTI) and its label (SEG or NIfTI)."""

    image: Path
    label: Path
    kind: str  # "dicom-seg" or "nifti"
    label_values: dict[str, int] = field(default_factory=lambda: {"ggo": 1, "consolidation": 2})


def check_allowed(path: Path) -> None:
    """Refuse covid-semiseg as anatomy or a site study: it is 2D 8-bit slices with lesion-only
    labels under non-commercial terms, usable only as `[data.labelled_slices]`."""
    if any(token in str(path).lower() for token in ANATOMY_FORBIDDEN):
        raise TrainingDataError(
            f"{path} is covid-semiseg (2D slices, non-commercial): not anatomy nor a site study;"
            " use it only as [data.labelled_slices], whose weights carry its licence"
        )


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


def save_entry(entry: CacheEntry, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry.name}.npz"
    np.savez_compressed(
        path, hu=entry.hu, labels=entry.labels, spacing=np.array(entry.spacing), kind=np.array(entry.kind)
    )
    return path


def _spacing(values: np.ndarray) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


def load_cache(folder: Path, exclude: tuple[str, ...] = ()) -> list[CacheEntry]:
    """Every cached entry in `folder` (names in `exclude` left out), in name order."""
    entries = []
    for path in sorted(Path(folder).glob("*.npz")):
        if path.stem in exclude:
            continue
        with np.load(path) as data:
            kind = str(data["kind"]) if "kind" in data.files else "lesion"
            entries.append(CacheEntry(path.stem, data["hu"], data["labels"], _spacing(data["spacing"]), kind))
    if not entries:
        raise TrainingDataError(f"no cached training data in {folder}")
    return entries


def build_cache(
    folder: Path,
    anatomy: list[Path],
    variants: int,
    seed: int,
    synthetic_count: int = 0,
    site_studies: list[SiteStudy] | None = None,
    rebuild: bool = False,
    *,
    healthy_variants: int = 2,
    boxes: Path | None = None,
    style: str = "covid",
    slab_factors: tuple[int, ...] | None = None,
) -> list[Path]:
    """Build (or reuse) the cache for these sources; returns the npz paths.

    anatomy: real series without COVID-19 (`inference.training.anatomy`), each with
    `healthy_variants` lesion-free and `variants` lesion variants; boxes: a CSV of regions
    to ignore (Lung-PET-CT-Dx tumour boxes); style: a name in `inference.lesions.STYLES`:
    "covid" (radiological patterns), "covid-faint-ggo" (its first version) or "classic" (the
    blobs of ldct-unet 0.1.0).
    """
    from inference.lesions import STYLES
    from inference.training.anatomy import DEFAULT_SLAB_FACTORS, anatomy_entries, load_anatomy, read_boxes

    if style not in STYLES:
        raise TrainingDataError(f"lesion style {style!r}: use one of {sorted(STYLES)}")
    lesion_style, normal_style = STYLES[style]
    factors = tuple(slab_factors) if slab_factors is not None else DEFAULT_SLAB_FACTORS
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    wanted = {
        "anatomy": [str(p) for p in anatomy],
        "variants": variants,
        "seed": seed,
        "healthy_variants": healthy_variants,
        "boxes": str(boxes) if boxes else None,
        "style": style,
        "slab_factors": list(factors),
        "synthetic_count": synthetic_count,
        "site": [[str(s.image), str(s.label), s.kind, s.label_values] for s in site_studies or []],
        "format": 3,
    }
    if not rebuild and manifest_path.exists() and json.loads(manifest_path.read_text()) == wanted:
        log.info("cache.reuse", folder=str(folder))
        return sorted(folder.glob("*.npz"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npz"):
        old.unlink()
    manifest_path.unlink(missing_ok=True)
    all_boxes = read_boxes(Path(boxes)) if boxes else {}
    paths = []
    for i, series in enumerate(anatomy):
        check_allowed(Path(series))
        volume = load_anatomy(Path(series), all_boxes.get(Path(series).name))
        rng = np.random.default_rng(seed + 1000 * i)
        for part in anatomy_entries(volume, healthy_variants, variants, rng, lesion_style, factors, normal_style):
            paths.append(save_entry(CacheEntry(part.name, part.hu, part.labels, part.spacing, part.kind), folder))
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
