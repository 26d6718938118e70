"""Faults with real processes, checked end to end in Orthanc.

A worker SIGKILLed during inference, the node SIGKILLed during an association, the PACS
offline past the dispatch maximum age, the disk nearly full, and 8 concurrent associations
of 100 instances. Each test checks that nothing is lost, nothing half-written is processed
and every result reaches the PACS exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.queue.jobstore import JobStore, owner_pid
from inference.synthetic import generate_phantom, write_series
from tests.integration.peers import storescu, tool_env, wait_until
from tests.integration.postgres import start_cli_process

SHORT_LEASE = "\n[jobs]\nlease_seconds = 4\nheartbeat_seconds = 1\n"


def store_of(node) -> JobStore:
    """The node's SQLite job store, opened directly: polling it is much faster than the CLI."""
    return JobStore(f"sqlite:///{node.data_dir / 'jobs.sqlite3'}", upgrade=False)


def edit_config(node, old: str, new: str) -> None:
    text = node.config.read_text()
    assert old in text, old
    node.config.write_text(text.replace(old, new, 1))


def make_series(folder: Path, shape=(40, 128, 128), seed: int = 0, **kwargs) -> list[Path]:
    spacing = (300.0 / shape[0], 340.0 / shape[1], 340.0 / shape[2])
    return write_series(generate_phantom(shape=shape, spacing=spacing, seed=seed), folder, **kwargs)


def spooled_files(node) -> list[Path]:
    spool = node.data_dir / "spool"
    return [p for p in spool.rglob("*.dcm") if ".incoming" not in p.parts] if spool.exists() else []


def assert_spool_intact(node) -> None:
    """Every spooled file is a whole instance (pixels of the right length); no temp files left."""
    for path in spooled_files(node):
        ds = pydicom.dcmread(path)
        assert len(ds.PixelData) == int(ds.Rows) * int(ds.Columns) * 2, path


def wait_done_and_sent(node, count: int, timeout: float = 180) -> list[dict]:
    def ready():
        jobs = node.jobs()
        ok = len(jobs) >= count and all(
            j["state"] == "done" and j["dispatches"] and all(d["state"] == "sent" for d in j["dispatches"])
            for j in jobs
        )
        return jobs if ok else None

    return wait_until(ready, timeout, interval=1, what=f"{count} job(s) done and sent")


def pacs_counts(orthanc) -> tuple[int, int]:
    return len(orthanc.instances_by_modality("SEG")), len(orthanc.instances_by_modality("SR"))


@pytest.mark.slow
def test_worker_killed_during_inference_is_finished_by_another_once(orthanc, make_node, tmp_path):
    """SIGKILL a worker process while its job runs: after the lease expires another worker
    finishes it, and exactly one SEG + SR reach the PACS."""
    make_series(tmp_path / "series", shape=(120, 256, 256))
    node = make_node(orthanc, engine="threshold", idle_seconds=2, workers=0, extra=SHORT_LEASE).start()
    first = start_cli_process(node, "worker", log_name="worker-a.log")
    second = None
    store = store_of(node)
    try:
        assert storescu(node.port, tmp_path / "series").returncode == 0

        def running_on_first():
            jobs = store.list_jobs("running")
            return jobs[0] if jobs and owner_pid(jobs[0].lease_owner) == first.pid else None

        job = wait_until(running_on_first, 120, interval=0.05, what="the job running on worker A")
        first.send_signal(signal.SIGSTOP)  # frozen mid-job: no more heartbeats
        frozen = store.get_job(job.id)
        assert frozen.state == "running" and frozen.attempts == 1, "worker A finished before it was stopped"
        # B starts while A's process still exists, so only the lease expiry can hand the job over
        second = start_cli_process(node, "worker", log_name="worker-b.log")
        wait_until(lambda: len(store.workers()) == 2, 60, interval=0.2, what="worker B registered")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        jobs = wait_done_and_sent(node, 1, timeout=180)
        assert len(jobs) == 1 and jobs[0]["attempts"] == 2
        assert pacs_counts(orthanc) == (1, 1)
        audit = json.loads(node.cli("audit", "--json").stdout)
        assert sum(e["kind"] == "job_done" for e in audit) == 1
        assert '"job done"' not in (node.workdir / "worker-a.log").read_text()
        assert '"job done"' in (node.workdir / "worker-b.log").read_text()
    finally:
        store.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)


@pytest.mark.slow
def test_pacs_offline_past_max_age_dead_then_revived_by_retry(orthanc, make_node, tmp_path):
    make_series(tmp_path / "series")
    orthanc.stop()
    node = make_node(orthanc, engine="threshold", idle_seconds=2)
    edit_config(node, "[dispatch]\n", "[dispatch]\nmax_age_hours = 0.002\n")  # ~7 s
    node.start()
    assert storescu(node.port, tmp_path / "series").returncode == 0
    store = store_of(node)
    try:
        wait_until(lambda: store.counts().dispatches["dead"] == 1, 120, interval=0.5, what="dead dispatch")
    finally:
        store.close()
    status = node.status()
    assert status["dispatches"]["dead"] == 1 and status["jobs"]["done"] == 1
    errors = [e for e in status["last_errors"] if e["kind"] == "dispatch"]
    assert errors and "association" in errors[0]["error"] and "failed" in errors[0]["error"]
    job = node.jobs()[0]
    assert job["dispatches"][0]["state"] == "dead" and job["dispatches"][0]["attempts"] >= 2
    assert "dead" in node.cli("status").stdout  # the table shows it too
    orthanc.start()
    assert "dispatch to pacs re-queued" in node.cli("retry", str(job["id"])).stdout
    wait_done_and_sent(node, 1, timeout=60)
    assert pacs_counts(orthanc) == (1, 1)
    dispatched = [e for e in json.loads(node.cli("audit", "--json").stdout) if e["kind"] == "dispatched"]
    assert len(dispatched) == 1 and dispatched[0]["detail"]["ae_title"] == orthanc.aet


@pytest.mark.slow
def test_disk_nearly_full_answers_a700_and_recovers_when_space_returns(orthanc, make_node, tmp_path):
    """Free space is pushed below the threshold with a ballast file: C-STORE is refused with
    0xA700 and nothing is written; once the ballast is gone the node accepts by itself."""
    files = make_series(tmp_path / "series")
    mib = 1024 * 1024
    free_mib = shutil.disk_usage(tmp_path).free // mib
    if free_mib < 2000:
        pytest.skip(f"needs 2 GiB free disk for the ballast file, {free_mib} MiB free")
    node = make_node(orthanc, engine="threshold", idle_seconds=2)
    edit_config(node, "min_free_disk_mb = 10", f"min_free_disk_mb = {free_mib - 400}")
    node.start()
    ballast = tmp_path / "ballast"
    with open(ballast, "wb") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, 800 * mib)
        except OSError as exc:
            pytest.skip(f"cannot allocate a ballast file here: {exc}")
    try:
        refused = subprocess.run(
            [
                "storescu",
                "-d",
                "-aet",
                "SCANNER",
                "-aec",
                "LDCTNODE",
                "127.0.0.1",
                str(node.port),
                *map(str, files[:3]),
            ],
            capture_output=True,
            text=True,
            env=tool_env(),
            timeout=60,
            check=False,
        )
        output = (refused.stdout + refused.stderr).lower()
        assert "0xa700: refused: out of resources" in output, output[-1500:]
        assert spooled_files(node) == []
        assert [p for p in (node.data_dir / "spool" / ".incoming").iterdir() if p.stat().st_size] == []
    finally:
        ballast.unlink()
    assert storescu(node.port, tmp_path / "series").returncode == 0  # no restart needed
    wait_done_and_sent(node, 1)
    assert len(spooled_files(node)) == len(files)
    assert_spool_intact(node)
    assert pacs_counts(orthanc) == (1, 1)


@pytest.mark.slow
def test_node_killed_during_an_association_resend_processed_once(orthanc, make_node, tmp_path):
    files = make_series(tmp_path / "series", shape=(150, 256, 256))
    node = make_node(orthanc, engine="threshold", idle_seconds=8).start()
    sender = subprocess.Popen(
        ["storescu", "-aet", "SCANNER", "-aec", "LDCTNODE", "127.0.0.1", str(node.port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=tool_env(),
    )
    try:
        wait_until(lambda: len(spooled_files(node)) >= 30, 60, interval=0.02, what="30 instances stored")
        node.kill()
        _output, _ = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
    stored = len(spooled_files(node))
    assert sender.returncode != 0, "the sender must see the failure"
    assert 30 <= stored < len(files), stored
    assert_spool_intact(node)  # what was acknowledged is whole; the rest never became a file
    assert node.jobs() == []
    node.start()
    assert storescu(node.port, tmp_path / "series").returncode == 0
    jobs = wait_done_and_sent(node, 1)
    assert len(jobs) == 1 and jobs[0]["instances"] == len(files)
    time.sleep(3)
    assert len(node.jobs()) == 1
    assert pacs_counts(orthanc) == (1, 1)
    assert_spool_intact(node)


@pytest.mark.slow
def test_load_eight_concurrent_associations_of_100_instances(orthanc, make_node, tmp_path):
    series_count, slices = 8, 100
    folders = []
    for seed in range(series_count):
        folder = tmp_path / f"series{seed}"
        make_series(folder, shape=(slices, 64, 64), seed=100 + seed)
        folders.append(folder)
    node = make_node(orthanc, engine="threshold", idle_seconds=3, workers=2).start()
    results: list[subprocess.CompletedProcess] = []
    started = time.monotonic()
    senders = [
        threading.Thread(target=lambda f=f: results.append(storescu(node.port, f, check=False))) for f in folders
    ]
    for s in senders:
        s.start()
    for s in senders:
        s.join(600)
    receive_seconds = time.monotonic() - started
    assert [r.returncode for r in results] == [0] * series_count, [r.stdout[-300:] + r.stderr[-300:] for r in results]
    assert len(spooled_files(node)) == series_count * slices
    jobs = wait_done_and_sent(node, series_count, timeout=300)
    total_seconds = time.monotonic() - started
    assert len(jobs) == series_count and all(j["attempts"] == 1 and j["instances"] == slices for j in jobs)
    assert len({j["series_uid"] for j in jobs}) == series_count
    assert pacs_counts(orthanc) == (series_count, series_count)
    assert '"level": "error"' not in node.log_path.read_text()
    rate = series_count * slices / receive_seconds
    print(
        f"\nLOAD: {series_count}x{slices} instances received in {receive_seconds:.1f} s "
        f"({rate:.0f} instances/s), all processed and sent in {total_seconds:.1f} s"
    )
    np.testing.assert_equal(sorted(j["instances"] for j in jobs), [slices] * series_count)
