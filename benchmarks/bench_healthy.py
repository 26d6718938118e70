"""Healthy lungs read as healthy: segment every real CT series in ../shared/data and report
the lesion extent of each (none has COVID-19; Lung-PET-CT-Dx tumour boxes excluded).

    .venv/bin/python benchmarks/bench_healthy.py [--weights open|noncommercial|FILE]
        [--engine cnn|threshold] [--noise 60] [--json out.json]

Per series: lung volume, lesion / GGO / consolidation extent (% of lung, tumour boxes left
out of lesion and lung), labelled voxels outside the body (`inference.healthy.outside_body`,
must be 0), model time, and whether the weights trained on that series (their metadata):
an extent on a series the model trained on is not a held-out figure. With `--noise SD`, the
series is segmented again with white Gaussian noise of SD HU added at its own matrix (a
low-dose scan), and the changes in lung volume (%) and extent (points) are reported.
Issue 14's targets: extent <= 0.5 % on LIDC-IDRI-0001, <= 1 % on every Lung-PET-CT-Dx
series; with 60 HU noise, lung volume within 3 % and extent within 0.5 points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
TARGETS = {"lidc-idri/LIDC-IDRI-0001": 0.5, "lung-pet-ct-dx": 1.0}


def target_for(folder: Path) -> float | None:
    for key, limit in TARGETS.items():
        if key in str(folder):
            return limit
    return None


def main(argv: list[str] | None = None) -> dict:
    import torch

    from inference.engines import get_engine
    from inference.healthy import add_noise, lesion_extent, outside_body, real_series, tumour_mask
    from inference.volume import CTVolume, load_series

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--engine", default="cnn", choices=["cnn", "threshold"])
    parser.add_argument("--weights", default=None, help="weight set name or file (default: the configured default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--noise", type=float, default=60.0, help="noise SD (HU) for the repeat; 0: no repeat")
    parser.add_argument("--only", nargs="*", help="series folder names to run (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    engine = get_engine(args.engine, "cpu", weights=args.weights) if args.engine == "cnn" else get_engine("threshold")
    trained_on = set(getattr(engine, "metadata", {}).get("anatomy", []))
    rows = []
    for folder in real_series(args.data):
        if args.only and folder.name not in args.only:
            continue
        volume = load_series(folder)
        exclude = tumour_mask(folder, volume.datasets, volume.hu.shape)
        t0 = time.perf_counter()
        labels = engine.segment(volume)
        seconds = time.perf_counter() - t0
        extent = lesion_extent(labels, volume.voxel_volume_ml, exclude)
        row = {
            "series": f"{folder.parent.name}/{folder.name}",
            "slices": int(volume.hu.shape[0]),
            "slice_mm": round(volume.spacing[0], 2),
            "pixel_mm": round(volume.spacing[1], 3),
            "trained_on": folder.name in trained_on,
            "lung_cm3": round(extent.lung_cm3, 1),
            "lesion_pct": round(extent.lesion_pct, 3),
            "ggo_pct": round(extent.ggo_pct, 3),
            "consolidation_pct": round(extent.consolidation_pct, 3),
            "tumour_boxes_lung_cm3": round(extent.excluded_cm3, 1),
            "outside_body_voxels": outside_body(labels, volume.hu, volume.spacing),
            "model_s": round(seconds, 1),
            "target_pct": target_for(folder),
        }
        del labels
        if args.noise > 0:
            noisy = CTVolume(hu=add_noise(volume.hu, args.noise), spacing=volume.spacing, datasets=volume.datasets)
            noisy_labels = engine.segment(noisy)
            again = lesion_extent(noisy_labels, volume.voxel_volume_ml, exclude)
            row[f"noise_{args.noise:g}hu"] = {
                "lung_cm3": round(again.lung_cm3, 1),
                "lesion_pct": round(again.lesion_pct, 3),
                "lung_change_pct": round(100.0 * (again.lung_cm3 - extent.lung_cm3) / extent.lung_cm3, 2)
                if extent.lung_cm3
                else None,
                "extent_change_points": round(again.lesion_pct - extent.lesion_pct, 3),
                "outside_body_voxels": outside_body(noisy_labels, noisy.hu, volume.spacing),
            }
            del noisy_labels, noisy
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"engine": {"name": engine.name, "version": engine.version}, "noise_sd_hu": args.noise, "series": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
