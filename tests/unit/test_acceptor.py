"""The upper-layer acceptor against pynetdicom as the requestor, and against raw bytes that
break the protocol: negotiation, every DIMSE path, refusals, aborts, limits and shutdown."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pydicom
import pytest
from pynetdicom import AE, build_context, build_role
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation, UserIdentityNegotiation
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification
from structlog.testing import capture_logs

from dicom_node.receive.acceptor import Acceptor, decode_command, encode_command, file_meta
from inference.synthetic import generate_phantom, write_series
from reporting.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory):
    files = write_series(
        generate_phantom(shape=(8, 16, 16), spacing=(5, 20, 20), seed=4), tmp_path_factory.mktemp("acceptor")
    )
    return pydicom.dcmread(files[0])


class Recorder:
    """A store handler keeping each instance's bytes in memory; answers with a fixed status."""

    def __init__(self, status=0x0000, comment=None):
        self.received, self.discarded, self.status, self.comment = [], [], status, comment

    def __call__(self, request):
        return RecordingSink(self, request)


class RecordingSink:
    def __init__(self, recorder, request):
        self.recorder, self.request, self.data = recorder, request, bytearray()

    def write(self, data):
        self.data += data

    def finish(self):
        self.recorder.received.append((self.request, bytes(self.data)))
        return self.recorder.status, self.recorder.comment

    def discard(self):
        self.recorder.discarded.append(self.request)


def serve(handler, **kwargs) -> tuple[Acceptor, int]:
    contexts = [build_context(Verification), build_context(CTImageStorage)]
    acceptor = Acceptor(contexts=contexts, on_store=handler, **kwargs)
    return acceptor, acceptor.start("127.0.0.1", 0)


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def server(recorder):
    acceptor, port = serve(recorder)
    yield acceptor, port
    acceptor.stop()


def requestor(*contexts, calling="SCANNER", max_pdu=16382) -> AE:
    ae = AE(ae_title=calling)
    ae.maximum_pdu_size = max_pdu
    for context in contexts or (CTImageStorage, Verification):
        ae.add_requested_context(context)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def test_echo_store_and_release_hand_the_handler_a_part10_instance(server, recorder, ct_dataset):
    _, port = server
    assoc = requestor().associate("127.0.0.1", port, ae_title="LDCTNODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(ct_dataset).Status == 0
    assoc.release()
    assert assoc.is_released
    request, data = recorder.received[0]
    assert request.peer.ae_title == "SCANNER" and request.peer.address == "127.0.0.1"
    assert request.sop_instance_uid == ct_dataset.SOPInstanceUID
    stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    assert stored.file_meta.MediaStorageSOPInstanceUID == ct_dataset.SOPInstanceUID
    assert stored.file_meta.TransferSyntaxUID == request.transfer_syntax_uid
    assert stored.file_meta.SourceApplicationEntityTitle == "SCANNER"
    assert stored.PixelData == ct_dataset.PixelData


@pytest.mark.parametrize("max_pdu", [0, 4096, 1 << 20])
def test_any_pdu_size_reassembles_the_same_bytes(server, recorder, ct_dataset, max_pdu):
    _, port = server
    assoc = requestor(max_pdu=max_pdu).associate("127.0.0.1", port, ae_title="LDCTNODE", max_pdu=max_pdu)
    assert assoc.send_c_store(ct_dataset).Status == 0
    assoc.release()
    assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(recorder.received[-1][1])).PixelData == ct_dataset.PixelData


def test_handler_status_and_comment_reach_the_requestor(ct_dataset):
    acceptor, port = serve(Recorder(0xA900, "Dataset does not match"))
    try:
        assoc = requestor().associate("127.0.0.1", port)
        rsp = assoc.send_c_store(ct_dataset)
        assoc.release()
        assert rsp.Status == 0xA900 and rsp.ErrorComment == "Dataset does not match"
    finally:
        acceptor.stop()


def test_handler_exception_becomes_a_failure_status_and_the_server_goes_on(ct_dataset):
    def explode(request):
        raise RuntimeError("boom")

    acceptor, port = serve(explode)
    try:
        for _ in range(2):
            assoc = requestor().associate("127.0.0.1", port)
            assert assoc.send_c_store(ct_dataset).Status == 0xC000
            assoc.release()
    finally:
        acceptor.stop()


def test_unsupported_sop_class_context_is_rejected_and_the_rest_accepted(server):
    _, port = server
    assoc = requestor(MRImageStorage, Verification).associate("127.0.0.1", port)
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [Verification]
    assert assoc.rejected_contexts[0].abstract_syntax == MRImageStorage
    assoc.release()


def test_role_selection_async_window_and_user_identity_are_answered(server, ct_dataset):
    _, port = server
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 5
    identity = UserIdentityNegotiation()
    identity.user_identity_type, identity.primary_field = 1, b"radiographer"
    ae = requestor()
    assoc = ae.associate("127.0.0.1", port, ext_neg=[build_role(CTImageStorage, scu_role=True), window, identity])
    assert assoc.is_established
    assert assoc.send_c_store(ct_dataset).Status == 0
    assoc.release()


def test_calling_ae_policy_rejects_and_reports(ct_dataset):
    rejected = []
    acceptor, port = serve(
        Recorder(), calling_ae_allowed=lambda title, address: title == "CT1", on_rejected=rejected.append
    )
    try:
        started = time.monotonic()
        assoc = requestor(calling="STRANGER").associate("127.0.0.1", port)
        assert assoc.is_rejected, (
            f"established {assoc.is_established}, aborted {assoc.is_aborted}, "
            f"{time.monotonic() - started:.1f} s, reported {rejected}"
        )
        assert rejected[0].ae_title == "STRANGER" and rejected[0].address == "127.0.0.1"
        assert requestor(calling="CT1").associate("127.0.0.1", port).is_established
    finally:
        acceptor.stop()


def test_more_associations_than_allowed_get_a_transient_rejection():
    acceptor, port = serve(Recorder(), max_associations=1)
    try:
        first = requestor().associate("127.0.0.1", port)
        assert first.is_established
        second = requestor().associate("127.0.0.1", port)
        assert second.is_rejected
        first.release()
    finally:
        acceptor.stop()


def test_dataset_over_the_size_limit_is_dropped_and_refused(ct_dataset):
    recorder = Recorder()
    acceptor, port = serve(recorder, max_dataset_bytes=200)
    try:
        assoc = requestor().associate("127.0.0.1", port)
        assert assoc.send_c_store(ct_dataset).Status == 0xA700
        assert assoc.send_c_echo().Status == 0  # still in step
        assoc.release()
        assert recorder.received == [] and len(recorder.discarded) == 1
    finally:
        acceptor.stop()


def test_sink_failing_while_writing_fails_that_instance_only(ct_dataset):
    class FailingSink(RecordingSink):
        def write(self, data):
            raise OSError("disk gone")

    recorder = Recorder()
    calls = iter([FailingSink, RecordingSink])
    acceptor, port = serve(lambda request: next(calls)(recorder, request))
    try:
        assoc = requestor().associate("127.0.0.1", port)
        assert assoc.send_c_store(ct_dataset).Status == 0xC000
        assert assoc.send_c_store(ct_dataset).Status == 0
        assoc.release()
        assert len(recorder.discarded) == 1 and len(recorder.received) == 1
    finally:
        acceptor.stop()


# ---- raw bytes ------------------------------------------------------------------------------
def associate_rq_pdu(calling=b"SCANNER", contexts=((1, CTImageStorage),), called=b"LDCTNODE") -> bytes:
    """An A-ASSOCIATE-RQ written out by hand (PS3.8 9.3.2), Explicit VR LE proposed; AE titles
    shorter than 16 bytes are padded with spaces."""

    def item(item_type, body):
        return struct.pack(">BBH", item_type, 0, len(body)) + body

    variable = item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, abstract in contexts:
        variable += item(
            0x20,
            struct.pack(">BBBB", context_id, 0, 0, 0)
            + item(0x30, abstract.encode())
            + item(0x40, b"1.2.840.10008.1.2.1"),
        )
    variable += item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    body = struct.pack(">HH16s16s32s", 1, 0, called.ljust(16), calling.ljust(16), b"\0" * 32) + variable
    return struct.pack(">BBI", 1, 0, len(body)) + body


def raw_session(port: int, *pdus: bytes) -> bytes:
    """Send raw PDUs, return everything the acceptor answered until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for pdu in pdus:
            sock.sendall(pdu)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def pdu_types(stream: bytes) -> list[int]:
    types, offset = [], 0
    while offset + 6 <= len(stream):
        types.append(stream[offset])
        offset += 6 + struct.unpack_from(">I", stream, offset + 2)[0]
    return types


def abort_reason(stream: bytes) -> int:
    assert stream[-10] == 0x07, pdu_types(stream)
    return stream[-1]


def test_data_before_association_is_aborted(server):
    _, port = server
    answer = raw_session(port, struct.pack(">BBI", 4, 0, 2) + b"\0\0")
    assert pdu_types(answer) == [0x07] and abort_reason(answer) == 0x02  # unexpected PDU


def test_unknown_pdu_type_after_association_is_aborted(server):
    _, port = server
    answer = raw_session(port, associate_rq_pdu(), struct.pack(">BBI", 0x42, 0, 0))
    assert pdu_types(answer) == [0x02, 0x07] and abort_reason(answer) == 0x01  # unrecognised PDU


def test_pdv_on_a_context_never_accepted_is_aborted(server):
    _, port = server
    pdv = struct.pack(">IBB", 4, 9, 0x03) + b"\0\0"
    answer = raw_session(port, associate_rq_pdu(), struct.pack(">BBI", 4, 0, len(pdv)) + pdv)
    assert pdu_types(answer) == [0x02, 0x07]


def test_pdv_longer_than_its_pdu_is_aborted(server):
    _, port = server
    pdv = struct.pack(">IBB", 4000, 1, 0x03) + b"\0\0"
    answer = raw_session(port, associate_rq_pdu(), struct.pack(">BBI", 4, 0, len(pdv)) + pdv)
    assert pdu_types(answer) == [0x02, 0x07] and abort_reason(answer) == 0x06


def test_malformed_associate_request_is_aborted_and_the_server_goes_on(server):
    _, port = server
    answer = raw_session(port, associate_rq_pdu(contexts=((2, CTImageStorage),)))  # context IDs are odd
    assert pdu_types(answer) == [0x07] and abort_reason(answer) == 0x06  # invalid parameter value
    assert pdu_types(raw_session(port, associate_rq_pdu())) == [0x02]


def test_huge_associate_request_length_is_refused_without_reading_it(server):
    _, port = server
    answer = raw_session(port, struct.pack(">BBI", 1, 0, 0x7FFFFFFF))
    assert pdu_types(answer) == [0x07]


def test_command_then_release_answers_echo_then_release(server):
    _, port = server
    command = encode_command(
        {
            0x0002: b"1.2.840.10008.1.1\0",
            0x0100: struct.pack("<H", 0x0030),
            0x0110: struct.pack("<H", 7),
            0x0800: struct.pack("<H", 0x0101),
        }
    )
    pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command
    rq = associate_rq_pdu(contexts=((1, Verification),))
    answer = raw_session(port, rq, struct.pack(">BBI", 4, 0, len(pdv)) + pdv, struct.pack(">BBII", 5, 0, 4, 0))
    assert pdu_types(answer) == [0x02, 0x04, 0x06]
    p_data = 6 + struct.unpack_from(">I", answer, 2)[0]  # after the A-ASSOCIATE-AC
    item_length, _, control = struct.unpack_from(">IBB", answer, p_data + 6)
    assert control == 0x03  # command, last fragment
    response = decode_command(answer[p_data + 12 : p_data + 10 + item_length])
    assert struct.unpack("<H", response[0x0100])[0] == 0x8030
    assert struct.unpack("<H", response[0x0120])[0] == 7
    assert struct.unpack("<H", response[0x0900])[0] == 0


def test_idle_association_is_aborted_after_the_network_timeout():
    acceptor, port = serve(Recorder(), network_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(associate_rq_pdu())
            start = time.monotonic()
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert pdu_types(received) == [0x02, 0x07]
        assert time.monotonic() - start < 4
    finally:
        acceptor.stop()


def test_stop_closes_open_associations_promptly():
    acceptor, port = serve(Recorder())
    assoc = requestor().associate("127.0.0.1", port)
    assert assoc.is_established and acceptor.active_associations == 1
    stopper = threading.Thread(target=acceptor.stop)
    start = time.monotonic()
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive() and time.monotonic() - start < 5
    assert acceptor.active_associations == 0


def user_information(associate_ac: bytes) -> dict[int, bytes]:
    """Sub-items of an A-ASSOCIATE-AC's User Information item: type -> value."""

    def items(data, offset):
        while offset + 4 <= len(data):
            item_type, _, length = struct.unpack_from(">BBH", data, offset)
            yield item_type, data[offset + 4 : offset + 4 + length]
            offset += 4 + length

    user = next(value for item_type, value in items(associate_ac, 6 + 68) if item_type == 0x50)
    return dict(items(user, 0))


RELEASE_RQ = struct.pack(">BBII", 5, 0, 4, 0)


def test_nul_padded_ae_titles_are_accepted_and_the_answer_names_the_node(recorder):
    """Byte level: AE fields padded with NULs instead of spaces; the A-ASSOCIATE-AC echoes them
    and announces ldct-node's own Implementation Class UID and Version Name."""
    accepted = []
    acceptor, port = serve(
        recorder, on_accepted=accepted.append, calling_ae_allowed=lambda title, address: title == "SCANNER"
    )
    try:
        rq = associate_rq_pdu(calling=b"SCANNER".ljust(16, b"\0"), called=b"LDCTNODE".ljust(16, b"\0"))
        answer = raw_session(port, rq, RELEASE_RQ)
    finally:
        acceptor.stop()
    assert pdu_types(answer) == [0x02, 0x06]
    assert answer[10:26] == b"LDCTNODE".ljust(16, b"\0") and answer[26:42] == b"SCANNER".ljust(16, b"\0")
    assert accepted[0].ae_title == "SCANNER"
    info = user_information(answer)
    assert info[0x52] == IMPLEMENTATION_CLASS_UID.encode()
    assert info[0x55] == IMPLEMENTATION_VERSION_NAME.encode() == b"LDCT_NODE_0_1_0"


def test_odd_ae_title_bytes_are_logged_and_accepted_unless_an_allow_list_applies(recorder):
    odd = b"CT\x01SCANNER\xe9"
    acceptor, port = serve(recorder)
    try:
        with capture_logs() as logs:
            answer = raw_session(port, associate_rq_pdu(calling=odd), RELEASE_RQ)
    finally:
        acceptor.stop()
    assert pdu_types(answer) == [0x02, 0x06]
    [line] = [entry for entry in logs if entry["event"] == "odd AE title bytes"]
    assert line["calling_ae"] == "CT?SCANNER?" and "outside the AE repertoire" in line["problem"]

    rejected = []
    acceptor, port = serve(
        recorder, on_rejected=rejected.append, calling_ae_allowed=lambda title, address: title == "CTSCANNER"
    )
    try:
        answer = raw_session(port, associate_rq_pdu(calling=odd))
    finally:
        acceptor.stop()
    assert pdu_types(answer) == [0x03] and answer[7:10] == bytes([1, 1, 3])  # calling AE not recognised
    assert rejected[0].ae_title == "CT?SCANNER?"


def test_file_meta_reads_back_with_pydicom():
    meta = file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2", "CT1")
    sop_instance_uid = b"\x08\x00\x18\x00\x08\x00\x00\x001.2.3.4\x00"  # Implicit VR LE element
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(meta + sop_instance_uid))
    assert ds.SOPInstanceUID == "1.2.3.4"
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert ds.file_meta.SourceApplicationEntityTitle == "CT1"  # who sent it
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID  # who wrote the file
    assert ds.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME


def test_dataset_cut_by_an_abort_is_discarded(server, recorder):
    _, port = server
    command = encode_command(
        {
            0x0002: b"1.2.840.10008.5.1.4.1.1.2\0",
            0x0100: struct.pack("<H", 0x0001),
            0x0110: struct.pack("<H", 1),
            0x0700: struct.pack("<H", 0),
            0x0800: struct.pack("<H", 0x0000),
            0x1000: b"1.2.3.4\0",
        }
    )
    command_pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command
    data_pdv = struct.pack(">IBB", 2 + 64, 1, 0x00) + b"\0" * 64  # a dataset fragment, not the last
    answer = raw_session(
        port,
        associate_rq_pdu(),
        struct.pack(">BBI", 4, 0, len(command_pdv)) + command_pdv,
        struct.pack(">BBI", 4, 0, len(data_pdv)) + data_pdv,
        struct.pack(">BBIBBBB", 7, 0, 4, 0, 0, 0, 0),
    )
    assert pdu_types(answer) == [0x02]
    deadline = time.monotonic() + 5
    while not recorder.discarded and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.sop_instance_uid for r in recorder.discarded] == ["1.2.3.4"] and recorder.received == []
