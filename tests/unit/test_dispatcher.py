"""Dispatch is a stage of its own: a PACS that does not answer never holds a worker."""

from __future__ import annotations

import socket
import threading
import time

from dicom_node.node import Node
from dicom_node.queue.jobstore import DONE, SENDING
from tests.node_fixtures import node_settings, spool_series


class SilentPeer:
    """Accepts TCP connections and never says a word: a PACS that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.closed = False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()[0]
            except OSError:
                return
            with self.lock:
                if self.closed:
                    conn.close()
                    return
                self.accepted.append(conn)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.listener.close()
            for conn in self.accepted:
                conn.close()


def test_a_hanging_pacs_does_not_hold_the_worker(tmp_path):
    pacs = SilentPeer()
    settings = node_settings(
        tmp_path / "data",
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        dispatch={"timeout_seconds": 300},
    )
    node = Node(settings, workers=1)
    first = spool_series(node.spool, tmp_path / "a", seed=1)
    second = spool_series(node.spool, tmp_path / "b", seed=2)
    node.dispatcher.start()
    node.workers[0].start()
    try:
        node.completeness.decide(*first, "SCANNER")
        deadline = time.monotonic() + 120
        while not (dispatches := node.store.dispatches_for(1)) or dispatches[0].state != SENDING:
            assert time.monotonic() < deadline, "the first job's results never went out"
            time.sleep(0.1)
        node.completeness.decide(*second, "SCANNER")  # while the dispatcher waits on the silent PACS
        while node.store.get_job(2).state != DONE:
            assert time.monotonic() < deadline, "the second job waited for the first one's dispatch"
            time.sleep(0.1)
        assert node.store.dispatches_for(1)[0].state == SENDING  # still waiting for the PACS
    finally:
        pacs.close()
        node.stop()
