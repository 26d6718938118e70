"""Agreement between an engine's segmentations and reference labels (the paper's Table 2).

Two modes:
- image mode: 2D 8-bit exports (JPG/PNG) with PNG label maps; pixels are mapped back to HU
  with a declared window, or with a window estimated from the anatomy (lung and soft-tissue
  histogram peaks) when none is given;
- volume mode: CT series (DICOM folders) with reference labels (DICOM SEG or NIfTI), or with
  synthetic lesions inserted (`inference.lesions`) into a series whose lung reference comes
  from the classical engine: the held-out check on unseen anatomy.

Dice per class (lesion = GGO + consolidation, GGO, consolidation, lung where labelled) as
mean, SD (sample SD, ddof=1; 0 for n=1) and n over images or cases. An image or case whose
reference lacks a class is left out of that class (n counts the ones that took part).
Volume mode adds, per class, volume (cm3) and extent (% of lung) agreement: MAE, bias
(engine - reference) with SD, paired t-test p, Pearson r, and a Bland-Altman plot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
from PIL import Image
from scipy import stats

from inference.quantify import CONSOLIDATION, GGO, NORMAL_LUNG, quantify

log = structlog.get_logger(__name__)

CLASSES = ("lesion", "ggo", "consolidation", "lung")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# Anatomy anchors for window estimation: aerated lung parenchyma and soft tissue (muscle,
# blood) in HU, from standard CT attenuation values.
LUNG_PARENCHYMA_HU = -870.0
SOFT_TISSUE_HU = 30.0
DEFAULT_EXPORT_WINDOW = (-450.0, 1300.0)


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (no pairs, mismatched sizes, bad options)."""


def class_mask(labels: np.ndarray, name: str) -> np.ndarray:
    """Boolean mask of a class in node labels (0 bg, 1 lung, 2 GGO, 3 consolidation)."""
    if name == "lesion":
        return (labels == GGO) | (labels == CONSOLIDATION)
    if name == "ggo":
        return labels == GGO
    if name == "consolidation":
        return labels == CONSOLIDATION
    if name == "lung":
        return (labels >= NORMAL_LUNG) & (labels <= CONSOLIDATION)
    raise EvaluationError(f"unknown class {name!r}")


def dice(prediction: np.ndarray, reference: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when the reference is empty (the case is left out)."""
    ref_count = int(reference.sum())
    if ref_count == 0:
        return None
    overlap = int(np.logical_and(prediction, reference).sum())
    return 2.0 * overlap / (int(prediction.sum()) + ref_count)


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, lung_labelled: bool) -> dict[str, float | None]:
    """Dice of each class for one image/case; lung only when the reference labels the lung."""
    result: dict[str, float | None] = {}
    for name in CLASSES:
        if name == "lung" and not lung_labelled:
            result[name] = None
            continue
        result[name] = dice(class_mask(prediction, name), class_mask(reference, name))
    return result


def summarise(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """mean, SD (ddof=1, 0 for one value) and n of the values that are not None."""
    kept = np.array([v for v in values if v is not None], dtype=float)
    if kept.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(kept.std(ddof=1)) if kept.size > 1 else 0.0
    return {"mean": float(kept.mean()), "sd": sd, "n": int(kept.size)}


@dataclass
class CaseResult:
    name: str
    dice: dict[str, float | None]
    predicted: dict[str, float] = field(default_factory=dict)  # volumes/extents, volume mode
    reference: dict[str, float] = field(default_factory=dict)


def agreement(predicted: list[float], reference: list[float]) -> dict[str, float | int | None]:
    """MAE, bias (predicted - reference) +- SD, paired t-test p, Pearson r of paired values,
    and the mean absolute relative error in % over pairs with a non-zero reference."""
    p, r = np.asarray(predicted, float), np.asarray(reference, float)
    n = int(p.size)
    if n == 0:
        return {
            "n": 0,
            "mae": None,
            "bias": None,
            "bias_sd": None,
            "p_value": None,
            "pearson_r": None,
            "mean_abs_relative_error_pct": None,
        }
    diff = p - r
    nonzero = r != 0
    out: dict[str, float | int | None] = {
        "n": n,
        "mae": float(np.abs(diff).mean()),
        "bias": float(diff.mean()),
        "bias_sd": float(diff.std(ddof=1)) if n > 1 else 0.0,
        "p_value": None,
        "pearson_r": None,
        "mean_abs_relative_error_pct": float(np.mean(np.abs(diff[nonzero]) / np.abs(r[nonzero])) * 100)
        if nonzero.any()
        else None,
    }
    if n > 1 and np.ptp(diff) > 0:
        out["p_value"] = float(stats.ttest_rel(p, r).pvalue)
    elif n > 1:
        out["p_value"] = 1.0 if diff[0] == 0 else 0.0
    if n > 2 and np.ptp(p) > 0 and np.ptp(r) > 0:
        out["pearson_r"] = float(stats.pearsonr(p, r).statistic)
    return out


VOLUME_KEYS = {
    "lesion": ("lesion_cm3", "lesion_pct"),
    "ggo": ("ggo_cm3", "ggo_pct"),
    "consolidation": ("consolidation_cm3", "consolidation_pct"),
    "lung": ("lung_cm3", None),
}


def report(cases: list[CaseResult], mode: str, extra: dict | None = None) -> dict:
    """The JSON-ready result: {"dice": {...}, "n_cases": ..., ["volume", "extent"], ...}."""
    result: dict = {
        "mode": mode,
        "n_cases": len(cases),
        "dice": {c: summarise(case.dice[c] for case in cases) for c in CLASSES},
    }
    if cases and cases[0].predicted:
        result["volume_cm3"], result["extent_pct"] = {}, {}
        for name, (vol_key, pct_key) in VOLUME_KEYS.items():
            if name == "lung" and not all("lung_cm3_labelled" in c.reference for c in cases):
                continue
            result["volume_cm3"][name] = agreement(
                [c.predicted[vol_key] for c in cases], [c.reference[vol_key] for c in cases]
            )
            if pct_key and all("lung_cm3_labelled" in c.reference for c in cases):
                result["extent_pct"][name] = agreement(
                    [c.predicted[pct_key] for c in cases], [c.reference[pct_key] for c in cases]
                )
    result["cases"] = [
        {"name": c.name, "dice": c.dice, "predicted": c.predicted or None, "reference": c.reference or None}
        for c in cases
    ]
    if extra:
        result.update(extra)
    return result


# ------------------------------------------------------------------------- image mode


def parse_window(text: str) -> tuple[float, float]:
    """'CENTER,WIDTH' -> (center, width), width > 0."""
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise EvaluationError(f"--window {text!r}: expected CENTER,WIDTH such as -450,1300") from exc
    if width <= 0:
        raise EvaluationError(f"--window width must be positive, got {width}")
    return center, width


def parse_label_values(text: str) -> dict[str, int]:
    """'ggo=1,consolidation=2[,lung=3]' -> {'ggo': 1, 'consolidation': 2}."""
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name not in ("ggo", "consolidation", "lung") or not value.strip().isdigit():
            raise EvaluationError(f"--label-values part {part!r}: use ggo=N, consolidation=N and optionally lung=N")
        values[name] = int(value)
    if not values:
        raise EvaluationError("--label-values is empty")
    return values


def estimate_window(pixels: np.ndarray) -> tuple[float, float]:
    """Export window of an 8-bit CT image from its anatomy.

    The aerated lung and soft tissue each make a histogram peak; mapping those peaks to
    LUNG_PARENCHYMA_HU and SOFT_TISSUE_HU gives the linear 8-bit -> HU map, i.e. the window.
    Falls back to DEFAULT_EXPORT_WINDOW when the peaks are not found (e.g. saturation).
    """
    hist = np.bincount(pixels.ravel().astype(np.int64), minlength=256)[:256].astype(float)
    hist[:3] = 0  # outside air and padding pile up at 0
    hist[253:] = 0  # bone saturates at 255
    kernel = np.ones(5) / 5
    smooth = np.convolve(hist, kernel, mode="same")
    high = int(np.argmax(smooth[128:253])) + 128
    # Dark peaks: outside air (-1000 HU) and aerated lung (-870 HU) both make one when the
    # window starts below -1000; the lung is then the brighter of the two.
    dark = smooth[3:128]
    is_peak = (dark >= np.roll(dark, 1)) & (dark >= np.roll(dark, -1))
    is_peak[[0, -1]] = False
    strong = [i + 3 for i in np.nonzero(is_peak)[0] if dark[i] >= 0.25 * dark.max()]
    if not strong:
        return DEFAULT_EXPORT_WINDOW
    low = strong[0]
    for candidate in strong[1:]:
        if candidate - strong[0] >= 10:
            low = candidate
            break
    if smooth[high] <= 0 or high - low < 40:
        return DEFAULT_EXPORT_WINDOW
    hu_per_px = (SOFT_TISSUE_HU - LUNG_PARENCHYMA_HU) / (high - low)
    width = 255.0 * hu_per_px
    lower_edge = LUNG_PARENCHYMA_HU - low * hu_per_px
    return float(lower_edge + width / 2.0), float(width)


def eight_bit_to_hu(pixels: np.ndarray, center: float, width: float) -> np.ndarray:
    return pixels.astype(np.float32) / 255.0 * width + (center - width / 2.0)


def read_reference_png(path: Path, label_values: dict[str, int]) -> tuple[np.ndarray, bool]:
    """Reference PNG -> node labels (palette indices read as values), and lung-labelled flag."""
    raw = np.array(Image.open(path))
    if raw.ndim == 3:
        raw = raw[..., 0]
    labels = np.zeros(raw.shape, np.uint8)
    if "lung" in label_values:
        labels[raw == label_values["lung"]] = NORMAL_LUNG
    if "ggo" in label_values:
        labels[raw == label_values["ggo"]] = GGO
    if "consolidation" in label_values:
        labels[raw == label_values["consolidation"]] = CONSOLIDATION
    return labels, "lung" in label_values


def image_pairs(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs matched by file stem; unmatched images are an error."""
    images, labels = Path(images), Path(labels)
    if not images.is_dir() or not labels.is_dir():
        raise EvaluationError(f"--images {images} and --labels {labels} must be folders")
    label_by_stem = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = []
    for image in sorted(images.iterdir(), key=lambda p: (len(p.stem), p.stem)):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if image.stem not in label_by_stem:
            raise EvaluationError(f"no label file for image {image.name} in {labels}")
        pairs.append((image, label_by_stem[image.stem]))
    if not pairs:
        raise EvaluationError(f"no images in {images}")
    return pairs


def evaluate_images(
    engine,
    images: Path,
    labels: Path,
    label_values: dict[str, int],
    window: tuple[float, float] | None = None,
    progress=None,
) -> dict:
    """Image-mode evaluation; `engine` needs `segment_image(hu2d) -> labels` (the CNN engine)."""
    if not hasattr(engine, "segment_image"):
        raise EvaluationError(f"engine {engine.name!r} cannot segment single 2D images")
    pairs = image_pairs(images, labels)
    cases, windows = [], []
    for i, (image_path, label_path) in enumerate(pairs):
        pixels = np.array(Image.open(image_path).convert("L"))
        reference, lung_labelled = read_reference_png(label_path, label_values)
        if reference.shape != pixels.shape:
            raise EvaluationError(f"{image_path.name}: image {pixels.shape} != label {reference.shape}")
        used = window or estimate_window(pixels)
        windows.append(used)
        prediction = engine.segment_image(eight_bit_to_hu(pixels, *used))
        cases.append(CaseResult(image_path.stem, dice_per_class(prediction, reference, lung_labelled)))
        if progress:
            progress(i + 1, len(pairs))
    extra = {"window": list(window) if window else "estimated from anatomy"}
    if not window:
        arr = np.array(windows)
        extra["estimated_window_mean"] = [float(arr[:, 0].mean()), float(arr[:, 1].mean())]
    return report(cases, "image", extra)


# ------------------------------------------------------------------------ volume mode


def volume_case(
    name: str, prediction: np.ndarray, reference: np.ndarray, voxel_ml: float, lung_labelled: bool
) -> CaseResult:
    """Dice, volumes and extents of one case. Extents use each map's own lung when the
    reference labels the lung; otherwise the reference extent uses the predicted lung."""
    pred_q = quantify(prediction, voxel_ml).as_dict()
    ref_q = quantify(reference, voxel_ml).as_dict()
    if lung_labelled:
        ref_q["lung_cm3_labelled"] = 1.0
    else:
        lung = pred_q["lung_cm3"]
        for key, vol in (
            ("ggo_pct", "ggo_cm3"),
            ("consolidation_pct", "consolidation_cm3"),
            ("lesion_pct", "lesion_cm3"),
        ):
            ref_q[key] = 100.0 * ref_q[vol] / lung if lung > 0 else 0.0
    return CaseResult(name, dice_per_class(prediction, reference, lung_labelled), pred_q, ref_q)


def find_reference(references: Path, series_name: str) -> tuple[Path, str]:
    """The reference for a series: <name>.dcm (SEG) or <name>.nii[.gz] (NIfTI)."""
    for suffix, kind in ((".dcm", "dicom-seg"), (".nii.gz", "nifti"), (".nii", "nifti")):
        candidate = Path(references) / f"{series_name}{suffix}"
        if candidate.is_file():
            return candidate, kind
    raise EvaluationError(f"no reference {series_name}.dcm/.nii/.nii.gz in {references}")


def evaluate_volumes(
    engine,
    series_folders: list[Path],
    references: Path | None,
    label_values: dict[str, int],
    synthetic_lesions: int = 0,
    seed: int = 0,
    progress=None,
) -> dict:
    """Volume-mode evaluation over series folders.

    With `references`: each series <name> is compared with references/<name>.dcm (DICOM SEG)
    or .nii/.nii.gz (NIfTI with `label_values`). With `synthetic_lesions` = k > 0 instead:
    k lesion variants per series are inserted (seeded), the lung reference is the
    classical engine's (`inference.training.lung_reference`), and the engine segments
    each lesioned volume.
    """
    from inference.volume import CTVolume, load_series

    if not series_folders:
        raise EvaluationError("no series folders given")
    if (references is None) == (synthetic_lesions <= 0):
        raise EvaluationError("give exactly one of --references and --synthetic-lesions")
    cases = []
    for s, folder in enumerate(series_folders):
        volume = load_series(Path(folder))
        name = Path(folder).name
        if references is not None:
            from inference.training.sources import labels_from_nifti, labels_from_seg

            path, kind = find_reference(references, name)
            if kind == "dicom-seg":
                reference, lung_labelled = labels_from_seg(path, volume.datasets)
            else:
                reference, lung_labelled = labels_from_nifti(path, label_values)
            if reference.shape != volume.hu.shape:
                raise EvaluationError(f"{path.name}: labels {reference.shape} != series {volume.hu.shape}")
            prediction = engine.segment(volume)
            cases.append(volume_case(name, prediction, reference, volume.voxel_volume_ml, lung_labelled))
        else:
            from inference.lesions import insert_lesions
            from inference.training.lung_reference import reference_lung_mask

            lung = reference_lung_mask(volume.hu, volume.spacing)
            rng = np.random.default_rng(seed + 1000 * s)
            for k in range(synthetic_lesions):
                hu, reference = insert_lesions(volume.hu, lung, volume.spacing, rng)
                lesioned = CTVolume(hu=hu, spacing=volume.spacing, datasets=volume.datasets)
                prediction = engine.segment(lesioned)
                cases.append(volume_case(f"{name}-lesions{k}", prediction, reference, volume.voxel_volume_ml, True))
                log.info("evaluate.case", case=cases[-1].name, dice=cases[-1].dice)
        if progress:
            progress(s + 1, len(series_folders))
    return report(
        cases, "volume", {"synthetic_lesions": synthetic_lesions, "seed": seed} if synthetic_lesions else None
    )


def bland_altman_png(result: dict, path: Path, quantity: str = "volume_cm3", name: str = "lesion") -> Path:
    """Bland-Altman plot (difference vs mean, bias and +-1.96 SD lines) of one class."""
    pred = np.array([c["predicted"][VOLUME_KEYS[name][0 if quantity == "volume_cm3" else 1]] for c in result["cases"]])
    ref = np.array([c["reference"][VOLUME_KEYS[name][0 if quantity == "volume_cm3" else 1]] for c in result["cases"]])
    mean, diff = (pred + ref) / 2, pred - ref
    bias = float(diff.mean()) if diff.size else 0.0
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    unit = "cm3" if quantity == "volume_cm3" else "%"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
        ax.scatter(mean, diff, s=18)
        for y, style in ((bias, "-"), (bias + 1.96 * sd, "--"), (bias - 1.96 * sd, "--")):
            ax.axhline(y, color="k", linestyle=style, linewidth=1)
        ax.set_xlabel(f"mean of engine and reference {name} ({unit})")
        ax.set_ylabel(f"engine - reference ({unit})")
        ax.set_title(f"Bland-Altman: {name} {quantity.split('_')[0]} (bias {bias:.2f}, SD {sd:.2f})")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    except ImportError:
        _bland_altman_pil(mean, diff, bias, sd, path)
    return path


def _bland_altman_pil(mean, diff, bias, sd, path: Path) -> None:
    """A plain Bland-Altman PNG drawn with PIL when matplotlib is absent."""
    from PIL import ImageDraw

    w, h, m = 600, 450, 50
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    lines = [bias, bias + 1.96 * sd, bias - 1.96 * sd]
    x0, x1 = (float(mean.min()), float(mean.max())) if mean.size else (0.0, 1.0)
    ys = np.concatenate([diff, lines]) if diff.size else np.array(lines)
    y0, y1 = float(ys.min()), float(ys.max())
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def to_px(x, y):
        return m + (x - x0) / (x1 - x0) * (w - 2 * m), h - m - (y - y0) / (y1 - y0) * (h - 2 * m)

    draw.rectangle([m, m, w - m, h - m], outline="black")
    for y in lines:
        _, py = to_px(x0, y)
        draw.line([m, py, w - m, py], fill="black")
    for x, y in zip(mean, diff, strict=True):
        px, py = to_px(x, y)
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill="blue")
    draw.text((m, 10), f"Bland-Altman: bias {bias:.2f}, SD {sd:.2f}", fill="black")
    img.save(path)


def write_json(result: dict, path: Path) -> None:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    Path(path).write_text(json.dumps(result, indent=2, default=clean))


def render_table(result: dict):
    """A rich Table of the Dice (and, in volume mode, volume agreement) for the terminal."""
    from rich.table import Table

    table = Table(title=f"Agreement ({result['mode']} mode, {result['n_cases']} cases)")
    for column in ("class", "Dice mean", "SD", "n", "vol MAE cm3", "vol bias +- SD", "p", "r"):
        table.add_column(column, justify="right" if column != "class" else "left")

    def fmt(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    for name in CLASSES:
        d = result["dice"][name]
        v = result.get("volume_cm3", {}).get(name, {})
        table.add_row(
            name,
            fmt(d["mean"]),
            fmt(d["sd"]),
            str(d["n"]),
            fmt(v.get("mae"), 1),
            "-" if v.get("bias") is None else f"{v['bias']:.1f} +- {v['bias_sd']:.1f}",
            fmt(v.get("p_value")),
            fmt(v.get("pearson_r")),
        )
    return table
