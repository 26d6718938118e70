"""Peak memory (RSS) of `ldct-node segment` on a 1000-slice series of real anatomy.

The series is a real chest CT from ../shared/data (default LIDC-IDRI-0002, 261 slices,
512 x 512) stacked along z until it has `--slices` slices, with new positions and UIDs: the
anatomy users' series have (a synthetic phantom's smooth tissue made the engine's 3D
clean-up find far fewer components and kept its peak 1.8 GB lower: issue 14). `--phantom`
uses the old 100-slice synthetic block instead. The peak RSS is that of the `segment` child process
(SEG, SR and key images included): its VmHWM, which counts only what it used after exec. The
kernel's rusage of a child also counts the parent's memory it was forked with (over 1 GB here
after writing the series), and, for RUSAGE_CHILDREN, every earlier child of run_all.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


#: `ldct-node` run by `python -c`; at exit it prints its own VmHWM (kB) on stderr.
REPORT_PEAK_AND_RUN_CLI = """
import atexit, runpy, sys
def report():
    print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")), file=sys.stderr)
atexit.register(report)
sys.argv[0] = "ldct-node"
runpy.run_module("dicom_node", run_name="__main__")
"""


def write_long_series(folder: Path, slices: int, source: Path | None = None) -> None:
    """`slices` slices in folder/series: `source` (a DICOM series) repeated along z, or a
    100-slice synthetic phantom when `source` is None."""
    if source is None:
        from inference.synthetic import LesionSpec, generate_phantom, write_series

        phantom = generate_phantom(
            shape=(100, 512, 512), spacing=(1.0, 0.7, 0.7), seed=5, lesions=[LesionSpec("ggo", volume_ml=40.0)]
        )
        template = write_series(phantom, folder / "block")
        step = 1.0
    else:
        from inference.volume import read_headers, sort_by_position

        ordered, positions = sort_by_position(read_headers(sorted(source.iterdir())))
        template = [Path(ds.filename) for ds in ordered]
        step = float(np.median(np.diff(positions)))
    series_uid = generate_uid()
    for number in range(slices):
        ds = pydicom.dcmread(template[number % len(template)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = number + 1
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], float(number) * step]
        ds.SliceLocation = float(number) * step
        ds.save_as(folder / "series" / f"{number:05d}.dcm")
    if source is None:
        for path in template:
            path.unlink()


DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "lidc-idri" / "LIDC-IDRI-0002"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--engine", default="cnn", choices=["cnn", "threshold"])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="real series to stack")
    parser.add_argument("--phantom", action="store_true", help="stack a synthetic phantom instead")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "series").mkdir()
        source = None if args.phantom else args.source
        write_long_series(tmp, args.slices, source)
        t0 = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                REPORT_PEAK_AND_RUN_CLI,
                "segment",
                str(tmp / "series"),
                "--out",
                str(tmp / "out"),
                "--engine",
                args.engine,
                "--json",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        elapsed = time.perf_counter() - t0
        if result.returncode != 0:
            raise SystemExit(result.stderr[-2000:])
        peak_mb = int(result.stderr.rsplit("VmHWM:", 1)[1].split()[0]) / 1024
    report = {
        "slices": args.slices,
        "matrix": [512, 512],
        "engine": args.engine,
        "anatomy": "synthetic phantom" if args.phantom else f"real: {args.source.name} stacked",
        "peak_rss_mb": round(peak_mb),
        "wall_s": round(elapsed, 1),
        "timings": json.loads(result.stdout)["timings"],
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
