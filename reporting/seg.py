"""DICOM Segmentation (SEG) of normal lung, GGO and consolidation over the source CT series.

One BINARY segment per class (1 normal lung, 2 ground glass opacity, 3 consolidation), the
same numbers as the label map, so a viewer shows the three classes with their own colours.
Empty frames are kept by default: OHIF misplaces masks of a SEG whose empty frames were
omitted (highdicom issue #214); `omit_empty_frames=True` makes smaller objects for viewers
that handle them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import structlog
from pydicom.dataset import Dataset

from inference.quantify import CONSOLIDATION, GGO, NORMAL_LUNG
from inference.volume import SeriesError, slice_normal, slice_position
from reporting import codes
from reporting.charset import with_plain_character_set
from reporting.identity import SOFTWARE_VERSION

log = structlog.get_logger(__name__)

DEFAULT_MANUFACTURER = "ldct-node"
MANUFACTURER_MODEL_NAME = "ldct-node"
DEVICE_SERIAL_NUMBER = "ldct-node"


class SegmentationInputError(ValueError):
    """Label map and source images do not fit together; the message says how."""


# Display colours, shared with the key images (RGB 0-255).
SEGMENT_COLOURS_RGB: dict[int, tuple[int, int, int]] = {
    NORMAL_LUNG: (110, 180, 255),  # light blue
    GGO: (230, 230, 40),  # green-yellow
    CONSOLIDATION: (230, 30, 30),  # red
}


def _rgb_to_cielab(rgb: tuple[int, int, int]) -> hd.color.CIELabColor:
    """sRGB (D65) to CIELab, as Recommended Display CIELab Value needs."""
    linear = []
    for channel in rgb:
        c = channel / 255.0
        linear.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = linear
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x), f(y), f(z)
    l_star = max(0.0, min(100.0, 116 * fy - 16))
    a_star = max(-128.0, min(127.0, 500 * (fx - fy)))
    b_star = max(-128.0, min(127.0, 200 * (fy - fz)))
    return hd.color.CIELabColor(l_star, a_star, b_star)


def algorithm_identification(name: str, version: str) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification Sequence of the segmentation model (family: AI)."""
    return hd.AlgorithmIdentificationSequence(name=name, family=codes.ARTIFICIAL_INTELLIGENCE, version=version)


def segment_descriptions(algorithm_name: str, algorithm_version: str) -> list[hd.seg.SegmentDescription]:
    """The three segments, numbered as the label values."""
    algorithm = algorithm_identification(algorithm_name, algorithm_version)
    spec = [
        (NORMAL_LUNG, "Normal lung", codes.ANATOMICAL_STRUCTURE, codes.LUNG, "normal-lung"),
        (GGO, "Ground glass opacity", codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.GROUND_GLASS_OPACITY, "ggo"),
        (
            CONSOLIDATION,
            "Consolidation",
            codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            codes.LUNG_CONSOLIDATION,
            "consolidation",
        ),
    ]
    descriptions = []
    for number, label, category, property_type, tracking_id in spec:
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=category,
                segmented_property_type=property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=tracking_id,
                tracking_uid=hd.UID(),
                # the lesions lie in the lung; the lung segment is the lung itself
                anatomic_regions=None if number == NORMAL_LUNG else [codes.LUNG],
                display_color=_rgb_to_cielab(SEGMENT_COLOURS_RGB[number]),
            )
        )
    return descriptions


def _check_inputs(source_datasets: Sequence[Dataset], labels: np.ndarray) -> None:
    if len(source_datasets) == 0:
        raise SegmentationInputError("no source images")
    if labels.ndim != 3:
        raise SegmentationInputError(f"label map must be 3-D (z, y, x), got shape {labels.shape}")
    if labels.shape[0] != len(source_datasets):
        raise SegmentationInputError(
            f"label map has {labels.shape[0]} slices but there are {len(source_datasets)} source images"
        )
    rows, cols = int(source_datasets[0].Rows), int(source_datasets[0].Columns)
    if labels.shape[1:] != (rows, cols):
        raise SegmentationInputError(
            f"label map slices are {labels.shape[1]}x{labels.shape[2]} but the images are {rows}x{cols}"
        )
    if labels.size and int(labels.max()) > CONSOLIDATION:
        raise SegmentationInputError(
            f"label value {int(labels.max())} is not one of 0 background, 1 normal lung, 2 GGO, 3 consolidation"
        )
    if len({str(ds.SeriesInstanceUID) for ds in source_datasets}) != 1:
        raise SegmentationInputError("source images belong to more than one series")
    # Frame i of the SEG is placed on source image i: a shuffled list would misplace masks
    # silently, so insist on a monotonic stack (either direction).
    try:
        normal = slice_normal(source_datasets[0])
        positions = np.array([slice_position(ds, normal) for ds in source_datasets])
    except SeriesError as exc:
        raise SegmentationInputError(f"source image geometry: {exc}") from exc
    steps = np.diff(positions)
    if steps.size and not (np.all(steps > 0) or np.all(steps < 0)):
        raise SegmentationInputError("source images are not sorted by slice position (sort them as the label map is)")


def build_segmentation(
    source_datasets: Sequence[Dataset],
    labels: np.ndarray,
    *,
    algorithm_name: str,
    algorithm_version: str,
    series_number: int = 901,
    series_description: str = "LDCT lung lesions SEG",
    omit_empty_frames: bool = False,
    series_instance_uid: str | None = None,
    manufacturer: str = DEFAULT_MANUFACTURER,
    software_versions: str = SOFTWARE_VERSION,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """A BINARY SEG of `labels` (uint8 z,y,x) over `source_datasets` (same slice order).

    Frame i of each segment lies on source image i: its plane position and the derivation
    reference come from that image, so the slice order of `labels` must be the order of
    `source_datasets` (the loader's order).
    """
    labels = np.asarray(labels)
    _check_inputs(source_datasets, labels)
    if labels.dtype != np.uint8:
        labels = labels.astype(np.uint8)
    started = time.perf_counter()
    seg = hd.seg.Segmentation(
        source_images=with_plain_character_set(source_datasets),
        pixel_array=labels,  # label-map style: value n is segment n
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(algorithm_name, algorithm_version),
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=software_versions,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label="LUNGLESIONS",
        content_description=f"Lung and COVID-19 lesions by {algorithm_name} {algorithm_version}"[:64],
        series_description=series_description,
        omit_empty_frames=omit_empty_frames,
    )
    # Both lungs (General Image, Type 3). Without it PixelMed's DicomInstanceValidator asks
    # for the series Laterality, which dciodvfy (rightly, a chest is not a paired body part)
    # refuses; Image Laterality B satisfies both and says what the masks cover.
    seg.ImageLaterality = "B"
    log.info(
        "seg_built",
        sop_instance_uid=str(seg.SOPInstanceUID),
        source_series_uid=str(source_datasets[0].SeriesInstanceUID),
        frames=int(seg.NumberOfFrames),
        seconds=round(time.perf_counter() - started, 3),
    )
    return seg
