"""Key images: slice choice, rendering and Secondary Capture validity."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from inference.quantify import CONSOLIDATION, GGO, quantify
from reporting.dicom_file import write_dataset
from reporting.key_images import (
    KeyImageInputError,
    build_key_images,
    choose_slices,
    detect_carina,
    overlay_rgb,
)
from reporting.risk import RiskAssessment
from reporting.seg import SEGMENT_COLOURS_RGB
from tests.reporting_fixtures import (
    headers_only,
    make_ct_series,
    make_hu_volume,
    make_label_map,
    make_trachea_phantom,
)
from tests.validators import dciodvfy_report

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")

RISK = RiskAssessment(
    computed=True,
    probability=0.31,
    category="high",
    cutoff=0.14,
    model_name="model-c",
    model_version="1",
    calibration_status="published odds ratios, not locally calibrated",
)


@needs_dciodvfy
def test_key_images_are_valid_rgb_secondary_captures(tmp_path):
    labels = make_label_map(16, 64)
    hu = make_hu_volume(labels=labels)
    series = make_ct_series(hu=hu)
    headers = headers_only(series)
    quant = quantify(labels, 0.7 * 0.7 * 2.5 / 1000)
    images = build_key_images(hu, labels, headers, quant, RISK)

    assert len(images) == 3
    series_uids = set()
    referenced = []
    for number, image in enumerate(images, start=1):
        path = write_dataset(image, tmp_path / f"key{number}.dcm")
        errors, warnings = dciodvfy_report(path)
        for line in warnings:
            print("dciodvfy:", line)
        assert errors == []
        raw = pydicom.dcmread(path)
        assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert raw.PhotometricInterpretation == "RGB"
        assert raw.SamplesPerPixel == 3
        assert raw.BitsAllocated == 8
        assert raw.BurnedInAnnotation == "YES"
        assert raw.StudyInstanceUID == series[0].StudyInstanceUID
        assert raw.PatientID == series[0].PatientID
        assert raw.SeriesNumber == 903
        assert raw.InstanceNumber == number
        assert raw.Manufacturer == "ldct-node"
        pixels = raw.pixel_array
        assert pixels.ndim == 3 and pixels.shape[2] == 3
        assert pixels.shape[1] >= 512 and pixels.shape[0] > pixels.shape[1]  # image + text band
        series_uids.add(raw.SeriesInstanceUID)
        referenced.append(str(raw.SourceImageSequence[0].ReferencedSOPInstanceUID))
    assert len(series_uids) == 1 and series_uids != {series[0].SeriesInstanceUID}

    uid_to_index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(series)}
    indices = [uid_to_index[uid] for uid in referenced]
    lesion_per_slice = (labels >= GGO).reshape(len(series), -1).sum(axis=1)
    assert int(np.argmax(lesion_per_slice)) in indices
    z = [float(series[i].ImagePositionPatient[2]) for i in indices]
    assert z == sorted(z, reverse=True), "key images run from head to feet"


def test_choose_slices_carina_and_lesions():
    # 50 slices, lung from index 5 (inferior) to 44 (apex); heights increase with index.
    labels = np.zeros((50, 8, 8), np.uint8)
    labels[5:45, 2:6, 2:6] = 1
    labels[10, 2:6, 2:6] = GGO  # 16 lesion voxels
    labels[30, 2:4, 2:4] = CONSOLIDATION  # 4 lesion voxels
    heights = np.arange(50, dtype=float) * 2.0
    chosen = choose_slices(labels, heights, 3)
    indices = [index for index, _ in chosen]
    # apex 44, base 5: 20% of 39 slices below the apex is index 36.2 -> 36
    assert indices == [36, 30, 10]
    assert [reason for _, reason in chosen] == ["near carina (approx.)", "most lesion", "most lesion"]
    assert choose_slices(labels, heights, 1) == [(10, "most lesion")]


def test_choose_slices_without_lesion_fills_with_lung_sections():
    labels = np.zeros((40, 8, 8), np.uint8)
    labels[0:40, 1:7, 1:7] = 1
    labels[20, :, :] = 1  # widest section
    chosen = choose_slices(labels, -np.arange(40, dtype=float), 3)  # index 0 is the apex
    assert len(chosen) == 3
    assert (8, "near carina (approx.)") in chosen  # 20% of 39 slices below index 0
    assert (20, "largest lung section") in chosen
    assert [index for index, _ in chosen] == sorted(index for index, _ in chosen)  # head first


def test_overlay_colours_lesions():
    hu = np.full((4, 4), -850, np.int16)
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = CONSOLIDATION
    labels[1, 1] = GGO
    rgb = overlay_rgb(hu, labels)
    grey = rgb[3, 3]
    assert grey[0] == grey[1] == grey[2]
    red = rgb[0, 0].astype(int)
    assert red[0] - red[2] > 50 and red[0] > grey[0]
    yellow = rgb[1, 1].astype(int)
    assert yellow[0] > grey[0] and yellow[1] > grey[1] and yellow[2] < yellow[1]
    assert SEGMENT_COLOURS_RGB[CONSOLIDATION][0] > 200


def test_key_images_reject_mismatched_inputs():
    headers = headers_only(make_ct_series(4, 32))
    quant = quantify(np.zeros((4, 32, 32), np.uint8), 0.001)
    with pytest.raises(KeyImageInputError, match="differ in shape"):
        build_key_images(np.zeros((4, 32, 32)), np.zeros((4, 16, 32), np.uint8), headers, quant)
    with pytest.raises(KeyImageInputError, match="3 slices but 4 source images"):
        build_key_images(np.zeros((3, 32, 32)), np.zeros((3, 32, 32), np.uint8), headers, quant)


@pytest.mark.parametrize("bronchi_labelled_lung", [False, True])
def test_detect_carina_on_trachea_phantom(bronchi_labelled_lung):
    hu, labels = make_trachea_phantom(40, 64, split_index=24, bronchi_labelled_lung=bronchi_labelled_lung)
    heights = np.arange(40, dtype=float) * 2.5
    assert detect_carina(hu, labels, heights, pixel_area_mm2=4.0) == 24
    # the same stack stored head first
    flipped = detect_carina(hu[::-1], labels[::-1], heights[::-1], pixel_area_mm2=4.0)
    assert flipped == 40 - 1 - 24


def test_detect_carina_gives_none_without_airway():
    hu, labels = make_trachea_phantom(40, 64, split_index=24)
    hu[hu == -1000] = 40  # no air column at all
    assert detect_carina(hu, labels, np.arange(40, dtype=float) * 2.5, pixel_area_mm2=4.0) is None


def test_detect_carina_on_synthetic_chest_ct():
    """The synthetic CT's trachea splits where its airway mask becomes two lumens."""
    synthetic = pytest.importorskip("inference.synthetic")
    from scipy import ndimage

    phantom = synthetic.generate_phantom((40, 128, 128), (7.5, 2.8, 2.8), seed=3)
    lumens = [ndimage.label(phantom.airway[z])[1] for z in range(40)]
    truth = min(z for z in range(40) if lumens[z] == 1)  # lowest single-lumen slice
    assert lumens[truth - 1] == 2
    heights = np.arange(40) * 7.5
    assert detect_carina(phantom.hu, phantom.labels, heights, 2.8 * 2.8) == truth

    headers = headers_only(make_ct_series(hu=phantom.hu, slice_spacing_mm=7.5, pixel_spacing_mm=2.8))
    quant = quantify(phantom.labels, phantom.voxel_volume_ml)
    images = build_key_images(phantom.hu, phantom.labels, headers, quant)
    carina_images = [im for im in images if im.ImageComments.startswith("carina;")]
    assert len(carina_images) == 1
    assert carina_images[0].SourceImageSequence[0].ReferencedSOPInstanceUID == headers[truth].SOPInstanceUID
