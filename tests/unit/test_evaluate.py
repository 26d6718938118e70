"""Evaluate's metrics on constructed cases with known answers, and the CLI end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from inference.evaluate import (
    EvaluationError,
    agreement,
    dice,
    dice_per_class,
    estimate_window,
    parse_label_values,
    parse_window,
    report,
    summarise,
    volume_case,
)

torch.set_num_threads(1)


def test_dice_of_two_squares_with_known_overlap():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[0:10, 0:10] = True  # 100 px
    b[5:15, 0:10] = True  # 100 px, 50 shared
    assert dice(a, b) == pytest.approx(2 * 50 / 200)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) is None  # empty reference: left out


def test_absent_class_is_excluded_from_n():
    ref1 = np.zeros((10, 10), np.uint8)
    ref1[:5] = 2  # GGO only
    ref2 = np.zeros((10, 10), np.uint8)
    ref2[:5] = 3  # consolidation only
    pred1, pred2 = ref1.copy(), np.zeros_like(ref2)
    cases = [dice_per_class(pred1, ref1, False), dice_per_class(pred2, ref2, False)]
    ggo = summarise(c["ggo"] for c in cases)
    cons = summarise(c["consolidation"] for c in cases)
    lesion = summarise(c["lesion"] for c in cases)
    assert ggo == {"mean": 1.0, "sd": 0.0, "n": 1}
    assert cons == {"mean": 0.0, "sd": 0.0, "n": 1}
    assert lesion["n"] == 2 and lesion["mean"] == pytest.approx(0.5)
    assert lesion["sd"] == pytest.approx(np.std([1.0, 0.0], ddof=1))
    assert summarise(c["lung"] for c in cases) == {"mean": None, "sd": None, "n": 0}


def test_agreement_statistics_known_values():
    ref = [10.0, 20.0, 30.0, 40.0]
    pred = [12.0, 21.0, 33.0, 40.0]  # differences 2, 1, 3, 0
    out = agreement(pred, ref)
    assert out["mae"] == pytest.approx(1.5)
    assert out["bias"] == pytest.approx(1.5)
    assert out["mean_abs_relative_error_pct"] == pytest.approx(100 * np.mean([0.2, 0.05, 0.1, 0.0]))
    assert out["bias_sd"] == pytest.approx(np.std([2, 1, 3, 0], ddof=1))
    assert out["pearson_r"] == pytest.approx(np.corrcoef(pred, ref)[0, 1])
    # paired t: mean diff / (sd / sqrt(n)) with 3 degrees of freedom
    from scipy import stats

    t = 1.5 / (np.std([2, 1, 3, 0], ddof=1) / 2)
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(t, 3))


def test_volume_case_volumes_and_extents():
    ref = np.zeros((2, 10, 10), np.uint8)
    ref[:, :, :5] = 1
    ref[:, :2, :5] = 2  # 20 voxels GGO of 100 lung
    pred = ref.copy()
    pred[:, 2:3, :5] = 2  # 30 voxels GGO
    case = volume_case("c", pred, ref, 0.5, lung_labelled=True)
    assert case.reference["ggo_cm3"] == pytest.approx(10.0)
    assert case.predicted["ggo_cm3"] == pytest.approx(15.0)
    assert case.predicted["ggo_pct"] == pytest.approx(30.0)
    assert case.dice["ggo"] == pytest.approx(2 * 20 / 50)
    assert case.dice["lung"] == 1.0
    result = report([case, case], "volume")
    assert result["volume_cm3"]["ggo"]["bias"] == pytest.approx(5.0)
    assert result["extent_pct"]["ggo"]["mae"] == pytest.approx(10.0)


def test_parsers():
    assert parse_window("-450,1300") == (-450.0, 1300.0)
    assert parse_label_values("ggo=1,consolidation=2") == {"ggo": 1, "consolidation": 2}
    with pytest.raises(EvaluationError):
        parse_window("wide")
    with pytest.raises(EvaluationError):
        parse_label_values("tumour=4")


def test_window_estimated_from_anatomy():
    center, width = -450.0, 1300.0
    rng = np.random.default_rng(0)
    hu = np.concatenate([rng.normal(-870, 30, 4000), rng.normal(30, 20, 6000), np.full(3000, -1000.0)])
    pixels = np.clip(np.rint((hu - (center - width / 2)) / width * 255), 0, 255).astype(np.uint8)
    est_center, est_width = estimate_window(pixels)
    assert abs(est_center - center) < 60 and abs(est_width - width) < 120


def test_image_mode_cli_writes_json(tmp_path: Path):
    from inference.commands import evaluate_command
    from inference.training.loop import save_weights
    from inference.unet import UNet2D

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 32), 60 + i, np.uint8)).save(images / f"{i}.jpg")
        lab = np.zeros((40, 32), np.uint8)
        lab[10:20, 10:20] = 1
        Image.fromarray(lab).save(labels / f"{i}.png")
    weights = tmp_path / "w.pt"
    save_weights(UNet2D(base=4, levels=2), weights, "t", {})
    app = typer.Typer()
    app.command()(evaluate_command)
    app.command("noop")(lambda: None)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate-command",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--window=-450,1300",
            "--json",
            str(out),
            "--weights",
            str(weights),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["dice"]) == {"lesion", "ggo", "consolidation", "lung"}
    assert data["dice"]["lesion"]["n"] == 2 and data["dice"]["consolidation"]["n"] == 0
    bad = CliRunner().invoke(app, ["evaluate-command", "--images", str(images), "--weights", str(weights)])
    assert bad.exit_code == 2 and "image mode needs" in bad.output


def test_volume_mode_with_nifti_reference(tmp_path: Path):
    """Volume mode end to end: a phantom series, its truth as NIfTI, JSON and Bland-Altman PNG."""
    import nibabel as nib

    from inference.commands import evaluate_command
    from inference.synthetic import LesionSpec, generate_phantom, write_series
    from inference.training.loop import save_weights
    from inference.unet import UNet2D

    series_root, refs = tmp_path / "series", tmp_path / "refs"
    refs.mkdir()
    for i in range(2):
        phantom = generate_phantom(
            shape=(12, 64, 64), spacing=(10.0, 5.0, 5.0), seed=i, lesions=[LesionSpec("ggo", radius_mm=25.0)]
        )
        write_series(phantom, series_root / f"case{i}")
        labels = np.transpose(phantom.labels, (2, 1, 0)).astype(np.uint8)  # (z,y,x) -> NIfTI (x,y,z)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), refs / f"case{i}.nii.gz")
    weights = tmp_path / "w.pt"
    save_weights(UNet2D(base=4, levels=2), weights, "t", {})
    app = typer.Typer()
    app.command()(evaluate_command)
    app.command("noop")(lambda: None)
    out = tmp_path / "v.json"
    args = [
        "evaluate-command",
        "--references",
        str(refs),
        "--label-values",
        "lung=1,ggo=2,consolidation=3",
        "--json",
        str(out),
        "--weights",
        str(weights),
        "--device",
        "cpu",
    ]
    for i in range(2):
        args += ["--series", str(series_root / f"case{i}")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["dice"]["lung"]["n"] == 2 and data["dice"]["ggo"]["n"] == 2
    assert data["volume_cm3"]["lesion"]["n"] == 2
    assert Path(data["bland_altman_png"]).stat().st_size > 1000
