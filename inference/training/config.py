"""Training configuration from a TOML file.

Example (paths relative to the working directory):

    [data]
    lidc = ["../shared/data/lidc-idri/LIDC-IDRI-0002"]   # real anatomy, lesions synthesised
    lesion_variants = 16                                 # lesion insertions per LIDC series
    synthetic = 0                                        # synthetic phantoms (inference.synthetic)
    cache = "training-cache/default"

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
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from inference.training.augment import AugmentConfig
from inference.training.cache import SiteStudy, TrainingDataError, check_allowed
from inference.training.loop import TrainConfig


@dataclass
class DataConfig:
    lidc: list[Path] = field(default_factory=list)
    lesion_variants: int = 16
    synthetic: int = 0
    cache: Path = Path("training-cache/default")
    site: list[SiteStudy] = field(default_factory=list)


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
    known = {f.name for f in fields(DataConfig)} - {"site"}
    unknown = set(data_raw) - known
    if unknown:
        raise TrainingDataError(f"unknown [data] keys in {path}: {sorted(unknown)}")
    data = DataConfig(
        lidc=[Path(p) for p in data_raw.get("lidc", [])]
        if "lidc" in data_raw
        else [Path("../shared/data/lidc-idri/LIDC-IDRI-0002")],
        lesion_variants=int(data_raw.get("lesion_variants", 16)),
        synthetic=int(data_raw.get("synthetic", 0)),
        cache=Path(data_raw.get("cache", "training-cache/default")),
        site=sites,
    )
    for p in [*data.lidc, *(s.image for s in sites), *(s.label for s in sites)]:
        check_allowed(p)
    train_known = {f.name for f in fields(TrainConfig)} - {"augment"}
    unknown = set(train_raw) - train_known
    if unknown:
        raise TrainingDataError(f"unknown [train] keys in {path}: {sorted(unknown)}")
    train = TrainConfig(**train_raw)
    train.augment = AugmentConfig(out_size=train.crop)
    return data, train
