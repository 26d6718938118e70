"""Ingest: dcmtk storescu sending LIDC-IDRI-0002 to ldct-node, dcmtk storescp and Orthanc.

Side by side in one run, alternating receivers (a different one first in each run, dirty pages
of the previous one synced before each measurement), median of N runs, over 1 association,
over 4 concurrent ones, and with one association per instance (20 instances, one storescu
after the other: what a sender that associates for every image costs, set-up included).
The dcmtk tools run with TCP_NODELAY=1 on both sides (DCMTK 3.6.7 leaves Nagle's algorithm on
otherwise, ~50 ms per instance); each receiver in its fast configuration: storescp writing
files (--fork for concurrent associations), Orthanc with its defaults, ldct-node with its
shipped defaults (acknowledge after fsync of file and folder; one receiving process per CPU
core, at most 4) and with `acknowledge_after = "write"` (acknowledge once the kernel has the
bytes, which is what storescp does; Orthanc 1.7.4+ syncs each file by default, like the
node's default), so the cost of durability is measured rather than hidden; over 4
associations also with `receive_processes = 1`, to show what the extra receiving processes
bring.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicom_node.receive.receivers import receive_process_count
from tests.integration.peers import LIDC_0002, NodeProcess, Orthanc, free_port, tool_env

NODE, NODE_WRITE = "ldct-node", "ldct-node (acknowledge_after=write)"
NODE_WRITE_ONE_PROCESS = "ldct-node (acknowledge_after=write, receive_processes=1)"
NODE_ENV = {
    NODE: {},
    NODE_WRITE: {"LDCT_NODE__ACKNOWLEDGE_AFTER": "write"},
    NODE_WRITE_ONE_PROCESS: {"LDCT_NODE__ACKNOWLEDGE_AFTER": "write", "LDCT_NODE__RECEIVE_PROCESSES": "1"},
}


ONE_PER_INSTANCE = "one per instance"  # some senders open an association for every image
ONE_PER_INSTANCE_COUNT = 20


def receivers(associations: int | str) -> tuple[str, ...]:
    """One association always lands in one process: the single-process variant only matters for several."""
    nodes = {1: (NODE, NODE_WRITE), ONE_PER_INSTANCE: (NODE,)}.get(
        associations, (NODE, NODE_WRITE, NODE_WRITE_ONE_PROCESS)
    )
    return (*nodes, "storescp", "orthanc")


class StoreSCP:
    """dcmtk storescp writing every instance to a folder."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()

    def start(self):
        out = self.workdir / "in"
        out.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "--fork", "-od", str(out), "-aet", "STORESCP", str(self.port)],
            env=tool_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        return self

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


def send(port: int, called: str, files: list[Path], associations: int | str) -> float:
    """Seconds for storescu to send all files over `associations` concurrent associations, or
    (ONE_PER_INSTANCE) one after the other, each file in an association of its own."""
    if associations == ONE_PER_INSTANCE:
        start = time.perf_counter()
        for file in files:
            send(port, called, [file], 1)
        return time.perf_counter() - start
    groups = [files[i::associations] for i in range(associations)]

    def one(group):
        result = subprocess.run(
            ["storescu", "-aec", called, "127.0.0.1", str(port), *map(str, group)],
            env=tool_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"storescu to {called} failed: {result.stderr[-500:]}")

    start = time.perf_counter()
    with ThreadPoolExecutor(associations) as pool:
        list(pool.map(one, groups))
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--series", type=Path, default=LIDC_0002)
    args = parser.parse_args(argv)
    files = sorted(p for p in args.series.iterdir() if p.is_file())
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for associations in (1, 4, ONE_PER_INSTANCE):
            sent = files[:ONE_PER_INSTANCE_COUNT] if associations == ONE_PER_INSTANCE else files
            for run in range(args.runs):
                names = receivers(associations)
                for index, name in enumerate(names[run % len(names) :] + names[: run % len(names)]):
                    # alternating, each receiver first in turn; each starts with nothing left to write back
                    workdir = tmp / f"{index}-{associations}-{run}"
                    if name in NODE_ENV:
                        peer = NodeProcess(workdir, [], idle_seconds=3600, workers=0, env=NODE_ENV[name]).start()
                        port, called = peer.port, "LDCTNODE"
                    elif name == "storescp":
                        peer = StoreSCP(workdir).start()
                        port, called = peer.port, "STORESCP"
                    else:
                        peer = Orthanc(workdir).start()
                        port, called = peer.dicom_port, peer.aet
                    try:
                        os.sync()
                        seconds = send(port, called, sent, associations)
                    finally:
                        peer.stop()
                        shutil.rmtree(workdir, ignore_errors=True)
                    results.setdefault(f"{associations}", {}).setdefault(name, []).append(seconds)
                    print(f"{associations} assoc, run {run + 1}: {name} {seconds:.2f} s", file=sys.stderr)
    table = {}
    for assoc, by_name in results.items():
        count = ONE_PER_INSTANCE_COUNT if assoc == ONE_PER_INSTANCE else len(files)
        medians = {name: statistics.median(times) for name, times in by_name.items()}
        table[assoc] = {
            name: {"median_s": round(m, 3), "instances_per_s": round(count / m, 1)} for name, m in medians.items()
        }
        # speed ratios (instances/s of a node configuration over a peer's): > 1 means the node is faster
        table[assoc]["ratios"] = {
            f"{node} / {peer}": round(medians[peer] / medians[node], 2)
            for node in medians
            if node in NODE_ENV
            for peer in ("storescp", "orthanc")
        }
    report = {
        "instances": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "runs": args.runs,
        "receive_processes_by_default": receive_process_count(0),
        "associations": table,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
