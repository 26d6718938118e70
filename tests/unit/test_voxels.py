"""Bounded-memory volume code gives the results of the whole-volume code it replaced.

Each helper of `inference.voxels` and each stage rewritten with them (the CNN's 3D clean-up,
the threshold engine's component picking and airway growing, quantification, the key-image
slice counts) is compared with the whole-volume numpy/scipy formulation it replaced, on
arrays spanning several slabs. End to end, `ldct-node segment --json` on a small synthetic
series must report the engine's label map: the SEG decoded by highdicom is that map and the
volumes are its voxel counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from scipy import ndimage

from inference.engines import get_engine
from inference.engines.cnn import keep_lung_components
from inference.engines.threshold import _largest_components
from inference.quantify import GGO, quantify
from inference.synthetic import LesionSpec, generate_phantom, write_series
from inference.volume import load_series
from inference.voxels import SLAB_VOXELS, SlabComponents, label_components, lookup, slabs, value_counts
from reporting.key_images import _lung_and_lesion_per_slice

REPO = Path(__file__).resolve().parents[2]
SLAB_SLICES = SLAB_VOXELS // (512 * 512)


def _blobby_labels(shape, seed: int, fraction: float = 0.55) -> np.ndarray:
    """Smoothed noise cut into labels 0-3: blobs of many sizes, many crossing slab borders."""
    rng = np.random.default_rng(seed)
    field = ndimage.uniform_filter(rng.random(shape, dtype=np.float32), size=5)
    labels = np.zeros(shape, np.uint8)
    cut = np.quantile(field[::4, ::8, ::8], 1 - fraction)
    labels[field > cut] = 1
    labels[field > cut + 0.02] = 2
    labels[field > cut + 0.04] = 3
    return labels


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """2.5 slabs of 512 x 512 slices."""
    return _blobby_labels((SLAB_SLICES * 2 + SLAB_SLICES // 2, 512, 512), seed=3)


def test_slabs_cover_every_slice_once():
    for shape in [(1, 4, 4), (SLAB_SLICES * 3 + 1, 512, 512), (3, 3000, 3000)]:
        covered = np.concatenate([np.arange(shape[0])[part] for part in slabs(np.empty(shape, np.uint8))])
        np.testing.assert_array_equal(covered, np.arange(shape[0]))


def test_value_counts_is_bincount(labels):
    np.testing.assert_array_equal(value_counts(labels), np.bincount(labels.ravel()))
    np.testing.assert_array_equal(value_counts(labels, 8), np.bincount(labels.ravel(), minlength=8))
    wide = (labels.astype(np.uint16) * 1000)[:, ::3, ::3]  # later slabs hold larger values
    wide[-1, 0, 0] = 4001
    np.testing.assert_array_equal(value_counts(wide, 2), np.bincount(wide.ravel(), minlength=2))


def test_label_components_is_ndimage_label(labels):
    components, count = label_components(labels)
    reference, reference_count = ndimage.label(labels)
    assert components.dtype == np.uint16 and count == reference_count
    np.testing.assert_array_equal(components, reference)
    specks = np.zeros((1, 600, 600), bool)
    specks[0, ::2, ::2] = True  # 90,000 isolated voxels: more than uint16 can number
    components, count = label_components(specks)
    reference, reference_count = ndimage.label(specks)
    assert count == reference_count == 90_000
    np.testing.assert_array_equal(components, reference)


def test_lookup_is_fancy_indexing(labels):
    table = np.array([0, 7, 0, 9], np.uint8)
    np.testing.assert_array_equal(lookup(table, labels), table[labels])


@pytest.fixture
def thin_slabs(monkeypatch):
    """Slabs of 3 slices of 64 x 64: many slab borders in a small volume."""
    monkeypatch.setattr("inference.voxels.SLAB_VOXELS", 3 * 64 * 64)


@pytest.mark.parametrize(
    ("shape", "fraction"), [((40, 64, 64), 0.55), ((41, 64, 64), 0.3), ((2, 64, 64), 0.5), ((7, 64, 64), 0.0)]
)
def test_slab_components_are_the_3d_components(thin_slabs, shape, fraction):
    labels = _blobby_labels(shape, seed=5, fraction=fraction)
    reference, count = ndimage.label(labels)
    found = SlabComponents(labels)
    numbers = np.zeros(labels.shape, np.intp)
    for part, slab_numbers in found.slab_numbers():
        numbers[part] = slab_numbers
    assert found.count == count and found.sizes[0] == 0 and found.sizes.size == count + 1
    # the same partition of the voxels: reference label <-> component number is one to one
    pairs = np.unique(np.stack([reference.ravel(), numbers.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == count + 1
    reference_sizes = np.bincount(reference.ravel())
    reference_sizes[0] = 0
    np.testing.assert_array_equal(found.sizes[pairs[1]], reference_sizes[pairs[0]])


def _keep_lung_components_whole_volume(labels: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """The CNN clean-up as it was: one int32 label array and bincount over the whole volume."""
    components, count = ndimage.label(labels > 0)
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    drop = sizes < min_fraction * sizes.max()
    drop[0] = False
    labels[drop[components]] = 0
    return labels


@pytest.mark.parametrize("min_fraction", [0.1, 0.001])
def test_keep_lung_components_as_before(labels, min_fraction):
    expected = _keep_lung_components_whole_volume(labels.copy(), min_fraction)
    assert np.count_nonzero(expected) < np.count_nonzero(labels)  # something was dropped
    np.testing.assert_array_equal(keep_lung_components(labels.copy(), min_fraction), expected)


def test_keep_lung_components_as_before_across_many_slabs(thin_slabs):
    labels = _blobby_labels((45, 64, 64), seed=9, fraction=0.45)
    expected = _keep_lung_components_whole_volume(labels.copy())
    assert 0 < np.count_nonzero(expected) < np.count_nonzero(labels)
    np.testing.assert_array_equal(keep_lung_components(labels.copy()), expected)


def test_largest_components_with_exclusions_as_zeroing_them():
    components, count = ndimage.label(_blobby_labels((12, 96, 96), seed=8))
    sizes = np.bincount(components.ravel())
    by_size = np.argsort(sizes[1:])[::-1] + 1
    for exclude in [by_size[:1], by_size[:3], np.array([count]), np.arange(1, count + 1), np.zeros(0, int)]:
        zeroed = components.copy()
        zeroed[np.isin(zeroed, exclude)] = 0
        expected = _largest_components(zeroed, 2)
        found = _largest_components(components, 2, exclude=exclude)
        np.testing.assert_array_equal(found[0], expected[0])
        np.testing.assert_array_equal(found[1], expected[1])


def test_airway_growth_is_the_seeded_components():
    """The threshold engine grows the airway by propagation: the components the seed touches."""
    rng = np.random.default_rng(2)
    candidate = rng.random((30, 80, 80)) > 0.6
    seed = np.zeros_like(candidate)
    seed[29, 30:40, 30:40] = True
    candidate |= seed
    components, _ = ndimage.label(candidate)
    expected = np.isin(components, np.unique(components[seed]))
    np.testing.assert_array_equal(ndimage.binary_propagation(seed, mask=candidate), expected)


def test_quantify_and_slice_counts_as_before(labels):
    counts = np.bincount(labels.ravel(), minlength=4).astype(float)
    q = quantify(labels, 0.5)
    assert (q.normal_lung_cm3, q.ggo_cm3, q.consolidation_cm3) == tuple(counts[1:4] * 0.5)
    lung, lesion = _lung_and_lesion_per_slice(labels)
    np.testing.assert_array_equal(lung, (labels > 0).reshape(len(labels), -1).sum(axis=1))
    np.testing.assert_array_equal(lesion, (labels >= GGO).reshape(len(labels), -1).sum(axis=1))


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory) -> Path:
    lesions = [
        LesionSpec("ggo", centre=(0.5, 0.45, 0.2), volume_ml=60.0),
        LesionSpec("consolidation", centre=(0.45, 0.55, 0.8), volume_ml=40.0),
    ]
    phantom = generate_phantom(shape=(40, 160, 160), spacing=(7.0, 2.2, 2.2), seed=4, lesions=lesions)
    folder = tmp_path_factory.mktemp("phantom")
    write_series(phantom, folder)
    return folder


@pytest.mark.parametrize("engine_name", ["threshold", "cnn"])
def test_segment_json_and_seg_are_the_label_map(phantom_series, tmp_path, engine_name):
    """Offline `segment`: SEG frames (highdicom) and reported volumes equal the engine's labels."""
    command = [
        sys.executable,
        "-m",
        "dicom_node",
        "segment",
        str(phantom_series),
        "--out",
        str(tmp_path),
        "--engine",
        engine_name,
        "--json",
    ]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout)

    volume = load_series(phantom_series)
    labels = get_engine(engine_name, "cpu").segment(volume)
    counts = np.bincount(labels.ravel(), minlength=4).astype(float) * volume.voxel_volume_ml
    assert counts[2] > 0 and counts[3] > 0  # both lesion classes present: a meaningful check
    reported = summary["quantification"]
    assert reported["normal_lung_cm3"] == round(counts[1], 3)
    assert reported["ggo_cm3"] == round(counts[2], 3)
    assert reported["consolidation_cm3"] == round(counts[3], 3)
    assert reported["lung_cm3"] == round(counts[1] + counts[2] + counts[3], 3)

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    decoded = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in volume.datasets],
        segment_numbers=[1, 2, 3],
        combine_segments=True,
    )
    np.testing.assert_array_equal(decoded, labels)
    assert summary["outputs"][:2] == ["seg.dcm", "sr.dcm"] and len(summary["outputs"]) == 5
