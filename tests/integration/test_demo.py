"""`ldct-node demo`, the README's first command: each run processes the sample series anew."""

from __future__ import annotations

import subprocess
import sys

import pydicom
import pytest

from tests.integration.peers import REPO


def demo(workdir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", "demo", "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )


@pytest.mark.slow
def test_each_demo_run_processes_the_series_with_the_engine_asked_for(tmp_path):
    workdir = tmp_path / "demo"
    first = demo(workdir, "--engine", "threshold")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "engine threshold" in first.stdout and "lesion" in first.stdout
    second = demo(workdir, "--engine", "cnn")  # same series re-sent: must not show the first result
    assert second.returncode == 0, second.stderr[-2000:]
    assert "engine cnn" in second.stdout and "engine threshold" not in second.stdout
    modalities = sorted(
        pydicom.dcmread(p, stop_before_pixels=True).Modality for p in (workdir / "pacs-inbox").glob("*.dcm")
    )
    assert modalities.count("SEG") == 1 and modalities.count("SR") == 1  # this run's results only


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "jobs.sqlite3").write_bytes(b"a real node's job store")
    result = demo(tmp_path, "--engine", "threshold")
    assert result.returncode != 0
    assert "not made by the demo" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "data" / "jobs.sqlite3").read_bytes() == b"a real node's job store"
