"""Hypothesis fuzzing of the two places hostile bytes reach: the Store SCP and the volume loader.

Store SCP: random byte mutations and truncations of a valid CT instance are sent, byte for
byte, through a real association to an in-process StoreSCP. The server must never die, the
answer must be success or a failure status, and whatever it acknowledged must be a whole,
parseable instance in the spool.

Volume loader: the same mutations applied to files of a small series; `load_series` either
returns a volume or raises SeriesError, never another exception.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_preamble
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_node.receive.spool import Spool
from dicom_node.receive.store_scp import STATUS_SUCCESS, StoreSCP, check_received
from inference.synthetic import generate_phantom, write_series
from inference.volume import CTVolume, SeriesError, load_series

torch.set_num_threads(1)

FAILURE_CLASSES = (0xA7, 0xA9, 0xC0, 0x01)  # out of resources, mismatch, cannot understand, 0x0110/0x0122


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def series_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fuzz-series")
    return write_series(generate_phantom(shape=(8, 16, 16), spacing=(5, 20, 20), seed=2), folder)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    spool = Spool(tmp_path_factory.mktemp("fuzz-spool"))
    scp = StoreSCP(ae_title="LDCTNODE", spool=spool)
    port = free_port()
    scp.start("127.0.0.1", port)
    yield scp, port
    scp.stop()


def dataset_offset(data: bytes) -> int:
    """Where the dataset starts, after preamble and file meta (mutations go after it)."""
    from io import BytesIO

    from pydicom.filereader import _read_file_meta_info

    stream = BytesIO(data)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return stream.tell()


mutations = st.tuples(
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12),
    st.one_of(st.none(), st.floats(0, 1)),  # truncate at this fraction of the dataset, or not
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)), max_size=3),
)


def mutate(data: bytes, mutation, start: int) -> bytes:
    """Overwrite bytes, insert short runs, maybe truncate; the file meta (before `start`) stays."""
    replacements, truncate_at, insertions = mutation
    body = bytearray(data[start:])
    for where, value in replacements:
        if body:
            body[int(where * len(body))] = value
    for where, chunk in insertions:
        at = int(where * len(body))
        body[at:at] = chunk
    if truncate_at is not None:
        body = body[: int(truncate_at * len(body))]
    return data[:start] + bytes(body)


def send_bytes(port: int, path: Path) -> int | None:
    """Send a file's bytes unchanged; the status, or None if the association broke."""
    meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="LDCTNODE")
    assert assoc.is_established, "the server stopped accepting associations"
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        response = assoc.send_c_store(path)
        return int(response.Status) if response and "Status" in response else None
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if assoc.is_established:
            assoc.release()


def echo_ok(port: int) -> bool:
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="LDCTNODE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations)
def test_store_handler_survives_mutated_instances(server, series_files, tmp_path, mutation):
    scp, port = server
    original = series_files[3].read_bytes()
    path = tmp_path / "mutated.dcm"
    path.write_bytes(mutate(original, mutation, dataset_offset(original)))
    try:
        status = send_bytes(port, path)
    except (ValueError, AttributeError, KeyError, struct.error):
        return  # the sender itself could not read what it was asked to send: nothing reached the server
    assert status is None or status == STATUS_SUCCESS or (status >> 8) in FAILURE_CLASSES, hex(status)
    if status == STATUS_SUCCESS:  # what was acknowledged is a whole instance in the spool
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        stored = scp.spool.instance_path(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        data = stored.read_bytes()
        check_received(data, len(data), lambda: data, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert echo_ok(port), "the server stopped answering"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations, which=st.integers(0, 7), extra=st.booleans())
def test_load_series_raises_only_series_error(series_files, tmp_path, mutation, which, extra):
    folder = tmp_path / "series"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for index, source in enumerate(series_files):
        data = source.read_bytes()
        if index == which or (extra and index == (which + 3) % len(series_files)):
            data = mutate(data, mutation, 0 if extra else dataset_offset(data))
        (folder / source.name).write_bytes(data)
    try:
        volume: CTVolume | None = load_series(folder)
    except SeriesError as exc:
        volume, reason = None, str(exc)
    if volume is None:
        assert reason  # a readable reason
        return
    assert isinstance(volume, CTVolume) and volume.hu.shape[0] == len(series_files)
