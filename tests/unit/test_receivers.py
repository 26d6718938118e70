"""Receiver processes: how many by default, and what happens when one cannot listen.

The whole behaviour with real senders (spread, restart, stop) is in
tests/integration/test_receivers.py.
"""

from __future__ import annotations

import os
import socket

import pytest

from config.settings import load_settings
from dicom_node.receivers import ReceiverPool, ReceiverStartError, ensure_port_free, receive_process_count
from dicom_node.spool import Spool


def test_default_count_is_one_per_core_at_most_four():
    cores = len(os.sched_getaffinity(0))
    assert receive_process_count(0) == min(4, cores)
    assert receive_process_count(1) == 1 and receive_process_count(6) == 6


def test_a_port_held_without_reuse_refuses_both_the_check_and_a_receiver(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as holder:  # a listener that does not share its port
        port = holder.getsockname()[1]
        with pytest.raises(ReceiverStartError, match=f"port {port} on 127.0.0.1 is in use"):
            ensure_port_free("127.0.0.1", port, wait_seconds=0.2)
        settings = load_settings(environ={"LDCT_NODE__DATA_DIR": str(tmp_path), "LDCT_NODE__BIND_ADDRESS": "127.0.0.1"})
        pool = ReceiverPool(settings, 1, port, spool=Spool(tmp_path / "spool"),
                            on_stored=lambda peer, header: None, on_rejected=lambda title, address: None)
        with pytest.raises(ReceiverStartError, match=f"cannot listen on port {port}"):
            pool.start()
        assert pool.pids == []  # the failed receiver was stopped, nothing left running
