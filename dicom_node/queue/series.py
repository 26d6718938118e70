"""Series completeness and eligibility.

The Store SCP only touches an in-memory activity record per series (no database round trip
per instance). The completeness sweep takes series idle for `idle_seconds`, reads their
headers from the spool and decides: queue a job, or record why not (ineligible,
inconsistent, identical re-send). Every decision is kept in the job store and shown by the CLI.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import structlog

from config.settings import SeriesSettings
from inference.volume import SeriesError, slice_normal, slice_position, spacing_from_positions

log = structlog.get_logger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class SeriesActivity:
    study_uid: str
    series_uid: str
    calling_ae: str
    last_received: float = field(default_factory=time.monotonic)
    received: int = 0


class SeriesTracker:
    """Thread-safe record of which series received instances and when (monotonic clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, SeriesActivity] = {}

    def touch(self, study_uid: str, series_uid: str, calling_ae: str, at: float | None = None) -> None:
        with self._lock:
            activity = self._active.get(series_uid)
            if activity is None:
                activity = self._active[series_uid] = SeriesActivity(study_uid, series_uid, calling_ae)
            activity.last_received = time.monotonic() if at is None else at
            activity.received += 1
            activity.calling_ae = calling_ae or activity.calling_ae

    def pop_idle(self, idle_seconds: float) -> list[SeriesActivity]:
        """Remove and return the series that have been quiet for `idle_seconds`."""
        now = time.monotonic()
        with self._lock:
            idle = [a for a in self._active.values() if now - a.last_received >= idle_seconds]
            for activity in idle:
                del self._active[activity.series_uid]
        return idle

    def is_active(self, series_uid: str) -> bool:
        with self._lock:
            return series_uid in self._active

    def pending(self) -> int:
        with self._lock:
            return len(self._active)


@dataclass
class SeriesDecision:
    """What the sweep concluded about the files of one series."""

    eligible: bool
    outcome: str  # "queued" | "ineligible" | "inconsistent"
    reason: str
    files: list[Path]  # the instances to process, duplicates removed, in slice order
    instance_uids: list[str]
    instance_set_hash: str
    description: str = ""


def instance_set_hash(sop_uids: list[str]) -> str:
    """Identity of a set of instances: an identical re-send has the same hash."""
    return hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()


def evaluate_series(files: list[Path], settings: SeriesSettings) -> SeriesDecision:
    """Decide whether the received files form one complete, eligible axial CT series."""
    sop_uids = [p.stem for p in files]
    digest = instance_set_hash(sop_uids)
    headers = []
    unreadable = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ds.filename = str(path)
            headers.append(ds)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not fatal
            unreadable.append(f"{path.name}: {exc}")

    def decide(outcome: str, reason: str, keep: list = ()) -> SeriesDecision:
        description = str(headers[0].get("SeriesDescription", "")) if headers else ""
        return SeriesDecision(outcome == "queued", outcome, reason, [Path(d.filename) for d in keep],
                              [str(d.SOPInstanceUID) for d in keep], digest, description)

    if unreadable:
        return decide("inconsistent", f"{len(unreadable)} unreadable file(s): {unreadable[0]}")
    if not headers:
        return decide("inconsistent", "no instances")
    modalities = {str(d.get("Modality", "")) for d in headers}
    if modalities != {"CT"}:
        return decide("ineligible", f"modality {', '.join(sorted(modalities))} is not CT")
    classes = {str(d.get("SOPClassUID", "")) for d in headers}
    if classes != {CT_IMAGE_STORAGE}:
        return decide("ineligible", "not CT Image Storage (single-frame) instances")
    description = str(headers[0].get("SeriesDescription", ""))
    if settings.include_descriptions and not any(
            re.search(p, description, re.IGNORECASE) for p in settings.include_descriptions):
        return decide("ineligible", f"series description {description!r} matches no include pattern")
    for pattern in settings.exclude_descriptions:
        if re.search(pattern, description, re.IGNORECASE):
            return decide("ineligible", f"series description {description!r} matches exclude pattern {pattern!r}")
    try:
        orientations = {tuple(np.round(np.asarray(d.ImageOrientationPatient, float), 3)) for d in headers}
        if len(orientations) > 1:
            return decide("inconsistent", f"{len(orientations)} different image orientations in one series")
        normal = slice_normal(headers[0])
        if abs(normal[2]) < 0.95:
            return decide("ineligible", "not an axial series (slice normal is not along the body axis)")
        if any(not d.get("PixelSpacing") for d in headers):
            raise SeriesError("missing PixelSpacing")
        sizes = {(int(d.Rows), int(d.Columns)) for d in headers}
        if len(sizes) > 1:
            return decide("inconsistent", "images of different sizes in one series")
        keyed = sorted(((round(slice_position(d, normal), 3), d) for d in headers), key=lambda p: p[0])
    except SeriesError as exc:
        return decide("inconsistent", str(exc))
    acquisitions: dict[str, set[float]] = {}
    for position, ds in keyed:
        acquisitions.setdefault(str(ds.get("AcquisitionNumber", "")), set()).add(position)
    if len(acquisitions) > 1:
        groups = list(acquisitions.values())
        if any(a & b for i, a in enumerate(groups) for b in groups[i + 1:]):
            numbers = ", ".join(sorted(acquisitions, key=str))
            return decide("inconsistent", f"{len(acquisitions)} acquisitions (AcquisitionNumber {numbers}) "
                                          "cover the same positions in one series; send each as its own series")
    unique: list = []
    for position, ds in keyed:
        if unique and position == unique[-1][0]:
            log.info("duplicate slice position dropped", series_uid=str(ds.SeriesInstanceUID),
                     sop_instance_uid=str(ds.SOPInstanceUID), position_mm=position)
            continue
        unique.append((position, ds))
    if len(unique) < settings.min_slices:
        return decide("ineligible", f"{len(unique)} slices, fewer than min_slices={settings.min_slices}")
    try:
        spacing_from_positions(np.array([p for p, _ in unique]), settings.spacing_tolerance)
    except SeriesError as exc:
        return decide("inconsistent", str(exc))
    return decide("queued", "", [d for _, d in unique])
