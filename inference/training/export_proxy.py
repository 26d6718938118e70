"""Write a 2D export test set like covid-semiseg from a held-out series with synthetic lesions.

Why: the real 2D validation set may only be used for final numbers, never for development;
this proxy exercises the same path (thorax crop, 90-degree rotation, 8-bit window, JPEG,
palette-style labels 0 bg / 1 GGO / 2 consolidation) on anatomy the model never saw.

    .venv/bin/python -m inference.training.export_proxy ../shared/data/lidc-idri/LIDC-IDRI-0001 \
        /tmp/proxy --count 40 --seed 5 --window=-450,1300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from inference.lesions import insert_lesions
from inference.quantify import CONSOLIDATION, GGO
from inference.training.augment import hu_to_8bit
from inference.training.lung_reference import reference_lung_mask


def write_proxy(series: Path, out: Path, count: int, seed: int, window: tuple[float, float]) -> int:
    """Write up to `count` lesion-bearing slices as images/N.jpg + labels/N.png; return how many."""
    from inference.volume import load_series

    volume = load_series(series)
    lung = reference_lung_mask(volume.hu, volume.spacing)
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    written = 0
    for _ in range(4):  # several lesion draws, slices picked from each
        hu, labels = insert_lesions(volume.hu, lung, volume.spacing, rng, target_extent_pct=float(rng.uniform(5, 45)))
        lesion_slices = np.nonzero(((labels >= GGO).reshape(len(labels), -1).sum(1)) > 200)[0]
        for z in rng.choice(lesion_slices, size=min(len(lesion_slices), count // 4), replace=False):
            rows, cols = np.nonzero(hu[z] > -500)
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            image = hu_to_8bit(hu[z, r0:r1, c0:c1], *window)
            label = np.zeros(image.shape, np.uint8)
            label[labels[z, r0:r1, c0:c1] == GGO] = 1
            label[labels[z, r0:r1, c0:c1] == CONSOLIDATION] = 2
            image, label = np.rot90(image), np.rot90(label)
            scale = rng.uniform(270, 460) / max(image.shape)
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.BILINEAR).save(
                out / "images" / f"{written}.jpg", quality=int(rng.integers(75, 96))
            )
            Image.fromarray(np.ascontiguousarray(label)).resize(size, Image.Resampling.NEAREST).save(
                out / "labels" / f"{written}.png"
            )
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--window", default="-450,1300")
    args = parser.parse_args()
    center, width = (float(v) for v in args.window.split(","))
    n = write_proxy(args.series, args.out, args.count, args.seed, (center, width))
    print(f"wrote {n} image/label pairs to {args.out}")


if __name__ == "__main__":
    main()
