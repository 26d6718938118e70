"""Retention keeps what other stages still need; a reissue refused after a purge changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from dicom_node.admin.reissue import reissue_report
from dicom_node.node import Node
from dicom_node.queue.jobstore import PENDING, Dispatch, Job, ReissueRefused, utcnow
from dicom_node.queue.retention import purge_expired
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
