"""Time the CNN engine on a real series (default LIDC-IDRI-0002, 261 slices).

    .venv/bin/python benchmarks/bench_model.py [--device cpu|cuda|auto] [--threads N]
        [--series DIR] [--weights FILE] [--repeat 2] [--json out.json]

Reports the model time (segment(), series already in memory; on CUDA after a warm-up
pass and with synchronisation) and the load time separately, plus the label counts.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from inference.engines import weights_path
from inference.engines.cnn import CNNEngine
from inference.volume import load_series

DEFAULT_SERIES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lidc-idri" / "LIDC-IDRI-0002"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--weights", default=None, help="weight set name or file (default: the shipped default)")
    parser.add_argument("--flip", action="store_true", help="test-time flips (twice the model time)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the engine's for the device")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    t0 = time.perf_counter()
    volume = load_series(args.series)
    load_s = time.perf_counter() - t0
    engine = CNNEngine(
        device=args.device,
        weights_path=weights_path(args.weights),
        batch_size=args.batch_size,
        num_threads=args.threads,
        flip=args.flip,
    )
    cuda = engine.device.type == "cuda"
    if cuda:  # warm-up: kernels, autotuning, allocator
        engine.segment(volume)
        torch.cuda.synchronize()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        labels = engine.segment(volume)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    result = {
        "series": args.series.name,
        "slices": int(volume.hu.shape[0]),
        "matrix": list(volume.hu.shape[1:]),
        "device": str(engine.device),
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "weights_version": engine.version,
        "flip": args.flip,
        "load_series_s": round(load_s, 2),
        "model_s": [round(t, 2) for t in times],
        "model_s_best": round(min(times), 2),
        "label_counts": np.bincount(labels.ravel(), minlength=4).tolist(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
