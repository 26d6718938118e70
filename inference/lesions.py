"""Synthetic COVID-19-like lesions inserted into real CT anatomy, with the labels they imply.

Why: no permissively licensed COVID-19 CT with voxel labels is available, so the CNN is
trained on real lungs (LIDC-IDRI) into which ground-glass opacity (GGO) and consolidation
are painted in HU space. The physics is a mixing model: a lung voxel holds air and tissue,
and disease fills part of the air space with fluid/cells of attenuation ~`fill_hu`:

    hu_new = hu + occupancy * fill_fraction * (fill_hu - hu)

- GGO: fill_fraction 0.25-0.6 towards ~0 HU. The rise is proportional to the air in the
  voxel, so parenchyma (-850 HU) rises to about -700..-350 HU while vessels (~+40 HU) keep
  their value: vessels stay visible through the haze ("add, don't replace").
- Consolidation: fill_fraction 0.8-1.0 towards -350..+40 HU: vessels are hidden. Air
  bronchograms are thin tubes (intersection of the zero sets of two smooth random fields,
  i.e. curves in 3D) that stay at air attenuation inside the consolidation.

Shapes come from thresholded, Gaussian-smoothed random fields biased by a site weight that
favours the periphery (distance to the lung boundary), posterior rows and lower slices,
both lungs, several foci. The lesion occupancy has a soft ramp (partial-volume border).

Label rule (stated, used for training and tests): a lung voxel is labelled lesion where the
occupancy is >= 0.5 (at least half of the full opacity is present); it is labelled
consolidation where the consolidation occupancy is >= 0.5, else GGO. Labels:
0 background, 1 normal lung, 2 GGO, 3 consolidation (as in `inference.quantify`).

Orientation assumptions (standard axial CT as loaded by `inference.volume`): slice 0 is the
lowest (feet-most) slice, image rows increase towards the patient's back (posterior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.quantify import BACKGROUND, CONSOLIDATION, GGO, NORMAL_LUNG

OCCUPANCY_LABEL_THRESHOLD = 0.5


class LesionError(ValueError):
    """Bad input to lesion synthesis (shape mismatch, empty lung mask)."""


@dataclass(frozen=True)
class LesionParameters:
    """The random draws of one `insert_lesions` call, kept for logging and tests."""

    target_extent_pct: float
    consolidation_fraction: float
    correlation_mm: float
    ggo_fill_fraction: float
    consolidation_fill_hu: float
    noise_sd_hu: float
    patterns: tuple[str, ...] = ()


def random_lesion_field(
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    rng: np.random.Generator,
    correlation_mm: float = 12.0,
) -> np.ndarray:
    """A smooth Gaussian random field (float32, zero mean, unit SD) of the given shape.

    Correlation length `correlation_mm` is the Gaussian smoothing sigma in millimetres. The
    field is drawn on a coarse grid (about sigma/2 per cell) and interpolated up: the same
    statistics as smoothing at full resolution, at a small fraction of the cost.
    """
    spacing_arr = np.asarray(spacing, dtype=float)
    coarse_step_mm = max(correlation_mm / 2.0, float(spacing_arr.min()))
    factors = np.maximum(1.0, coarse_step_mm / spacing_arr)
    coarse_shape = tuple(int(np.ceil(n / f)) + 3 for n, f in zip(shape, factors, strict=True))
    sigma_cells = [correlation_mm / (s * f) for s, f in zip(spacing_arr, factors, strict=True)]
    noise = rng.standard_normal(coarse_shape).astype(np.float32)
    coarse = ndimage.gaussian_filter(noise, sigma=sigma_cells, mode="wrap")
    zoom = [(n + 3 * f) / c for n, f, c in zip(shape, factors, coarse_shape, strict=True)]
    fine = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)
    fine = fine[tuple(slice(0, n) for n in shape)]
    if fine.shape != tuple(shape):  # rounding in zoom: pad by edge values
        pad = [(0, n - m) for n, m in zip(shape, fine.shape, strict=True)]
        fine = np.pad(fine, pad, mode="edge")
    fine = fine - fine.mean()
    sd = float(fine.std())
    return (fine / sd if sd > 0 else fine).astype(np.float32)


def lesion_site_weight(lung_mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Log-weight (float32) of where COVID-19 lesions sit: subpleural, posterior, lower lobes.

    Returned as an additive bias for the random field (in field-SD units): about +1.2 at
    the pleura falling to 0 at 25 mm depth, +0.5 posterior vs anterior, +0.5 lower vs upper.
    """
    depth_mm = ndimage.distance_transform_edt(lung_mask, sampling=spacing).astype(np.float32)
    peripheral = 1.2 * np.exp(-depth_mm / 12.0)
    z_idx, y_idx, _ = np.nonzero(lung_mask)
    z0, z1 = z_idx.min(), max(z_idx.max(), z_idx.min() + 1)
    y0, y1 = y_idx.min(), max(y_idx.max(), y_idx.min() + 1)
    nz, ny = lung_mask.shape[:2]
    z_rel = np.clip((np.arange(nz, dtype=np.float32) - z0) / (z1 - z0), 0, 1)
    y_rel = np.clip((np.arange(ny, dtype=np.float32) - y0) / (y1 - y0), 0, 1)
    lower = 0.5 * (1.0 - z_rel)[:, None, None]
    posterior = 0.5 * y_rel[None, :, None]
    return (peripheral + lower + posterior).astype(np.float32)


def _soft_occupancy(score: np.ndarray, threshold: float, softness: float) -> np.ndarray:
    """Partial-volume ramp: 0 below threshold-softness, 1 above threshold+softness."""
    return np.clip((score - threshold) / (2.0 * softness) + 0.5, 0.0, 1.0).astype(np.float32)


def _threshold_for_fraction(values: np.ndarray, fraction: float) -> float:
    """The value above which `fraction` of `values` lie."""
    fraction = float(np.clip(fraction, 1e-6, 1.0))
    return float(np.quantile(values, 1.0 - fraction))


def sample_target_extent(rng: np.random.Generator) -> float:
    """Lesion extent (% of lung) drawn log-uniformly from small foci (0.5%) to over half the lung (55%)."""
    return float(np.exp(rng.uniform(np.log(0.5), np.log(55.0))))


def insert_lesions(
    hu: np.ndarray,
    lung_mask: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    target_extent_pct: float | None = None,
    consolidation_fraction: float | None = None,
    correlation_mm: float | None = None,
    noise_sd_hu: float | None = None,
    style: LesionStyle | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert GGO and consolidation into the lungs of a HU volume.

    hu: int16 (z, y, x) HU; lung_mask: bool, same shape; spacing (dz, dy, dx) mm.
    target_extent_pct: lesion volume as % of lung (random log-uniform 0.5-55 if None; 0 gives
    no lesion, only noise). consolidation_fraction: share of the lesion that is
    consolidation (random 0-0.6 if None). correlation_mm: blob size (random 5-16 mm).
    noise_sd_hu: added low-dose noise SD (random 0-35 HU if None; 0 for none).
    style: None for the classic blobs (the lesions of the held-out evaluation, unchanged since
    ldct-unet 0.1.0), or a `LesionStyle` for the radiological patterns (`COVID_STYLE`).

    Returns (hu_with_lesions int16, labels uint8 with 0 bg, 1 lung, 2 GGO, 3 consolidation).
    A 2D input (y, x) is accepted and treated as one slice.
    """
    hu_out, labels, _ = insert_lesions_with_parameters(
        hu,
        lung_mask,
        spacing,
        rng,
        target_extent_pct=target_extent_pct,
        consolidation_fraction=consolidation_fraction,
        correlation_mm=correlation_mm,
        noise_sd_hu=noise_sd_hu,
        style=style,
    )
    return hu_out, labels


def insert_lesions_with_parameters(
    hu: np.ndarray,
    lung_mask: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    target_extent_pct: float | None = None,
    consolidation_fraction: float | None = None,
    correlation_mm: float | None = None,
    noise_sd_hu: float | None = None,
    style: LesionStyle | None = None,
) -> tuple[np.ndarray, np.ndarray, LesionParameters]:
    """`insert_lesions`, also returning the parameters that were drawn."""
    squeeze = hu.ndim == 2
    if squeeze:
        hu, lung_mask = hu[None], lung_mask[None]
        spacing = (max(spacing[0], 10.0) if len(spacing) == 3 else 10.0, *spacing[-2:])
    if hu.shape != lung_mask.shape or hu.ndim != 3:
        raise LesionError(f"hu {hu.shape} and lung mask {lung_mask.shape} must be one 3D shape")
    lung = lung_mask.astype(bool)
    if not lung.any():
        raise LesionError("the lung mask is empty: nowhere to put lesions")

    extent = sample_target_extent(rng) if target_extent_pct is None else float(target_extent_pct)
    cons_share = rng.uniform(0.0, 0.6) if consolidation_fraction is None else consolidation_fraction
    corr = rng.uniform(5.0, 16.0) if correlation_mm is None else float(correlation_mm)
    noise_sd = rng.uniform(0.0, 35.0) if noise_sd_hu is None else float(noise_sd_hu)
    ggo_fill = rng.uniform(0.25, 0.6)
    cons_fill_hu = rng.uniform(-350.0, 40.0)
    if style is not None:
        hu_out, labels, params = _insert_styled(
            hu, lung, spacing, rng, style, target_extent_pct, consolidation_fraction, correlation_mm, noise_sd_hu
        )
        return (hu_out[0], labels[0], params) if squeeze else (hu_out, labels, params)
    params = LesionParameters(extent, float(cons_share), corr, ggo_fill, cons_fill_hu, noise_sd)

    hu_f = hu.astype(np.float32)
    labels = np.where(lung, NORMAL_LUNG, BACKGROUND).astype(np.uint8)

    if extent > 0:
        field = random_lesion_field(hu.shape, spacing, rng, corr)
        score = field + lesion_site_weight(lung, spacing)
        lung_scores = score[lung]
        softness = 0.12
        threshold = _threshold_for_fraction(lung_scores, extent / 100.0)
        occupancy = _soft_occupancy(score, threshold, softness) * lung
        # Consolidation: the densest core of the lesion (GGO rims around it), at a share.
        cons_threshold = threshold + 1e9
        if cons_share > 0:
            cons_threshold = _threshold_for_fraction(lung_scores, extent / 100.0 * cons_share)
        cons_occupancy = _soft_occupancy(score, cons_threshold, softness) * lung
        # Texture: the GGO fill varies inside the lesion (crazy-paving-like heterogeneity).
        texture = random_lesion_field(hu.shape, spacing, rng, 3.0)
        ggo_fraction = np.clip(ggo_fill * (1.0 + 0.25 * texture), 0.1, 0.8)
        ggo_rise = occupancy * ggo_fraction * (0.0 - hu_f)
        ggo_rise = np.maximum(ggo_rise, 0.0)  # fill never darkens dense tissue
        hu_f = hu_f + ggo_rise
        cons_target = cons_fill_hu + 40.0 * texture
        cons_weight = cons_occupancy * rng.uniform(0.8, 1.0)
        # Air bronchograms: thin tubes where two smooth fields are both near zero.
        tube_a = random_lesion_field(hu.shape, spacing, rng, 6.0)
        tube_b = random_lesion_field(hu.shape, spacing, rng, 6.0)
        bronchi = (np.abs(tube_a) < 0.12) & (np.abs(tube_b) < 0.5) & (cons_occupancy > 0.7)
        cons_weight = np.where(bronchi, 0.0, cons_weight)
        hu_f = hu_f + cons_weight * (cons_target - hu_f)
        hu_f = np.where(bronchi, np.minimum(hu_f, rng.uniform(-950.0, -850.0)), hu_f)

        lesion = lung & (occupancy >= OCCUPANCY_LABEL_THRESHOLD)
        labels[lesion] = GGO
        labels[lesion & (cons_occupancy >= OCCUPANCY_LABEL_THRESHOLD)] = CONSOLIDATION

    hu_out = _with_noise(hu_f, noise_sd, rng, hu > -1500)
    if squeeze:
        return hu_out[0], labels[0], params
    return hu_out, labels, params


def _with_noise(hu_f: np.ndarray, noise_sd: float, rng: np.random.Generator, inside_field: np.ndarray) -> np.ndarray:
    """Low-dose noise (in-plane correlated, SD `noise_sd`) inside the field of view, int16 HU."""
    if noise_sd > 0:
        noise = rng.standard_normal(hu_f.shape).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=(0, 0.7, 0.7)) * (noise_sd / 0.4)
        hu_f = hu_f + noise * inside_field
    return np.clip(np.rint(hu_f), -1024, 3071).astype(np.int16)


# ------------------------------------------------------------- radiological patterns

PATTERNS = (
    "crazy_paving",
    "reticulation",
    "subpleural_bands",
    "organising",
    "reversed_halo",
    "heterogeneous_consolidation",
    "dependent_density",
    "perfusion",
)


@dataclass(frozen=True)
class LesionStyle:
    """How COVID-19 looks as radiologists label it: the patterns and where they sit.

    Each insertion draws which patterns it shows (`probability` of each) and how strongly
    lesions prefer the periphery, the posterior rows and the lung bases (site weights in
    field-SD units, drawn from the ranges). Patterns and their labels:

    - crazy_paving: GGO with a superimposed polygonal network of thickened septa (the zero
      set of a 2-4 mm random field: sheets in 3D, lines in a slice); labelled GGO.
    - reticulation: the same network, denser and over fainter GGO; labelled GGO.
    - subpleural_bands: curvilinear bands parallel to the pleura at 2-12 mm depth, mostly
      posterior; labelled GGO, or consolidation where dense (fill >= 0.7).
    - organising: organising-pneumonia consolidation in a subpleural/perilobular shell of the
      lesions; labelled consolidation.
    - reversed_halo: a ring of consolidation around a GGO centre in part of the lesions.
    - heterogeneous_consolidation: consolidation drawn as whole mixed-density regions
      (+-40-160 HU texture, fill 0.6-1.0 varying inside), all labelled consolidation.
    - dependent_density: a smooth posterior gradient of density in the normal lung
      (supine gravity), labelled normal lung: a negative example, not a lesion.
    - perfusion: smooth, patchy variation of the parenchyma's density (+0 to at most 15 %
      of the way to water, 15-40 mm patches: perfusion and mosaic attenuation), labelled
      normal lung: a negative example. A Siemens CT of Lung-PET-CT-Dx has one lung 120 HU
      denser than the other (median -745 vs -870 HU) and no COVID-19.

    GGO fills at least 25 % of the air space (-850 HU lung -> -640 HU or denser): fainter
    haze overlaps normal dense lung, which must read as normal (issue 14).
    """

    probability: tuple[tuple[str, float], ...] = (
        ("crazy_paving", 0.4),
        ("reticulation", 0.25),
        ("subpleural_bands", 0.3),
        ("organising", 0.25),
        ("reversed_halo", 0.15),
        ("heterogeneous_consolidation", 0.6),
        ("dependent_density", 0.5),
        ("perfusion", 0.5),
    )
    peripheral: tuple[float, float] = (0.6, 2.0)
    posterior: tuple[float, float] = (0.2, 1.2)
    basal: tuple[float, float] = (0.2, 1.2)
    extent_pct: tuple[float, float] = (0.3, 60.0)
    ggo_fill: tuple[float, float] = (0.25, 0.6)


COVID_STYLE = LesionStyle()
#: For lesion-free copies of real anatomy: only the patterns that are normal lung.
NORMAL_VARIATION_STYLE = LesionStyle(probability=(("dependent_density", 0.7), ("perfusion", 0.7)))
#: The first version of COVID_STYLE (the open set's first 4000 training steps): GGO from 15 %
#: fill, no perfusion patches, lesion-free copies with dependent density half of the time.
COVID_FAINT_GGO_STYLE = LesionStyle(
    probability=tuple((name, p) for name, p in COVID_STYLE.probability if name != "perfusion"),
    ggo_fill=(0.15, 0.6),
)
#: Training-config names -> (lesion style, style of the lesion-free copies); None: classic blobs.
STYLES: dict[str, tuple[LesionStyle | None, LesionStyle | None]] = {
    "classic": (None, None),
    "covid": (COVID_STYLE, NORMAL_VARIATION_STYLE),
    "covid-faint-ggo": (COVID_FAINT_GGO_STYLE, COVID_FAINT_GGO_STYLE),
}


def _rows_to_posterior_edge(lung: np.ndarray) -> np.ndarray:
    """Rows from each voxel to the next non-lung voxel in the posterior (+row) direction."""
    ny = lung.shape[1]
    rows = np.arange(ny, dtype=np.int16)[None, :, None]
    index = np.where(lung, np.int16(ny), rows)
    following = np.minimum.accumulate(index[:, ::-1, :], axis=1)[:, ::-1, :]
    return (following - rows).astype(np.int16)


def _relative_position(lung: np.ndarray, axis: int) -> np.ndarray:
    """0..1 position along `axis` within the lung's extent (broadcastable)."""
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(lung.any(axis=other))
    low, high = present[0], max(present[-1], present[0] + 1)
    rel = np.clip((np.arange(lung.shape[axis], dtype=np.float32) - low) / (high - low), 0, 1)
    shape = [1, 1, 1]
    shape[axis] = -1
    return rel.reshape(shape)


def _insert_styled(
    hu: np.ndarray,
    lung: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    style: LesionStyle,
    target_extent_pct: float | None,
    consolidation_fraction: float | None,
    correlation_mm: float | None,
    noise_sd_hu: float | None,
) -> tuple[np.ndarray, np.ndarray, LesionParameters]:
    """`insert_lesions` with the radiological patterns of `style` (see `LesionStyle`)."""
    low, high = style.extent_pct
    extent = (
        float(np.exp(rng.uniform(np.log(low), np.log(high)))) if target_extent_pct is None else float(target_extent_pct)
    )
    cons_share = rng.uniform(0.0, 0.7) if consolidation_fraction is None else consolidation_fraction
    corr = rng.uniform(4.0, 18.0) if correlation_mm is None else float(correlation_mm)
    noise_sd = rng.uniform(0.0, 35.0) if noise_sd_hu is None else float(noise_sd_hu)
    ggo_fill = rng.uniform(*style.ggo_fill)
    cons_fill_hu = rng.uniform(-300.0, 40.0)
    patterns = tuple(name for name, p in style.probability if rng.random() < p)
    params = LesionParameters(extent, float(cons_share), corr, ggo_fill, cons_fill_hu, noise_sd, patterns)
    hu_f = hu.astype(np.float32)
    labels = np.where(lung, NORMAL_LUNG, BACKGROUND).astype(np.uint8)
    depth = ndimage.distance_transform_edt(lung, sampling=spacing).astype(np.float32)
    z_rel, y_rel = _relative_position(lung, 0), _relative_position(lung, 1)

    if "dependent_density" in patterns:
        posterior_mm = _rows_to_posterior_edge(lung).astype(np.float32) * spacing[1]
        strength = rng.uniform(0.04, 0.18) * (0.5 + 0.5 * (1.0 - z_rel))
        rise = lung * strength * np.exp(-posterior_mm / rng.uniform(5.0, 20.0)) * (0.0 - hu_f)
        hu_f += np.maximum(rise, 0.0)
        del posterior_mm, rise
    if "perfusion" in patterns:
        patches = random_lesion_field(hu.shape, spacing, rng, rng.uniform(15.0, 40.0))
        fill = np.clip(patches * rng.uniform(0.04, 0.08), 0.0, 0.15)
        hu_f += np.maximum(lung * fill * (0.0 - hu_f), 0.0)
        del patches, fill

    if extent > 0:
        site = (
            rng.uniform(*style.peripheral) * np.exp(-depth / rng.uniform(6.0, 15.0))
            + rng.uniform(*style.basal) * (1.0 - z_rel)
            + rng.uniform(*style.posterior) * y_rel
        )
        score = random_lesion_field(hu.shape, spacing, rng, corr) + site
        del site
        lung_scores = score[lung]
        softness = 0.12
        threshold = _threshold_for_fraction(lung_scores, extent / 100.0)
        occupancy = _soft_occupancy(score, threshold, softness) * lung
        cons_threshold = (
            _threshold_for_fraction(lung_scores, extent / 100.0 * cons_share) if cons_share > 0 else threshold + 1e9
        )
        cons_occupancy = _soft_occupancy(score, cons_threshold, softness) * lung
        lesion = occupancy >= OCCUPANCY_LABEL_THRESHOLD
        if "organising" in patterns:  # consolidation in a subpleural shell of the lesions
            shell = lesion & (depth < rng.uniform(3.0, 10.0))
            cons_occupancy = np.maximum(cons_occupancy, shell * occupancy)
        if "reversed_halo" in patterns:  # consolidated rim, GGO centre, in part of the lesions
            chosen = random_lesion_field(hu.shape, spacing, rng, 25.0) > rng.uniform(-0.5, 0.5)
            inner = _threshold_for_fraction(lung_scores, extent / 100.0 * rng.uniform(0.4, 0.65))
            rim = chosen & lesion & (score < inner)
            centre = chosen & (score >= inner)
            cons_occupancy = np.where(centre, 0.0, np.maximum(cons_occupancy, rim * occupancy))
        del lung_scores

        texture = random_lesion_field(hu.shape, spacing, rng, 3.0)
        ggo_fraction = np.clip(ggo_fill * (1.0 + 0.3 * texture), 0.05, 0.8)
        for name, cell_mm, extra in (
            ("crazy_paving", (2.0, 3.5), (0.2, 0.4)),
            ("reticulation", (1.5, 3.0), (0.3, 0.55)),
        ):
            if name in patterns:  # septal network over part of the GGO
                net = np.abs(random_lesion_field(hu.shape, spacing, rng, rng.uniform(*cell_mm)))
                region = random_lesion_field(hu.shape, spacing, rng, 15.0) > rng.uniform(-0.8, 0.3)
                lines = (net < rng.uniform(0.1, 0.2)) & region
                if name == "reticulation":
                    ggo_fraction = np.where(region, ggo_fraction * 0.6, ggo_fraction)
                ggo_fraction = np.where(lines, np.minimum(ggo_fraction + rng.uniform(*extra), 0.9), ggo_fraction)
                del net, region, lines
        hu_f += np.maximum(occupancy * ggo_fraction * (0.0 - hu_f), 0.0)
        del ggo_fraction

        amplitude = 40.0
        weight_low = 0.8
        if "heterogeneous_consolidation" in patterns:
            amplitude, weight_low = rng.uniform(60.0, 160.0), rng.uniform(0.6, 0.85)
        mixed = random_lesion_field(hu.shape, spacing, rng, 4.0)
        cons_weight = cons_occupancy * np.clip(rng.uniform(weight_low, 1.0) + 0.1 * mixed, 0.5, 1.0)
        del mixed
        cons_target = cons_fill_hu + amplitude * texture
        tube_a = random_lesion_field(hu.shape, spacing, rng, 6.0)
        tube_b = random_lesion_field(hu.shape, spacing, rng, 6.0)
        bronchi = (np.abs(tube_a) < 0.12) & (np.abs(tube_b) < 0.5) & (cons_occupancy > 0.7)
        del tube_a, tube_b
        cons_weight = np.where(bronchi, 0.0, cons_weight)
        hu_f += cons_weight * (cons_target - hu_f)
        hu_f = np.where(bronchi, np.minimum(hu_f, rng.uniform(-950.0, -850.0)), hu_f)
        labels[lung & lesion] = GGO
        labels[lung & lesion & (cons_occupancy >= OCCUPANCY_LABEL_THRESHOLD)] = CONSOLIDATION
        del cons_weight, cons_target, texture, bronchi, occupancy, cons_occupancy, score

    if extent > 0 and "subpleural_bands" in patterns:
        centre_mm, width_mm = rng.uniform(2.0, 10.0), rng.uniform(1.5, 3.5)
        arcs = random_lesion_field(hu.shape, spacing, rng, 20.0) + 2.0 * y_rel > rng.uniform(1.2, 2.0)
        band = lung & arcs & (np.abs(depth - centre_mm) < width_mm / 2)
        band_fill = float(rng.uniform(0.45, 0.85))
        hu_f = np.where(band, hu_f + np.maximum(band_fill * (0.0 - hu_f), 0.0), hu_f)
        labels[band & (labels == NORMAL_LUNG)] = CONSOLIDATION if band_fill >= 0.7 else GGO
        del arcs, band

    return _with_noise(hu_f, noise_sd, rng, hu > -1500), labels, params
