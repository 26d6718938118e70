"""Run the benchmarks and write benchmarks/results.json (the README's table comes from it).

    .venv/bin/python benchmarks/run_all.py [--quick] [--only ingest|end_to_end|memory|healthy_lungs]

`--only` reruns one benchmark and replaces just its entries in the existing results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import bench_e2e, bench_healthy, bench_ingest, bench_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (1 instead of 5/3)")
    parser.add_argument(
        "--only",
        choices=["ingest", "end_to_end", "memory", "healthy_lungs"],
        help="run one benchmark and merge its entries into the existing results.json",
    )
    args = parser.parse_args()
    runs = 1 if args.quick else None
    benchmarks = {
        "ingest": lambda: {"ingest": bench_ingest.main(["--runs", str(runs or 5)])},
        "end_to_end": lambda: {
            "end_to_end_cnn": bench_e2e.main(["--runs", str(runs or 3), "--engine", "cnn"]),
            "end_to_end_threshold": bench_e2e.main(["--runs", str(runs or 3), "--engine", "threshold"]),
        },
        "memory": lambda: {
            "memory_1000_slices": bench_memory.main(["--engine", "cnn"]),
            "memory_1000_slices_threshold": bench_memory.main(["--engine", "threshold"]),
        },
        "healthy_lungs": lambda: {
            "healthy_lungs": {name: bench_healthy.main(["--weights", name]) for name in ("open", "noncommercial")}
        },
    }
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text()) if args.only and results_path.exists() else {}
    results.update(
        date=datetime.date.today().isoformat(),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
    )
    for name, run in benchmarks.items():
        if args.only in (None, name):
            results.update(run())
    results_path.write_text(json.dumps(results, indent=2))
    print(f"wrote {HERE / 'results.json'}")


if __name__ == "__main__":
    main()
