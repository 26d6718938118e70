"""Training data of issue 14: thick-slice simulation, lesion patterns, partial labels, sampling, folds."""

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.lesions import COVID_STYLE, LesionStyle, insert_lesions_with_parameters
from inference.training.anatomy import average_slabs, labels_from_fractions
from inference.training.augment import AugmentConfig
from inference.training.cache import IGNORE_LABEL, NOT_LESION_LABEL, CacheEntry
from inference.training.crossval import slice_folds
from inference.training.loop import SliceSampler, TrainConfig, partial_cross_entropy, segmentation_loss
from tests.unit.test_lesions import _phantom

torch.set_num_threads(1)


def test_thick_slices_label_partial_volume_by_majority():
    fractions = np.zeros((4, 5, 1, 3), np.float32)
    # three columns: 3/4 lung + 1/4 GGO, 1/4 lung + 3/4 bg (diaphragm), 1/2 consolidation
    fractions[:, 1, 0, 0] = [1, 1, 1, 0]
    fractions[:, 2, 0, 0] = [0, 0, 0, 1]
    fractions[:, 1, 0, 1] = [1, 0, 0, 0]
    fractions[:, 0, 0, 1] = [0, 1, 1, 1]
    fractions[:, 3, 0, 2] = [1, 1, 0, 0]
    fractions[:, 1, 0, 2] = [0, 0, 1, 1]
    hu = np.zeros((4, 1, 3), np.int16)
    thick_hu, thick = average_slabs(hu, fractions, 4)
    labels = labels_from_fractions(thick)
    assert thick_hu.shape == (1, 1, 3)
    assert labels.tolist() == [[[1, 0, 3]]]  # partial volume is lung or background, never lesion


def test_ignored_voxels_stay_ignored_in_thick_slices():
    fractions = np.zeros((2, 5, 1, 1), np.float32)
    fractions[:, 1] = 1
    fractions[0, 1], fractions[0, 4] = 0, 1
    _, thick = average_slabs(np.zeros((2, 1, 1), np.int16), fractions, 2)
    assert labels_from_fractions(thick)[0, 0, 0] == IGNORE_LABEL


@pytest.mark.parametrize(
    "pattern",
    ["crazy_paving", "reticulation", "subpleural_bands", "organising", "reversed_halo", "heterogeneous_consolidation"],
)
def test_each_pattern_labels_only_lung_and_raises_hu(pattern):
    hu, lung = _phantom()
    style = LesionStyle(probability=((pattern, 1.0),))
    out, labels, params = insert_lesions_with_parameters(
        hu, lung, (2.0, 1.0, 1.0), np.random.default_rng(3), target_extent_pct=30, noise_sd_hu=0, style=style
    )
    assert params.patterns == (pattern,)
    assert not labels[~lung].any() and (labels[lung] >= 1).all()
    lesion = labels >= 2
    assert 10 < 100 * lesion.sum() / lung.sum() < 60
    assert (out[lesion].astype(int) - hu[lesion]).mean() > 100


def test_dependent_density_is_lung_not_lesion_and_posterior():
    hu, lung = _phantom()
    style = LesionStyle(probability=(("dependent_density", 1.0),))
    out, labels, _ = insert_lesions_with_parameters(
        hu, lung, (2.0, 1.0, 1.0), np.random.default_rng(4), target_extent_pct=0, noise_sd_hu=0, style=style
    )
    assert not (labels >= 2).any()
    rise = out.astype(int) - hu
    assert rise[:, 50:54][lung[:, 50:54]].mean() > rise[:, 10:20][lung[:, 10:20]].mean() + 20


def test_classic_lesions_unchanged_by_the_style_option():
    hu, lung = _phantom()
    a = insert_lesions_with_parameters(hu, lung, (2.0, 1.0, 1.0), np.random.default_rng(5))
    b = insert_lesions_with_parameters(hu, lung, (2.0, 1.0, 1.0), np.random.default_rng(5), style=None)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2].patterns == ()
    c = insert_lesions_with_parameters(hu, lung, (2.0, 1.0, 1.0), np.random.default_rng(5), style=COVID_STYLE)
    assert not np.array_equal(a[0], c[0])


def test_not_lesion_pixels_score_background_or_lung():
    target = torch.full((1, 1, 2), NOT_LESION_LABEL)
    as_lung = torch.tensor([[4.0, 8.0, 0.0, 0.0]]).T.reshape(1, 4, 1, 1).expand(1, 4, 1, 2)
    as_bg = torch.tensor([[8.0, 4.0, 0.0, 0.0]]).T.reshape(1, 4, 1, 1).expand(1, 4, 1, 2)
    as_ggo = torch.tensor([[0.0, 0.0, 8.0, 0.0]]).T.reshape(1, 4, 1, 1).expand(1, 4, 1, 2)
    assert partial_cross_entropy(as_lung, target) < 0.05
    assert partial_cross_entropy(as_bg, target) < 0.05
    assert partial_cross_entropy(as_ggo, target) > 5
    mixed = torch.tensor([[[NOT_LESION_LABEL, IGNORE_LABEL]]])
    assert torch.isfinite(segmentation_loss(as_ggo, mixed))


def test_sampler_draws_groups_by_weight():
    entries = [
        CacheEntry("h", np.zeros((3, 32, 32), np.int16), np.ones((3, 32, 32), np.uint8), (1, 1, 1), "healthy"),
        CacheEntry("l", np.ones((3, 32, 32), np.int16), np.full((3, 32, 32), 2, np.uint8), (1, 1, 1), "lesion"),
    ]
    config = TrainConfig(
        batch_size=64,
        crop=16,
        group_weights={"healthy": 1.0, "lesion": 0.0},
        augment=AugmentConfig(out_size=16, export_probability=0.0),
    )
    sampler = SliceSampler(entries, config, np.random.default_rng(0))
    _, y = sampler.batch()
    assert set(torch.unique(y).tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="unknown kinds"):
        SliceSampler(entries, TrainConfig(group_weights={"healty": 1.0}), np.random.default_rng(0))


def test_folds_are_contiguous_number_blocks():
    stems = ["10", "2", "0", "1", "3", "11", "5", "4", "12", "13"]
    folds = slice_folds(stems, 5)
    assert folds == [["0", "1"], ["2", "3"], ["4", "5"], ["10", "11"], ["12", "13"]]


def test_labelled_slices_mark_unlabelled_pixels_not_lesion(tmp_path: Path):
    from PIL import Image

    from inference.training.sources import labelled_slice_entries

    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    image = np.full((100, 80), 44, np.uint8)
    label = np.zeros((100, 80), np.uint8)
    label[40:60, 20:40] = 1
    label[70:80, 20:40] = 2
    Image.fromarray(image).save(tmp_path / "i" / "7.jpg")
    Image.fromarray(label).save(tmp_path / "l" / "7.png")
    (entry,) = labelled_slice_entries(tmp_path / "i", tmp_path / "l")
    assert entry.kind == "real" and entry.hu.shape == (1, 256, 256)
    values = set(np.unique(entry.labels).tolist())
    assert values == {0, 2, 3, NOT_LESION_LABEL}  # 0 only in the air padding
    assert abs(float(np.median(entry.hu[entry.labels == NOT_LESION_LABEL])) - (-450 - 650 + 44 / 255 * 1300)) < 5
