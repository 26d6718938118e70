"""Augmentation that makes training slices look like what the node will receive.

Geometry: flips, 90-degree rotations (2D exports are often rotated), small rotations,
scale 0.7-1.4 (other matrix sizes and fields of view), and thorax-tight crops padded to a
square (like cropped 2D exports).
Scanner (CT slices only): reconstruction kernels (soft: Gaussian blur; sharp: unsharp
masking, which also sharpens the noise) and low-dose noise of 0-45 HU SD at the working
pixel size (about 60 HU at 0.7 mm pixels before the engine's area downsampling), white or
correlated (noise texture of soft and sharp kernels).
Export: for `export_probability` of the CT slices, the 8-bit export path: window the HU
with a random lung window, quantise to 8 bit, JPEG-compress (quality 60-95), then map back
to HU with a window that is off by up to +-150 HU in centre and +-15% in width, because the
export window of an image is usually known only approximately. Real 8-bit slices (kind
"real") are already exports: they only get the window error (their HU came from an assumed
window) and mild blur and noise.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from inference.training.cache import IGNORE_LABEL


@dataclass(frozen=True)
class AugmentConfig:
    out_size: int = 192
    scale_range: tuple[float, float] = (0.7, 1.4)
    tight_crop_probability: float = 0.5
    export_probability: float = 0.5
    window_error_hu: float = 150.0
    jpeg_quality: tuple[int, int] = (60, 95)
    kernel_probability: float = 0.0
    noise_sd_hu: tuple[float, float] = (5.0, 30.0)
    noise_probability: float = 0.5


def hu_to_8bit(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Window HU to 0..255 uint8 as a viewer export does."""
    low = center - width / 2.0
    return np.clip(np.rint((hu.astype(np.float32) - low) / width * 255.0), 0, 255).astype(np.uint8)


def eight_bit_to_hu(pixels: np.ndarray, center: float, width: float) -> np.ndarray:
    """Invert `hu_to_8bit` with a declared window (float32 HU)."""
    return pixels.astype(np.float32) / 255.0 * width + (center - width / 2.0)


def jpeg_roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.array(Image.open(buffer).convert("L"))


def _body_box(hu: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(hu > -500)
    if rows.size == 0:
        return 0, hu.shape[0], 0, hu.shape[1]
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def scanner_kernel(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A softer or sharper reconstruction kernel than the source's."""
    if rng.random() < 0.5:
        return ndimage.gaussian_filter(hu, rng.uniform(0.4, 1.3))
    blurred = ndimage.gaussian_filter(hu, rng.uniform(0.7, 1.5))
    return hu + rng.uniform(0.3, 1.2) * (hu - blurred)


def scanner_noise(shape: tuple[int, int], rng: np.random.Generator, sd_range: tuple[float, float]) -> np.ndarray:
    """Gaussian noise of SD drawn from `sd_range`, white or with a kernel's correlation."""
    noise = rng.standard_normal(shape).astype(np.float32)
    if rng.random() < 0.5:
        noise = ndimage.gaussian_filter(noise, rng.uniform(0.5, 1.0))
        noise /= max(float(noise.std()), 1e-6)
    return noise * rng.uniform(*sd_range)


def augment_slice(
    hu: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig,
    kind: str = "lesion",
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (float32 HU, uint8 labels) pair of size out_size x out_size."""
    shape = np.array(hu.shape, float)
    out = config.out_size
    real = kind == "real"
    # Source region: whole field of view, or a thorax-tight box padded to a square.
    if not real and rng.random() < config.tight_crop_probability:
        r0, r1, c0, c1 = _body_box(hu)
        side = max(r1 - r0, c1 - c0) * rng.uniform(1.0, 1.12)
        centre = np.array([(r0 + r1) / 2, (c0 + c1) / 2])
        # A tight export fills the image: map `side` source px to about the full frame.
        zoom = (shape.max() * rng.uniform(0.85, 1.0)) / side
    else:
        centre = shape / 2
        zoom = 1.0
    low, high = (0.8, 1.25) if real else config.scale_range
    zoom *= np.exp(rng.uniform(np.log(low), np.log(high)))
    angle = np.deg2rad(rng.uniform(-10, 10))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation / zoom
    if rng.random() < 0.5:
        matrix = matrix @ np.diag([1.0, -1.0])
    # Output pixel o maps to source matrix @ (o - frame_centre + crop_offset) + centre + shift:
    # the out x out crop is a random part of the (zoomed) frame.
    frame = shape * zoom
    crop_offset = np.array([rng.uniform(0, max(0.0, f - out)) for f in frame]) - np.maximum(0, out - frame) / 2
    shift = rng.normal(0, 6, size=2)
    offset = centre + shift - matrix @ (frame / 2 - crop_offset)
    hu_out = ndimage.affine_transform(
        hu.astype(np.float32), matrix, offset, (out, out), order=1, mode="constant", cval=-1024.0
    )
    lab_out = ndimage.affine_transform(labels, matrix, offset, (out, out), order=0, mode="constant", cval=0)
    turns = int(rng.integers(4))
    hu_out, lab_out = np.rot90(hu_out, turns), np.rot90(lab_out, turns)

    if real:
        # HU from an assumed export window: the true one differs by up to ~150 HU.
        err = config.window_error_hu
        hu_out = (hu_out + 450.0) * rng.uniform(0.85, 1.15) - 450.0 + rng.uniform(-err, err)
        if rng.random() < 0.2:
            hu_out = ndimage.gaussian_filter(hu_out, rng.uniform(0.3, 0.8))
        if rng.random() < 0.3:
            hu_out = hu_out + scanner_noise(hu_out.shape, rng, (2.0, 15.0))
        return np.ascontiguousarray(hu_out, np.float32), np.ascontiguousarray(lab_out, np.uint8)

    if rng.random() < config.kernel_probability:
        hu_out = scanner_kernel(hu_out, rng)
    elif rng.random() < 0.3:
        hu_out = ndimage.gaussian_filter(hu_out, rng.uniform(0.3, 1.0))
    if rng.random() < config.noise_probability:
        hu_out = hu_out + scanner_noise(hu_out.shape, rng, config.noise_sd_hu)
    if rng.random() < config.export_probability:
        center, width = rng.uniform(-650, -250), rng.uniform(1000, 1700)
        pixels = hu_to_8bit(hu_out, center, width)
        if rng.random() < 0.8:
            pixels = jpeg_roundtrip(pixels, int(rng.integers(*config.jpeg_quality, endpoint=True)))
        err = config.window_error_hu
        hu_out = eight_bit_to_hu(pixels, center + rng.uniform(-err, err), width * rng.uniform(0.85, 1.15))
    return np.ascontiguousarray(hu_out, np.float32), np.ascontiguousarray(lab_out, np.uint8)


__all__ = ["IGNORE_LABEL", "AugmentConfig", "augment_slice", "eight_bit_to_hu", "hu_to_8bit"]
