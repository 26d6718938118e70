"""Training configuration from a TOML file.

Example (paths relative to the working directory; the shipped sets' configs are in
`inference/training/configs/`):

    [data]
    anatomy = ["../shared/data/lidc-idri/LIDC-IDRI-0002"]  # real CT without COVID-19
    boxes = "../shared/data/lung-pet-ct-dx/tumour-boxes.csv"  # regions to ignore (optional)
    healthy_variants = 2                                 # lesion-free copies per series
    lesion_variants = 10                                 # synthetic-lesion copies per series
    lesion_style = "covid"                               # or "classic" (ldct-unet 0.1.0 blobs)
    synthetic = 0                                        # synthetic phantoms (inference.synthetic)
    cache = "training-cache/default"

    [data.labelled_slices]                               # real 2D slices, lesion-only labels
    images = "../shared/data/covid-semiseg-val/images"
    labels = "../shared/data/covid-semiseg-val/labels"
    window = [-450, 1300]                                # assumed export window
    licence = "non-commercial research only"             # recorded in the weights
    cache = "training-cache/labelled-slices"

    [[data.site]]                                        # a site's own labelled studies
    kind = "dicom-seg"                                   # or "nifti"
    image = "site/CT001"                                 # DICOM folder (or .nii.gz)
    label = "site/CT001-seg.dcm"                         # DICOM SEG (or .nii.gz)
    label_values = { ggo = 1, consolidation = 2 }        # NIfTI only

    [train]
    steps = 1500
    batch_size = 8
    learning_rate = 0.002
    base_width = 16
    crop = 192
    checkpoint_every = 50
    group_weights = { healthy = 0.35, lesion = 0.65 }

    [augment]                                            # optional, AugmentConfig fields
    kernel_probability = 0.5
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from inference.training.augment import AugmentConfig
from inference.training.cache import SiteStudy, TrainingDataError, check_allowed
from inference.training.loop import TrainConfig


@dataclass
class LabelledSlices:
    """Real 2D slices with lesion-only labels (`inference.training.sources.labelled_slice_entries`)."""

    images: Path
    labels: Path
    licence: str
    window: tuple[float, float] = (-450.0, 1300.0)
    cache: Path = Path("training-cache/labelled-slices")


@dataclass
class DataConfig:
    anatomy: list[Path] = field(default_factory=list)
    boxes: Path | None = None
    healthy_variants: int = 2
    lesion_variants: int = 10
    lesion_style: str = "covid"
    slab_factors: list[int] | None = None
    synthetic: int = 0
    cache: Path = Path("training-cache/default")
    site: list[SiteStudy] = field(default_factory=list)
    labelled_slices: LabelledSlices | None = None


def _labelled_slices(raw: dict, path: Path | None) -> LabelledSlices:
    unknown = set(raw) - {f.name for f in fields(LabelledSlices)}
    if unknown:
        raise TrainingDataError(f"unknown [data.labelled_slices] keys in {path}: {sorted(unknown)}")
    for key in ("images", "labels", "licence"):
        if key not in raw:
            raise TrainingDataError(f"[data.labelled_slices] needs {key!r} (the licence goes into the weights)")
    window = raw.get("window", (-450.0, 1300.0))
    return LabelledSlices(
        Path(raw["images"]),
        Path(raw["labels"]),
        str(raw["licence"]),
        (float(window[0]), float(window[1])),
        Path(raw.get("cache", "training-cache/labelled-slices")),
    )


def load_config(path: Path | None) -> tuple[DataConfig, TrainConfig]:
    """Parse the TOML config (defaults when `path` is None); unknown keys are an error."""
    raw = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise TrainingDataError(f"cannot read training config {path}: {exc}") from exc
    data_raw = dict(raw.get("data", {}))
    train_raw = dict(raw.get("train", {}))
    augment_raw = dict(raw.get("augment", {}))
    unknown = set(raw) - {"data", "train", "augment"}
    if unknown:
        raise TrainingDataError(f"unknown sections in {path}: {sorted(unknown)}")
    sites = []
    for site in data_raw.pop("site", []):
        try:
            sites.append(
                SiteStudy(
                    image=Path(site["image"]),
                    label=Path(site["label"]),
                    kind=site.get("kind", "dicom-seg"),
                    label_values=dict(site.get("label_values", {"ggo": 1, "consolidation": 2})),
                )
            )
        except KeyError as exc:
            raise TrainingDataError(f"[[data.site]] entry needs {exc.args[0]!r}") from exc
    slices_raw = data_raw.pop("labelled_slices", None)
    known = {f.name for f in fields(DataConfig)} - {"site", "labelled_slices"}
    unknown = set(data_raw) - known
    if unknown:
        raise TrainingDataError(f"unknown [data] keys in {path}: {sorted(unknown)}")
    data = DataConfig(
        anatomy=[Path(p) for p in data_raw["anatomy"]]
        if "anatomy" in data_raw
        else [Path("../shared/data/lidc-idri/LIDC-IDRI-0002")],
        boxes=Path(data_raw["boxes"]) if data_raw.get("boxes") else None,
        healthy_variants=int(data_raw.get("healthy_variants", 2)),
        lesion_variants=int(data_raw.get("lesion_variants", 10)),
        lesion_style=str(data_raw.get("lesion_style", "covid")),
        slab_factors=[int(f) for f in data_raw["slab_factors"]] if "slab_factors" in data_raw else None,
        synthetic=int(data_raw.get("synthetic", 0)),
        cache=Path(data_raw.get("cache", "training-cache/default")),
        site=sites,
        labelled_slices=_labelled_slices(dict(slices_raw), path) if slices_raw is not None else None,
    )
    for p in [*data.anatomy, *(s.image for s in sites), *(s.label for s in sites)]:
        check_allowed(p)
    train_known = {f.name for f in fields(TrainConfig)} - {"augment"}
    unknown = set(train_raw) - train_known
    if unknown:
        raise TrainingDataError(f"unknown [train] keys in {path}: {sorted(unknown)}")
    train = TrainConfig(**train_raw)
    augment_known = {f.name for f in fields(AugmentConfig)} - {"out_size"}
    unknown = set(augment_raw) - augment_known
    if unknown:
        raise TrainingDataError(f"unknown [augment] keys in {path}: {sorted(unknown)}")
    for key in ("scale_range", "jpeg_quality", "noise_sd_hu"):
        if key in augment_raw:
            augment_raw[key] = tuple(augment_raw[key])
    train.augment = AugmentConfig(out_size=train.crop, **augment_raw)
    return data, train


def training_entries(data: DataConfig, seed: int, rebuild: bool = False, exclude_slices: tuple[str, ...] = ()) -> list:
    """Build (or reuse) the caches of `data` and load them; `exclude_slices` names labelled
    slices (e.g. "slice-12") to leave out (the held-out fold of a cross-validation)."""
    from inference.training.cache import build_cache, load_cache

    build_cache(
        data.cache,
        data.anatomy,
        data.lesion_variants,
        seed,
        data.synthetic,
        data.site,
        rebuild=rebuild,
        healthy_variants=data.healthy_variants,
        boxes=data.boxes,
        style=data.lesion_style,
        slab_factors=tuple(data.slab_factors) if data.slab_factors is not None else None,
    )
    entries = load_cache(data.cache)
    if data.labelled_slices is not None:
        entries += labelled_slices_cache(data.labelled_slices, rebuild, exclude_slices)
    return entries


def labelled_slices_cache(source: LabelledSlices, rebuild: bool = False, exclude: tuple[str, ...] = ()) -> list:
    """The labelled slices as cache entries (built once into `source.cache`)."""
    import json

    from inference.training.cache import load_cache, save_entry
    from inference.training.sources import labelled_slice_entries

    manifest = source.cache / "manifest.json"
    wanted = {"images": str(source.images), "labels": str(source.labels), "window": list(source.window), "format": 1}
    if rebuild or not manifest.exists() or json.loads(manifest.read_text()) != wanted:
        source.cache.mkdir(parents=True, exist_ok=True)
        for old in source.cache.glob("*.npz"):
            old.unlink()
        for entry in labelled_slice_entries(source.images, source.labels, source.window):
            save_entry(entry, source.cache)
        manifest.write_text(json.dumps(wanted, indent=1))
    return load_cache(source.cache, exclude)


#: Licence of weights that learnt only from the redistributable sources.
OPEN_LICENCE = (
    "redistributable with attribution: LIDC-IDRI (CC BY 3.0) and Lung-PET-CT-Dx "
    "(CC BY 4.0), The Cancer Imaging Archive; see MODEL_CARD.md"
)


def weights_metadata(data: DataConfig, seed: int, losses: list[float], exclude_slices: tuple[str, ...] = ()) -> dict:
    """What the weights learnt from and under which terms they may be used (stored in them)."""
    metadata = {
        "steps": len(losses),
        "seed": seed,
        "final_loss": losses[-1] if losses else None,
        "anatomy": [Path(p).name for p in data.anatomy],
        "lesion_style": data.lesion_style,
        "healthy_variants": data.healthy_variants,
        "lesion_variants": data.lesion_variants,
        "synthetic": data.synthetic,
        "site_studies": len(data.site),
        "licence": OPEN_LICENCE if not data.site else "depends on the site studies",
    }
    if data.labelled_slices is not None:
        metadata["labelled_slices"] = str(data.labelled_slices.images.parent.name)
        metadata["labelled_slices_excluded"] = list(exclude_slices)
        metadata["licence"] = data.labelled_slices.licence
    return metadata
