"""Operations: metrics scraped during an end-to-end run, and the health check."""

from __future__ import annotations

import json
import urllib.request

from dicom_node.admin.demo import write_demo_series
from tests.integration.peers import free_port, storescu
from tests.integration.test_node_e2e import results_in_pacs, wait_job_state


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_scraped_during_an_end_to_end_run(orthanc, make_node, tmp_path):
    files, _ = write_demo_series(tmp_path / "series")
    port = free_port()
    node = make_node(orthanc, engine="threshold", extra=f"[metrics]\nport = {port}\n").start()
    before = scrape(port)
    assert before["ldct_instances_received_total"] == 0
    assert storescu(node.port, tmp_path / "series").returncode == 0
    assert scrape(port)["ldct_instances_received_total"] == len(files)
    results_in_pacs(orthanc)
    wait_job_state(node, "done")
    after = scrape(port)
    assert after['ldct_series_decided_total{outcome="queued"}'] == 1
    assert after['ldct_jobs{state="done"}'] == 1
    assert after['ldct_jobs_finished_total{state="done"}'] == 1
    assert after['ldct_stage_duration_seconds_count{stage="segment"}'] == 1
    assert after['ldct_dispatch_attempts_total{result="sent"}'] >= 1
    assert after["ldct_free_disk_bytes"] > 0


def test_health_reports_each_check(orthanc, make_node):
    node = make_node(orthanc, engine="threshold").start()
    healthy = node.cli("health", "--json", "--destinations")
    report = json.loads(healthy.stdout)
    assert report["healthy"] and {c["check"] for c in report["checks"]} >= {
        "job store",
        "disk",
        "store scp",
        "destination pacs",
    }
    orthanc.stop()
    node.stop()
    sick = node.cli("health", "--json", "--destinations", check=False)
    assert sick.returncode == 1
    failed = {c["check"] for c in json.loads(sick.stdout)["checks"] if not c["ok"]}
    assert failed == {"store scp", "destination pacs"}
