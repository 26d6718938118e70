"""Fixtures that start real peers: Orthanc (PACS) and the node as a process."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.peers import NodeProcess, Orthanc
from tests.integration.postgres import PostgresServer, PostgresUnavailable

REQUIRED_TOOLS = ("storescu", "echoscu", "dciodvfy", "Orthanc")


def pytest_collection_modifyitems(config, items):
    missing = [
        t
        for t in REQUIRED_TOOLS
        if shutil.which(t) is None and not (t == "Orthanc" and shutil.which("/usr/sbin/Orthanc"))
    ]
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"peers not installed: {', '.join(missing)} (run .ci/run)"))


@pytest.fixture(scope="session")
def postgres_server():
    """One throw-away PostgreSQL cluster for the session (skipped where PostgreSQL is missing)."""
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's cluster."""
    return postgres_server.database_url()


@pytest.fixture
def orthanc(tmp_path):
    pacs = Orthanc(tmp_path / "orthanc").start()
    yield pacs
    pacs.stop()


@pytest.fixture
def make_node(tmp_path):
    """Factory: a node process configured to send to the given PACS."""
    started = []

    def make(pacs: Orthanc | None, **kwargs) -> NodeProcess:
        destinations = (
            []
            if pacs is None
            else [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}]
        )
        node = NodeProcess(tmp_path / f"node{len(started)}", destinations, **kwargs)
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()
