"""U-Net shapes and the CNN engine: labels of the right shape, checksum verification."""

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.engines.cnn import CNNEngine, WeightsError
from inference.training.loop import save_weights
from inference.unet import UNet2D, count_parameters, normalise_hu
from inference.volume import CTVolume

torch.set_num_threads(1)


def test_unet_output_shape_and_size():
    model = UNet2D(base=4, levels=3)
    out = model(torch.zeros(2, 1, 48, 40))
    assert out.shape == (2, 4, 48, 40)
    assert count_parameters(UNet2D()) < 25e6 / 4  # fp32 default model fits the 25 MB budget


def test_normalise_hu_range():
    x = normalise_hu(torch.tensor([-3000.0, -1024.0, 300.0, 2000.0]))
    assert torch.allclose(x, torch.tensor([-1.0, -1.0, 1.0, 1.0]))


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_weights(UNet2D(base=4, levels=2), path, "test-1", {"note": "random"})
    return path


def test_engine_returns_uint8_labels_of_volume_shape(tiny_weights: Path):
    engine = CNNEngine(device="cpu", weights_path=tiny_weights, batch_size=3, num_threads=1)
    assert engine.version == "test-1+body+lung-components"
    hu = np.full((5, 40, 36), -1000, np.int16)
    hu[:, 8:32, 6:30] = -850
    calls = []
    labels = engine.segment(
        CTVolume(hu=hu, spacing=(2.0, 1.4, 1.4), datasets=[]), progress=lambda done, total: calls.append((done, total))
    )
    assert labels.dtype == np.uint8 and labels.shape == hu.shape
    assert labels.max() <= 3
    assert calls[-1] == (5, 5)
    again = engine.segment(CTVolume(hu=hu, spacing=(2.0, 1.4, 1.4), datasets=[]))
    assert np.array_equal(labels, again)  # deterministic on CPU
    image = engine.segment_image(np.full((50, 30), -800.0, np.float32))
    assert image.shape == (50, 30) and image.dtype == np.uint8


def test_checksum_mismatch_is_a_clear_error(tiny_weights: Path):
    with open(tiny_weights, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        CNNEngine(device="cpu", weights_path=tiny_weights)


def test_weights_missing_from_checksum_file(tiny_weights: Path, tmp_path: Path):
    other = tmp_path / "other.pt"
    other.write_bytes(tiny_weights.read_bytes())
    with pytest.raises(WeightsError, match="not listed"):
        CNNEngine(device="cpu", weights_path=other)


def test_shipped_weights_fit_the_budget():
    folder = Path(__file__).resolve().parents[2] / "inference" / "weights"
    total = sum(p.stat().st_size for p in folder.glob("*.pt"))
    assert total <= 25 * 1024 * 1024


def test_keep_lung_components_drops_islands_outside_the_lungs():
    import numpy as np

    from inference.engines.cnn import keep_lung_components

    labels = np.zeros((10, 40, 40), np.uint8)
    labels[1:9, 5:35, 3:15] = 1  # right lung
    labels[1:9, 5:35, 25:37] = 1  # left lung
    labels[4:6, 10:14, 6:10] = 2  # GGO inside the right lung: kept
    labels[0, 38:40, 0:2] = 1  # a lung-like patch of air outside the body: dropped
    labels[9, 0:2, 38:40] = 3  # an isolated "consolidation" speck: dropped
    out = keep_lung_components(labels.copy())
    assert out[0, 38:40, 0:2].max() == 0 and out[9, 0:2, 38:40].max() == 0
    assert (out[4:6, 10:14, 6:10] == 2).all()
    assert (out > 0).sum() == (labels > 0).sum() - 4 - 4


def test_clear_outside_body_drops_the_air_under_the_patient_not_the_lungs():
    from inference.engines.cnn import clear_outside_body

    hu = np.full((6, 64, 64), -1000, np.int16)  # air around
    yy, xx = np.mgrid[:64, :64]
    torso = ((yy - 28) / 20) ** 2 + ((xx - 32) / 26) ** 2 <= 1
    hu[:, torso] = 40  # soft tissue
    lungs = (((yy - 28) / 12) ** 2 + ((xx - 20) / 8) ** 2 <= 1) | (((yy - 28) / 12) ** 2 + ((xx - 44) / 8) ** 2 <= 1)
    hu[:, lungs] = -850
    hu[:, 56:58, 4:60] = 200  # the table, below an air gap
    labels = np.zeros(hu.shape, np.uint8)
    labels[:, lungs] = 1
    labels[:, 49:55, 10:54] = 1  # what a 2D model calls lung in the air gap
    clear_outside_body(labels, hu, (5.0, 1.0, 1.0))
    assert (labels[:, lungs] == 1).all()
    assert labels[:, 49:55, 10:54].max() == 0


def test_clear_outside_body_leaves_slices_whose_body_reaches_the_edge():
    from inference.engines.cnn import clear_outside_body

    hu = np.full((4, 32, 32), 40, np.int16)  # a field of view cut through the body
    hu[:, 10:20, 0:12] = -850  # lung touching the image edge
    labels = np.zeros(hu.shape, np.uint8)
    labels[:, 10:20, 0:12] = 1
    clear_outside_body(labels, hu, (5.0, 1.0, 1.0))
    assert (labels[:, 10:20, 0:12] == 1).all()
