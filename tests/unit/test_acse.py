"""Association negotiation (`dicom_node.receive.acse`) against pynetdicom's as the reference: the same
A-ASSOCIATE-RQ must get the same A-ASSOCIATE-AC, byte for byte; malformed requests raise
MalformedPDU and nothing else."""

from __future__ import annotations

import random
import struct

import pytest
from pydicom.uid import JPEG2000, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    StoragePresentationContexts,
    build_context,
    build_role,
)
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import negotiate_as_acceptor
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from dicom_node.receive.acceptor import Acceptor, _supported_syntaxes
from dicom_node.receive.acse import MalformedPDU, decode_associate_rq, encode_associate_ac, negotiate
from dicom_node.receive.sop_classes import presentation_contexts

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
MAX_PDU = 262144
NODE_CONTEXTS = presentation_contexts()  # what the node's Store SCP serves


def request_pdu(contexts, extra_user_items=(), calling="STORESCU", called="LDCTNODE") -> bytes:
    """An A-ASSOCIATE-RQ as pynetdicom's requestor encodes it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    for number, context in enumerate(contexts):
        context.context_id = 2 * number + 1
    primitive.presentation_context_definition_list = list(contexts)
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = "1.2.276.0.7230010.3.0.3.6.7"
    primitive.user_information = [max_length, class_uid, *extra_user_items]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def pynetdicom_answer(rq: bytes, acceptor_contexts) -> bytes:
    """The A-ASSOCIATE-AC pynetdicom's own negotiation builds for `rq` (the reference)."""
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(rq)
    request = pdu.to_primitive()
    items = list(request.user_information or [])
    roles = {
        str(item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in items
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    results, role_replies = negotiate_as_acceptor(
        request.presentation_context_definition_list, acceptor_contexts, roles or None
    )
    accept = A_ASSOCIATE()
    accept.application_context_name = APPLICATION_CONTEXT
    accept.calling_ae_title, accept.called_ae_title = request.calling_ae_title, request.called_ae_title
    accept.result, accept.result_source = 0x00, 0x01
    accept.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = MAX_PDU
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    info = [max_length, class_uid, version, *role_replies]
    if any(isinstance(i, AsynchronousOperationsWindowNegotiation) for i in items):
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 1
        info.append(window)
    accept.user_information = info
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(accept)
    return ac.encode()


def our_answer(rq: bytes, acceptor_contexts) -> bytes:
    request = decode_associate_rq(rq[6:])
    results = negotiate(request.contexts, _supported_syntaxes(acceptor_contexts))
    return encode_associate_ac(
        request,
        results,
        application_context=APPLICATION_CONTEXT,
        max_pdu_size=MAX_PDU,
        implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
        implementation_version=PYNETDICOM_IMPLEMENTATION_VERSION,
    )


def storescu_like_proposal():
    """Every storage SOP class with three transfer syntaxes, as dcmtk's storescu proposes them."""
    return [
        build_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian])
        for cx in StoragePresentationContexts
    ] + [build_context(Verification)]


def window(invoked=5, performed=5):
    item = AsynchronousOperationsWindowNegotiation()
    item.maximum_number_operations_invoked, item.maximum_number_operations_performed = invoked, performed
    return item


def identity():
    item = UserIdentityNegotiation()
    item.user_identity_type, item.primary_field, item.positive_response_requested = 1, b"radiographer", True
    return item


def extended():
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid, item.service_class_application_information = CTImageStorage, b"\x01"
    return item


CASES = {
    "storescu's 128 contexts": (storescu_like_proposal(), [], NODE_CONTEXTS),
    "unsupported abstract syntax": (
        [build_context(MRImageStorage), build_context(CTImageStorage), build_context(Verification)],
        [],
        [build_context(Verification), build_context(CTImageStorage)],
    ),
    "no common transfer syntax": (
        [build_context(CTImageStorage, [JPEG2000, ExplicitVRBigEndian])],
        [],
        [build_context(CTImageStorage, [ImplicitVRLittleEndian])],
    ),
    "acceptor's preference wins": (
        [build_context(CTImageStorage, [ExplicitVRBigEndian, ImplicitVRLittleEndian, ExplicitVRLittleEndian])],
        [],
        [build_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])],
    ),
    "one abstract syntax in two contexts": (
        [build_context(CTImageStorage, [JPEG2000]), build_context(CTImageStorage, [ImplicitVRLittleEndian])],
        [],
        NODE_CONTEXTS,
    ),
    "role selection, window, identity, extended": (
        [build_context(CTImageStorage), build_context(Verification)],
        [build_role(CTImageStorage, scu_role=True, scp_role=True), window(), identity(), extended()],
        NODE_CONTEXTS,
    ),
    "window without anything else": ([build_context(CTImageStorage)], [window(1, 1)], NODE_CONTEXTS),
}


@pytest.mark.parametrize("case", CASES)
def test_answer_is_pynetdicoms_byte_for_byte(case):
    proposal, user_items, acceptor_contexts = CASES[case]
    rq = request_pdu(proposal, user_items)
    assert our_answer(rq, acceptor_contexts) == pynetdicom_answer(rq, acceptor_contexts)


def test_request_fields_are_read():
    rq = request_pdu(
        [build_context(CTImageStorage, [JPEG2000, JPEG2000, ImplicitVRLittleEndian])],
        [window()],
        calling="CT SCANNER 1",
    )
    request = decode_associate_rq(rq[6:])
    assert request.calling_ae_title == "CT SCANNER 1" and request.protocol_version == 1
    assert request.application_context == APPLICATION_CONTEXT and request.asynchronous_window_requested
    [context] = request.contexts
    assert (context.context_id, context.abstract_syntax) == (1, CTImageStorage)
    assert context.transfer_syntaxes == (JPEG2000, ImplicitVRLittleEndian)  # repeats dropped


def raw_rq(context_body: bytes, calling: bytes = b"SCANNER") -> bytes:
    def item(item_type, body):
        return struct.pack(">BBH", item_type, 0, len(body)) + body

    body = (
        struct.pack(">HH16s16s32s", 1, 0, b"LDCTNODE".ljust(16), calling.ljust(16), b"\0" * 32)
        + item(0x10, APPLICATION_CONTEXT.encode())
        + item(0x20, context_body)
    )
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\0" * 20, "shorter than its fixed fields"),
        (raw_rq(b"\x02\0\0\0"), "not odd"),
        (raw_rq(b"\x01\0\0\0"), "without abstract or transfer syntax"),
        (raw_rq(b"\x01\0\0\0\x30\0\0\x40"), "runs past its container"),
    ],
)
def test_malformed_requests_say_what_is_wrong(body, message):
    with pytest.raises(MalformedPDU, match=message):
        decode_associate_rq(body)


@pytest.mark.parametrize(
    ("field", "title", "problem"),
    [
        (b"CT1".ljust(16, b"\0"), "CT1", None),  # NUL padding, as some senders write it
        (b"CT1".ljust(16), "CT1", None),  # space padding (PS3.8)
        (b"  CT 1".ljust(14) + b"\0\0", "CT 1", None),  # leading spaces are not significant
        (b"BAD\\TITLE", "BAD?TITLE", "outside the AE repertoire"),
        (b"\xe9CHO", "?CHO", "outside the AE repertoire"),
        (b"SCAN\0NER", "SCAN?NER", "outside the AE repertoire"),
        (b"SCAN\x01", "SCAN?", "outside the AE repertoire"),
        (b"", "", "empty"),
        (b"\0" * 16, "", "empty"),
    ],
)
def test_ae_titles_lose_their_padding_and_odd_bytes_are_reported_not_refused(field, title, problem):
    body = raw_rq(
        b"\x03\0\0\0"
        + struct.pack(">BBH", 0x30, 0, len(CTImageStorage))
        + CTImageStorage.encode()
        + struct.pack(">BBH", 0x40, 0, 17)
        + b"1.2.840.10008.1.2",
        calling=field.ljust(16, b"\0"),
    )
    request = decode_associate_rq(body)
    assert request.calling_ae_title == title
    assert request.calling_ae_field == field.ljust(16, b"\0")  # echoed as sent in the A-ASSOCIATE-AC
    if problem is None:
        assert request.ae_title_problems == ()
    else:
        assert len(request.ae_title_problems) == 1 and problem in request.ae_title_problems[0]


def test_a_context_with_garbled_uids_is_refused_alone():
    good = (
        struct.pack(">BBBB", 3, 0, 0, 0) + struct.pack(">BBH", 0x30, 0, len(CTImageStorage)) + CTImageStorage.encode()
    )
    good += struct.pack(">BBH", 0x40, 0, 17) + b"1.2.840.10008.1.2"
    garbled = struct.pack(">BBBB", 1, 0, 0, 0) + b"\x30\0\0\x04\xff\xfe\x00\x01" + b"\x40\0\0\x03abc"
    body = raw_rq(garbled) + struct.pack(">BBH", 0x20, 0, len(good)) + good
    request = decode_associate_rq(body)
    results = negotiate(request.contexts, _supported_syntaxes(NODE_CONTEXTS))
    assert [(r.context_id, r.result) for r in results] == [(1, 0x03), (3, 0x00)]


def test_mutated_requests_raise_malformed_pdu_or_negotiate():
    """Every byte of a real request, changed at random: only MalformedPDU may escape."""
    rq = bytearray(request_pdu(storescu_like_proposal()[:6], [window(), identity()])[6:])
    supported = _supported_syntaxes(NODE_CONTEXTS)
    rng = random.Random(6)
    outcomes = {"malformed": 0, "answered": 0}
    for _ in range(4000):
        mutated = bytearray(rq)
        for _ in range(rng.choice((1, 2, 4))):
            mutated[rng.randrange(len(mutated))] = rng.choice((0, 1, 0x20, 0x40, 0xFF, rng.randrange(256)))
        if rng.random() < 0.2:
            mutated = mutated[: rng.randrange(len(mutated))]
        try:
            request = decode_associate_rq(bytes(mutated))
        except MalformedPDU:
            outcomes["malformed"] += 1
            continue
        results = negotiate(request.contexts, supported)
        encode_associate_ac(
            request,
            results,
            application_context=APPLICATION_CONTEXT,
            max_pdu_size=0,
            implementation_class_uid="1.2.3",
            implementation_version="X",
        )
        outcomes["answered"] += 1
    assert outcomes["malformed"] > 500 and outcomes["answered"] > 500, outcomes


def test_contexts_with_roles_are_refused_at_construction():
    context = build_context(CTImageStorage)
    context.scu_role, context.scp_role = True, True
    with pytest.raises(ValueError, match="role selection"):
        Acceptor(contexts=[context], on_store=lambda r: None)
