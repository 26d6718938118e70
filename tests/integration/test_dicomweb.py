"""DICOMweb destinations against Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) as the PACS.

The node receives a CT series by C-STORE and sends SEG, SR and key images by STOW-RS into the
study Orthanc already holds: with wrong credentials first (401: retried with the error kept,
dead past the maximum age, revived by `retry` once the secret is right), and to a server that
is down and comes back. What arrives is compared byte for byte with the node's result files.
Faulty peers that answer garbage or 5xx are in tests/unit/test_dicomweb.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.integration.peers import REPO, NodeProcess, storescu, wait_until
from tests.integration.test_faults import edit_config, make_series, store_of
from tests.integration.viewer import OrthancDicomWeb, dicomweb_plugin

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        dicomweb_plugin() is None, reason="Orthanc's DICOMweb plugin is not installed (orthanc-dicomweb)"
    ),
]

USER, PASSWORD = "ldct", "right-horse-battery-7"
WRONG_PASSWORD = "wrong-staple-3"


def node_for(tmp_path: Path, orthanc: OrthancDicomWeb, **auth: str) -> NodeProcess:
    destination = {"name": "web", "type": "dicomweb", "url": f"http://127.0.0.1:{orthanc.http_port}/dicom-web", **auth}
    return NodeProcess(tmp_path / "node", [destination], engine="threshold", idle_seconds=2)


def dispatch_row(node: NodeProcess):
    """The one dispatch row, read from the node's job store (faster to poll than the CLI)."""
    store = store_of(node)
    try:
        rows = store.dispatches_for(1)
        return rows[0] if rows else None
    finally:
        store.close()


def assert_results_in_the_ct_study_byte_for_byte(orthanc: OrthancDicomWeb, node: NodeProcess, ct_files) -> None:
    """Every result file is in Orthanc, in the CT's study (QIDO-RS), once, with the same bytes."""
    [job] = node.jobs()
    results = [Path(job["result_dir"]) / name for name in job["summary"]["outputs"]]
    assert len(results) >= 3  # SEG, SR and at least one key image
    study_uid = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)
    in_study = orthanc.get(f"/dicom-web/studies/{study_uid}/instances", accept="application/dicom+json")
    uids = [item["00080018"]["Value"][0] for item in in_study]
    assert len(uids) == len(set(uids)) == len(ct_files) + len(results)
    for path in results:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == study_uid and ds.SOPInstanceUID in uids
        [orthanc_id] = orthanc.post("/tools/lookup", str(ds.SOPInstanceUID).encode(), "text/plain")
        assert orthanc.get_bytes(f"/instances/{orthanc_id['ID']}/file") == path.read_bytes(), path.name
    assert len(orthanc.instances_by_modality("SEG")) == len(orthanc.instances_by_modality("SR")) == 1


def test_wrong_credentials_retry_then_dead_and_retry_delivers_into_the_ct_study(tmp_path):
    ct_files = make_series(tmp_path / "series")
    orthanc = OrthancDicomWeb(tmp_path / "orthanc", users={USER: PASSWORD}).start()
    secret = tmp_path / "pacs.secret"
    secret.write_text(WRONG_PASSWORD + "\n")
    node = node_for(tmp_path, orthanc, auth="basic", username=USER, secret_file=str(secret))
    edit_config(node, "[dispatch]\n", "[dispatch]\nmax_age_hours = 0.002\n")  # ~7 s: dead after a few 401s
    try:
        orthanc.upload(ct_files)  # the PACS holds the CT it sent the node
        node.start()
        assert storescu(node.port, tmp_path / "series").returncode == 0
        retrying = wait_until(
            lambda: (row := dispatch_row(node)) and row.attempts >= 2 and row.state == "pending" and row,
            120,
            interval=0.2,
            what="the dispatch retrying after 401s",
        )
        assert "answered 401 Unauthorized: check the destination's auth, username and secret" in retrying.last_error
        wait_until(lambda: dispatch_row(node).state == "dead", 60, interval=0.5, what="a dead dispatch")
        [dead] = node.jobs()[0]["dispatches"]
        assert dead["state"] == "dead" and "401 Unauthorized" in dead["last_error"]
        assert node.status()["dispatches"]["dead"] == 1
        refused = node.cli("echo", "web", check=False)
        assert refused.returncode == 1 and "401 Unauthorized" in refused.stderr and "Traceback" not in refused.stderr

        secret.write_text(PASSWORD + "\n")  # read at each send: no restart needed
        assert "200 OK" in node.cli("echo", "web").stdout
        health = json.loads(node.cli("health", "--destinations", "--json", check=False).stdout)
        [check] = [c for c in health["checks"] if c["check"] == "destination web"]
        assert check["ok"] and "QIDO-RS" in check["detail"]
        assert "dispatch to web re-queued" in node.cli("retry", "1").stdout
        wait_until(lambda: dispatch_row(node).state == "sent", 60, interval=0.2, what="the revived dispatch sent")
        assert_results_in_the_ct_study_byte_for_byte(orthanc, node, ct_files)
        dispatched = [e for e in json.loads(node.cli("audit", "--json").stdout) if e["kind"] == "dispatched"]
        assert len(dispatched) == 1 and dispatched[0]["detail"]["url"].endswith("/dicom-web")
        config_check = subprocess.run(
            [sys.executable, "-m", "dicom_node", "config", "check", str(node.config)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
        assert "basic authentication, secret from file" in " ".join(config_check.split())
        everything = node.log_path.read_text() + config_check + json.dumps(node.status()) + json.dumps(node.jobs())
        assert PASSWORD not in everything and WRONG_PASSWORD not in everything
    finally:
        node.stop()
        orthanc.stop()


def test_dicomweb_server_down_then_back_gets_the_results_once(tmp_path):
    ct_files = make_series(tmp_path / "series", seed=3)
    orthanc = OrthancDicomWeb(tmp_path / "orthanc")  # not started: the PACS is down
    node = node_for(tmp_path, orthanc).start()
    try:
        assert storescu(node.port, tmp_path / "series").returncode == 0
        failing = wait_until(
            lambda: (row := dispatch_row(node)) and row.attempts >= 2 and row,
            120,
            interval=0.2,
            what="the dispatch failing while the server is down",
        )
        assert failing.state == "pending" and "not reachable" in failing.last_error
        orthanc.start()
        orthanc.upload(ct_files)
        wait_until(lambda: dispatch_row(node).state == "sent", 60, interval=0.2, what="the results sent")
        assert_results_in_the_ct_study_byte_for_byte(orthanc, node, ct_files)
    finally:
        node.stop()
        orthanc.stop()
