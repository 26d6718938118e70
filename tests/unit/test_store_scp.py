"""The Store SCP in-process, driven by a pynetdicom SCU: what is stored, what is refused and why."""

import socket

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    SegmentationStorage,
    XRayRadiationDoseSRStorage,
)

from dicom_node.queue.series import SeriesTracker
from dicom_node.receive.sop_classes import STORAGE_SOP_CLASSES
from dicom_node.receive.spool import Spool
from dicom_node.receive.store_scp import StoreSCP
from inference.synthetic import generate_phantom, write_series
from tests.study_fixtures import write_mixed_study


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    return write_series(generate_phantom(shape=(8, 32, 32), spacing=(5, 10, 10), seed=1), folder)


@pytest.fixture
def tracker():
    return SeriesTracker()


@pytest.fixture
def scp(tmp_path, tracker):
    spool = Spool(tmp_path / "spool")
    server = StoreSCP(
        ae_title="LDCTNODE",
        spool=spool,
        allowed_calling_ae_titles=["SCANNER"],
        on_stored=lambda peer, header: tracker.touch(header.study_uid, header.series_uid, peer.ae_title),
    )
    port = free_port()
    server.start("127.0.0.1", port)
    yield server, port
    server.stop()


def send(port, datasets, calling="SCANNER", sop_class=CTImageStorage):
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="LDCTNODE")
    if not assoc.is_established:
        return None
    statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    assoc.release()
    return statuses


def test_stores_atomically_and_tracks_the_series(scp, tracker, ct_files):
    server, port = scp
    datasets = [pydicom.dcmread(p) for p in ct_files]
    assert send(port, datasets) == [0] * len(datasets)
    ds = datasets[0]
    stored = server.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert pydicom.dcmread(stored).PixelData == ds.PixelData
    assert [p for p in server.spool.tmp.iterdir() if p.stat().st_size] == []  # only empty prepared files
    assert tracker.is_active(ds.SeriesInstanceUID)
    server.stop()
    assert list(server.spool.tmp.iterdir()) == []


def test_unknown_calling_ae_is_refused_at_association(scp, ct_files):
    _, port = scp
    assert send(port, [pydicom.dcmread(ct_files[0])], calling="STRANGER") is None


def test_low_disk_answers_out_of_resources_and_writes_nothing(scp, ct_files):
    server, port = scp
    server.spool.min_free_bytes = 10**18
    assert send(port, [pydicom.dcmread(ct_files[0])]) == [0xA700]
    assert server.spool.series_dirs() == []


def test_dataset_not_matching_negotiated_class(scp, ct_files, tmp_path):
    """A C-STORE under the CT context whose dataset says MR is refused with 0xA900."""
    server, port = scp
    ds = pydicom.dcmread(ct_files[0])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage; the file meta still says CT
    assert send_file_bytes(port, tmp_path / "mr.dcm", file_bytes(ds)) == 0xA900
    assert server.spool.series_dirs() == []


def test_hostile_uid_cannot_escape_the_spool(scp, ct_files, tmp_path):
    server, port = scp
    ds = pydicom.dcmread(ct_files[0])
    ds.SeriesInstanceUID = "../../../../tmp/evil"
    assert send(port, [ds])[0] == 0xC000
    assert not (tmp_path / "evil").exists() and server.spool.series_dirs() == []


def test_enhanced_ct_is_stored_not_refused(scp, tracker, ct_files):
    """Refusing it made a PACS fail the whole study it was routing: it is kept and recorded
    as not processed by the completeness stage."""
    server, port = scp
    ds = pydicom.dcmread(ct_files[0])
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    assert send(port, [ds], sop_class=EnhancedCTImageStorage) == [0]
    assert server.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID).is_file()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_mixed_study(tmp_path_factory.mktemp("study"), lung_slices=8, size=32)


@pytest.mark.parametrize("kind", ["dose_sr", "dose_screen", "presentation_state", "localizer"])
def test_objects_of_a_routed_study_are_stored_as_received(scp, study, kind):
    """An SR and a presentation state have no pixel data; each is kept as sent."""
    server, port = scp
    [path] = study.files(kind)
    ds = pydicom.dcmread(path)
    assert send(port, [ds], sop_class=ds.SOPClassUID) == [0]
    stored = server.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert [(e.tag, e.value) for e in pydicom.dcmread(stored)] == [(e.tag, e.value) for e in ds]


def test_every_storage_class_is_negotiated_a_private_one_is_not(scp):
    _, port = scp
    ae = AE(ae_title="SCANNER")
    for sop_class in (STORAGE_SOP_CLASSES[0], STORAGE_SOP_CLASSES[-1], XRayRadiationDoseSRStorage, "1.2.3.4.5"):
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="LDCTNODE")
    assert assoc.is_established
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    assoc.release()
    assert accepted == {STORAGE_SOP_CLASSES[0], STORAGE_SOP_CLASSES[-1], XRayRadiationDoseSRStorage}
    assert len(STORAGE_SOP_CLASSES) > 150


def test_truncated_sr_is_refused_and_not_spooled(scp, study, tmp_path):
    """An object without pixel data has no length to check: the header scan finds the cut."""
    server, port = scp
    payload = study.dose_sr.read_bytes()
    for cut in (len(payload) - 3, len(payload) - 40, len(payload) // 2):
        assert send_file_bytes(port, tmp_path / "cut.dcm", payload[:cut], sop_class=XRayRadiationDoseSRStorage) == (
            0xC000
        ), cut
    assert server.spool.series_dirs() == []


def test_one_bit_segmentation_frames_are_not_short(scp, ct_files, tmp_path):
    """63 x 63 one-bit pixels are 496.1 bytes, sent as 497 (+1 to even): bits round up to bytes."""
    server, port = scp
    ds = pydicom.dcmread(ct_files[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 63, 63, 1, 1, 0
    ds.PixelData = bytes(498)
    assert send_file_bytes(port, tmp_path / "seg.dcm", file_bytes(ds), sop_class=SegmentationStorage) == 0
    assert len(server.spool.series_dirs()) == 1


def test_dropped_when_configured_but_still_reported(tmp_path, study):
    """series.not_processed = "drop": acknowledged, checked, reported to the tracker, not kept;
    CT is kept as always."""
    reported = []
    server = StoreSCP(
        ae_title="LDCTNODE",
        spool=Spool(tmp_path / "spool"),
        on_stored=lambda peer, header: reported.append(header),
        keep_not_processed=False,
    )
    port = free_port()
    server.start("127.0.0.1", port)
    try:
        sr, ct = pydicom.dcmread(study.dose_sr), pydicom.dcmread(study.lung[0])
        assert send(port, [sr], sop_class=sr.SOPClassUID) == [0]
        assert send(port, [ct]) == [0]
    finally:
        server.stop()
    assert [(h.sop_instance_uid, h.kept) for h in reported] == [(sr.SOPInstanceUID, False), (ct.SOPInstanceUID, True)]
    assert [series for _, series, _ in server.spool.series_dirs()] == [ct.SeriesInstanceUID]


def test_clean_temporary_spares_live_writers_of_a_shared_spool(tmp_path):
    """A worker starting on a shared spool must not delete a live receiver's partial file."""
    import os
    import subprocess
    import time

    from dicom_node.receive.spool import _HOST

    spool = Spool(tmp_path / "spool")
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = {
        "live": f"1.2~{_HOST}~{os.getpid()}~aa.part",
        "dead": f"1.2~{_HOST}~{dead.pid}~bb.part",
        "other_host_fresh": "1.2~otherhost~1~cc.part",
        "other_host_old": "1.2~otherhost~1~dd.part",
        "legacy": "1.2.999.ee.part",
    }
    for name in names.values():
        (spool.tmp / name).write_bytes(b"x")
    old = time.time() - 3 * 24 * 3600
    os.utime(spool.tmp / names["other_host_old"], (old, old))
    assert spool.clean_temporary() == 3
    assert sorted(p.name for p in spool.tmp.iterdir()) == sorted([names["live"], names["other_host_fresh"]])


def send_file_bytes(port, path, payload: bytes, calling="SCANNER", sop_class=CTImageStorage) -> int:
    """C-STORE the bytes of a DICOM file exactly as they are (chunked send: no re-encoding).

    The request's SOP class/instance come from the file meta, whatever the dataset says.
    """
    from pynetdicom import _config

    path.write_bytes(payload)
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="LDCTNODE")
    assert assoc.is_established
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    return status.Status


def file_bytes(ds) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer)  # the file meta is kept as it is, even where it disagrees with the dataset
    return buffer.getvalue()


def test_truncated_dataset_is_refused_and_not_spooled(scp, ct_files, tmp_path):
    server, port = scp
    payload = ct_files[0].read_bytes()
    for cut in (len(payload) - 100, len(payload) - 2100, 700):
        assert send_file_bytes(port, tmp_path / "cut.dcm", payload[:cut]) in (0xC000, 0xA900), cut
    assert server.spool.series_dirs() == []


def test_pixel_data_of_wrong_length_is_refused(scp, ct_files, tmp_path):
    server, port = scp
    ds = pydicom.dcmread(ct_files[0])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    assert send_file_bytes(port, tmp_path / "short.dcm", file_bytes(ds)) == 0xA900
    ds.PixelData = ds.PixelData * 4
    assert send_file_bytes(port, tmp_path / "long.dcm", file_bytes(ds)) == 0xA900
    assert server.spool.series_dirs() == []


def test_header_longer_than_the_kept_head_is_checked_from_the_file(scp, ct_files, tmp_path):
    """A header beyond HEAD_BYTES (a large private element) is read back from the spooled file."""
    from dicom_node.receive.spool import HEAD_BYTES

    server, port = scp
    ds = pydicom.dcmread(ct_files[0])
    ds.add_new(0x00291010, "OB", b"\x01" * (HEAD_BYTES + 1000))
    assert send_file_bytes(port, tmp_path / "long-header.dcm", file_bytes(ds)) == 0
    stored = server.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert pydicom.dcmread(stored).PixelData == ds.PixelData
    ds.SOPInstanceUID = "1.2.3.4.5.6.9"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    assert send_file_bytes(port, tmp_path / "long-header-short-pixels.dcm", file_bytes(ds)) == 0xA900


def test_changed_resend_replaces_the_instance(scp, ct_files):
    server, port = scp
    ds = pydicom.dcmread(ct_files[0])
    assert send(port, [ds]) == [0]
    ds.PixelData = bytes(len(ds.PixelData))
    assert send(port, [ds]) == [0]
    stored = server.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert pydicom.dcmread(stored).PixelData == ds.PixelData


def test_caller_policy_binds_titles_to_addresses():
    from dicom_node.receive.store_scp import CallerPolicy

    open_policy = CallerPolicy()
    assert open_policy.is_open and open_policy.allows("ANY", "203.0.113.9")
    policy = CallerPolicy(["ANYWHERE"], {"CT1": ["10.0.0.5"], "CT2": ["10.1.0.0/16", "2001:db8::/32"]})
    assert policy.allows("ANYWHERE", "198.51.100.1")
    assert policy.allows("CT1", "10.0.0.5") and not policy.allows("CT1", "10.0.0.6")
    assert policy.allows("CT2", "10.1.200.3") and policy.allows("CT2", "2001:db8::7")
    assert policy.allows("CT1", "::ffff:10.0.0.5")  # IPv4-mapped, as a dual-stack socket reports it
    assert not policy.allows("CT2", "not-an-address") and not policy.allows("STRANGER", "10.0.0.5")
    assert policy.titles_for("192.0.2.1") == ["ANYWHERE"]
    assert CallerPolicy([], {"CT1": ["10.0.0.5"]}).titles_for("192.0.2.1") == ["\\"]  # nobody matches
