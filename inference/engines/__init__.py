"""Segmentation engines: a volume in, a label map (0 bg, 1 lung, 2 GGO, 3 cons) out.

An engine is any object with `name`, `version`, `algorithm_name` and
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

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: The shipped CNN weight sets (SHA-256 of each in SHA256SUMS beside them), chosen by
#: `[inference] weights`: "open" never learnt from covid-semiseg (redistributable with
#: attribution), "noncommercial" did (non-commercial research use only). MODEL_CARD.md.
WEIGHT_SETS = {
    "open": WEIGHTS_DIR / "ldct-unet-open.pt",
    "noncommercial": WEIGHTS_DIR / "ldct-unet-noncommercial.pt",
}
DEFAULT_WEIGHT_SET = "open"
DEFAULT_WEIGHTS = WEIGHT_SETS[DEFAULT_WEIGHT_SET]


def weights_path(choice: str | Path | None) -> Path:
    """The weights file for a set name ("open", "noncommercial"), a file path, or None (default)."""
    if choice is None or choice == "":
        return DEFAULT_WEIGHTS
    if str(choice) in WEIGHT_SETS:
        return WEIGHT_SETS[str(choice)]
    return Path(choice)


class Engine(Protocol):
    name: str
    version: str
    #: Algorithm name in the SEG and SR ("ldct-node threshold", "ldct-node cnn <weight set>").
    algorithm_name: str

    def segment(self, volume: CTVolume, progress: Progress | None = None) -> np.ndarray: ...


class UnknownEngineError(ValueError):
    pass


def get_engine(name: str, device: str = "auto", weights: str | Path | None = None) -> Engine:
    """Build the engine configured as `name` ("threshold" or "cnn") on `device`; `weights`
    picks the CNN's weight set by name or file (`weights_path`)."""
    if name == "threshold":
        from inference.engines.threshold import ThresholdEngine

        return ThresholdEngine()
    if name == "cnn":
        from inference.engines.cnn import CNNEngine

        return CNNEngine(device=device, weights_path=weights_path(weights))
    raise UnknownEngineError(f"unknown inference engine {name!r}: choose 'cnn' or 'threshold'")
