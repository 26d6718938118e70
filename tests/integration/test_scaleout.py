"""Scale-out on a real PostgreSQL: one receiving node, several worker processes, one queue.

The receiving host runs `ldct-node serve --no-workers`; each "GPU host" runs `ldct-node
worker`; all share the database and the spool path. Every series must be processed exactly
once (jobs table, worker logs and the PACS agree), claims use FOR UPDATE SKIP LOCKED, and
an Alembic upgrade keeps a queue that was there before.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dicom_node.queue.jobstore import QUEUED, RUNNING, JobStore, head_revision
from inference.synthetic import generate_phantom, write_series
from tests.integration.peers import storescu, wait_until
from tests.integration.postgres import database_section, start_cli_process, start_receiver
from tests.jobstore_fixtures import create_legacy_schema, enqueue_legacy_job, result_summary


def enqueue(store: JobStore, n: int) -> list[int]:
    return [
        store.enqueue_job(
            series_uid=f"1.2.{i}",
            study_uid="1.2",
            instance_uids=[f"1.3.{i}"],
            instance_set_hash=f"h{i}",
            max_attempts=3,
        )
        for i in range(n)
    ]


def test_postgres_store_is_migrated_and_uses_skip_locked(postgres_url):
    store = JobStore(postgres_url)
    try:
        assert store.engine.dialect.name == "postgresql" and store.supports_skip_locked
        assert store.schema_revision() == head_revision()
        from sqlalchemy import select

        from dicom_node.queue.jobstore import Job

        query = select(Job.id).with_for_update(skip_locked=True)
        assert "FOR UPDATE SKIP LOCKED" in str(query.compile(dialect=store.engine.dialect))
    finally:
        store.close()


def test_concurrent_claims_on_postgres_take_each_job_once(postgres_url):
    """8 threads with their own connections race for 40 jobs: each job is claimed once."""
    setup = JobStore(postgres_url)
    job_ids = enqueue(setup, 40)
    setup.close()
    claimed: dict[str, list[int]] = {}

    def claimer(name: str) -> None:
        store = JobStore(postgres_url, upgrade=False)
        try:
            while (job := store.claim_job(name, 60)) is not None:
                claimed.setdefault(name, []).append(job.id)
        finally:
            store.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = [pool.submit(claimer, f"w{i}") for i in range(8)]
    errors = [run.exception(timeout=60) for run in runs if run.exception(timeout=60) is not None]
    assert not errors
    taken = [job_id for ids in claimed.values() for job_id in ids]
    assert sorted(taken) == sorted(job_ids)  # every job once, none twice
    assert len(claimed) >= 2  # the work was shared
    check = JobStore(postgres_url, upgrade=False)
    assert check.counts().jobs[RUNNING] == 40
    check.close()


def test_expired_lease_returns_to_the_queue_on_postgres(postgres_url):
    """A worker that stops heartbeating loses its job to the next worker; it cannot finish it."""
    import time

    store = JobStore(postgres_url)
    try:
        [job_id] = enqueue(store, 1)
        store.claim_job("host-a:1", lease_seconds=0.2)
        assert store.requeue_expired_leases(max_attempts=3) == []  # still leased
        time.sleep(0.4)
        assert store.requeue_expired_leases(max_attempts=3) == [job_id]
        again = store.claim_job("host-b:2", lease_seconds=60)
        assert again.id == job_id and again.attempts == 2
        assert not store.heartbeat(job_id, "host-a:1", 60)
        assert not store.complete_job(
            job_id, "host-a:1", result_dir="/r", summary=result_summary(), destinations=["pacs"]
        )
        assert store.complete_job(job_id, "host-b:2", result_dir="/r", summary=result_summary(), destinations=["pacs"])
        assert [d.destination for d in store.dispatches_for(job_id)] == ["pacs"]
    finally:
        store.close()


def test_upgrade_keeps_the_queue_on_postgres(postgres_url):
    """A database made before migrations existed is stamped, upgraded and keeps its jobs."""
    create_legacy_schema(postgres_url)
    job_ids = [enqueue_legacy_job(postgres_url, f"1.2.{i}", f"h{i}") for i in range(3)]
    upgraded = JobStore(postgres_url)
    try:
        assert upgraded.schema_revision() == head_revision()
        assert [j.id for j in upgraded.list_jobs(QUEUED)] == sorted(job_ids, reverse=True)
    finally:
        upgraded.close()


def test_processes_starting_together_migrate_a_new_postgres_database_once(postgres_url):
    """Receiver and workers opening an empty database at the same moment: the advisory lock
    lets one migrate; the others wait and find the schema ready."""
    import subprocess
    import sys

    from tests.integration.peers import REPO

    code = f"from dicom_node.queue.jobstore import JobStore; JobStore({postgres_url!r}).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    store = JobStore(postgres_url, upgrade=False)
    assert store.schema_revision() == head_revision()
    store.close()


def _job_done_lines(logs) -> list[dict]:
    found = []
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"job done"' in line:
                found.append({**json.loads(line), "log": path.name})
    return found


@pytest.mark.slow
def test_receiver_and_three_worker_processes_process_each_series_once(orthanc, make_node, postgres_url, tmp_path):
    series_count, worker_count = 6, 3
    node = make_node(
        orthanc,
        engine="threshold",
        idle_seconds=2,
        workers=0,
        extra=database_section(postgres_url, lease_seconds=60, heartbeat_seconds=5),
    )
    node.cli("db", "upgrade")
    start_receiver(node)
    workers = [start_cli_process(node, "worker", log_name=f"worker{i}.log") for i in range(worker_count)]
    try:
        folders = []
        for seed in range(series_count):
            folder = tmp_path / f"series{seed}"
            write_series(generate_phantom(shape=(24, 96, 96), spacing=(8.0, 3.5, 3.5), seed=seed), folder)
            folders.append(folder)
        results: list = []
        senders = [
            threading.Thread(target=lambda f=f: results.append(storescu(node.port, f, check=False))) for f in folders
        ]
        for s in senders:
            s.start()
        for s in senders:
            s.join(300)
        assert [r.returncode for r in results] == [0] * series_count, [r.stderr[-500:] for r in results]
        jobs = wait_until(
            lambda: (
                lambda js: (
                    js
                    if len(js) == series_count
                    and all(
                        j["state"] == "done" and j["dispatches"] and j["dispatches"][0]["state"] == "sent" for j in js
                    )
                    else None
                )
            )(node.jobs()),
            300,
            interval=1,
            what="every job done and sent",
        )
        assert all(j["attempts"] == 1 for j in jobs)  # nobody claimed a job twice
        assert len({j["series_uid"] for j in jobs}) == series_count
        done = _job_done_lines([node.workdir / f"worker{i}.log" for i in range(worker_count)])
        assert sorted(d["job_id"] for d in done) == sorted(j["id"] for j in jobs)  # once each
        assert len({d["log"] for d in done}) >= 2  # the work was spread over worker processes
        assert len(node.status()["workers"]) == worker_count
        assert len(orthanc.instances_by_modality("SEG")) == series_count
        assert len(orthanc.instances_by_modality("SR")) == series_count
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)


@pytest.mark.parametrize("run_by", ["serve", "worker"])
def test_the_dispatch_role_decides_which_process_sends(orthanc, make_node, postgres_url, tmp_path, run_by):
    """`serve --no-workers` and `worker` on one PostgreSQL database: the worker only segments
    unless `[dispatch] run_by` gives it the dispatch role; the results reach the PACS once."""
    node = make_node(
        orthanc,
        engine="threshold",
        idle_seconds=1,
        workers=0,
        env={"LDCT_DISPATCH__RUN_BY": run_by},
        extra=database_section(postgres_url),
    )
    node.cli("db", "upgrade")
    start_receiver(node)
    worker = start_cli_process(node, "worker", log_name="worker.log")
    try:
        write_series(generate_phantom(shape=(24, 96, 96), spacing=(8.0, 3.5, 3.5), seed=4), tmp_path / "series")
        assert storescu(node.port, tmp_path / "series").returncode == 0
        wait_until(
            lambda: (
                lambda js: (
                    len(js) == 1
                    and js[0]["state"] == "done"
                    and js[0]["dispatches"]
                    and js[0]["dispatches"][0]["state"] == "sent"
                )
            )(node.jobs()),
            300,
            interval=1,
            what="the job done and sent",
        )
        logs = {"serve": node.log_path.read_text(), "worker": (node.workdir / "worker.log").read_text()}
        assert [name for name, text in logs.items() if '"job done"' in text] == ["worker"]
        assert [name for name, text in logs.items() if '"results sent"' in text] == [run_by]
        assert len(orthanc.instances_by_modality("SEG")) == 1 and len(orthanc.instances_by_modality("SR")) == 1
    finally:
        worker.terminate()
        worker.wait(30)
