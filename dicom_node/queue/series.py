"""Series completeness and eligibility: the stage between receiving and the job queue.

Every instance stored (by the node's Store SCP or a receiver process) only touches an
in-memory activity record per series (no database round trip per instance). The completeness
sweep takes series idle for `idle_seconds`, reads their headers from the spool once and
decides: queue a job with its instances in slice order, or record why not (ineligible,
inconsistent, identical re-send). Every decision is kept in the job store and shown by the CLI.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import structlog
from pydicom.dataset import Dataset

from config.settings import SeriesSettings, Settings
from dicom_node import metrics
from dicom_node.queue.jobstore import SERIES_DUPLICATE, SERIES_QUEUED, JobStore
from dicom_node.receive.acceptor import Peer
from dicom_node.receive.spool import Spool
from dicom_node.receive.store_scp import InstanceHeader
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
    instance_uids: list[str]  # the instances to process, duplicates removed, in slice order
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

    def decide(outcome: str, reason: str, keep: Sequence[Dataset] = ()) -> SeriesDecision:
        description = str(headers[0].get("SeriesDescription", "")) if headers else ""
        return SeriesDecision(
            outcome == "queued", outcome, reason, [str(d.SOPInstanceUID) for d in keep], digest, description
        )

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
        re.search(p, description, re.IGNORECASE) for p in settings.include_descriptions
    ):
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
        if any(a & b for i, a in enumerate(groups) for b in groups[i + 1 :]):
            numbers = ", ".join(sorted(acquisitions, key=str))
            return decide(
                "inconsistent",
                f"{len(acquisitions)} acquisitions (AcquisitionNumber {numbers}) "
                "cover the same positions in one series; send each as its own series",
            )
    unique: list[tuple[float, Dataset]] = []
    for position, ds in keyed:
        if unique and position == unique[-1][0]:
            log.info(
                "duplicate slice position dropped",
                series_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                position_mm=position,
            )
            continue
        unique.append((position, ds))
    if len(unique) < settings.min_slices:
        return decide("ineligible", f"{len(unique)} slices, fewer than min_slices={settings.min_slices}")
    try:
        spacing_from_positions(np.array([p for p, _ in unique]), settings.spacing_tolerance)
    except SeriesError as exc:
        return decide("inconsistent", str(exc))
    return decide("queued", "", [d for _, d in unique])


class Completeness:
    """Decides the series that went quiet, in the receiving process: the one series tracker,
    fed by every instance stored there or in a receiver process, lives here."""

    def __init__(
        self, settings: Settings, store: JobStore, spool: Spool, on_queued: Callable[[], None] | None = None
    ) -> None:
        """`on_queued()`: told when a job was queued (the node wakes its workers)."""
        self.settings, self.store, self.spool = settings, store, spool
        self.on_queued = on_queued
        self.tracker = SeriesTracker()
        self._lock = threading.Lock()  # a series is resumed or decided, never both at once
        self._series_seen: set[str] = set()

    def instance_stored(self, peer: Peer, header: InstanceHeader) -> None:
        """Every instance stored, here or by a receiver process."""
        series_uid = header.series_uid
        self.tracker.touch(header.study_uid, series_uid, peer.ae_title)
        metrics.INSTANCES_RECEIVED.inc()
        if series_uid not in self._series_seen:
            self._series_seen.add(series_uid)
            self.store.audit("receiving", series_uid=series_uid, calling_ae=peer.ae_title, peer=peer.address)

    def resume_undecided(self) -> None:
        """Series spooled but never decided on and not being received are swept again: at
        start (after a crash) and after a receiver process died (it may have stored an
        instance it never reported, the only one of its series).

        Each gets a full idle window from now: a sender whose association the crash cut
        re-sends, and the series is decided once, complete, instead of twice.
        """
        with self._lock:
            for study_uid, series_uid, folder in self.spool.series_dirs():
                if self.tracker.is_active(series_uid):
                    continue
                uids = [p.stem for p in self.spool.instance_files(folder)]
                if uids and not self.store.known_instance_set(series_uid, instance_set_hash(uids)):
                    self.tracker.touch(study_uid, series_uid, "")
                    log.info("resuming undecided series", series_uid=series_uid, instances=len(uids))

    def sweep(self) -> None:
        """Decide every series idle for `series.idle_seconds`."""
        with self._lock:
            for activity in self.tracker.pop_idle(self.settings.series.idle_seconds):
                try:
                    self.decide(activity.study_uid, activity.series_uid, activity.calling_ae)
                except Exception:  # one bad series must not stop the sweep
                    log.exception("completeness check failed", series_uid=activity.series_uid)

    def decide(self, study_uid: str, series_uid: str, calling_ae: str) -> None:
        """Queue a job for the series, or record why not."""
        self._series_seen.discard(series_uid)
        files = self.spool.instance_files(self.spool.series_dir(study_uid, series_uid))
        decision = evaluate_series(files, self.settings.series)

        def record(outcome: str, reason: str = "", job_id: int | None = None) -> None:
            self.store.record_series(
                series_uid=series_uid,
                study_uid=study_uid,
                calling_ae=calling_ae,
                description=decision.description,
                instance_count=len(files),
                instance_set_hash=decision.instance_set_hash,
                outcome=outcome,
                reason=reason,
                job_id=job_id,
            )

        bound = log.bind(series_uid=series_uid, instances=len(files), calling_ae=calling_ae)
        if self.store.known_instance_set(series_uid, decision.instance_set_hash):
            metrics.SERIES_DECIDED.labels(SERIES_DUPLICATE).inc()
            record(SERIES_DUPLICATE, "same set of instances as an earlier decision: not processed again")
            bound.info("identical re-send ignored")
            return
        metrics.SERIES_DECIDED.labels(decision.outcome).inc()
        if not decision.eligible:
            record(decision.outcome, decision.reason)
            bound.warning("series not processed", outcome=decision.outcome, reason=decision.reason)
            return
        job_id = self.store.enqueue_job(
            series_uid=series_uid,
            study_uid=study_uid,
            instance_uids=decision.instance_uids,
            instance_set_hash=decision.instance_set_hash,
            max_attempts=self.settings.jobs.max_attempts,
        )
        record(SERIES_QUEUED, job_id=job_id)
        self.store.audit(
            "series_complete",
            series_uid=series_uid,
            job_id=job_id,
            calling_ae=calling_ae,
            instances=len(decision.instance_uids),
        )
        bound.info("series complete: job queued", job_id=job_id)
        if self.on_queued is not None:
            self.on_queued()
