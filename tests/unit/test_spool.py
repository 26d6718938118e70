"""What the spool syncs before `store` returns, in each acknowledgement mode."""

from __future__ import annotations

import os
import stat

import pytest

from dicom_node import spool as spool_module
from dicom_node.spool import Spool

STUDY, SERIES = "1.2.3", "1.2.3.4"


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
    path = spool.store(STUDY, SERIES, "1.2.3.4.5", b"first")
    assert path.read_bytes() == b"first"
    # new study and series folders: their parents are synced, then the file, then its folder
    assert synced == ["folder", "folder", "file", "folder"]
    synced.clear()
    spool.store(STUDY, SERIES, "1.2.3.4.6", b"second")
    assert synced == ["file", "folder"]


def test_write_mode_syncs_nothing_but_writes_the_same(tmp_path, synced):
    spool = Spool(tmp_path / "spool", durable=False)
    path = spool.store(STUDY, SERIES, "1.2.3.4.5", b"bytes")
    assert path.read_bytes() == b"bytes" and synced == []
    assert list(spool.tmp.iterdir()) == []
