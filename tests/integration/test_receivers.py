"""Several receiving processes on one port (`node.receive_processes`), with real senders.

Concurrent associations spread over the node and its receiver process; every instance of
every series is stored once and every series processed once and sent to Orthanc; a receiver
killed with SIGKILL is replaced, receiving goes on, and a series it stored but never reported
is still processed; stopping the node leaves no receiver
behind; a second node on a port already in use refuses to start with a clear message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pydicom
import pytest

from tests.integration.peers import REPO, free_port, storescu, tool_env, wait_until
from tests.integration.test_faults import make_series, pacs_counts, spooled_files, wait_done_and_sent

TWO_RECEIVERS = {"LDCT_NODE__RECEIVE_PROCESSES": "2"}


def receiver_pids(node) -> list[int]:
    out = subprocess.run(
        ["ps", "-ww", "--ppid", str(node.process.pid), "-o", "pid=,args="], capture_output=True, text=True, check=False
    ).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "spawn_main" in line]


def log_events(node, event: str) -> list[dict]:
    events = []
    for line in node.log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            events.append(record)
    return events


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_concurrent_associations_use_both_processes_and_a_killed_receiver_is_replaced(orthanc, make_node, tmp_path):
    folders = [tmp_path / f"series{seed}" for seed in range(6)]
    for seed, folder in enumerate(folders):
        make_series(folder, shape=(30, 64, 64), seed=200 + seed)
    metrics_port = free_port()
    node = make_node(
        orthanc,
        engine="threshold",
        idle_seconds=3,
        workers=1,
        env=TWO_RECEIVERS,
        extra=f"[metrics]\nport = {metrics_port}\n",
    ).start()
    [receiver] = receiver_pids(node)

    echoes = [
        subprocess.run(
            ["echoscu", "-aec", "LDCTNODE", "127.0.0.1", str(node.port)],
            env=tool_env(),
            capture_output=True,
            check=False,
        )
        for _ in range(16)
    ]
    assert [e.returncode for e in echoes] == [0] * 16
    results = []
    senders = [
        threading.Thread(target=lambda f=f: results.append(storescu(node.port, f, check=False))) for f in folders[:4]
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(300)
    assert [r.returncode for r in results] == [0] * 4
    pids = [event["pid"] for event in log_events(node, "association accepted")]
    assert {node.process.pid, receiver} == set(pids), pids
    assert abs(pids.count(receiver) - pids.count(node.process.pid)) <= 2, pids  # taken in turn when idle
    assert len(spooled_files(node)) == 4 * 30
    wait_done_and_sent(node, 4)

    place_in_spool_unreported(node, folders[5])  # stored by the receiver, which died before reporting
    os.kill(receiver, signal.SIGKILL)
    wait_until(lambda: log_events(node, "receiver process restarted and ready"), 60, what="the receiver to be replaced")
    assert [e["series_uid"] for e in log_events(node, "resuming undecided series")] == [series_uid_of(folders[5])]
    wait_done_and_sent(node, 5)
    [replacement] = receiver_pids(node)
    assert replacement != receiver
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert "ldct_receiver_restarts_total 1.0" in scraped
    assert "ldct_receive_processes 2.0" in scraped
    assert "ldct_instances_received_total 120.0" in scraped  # counted by the node for both processes
    health = node.cli("health", "--json", check=False)
    [receiving] = [c for c in json.loads(health.stdout)["checks"] if c["check"] == "receiving processes"]
    assert receiving == {
        "check": "receiving processes",
        "ok": True,
        "detail": "2 of 2 up, 1 restarted since the node started",
    }, health.stdout
    assert storescu(node.port, folders[4]).returncode == 0
    jobs = wait_done_and_sent(node, 6)
    assert sorted(j["instances"] for j in jobs) == [30] * 6
    assert pacs_counts(orthanc) == (6, 6)
    node.stop()
    wait_until(lambda: not pid_alive(replacement), 10, what="the receiver to exit with the node")


def series_uid_of(folder) -> str:
    return pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID


def place_in_spool_unreported(node, folder) -> None:
    """Put a series where a receiver stores instances, without the node hearing of it."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = node.data_dir / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


@pytest.mark.slow
def test_a_second_node_on_a_port_in_use_refuses_to_start(make_node):
    first = make_node(None, env=TWO_RECEIVERS).start()
    second = make_node(None, env=TWO_RECEIVERS)
    second.config.write_text(second.config.read_text().replace(f"port = {second.port}", f"port = {first.port}"))
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(second.config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **TWO_RECEIVERS},
        check=False,
    )
    assert result.returncode != 0
    assert f"port {first.port}" in result.stderr and "in use" in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    time.sleep(0.5)
    assert storescu_echo_ok(first.port)


def storescu_echo_ok(port: int) -> bool:
    return (
        subprocess.run(
            ["echoscu", "-aec", "LDCTNODE", "127.0.0.1", str(port)], env=tool_env(), capture_output=True, check=False
        ).returncode
        == 0
    )
