"""The synthetic chest CT: plausible HU per label, lesion sizes, valid DICOM files."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from inference.quantify import CONSOLIDATION, GGO, NORMAL_LUNG
from inference.synthetic import (
    LesionSpec,
    PhantomError,
    SeriesWriteError,
    generate_phantom,
    write_series,
)


def test_labels_match_the_hu_of_their_tissue(small_phantom):
    hu, labels = small_phantom.hu, small_phantom.labels
    assert hu.dtype == np.int16 and labels.dtype == np.uint8 and hu.shape == labels.shape
    assert set(np.unique(labels)) == {0, NORMAL_LUNG, GGO, CONSOLIDATION}
    assert np.median(hu[labels == NORMAL_LUNG]) < -750  # aerated lung (vessels are a few %)
    assert -650 < np.median(hu[labels == GGO]) < -300
    assert -150 < np.median(hu[labels == CONSOLIDATION]) < 100
    # Room air in the corners, soft tissue in the middle of the mediastinum.
    assert np.all(hu[:, :3, :3] < -850)
    nz, ny, nx = hu.shape
    assert -50 < np.median(hu[nz // 3, ny // 2 - 3 : ny // 2 + 3, nx // 2 - 3 : nx // 2 + 3]) < 120


def test_airway_is_air_and_not_lung(small_phantom):
    airway = small_phantom.airway
    assert airway.any()
    assert np.median(small_phantom.hu[airway]) < -600  # 3.6 mm pixels: partial volume
    assert not np.any(small_phantom.labels[airway])
    assert airway[-1].any()  # the trachea reaches the top slice


def test_lesion_volume_targets_and_lungs_only():
    spacing = (6.0, 2.5, 2.5)
    phantom = generate_phantom(
        shape=(40, 128, 128),
        spacing=spacing,
        lesions=[LesionSpec("ggo", centre=(0.55, 0.45, 0.25), volume_ml=40.0)],
        seed=3,
    )
    ggo_ml = np.count_nonzero(phantom.labels == GGO) * phantom.voxel_volume_ml
    assert ggo_ml == pytest.approx(40.0, rel=0.10)
    assert not np.any(phantom.labels == CONSOLIDATION)


def test_random_peripheral_lesion_by_radius_is_reproducible():
    def make(seed: int):
        lesion = LesionSpec("consolidation", radius_mm=20.0)
        return generate_phantom((24, 96, 96), (10.0, 3.6, 3.6), [lesion], seed=seed)

    first, again, other = make(11), make(11), make(12)
    assert np.array_equal(first.hu, again.hu) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.labels, other.labels)
    assert np.any(first.labels == CONSOLIDATION)


def test_bad_lesion_specs_are_refused():
    with pytest.raises(PhantomError, match="exactly one"):
        LesionSpec("ggo")
    with pytest.raises(PhantomError, match="kind"):
        LesionSpec("nodule", radius_mm=5.0)  # type: ignore[arg-type]
    outside = LesionSpec("ggo", centre=(0.5, 1.5, 0.5), radius_mm=5.0)
    with pytest.raises(PhantomError, match="fractions"):
        generate_phantom((16, 64, 64), (12.0, 5.0, 5.0), [outside])


def test_series_geometry_and_identifiers(small_phantom, tmp_path):
    paths = write_series(small_phantom, tmp_path, patient_id="SYN42", accession_number="A1")
    assert len(paths) == small_phantom.hu.shape[0]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert {h.SOPClassUID for h in headers} == {CTImageStorage}
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == len(headers)
    assert [int(h.InstanceNumber) for h in headers] == list(range(1, len(headers) + 1))
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    assert np.allclose(np.diff(z), small_phantom.spacing[0])
    first = headers[0]
    assert first.Modality == "CT" and first.PatientID == "SYN42" and first.AccessionNumber == "A1"
    assert [float(v) for v in first.PixelSpacing] == pytest.approx(list(small_phantom.spacing[1:]))
    stored = pydicom.dcmread(paths[5]).pixel_array.astype(np.int32) + int(first.RescaleIntercept)
    assert np.array_equal(stored, small_phantom.hu[5])


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_dciodvfy_reports_no_error(small_phantom, tmp_path, syntax):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not on PATH")
    paths = write_series(small_phantom, tmp_path, transfer_syntax=syntax)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    middle = str(paths[len(paths) // 2])
    result = subprocess.run(["dciodvfy", middle], capture_output=True, text=True, timeout=60, check=False)
    report = result.stdout + result.stderr
    assert "CTImage" in report
    assert "Error" not in report, report


def test_unsupported_transfer_syntax_is_a_clear_error(small_phantom, tmp_path):
    with pytest.raises(SeriesWriteError, match="no encoder"):
        write_series(small_phantom, tmp_path, transfer_syntax=JPEGLosslessSV1)
