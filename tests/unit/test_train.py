"""A short training run on a tiny synthetic set lowers the loss; resume and config checks."""

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.lesions import insert_lesions
from inference.training.augment import AugmentConfig, augment_slice, eight_bit_to_hu, hu_to_8bit
from inference.training.cache import CacheEntry, TrainingDataError, check_allowed
from inference.training.config import load_config
from inference.training.loop import TrainConfig, segmentation_loss, train

torch.set_num_threads(1)


def _tiny_entries() -> list[CacheEntry]:
    rng = np.random.default_rng(0)
    hu = np.full((6, 64, 64), 40, np.int16)
    hu[:, :4] = -1000
    lung = np.zeros(hu.shape, bool)
    lung[:, 14:50, 8:30] = True
    lung[:, 14:50, 34:56] = True
    hu[lung] = -850
    lesioned, labels = insert_lesions(
        hu, lung, (4.0, 2.0, 2.0), rng, target_extent_pct=25, consolidation_fraction=0.4, noise_sd_hu=10
    )
    return [CacheEntry("tiny", lesioned, labels, (4.0, 2.0, 2.0))]


def _config(steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=4,
        learning_rate=1e-2,
        base_width=8,
        levels=2,
        crop=64,
        checkpoint_every=10,
        seed=3,
        augment=AugmentConfig(out_size=64, export_probability=0.0, tight_crop_probability=0.0, scale_range=(1.0, 1.0)),
    )


def test_short_training_lowers_the_loss(tmp_path: Path):
    _, losses = train(_tiny_entries(), _config(40), tmp_path / "ckpt.pt")
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])


def test_resume_continues_the_same_run(tmp_path: Path):
    entries = _tiny_entries()
    _, straight = train(entries, _config(12), tmp_path / "a.pt")
    first = _config(12)
    first.steps = 12
    # a run stopped at step 10 (the checkpoint) and resumed reproduces the straight run
    train(entries, _config(10), tmp_path / "b.pt")
    _, resumed = train(entries, first, tmp_path / "b.pt", resume=True)
    assert len(resumed) == 12
    assert resumed[:10] == pytest.approx(straight[:10])


def test_loss_ignores_unlabelled_pixels():
    logits = torch.zeros(1, 4, 8, 8)
    target = torch.full((1, 8, 8), 255)
    target[0, 0, 0] = 1
    assert torch.isfinite(segmentation_loss(logits, target))


def test_augment_keeps_shapes_and_label_values():
    entry = _tiny_entries()[0]
    rng = np.random.default_rng(1)
    for _ in range(5):
        hu, lab = augment_slice(entry.hu[2], entry.labels[2], rng, AugmentConfig(out_size=48))
        assert hu.shape == (48, 48) and lab.shape == (48, 48)
        assert set(np.unique(lab)) <= {0, 1, 2, 3}


def test_eight_bit_roundtrip_within_one_step():
    hu = np.linspace(-1000, 100, 50, dtype=np.float32)
    back = eight_bit_to_hu(hu_to_8bit(hu, -450, 1300), -450, 1300)
    assert np.abs(back - hu).max() <= 1300 / 255


def test_covid_semiseg_is_refused_as_anatomy_or_site(tmp_path: Path):
    with pytest.raises(TrainingDataError, match="non-commercial"):
        check_allowed(Path("../shared/data/covid-semiseg-val/images"))
    config = tmp_path / "bad.toml"
    config.write_text('[data]\nanatomy = ["../shared/data/covid-semiseg-val"]\n')
    with pytest.raises(TrainingDataError):
        load_config(config)
    config.write_text("[train]\nsteps = 5\nwarp = 9\n")
    with pytest.raises(TrainingDataError, match="unknown"):
        load_config(config)


def test_labelled_slices_need_a_licence(tmp_path: Path):
    config = tmp_path / "slices.toml"
    config.write_text('[data.labelled_slices]\nimages = "i"\nlabels = "l"\n')
    with pytest.raises(TrainingDataError, match="licence"):
        load_config(config)
    config.write_text('[data.labelled_slices]\nimages = "i"\nlabels = "l"\nlicence = "non-commercial"\n')
    data, _ = load_config(config)
    assert data.labelled_slices.licence == "non-commercial"


def test_config_parses_sites_and_train_settings(tmp_path: Path):
    config = tmp_path / "ok.toml"
    config.write_text(
        '[data]\nanatomy = ["a/LIDC"]\nlesion_variants = 3\n'
        '[[data.site]]\nkind = "nifti"\nimage = "ct.nii.gz"\nlabel = "lab.nii.gz"\n'
        "label_values = { ggo = 4, consolidation = 5 }\n"
        "[train]\nsteps = 7\ncrop = 128\ngroup_weights = { healthy = 0.5, lesion = 0.5 }\n"
        "[augment]\nnoise_sd_hu = [1, 2]\n"
    )
    data, train_config = load_config(config)
    assert data.lesion_variants == 3 and data.site[0].label_values == {"ggo": 4, "consolidation": 5}
    assert train_config.steps == 7 and train_config.augment.out_size == 128
    assert train_config.group_weights == {"healthy": 0.5, "lesion": 0.5}
    assert train_config.augment.noise_sd_hu == (1, 2)


def test_synthetic_phantom_entries_have_lesions_inside_lung():
    from inference.training.sources import synthetic_entries

    entry = synthetic_entries(1, seed=0, size=32)[0]
    assert entry.hu.shape[1:] == (32, 32) and entry.labels.shape == entry.hu.shape
    assert set(np.unique(entry.labels)) <= {0, 1, 2, 3}


def test_site_dicom_seg_labels_round_trip(tmp_path: Path):
    """A site's DICOM SEG (as the node writes them) reads back as the same label map."""
    from inference.synthetic import LesionSpec, generate_phantom, write_series
    from inference.training.sources import labels_from_seg
    from inference.volume import load_series
    from reporting.seg import build_segmentation

    phantom = generate_phantom(
        shape=(8, 48, 48), spacing=(10.0, 7.0, 7.0), seed=1, lesions=[LesionSpec("consolidation", radius_mm=30.0)]
    )
    write_series(phantom, tmp_path / "ct")
    volume = load_series(tmp_path / "ct")
    seg = build_segmentation(volume.datasets, phantom.labels, algorithm_name="test", algorithm_version="1")
    seg.save_as(tmp_path / "seg.dcm")
    labels, has_lung = labels_from_seg(tmp_path / "seg.dcm", volume.datasets)
    assert has_lung
    assert np.array_equal(labels, phantom.labels)


def test_spent_time_budget_stops_and_checkpoints(tmp_path: Path):
    config = _config(50)
    config.time_budget_s = 1e-9
    _, losses = train(_tiny_entries(), config, tmp_path / "c.pt")
    assert losses == []
    assert torch.load(tmp_path / "c.pt", weights_only=False)["step"] == 0
