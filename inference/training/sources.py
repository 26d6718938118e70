"""Training and evaluation sources besides LIDC: synthetic phantoms and a site's own labels.

A site's labelled study is a CT series (DICOM folder, or a NIfTI image) with a reference
label volume: a DICOM SEG (read with highdicom; segments recognised by their property type
code or label) or a NIfTI label map with declared values. Labels come back in the node's
convention (0 bg, 1 normal lung, 2 GGO, 3 consolidation); where the reference has no lung
segment, lung voxels are unknown, and everything that is not a lesion is marked 255
(ignored by the loss) inside the body so that only lesions are learned from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.quantify import CONSOLIDATION, GGO, NORMAL_LUNG
from inference.training.cache import (
    CACHE_SIZE,
    IGNORE_LABEL,
    CacheEntry,
    SiteStudy,
    TrainingDataError,
    resample_labels,
    resample_slices,
)

LUNG_CODES = {"39607008"}
GGO_CODES = {"112120", "50196008"}
CONSOLIDATION_CODES = {"95436008", "3128005"}


def _class_of_segment(code_value: str, label: str) -> int | None:
    text = label.lower()
    if code_value in CONSOLIDATION_CODES or "consolid" in text:
        return CONSOLIDATION
    if code_value in GGO_CODES or "ground" in text or "ggo" in text:
        return GGO
    if code_value in LUNG_CODES or "lung" in text:
        return NORMAL_LUNG
    return None


def labels_from_seg(seg_path: Path, source_datasets: list) -> tuple[np.ndarray, bool]:
    """Label map (z, y, x) on the source slices from a DICOM SEG; also whether lung is labelled."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    uids = [str(ds.SOPInstanceUID) for ds in source_datasets]
    rows, cols = int(source_datasets[0].Rows), int(source_datasets[0].Columns)
    labels = np.zeros((len(uids), rows, cols), np.uint8)
    has_lung = False
    # Lung first, lesions after, consolidation last: the denser finding wins overlaps.
    order = {NORMAL_LUNG: 0, GGO: 1, CONSOLIDATION: 2}
    found = []
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        code = str(description.segmented_property_type.value)
        cls = _class_of_segment(code, str(description.segment_label))
        if cls is not None:
            found.append((order[cls], cls, number))
    if not found:
        raise TrainingDataError(f"{seg_path}: no lung, GGO or consolidation segment recognised")
    for _, cls, number in sorted(found):
        mask = (
            seg.get_pixels_by_source_instance(
                source_sop_instance_uids=uids,
                segment_numbers=[number],
                assert_missing_frames_are_empty=True,
            )[..., 0]
            > 0
        )
        labels[mask] = cls
        has_lung |= cls == NORMAL_LUNG
    return labels, has_lung


def labels_from_nifti(label_path: Path, label_values: dict[str, int]) -> tuple[np.ndarray, bool]:
    """Label map (z, y, x) from a NIfTI label volume with declared values; whether lung is in it."""
    import nibabel as nib

    data = np.asarray(nib.load(str(label_path)).dataobj)  # type: ignore[attr-defined]
    data = np.transpose(data, (2, 1, 0))  # NIfTI (x, y, z) -> (z, y, x)
    labels = np.zeros(data.shape, np.uint8)
    mapping = {"lung": NORMAL_LUNG, "ggo": GGO, "consolidation": CONSOLIDATION}
    for name in ("lung", "ggo", "consolidation"):
        if name in label_values:
            labels[data == label_values[name]] = mapping[name]
    return labels, "lung" in label_values


def nifti_hu(image_path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU (z, y, x) int16 and spacing from a NIfTI CT (scaling applied by nibabel)."""
    import nibabel as nib

    image = nib.load(str(image_path))
    data = np.asarray(image.get_fdata(dtype=np.float32))  # type: ignore[attr-defined]
    zooms = image.header.get_zooms()[:3]  # type: ignore[attr-defined]
    hu = np.clip(np.rint(np.transpose(data, (2, 1, 0))), -1024, 3071).astype(np.int16)
    return hu, (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def load_site_study(study: SiteStudy) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], bool]:
    """(hu, labels, spacing, lung_labelled) of a site's labelled study at full resolution."""
    if study.kind == "dicom-seg":
        from inference.volume import load_series

        volume = load_series(study.image)
        labels, has_lung = labels_from_seg(study.label, volume.datasets)
        return volume.hu, labels, volume.spacing, has_lung
    if study.kind == "nifti":
        hu, spacing = nifti_hu(study.image)
        labels, has_lung = labels_from_nifti(study.label, study.label_values)
        if labels.shape != hu.shape:
            raise TrainingDataError(f"{study.label}: label shape {labels.shape} != image {hu.shape}")
        return hu, labels, spacing, has_lung
    raise TrainingDataError(f"site study kind {study.kind!r}: use 'dicom-seg' or 'nifti'")


def site_entry(study: SiteStudy, size: int = CACHE_SIZE) -> CacheEntry:
    """A cache entry from a site's labelled study (non-lesion voxels ignored if lung unlabelled)."""
    hu, labels, spacing, has_lung = load_site_study(study)
    if not has_lung:
        body = hu > -500
        labels = np.where((labels == 0) & body, IGNORE_LABEL, labels).astype(np.uint8)
    small_spacing = (spacing[0], spacing[1] * hu.shape[1] / size, spacing[2] * hu.shape[2] / size)
    return CacheEntry(
        f"site-{Path(study.image).name}", resample_slices(hu, size), resample_labels(labels, size), small_spacing
    )


def synthetic_entries(count: int, seed: int, size: int = CACHE_SIZE) -> list[CacheEntry]:
    """Synthetic phantoms (inference.synthetic) with lesions from inference.lesions."""
    from inference.lesions import insert_lesions
    from inference.synthetic import generate_phantom

    rng = np.random.default_rng(seed + 7919)
    entries = []
    for i in range(count):
        phantom = generate_phantom(
            shape=(48, size, size), spacing=(6.0, 1.37, 1.37), seed=seed + i, noise_sd_hu=float(rng.uniform(10, 40))
        )
        lung = phantom.labels > 0
        hu, labels = insert_lesions(phantom.hu, lung, phantom.spacing, rng, noise_sd_hu=0)
        entries.append(CacheEntry(f"synthetic-{i:03d}", hu, labels, phantom.spacing))
    return entries


#: Export window assumed for covid-semiseg-like 8-bit slices (data README: lung ~44, soft tissue ~220).
DEFAULT_SLICE_WINDOW = (-450.0, 1300.0)
LABELLED_SLICE_SIDE = 256  # the engine scales a 2D export's longer side to 256 px


def labelled_slice_entries(
    images: Path,
    labels: Path,
    window: tuple[float, float] = DEFAULT_SLICE_WINDOW,
    label_values: dict[str, int] | None = None,
    side: int = LABELLED_SLICE_SIDE,
) -> list[CacheEntry]:
    """Real 2D slices (8-bit exports) with lesion-only labels, one entry (kind "real") each.

    Pixels are mapped to HU with the declared `window` (augmentation later moves it, since
    the true export window is unknown), scaled as the engine scales a 2D export (longer side
    `side` px) and padded with air to a square. GGO and consolidation keep their classes;
    every other pixel inside the image is NOT_LESION_LABEL (lung or background, unknown).
    """
    import torch
    from PIL import Image
    from torch.nn import functional as F

    from inference.evaluate import eight_bit_to_hu, image_pairs, read_reference_png
    from inference.training.cache import NOT_LESION_LABEL

    values = label_values or {"ggo": 1, "consolidation": 2}
    entries = []
    for image_path, label_path in image_pairs(images, labels):
        pixels = np.array(Image.open(image_path).convert("L"))
        reference, _ = read_reference_png(label_path, values)
        if reference.shape != pixels.shape:
            raise TrainingDataError(f"{image_path.name}: image {pixels.shape} != label {reference.shape}")
        rows, cols = pixels.shape
        scale = side / max(rows, cols)
        size = (max(16, round(rows * scale)), max(16, round(cols * scale)))
        t = torch.from_numpy(eight_bit_to_hu(pixels, *window))[None, None]
        hu = F.interpolate(t, size=size, mode="area" if scale <= 1 else "bilinear")[0, 0].numpy()
        lab = np.where(reference == 0, NOT_LESION_LABEL, reference).astype(np.uint8)
        r_idx = np.minimum((np.arange(size[0]) + 0.5) / scale, rows - 1).astype(int)
        c_idx = np.minimum((np.arange(size[1]) + 0.5) / scale, cols - 1).astype(int)
        lab = lab[r_idx][:, c_idx]
        out_hu = np.full((side, side), -1024, np.int16)
        out_lab = np.zeros((side, side), np.uint8)
        r0, c0 = (side - size[0]) // 2, (side - size[1]) // 2
        out_hu[r0 : r0 + size[0], c0 : c0 + size[1]] = np.rint(hu)
        out_lab[r0 : r0 + size[0], c0 : c0 + size[1]] = lab
        entries.append(CacheEntry(f"slice-{image_path.stem}", out_hu[None], out_lab[None], (1.0, 1.37, 1.37), "real"))
    return entries
