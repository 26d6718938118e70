"""The worker loads its engine at start and wakes when the node queues a job."""

from __future__ import annotations

import time

from config.settings import load_settings
from dicom_node.queue.jobstore import JobStore
from dicom_node.work import worker as worker_module
from dicom_node.work.worker import Worker


def make_worker(tmp_path, **kwargs) -> Worker:
    settings = load_settings(environ={"LDCT_NODE__DATA_DIR": str(tmp_path), "LDCT_INFERENCE__ENGINE": "threshold"})
    return Worker(settings, JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"), name="test-worker", **kwargs)


def wait_for(condition, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_engine_is_loaded_before_any_job(tmp_path):
    worker = make_worker(tmp_path)
    worker.start()
    try:
        assert wait_for(lambda: worker._engine is not None), "engine not loaded at start"
    finally:
        worker.stop()


def test_engine_that_fails_to_load_is_logged_and_the_worker_keeps_polling(tmp_path, monkeypatch, capsys):
    def broken(name, device, weights=None):
        raise RuntimeError("weights checksum mismatch")

    monkeypatch.setattr(worker_module, "get_engine", broken)
    worker = make_worker(tmp_path)
    worker.start()
    try:
        assert wait_for(lambda: [w.name for w in worker.store.workers()] == ["test-worker"])  # polling
        assert worker._thread.is_alive()
    finally:
        worker.stop()
    captured = capsys.readouterr()
    assert "inference engine failed to load" in captured.out + captured.err
    assert "weights checksum mismatch" in captured.out + captured.err


def test_wake_ends_the_poll_wait_at_once(tmp_path):
    worker = make_worker(tmp_path, poll_seconds=30)
    polls = []
    worker.run_once = lambda: polls.append(time.monotonic()) or False
    worker.start()
    try:
        assert wait_for(lambda: len(polls) == 1)
        worker.wake()
        assert wait_for(lambda: len(polls) == 2, seconds=2), "wake() did not end the 30 s poll wait"
    finally:
        worker.stop(timeout=5)
    assert not worker._thread.is_alive()
