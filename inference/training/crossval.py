"""K-fold cross-validation on real labelled 2D slices (covid-semiseg): the only way to select
a model on, and report, real-lesion figures when those slices are also trained on.

Protocol (data README): the slices, sorted by file number, are cut into `k` contiguous
blocks (neighbouring numbers may come from one patient: a block keeps a patient's slices
together as far as the numbering allows). For each fold, the model is fine-tuned from the
same starting weights with the same config and seed on the other folds' slices (plus the
anatomy sources of the config), and the held-out fold is segmented as `ldct-node evaluate`
segments an 8-bit export (declared window, longer side to 256 px). Reported: the out-of-fold
Dice of every slice, pooled: mean +- SD (ddof 1) and n per class, and the mean of each fold.

    python -m inference.training.crossval --config inference/training/configs/noncommercial.toml \
        --init-weights inference/weights/ldct-unet-open.pt --out runs/cv --json cv.json

Each fold's weights are kept in `--out` (fold-K.pt), and a rerun skips finished folds (a
crash loses at most the fold in progress; the train checkpoint resumes that one too).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger(__name__)


def slice_folds(stems: list[str], k: int = 5) -> list[list[str]]:
    """`k` contiguous blocks of the stems sorted by number (sizes differ by at most one)."""
    ordered = sorted(stems, key=lambda s: (int(s) if s.isdigit() else float("inf"), s))
    return [list(block) for block in np.array_split(np.array(ordered, dtype=object), k)]


def evaluate_slices(
    engine, images: Path, labels: Path, stems: list[str], window: tuple[float, float], label_values: dict[str, int]
) -> list:
    """Per-slice `CaseResult`s of `engine` on the named slices, as `evaluate_images` scores them."""
    from PIL import Image

    from inference.evaluate import CaseResult, dice_per_class, eight_bit_to_hu, image_pairs, read_reference_png

    cases = []
    for image_path, label_path in image_pairs(images, labels):
        if image_path.stem not in stems:
            continue
        pixels = np.array(Image.open(image_path).convert("L"))
        reference, lung_labelled = read_reference_png(label_path, label_values)
        prediction = engine.segment_image(eight_bit_to_hu(pixels, *window))
        cases.append(CaseResult(image_path.stem, dice_per_class(prediction, reference, lung_labelled)))
    return cases


def summary(cases: list) -> dict:
    from inference.evaluate import CLASSES, summarise

    return {c: summarise(case.dice[c] for case in cases) for c in CLASSES if c != "lung"}


def main(argv: list[str] | None = None) -> dict:
    import torch

    from inference.engines.cnn import CNNEngine
    from inference.training.config import load_config, training_entries, weights_metadata
    from inference.training.loop import save_weights, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--init-weights", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/cv"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", type=int, nargs="*", help="run these folds only (0-based)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--flip-too", action="store_true", help="also score test-time flips (averaged with the mirrored slice)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data, config = load_config(args.config)
    config.seed = args.seed
    if data.labelled_slices is None:
        raise SystemExit("the config has no [data.labelled_slices] to cross-validate on")
    source = data.labelled_slices
    from inference.evaluate import image_pairs

    stems = [image.stem for image, _ in image_pairs(source.images, source.labels)]
    folds = slice_folds(stems, args.folds)
    values = {"ggo": 1, "consolidation": 2}
    args.out.mkdir(parents=True, exist_ok=True)
    all_cases: list = []
    flip_cases: list = []
    per_fold: list[dict[str, Any]] = []
    for k, held_out in enumerate(folds):
        weights = args.out / f"fold-{k}.pt"
        if args.only is not None and k not in args.only and not weights.exists():
            continue
        if not weights.exists():
            exclude = tuple(f"slice-{s}" for s in held_out)
            entries = training_entries(data, args.seed, exclude_slices=exclude)
            t0 = time.time()
            model, losses = train(
                entries, config, args.out / f"fold-{k}.ckpt", resume=True, init_weights=args.init_weights
            )
            meta = weights_metadata(data, args.seed, losses, exclude)
            meta["train_seconds"] = round(time.time() - t0)
            save_weights(model, weights, f"cv-fold-{k}", meta)
            del entries, model
        engine = CNNEngine(device="cpu", weights_path=weights, num_threads=args.threads)
        cases = evaluate_slices(engine, source.images, source.labels, held_out, source.window, values)
        fold_summary = summary(cases)
        log.info(
            "crossval.fold",
            fold=k,
            slices=len(cases),
            **{c: round(s["mean"], 3) for c, s in fold_summary.items() if s["mean"] is not None},
        )
        per_fold.append({"fold": k, "slices": held_out, "dice": fold_summary})
        all_cases += cases
        if args.flip_too:
            engine.flip = True
            flip_cases += evaluate_slices(engine, source.images, source.labels, held_out, source.window, values)
    pooled = summary(all_cases)
    fold_means = {c: [f["dice"][c]["mean"] for f in per_fold if f["dice"][c]["mean"] is not None] for c in pooled}
    result = {
        "protocol": f"{args.folds}-fold CV, contiguous file-number blocks, seed {args.seed}, "
        f"fine-tuned from {args.init_weights.name}; window {list(source.window)}",
        "config": str(args.config),
        "out_of_fold": pooled,
        "fold_mean_sd": {
            c: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for c, v in fold_means.items()
            if v
        },
        "folds": per_fold,
        "out_of_fold_with_flips": summary(flip_cases) if flip_cases else None,
        "cases": [{"name": c.name, "dice": c.dice} for c in all_cases],
    }
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
    print(json.dumps({"out_of_fold": pooled, "fold_mean_sd": result["fold_mean_sd"]}, indent=1))
    return result


if __name__ == "__main__":
    main()
