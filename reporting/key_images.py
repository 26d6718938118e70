"""Secondary-capture key images: lung-window slices with the segmentation burnt in.

For viewers that cannot show a SEG. Each image is an axial slice in lung window (centre
-600 HU, width 1500 HU) with a colour overlay (normal lung light blue, faint; GGO yellow;
consolidation red) and a text band under the image: which slice and why, volumes and extents,
the risk with its calibration status, and "NOT FOR DIAGNOSTIC USE". No patient identifiers are
burnt in.

Slices: the ones with the most lesion voxels (spread apart), plus one at the carina. The
carina is found by tracking the trachea (air column between the lungs, not labelled lung)
down from the apex until it splits; when that fails it is approximated by the slice 20% of
the lung's cranio-caudal extent below the apex, close to the bifurcation in adults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import structlog
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from inference.quantify import CONSOLIDATION, GGO, NORMAL_LUNG, Quantification
from inference.volume import slice_normal, slice_position
from reporting.charset import with_plain_character_set
from reporting.seg import DEFAULT_MANUFACTURER, SEGMENT_COLOURS_RGB, SOFTWARE_VERSION

if TYPE_CHECKING:
    from reporting.risk import RiskAssessment

log = structlog.get_logger(__name__)

LUNG_WINDOW_CENTER = -600.0
LUNG_WINDOW_WIDTH = 1500.0
OVERLAY_ALPHA = {NORMAL_LUNG: 0.15, GGO: 0.45, CONSOLIDATION: 0.45}
CARINA_FRACTION_BELOW_APEX = 0.20
MIN_RENDER_WIDTH = 512
DISCLAIMER = "NOT FOR DIAGNOSTIC USE - automatic research output, not reviewed by a radiologist"
SERIES_DESCRIPTION = "LDCT lung lesions key images"


class KeyImageInputError(ValueError):
    """Volume, labels and source images do not fit together; the message says how."""


def _superior_order(source_datasets: Sequence[Dataset]) -> np.ndarray:
    """Height of each slice towards the head (larger = more superior), in mm."""
    normal = slice_normal(source_datasets[0])
    positions = np.array([slice_position(ds, normal) for ds in source_datasets])
    # patient coordinates are LPS: +z points to the head
    direction = 1.0 if normal[2] >= 0 else -1.0
    if abs(normal[2]) < 0.5:  # not an axial stack: fall back to the stored order
        return np.arange(len(source_datasets), dtype=float)
    return positions * direction


def _lung_and_lesion_per_slice(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels labelled lung (> 0) and lesion (>= GGO) on each slice, without whole-volume masks."""
    lung = np.array([np.count_nonzero(label_slice > 0) for label_slice in labels], dtype=np.intp)
    lesion = np.array([np.count_nonzero(label_slice >= GGO) for label_slice in labels], dtype=np.intp)
    return lung, lesion


def approximate_carina(labels: np.ndarray, heights: np.ndarray) -> int:
    """Slice 20% of the lung's cranio-caudal extent below the lung apex."""
    lung_per_slice = _lung_and_lesion_per_slice(labels)[0]
    lung_slices = np.nonzero(lung_per_slice)[0]
    if lung_slices.size == 0:
        return int(np.argmin(np.abs(heights - float(np.median(heights)))))
    apex_height = heights[lung_slices].max()
    base_height = heights[lung_slices].min()
    carina_height = apex_height - CARINA_FRACTION_BELOW_APEX * (apex_height - base_height)
    return int(np.argmin(np.abs(heights - carina_height)))


def _trachea_start(
    air: np.ndarray,
    components: np.ndarray,
    areas: np.ndarray,
    lung: np.ndarray,
    min_area: float,
    max_area: float,
) -> np.ndarray | None:
    """The single trachea-sized air component between the lungs of a slice, if exactly one."""
    columns = np.nonzero(lung.any(axis=0))[0]
    if columns.size == 0:
        return None
    left, right = columns.min(), columns.max()
    centre_low, centre_high = left + (right - left) / 3, right - (right - left) / 3
    candidates = []
    for label_value, area in enumerate(areas, start=1):
        if not min_area <= area <= max_area:
            continue
        mask = components == label_value
        if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
            continue
        if centre_low <= np.nonzero(mask)[1].mean() <= centre_high:
            candidates.append(mask)
    return candidates[0] if len(candidates) == 1 else None


def detect_carina(volume_hu: np.ndarray, labels: np.ndarray, heights: np.ndarray, pixel_area_mm2: float) -> int | None:
    """Slice where the trachea splits into the main bronchi, or None when not found.

    The trachea is an air column (< -900 HU) not labelled lung, 0.5-8 cm2 in cross section,
    between the lungs. It is tracked from the lung apex downwards: each slice keeps the air
    components touching the previous slice's airway. The carina is the last single-lumen
    slice before the airway becomes two components of >= 0.15 cm2 each, or one component
    under 60% of the trachea's area (the other bronchus left the air mask), or disappears
    into voxels labelled lung for more than ~10 mm (models that count the main bronchi as
    lung). A shorter disappearance is bridged when a trachea-sized lumen comes back.
    Tracking stops at the lung's mid-height; losing the airway otherwise gives None.
    """
    lung_per_slice = _lung_and_lesion_per_slice(labels)[0]
    lung_slices = np.nonzero(lung_per_slice)[0]
    if lung_slices.size < 3:
        return None
    apex_height, base_height = heights[lung_slices].max(), heights[lung_slices].min()
    mid_height = (apex_height + base_height) / 2
    order = [int(i) for i in np.argsort(-heights) if mid_height <= heights[i] <= apex_height]
    steps = np.abs(np.diff(np.sort(heights)))
    slice_mm = float(np.median(steps)) if steps.size and np.median(steps) > 0 else 1.0
    max_missing = max(1, round(10.0 / slice_mm))
    min_area = 50.0 / pixel_area_mm2  # 0.5 cm2
    max_area = 800.0 / pixel_area_mm2  # 8 cm2
    min_bronchus = 15.0 / pixel_area_mm2  # 0.15 cm2
    tracked: np.ndarray | None = None
    trachea_area = 0.0
    last_index: int | None = None
    missing = 0
    for index in order:
        lung = labels[index] > 0
        air = (volume_hu[index] < -900) & ~lung
        components, count = ndimage.label(air)
        areas = ndimage.sum_labels(air, components, index=np.arange(1, count + 1)) if count else np.zeros(0)
        if tracked is None:
            tracked = _trachea_start(air, components, areas, lung, min_area, max_area)
            if tracked is not None:
                trachea_area, last_index = float(tracked.sum()), index
            continue
        reach = ndimage.binary_dilation(tracked, iterations=2)
        touching = [int(v) for v in np.unique(components[reach & air]) if v != 0]
        kept = [v for v in touching if areas[v - 1] >= min_bronchus]
        if not kept:
            if missing == 0 and (reach & lung).sum() < min_bronchus:
                return None  # lost in soft tissue: not an airway we can follow
            missing += 1
            if missing > max_missing:
                return last_index
            continue
        if len(kept) >= 2:
            return last_index
        area = float(areas[kept[0] - 1])
        if area > max_area:
            return None  # ran into a large air space
        if area < 0.6 * trachea_area:
            return last_index  # one main bronchus left, the other went into the lung label
        missing = 0
        tracked, last_index = components == kept[0], index
        trachea_area = 0.7 * trachea_area + 0.3 * area  # follows the slow change of calibre
    return last_index if missing else None  # went into the lung label and stayed there


def choose_slices(
    labels: np.ndarray, heights: np.ndarray, max_images: int, carina: int | None = None
) -> list[tuple[int, str]]:
    """(slice index, reason) of the key slices, from superior to inferior.

    One slot goes to the carina level (`carina` when detected, else `approximate_carina`),
    the others to the slices with the most lesion voxels, at least ~10% of the stack apart so
    that they show different lesions. Without lesions the free slots show the slices with the
    largest lung cross-section.
    """
    n_slices = labels.shape[0]
    if max_images <= 0 or n_slices == 0:
        return []
    lung_per_slice, lesion_per_slice = _lung_and_lesion_per_slice(labels)
    if carina is None:
        carina, carina_reason = approximate_carina(labels, heights), "near carina (approx.)"
    else:
        carina_reason = "carina"

    if max_images == 1:  # a single image shows the lesion, if there is one
        if lesion_per_slice.max() > 0:
            return [(int(np.argmax(lesion_per_slice)), "most lesion")]
        return [(carina, carina_reason)]
    chosen: list[tuple[int, str]] = [(carina, carina_reason)]
    min_gap = max(1, n_slices // 10)

    def far_enough(index: int) -> bool:
        return all(abs(index - other) >= min_gap for other, _ in chosen)

    for index in np.argsort(-lesion_per_slice, kind="stable"):
        if len(chosen) >= max_images or lesion_per_slice[index] == 0:
            break
        if far_enough(int(index)):
            chosen.append((int(index), "most lesion"))
    for index in np.argsort(-lung_per_slice, kind="stable"):
        if len(chosen) >= max_images:
            break
        if far_enough(int(index)):
            chosen.append((int(index), "largest lung section"))
    for index in range(n_slices):  # tiny stacks: relax the spacing rule
        if len(chosen) >= max_images:
            break
        if all(index != other for other, _ in chosen):
            chosen.append((index, "additional slice"))
    return sorted(chosen, key=lambda c: -heights[c[0]])


def _lung_window(hu_slice: np.ndarray) -> np.ndarray:
    low = LUNG_WINDOW_CENTER - LUNG_WINDOW_WIDTH / 2
    scaled = (hu_slice.astype(np.float32) - low) / LUNG_WINDOW_WIDTH
    return (np.clip(scaled, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def overlay_rgb(hu_slice: np.ndarray, label_slice: np.ndarray) -> np.ndarray:
    """Lung-window grey image with the classes blended in their colours, uint8 (y, x, 3)."""
    grey = _lung_window(hu_slice).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label, colour in SEGMENT_COLOURS_RGB.items():
        mask = label_slice == label
        if mask.any():
            alpha = OVERLAY_ALPHA[label]
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    return rgb.round().clip(0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font, fixed size
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    words, lines, current = text.split(" "), [], ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def _risk_line(risk: RiskAssessment | None) -> str:
    if risk is None:
        return "Severe-course risk: not assessed"
    model = f"model {risk.model_name} {risk.model_version}; {risk.calibration_status}"
    if not risk.computed or risk.probability is None:
        return f"Severe-course risk: not computed ({risk.reason_not_computed or 'no reason given'}); {model}"
    category = f", {risk.category.upper()} risk" if risk.category else ""
    cutoff = f", cut-off {100 * risk.cutoff:.1f}%" if risk.cutoff is not None else ""
    return f"Severe-course risk: {100 * risk.probability:.1f}%{category}{cutoff}; {model}"


def render_key_image(hu_slice: np.ndarray, label_slice: np.ndarray, header_lines: Sequence[str]) -> np.ndarray:
    """Overlay image (scaled to >= 512 px wide) above a text band; uint8 (rows, cols, 3)."""
    image = Image.fromarray(overlay_rgb(hu_slice, label_slice), mode="RGB")
    scale = max(1, math.ceil(MIN_RENDER_WIDTH / image.width))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    width = image.width
    font_size = max(12, width // 36)
    font = _font(font_size)
    scratch = ImageDraw.Draw(image)
    margin = max(4, font_size // 2)
    lines: list[str] = []
    for line in header_lines:
        lines.extend(_wrap(scratch, line, font, width - 2 * margin))
    line_height = font_size + max(3, font_size // 4)
    legend_height = line_height
    band_height = margin * 2 + line_height * len(lines) + legend_height
    canvas = Image.new("RGB", (width, image.height + band_height), (0, 0, 0))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = image.height + margin
    for line in lines:
        colour = (255, 80, 80) if line.startswith("NOT FOR DIAGNOSTIC USE") else (255, 255, 255)
        draw.text((margin, y), line, fill=colour, font=font)
        y += line_height
    x = margin
    for label, name in ((NORMAL_LUNG, "normal lung"), (GGO, "GGO"), (CONSOLIDATION, "consolidation")):
        draw.rectangle((x, y + 2, x + font_size - 2, y + font_size), fill=SEGMENT_COLOURS_RGB[label])
        x += font_size + 4
        draw.text((x, y), name, fill=(255, 255, 255), font=font)
        x += int(draw.textlength(name, font=font)) + 2 * font_size
    return np.asarray(canvas, dtype=np.uint8)


def _orientation_letters(vector: Sequence[float]) -> str:
    """Patient Orientation letters (LPS) of a direction cosine, strongest component first."""
    letters = []
    for axis in np.argsort(-np.abs(np.asarray(vector, float))):
        component = float(vector[axis])
        if abs(component) < 0.25:
            continue
        letters.append(("L", "P", "H")[axis] if component > 0 else ("R", "A", "F")[axis])
    return "".join(letters) or "L"


def _source_reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def build_key_images(
    volume_hu: np.ndarray,
    labels: np.ndarray,
    source_datasets: Sequence[Dataset],
    quant: Quantification,
    risk: RiskAssessment | None = None,
    *,
    max_images: int = 3,
    series_number: int = 903,
    series_instance_uid: str | None = None,
    manufacturer: str = DEFAULT_MANUFACTURER,
    source_lossy: bool = False,
) -> list[Dataset]:
    """Secondary Capture RGB images (one series, same study) of the key slices.

    `source_lossy`: the CT was lossy-compressed, so are images derived from it
    (LossyImageCompression 01, PS3.3 C.7.6.1.1.5)."""
    volume_hu, labels = np.asarray(volume_hu), np.asarray(labels)
    if volume_hu.ndim != 3 or volume_hu.shape != labels.shape:
        raise KeyImageInputError(f"HU volume {volume_hu.shape} and labels {labels.shape} differ in shape")
    if volume_hu.shape[0] != len(source_datasets):
        raise KeyImageInputError(f"{volume_hu.shape[0]} slices but {len(source_datasets)} source images")
    heights = _superior_order(source_datasets)
    try:
        row_mm, column_mm = (float(v) for v in source_datasets[0].PixelSpacing)
    except (AttributeError, ValueError):
        row_mm = column_mm = 1.0
    carina = detect_carina(volume_hu, labels, heights, row_mm * column_mm)
    slices = choose_slices(labels, heights, max_images, carina=carina)
    series_uid = series_instance_uid or hd.UID()
    summary = (
        f"Lung {quant.lung_cm3:.0f} cm3 | GGO {quant.ggo_pct:.1f}% | Consolidation "
        f"{quant.consolidation_pct:.1f}% | Lesion total {quant.lesion_pct:.1f}% ({quant.lesion_cm3:.0f} cm3)"
    )
    images: list[Dataset] = []
    for number, (index, reason) in enumerate(slices, start=1):
        source = source_datasets[index]
        position = getattr(source, "ImagePositionPatient", None)
        where = f" (z = {float(position[2]):.1f} mm)" if position is not None else ""
        header = [
            f"Key image {number}/{len(slices)}: {reason}, CT image {source.get('InstanceNumber', index + 1)}{where}",
            summary,
            _risk_line(risk),
            DISCLAIMER,
        ]
        pixels = render_key_image(volume_hu[index], labels[index], header)
        orientation = tuple(float(v) for v in getattr(source, "ImageOrientationPatient", (1, 0, 0, 0, 1, 0)))
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=with_plain_character_set([source])[0],
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=number,
            manufacturer=manufacturer,
            patient_orientation=(_orientation_letters(orientation[:3]), _orientation_letters(orientation[3:])),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=SERIES_DESCRIPTION,
            software_versions=SOFTWARE_VERSION,
        )
        # Laterality is Type 2C (paired body parts): dciodvfy wants it unless Body Part
        # Examined says the part is unpaired, so say so (a chest CT series is CHEST).
        image.BodyPartExamined = str(source.get("BodyPartExamined", "") or "CHEST")
        image.BurnedInAnnotation = "YES"
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.ImageComments = f"{reason}; overlay: normal lung, GGO, consolidation; {DISCLAIMER}"[:10240]
        image.DerivationDescription = "Lung window with segmentation overlay and burnt-in summary"
        image.SourceImageSequence = [_source_reference(source)]
        if source_lossy:
            image.LossyImageCompression = "01"
        images.append(image)
    log.info(
        "key_images_built",
        series_instance_uid=series_uid,
        source_series_uid=str(source_datasets[0].SeriesInstanceUID),
        slices=[index for index, _ in slices],
    )
    return images
