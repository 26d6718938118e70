"""Healthy lungs: nothing outside the body is ever labelled, on a phantom with a table pad
and on every real series in ../shared/data; the extent helper leaves tumour boxes out."""

from pathlib import Path

import numpy as np
import pytest

from inference.healthy import add_noise, body_mask, lesion_extent, outside_body, real_series, tumour_mask

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _patient_on_a_pad(slices: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A torso with two lungs lying on a foam pad (-850 HU, like lung) on a table."""
    hu = np.full((slices, 96, 96), -1000, np.int16)
    yy, xx = np.mgrid[:96, :96]
    torso = ((yy - 40) / 28) ** 2 + ((xx - 48) / 40) ** 2 <= 1
    lungs = (((yy - 40) / 16) ** 2 + ((xx - 30) / 11) ** 2 <= 1) | (((yy - 40) / 16) ** 2 + ((xx - 66) / 11) ** 2 <= 1)
    hu[:, torso] = 40
    hu[:, lungs] = -850
    hu[:, 69:80, 8:88] = -850  # the pad, touching the back
    hu[:, 80:84, 2:94] = 300  # the table
    return hu, lungs


def test_outside_body_counts_labels_on_the_pad_and_none_in_the_lungs():
    hu, lungs = _patient_on_a_pad()
    labels = np.zeros(hu.shape, np.uint8)
    labels[:, lungs] = 1
    assert outside_body(labels, hu, (5.0, 1.0, 1.0)) == 0
    labels[:, 72:78, 20:70] = 3  # what a slice-wise model may call the pad
    assert outside_body(labels, hu, (5.0, 1.0, 1.0)) == 6 * 6 * 50
    assert body_mask(hu, (5.0, 1.0, 1.0))[:, lungs].all()


def test_extent_leaves_the_excluded_region_out_of_lesion_and_lung():
    labels = np.ones((2, 10, 10), np.uint8)
    labels[0, :2] = 2  # 20 GGO voxels, 10 of them in the box
    exclude = np.zeros(labels.shape, bool)
    exclude[0, :1] = True
    extent = lesion_extent(labels, 1.0, exclude)
    assert extent.lung_cm3 == 190 and extent.lesion_pct == pytest.approx(100 * 10 / 190)
    assert extent.excluded_cm3 == 10


def test_noise_is_seeded_and_has_its_sd():
    hu = np.zeros((4, 64, 64), np.int16)
    a, b = add_noise(hu, 60.0, seed=3), add_noise(hu, 60.0, seed=3)
    assert np.array_equal(a, b) and abs(float(a.std()) - 60.0) < 2


def test_engine_labels_nothing_outside_the_body_of_a_patient_on_a_pad():
    from inference.engines import get_engine
    from inference.volume import CTVolume

    hu, _ = _patient_on_a_pad(8)
    hu = np.repeat(np.repeat(hu, 4, axis=1), 4, axis=2)  # 384 px at 0.9 mm: a chest-sized field
    volume = CTVolume(hu=hu, spacing=(5.0, 0.9, 0.9), datasets=[])
    labels = get_engine("cnn", "cpu").segment(volume)
    assert outside_body(labels, hu, volume.spacing) == 0


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")
@pytest.mark.parametrize("folder", real_series(DATA) if DATA.is_dir() else [], ids=lambda p: p.name)
def test_engine_labels_nothing_outside_the_body_of_real_series(folder: Path):
    """24 slices from the middle of each real series (the whole of a short one), all engines' steps."""
    from inference.engines import get_engine
    from inference.volume import CTVolume, load_series

    volume = load_series(folder)
    mid = volume.hu.shape[0] // 2
    part = slice(max(0, mid - 12), mid + 12)
    sub = CTVolume(hu=np.ascontiguousarray(volume.hu[part]), spacing=volume.spacing, datasets=volume.datasets[part])
    labels = get_engine("cnn", "cpu").segment(sub)
    assert (labels > 0).sum() > 0
    assert outside_body(labels, sub.hu, sub.spacing) == 0
    if tumour_mask(folder, sub.datasets, sub.hu.shape) is not None:
        assert tumour_mask(folder, sub.datasets, sub.hu.shape).shape == sub.hu.shape
