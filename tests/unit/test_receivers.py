"""Receiver processes: how many by default, and associations handed to the least busy one.

The whole behaviour with real senders (spread, restart, stop) is in
tests/integration/test_receivers.py.
"""

from __future__ import annotations

import os
import queue
import time

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from config.settings import load_settings
from dicom_node.receive.receivers import ReceiverPool, receive_process_count
from dicom_node.receive.spool import Spool
from dicom_node.receive.store_scp import InstanceHeader, StoreSCP
from inference.synthetic import generate_phantom, write_series


def test_default_count_is_one_per_core_at_most_four():
    cores = len(os.sched_getaffinity(0))
    assert receive_process_count(0) == min(4, cores)
    assert receive_process_count(1) == 1 and receive_process_count(6) == 6


def test_associations_go_to_the_least_busy_process_in_turn(tmp_path):
    settings = load_settings(environ={"LDCT_NODE__DATA_DIR": str(tmp_path), "LDCT_NODE__BIND_ADDRESS": "127.0.0.1"})
    spool = Spool(tmp_path / "spool")
    served = []
    scp = StoreSCP(
        ae_title="LDCTNODE", spool=spool, hand_off=lambda conn: served.append(pool.hand_off(conn)) or served[-1]
    )
    pool = ReceiverPool(
        settings,
        2,
        spool=spool,
        local_associations=lambda: scp.acceptor.active_associations,
        on_stored=lambda peer, header: None,
        on_rejected=lambda title, address: None,
    )
    pool.start()
    try:
        scp.start("127.0.0.1", 0)
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        held = []
        for _ in range(3):  # one each: the node itself, then the two receivers (all idle, in turn)
            assoc = ae.associate("127.0.0.1", scp.port, ae_title="LDCTNODE")
            assert assoc.is_established and assoc.send_c_echo().Status == 0
            held.append(assoc)
        assert sorted(served) == [False, True, True]
        assert scp.acceptor.active_associations == 1
        busy = sorted(r.associations for r in pool._receivers.values())
        assert busy == [1, 1]
        for assoc in held:
            assoc.release()
        deadline = time.monotonic() + 10
        while any(r.associations for r in pool._receivers.values()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the receivers report the ends
        assert [r.associations for r in pool._receivers.values()] == [0, 0]
    finally:
        scp.stop()
        pool.stop()
    assert pool.pids == []


def test_health_receivers_check_fails_when_the_metrics_endpoint_is_silent(tmp_path):
    from dicom_node.admin.cli import _receivers_check
    from tests.integration.peers import free_port

    settings = load_settings(environ={"LDCT_NODE__DATA_DIR": str(tmp_path), "LDCT_METRICS__PORT": str(free_port())})
    name, ok, detail = _receivers_check(settings)
    assert (name, ok) == ("receiving processes", False) and "not answering" in detail


def test_a_receiver_reports_every_stored_instance_with_its_uids(tmp_path):
    settings = load_settings(
        environ={
            "LDCT_NODE__DATA_DIR": str(tmp_path),
            "LDCT_NODE__BIND_ADDRESS": "127.0.0.1",
            "LDCT_NODE__ACKNOWLEDGE_AFTER": "write",
        }
    )
    path = write_series(generate_phantom(shape=(8, 32, 32), seed=3), tmp_path / "ct")[0]
    ds = pydicom.dcmread(path)
    spool = Spool(tmp_path / "spool")
    reports = queue.Queue()
    pool = ReceiverPool(
        settings,
        1,
        spool=spool,
        local_associations=lambda: 99,  # the node is "busy"
        on_stored=lambda peer, header: reports.put((peer.ae_title, header)),
        on_rejected=lambda title, address: None,
    )
    scp = StoreSCP(ae_title="LDCTNODE", spool=spool, hand_off=pool.hand_off)
    pool.start()
    try:
        scp.start("127.0.0.1", 0)
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="LDCTNODE")
        assert assoc.is_established and assoc.send_c_store(ds).Status == 0
        assoc.release()
        assert reports.get(timeout=10) == (
            "SCANNER",
            InstanceHeader(CTImageStorage, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID),
        )
    finally:
        scp.stop()
        pool.stop()
