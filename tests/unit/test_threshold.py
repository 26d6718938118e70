"""The classical threshold engine on synthetic phantoms (truth known) and, slow, on LIDC.

Tolerances (stated, measured on these phantoms at ~2 mm pixels): lung Dice >= 0.95;
lesion (GGO + consolidation) volume within 15%; GGO within 20% (its partial-volume border
at -700 HU adds a rim); consolidation within 25% (against the chest wall the 2D convex hull
cuts a chord through the lesion, losing the crescent between chord and wall).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.engines import get_engine
from inference.engines.threshold import ThresholdEngine, ThresholdSegmentationError
from inference.quantify import CONSOLIDATION, GGO, quantify
from inference.synthetic import LesionSpec, generate_phantom
from inference.volume import CTVolume, load_series

LIDC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lidc-idri"


def _volume(phantom) -> CTVolume:
    return CTVolume(hu=phantom.hu, spacing=phantom.spacing, datasets=[])


@pytest.fixture(scope="module")
def lesion_phantom():
    """Peripheral GGO (right lung) and consolidation against the left posterolateral wall."""
    return generate_phantom(
        shape=(48, 160, 160),
        spacing=(6.5, 2.2, 2.2),
        lesions=[
            LesionSpec("ggo", centre=(0.55, 0.45, 0.18), volume_ml=60.0),
            LesionSpec("consolidation", centre=(0.45, 0.55, 0.8), volume_ml=40.0),
            LesionSpec("ggo", centre=(0.4, 0.3, 0.7), volume_ml=25.0),
        ],
        seed=1,
    )


@pytest.fixture(scope="module")
def lesion_labels(lesion_phantom):
    return ThresholdEngine().segment(_volume(lesion_phantom))


def test_engine_identity_and_registry():
    engine = get_engine("threshold")
    assert isinstance(engine, ThresholdEngine)
    assert (engine.name, engine.version) == ("threshold", "1.0")


def test_lung_dice_against_truth(lesion_phantom, lesion_labels):
    assert lesion_labels.dtype == np.uint8 and lesion_labels.shape == lesion_phantom.hu.shape
    truth, found = lesion_phantom.labels > 0, lesion_labels > 0
    dice = 2 * np.count_nonzero(truth & found) / (np.count_nonzero(truth) + np.count_nonzero(found))
    assert dice >= 0.95


def test_trachea_and_main_bronchi_are_not_lung(lesion_phantom, lesion_labels):
    lumen = lesion_phantom.airway
    assert np.count_nonzero(lesion_labels[lumen]) <= 0.01 * np.count_nonzero(lumen)


def test_lesion_volumes_within_tolerance(lesion_phantom, lesion_labels):
    truth = quantify(lesion_phantom.labels, lesion_phantom.voxel_volume_ml)
    found = quantify(lesion_labels, lesion_phantom.voxel_volume_ml)
    assert found.lesion_cm3 == pytest.approx(truth.lesion_cm3, rel=0.15)
    assert found.ggo_cm3 == pytest.approx(truth.ggo_cm3, rel=0.20)
    assert found.consolidation_cm3 == pytest.approx(truth.consolidation_cm3, rel=0.25)
    # Where they are, not only how much: most of each true lesion is found as that class.
    for label in (GGO, CONSOLIDATION):
        true_mask = lesion_phantom.labels == label
        assert np.count_nonzero(lesion_labels[true_mask] == label) >= 0.7 * np.count_nonzero(true_mask)


def test_vessels_of_a_normal_lung_are_not_lesions():
    phantom = generate_phantom((40, 128, 128), (7.5, 2.8, 2.8), lesions=None, seed=2)
    labels = ThresholdEngine().segment(_volume(phantom))
    result = quantify(labels, phantom.voxel_volume_ml)
    assert result.lung_cm3 > 1500
    assert result.lesion_pct < 1.0  # vessel tree and texture: opened away
    assert result.consolidation_pct < 0.2


def test_progress_reaches_the_total(lesion_phantom):
    small = _volume(lesion_phantom)
    calls: list[tuple[int, int]] = []
    ThresholdEngine().segment(small, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_a_volume_without_lungs_is_refused():
    hu = np.full((8, 64, 64), -1000, dtype=np.int16)
    hu[:, 16:48, 16:48] = 40  # a block of soft tissue: body without any air inside
    with pytest.raises(ThresholdSegmentationError, match=r"air|lung"):
        ThresholdEngine().segment(CTVolume(hu=hu, spacing=(5.0, 1.0, 1.0), datasets=[]))


@pytest.mark.slow
@pytest.mark.parametrize("series", ["LIDC-IDRI-0001", "LIDC-IDRI-0002"])
def test_real_normal_lungs(series):
    folder = LIDC / series
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    volume = load_series(folder)
    labels = ThresholdEngine().segment(volume)
    result = quantify(labels, volume.voxel_volume_ml)
    assert 3000 < result.lung_cm3 < 7000  # adult lungs at inspiration
    assert result.lesion_pct < 2.0  # no COVID-19 findings in these series
    top = volume.hu.shape[0] - 1  # the top slice shows the trachea in the neck: never lung
    nx = volume.hu.shape[2]
    central_air = np.zeros(volume.hu.shape[1:], dtype=bool)
    central_air[:, int(0.4 * nx) : int(0.6 * nx)] = volume.hu[top][:, int(0.4 * nx) : int(0.6 * nx)] < -900
    assert central_air.any() and not np.any(labels[top][central_air])
