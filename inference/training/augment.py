"""Augmentation that makes synthetic-lesion CT slices look like what the node will receive.

Geometry: flips, 90-degree rotations (2D exports are often rotated), small rotations,
scale 0.7-1.4, and thorax-tight crops padded to a square (like cropped 2D exports).
Intensity: blur, noise, and, for half the samples, the 8-bit export path: window the HU
with a random lung window, quantise to 8 bit, JPEG-compress (quality 60-95), then map
back to HU with a window that is off by up to +-150 HU in centre and +-15% in width,
because the export window of an image is usually known only approximately.
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


def augment_slice(
    hu: np.ndarray, labels: np.ndarray, rng: np.random.Generator, config: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (float32 HU, uint8 labels) pair of size out_size x out_size."""
    size = hu.shape[0]
    out = config.out_size
    # Source region: whole field of view, or a thorax-tight box padded to a square.
    if rng.random() < config.tight_crop_probability:
        r0, r1, c0, c1 = _body_box(hu)
        side = max(r1 - r0, c1 - c0) * rng.uniform(1.0, 1.12)
        centre = np.array([(r0 + r1) / 2, (c0 + c1) / 2])
        # A tight export fills the image: map `side` source px to about the full frame.
        zoom = (size * rng.uniform(0.85, 1.0)) / side
    else:
        centre = np.array([size / 2, size / 2])
        zoom = 1.0
    zoom *= np.exp(rng.uniform(np.log(config.scale_range[0]), np.log(config.scale_range[1])))
    angle = np.deg2rad(rng.uniform(-10, 10))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation / zoom
    if rng.random() < 0.5:
        matrix = matrix @ np.diag([1.0, -1.0])
    # Output pixel o maps to source matrix @ (o - out_centre_in_full_frame) + centre + shift.
    frame_centre = np.array([size / 2, size / 2])
    crop_offset = rng.uniform(0, size - out, size=2)  # which out x out part of the frame
    shift = rng.normal(0, 6, size=2)
    offset = centre + shift - matrix @ (frame_centre - crop_offset)
    hu_out = ndimage.affine_transform(
        hu.astype(np.float32), matrix, offset, (out, out), order=1, mode="constant", cval=-1024.0
    )
    lab_out = ndimage.affine_transform(labels, matrix, offset, (out, out), order=0, mode="constant", cval=0)
    turns = int(rng.integers(4))
    hu_out, lab_out = np.rot90(hu_out, turns), np.rot90(lab_out, turns)

    if rng.random() < 0.3:
        hu_out = ndimage.gaussian_filter(hu_out, rng.uniform(0.3, 1.0))
    if rng.random() < 0.5:
        hu_out = hu_out + rng.normal(0, rng.uniform(5, 30), hu_out.shape).astype(np.float32)
    if rng.random() < config.export_probability:
        center, width = rng.uniform(-650, -250), rng.uniform(1000, 1700)
        pixels = hu_to_8bit(hu_out, center, width)
        if rng.random() < 0.8:
            pixels = jpeg_roundtrip(pixels, rng.integers(*config.jpeg_quality, endpoint=True))
        err = config.window_error_hu
        hu_out = eight_bit_to_hu(pixels, center + rng.uniform(-err, err), width * rng.uniform(0.85, 1.15))
    return np.ascontiguousarray(hu_out, np.float32), np.ascontiguousarray(lab_out, np.uint8)


__all__ = ["IGNORE_LABEL", "AugmentConfig", "augment_slice", "eight_bit_to_hu", "hu_to_8bit"]
