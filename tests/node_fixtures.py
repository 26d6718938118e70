"""An in-process node's pieces on real files: settings in a temp folder and series in its spool."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pydicom

from config.settings import Settings
from dicom_node.receive.spool import Spool
from inference.synthetic import generate_phantom, write_series


def node_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a node in `data_dir` with the threshold engine; `sections` add to the defaults."""
    values: dict[str, Any] = {
        "node": {"data_dir": str(data_dir), "bind_address": "127.0.0.1", "min_free_disk_mb": 10},
        "inference": {"engine": "threshold", "device": "cpu"},
    }
    for name, section in sections.items():
        values[name] = {**values.get(name, {}), **section} if isinstance(section, dict) else section
    return Settings.model_validate(values)


def spool_series(spool: Spool, folder: Path, seed: int) -> tuple[str, str]:
    """A small synthetic CT series placed in the spool as the Store SCP leaves it; (study, series) UIDs."""
    return spool_files(
        spool, write_series(generate_phantom(shape=(24, 96, 96), spacing=(8.0, 3.5, 3.5), seed=seed), folder)
    )


def spool_files(spool: Spool, paths: list[Path]) -> tuple[str, str]:
    """DICOM files placed in the spool as the Store SCP leaves them; (study, series) UIDs of the last."""
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
