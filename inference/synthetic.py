"""Synthetic low-dose chest CT series with known labels, written as real DICOM files.

Why: tests and demos of the node need CT series whose truth is known exactly, that are
small, fast to make and carry no patient data. The phantom is drawn in millimetres, so the
anatomy keeps its size whatever the matrix and spacing:

- air outside (-1000 HU), a table under the patient, an elliptical body with a subcutaneous
  fat ring (-100), chest-wall muscle (+50), ribs and sternum (+700), a spine (+500 body,
  +900 cortex), heart and descending aorta (+40), liver below the right dome (+55) and a
  gas bubble in the stomach below the left dome;
- two lungs (-850 HU with a smooth texture and a denser dependent (posterior) zone) that
  taper to the apices and sit on diaphragmatic domes;
- a trachea (air, soft-tissue wall) from the top slice to the carina, splitting into two
  main bronchi that end at the hila (they are not lung);
- branching vessel trees (+40 HU tubes tapering towards the periphery) in each lung;
- lesions (`LesionSpec`): GGO raises the parenchyma to about -500..-380 HU while vessels
  stay visible (the "add, don't replace" mixing of `inference.lesions`), consolidation
  replaces everything with 0..+40 HU;
- a point-spread blur (partial volume) and correlated Gaussian noise of low-dose CT
  (SD 30 HU by default).

Labels (`Phantom.labels`): 0 background, 1 normal lung (vessels inside the lung included,
as in the paper's manual labels), 2 GGO, 3 consolidation; lesion labels only inside the
lungs; trachea and main bronchi are background.

Volume orientation is the one `inference.volume.load_series` returns: index 0 is the lowest
(feet-most) slice, rows run anterior to posterior, columns from the patient's right to left.
"""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from scipy import ndimage

from inference.lesions import random_lesion_field
from inference.quantify import BACKGROUND, CONSOLIDATION, GGO, NORMAL_LUNG

log = structlog.get_logger(__name__)

HU_MIN, HU_MAX = -1024, 3071  # what 12 stored bits with intercept -1024 can hold
RESCALE_INTERCEPT = -1024

UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Compressed transfer syntaxes `write_series` can produce with the installed encoders.
#: JPEG Lossless (process 14) is missing: pydicom has no encoder for it.
COMPRESSED_SYNTAXES = (RLELossless, JPEGLSLossless, JPEG2000Lossless)


class PhantomError(ValueError):
    """Bad phantom parameters (shape too small, lesion outside the lungs, ...)."""


class SeriesWriteError(ValueError):
    """The series cannot be written as asked (e.g. no encoder for the transfer syntax)."""


@dataclass(frozen=True)
class LesionSpec:
    """One lesion to insert.

    kind: "ggo" or "consolidation".
    centre: (z, y, x) as fractions of the volume extent (0..1; z=0 the lowest slice,
        y=0 anterior, x=0 patient's right; a point outside the lungs moves to the nearest
        lung voxel; the lungs span about x 0.15-0.42 and 0.58-0.85, y 0.25-0.65, z 0.1-0.9),
        or "random peripheral": a random subpleural site, where COVID-19 lesions usually are.
    radius_mm or volume_ml: size; give one. volume_ml is the target volume inside the lung
        (the blob is rescaled until its part inside the lung has that volume, within ~10%).
    """

    kind: Literal["ggo", "consolidation"]
    centre: tuple[float, float, float] | Literal["random peripheral"] = "random peripheral"
    radius_mm: float | None = None
    volume_ml: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("ggo", "consolidation"):
            raise PhantomError(f"lesion kind must be 'ggo' or 'consolidation', not {self.kind!r}")
        if (self.radius_mm is None) == (self.volume_ml is None):
            raise PhantomError("give exactly one of radius_mm and volume_ml for a lesion")
        if isinstance(self.centre, str) and self.centre != "random peripheral":
            raise PhantomError(f"lesion centre {self.centre!r}: use (z, y, x) or 'random peripheral'")


@dataclass
class Phantom:
    """A synthetic CT volume and its truth.

    hu: int16 (z, y, x) HU, clipped to what the written DICOM can hold (-1024..3071).
    labels: uint8, 0 background, 1 normal lung, 2 GGO, 3 consolidation.
    spacing: (dz, dy, dx) mm. airway: bool mask of the air lumen of trachea and main bronchi.
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    airway: np.ndarray

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


# --------------------------------------------------------------------------- anatomy


def _axes_mm(shape: tuple[int, int, int], spacing: tuple[float, float, float]):
    """Broadcastable voxel-centre coordinates in mm, origin at the volume centre in y/x."""
    nz, ny, nx = shape
    dz, dy, dx = spacing
    z = (np.arange(nz, dtype=np.float32) * dz)[:, None, None]
    y = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * dy)[None, :, None]
    x = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * dx)[None, None, :]
    return z, y, x


def _ellipsoid(z, y, x, centre, semi_axes) -> np.ndarray:
    """Boolean ellipsoid from broadcastable mm coordinates."""
    cz, cy, cx = centre
    az, ay, ax = semi_axes
    return ((z - cz) / az) ** 2 + ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 <= 1.0


def _paint_tube(
    mask: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    r0: float,
    r1: float,
    spacing: np.ndarray,
    thinnest: float = 0.0,
) -> None:
    """Mark a tapered cylinder (capsule) from p0 to p1 (mm, (z, y, x)) in `mask`.

    A bool mask is set inside. A float mask takes the maximum with a partial-volume fill:
    a tube thinner than `thinnest` voxels along an axis is widened to that along the axis
    and filled with the fraction of its true cross-section, so thin vessels stay visible
    (and continuous) on thick slices without being too dense.
    """
    rmax = max(r0, r1, float(thinnest * spacing.max()))
    lo = np.floor((np.minimum(p0, p1) - rmax) / spacing).astype(int)
    hi = np.ceil((np.maximum(p0, p1) + rmax) / spacing).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, mask.shape)
    if np.any(hi <= lo):
        return
    zz = (np.arange(lo[0], hi[0], dtype=np.float32) * spacing[0])[:, None, None]
    yy = (np.arange(lo[1], hi[1], dtype=np.float32) * spacing[1])[None, :, None]
    xx = (np.arange(lo[2], hi[2], dtype=np.float32) * spacing[2])[None, None, :]
    d = (p1 - p0).astype(np.float32)
    length2 = float(np.dot(d, d)) or 1e-6
    t = ((zz - p0[0]) * d[0] + (yy - p0[1]) * d[1] + (xx - p0[2]) * d[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    radius = r0 + t * (r1 - r0)
    widened = [np.maximum(radius, np.float32(thinnest * s)) for s in spacing]
    dist2 = (
        ((zz - p0[0] - t * d[0]) / widened[0]) ** 2
        + ((yy - p0[1] - t * d[1]) / widened[1]) ** 2
        + ((xx - p0[2] - t * d[2]) / widened[2]) ** 2
    )
    inside = dist2 <= 1.0
    box = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    if mask.dtype == bool:
        box |= inside
    else:
        mean_area = (widened[0] * widened[1] + widened[1] * widened[2] + widened[0] * widened[2]) / 3
        fill = np.minimum(1.0, radius**2 / mean_area)
        np.maximum(box, np.where(inside, fill, np.float32(0)), out=box)


def _random_turn(direction: np.ndarray, angle_rad: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate a unit vector by `angle_rad` about a random perpendicular axis."""
    helper = rng.standard_normal(3)
    perpendicular = helper - np.dot(helper, direction) * direction
    perpendicular /= np.linalg.norm(perpendicular) + 1e-9
    turned = np.cos(angle_rad) * direction + np.sin(angle_rad) * perpendicular
    return turned / np.linalg.norm(turned)


def _grow_vessel_tree(
    vessels: np.ndarray,
    lung: np.ndarray,
    start_mm: np.ndarray,
    direction: np.ndarray,
    length_mm: float,
    radius_mm: float,
    depth: int,
    spacing: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Bifurcating tree of tapering tubes inside `lung`, as vessel fractions in `vessels`."""
    stack = [(start_mm, direction, length_mm, radius_mm, depth)]
    upper = (np.array(lung.shape) - 1) * spacing
    shape = np.array(lung.shape)

    def inside(point: np.ndarray) -> bool:
        if np.any(point < 0) or np.any(point > upper):
            return False
        return bool(lung[tuple(np.clip(np.rint(point / spacing).astype(int), 0, shape - 1))])

    while stack:
        p0, u, nominal_length, radius, level = stack.pop()
        length = nominal_length
        for attempt in range(5):  # a branch that leaves the lung: shorter, then turn
            p1 = p0 + u * length
            if inside(p1) and inside(0.5 * (p0 + p1)):
                break
            length *= 0.7
            if attempt >= 1:
                u = _random_turn(u, rng.uniform(0.4, 1.0), rng)
        else:
            continue
        _paint_tube(vessels, p0, p1, radius, radius * 0.85, spacing, thinnest=0.55)
        if level > 0 and radius * 0.8 >= 0.4:
            for _ in range(2):
                child = _random_turn(u, rng.uniform(0.25, 0.6), rng)
                stack.append((p1, child, nominal_length * rng.uniform(0.75, 0.9), radius * 0.8, level - 1))


def _lesion_blob(
    shape: tuple[int, int, int],
    spacing: np.ndarray,
    centre_mm: np.ndarray,
    radius_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """An irregular blob: a randomly stretched ellipsoid whose border is bent by a smooth field."""
    axes = radius_mm * rng.uniform(0.8, 1.2, size=3)
    axes *= radius_mm / float(np.prod(axes)) ** (1 / 3)  # keep the nominal volume
    reach = axes * 1.4
    lo = np.maximum(np.floor((centre_mm - reach) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre_mm + reach) / spacing).astype(int) + 1, shape)
    blob = np.zeros(shape, dtype=bool)
    if np.any(hi <= lo):
        return blob
    sub_shape = tuple(int(high - low) for low, high in zip(lo, hi, strict=True))
    zz = (np.arange(lo[0], hi[0], dtype=np.float32) * spacing[0] - centre_mm[0])[:, None, None]
    yy = (np.arange(lo[1], hi[1], dtype=np.float32) * spacing[1] - centre_mm[1])[None, :, None]
    xx = (np.arange(lo[2], hi[2], dtype=np.float32) * spacing[2] - centre_mm[2])[None, None, :]
    radial = np.sqrt((zz / axes[0]) ** 2 + (yy / axes[1]) ** 2 + (xx / axes[2]) ** 2)
    if min(sub_shape) >= 2:
        bend = random_lesion_field(sub_shape, tuple(spacing), rng, max(radius_mm / 2.5, 2.0))
        radial = radial + 0.15 * bend
    blob[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = radial <= 1.0
    return blob


@dataclass
class _Anatomy:
    """Noise-free tissue map and the masks lesions and labels need."""

    hu: np.ndarray  # float32
    lung: np.ndarray
    vessels: np.ndarray
    airway: np.ndarray  # air lumen of trachea and main bronchi
    wall_depth_mm: np.ndarray  # 2D: distance from the skin, for subpleural placement
    cavity_depth_mm: float


def _build_anatomy(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator
) -> _Anatomy:
    nz, ny, nx = shape
    dz, dy, dx = spacing
    sp = np.asarray(spacing, dtype=np.float32)
    z, y, x = _axes_mm(shape, spacing)
    height = nz * dz
    fov_y, fov_x = ny * dy, nx * dx
    t = z / max(height - dz, 1e-6)  # 0 lowest slice .. 1 top slice

    # Body: ellipse fixed along z, centred a little anterior so a table fits underneath.
    body_a, body_b = 0.43 * fov_x, 0.29 * fov_y
    body_cy = -0.06 * fov_y
    body2d = ((y[0] - body_cy) / body_b) ** 2 + (x[0] / body_a) ** 2 <= 1.0
    wall_depth = ndimage.distance_transform_edt(body2d, sampling=(dy, dx)).astype(np.float32)
    scale = min(body_a / 160.0, body_b / 110.0)  # anatomy scales with a small FOV
    fat, muscle, ribs_at, cavity = (d * scale for d in (12.0, 22.0, 30.0, 33.0))

    hu = np.full(shape, -1000.0, dtype=np.float32)
    table_top = body_cy + body_b + 12.0 * scale
    table = (y >= table_top) & (y <= table_top + 8.0 * scale) & (np.abs(x) <= 0.42 * fov_x)
    hu[np.broadcast_to(table, shape)] = 150.0
    tissue2d = np.where(wall_depth < fat, -100.0, np.where(wall_depth < muscle, 50.0, 40.0))
    hu[:, body2d] = tissue2d[body2d]

    # Ribs: oblique stripes in the band just inside the muscle; sternum in front.
    theta = np.arctan2(y[0] - body_cy, x[0])
    rib_band = body2d & (wall_depth >= muscle) & (wall_depth < ribs_at)
    slope = 35.0 * scale * np.sin(theta)  # posterior (sin>0) rib ends sit higher
    pitch = 26.0 * scale
    ribs = rib_band[None] & (np.cos(2 * np.pi * (z - slope[None]) / pitch) > 0.25)
    ribs &= (~(np.abs(x[0]) < 14 * scale) | (y[0] > body_cy))[None]
    sternum = rib_band & (np.abs(x[0]) < 14 * scale) & (y[0] < body_cy)
    ribs |= sternum[None]
    hu[ribs] = 700.0

    # Lungs: ellipses that taper to the apex and sit on domes (right dome higher).
    apex_t, base_t, dome_h = 0.90, 0.06, 0.16
    lung_cy = body_cy + 0.04 * body_b
    lung_ax, lung_ay = 0.33 * body_a, 0.74 * body_b
    taper = np.sqrt(np.clip((apex_t - t) / 0.3, 0.0, 1.0))
    cavity2d = body2d & (wall_depth >= cavity)
    lung = np.zeros(shape, dtype=bool)
    for side in (-1, 1):  # -1: patient's right (image left), +1: patient's left
        cx = side * 0.52 * body_a
        rho2 = ((x - cx) / (lung_ax * np.maximum(taper, 1e-3))) ** 2 + (
            (y - lung_cy) / (lung_ay * np.maximum(taper, 1e-3))
        ) ** 2
        flat_rho2 = ((x - cx) / lung_ax) ** 2 + ((y - lung_cy) / lung_ay) ** 2
        dome = base_t + (dome_h + (0.03 if side < 0 else 0.0)) * np.clip(1.0 - flat_rho2, 0, 1)
        lung |= (rho2 <= 1.0) & (t > dome) & (taper > 0)
    lung &= cavity2d[None]

    # Spine, aorta, heart, liver, stomach gas: carve the lungs around them.
    spine_cy = body_cy + body_b - 42.0 * scale
    spine_r = 19.0 * scale
    spine_d2 = (y - spine_cy) ** 2 + x**2
    spine2d = spine_d2[0] <= spine_r**2
    hu[:, spine2d] = np.where(spine_d2[0][spine2d] >= (spine_r - 2.5 * scale) ** 2, 900.0, 500.0)
    aorta2d = (y[0] - (spine_cy - spine_r - 10 * scale)) ** 2 + (x[0] - 20 * scale) ** 2 <= (12 * scale) ** 2
    heart = _ellipsoid(
        z,
        y,
        x,
        (0.33 * height, body_cy - 0.12 * body_b, 0.12 * body_a),
        (0.13 * height, 0.45 * body_b, 0.3 * body_a),
    )
    hu[heart] = 40.0
    below_right_dome = (t <= base_t + dome_h + 0.03) & (x < 0) & body2d[None] & ~lung
    hu[below_right_dome & (hu == 40.0)] = 55.0  # liver
    solid2d = spine2d | aorta2d
    solid2d = ndimage.binary_dilation(solid2d, iterations=max(1, round(4 * scale / dx)))
    lung &= ~solid2d[None]
    lung &= ~_ellipsoid(
        z,
        y,
        x,
        (0.33 * height, body_cy - 0.12 * body_b, 0.12 * body_a),
        (0.13 * height + 4 * scale, 0.45 * body_b + 4 * scale, 0.3 * body_a + 4 * scale),
    )
    stomach = _ellipsoid(z, y, x, (0.04 * height, body_cy, 0.45 * body_a), (12 * scale, 18 * scale, 25 * scale))
    stomach &= ~lung & body2d[None] & (wall_depth >= cavity)[None]
    hu[stomach] = -1000.0

    # Airway: trachea from the top down to the carina, two main bronchi that end at the
    # medial surface of the lungs (the hila); intrapulmonary airways are not modelled.
    carina = np.array([0.66 * height, body_cy - 0.05 * body_b, 0.0], dtype=np.float32)
    top = np.array([(nz - 1) * dz + 5.0, carina[1] - 0.08 * body_b, 0.0], dtype=np.float32)
    origin = np.array([0.0, -(ny - 1) / 2 * dy, -(nx - 1) / 2 * dx], dtype=np.float32)
    lumen = np.zeros(shape, dtype=bool)
    outer = np.zeros(shape, dtype=bool)
    trachea_r, wall = 8.0 * scale, 2.5 * scale
    bronchus_end = []
    _paint_tube(lumen, top - origin, carina - origin, trachea_r, trachea_r, sp)
    _paint_tube(outer, top - origin, carina - origin, trachea_r + wall, trachea_r + wall, sp)
    for side in (-1, 1):
        end = np.array([carina[0] - 25.0 * scale, lung_cy, side * (0.52 * body_a - 0.95 * lung_ax)], dtype=np.float32)
        radius = (6.5 if side < 0 else 5.5) * scale
        _paint_tube(lumen, carina - origin, end - origin, radius, radius, sp)
        _paint_tube(outer, carina - origin, end - origin, radius + wall, radius + wall, sp)
        bronchus_end.append(end - origin)
    hu[outer] = 40.0
    hu[lumen] = -1000.0
    lung &= ~outer

    # Parenchyma with texture and a denser dependent (posterior) zone.
    texture = random_lesion_field(shape, spacing, rng, 4.0)
    dependent = 40.0 * np.clip((y - lung_cy) / lung_ay, 0.0, 1.0) ** 2
    parenchyma = -850.0 + 18.0 * texture + dependent
    hu[lung] = np.broadcast_to(parenchyma, shape)[lung]

    # Vessel trees from each hilum, three trunks per lung (up, lateral, down).
    vessels = np.zeros(shape, dtype=np.float32)
    for side, hilum in zip((-1, 1), bronchus_end, strict=True):
        # Root: the lung voxel nearest to the bronchus end, where the artery enters.
        z_lo = max(0, int((hilum[0] - 30 * scale) / dz))
        lung_voxels = np.argwhere(lung[z_lo : int((hilum[0] + 30 * scale) / dz) + 1])
        lung_voxels[:, 0] += z_lo
        if lung_voxels.size == 0:
            continue
        nearest = lung_voxels[np.argmin(((lung_voxels * sp - hilum) ** 2).sum(axis=1))]
        start = nearest * sp + np.array([0.0, 0.0, side * 4.0 * scale], dtype=np.float32)
        for heading in (
            (0.9, -0.2, 0.4 * side),
            (0.6, 0.5, 0.5 * side),
            (0.1, -0.7, 0.6 * side),
            (-0.1, 0.8, 0.5 * side),
            (-0.7, -0.3, 0.5 * side),
            (-0.8, 0.5, 0.4 * side),
        ):
            u = np.asarray(heading, dtype=np.float64)
            _grow_vessel_tree(
                vessels,
                lung,
                start.astype(np.float64),
                u / np.linalg.norm(u),
                32.0 * scale,
                2.5 * scale,
                7,
                sp.astype(np.float64),
                rng,
            )
    # Small peripheral vessels: curves where two smooth random fields are both near zero.
    field_a = random_lesion_field(shape, spacing, rng, 6.0)
    field_b = random_lesion_field(shape, spacing, rng, 6.0)
    small = (np.abs(field_a) < 0.10) & (np.abs(field_b) < 0.35)
    np.maximum(vessels, small.astype(np.float32) * 0.6, out=vessels)
    vessels *= lung
    hu += vessels * (40.0 - hu)
    return _Anatomy(hu, lung, vessels > 0.5, lumen, wall_depth, cavity)


def _lesion_centre_mm(
    spec: LesionSpec, anatomy: _Anatomy, radius_mm: float, spacing: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Centre of a lesion in mm from the volume origin (voxel 0,0,0)."""
    shape = np.array(anatomy.lung.shape)
    if spec.centre == "random peripheral":
        # Lung voxels whose centre is within about half a radius of the chest wall.
        near_wall = anatomy.wall_depth_mm <= anatomy.cavity_depth_mm + max(0.5 * radius_mm, 2 * spacing[1])
        candidates = np.argwhere(anatomy.lung & near_wall[None])
        if candidates.size == 0:
            candidates = np.argwhere(anatomy.lung)
        return candidates[rng.integers(len(candidates))] * spacing
    rel = np.asarray(spec.centre, dtype=float)
    if rel.shape != (3,) or np.any(rel < 0) or np.any(rel > 1):
        raise PhantomError(f"lesion centre {spec.centre} must be three fractions in 0..1")
    voxel = np.rint(rel * (shape - 1)).astype(int)
    if not anatomy.lung[tuple(voxel)]:  # outside the lungs: the nearest lung voxel
        lung_voxels = np.argwhere(anatomy.lung)
        voxel = lung_voxels[np.argmin((((lung_voxels - voxel) * spacing) ** 2).sum(axis=1))]
    return voxel * spacing


def _place_lesion(spec: LesionSpec, anatomy: _Anatomy, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The lesion mask inside the lungs, sized by radius or by target volume."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if spec.radius_mm is not None:
        radius = float(spec.radius_mm)
        centre = _lesion_centre_mm(spec, anatomy, radius, spacing, rng)
        return _lesion_blob(anatomy.lung.shape, spacing, centre, radius, rng) & anatomy.lung
    assert spec.volume_ml is not None  # LesionSpec holds exactly one of radius_mm and volume_ml
    target = float(spec.volume_ml)
    radius = (3.0 * target * 1000.0 / (4.0 * np.pi)) ** (1 / 3)
    centre = _lesion_centre_mm(spec, anatomy, radius, spacing, rng)
    state = rng.bit_generator.state
    mask = np.zeros(anatomy.lung.shape, dtype=bool)
    for _ in range(8):  # rescale until the part inside the lung has the target volume
        rng.bit_generator.state = state  # same shape, only the size changes
        mask = _lesion_blob(anatomy.lung.shape, spacing, centre, radius, rng) & anatomy.lung
        volume = mask.sum() * voxel_ml
        if volume <= 0:
            radius *= 1.5
            continue
        if abs(volume - target) <= 0.05 * target:
            break
        radius *= float(np.clip((target / volume) ** (1 / 3), 0.7, 1.5))
    if not mask.any():
        raise PhantomError(f"lesion {spec} does not reach into the lungs")
    return mask


def generate_phantom(
    shape: tuple[int, int, int] = (64, 256, 256),
    spacing: tuple[float, float, float] = (5.0, 1.4, 1.4),
    lesions: Sequence[LesionSpec] | None = None,
    seed: int | None = 0,
    noise_sd_hu: float = 30.0,
) -> Phantom:
    """Draw a synthetic low-dose chest CT and its truth labels (see the module docstring).

    shape (z, y, x) voxels, spacing (dz, dy, dx) mm: the in-plane field of view should be
    about 300-400 mm and the z extent 200-350 mm for realistic sizes (smaller ones shrink
    the anatomy). lesions: inserted in order; consolidation wins where lesions overlap.
    """
    if len(shape) != 3 or min(shape) < 8:
        raise PhantomError(f"phantom shape {shape} too small: need at least 8 voxels per axis")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise PhantomError(f"phantom spacing {spacing} must be three positive mm values")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, dtype=float)
    anatomy = _build_anatomy(shape, spacing, rng)
    hu = anatomy.hu
    labels = np.where(anatomy.lung, NORMAL_LUNG, BACKGROUND).astype(np.uint8)

    ggo_mask = np.zeros(shape, dtype=bool)
    cons_mask = np.zeros(shape, dtype=bool)
    for spec in lesions or ():
        mask = _place_lesion(spec, anatomy, sp, rng)
        (ggo_mask if spec.kind == "ggo" else cons_mask)[mask] = True
    if ggo_mask.any():
        # GGO: part of the air space fills with fluid towards ~0 HU; vessels keep their value.
        fill = rng.uniform(0.40, 0.55)
        texture = random_lesion_field(shape, spacing, rng, 3.0)
        rise = np.clip(fill * (1.0 + 0.15 * texture), 0.2, 0.8) * (0.0 - hu)
        hu = np.where(ggo_mask, hu + np.maximum(rise, 0.0), hu)
        labels[ggo_mask] = GGO
    if cons_mask.any():
        level = rng.uniform(0.0, 40.0)
        texture = random_lesion_field(shape, spacing, rng, 3.0)
        hu = np.where(cons_mask, level + 12.0 * texture, hu)
        labels[cons_mask] = CONSOLIDATION

    # Point-spread blur (partial volume), then correlated low-dose noise.
    hu = ndimage.gaussian_filter(hu, sigma=(0.3, 0.6, 0.6))
    if noise_sd_hu > 0:
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=(0, 0.7, 0.7))
        hu += noise * (noise_sd_hu / max(float(noise.std()), 1e-6))
    hu_int = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return Phantom(hu=hu_int, labels=labels, spacing=spacing, airway=anatomy.airway)


# --------------------------------------------------------------------------- DICOM


def _series_template(
    phantom: Phantom,
    *,
    patient_name: str,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_description: str,
    accession_number: str,
    patient_age: str,
    patient_sex: str,
) -> Dataset:
    """Attributes shared by every slice: patient, study, series, equipment, CT image."""
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AccessionNumber = accession_number
    ds.Modality = "CT"
    ds.Manufacturer = "ldct-node synthetic phantom"
    ds.ManufacturerModelName = "inference.synthetic"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST LOW DOSE"
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient_sex
    ds.PatientAge = patient_age
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = f"{phantom.spacing[0]:g}"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = f"{phantom.hu.shape[2] * phantom.spacing[2]:.1f}"
    ds.GantryDetectorTilt = "0"
    ds.XRayTubeCurrent = 40
    ds.ExposureTime = 500
    ds.Exposure = 20
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(phantom.hu.shape[1]), int(phantom.hu.shape[2])
    ds.PixelSpacing = [f"{phantom.spacing[1]:g}", f"{phantom.spacing[2]:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"
    return ds


def write_series(
    phantom: Phantom,
    folder: Path | str,
    *,
    patient_name: str = "Synthetic^Phantom",
    patient_id: str = "SYN0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "LOW DOSE CHEST",
    accession_number: str | None = None,
    patient_age: str = "055Y",
    patient_sex: str = "M",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write one CT Image Storage file per slice into `folder`; return their paths.

    Pixels are unsigned 12-bit stored values with RescaleIntercept -1024 (HU = value - 1024),
    so every codec in `COMPRESSED_SYNTAXES` can encode them losslessly. The first slice
    (lowest) is instance 1 at z = -(slices-1) * dz ... the top slice at z = 0 is the last.
    """
    syntax = UID(str(transfer_syntax))
    if syntax not in UNCOMPRESSED_SYNTAXES and syntax not in COMPRESSED_SYNTAXES:
        raise SeriesWriteError(
            f"cannot write transfer syntax {syntax} ({syntax.name}): no encoder installed;"
            f" use one of {[str(s.name) for s in UNCOMPRESSED_SYNTAXES + COMPRESSED_SYNTAXES]}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    template = _series_template(
        phantom,
        patient_name=patient_name,
        patient_id=patient_id,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_uid=generate_uid(),
        series_description=series_description,
        accession_number=accession_number or "",
        patient_age=patient_age,
        patient_sex=patient_sex,
    )
    nz, ny, nx = phantom.hu.shape
    dz, dy, dx = phantom.spacing
    x0, y0 = -(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy
    z_top = 0.0
    stored = (np.clip(phantom.hu, HU_MIN, HU_MAX).astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
    paths = []
    for k in range(nz):
        ds = copy.deepcopy(template)
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        z_mm = z_top - (nz - 1 - k) * dz
        ds.ImagePositionPatient = [f"{x0:.3f}", f"{y0:.3f}", f"{z_mm:.3f}"]
        ds.SliceLocation = f"{z_mm:.3f}"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        if syntax in COMPRESSED_SYNTAXES:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            try:
                ds.compress(syntax, np.ascontiguousarray(stored[k]), generate_instance_uid=False)
            except (RuntimeError, ValueError, ImportError) as exc:
                raise SeriesWriteError(f"encoding with {syntax.name} failed: {exc}") from exc
        else:
            ds.file_meta.TransferSyntaxUID = syntax
            ds.PixelData = stored[k].tobytes()
        path = folder / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    log.info(
        "synthetic series written",
        series_uid=series_uid,
        slices=nz,
        transfer_syntax=str(syntax.name),
    )
    return paths
