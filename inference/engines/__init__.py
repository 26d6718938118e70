"""Segmentation engines: a volume in, a label map (0 bg, 1 lung, 2 GGO, 3 cons) out.

An engine is any object with `name`, `version` and
`segment(volume: CTVolume, progress: Callable[[int, int], None] | None = None) -> np.ndarray`
returning uint8 labels shaped like `volume.hu`. `get_engine` builds one by its config name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from inference.volume import CTVolume

Progress = Callable[[int, int], None]

#: The shipped CNN weights (their SHA-256 is in SHA256SUMS beside them).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "ldct-unet.pt"


class Engine(Protocol):
    name: str
    version: str

    def segment(self, volume: CTVolume, progress: Progress | None = None) -> np.ndarray: ...


class UnknownEngineError(ValueError):
    pass


def get_engine(name: str, device: str = "auto") -> Engine:
    """Build the engine configured as `name` ("threshold" or "cnn") on `device`."""
    if name == "threshold":
        from inference.engines.threshold import ThresholdEngine

        return ThresholdEngine()
    if name == "cnn":
        from inference.engines.cnn import CNNEngine

        return CNNEngine(device=device)
    raise UnknownEngineError(f"unknown inference engine {name!r}: choose 'cnn' or 'threshold'")
