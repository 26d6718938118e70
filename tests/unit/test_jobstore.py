import time
from datetime import timedelta

import pytest

from dicom_node.queue.jobstore import DEAD, DONE, FAILED, QUEUED, RUNNING, SENT, JobStore, utcnow
from tests.jobstore_fixtures import create_legacy_schema, enqueue_legacy_job, result_summary


@pytest.fixture
def store(tmp_path):
    s = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    yield s
    s.close()


def enqueue(store, series="1.2.3", digest="h1"):
    return store.enqueue_job(
        series_uid=series, study_uid="1.2", instance_uids=["1.1", "1.2"], instance_set_hash=digest, max_attempts=3
    )


def test_same_instance_set_is_queued_once(store):
    assert enqueue(store) is not None
    assert enqueue(store) is None
    assert enqueue(store, digest="h2") is not None


def test_claim_is_exclusive_and_ordered(store):
    first, second = enqueue(store, digest="a"), enqueue(store, digest="b")
    a = store.claim_job("w1", 60)
    b = store.claim_job("w2", 60)
    assert (a.id, b.id) == (first, second)
    assert store.claim_job("w3", 60) is None
    assert a.state == RUNNING and a.lease_owner == "w1" and a.attempts == 1


def test_complete_creates_dispatches_and_supersedes(store):
    first = enqueue(store, digest="a")
    job = store.claim_job("w", 60)
    first_result = result_summary(n=1)
    assert store.complete_job(job.id, "w", result_dir="/r1", summary=first_result, destinations=["pacs", "archive"])
    assert [d.destination for d in store.dispatches_for(first)] == ["pacs", "archive"]
    second = enqueue(store, digest="b")
    job2 = store.claim_job("w", 60)
    assert store.complete_job(job2.id, "w", result_dir="/r2", summary=result_summary(n=2), destinations=[])
    assert store.get_job(first).superseded_by == second
    assert store.superseded_objects(store.get_job(second)) == [first_result.seg, first_result.sr]


def test_only_the_lease_owner_completes(store):
    enqueue(store)
    job = store.claim_job("w1", 60)
    assert not store.complete_job(job.id, "intruder", result_dir="/r", summary=result_summary(), destinations=["p"])
    assert store.get_job(job.id).state == RUNNING


def test_failures_retry_then_die(store):
    job_id = enqueue(store)
    for attempt in range(1, 4):
        job = store.claim_job("w", 60)
        assert job is not None and job.attempts == attempt
        state = store.fail_job(job_id, "w", "boom", max_attempts=3, retry_delay_seconds=0)
    assert state == DEAD and store.get_job(job_id).error == "boom"
    assert "re-queued" in store.retry_job(job_id)
    assert store.get_job(job_id).state == QUEUED


def test_failed_job_waits_for_its_retry_delay(store):
    job_id = enqueue(store)
    store.claim_job("w", 60)
    assert store.fail_job(job_id, "w", "boom", max_attempts=3, retry_delay_seconds=3600) == FAILED
    assert store.claim_job("w", 60) is None


def test_expired_lease_is_requeued_and_old_owner_cannot_finish(store):
    job_id = enqueue(store)
    store.claim_job("w1", lease_seconds=0.01)
    time.sleep(0.05)
    assert store.requeue_expired_leases(max_attempts=3) == [job_id]
    again = store.claim_job("w2", 60)
    assert again.id == job_id and again.attempts == 2
    assert not store.heartbeat(job_id, "w1", 60)
    assert store.heartbeat(job_id, "w2", 60)


def test_dispatch_backoff_then_dead_after_max_age(store):
    enqueue(store)
    job = store.claim_job("w", 60)
    store.complete_job(job.id, "w", result_dir="/r", summary=result_summary(), destinations=["pacs"])
    [d] = store.claim_dispatches(60)
    assert store.dispatch_failed(d.id, "refused", first_retry=10, max_retry=60, max_age_hours=1) == "pending"
    assert store.claim_dispatches(60) == []  # not due before its backoff
    row = store.dispatches_for(job.id)[0]
    assert row.attempts == 1 and row.last_error == "refused"
    with store.session() as s:
        from dicom_node.queue.jobstore import Dispatch

        s.get(Dispatch, d.id).created_at = utcnow() - timedelta(hours=2)
        s.get(Dispatch, d.id).next_try_at = utcnow()
    [d] = store.claim_dispatches(60)
    assert store.dispatch_failed(d.id, "still refused", first_retry=10, max_retry=60, max_age_hours=1) == DEAD
    assert "dispatch to pacs re-queued" in store.retry_job(job.id)
    [d] = store.claim_dispatches(60)
    store.dispatch_sent(d.id)
    assert store.dispatches_for(job.id)[0].state == SENT
    assert store.counts().jobs[DONE] == 1


def test_migrations_build_exactly_the_models_schema(store):
    """The Alembic head matches the SQLAlchemy models: no drift between the two."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from dicom_node.queue.jobstore import Base, head_revision

    assert store.schema_revision() == head_revision()
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_database_from_before_migrations_keeps_its_queue(tmp_path):
    """A store made before migrations (first release's tables, no alembic_version) is stamped,
    not recreated, and then upgraded."""
    from dicom_node.queue.jobstore import INITIAL_REVISION, head_revision

    url = f"sqlite:///{tmp_path / 'legacy.sqlite3'}"
    create_legacy_schema(url)
    job_id = enqueue_legacy_job(url, "1.2.3", "h1")
    old = JobStore(url, upgrade=False)
    assert old.schema_revision() is None
    old.close()
    upgraded = JobStore(url)
    assert upgraded.schema_revision() == head_revision()
    assert upgraded.get_job(job_id).state == QUEUED and head_revision() >= INITIAL_REVISION
    assert not upgraded.get_job(job_id).in_slice_order  # its UIDs were sorted by UID: the worker sorts slices
    assert upgraded.claim_job("w", 60).id == job_id
    upgraded.close()


def test_concurrent_openers_migrate_once(tmp_path):
    """Several processes opening a new SQLite store at once: one migrates, none fails."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'race.sqlite3'}"
    code = f"from dicom_node.queue.jobstore import JobStore; JobStore({url!r}).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert JobStore(url).schema_revision() is not None


def test_owner_pid_reads_thread_suffixed_names():
    from dicom_node.queue.jobstore import owner_pid

    assert owner_pid("host:123") == 123
    assert owner_pid("host:123-0") == 123
    assert owner_pid("no pid here") is None


def test_restart_requeues_own_dead_leases_of_worker_threads(store):
    """Worker threads lease as host:pid-N; a dead pid's jobs return to the queue at start."""
    import socket
    import subprocess

    job_id = enqueue(store)
    dead = subprocess.Popen(["true"])
    dead.wait()
    store.claim_job(f"{socket.gethostname()}:{dead.pid}-0", 600)
    assert store.requeue_own_dead_leases(max_attempts=3) == [job_id]
    assert store.get_job(job_id).state == QUEUED
