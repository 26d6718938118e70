"""The receive path's header scanner agrees with pydicom, or steps aside and lets pydicom decide."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_node.receive import store_scp
from dicom_node.receive.header_scan import DatasetTruncated, scan_header
from dicom_node.receive.store_scp import InstanceRejected, check_received
from inference.synthetic import generate_phantom, write_series

LIDC = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lidc-idri" / "LIDC-IDRI-0002"


def encoded(ds: pydicom.Dataset, implicit: bool = False) -> bytes:
    if implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def ct_bytes(tmp_path_factory) -> bytes:
    files = write_series(
        generate_phantom(shape=(8, 16, 16), spacing=(5, 20, 20), seed=3), tmp_path_factory.mktemp("scan")
    )
    return files[0].read_bytes()


def verdict(data: bytes, ds_class: str, ds_uid: str, *, use_scanner: bool, monkeypatch) -> object:
    """check_received's answer on a whole instance (the UIDs or the refusal status), with or
    without the scanner."""
    if not use_scanner:
        monkeypatch.setattr(store_scp, "scan_header", lambda data, complete=True: None)
    try:
        return check_received(data, len(data), lambda: data, ds_class, ds_uid)
    except InstanceRejected as exc:
        return exc.status
    finally:
        monkeypatch.undo()


def assert_same_verdict(data: bytes, ds: Dataset, monkeypatch) -> None:
    scanned = verdict(data, ds.SOPClassUID, ds.SOPInstanceUID, use_scanner=True, monkeypatch=monkeypatch)
    reference = verdict(data, ds.SOPClassUID, ds.SOPInstanceUID, use_scanner=False, monkeypatch=monkeypatch)
    assert scanned == reference


@pytest.mark.parametrize("implicit", [False, True])
def test_scanner_reads_what_pydicom_reads(ct_bytes, implicit, monkeypatch):
    ds = pydicom.dcmread(BytesIO(ct_bytes))
    data = encoded(ds, implicit)
    scanned = scan_header(data)
    assert scanned is not None
    assert scanned.text("series_uid") == ds.SeriesInstanceUID
    assert scanned.text("study_uid") == ds.StudyInstanceUID
    assert scanned.us("rows") == ds.Rows and scanned.us("bits_allocated") == ds.BitsAllocated
    assert scanned.pixel_length == len(ds.PixelData)
    assert_same_verdict(data, ds, monkeypatch)


@pytest.mark.parametrize("implicit", [False, True])
def test_a_prefix_answers_once_it_holds_the_whole_header(ct_bytes, implicit):
    """What the receive path scans while the pixels are still arriving."""
    data = encoded(pydicom.dcmread(BytesIO(ct_bytes)), implicit)
    whole = scan_header(data)
    header_end = whole.pixel_offset
    for cut in (header_end, header_end + 1, len(data) - 1):
        early = scan_header(data[:cut], complete=False)
        assert early is not None and early.values == whole.values, cut
        assert early.pixel_available(len(data)) == whole.pixel_available(len(data)) == len(data) - header_end
    for cut in (header_end - 1, header_end - 12, 300):
        assert scan_header(data[:cut], complete=False) is None, cut  # not enough: decided at the end


def test_scanner_steps_over_nested_undefined_length_sequences(ct_bytes, monkeypatch):
    ds = pydicom.dcmread(BytesIO(ct_bytes))
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "99X", "x" * 7
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    item.ConceptNameCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    item["ConceptNameCodeSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = inner.is_undefined_length_sequence_item = True
    for implicit in (False, True):
        data = encoded(ds, implicit)
        assert b"\xfe\xff\xdd\xe0" in data  # pydicom wrote undefined-length sequences
        scanned = scan_header(data)
        assert scanned is not None and scanned.pixel_length == len(ds.PixelData)
        assert scanned.text("sop_instance_uid") == ds.SOPInstanceUID
        assert_same_verdict(data, ds, monkeypatch)


def test_a_cut_dataset_without_pixel_data_is_truncated_only_when_complete(ct_bytes):
    """pydicom reads a cut SR without complaint; the scanner, told the bytes are all there,
    says the dataset ends inside an element (a prefix of a dataset still arriving is no verdict)."""
    ds = pydicom.dcmread(BytesIO(ct_bytes))
    del ds.PixelData
    ds.ContentSequence = Sequence([Dataset()])
    ds.ContentSequence[0].TextValue = "x" * 300
    whole = encoded(ds)
    assert scan_header(whole).pixel_length is None
    for cut in (len(whole) - 3, len(whole) - 100, len(whole) - 330):
        with pytest.raises(DatasetTruncated):
            scan_header(whole[:cut])
        assert scan_header(whole[:cut], complete=False) is None


def test_scanner_leaves_other_transfer_syntaxes_to_pydicom(ct_bytes):
    ds = pydicom.dcmread(BytesIO(ct_bytes))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    assert scan_header(encoded(ds)) is None
    assert scan_header(b"\x00" * 200) is None


@pytest.mark.skipif(not LIDC.is_dir(), reason="LIDC-IDRI-0002 not present")
def test_scanner_agrees_on_a_real_scanner_series(monkeypatch):
    for path in sorted(LIDC.iterdir())[::20]:
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert scan_header(data) is not None
        assert_same_verdict(data, ds, monkeypatch)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_bytes_get_the_same_verdict_either_way(ct_bytes, data, monkeypatch):
    """Flipped bytes and truncations: the scanner never accepts what pydicom would refuse."""
    raw = bytearray(ct_bytes)
    for _ in range(data.draw(st.integers(0, 4))):
        raw[data.draw(st.integers(128, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(132, len(raw)))]
    ds = pydicom.dcmread(BytesIO(ct_bytes), stop_before_pixels=True)
    assert_same_verdict(bytes(raw), ds, monkeypatch)


def test_a_vr_pydicom_would_not_read_is_left_to_it(ct_bytes, monkeypatch):
    """Found by the mutation test: 'CS' turned into 'CA' or 'US' was read by the scanner, refused by pydicom."""
    at = ct_bytes.index(b"\x08\x00\x05\x00CS")  # Specific Character Set
    ds = pydicom.dcmread(BytesIO(ct_bytes), stop_before_pixels=True)
    for vr in (b"CA", b"US"):  # unknown; known but not this attribute's (pydicom then fails on it)
        data = ct_bytes[: at + 4] + vr + ct_bytes[at + 6 :]
        assert scan_header(data) is None
        assert_same_verdict(data, ds, monkeypatch)


@pytest.mark.parametrize("implicit", [False, True])
def test_every_single_byte_change_in_the_header_gets_pydicoms_verdict(ct_bytes, implicit, monkeypatch):
    """Each header byte set to values that make other VRs, tags and lengths ('A', 'C', 'O', 'U',
    0, 255, +1): the scanner accepts exactly what pydicom accepts, with the same UIDs."""
    ds = pydicom.dcmread(BytesIO(ct_bytes), stop_before_pixels=True)
    base = encoded(pydicom.dcmread(BytesIO(ct_bytes)), implicit)
    mismatches = []
    for position in range(128, scan_header(base).pixel_offset):
        for value in {0x00, 0x41, 0x43, 0x4F, 0x55, 0xFF, (base[position] + 1) % 256} - {base[position]}:
            data = base[:position] + bytes([value]) + base[position + 1 :]
            scanned = verdict(data, ds.SOPClassUID, ds.SOPInstanceUID, use_scanner=True, monkeypatch=monkeypatch)
            reference = verdict(data, ds.SOPClassUID, ds.SOPInstanceUID, use_scanner=False, monkeypatch=monkeypatch)
            if scanned != reference:
                mismatches.append((position, value, scanned, reference))
    assert mismatches == []
