"""Series completeness and eligibility: the stage between receiving and the job queue.

Every instance stored (by the node's Store SCP or a receiver process) only touches an
in-memory activity record per series (no database round trip per instance). The completeness
sweep takes what went quiet for `idle_seconds` (each series, or with `series.per_study =
"best"` each study once all its series are quiet), reads the headers from the spool once and
decides for each series: queue a job with its instances in slice order, or record why not
(not processed, ineligible, inconsistent, identical re-send, not selected). Every decision is
kept in the job store, audited and shown by the CLI; only CT Image Storage series ever become jobs.
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
from dicom_node.queue.jobstore import (
    SERIES_DUPLICATE,
    SERIES_INCONSISTENT,
    SERIES_INELIGIBLE,
    SERIES_NOT_PROCESSED,
    SERIES_NOT_SELECTED,
    SERIES_QUEUED,
    JobStore,
)
from dicom_node.queue.selection import (
    SeriesFeatures,
    not_selected_reason,
    rank,
    selected_reason,
    series_features,
)
from dicom_node.receive.acceptor import Peer
from dicom_node.receive.sop_classes import is_analysed, not_processed_reason
from dicom_node.receive.spool import Spool
from dicom_node.receive.store_scp import InstanceHeader
from inference.volume import (
    SeriesError,
    lossy_compression,
    slice_normal,
    slice_position,
    spacing_from_positions,
    values_of,
)

log = structlog.get_logger(__name__)


@dataclass
class SeriesActivity:
    """A series being received: who sends it, when it last got an instance, of which SOP
    classes (empty when resumed from the spool after a restart) and how many were dropped."""

    study_uid: str
    series_uid: str
    calling_ae: str
    last_received: float = field(default_factory=time.monotonic)
    received: int = 0
    sop_classes: set[str] = field(default_factory=set)
    dropped: int = 0


class SeriesTracker:
    """Thread-safe record of which series received instances and when (monotonic clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, SeriesActivity] = {}

    def touch(
        self,
        study_uid: str,
        series_uid: str,
        calling_ae: str,
        at: float | None = None,
        *,
        sop_class_uid: str = "",
        kept: bool = True,
    ) -> None:
        with self._lock:
            activity = self._active.get(series_uid)
            if activity is None:
                activity = self._active[series_uid] = SeriesActivity(study_uid, series_uid, calling_ae)
            activity.last_received = time.monotonic() if at is None else at
            activity.received += 1
            activity.calling_ae = calling_ae or activity.calling_ae
            if sop_class_uid:
                activity.sop_classes.add(sop_class_uid)
            activity.dropped += not kept

    def pop_idle(self, idle_seconds: float) -> list[SeriesActivity]:
        """Remove and return the series that have been quiet for `idle_seconds`."""
        now = time.monotonic()
        with self._lock:
            idle = [a for a in self._active.values() if now - a.last_received >= idle_seconds]
            for activity in idle:
                del self._active[activity.series_uid]
        return idle

    def pop_idle_studies(self, idle_seconds: float) -> list[list[SeriesActivity]]:
        """Remove and return, study by study, the series of studies in which no series got an
        instance for `idle_seconds`."""
        now = time.monotonic()
        with self._lock:
            studies: dict[str, list[SeriesActivity]] = {}
            for activity in self._active.values():
                studies.setdefault(activity.study_uid, []).append(activity)
            idle = [
                series
                for series in studies.values()
                if all(now - activity.last_received >= idle_seconds for activity in series)
            ]
            for series in idle:
                for activity in series:
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
    outcome: str  # "queued" | "not processed" | "ineligible" | "inconsistent"
    reason: str
    instance_uids: list[str]  # the instances to process, duplicates removed, in slice order
    instance_set_hash: str
    description: str = ""
    features: SeriesFeatures | None = None  # what per-study selection compares (eligible series)


def instance_set_hash(sop_uids: list[str]) -> str:
    """Identity of a set of instances: an identical re-send has the same hash."""
    return hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()


def is_localizer(ds: Dataset) -> bool:
    """A scout/topogram: ImageType holds LOCALIZER (PS3.3 C.8.2.1.1.1)."""
    return "LOCALIZER" in (str(v).upper() for v in values_of(ds.get("ImageType")))


def evaluate_series(files: list[Path], settings: SeriesSettings) -> SeriesDecision:
    """Decide whether the received files form one complete, eligible axial CT series.

    Instances the node does not analyse (other SOP classes, localizers) are left out; a series
    of nothing else is "not processed" with what it holds as the reason.
    """
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

    def decide(
        outcome: str, reason: str, keep: Sequence[Dataset] = (), features: SeriesFeatures | None = None
    ) -> SeriesDecision:
        description = str(headers[0].get("SeriesDescription", "")) if headers else ""
        return SeriesDecision(
            outcome == SERIES_QUEUED,
            outcome,
            reason,
            [str(d.SOPInstanceUID) for d in keep],
            digest,
            description,
            features,
        )

    if unreadable:
        return decide(SERIES_INCONSISTENT, f"{len(unreadable)} unreadable file(s): {unreadable[0]}")
    if not headers:
        return decide(SERIES_INCONSISTENT, "no instances")
    classes = [str(d.get("SOPClassUID", "")) for d in headers]
    analysed = [d for d, uid in zip(headers, classes, strict=True) if is_analysed(uid) and not is_localizer(d)]
    if not analysed:  # the analysed-class instances here, if any, are localizers
        others = {uid for uid in classes if not is_analysed(uid)}
        reasons = [not_processed_reason(others)] if others else []
        if len(others) < len(set(classes)):
            reasons.append("not processed: localizer (ImageType LOCALIZER)")
        return decide(SERIES_NOT_PROCESSED, "; ".join(reasons))
    if len(analysed) < len(headers):
        log.info(
            "instances left out of the series: not analysed",
            series_uid=str(analysed[0].SeriesInstanceUID),
            left_out=len(headers) - len(analysed),
        )
        headers = analysed
    modalities = {str(d.get("Modality", "")) for d in headers}
    if modalities != {"CT"}:
        return decide(SERIES_INELIGIBLE, f"modality {', '.join(sorted(modalities))} is not CT")
    description = str(headers[0].get("SeriesDescription", ""))
    if settings.include_descriptions and not any(
        re.search(p, description, re.IGNORECASE) for p in settings.include_descriptions
    ):
        return decide(SERIES_INELIGIBLE, f"series description {description!r} matches no include pattern")
    for pattern in settings.exclude_descriptions:
        if re.search(pattern, description, re.IGNORECASE):
            return decide(SERIES_INELIGIBLE, f"series description {description!r} matches exclude pattern {pattern!r}")
    if settings.lossy == "refuse" and (lossy := lossy_compression(headers)) is not None:
        return decide(SERIES_INELIGIBLE, f'lossy-compressed source ({lossy}) and series.lossy = "refuse"')
    try:
        orientations = {tuple(np.round(np.asarray(d.ImageOrientationPatient, float), 3)) for d in headers}
        if len(orientations) > 1:
            return decide(SERIES_INCONSISTENT, f"{len(orientations)} different image orientations in one series")
        normal = slice_normal(headers[0])
        if abs(normal[2]) < 0.95:
            return decide(SERIES_INELIGIBLE, "not an axial series (slice normal is not along the body axis)")
        if any(not d.get("PixelSpacing") for d in headers):
            raise SeriesError("missing PixelSpacing")
        sizes = {(int(d.Rows), int(d.Columns)) for d in headers}
        if len(sizes) > 1:
            return decide(SERIES_INCONSISTENT, "images of different sizes in one series")
        keyed = sorted(((round(slice_position(d, normal), 3), d) for d in headers), key=lambda p: p[0])
    except SeriesError as exc:
        return decide(SERIES_INCONSISTENT, str(exc))
    acquisitions: dict[str, set[float]] = {}
    for position, ds in keyed:
        acquisitions.setdefault(str(ds.get("AcquisitionNumber", "")), set()).add(position)
    if len(acquisitions) > 1:
        groups = list(acquisitions.values())
        if any(a & b for i, a in enumerate(groups) for b in groups[i + 1 :]):
            numbers = ", ".join(sorted(acquisitions, key=str))
            return decide(
                SERIES_INCONSISTENT,
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
        return decide(SERIES_INELIGIBLE, f"{len(unique)} slices, fewer than min_slices={settings.min_slices}")
    try:
        spacing = spacing_from_positions(np.array([p for p, _ in unique]), settings.spacing_tolerance)
    except SeriesError as exc:
        return decide(SERIES_INCONSISTENT, str(exc))
    kept = [d for _, d in unique]
    return decide(SERIES_QUEUED, "", kept, series_features(kept, spacing, settings.lung_kernel_pattern))


@dataclass
class _Candidate:
    """An eligible series of the study being decided."""

    activity: SeriesActivity
    instances: int
    decision: SeriesDecision

    @property
    def features(self) -> SeriesFeatures:
        assert self.decision.features is not None  # set for every eligible decision
        return self.decision.features


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
        """Every instance stored (or acknowledged and dropped), here or by a receiver process."""
        series_uid = header.series_uid
        self.tracker.touch(
            header.study_uid, series_uid, peer.ae_title, sop_class_uid=header.sop_class_uid, kept=header.kept
        )
        metrics.INSTANCES_RECEIVED.inc()
        if series_uid not in self._series_seen:
            self._series_seen.add(series_uid)
            self.store.audit("receiving", series_uid=series_uid, calling_ae=peer.ae_title, peer=peer.address)

    def resume_undecided(self) -> None:
        """Series spooled but never decided on and not being received are swept again: at
        start (after a crash) and after a receiver process died (it may have stored an
        instance it never reported, the only one of its series).

        Each gets a full idle window from now: a sender whose association the crash cut
        re-sends, and the series is decided once, complete, instead of twice. A study waiting
        for per-study selection is such a set of series: it is decided as a whole again.
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
        """Decide what has been idle for `series.idle_seconds`: each series, or each whole study."""
        idle = self.settings.series.idle_seconds
        with self._lock:
            if self.settings.series.per_study == "best":
                groups = self.tracker.pop_idle_studies(idle)
            else:
                groups = [[activity] for activity in self.tracker.pop_idle(idle)]
            for group in groups:
                try:
                    self.decide_group(group)
                except Exception:  # one bad series or study must not stop the sweep
                    log.exception("completeness check failed", series_uids=[a.series_uid for a in group])

    def decide(self, study_uid: str, series_uid: str, calling_ae: str) -> None:
        """Queue a job for the series, or record why not."""
        self.decide_group([SeriesActivity(study_uid, series_uid, calling_ae)])

    def decide_group(self, group: list[SeriesActivity]) -> None:
        """Decide the series of one study that went quiet together (one series unless
        `series.per_study = "best"`): every one gets exactly one recorded decision."""
        candidates = [candidate for activity in group if (candidate := self._evaluate(activity)) is not None]
        if not candidates:
            return
        if self.settings.series.per_study == "all":
            for candidate in candidates:
                self._queue(candidate)
        else:
            self._select(candidates)

    def _evaluate(self, activity: SeriesActivity) -> _Candidate | None:
        """An eligible series, or None once the reason it is not one is recorded."""
        self._series_seen.discard(activity.series_uid)
        files = self.spool.instance_files(self.spool.series_dir(activity.study_uid, activity.series_uid))
        digest = instance_set_hash([p.stem for p in files])
        count = len(files) or activity.received  # dropped instances are counted as received
        if activity.sop_classes and not any(is_analysed(uid) for uid in activity.sop_classes):
            reason = not_processed_reason(activity.sop_classes)  # the receive path named them all: nothing to read
            if activity.dropped:
                reason += f" ({activity.dropped} dropped after acknowledgement)"
            self._record(activity, count, digest, SERIES_NOT_PROCESSED, reason)
            return None
        decision = evaluate_series(files, self.settings.series)
        if self.store.known_instance_set(activity.series_uid, decision.instance_set_hash):
            reason = "same set of instances as an earlier decision: not processed again"
            self._record(activity, len(files), decision.instance_set_hash, SERIES_DUPLICATE, reason, decision)
            return None
        if not decision.eligible:
            self._record(activity, count, decision.instance_set_hash, decision.outcome, decision.reason, decision)
            return None
        return _Candidate(activity, len(files), decision)

    def _select(self, candidates: list[_Candidate]) -> None:
        """Per-study selection: queue the preferred series (see `dicom_node.queue.selection`)
        and record every other as not selected. The study's series processed earlier competes
        too: a later series it beats is not selected; one that beats it is processed and its
        results supersede the earlier ones."""
        study_uid = candidates[0].activity.study_uid
        current = self.store.current_study_job(study_uid)
        contenders = [candidate.features for candidate in candidates]
        earlier = None
        if current is not None and all(c.activity.series_uid != current.series_uid for c in candidates):
            earlier = self._processed_features(current.study_uid, current.series_uid, current.instance_uid_list())
        ranked = rank(contenders + ([earlier] if earlier is not None else []))
        winner = ranked[0]
        earlier_job = current.id if earlier is not None and current is not None else None
        if winner is earlier:
            for candidate in candidates:
                self._not_selected(candidate, winner, earlier_job)
            return
        chosen = next(c for c in candidates if c.features is winner)
        replaces = current.id if current is not None and current.series_uid != winner.series_uid else None
        self._queue(chosen, selected_reason(winner, len(ranked) - 1), replaces)
        for candidate in candidates:
            if candidate is not chosen:
                self._not_selected(candidate, winner)

    def _processed_features(self, study_uid: str, series_uid: str, instance_uids: list[str]) -> SeriesFeatures | None:
        """The features of a series processed earlier, from its spooled files (None: purged)."""
        try:
            files = self.spool.instances_of(study_uid, series_uid, instance_uids)
        except FileNotFoundError:
            return None
        return evaluate_series(files, self.settings.series).features

    def _not_selected(self, candidate: _Candidate, winner: SeriesFeatures, earlier_job: int | None = None) -> None:
        reason = not_selected_reason(winner, candidate.features, earlier_job)
        decision = candidate.decision
        self._record(
            candidate.activity, candidate.instances, decision.instance_set_hash, SERIES_NOT_SELECTED, reason, decision
        )

    def _queue(self, candidate: _Candidate, reason: str = "", replaces: int | None = None) -> None:
        activity, decision = candidate.activity, candidate.decision
        job_id = self.store.enqueue_job(
            series_uid=activity.series_uid,
            study_uid=activity.study_uid,
            instance_uids=decision.instance_uids,
            instance_set_hash=decision.instance_set_hash,
            max_attempts=self.settings.jobs.max_attempts,
            replaces_job_id=replaces,
        )
        self._record(activity, candidate.instances, decision.instance_set_hash, SERIES_QUEUED, reason, decision, job_id)
        if self.on_queued is not None:
            self.on_queued()

    def _record(
        self,
        activity: SeriesActivity,
        instances: int,
        digest: str,
        outcome: str,
        reason: str,
        decision: SeriesDecision | None = None,
        job_id: int | None = None,
    ) -> None:
        """Keep the decision (job store, audit, metrics) and log it."""
        series_uid = activity.series_uid
        self.store.record_series(
            series_uid=series_uid,
            study_uid=activity.study_uid,
            calling_ae=activity.calling_ae,
            description=decision.description if decision is not None else "",
            instance_count=instances,
            instance_set_hash=digest,
            outcome=outcome,
            reason=reason,
            job_id=job_id,
        )
        self.store.audit(
            "series_decided",
            series_uid=series_uid,
            job_id=job_id,
            calling_ae=activity.calling_ae,
            study_uid=activity.study_uid,
            instances=instances,
            outcome=outcome,
            reason=reason,
        )
        metrics.SERIES_DECIDED.labels(outcome).inc()
        bound = log.bind(series_uid=series_uid, study_uid=activity.study_uid, instances=instances)
        if outcome == SERIES_QUEUED:
            bound.info("series complete: job queued", job_id=job_id, reason=reason or None)
        elif outcome == SERIES_DUPLICATE:
            bound.info("identical re-send ignored")
        elif outcome in (SERIES_NOT_PROCESSED, SERIES_NOT_SELECTED):
            bound.info("series not processed", outcome=outcome, reason=reason)
        else:
            bound.warning("series not processed", outcome=outcome, reason=reason)
