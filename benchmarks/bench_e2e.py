"""End to end: last instance sent -> SEG and SR stored in Orthanc, with the time of each stage.

storescu (dcmtk) sends the series to a real `ldct-node serve` process configured with a real
Orthanc; the clock starts when storescu returns (last instance acknowledged) and stops when
Orthanc holds the SEG and SR. `idle_seconds` (the completeness wait, 10 s by default) is part
of that time and reported separately; stage times come from the job's summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.peers import LIDC_0002, NodeProcess, Orthanc, storescu, wait_until


def one_run(workdir: Path, series: Path, engine: str, idle_seconds: float) -> dict:
    orthanc = Orthanc(workdir / "orthanc").start()
    node = NodeProcess(
        workdir / "node",
        [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        engine=engine,
        idle_seconds=idle_seconds,
    ).start()
    try:
        t0 = time.perf_counter()
        storescu(node.port, series)
        sent = time.perf_counter()
        wait_until(
            lambda: orthanc.instances_by_modality("SEG") and orthanc.instances_by_modality("SR"),
            1800,
            interval=0.25,
            what="SEG and SR in Orthanc",
        )
        done = time.perf_counter()
        job = node.jobs()[0]
    finally:
        node.stop()
        orthanc.stop()
    return {
        "send_s": round(sent - t0, 2),
        "last_instance_to_pacs_s": round(done - sent, 2),
        "idle_wait_s": idle_seconds,
        "stages_s": job["summary"]["timings"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engine", default="cnn", choices=["cnn", "threshold"])
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--series", type=Path, default=LIDC_0002)
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            runs.append(one_run(Path(tmp) / str(i), args.series, args.engine, args.idle_seconds))
            print(f"run {i + 1}: {runs[-1]}", file=sys.stderr)
    stages = {k: round(statistics.median(r["stages_s"][k] for r in runs), 2) for k in runs[0]["stages_s"]}
    report = {
        "series": args.series.name,
        "engine": args.engine,
        "runs": args.runs,
        "idle_seconds": args.idle_seconds,
        "last_instance_to_pacs_s_median": round(statistics.median(r["last_instance_to_pacs_s"] for r in runs), 2),
        "stages_s_median": stages,
        "runs_detail": runs,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
