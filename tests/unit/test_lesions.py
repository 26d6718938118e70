"""Synthetic lesions: labels only inside the lung, HU rises where labelled, extent honoured."""

import numpy as np
import pytest

from inference.lesions import LesionError, insert_lesions, random_lesion_field


def _phantom(shape=(12, 64, 64)):
    """Two box lungs at -850 HU with a 'vessel' line at +40 HU, in soft tissue at +40 HU."""
    hu = np.full(shape, 40, np.int16)
    lung = np.zeros(shape, bool)
    lung[2:-2, 10:54, 6:30] = True
    lung[2:-2, 10:54, 34:58] = True
    hu[lung] = -850
    hu[:, 30, 10:26] = 40  # a vessel crossing the left lung
    return hu, lung


def test_labels_only_in_lung_and_hu_rises_where_labelled():
    hu, lung = _phantom()
    out, labels = insert_lesions(
        hu, lung, (2.0, 1.0, 1.0), np.random.default_rng(1), target_extent_pct=20, noise_sd_hu=0
    )
    assert out.dtype == np.int16 and labels.dtype == np.uint8 and labels.shape == hu.shape
    assert not labels[~lung].any()
    assert (labels[lung] >= 1).all()
    lesion = labels >= 2
    assert lesion.any()
    assert (out[lesion & (hu < -500)].astype(int) - hu[lesion & (hu < -500)]).mean() > 100
    untouched = (labels == 1) & (hu < -500)
    assert np.abs(out[untouched].astype(int) - hu[untouched]).mean() < 60


def test_extent_close_to_target_and_zero_extent_gives_no_lesion():
    hu, lung = _phantom()
    rng = np.random.default_rng(2)
    _, labels = insert_lesions(hu, lung, (2.0, 1.0, 1.0), rng, target_extent_pct=30)
    extent = 100.0 * (labels >= 2).sum() / lung.sum()
    assert 20 < extent < 40
    _, none = insert_lesions(hu, lung, (2.0, 1.0, 1.0), rng, target_extent_pct=0)
    assert not (none >= 2).any()


def test_consolidation_is_denser_than_ggo():
    hu, lung = _phantom()
    out, labels = insert_lesions(
        hu,
        lung,
        (2.0, 1.0, 1.0),
        np.random.default_rng(3),
        target_extent_pct=40,
        consolidation_fraction=0.5,
        noise_sd_hu=0,
    )
    assert (labels == 3).any() and (labels == 2).any()
    assert np.median(out[labels == 3]) > np.median(out[labels == 2])


def test_vessels_stay_visible_in_ggo():
    hu, lung = _phantom()
    out, labels = insert_lesions(
        hu,
        lung,
        (2.0, 1.0, 1.0),
        np.random.default_rng(4),
        target_extent_pct=60,
        consolidation_fraction=0.0,
        noise_sd_hu=0,
    )
    vessel = np.zeros_like(lung)
    vessel[:, 30, 10:26] = True
    in_ggo = vessel & (labels == 2)
    assert in_ggo.any()
    assert np.all(out[in_ggo] >= 30)  # the vessel keeps its attenuation under the haze


def test_field_is_standardised_and_deterministic():
    a = random_lesion_field((8, 32, 32), (2.0, 1.0, 1.0), np.random.default_rng(5), 6.0)
    b = random_lesion_field((8, 32, 32), (2.0, 1.0, 1.0), np.random.default_rng(5), 6.0)
    assert a.shape == (8, 32, 32) and np.array_equal(a, b)
    assert abs(a.mean()) < 1e-3 and abs(a.std() - 1) < 1e-3


def test_empty_lung_is_a_clear_error():
    hu, lung = _phantom()
    with pytest.raises(LesionError, match="empty"):
        insert_lesions(hu, np.zeros_like(lung), (2.0, 1.0, 1.0), np.random.default_rng(0))
