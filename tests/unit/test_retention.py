"""Retention keeps what other stages still need; a reissue refused after a purge changes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from dicom_node.admin.reissue import reissue_report
from dicom_node.node import Node
from dicom_node.queue.jobstore import PENDING, Dispatch, Job, JobStore, ReissueRefused, SeriesRecord, utcnow
from dicom_node.queue.retention import purge_expired
from dicom_node.queue.series import SeriesTracker
from dicom_node.receive.spool import Spool
from dicom_node.work.pipeline import ReportOptions
from dicom_node.work.worker import Worker
from tests.integration.peers import REPO, free_port
from tests.node_fixtures import node_settings, spool_series


def age_every_job(node: Node, days: float) -> None:
    with node.store.session() as s:
        for job in s.query(Job):
            job.finished_at = utcnow() - timedelta(days=days)


def snapshot(node: Node) -> tuple:
    """Jobs, dispatches and result folders: what a refused reissue must leave as it was."""
    with node.store.session() as s:
        jobs = sorted((j.id, j.state, j.superseded_by, j.result_dir) for j in s.query(Job))
        dispatches = sorted((d.job_id, d.state) for d in s.query(Dispatch))
    return jobs, dispatches, sorted(p.name for p in (node.data_dir / "results").iterdir())


def test_amended_sr_queued_during_a_purge_is_kept_and_a_purged_job_cannot_be_reissued(tmp_path):
    config = tmp_path / "node.toml"
    settings = node_settings(
        tmp_path / "data",
        retention={"keep_days": 1},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}],
    )  # nobody listens
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n[inference]\nengine = "threshold"\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
        f"port = {settings.destinations[0].port}\n"
    )
    node = Node(settings, workers=0)
    options = ReportOptions.from_settings(settings)
    try:
        study_uid, series_uid = spool_series(node.spool, tmp_path / "series", seed=5)
        node.completeness.decide(study_uid, series_uid, "SCANNER")
        assert Worker(settings, node.store, spool=node.spool, name="w").run_once()
        original = node.store.list_jobs()[0]
        [dispatch] = node.store.claim_dispatches(60)
        node.store.dispatch_sent(dispatch.id)  # the original results reached the PACS
        amended = reissue_report(settings, node.store, original.id, options)  # its SR is still queued
        assert [d.state for d in node.store.dispatches_for(amended.id)] == [PENDING]

        age_every_job(node, days=2)
        assert purge_expired(node.store, node.spool, node.completeness.tracker, keep_days=1) == [original.id]
        assert not (node.data_dir / "results" / f"job-{original.id}").exists()
        kept = node.store.get_job(amended.id)
        assert [name for name in kept.result().outputs if (Path(kept.result_dir) / name).is_file()] == [
            "sr-amended.dcm"
        ]  # the queued SR survived the purge of the job it amends
        assert node.spool.series_dir(study_uid, series_uid).is_dir()  # the amended job may be reissued again

        before = snapshot(node)
        with pytest.raises(ReissueRefused, match="results purged"):
            reissue_report(settings, node.store, original.id, options)
        assert snapshot(node) == before
        refused = subprocess.run(
            [sys.executable, "-m", "dicom_node", "report", str(original.id), "--reissue", "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )
        assert refused.returncode == 1 and refused.stderr.startswith("error: job 1 is done (results purged)")
        assert len(refused.stderr.strip().splitlines()) == 1  # one line, no traceback
        assert snapshot(node) == before

        again = reissue_report(settings, node.store, amended.id, options)  # reads the amended job's own SEG link
        assert again.result().supersedes == [kept.result().sr]
        assert node.store.get_job(amended.id).superseded_by == again.id
    finally:
        node.stop()


def test_spooled_series_go_keep_days_after_their_last_decision_unless_still_needed(tmp_path):
    """Not processed, not selected, refused: one rule for the spool. Undecided series (a study
    waiting for selection) and series a job still needs stay; so does one being received."""
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    spool, tracker = Spool(tmp_path / "spool"), SeriesTracker()

    def spooled(series_uid: str, decided_days_ago: float | None) -> Path:
        folder = spool.series_dir("1.2", series_uid)
        folder.mkdir(parents=True)
        (folder / "1.3.dcm").write_bytes(b"x")
        if decided_days_ago is not None:
            store.record_series(
                series_uid=series_uid,
                study_uid="1.2",
                calling_ae="PACS",
                description="",
                instance_count=1,
                instance_set_hash="h",
                outcome="not processed",
            )
            with store.session() as s:
                row = s.query(SeriesRecord).filter(SeriesRecord.series_uid == series_uid).one()
                row.decided_at = utcnow() - timedelta(days=decided_days_ago)
        return folder

    try:
        folders = {
            "old": spooled("1.2.1", 3),
            "recent": spooled("1.2.2", 0),
            "undecided": spooled("1.2.3", None),
            "job": spooled("1.2.4", 3),
            "receiving": spooled("1.2.5", 3),
        }
        store.enqueue_job(
            series_uid="1.2.4", study_uid="1.2", instance_uids=["1.3"], instance_set_hash="h", max_attempts=3
        )
        tracker.touch("1.2", "1.2.5", "PACS")
        assert purge_expired(store, spool, tracker, keep_days=1) == []
        assert {name for name, folder in folders.items() if not folder.is_dir()} == {"old"}
        for name in ("recent", "undecided", "job", "receiving"):
            shutil.rmtree(folders[name])
        spooled("1.2.9", 3)  # the study's last series: its study folder goes too
        purge_expired(store, spool, tracker, keep_days=1)
        assert not (spool.root / "1.2").exists()
    finally:
        store.close()
