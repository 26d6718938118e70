"""Load a CT series from DICOM files into a HU volume with its geometry.

Slices are sorted by their position along the slice normal; the slice spacing is taken
from those positions (never from SliceThickness). Compressed transfer syntaxes are decoded
here, through pydicom's pixel handlers (pylibjpeg, pyjpegls, RLE).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    MPEGTransferSyntaxes,
)

# Transfer syntaxes whose pixels are never the original ones (JPEG XL JPEG recompression keeps a
# lossy JPEG), and those that may be lossy: lossy unless LossyImageCompression says "00".
LOSSY_TRANSFER_SYNTAXES = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, UID("1.2.840.10008.1.2.4.111"), *map(UID, MPEGTransferSyntaxes)}
)
MAYBE_LOSSY_TRANSFER_SYNTAXES = frozenset(
    {JPEGLSNearLossless, JPEG2000, JPEG2000MC, HTJ2K, UID("1.2.840.10008.1.2.4.112")}
)


class SeriesError(ValueError):
    """A series that cannot be turned into a consistent volume; the message says why."""


@dataclass
class CTVolume:
    """A CT series as a HU volume.

    hu: int16 array (slices, rows, columns), slice 0 lowest along the slice normal.
    spacing: (slice spacing from positions, row spacing, column spacing) in mm.
    datasets: the source headers (no pixel data) in the same order as `hu`.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    datasets: list[Dataset] = field(repr=False)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in cm3 (= ml)."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)


def slice_normal(ds: Dataset) -> np.ndarray:
    """Unit normal of an image plane from ImageOrientationPatient."""
    try:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    except AttributeError as exc:
        raise SeriesError("missing ImageOrientationPatient") from exc
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise SeriesError("degenerate ImageOrientationPatient")
    return normal / norm


def slice_position(ds: Dataset, normal: np.ndarray) -> float:
    """Distance of a slice along the slice normal (mm)."""
    try:
        return float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal))
    except AttributeError as exc:
        raise SeriesError("missing ImagePositionPatient") from exc


def sort_by_position(datasets: Sequence[Dataset]) -> tuple[list[Dataset], np.ndarray]:
    """Sort slices along the normal of the first slice; return them with their positions."""
    if not datasets:
        raise SeriesError("no images")
    normal = slice_normal(datasets[0])
    keyed = sorted(((slice_position(ds, normal), ds) for ds in datasets), key=lambda p: p[0])
    positions = np.array([p for p, _ in keyed])
    return [ds for _, ds in keyed], positions


def spacing_from_positions(positions: np.ndarray, tolerance: float = 0.05) -> float:
    """Uniform slice spacing from sorted positions, or SeriesError naming the gap.

    tolerance is relative: a step differing from the median by more than that fraction is
    a gap (missing slice) or an irregular series.
    """
    if len(positions) < 2:
        raise SeriesError("a single slice has no slice spacing")
    steps = np.diff(positions)
    median = float(np.median(steps))
    if median <= 1e-3:
        raise SeriesError("slices share the same position")
    bad = np.nonzero(np.abs(steps - median) > tolerance * median)[0]
    if bad.size:
        i = int(bad[0])
        raise SeriesError(
            f"non-uniform slice spacing: step {steps[i]:.3f} mm between slices {i} and {i + 1}"
            f" (median {median:.3f} mm); a slice is missing or the series mixes acquisitions"
        )
    return median


def lossy_compression(datasets: Sequence[Dataset]) -> str | None:
    """Why the pixels of these images may differ from the scanner's, e.g. "LossyImageCompression
    01 (ISO_10918_1, ratio 8), 60 of 60 images"; None when nothing says so.

    An image was lossy-compressed when its Lossy Image Compression is "01" (PS3.3 C.7.6.1.1.5:
    once set, it stays set in every derived image) or its transfer syntax is lossy.
    """
    found = [why for ds in datasets if (why := _lossy(ds)) is not None]
    if not found:
        return None
    return f"{found[0]}, {len(found)} of {len(datasets)} images"


def _lossy(ds: Dataset) -> str | None:
    flag = str(ds.get("LossyImageCompression", "")).strip()
    syntax = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
    if flag == "01":
        method = "\\".join(str(m) for m in values_of(ds.get("LossyImageCompressionMethod")))
        ratio = "\\".join(_number(r) for r in values_of(ds.get("LossyImageCompressionRatio")))
        details = ", ".join(part for part in (method, f"ratio {ratio}" if ratio else "") if part)
        return f"LossyImageCompression 01{f' ({details})' if details else ''}"
    if syntax in LOSSY_TRANSFER_SYNTAXES or (syntax in MAYBE_LOSSY_TRANSFER_SYNTAXES and flag != "00"):
        return f"transfer syntax {syntax.name}"
    return None


def _number(value: object) -> str:
    """A DS value as written by people ("8", not "8.0"); as it is when it is no number."""
    try:
        return f"{float(str(value)):g}"
    except ValueError:
        return str(value)


def values_of(value: object) -> list[object]:
    """A DICOM attribute's value as a list (empty when absent, one item when single-valued)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def read_headers(paths: Iterable[Path]) -> list[Dataset]:
    """Read headers only (no pixel data), remembering each file's path in `filename`."""
    headers: list[Dataset] = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ds.filename = str(path)
        headers.append(ds)
    return headers


def to_hu(ds: Dataset) -> np.ndarray:
    """Pixel data of one slice in HU as int16 (rescale slope/intercept applied)."""
    pixels = ds.pixel_array
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    hu = pixels.astype(np.float32) * slope + intercept
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def load_series(source: Path | Sequence[Path], *, in_slice_order: bool = False) -> CTVolume:
    """Load a CT series from a folder (every file in it) or a list of files.

    `in_slice_order`: the files are already sorted along the slice normal (the node's
    completeness decision sorted them), so each is read once, headers and pixels together;
    the spacing check still verifies the order. Otherwise the headers are read and sorted
    first, then the pixels.

    Raises SeriesError with a readable reason for anything that is not one consistent
    axial-stack series (mixed series, missing geometry, gaps, different image sizes).
    """
    if isinstance(source, (str, Path)):
        folder = Path(source)
        paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        paths = [Path(p) for p in source]
    try:
        return _load_in_order(paths) if in_slice_order else _load_paths(paths)
    except SeriesError:
        raise
    except Exception as exc:  # malformed DICOM is a bad series, never a crash
        raise SeriesError(f"unreadable series: {type(exc).__name__}: {exc}"[:500]) from exc


MAX_IMAGE_SIDE = 8192  # bounds the volume allocation against garbled Rows/Columns


def _load_paths(paths: list[Path]) -> CTVolume:
    headers = read_headers(paths)
    _check_one_series(headers)
    ordered, positions = sort_by_position(headers)
    slice_spacing = spacing_from_positions(positions)
    shape, pixel_spacing = _image_geometry(ordered[0])
    hu = np.empty((len(ordered), *shape), dtype=np.int16)
    for i, header in enumerate(ordered):
        _check_size(header, shape)
        full = pydicom.dcmread(header.filename)
        hu[i] = to_hu(full)
    return CTVolume(hu=hu, spacing=(slice_spacing, *pixel_spacing), datasets=ordered)


def _load_in_order(paths: list[Path]) -> CTVolume:
    """`_load_paths` for files already in slice order: one read per file."""
    if not paths:
        raise SeriesError("no images")
    headers: list[Dataset] = []
    hu = np.empty(0, dtype=np.int16)
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        if i == 0:
            shape, pixel_spacing = _image_geometry(ds)
            hu = np.empty((len(paths), *shape), dtype=np.int16)
        _check_size(ds, shape)
        hu[i] = to_hu(ds)
        for tag in [element.tag for element in ds if element.tag >= PIXEL_DATA_TAG]:
            del ds[tag]  # a header, as read_headers gives it
        headers.append(ds)
    _check_one_series(headers)
    normal = slice_normal(headers[0])
    slice_spacing = spacing_from_positions(np.array([slice_position(ds, normal) for ds in headers]))
    return CTVolume(hu=hu, spacing=(slice_spacing, *pixel_spacing), datasets=headers)


PIXEL_DATA_TAG = 0x7FE00010


def _check_one_series(headers: Sequence[Dataset]) -> None:
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in headers}
    if len(series_uids) != 1:
        raise SeriesError(f"files belong to {len(series_uids)} series")


def _image_geometry(first: Dataset) -> tuple[tuple[int, int], tuple[float, float]]:
    """(rows, columns) and (row, column) pixel spacing of the series, from its first slice."""
    shape = (int(first.Rows), int(first.Columns))
    if not all(0 < side <= MAX_IMAGE_SIDE for side in shape):
        raise SeriesError(f"implausible image size {shape[0]} x {shape[1]}")
    try:
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    except AttributeError as exc:
        raise SeriesError("missing PixelSpacing") from exc
    return shape, (row_spacing, col_spacing)


def _check_size(header: Dataset, shape: tuple[int, int]) -> None:
    if (int(header.Rows), int(header.Columns)) != shape:
        raise SeriesError("images of different sizes in one series")
