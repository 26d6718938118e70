"""What the spool syncs before an instance is committed, in each acknowledgement mode, and the
temporary files it prepares ahead of need."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from dicom_node.receive import spool as spool_module
from dicom_node.receive.spool import PREPARED_FILES, Spool

STUDY, SERIES = "1.2.3", "1.2.3.4"


def store(spool: Spool, sop_uid: str, data: bytes) -> Path:
    """One whole instance through the receive path's steps: temporary file, write, commit."""
    final = spool.instance_path(STUDY, SERIES, sop_uid)
    incoming = spool.receive()
    incoming.write(data)
    incoming.commit(final)
    return final


@pytest.fixture
def synced(monkeypatch) -> list[str]:
    """Kinds ('file' or 'folder') of everything fsynced, in order."""
    calls: list[str] = []
    real_fsync = os.fsync

    def record(fd):
        calls.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(spool_module.os, "fsync", record)
    return calls


def test_durable_store_syncs_the_file_then_every_folder_it_created(tmp_path, synced):
    spool = Spool(tmp_path / "spool")
    path = store(spool, "1.2.3.4.5", b"first")
    assert path.read_bytes() == b"first"
    # new study and series folders: their parents are synced, then the file, then its folder
    assert synced == ["folder", "folder", "file", "folder"]
    synced.clear()
    store(spool, "1.2.3.4.6", b"second")
    assert synced == ["file", "folder"]


def test_write_mode_syncs_nothing_but_writes_the_same(tmp_path, synced):
    spool = Spool(tmp_path / "spool", durable=False)
    path = store(spool, "1.2.3.4.5", b"bytes")
    assert path.read_bytes() == b"bytes" and synced == []
    spool.close()
    assert list(spool.tmp.iterdir()) == []


def test_prepared_temporary_files_are_used_then_removed_on_close(tmp_path):
    spool = Spool(tmp_path / "spool", durable=False)
    first = spool.receive()
    first.discard()
    deadline = time.monotonic() + 5
    while len(list(spool.tmp.iterdir())) < PREPARED_FILES and time.monotonic() < deadline:
        time.sleep(0.01)  # the background thread prepares the next ones
    prepared = {p.name for p in spool.tmp.iterdir()}
    assert len(prepared) == PREPARED_FILES
    for uid in ("1.2.3.4.5", "1.2.3.4.6"):
        store(spool, uid, uid.encode())
    assert len(prepared - {p.name for p in spool.tmp.iterdir()}) >= 2  # taken from the prepared ones
    assert spool.instance_path(STUDY, SERIES, "1.2.3.4.6").read_bytes() == b"1.2.3.4.6"
    spool.close()
    assert list(spool.tmp.iterdir()) == []
    store(spool, "1.2.3.4.7", b"after close")  # preparing starts again on demand
    assert spool.instance_path(STUDY, SERIES, "1.2.3.4.7").read_bytes() == b"after close"
    spool.close()


def test_stale_prepared_files_are_never_used(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool", durable=False)
    spool.receive().discard()
    deadline = time.monotonic() + 5
    while not spool.prepared._ready and time.monotonic() < deadline:
        time.sleep(0.01)
    stale_path = spool.prepared._ready[0][0]
    monkeypatch.setattr(spool_module, "PREPARED_MAX_AGE_SECONDS", -1)
    incoming = spool.receive()
    assert incoming.path != stale_path and not stale_path.exists()
    incoming.discard()
    spool.close()
