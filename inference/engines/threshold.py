"""Classical lung and lesion segmentation by HU thresholds and morphology (no learning).

Why: a transparent baseline and fallback that needs no weights and no GPU, whose behaviour
can be explained line by line. Steps, on an int16 HU volume (z, y, x), slice 0 the lowest:

1. Body: voxels above -500 HU (soft tissue, bone), opened in-plane to cut thin bridges to
   the table and blankets; the largest 3D component, its holes filled slice by slice. Air
   outside this mask (room air, FOV padding) can never be lung.
2. Air-like voxels inside the body below `LUNG_AIR_HU` = -300 HU. The cut sits at the top
   of the GGO band so that ground-glass parenchyma still counts as lung here; fat (-100)
   and muscle (+50) stay well above it even with low-dose noise (SD 20-40 HU).
3. Airway: the trachea is found on the highest slices as a compact (30-1200 mm2) very dark
   (< -900 HU) component near the body's midline; it is grown in 3D below -900 HU, a
   threshold lowered in steps to -975 HU while the grown volume exceeds 250 ml (a leak
   into the lungs; low-dose noise and partial volume break thin bronchi at stricter
   thresholds), dilated by 3 mm in-plane (the bronchial wall and its partial-volume rim)
   and removed, so the trachea and main bronchi are not lung.
4. Lungs: 3D components of the remaining air; components touching the in-plane border are
   dropped; the largest is kept, and the second if it has at least 15% of the largest's
   volume (stomach/bowel gas is smaller). One merged component (lungs touching at the
   anterior junction line) is cut per slice at its thinnest neck across the midline
   (erosion until it falls apart) so that the two lungs are handled apart.
5. Dense lesions are not air, so they are added back per slice and per lung: the lung's
   holes (vessels, enclosed lesions) and its bites (2D convex hull minus the filled lung:
   consolidation against the pleura), without bone (> +300 HU). Going up from the lowest
   slice, a hole or bite piece is kept only if at most half of its footprint on the slice
   below is non-lung body: what rises from the abdomen (diaphragm domes, seen as islands
   or bays of the lung bases, liver, heart, aorta, paravertebral muscle) is rejected,
   lesions sitting on lung are kept. Holes under 80 mm2 (vessels seen across) are always
   kept. Nothing is ever added in the mediastinal gap (columns between the two lungs on
   rows in front of the vertebral body), but pieces are judged with their part in it, so
   a hilum is rejected together with the mediastinum it belongs to.
6. Classes inside the lung by density (bands below), then an in-plane opening with a 3 mm
   disk and removal of pieces < 20 mm2 per slice, so that vessels and bronchial walls
   (tubes < ~6 mm wide) are not called lesion; dense voxels inside GGO that do not survive
   the opening on their own (vessels crossing GGO) stay GGO; a thin rim (narrower than
   the opening) of GGO-dense voxels >= -500 HU touching consolidation is its
   partial-volume border and joins it.

Density bands (HU). Normal lung < -700: "well-aerated lung" is -950..-700 HU in quantitative
COVID-19 CT (Colombi D. et al., Radiology 2020;296:E86-E96), so anything denser is
abnormal. GGO -700..-300, consolidation >= -300: the ARDS/COVID-19 literature splits the
abnormal range into poorly aerated (-500..-100) and non-aerated (-100..+100) tissue
(Gattinoni's bands); GGO, "hazy increase that does not obscure the vessels", mostly lies
between -700 and -300 HU, and -300 is our pragmatic cut between the two (a choice, not a
value taken from one reference); non-aerated tissue falls in consolidation.

Known limits: against the chest wall the convex hull cuts a chord through a consolidation,
so the crescent between chord and wall is lost (large near the apex, where the lung is
small and curved; ~15% of a 40 ml posterolateral consolidation on the phantom); a lesion
resting on the diaphragm is rejected with the dome, slice after slice up the lesion;
consolidation beside the mediastinum in front of the spine is cut with the gap; vessels
wider than ~6 mm enclosed by lung survive the opening and count as consolidation; GGO's
partial-volume border (-650 HU half way to lung) is GGO at the -700 cut; dependent
(posterior) atelectasis and expiratory scans raise GGO; an airway tree that leaks at every
threshold (emphysema) is not removed (a warning is logged).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import structlog
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from inference.engines import Progress
from inference.quantify import BACKGROUND, CONSOLIDATION, GGO, NORMAL_LUNG
from inference.volume import CTVolume
from inference.voxels import SlabComponents, label_components, lookup, value_counts

log = structlog.get_logger(__name__)

BODY_HU = -500
LUNG_AIR_HU = -300
TRACHEA_SEED_HU = -900
AIRWAY_GROW_HU = (-900, -925, -950, -975)
NORMAL_MAX_HU = -700  # below: normal (well-aerated) lung
GGO_MAX_HU = -300  # -700..-300: GGO; at or above: consolidation
BONE_HU = 300
# A consolidation border voxel half filled with consolidation (~0 HU) and half with lung
# (~-850 HU) reads about -420 HU: GGO by density. Thin GGO rims touching consolidation
# at or above this value are partial volume and join the consolidation.
PARTIAL_VOLUME_CONS_HU = -500


class ThresholdSegmentationError(ValueError):
    """The volume does not look like a chest CT this engine can segment."""


@dataclass(frozen=True)
class ThresholdParameters:
    """Tunable sizes (mm, mm2, ml) of the threshold engine; the defaults are documented above."""

    opening_radius_mm: float = 3.0
    min_lesion_area_mm2: float = 20.0
    airway_dilation_mm: float = 3.0
    max_airway_ml: float = 250.0
    second_lung_min_fraction: float = 0.15
    min_lung_ml: float = 100.0
    min_judged_area_mm2: float = 80.0


def _disk(radius_px: float) -> np.ndarray:
    r = max(int(np.floor(radius_px)), 0)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= radius_px**2 + 1e-6


def _bbox_2d(mask: np.ndarray, pad: int, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, shape[0])),
        slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, shape[1])),
    )


def coarse_body_mask(hu: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, int]:
    """The patient's body with its cavities filled, on a ~1.2 mm grid: (mask, subsampling factor).

    The largest 3D component above -500 HU after cutting thin bridges (table, blankets,
    cables), holes filled slice by slice. Raises ThresholdSegmentationError without a body.
    """
    factor = max(1, round(1.2 / max(spacing[1], spacing[2])))
    coarse = hu[:, ::factor, ::factor] > BODY_HU
    opening = _disk(2.0 / (max(spacing[1], spacing[2]) * factor))
    for k in range(coarse.shape[0]):
        coarse[k] = ndimage.binary_opening(coarse[k], structure=opening)
    # The largest component, found slab by slab: a whole-volume label array of a noisy
    # 0.84 mm series (factor 1) held 1 GB (int32) at 1000 slices (issue 14, bench_memory.py).
    components = SlabComponents(coarse)
    if components.count == 0:
        raise ThresholdSegmentationError("no body found: no voxel above -500 HU")
    largest = int(np.argmax(components.sizes))
    for part, numbers in components.slab_numbers():
        coarse[part] = numbers == largest
    for k in range(coarse.shape[0]):
        coarse[k] = ndimage.binary_fill_holes(coarse[k])
    return coarse, factor


def upsample_slice(coarse: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """A coarse 2D mask back on the full grid (nearest neighbour)."""
    return np.repeat(np.repeat(coarse, factor, axis=0), factor, axis=1)[: shape[0], : shape[1]]


def _largest_components(
    labels: np.ndarray, count: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Label ids sorted by size (largest first) and their sizes, background and `exclude` excluded.

    The sizes are those of the labels with `exclude` zeroed, without zeroing them (no copy).
    """
    sizes = value_counts(labels)
    sizes[0] = 0
    if exclude is not None:
        sizes[exclude] = 0
        nonzero = np.flatnonzero(sizes)
        sizes = sizes[: nonzero[-1] + 1 if nonzero.size else 1]  # the length bincount gives then
    order = np.argsort(sizes)[::-1][:count]
    order = order[sizes[order] > 0]
    return order, sizes[order]


class ThresholdEngine:
    """Lungs by air threshold + morphology, GGO/consolidation by HU bands (module docstring)."""

    name = "threshold"
    version = "1.0"
    algorithm_name = "ldct-node threshold"

    def __init__(self, parameters: ThresholdParameters | None = None) -> None:
        self.parameters = parameters or ThresholdParameters()

    # ------------------------------------------------------------------ public

    def segment(self, volume: CTVolume, progress: Progress | None = None) -> np.ndarray:
        """Label map (uint8, shaped like volume.hu): 0 bg, 1 normal lung, 2 GGO, 3 cons."""
        hu = volume.hu
        if hu.ndim != 3 or min(hu.shape) < 2:
            raise ThresholdSegmentationError(f"need a 3D volume of several slices, got {hu.shape}")
        nz = hu.shape[0]
        total = 2 * nz + 3
        done = 0

        def step(n: int = 1) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        spacing = (float(volume.spacing[0]), float(volume.spacing[1]), float(volume.spacing[2]))
        body = self.body_mask(hu, spacing)
        step()
        # Work inside the body's bounding box: less memory and time for wide fields of view.
        box = _bbox_2d(np.asarray(body.any(axis=0)), 1, hu.shape[1:])
        if box is None:
            raise ThresholdSegmentationError("no body found")
        full_shape = hu.shape
        hu = hu[:, box[0], box[1]]
        body = np.ascontiguousarray(body[:, box[0], box[1]])
        # Whole-volume masks are made in place and dropped once used: a 1000-slice series
        # must fit in 2 GB (benchmarks/bench_memory.py).
        airway = self.airway_mask(hu, body, spacing)
        airway_found = airway is not None
        air = hu < LUNG_AIR_HU
        air &= body
        if airway_found:
            air[airway] = False
        del airway
        step()
        lungs = self.lung_components(air, spacing)
        del air
        step()
        # Removed airway voxels come back only where the lung encloses them (intrapulmonary
        # bronchi); trachea and main bronchi lie in the mediastinal gap and stay out.
        lungs = self.add_dense_lung(hu, lungs, body, spacing, step)
        del body
        labels = np.zeros(full_shape, dtype=np.uint8)
        labels[:, box[0], box[1]] = self.classify(hu, lungs, spacing, step)
        log.info(
            "threshold segmentation done",
            series_uid=_series_uid(volume),
            lung_ml=round(float(np.count_nonzero(labels)) * volume.voxel_volume_ml, 1),
            airway_found=airway_found,
        )
        return labels

    # ------------------------------------------------------------------ steps

    def body_mask(self, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        """Patient body with its cavities (lungs, airways) filled, slice by slice."""
        coarse, factor = coarse_body_mask(hu, spacing)
        if factor == 1:
            return coarse
        body = np.empty(hu.shape, dtype=bool)
        for k in range(coarse.shape[0]):  # slice by slice: no whole-volume intermediate
            body[k] = upsample_slice(coarse[k], factor, hu.shape[1:])
        return body

    def airway_mask(self, hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray | None:
        """Trachea and main bronchi (dilated), or None when no trachea is found on top slices."""
        p = self.parameters
        nz, _ny, nx = hu.shape
        pixel_area = spacing[1] * spacing[2]
        seed = None
        for k in range(nz - 1, nz // 3, -1):  # from the top down
            body_cols = np.flatnonzero(body[k].any(axis=0))
            body_rows = np.flatnonzero(body[k].any(axis=1))
            if body_cols.size == 0:
                continue
            centre_x = 0.5 * (body_cols[0] + body_cols[-1])
            width = body_cols[-1] - body_cols[0] + 1
            comps, n = ndimage.label((hu[k] < TRACHEA_SEED_HU) & body[k])
            if n == 0:
                continue
            areas = np.bincount(comps.ravel())[1:] * pixel_area
            centroids = ndimage.center_of_mass(np.ones_like(comps), comps, range(1, n + 1))
            best = None
            for i, (area, (cy, cx)) in enumerate(zip(areas, centroids, strict=True), start=1):
                central = abs(cx - centre_x) < 0.15 * width
                front = cy < body_rows[0] + 0.7 * (body_rows[-1] - body_rows[0])
                if 30.0 <= area <= 1200.0 and central and front and (best is None or abs(cx - centre_x) < best[0]):
                    best = (abs(cx - centre_x), i)
            if best is not None:
                seed = (k, comps == best[1])
                break
        if seed is None:
            log.warning("no trachea found on the upper slices; airways are not removed")
            return None

        k_seed, seed_mask = seed
        x_lo, x_hi = int(nx * 0.2), int(nx * 0.8)  # airway tree near the midline is enough
        hu_box = hu[:, :, x_lo:x_hi]
        body_box = body[:, :, x_lo:x_hi]
        seed_box = seed_mask[:, x_lo:x_hi]
        voxel_ml = float(np.prod(spacing)) / 1000.0
        for threshold in AIRWAY_GROW_HU:
            if not seed_box.any():  # the seed lies outside the midline band
                continue
            candidate = hu_box < threshold
            candidate &= body_box
            candidate[k_seed] |= seed_box
            # The candidate's 3D components (6-connected) that hold the seed, grown from it:
            # labelling them all would number >100k noise specks in a whole-volume array.
            grown = np.zeros(candidate.shape, dtype=bool)
            grown[k_seed] = seed_box
            grown = ndimage.binary_propagation(grown, mask=candidate)
            del candidate
            volume_ml = float(np.count_nonzero(grown)) * voxel_ml
            if volume_ml <= p.max_airway_ml:
                disk = _disk(max(1.5, p.airway_dilation_mm / min(spacing[1], spacing[2])))
                airway = np.zeros(hu.shape, dtype=bool)
                for k in map(int, np.flatnonzero(grown.any(axis=(1, 2)))):
                    airway[k, :, x_lo:x_hi] = ndimage.binary_dilation(grown[k], structure=disk)
                log.info("airway grown", threshold_hu=threshold, volume_ml=round(volume_ml, 1))
                return airway
            log.info("airway leaked, lowering threshold", threshold_hu=threshold, volume_ml=round(volume_ml, 1))
        log.warning("airway region growing leaked at every threshold; airways are not removed")
        return None

    def lung_components(self, air: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        """The one or two big air components inside the body that are lungs."""
        p = self.parameters
        labels, n = label_components(air)
        if n == 0:
            raise ThresholdSegmentationError("no air inside the body: is this a chest CT?")
        border = np.unique(
            np.concatenate(
                [labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]
            )
        )
        border = border[border > 0]
        ids, sizes = _largest_components(labels, 2, exclude=border)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        if ids.size == 0 or sizes[0] * voxel_ml < p.min_lung_ml:
            raise ThresholdSegmentationError(
                f"no lung found: the largest air region inside the body is"
                f" {sizes[0] * voxel_ml if ids.size else 0:.0f} ml (< {p.min_lung_ml:.0f} ml)"
            )
        keep = [ids[0]]
        if ids.size > 1 and sizes[1] >= p.second_lung_min_fraction * sizes[0]:
            keep.append(ids[1])
        lung_value = np.zeros(n + 1, dtype=np.uint8)  # 1, 2: one value per lung component
        for value, label_id in enumerate(keep, start=1):
            lung_value[label_id] = value
        return lookup(lung_value, labels)

    def add_dense_lung(
        self,
        hu: np.ndarray,
        lungs: np.ndarray,
        body: np.ndarray,
        spacing: tuple[float, float, float],
        step,
    ) -> np.ndarray:
        """Lung mask with enclosed and subpleural dense tissue added back (bool).

        Per slice and per lung, candidates are the holes of the lung (dense tissue it
        encloses) and its bites (2D convex hull minus the filled lung: dense tissue against
        the pleura), without bone; nothing is added in the mediastinal gap. Bottom-up, a
        piece is kept if at most half of its footprint on the slice below is non-lung body.
        This
        rejects what rises from the abdomen into the chest (diaphragm domes, which show
        as islands or C-shaped bays of the lung bases, liver, paravertebral muscle) while
        keeping lesions, which sit on lung. A lesion resting on the diaphragm is rejected
        with it (module docstring). Holes under 80 mm2 (vessels and bronchi seen across)
        are always kept: a vessel rising from the hilum would be rejected slice by slice.
        """
        out = lungs > 0
        if lungs.max() == 1:
            lungs = _separate_merged_lungs(lungs, hu, body, spacing)
        spine_rows = _vertebral_front_rows(hu, body, spacing)
        min_judged = self.parameters.min_judged_area_mm2 / (spacing[1] * spacing[2])
        for k in range(hu.shape[0]):
            slice_lungs = lungs[k]
            if not slice_lungs.any():
                step()
                continue
            allowed = body[k] & (hu[k] <= BONE_HU)
            gap = _mediastinal_gap(slice_lungs, spine_rows[k])
            outside_below = body[k - 1] & ~out[k - 1] if k > 0 else np.ones_like(body[k])
            for value in (1, 2):  # each lung on its own: never fill the mediastinum
                lung2d = slice_lungs == value
                box = _bbox_2d(lung2d, 1, lung2d.shape)
                if box is None:
                    continue
                lung_box = lung2d[box]
                filled = ndimage.binary_fill_holes(lung_box)
                holes = filled & ~lung_box
                bites = convex_hull_2d(lung_box) & ~filled
                # Judged apart (a dome island beside a lesion bite); small holes are vessels.
                # A piece is judged whole, gap included (a hilum is judged with the
                # mediastinum it belongs to), but only its part outside the gap is added.
                for piece, exempt in ((holes, min_judged), (bites, 0.0)):
                    candidate = piece & allowed[box]
                    if candidate.any():
                        kept = _mostly_not(candidate, outside_below[box], exempt)
                        out[k][box] |= kept if gap is None else kept & ~gap[box]
            step()
        return out

    def classify(self, hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], step) -> np.ndarray:
        """Normal lung / GGO / consolidation inside `lung` by HU bands and an opening."""
        p = self.parameters
        # At least a 3x3 square: on coarse pixels a smaller disk keeps 2-pixel-wide vessels.
        disk = _disk(max(p.opening_radius_mm / min(spacing[1], spacing[2]), 1.5))
        min_pixels = p.min_lesion_area_mm2 / (spacing[1] * spacing[2])
        labels = np.zeros(hu.shape, dtype=np.uint8)
        for k in range(hu.shape[0]):
            lung2d = lung[k]
            if not lung2d.any():
                step()
                continue
            box = _bbox_2d(lung2d, disk.shape[0], lung2d.shape)
            hu2d, l2d = hu[k][box], lung2d[box]
            abnormal = _open_and_clean(l2d & (hu2d >= NORMAL_MAX_HU), disk, min_pixels)
            dense = _open_and_clean(l2d & (hu2d >= GGO_MAX_HU), disk, min_pixels) & abnormal
            if dense.any():  # partial-volume rim of consolidation: thin, GGO-dense
                ggo_only = abnormal & ~dense
                thin = ggo_only & ~ndimage.binary_opening(ggo_only, structure=disk)
                touching = ndimage.binary_dilation(dense, structure=np.ones((3, 3), dtype=bool))
                dense |= thin & touching & (hu2d >= PARTIAL_VOLUME_CONS_HU)
            out = np.where(l2d, NORMAL_LUNG, BACKGROUND).astype(np.uint8)
            out[abnormal & l2d] = GGO
            out[dense & l2d] = CONSOLIDATION
            labels[k][box] = out
            step()
        return labels


def _open_and_clean(mask: np.ndarray, disk: np.ndarray, min_pixels: float) -> np.ndarray:
    """Opening by `disk`, then drop connected pieces smaller than `min_pixels`."""
    if not mask.any():
        return mask
    opened = ndimage.binary_opening(mask, structure=disk)
    comps, n = ndimage.label(opened)
    if n == 0:
        return opened
    sizes = np.bincount(comps.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[comps]


def _vertebral_front_rows(hu: np.ndarray, body: np.ndarray, spacing) -> np.ndarray:
    """Per slice, the row of the front of the vertebral body (bone near the back midline).

    Used to tell the mediastinum (in front) from the paravertebral gutters (beside the
    spine), where dependent consolidation is common and must stay lung. -1 when unknown.
    """
    nz, _ny, _nx = hu.shape
    half_width = max(round(15.0 / spacing[2]), 1)
    rows = np.full(nz, -1, dtype=int)
    for k in range(nz):
        cols = np.flatnonzero(body[k].any(axis=0))
        body_rows = np.flatnonzero(body[k].any(axis=1))
        if cols.size == 0:
            continue
        cx = round(0.5 * (cols[0] + cols[-1]))
        mid_row = int(0.5 * (body_rows[0] + body_rows[-1]))
        band = hu[k, mid_row:, max(cx - half_width, 0) : cx + half_width + 1] > BONE_HU
        bone_rows = np.flatnonzero(band.sum(axis=1) >= max(2, half_width // 2))
        if bone_rows.size:
            rows[k] = mid_row + int(bone_rows[0])
    return rows


def _mediastinal_gap(slice_lungs: np.ndarray, spine_front_row: int) -> np.ndarray | None:
    """Pixels between the two lungs (column-wise per row) in front of the vertebral body."""
    left_of = slice_lungs == 1
    right_of = slice_lungs == 2
    if not left_of.any() or not right_of.any():
        return None
    # Which lung is on the image left: compare mean columns.
    cols = np.arange(slice_lungs.shape[1])
    a_mean = cols[left_of.any(axis=0)].mean()
    b_mean = cols[right_of.any(axis=0)].mean()
    image_left, image_right = (left_of, right_of) if a_mean < b_mean else (right_of, left_of)
    ny, nx = slice_lungs.shape
    col_index = np.broadcast_to(cols, (ny, nx))
    last_left = np.where(image_left, col_index, -1).max(axis=1)
    first_right = np.where(image_right, col_index, nx).min(axis=1)
    has_both = (last_left >= 0) & (first_right < nx)
    # Rows with only one lung: extend the gap from the nearest row that has both.
    if not has_both.any():
        return None
    rows = np.arange(ny)
    valid = rows[has_both]
    nearest = valid[np.clip(np.searchsorted(valid, rows), 0, valid.size - 1)]
    lo = np.where(has_both, last_left, last_left[nearest])
    hi = np.where(has_both, first_right, first_right[nearest])
    gap = (col_index > lo[:, None]) & (col_index < hi[:, None])
    limit = spine_front_row if spine_front_row >= 0 else ny
    gap[limit:] = False
    return gap


def _mostly_not(candidate: np.ndarray, excluded: np.ndarray, min_judged: float) -> np.ndarray:
    """Connected pieces of `candidate` of which at most half lies on `excluded`.

    Pieces smaller than `min_judged` pixels are always kept.
    """
    pieces, n = ndimage.label(candidate)
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    on_excluded = np.bincount(pieces.ravel(), weights=excluded.ravel(), minlength=n + 1)
    keep = (on_excluded <= 0.5 * sizes) | (sizes < min_judged)
    keep[0] = False
    return keep[pieces]


def convex_hull_2d(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a 2D mask (pixel centres), rasterised with PIL."""
    points = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    if len(points) < 3:
        return mask.copy()
    try:
        hull = ConvexHull(points)
    except QhullError:  # collinear pixels: the mask is its own hull
        return mask.copy()
    vertices = [(float(points[i, 1]), float(points[i, 0])) for i in hull.vertices]
    image = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(image).polygon(vertices, fill=1, outline=1)
    return np.asarray(image, dtype=bool) | mask


def _split_at_neck(region: np.ndarray, hu: np.ndarray, midline: float, max_erosion: int) -> np.ndarray | None:
    """Side map (1 left of `midline`, 2 right) of a 2D lung piece spanning both lungs, or None.

    The piece (and, if that fails, its parts below -600, -700, -800 HU: the junction line
    is pleura, denser than lung) is eroded until it falls apart into big cores on either
    side of the midline; every pixel goes to its nearest core.
    """
    cross = ndimage.generate_binary_structure(2, 1)
    for threshold in (None, -600, -700, -800):
        core = region if threshold is None else region & (hu < threshold)
        for _ in range(max_erosion):
            core = ndimage.binary_erosion(core, structure=cross)
            cores, m = ndimage.label(core)
            if m == 0:
                break
            if m < 2:
                continue
            sizes = np.bincount(cores.ravel())[1:]
            column_sums = np.bincount(cores.ravel(), weights=np.indices(core.shape)[1].ravel())[1:]
            centres = column_sums / np.maximum(sizes, 1)
            big = sizes >= 0.05 * sizes.sum()
            if not (np.any(big & (centres < midline)) and np.any(big & (centres >= midline))):
                continue
            seeds = np.zeros(region.shape, dtype=np.uint8)
            for j in np.flatnonzero(big):
                seeds[cores == j + 1] = 1 if centres[j] < midline else 2
            _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
            return seeds[nearest[0], nearest[1]]
    return None


def _separate_merged_lungs(lungs: np.ndarray, hu: np.ndarray, body: np.ndarray, spacing) -> np.ndarray:
    """Give each 2D lung piece of one merged 3D component a side: 1 (image left) or 2.

    The lungs often touch at the anterior (or posterior) junction line, where the pleura
    is thinner than a voxel. Per slice, a piece that spans the body midline is split at
    its neck (`_split_at_neck`); any other piece (or one without a neck: a right lung's
    recess reaching past the midline) goes whole to the side of its centre. Sides are
    decided per slice: 2D cuts do not disconnect the lungs in 3D, where the seam moves
    from slice to slice.
    """
    max_erosion = max(1, round(8.0 / min(spacing[1], spacing[2])))
    out = np.zeros_like(lungs)
    for k in np.flatnonzero(lungs.any(axis=(1, 2))):
        cols = np.flatnonzero(body[k].any(axis=0))
        midline = 0.5 * (cols[0] + cols[-1]) if cols.size else lungs.shape[2] / 2.0
        pieces, n = ndimage.label(lungs[k] > 0)
        for i in range(1, n + 1):
            piece = pieces == i
            side = None
            left_share = np.count_nonzero(piece[:, : int(midline)]) / np.count_nonzero(piece)
            if 0.1 <= left_share <= 0.9:  # both lungs in one piece (a recess barely crosses)
                box = _bbox_2d(piece, 1, piece.shape)
                assert box is not None  # the piece is not empty
                side = _split_at_neck(piece[box], hu[k][box], midline - box[1].start, max_erosion)
            if side is None:
                centre = np.mean(np.nonzero(piece)[1])
                out[k][piece] = 1 if centre < midline else 2
            else:
                region = piece[box]
                out[k][box][region] = side[region]
    return out


def _series_uid(volume: CTVolume) -> str:
    try:
        return volume.series_instance_uid
    except (AttributeError, IndexError):
        return ""
