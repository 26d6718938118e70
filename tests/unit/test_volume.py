"""load_series on synthetic DICOM series: order, geometry, HU, and readable refusals."""

from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from inference.synthetic import write_series
from inference.volume import SeriesError, load_series, lossy_compression


def test_shuffled_files_give_the_phantom_back(small_phantom, tmp_path):
    paths = write_series(small_phantom, tmp_path)
    random.Random(0).shuffle(paths)
    volume = load_series(paths)
    assert volume.hu.dtype == np.int16
    assert np.array_equal(volume.hu, small_phantom.hu)
    assert volume.spacing == pytest.approx(small_phantom.spacing)
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == sorted(z)
    assert volume.voxel_volume_ml == pytest.approx(small_phantom.voxel_volume_ml)


def test_spacing_comes_from_positions_not_slice_thickness(small_phantom, tmp_path):
    paths = write_series(small_phantom, tmp_path)
    for path in paths:  # a reconstruction with overlapping thick slices
        ds = pydicom.dcmread(path)
        ds.SliceThickness = "15"
        ds.save_as(path)
    assert load_series(tmp_path).spacing[0] == pytest.approx(small_phantom.spacing[0])


def test_rle_compressed_folder_loads_losslessly(small_phantom, tmp_path):
    paths = write_series(small_phantom, tmp_path, transfer_syntax=RLELossless)
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless
    volume = load_series(tmp_path)
    assert np.array_equal(volume.hu, small_phantom.hu)


def test_missing_slice_is_refused_naming_the_spacing(small_phantom, tmp_path):
    paths = write_series(small_phantom, tmp_path)
    paths[10].unlink()
    with pytest.raises(SeriesError, match="spacing"):
        load_series(tmp_path)


def test_missing_pixel_spacing_is_refused(small_phantom, tmp_path):
    for path in write_series(small_phantom, tmp_path):
        ds = pydicom.dcmread(path)
        del ds.PixelSpacing
        ds.save_as(path)
    with pytest.raises(SeriesError, match="PixelSpacing"):
        load_series(tmp_path)


def test_two_series_in_one_folder_are_refused(small_phantom, tmp_path):
    write_series(small_phantom, tmp_path / "a")
    write_series(small_phantom, tmp_path / "b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for source in ("a", "b"):
        for path in sorted((tmp_path / source).iterdir())[:5]:
            path.rename(mixed / f"{source}_{path.name}")
    with pytest.raises(SeriesError, match="2 series"):
        load_series(mixed)


def test_files_in_slice_order_are_read_once_for_the_same_volume(small_phantom, tmp_path, monkeypatch):
    """The node's workers get the files in the slice order the completeness decision found:
    one read per file, and the volume, spacing and headers of the sorting path."""
    from inference import volume as volume_module

    paths = write_series(small_phantom, tmp_path)
    random.Random(1).shuffle(paths)
    sorted_volume = load_series(paths)
    in_order = [ds.filename for ds in sorted_volume.datasets]
    reads = []
    real_dcmread = pydicom.dcmread
    monkeypatch.setattr(
        volume_module.pydicom, "dcmread", lambda path, **kw: reads.append(path) or real_dcmread(path, **kw)
    )
    volume = load_series(in_order, in_slice_order=True)
    assert sorted(map(str, reads)) == sorted(in_order)  # each file once
    assert np.array_equal(volume.hu, sorted_volume.hu)
    assert volume.spacing == pytest.approx(sorted_volume.spacing)
    assert [ds.SOPInstanceUID for ds in volume.datasets] == [ds.SOPInstanceUID for ds in sorted_volume.datasets]
    assert all("PixelData" not in ds for ds in volume.datasets)  # headers only, as read_headers gives them
    with pytest.raises(SeriesError):  # the order is checked, not trusted
        load_series(list(reversed(in_order)), in_slice_order=True)


def test_lossy_compression_is_read_from_the_flag_or_the_transfer_syntax():
    def image(syntax, flag=None, **attributes):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        if flag is not None:
            ds.LossyImageCompression = flag
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        return ds

    assert lossy_compression([image(ExplicitVRLittleEndian), image(JPEGLSLossless, "00")]) is None
    assert lossy_compression([image(JPEG2000, "00")]) is None  # JPEG 2000 may be lossless: the flag says
    assert lossy_compression([image(ExplicitVRLittleEndian), image(JPEG2000)]) == (
        "transfer syntax JPEG 2000 Image Compression, 1 of 2 images"
    )
    assert lossy_compression([image(JPEGBaseline8Bit, "00")]) == (  # always lossy, whatever the flag says
        "transfer syntax JPEG Baseline (Process 1), 1 of 1 images"
    )
    flagged = image(ExplicitVRLittleEndian, "01", LossyImageCompressionRatio=[8.0, 2.5])
    flagged.LossyImageCompressionMethod = ["ISO_10918_1", "ISO_15444_1"]
    assert lossy_compression([flagged]) == (
        "LossyImageCompression 01 (ISO_10918_1\\ISO_15444_1, ratio 8\\2.5), 1 of 1 images"
    )
