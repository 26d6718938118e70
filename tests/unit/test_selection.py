"""Which series of a study is processed, and what every other series of it is recorded as.

Per-study selection (`series.per_study = "best"`) on a whole routed study in a real spool and
SQLite job store: CT in two reconstructions, a localizer, a dose SR, a dose screen and a
presentation state; late series; a restart while a study waits; instances dropped at receipt.
"""

from __future__ import annotations

import json
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.node import prepare_data_dir
from dicom_node.queue.jobstore import DONE, JobStore
from dicom_node.queue.selection import SeriesFeatures, deciding_rule, not_selected_reason, rank
from dicom_node.queue.series import Completeness
from dicom_node.receive.spool import Spool
from tests.jobstore_fixtures import result_summary
from tests.node_fixtures import node_settings, spool_files
from tests.study_fixtures import LUNG_KERNEL, SOFT_KERNEL, MixedStudy, write_mixed_study


def features(uid: str, **changes) -> SeriesFeatures:
    values = {
        "series_uid": uid,
        "series_number": 2,
        "original": True,
        "kernel": "B60f",
        "lung_kernel": True,
        "thickness_mm": 1.0,
        "slices": 300,
    }
    return SeriesFeatures(**{**values, **changes})


def test_the_rules_decide_in_their_order_of_precedence():
    best = features("1.1")
    rivals = {
        "original images": features("1.2", original=False, thickness_mm=0.5),  # a thinner MIP loses
        "lung kernel": features("1.3", kernel="B30f", lung_kernel=False, thickness_mm=0.6, slices=500),
        "thinner slices": features("1.4", thickness_mm=5.0, slices=900),
        "more slices": features("1.5", slices=200),
        "lower series number": features("1.6", series_number=7),
        "series UID": features("1.0.9"),
    }
    assert rank([*rivals.values(), best])[0] == features("1.0.9")  # equal features: the UID decides last
    for rule, rival in rivals.items():
        if rule != "series UID":
            assert rank([rival, best])[0] == best, rule
            assert deciding_rule(best, rival) == rule
    reason = not_selected_reason(best, rivals["lung kernel"], processed_as_job=4)
    assert reason.startswith("not selected: series 1.1 preferred (lung kernel B60f, 1 mm, 300 slices")
    assert "processed earlier as job 4), by lung kernel; this series: kernel B30f, 0.6 mm, 500 slices" in reason


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> MixedStudy:
    return write_mixed_study(tmp_path_factory.mktemp("study"), lung_slices=24, size=48)


class Stage:
    """The completeness stage of a node on a real spool and job store."""

    def __init__(self, data_dir, **series):
        self.settings = node_settings(data_dir, series={"min_slices": 8, "idle_seconds": 0.05, **series})
        prepare_data_dir(data_dir)
        self.store = JobStore(self.settings.database_url)
        self.spool = Spool.from_settings(self.settings)
        self.completeness = Completeness(self.settings, self.store, self.spool)

    def receive(self, paths, *, kept=True) -> None:
        """As the Store SCP leaves them: spooled (unless dropped) and reported to the tracker."""
        if kept:
            spool_files(self.spool, paths)
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            self.completeness.tracker.touch(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, "PACS", sop_class_uid=ds.SOPClassUID, kept=kept
            )

    def sweep(self) -> None:
        time.sleep(0.06)
        self.completeness.sweep()

    def decisions(self) -> dict[str, tuple[str, str, int | None]]:
        return {r.series_uid: (r.outcome, r.reason, r.job_id) for r in reversed(self.store.recent_series(100))}

    def finish(self, job_id: int, series_uid: str) -> None:
        """What a worker does: the job done with its results."""
        job = self.store.claim_job("w", 60)
        assert job.id == job_id
        summary = result_summary(series_uid=series_uid, n=job_id)
        assert self.store.complete_job(job.id, "w", result_dir="/results", summary=summary, destinations=["pacs"])

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def stage(tmp_path):
    stages = []

    def make(**series) -> Stage:
        stages.append(Stage(tmp_path / f"data{len(stages)}", **series))
        return stages[-1]

    yield make
    for made in stages:
        made.close()


def test_a_routed_study_gets_one_job_and_a_reason_for_every_other_series(stage, study):
    node = stage()
    node.receive(study.all_files)
    node.sweep()
    decided = node.decisions()
    assert len(decided) == len(MixedStudy.KINDS)  # one decision per series
    outcome, reason, job_id = decided[study.series_uid("lung")]
    assert outcome == "queued" and job_id is not None
    assert reason == f"selected: lung kernel {LUNG_KERNEL}, 6 mm, 24 slices; preferred to 1 other series of the study"
    outcome, reason, _ = decided[study.series_uid("soft")]
    assert outcome == "not selected"
    assert reason.startswith(f"not selected: series {study.series_uid('lung')} preferred (lung kernel {LUNG_KERNEL}")
    assert reason.endswith(f"by lung kernel; this series: kernel {SOFT_KERNEL}, 12 mm, 12 slices")
    assert decided[study.series_uid("localizer")][:2] == (
        "not processed",
        "not processed: localizer (ImageType LOCALIZER)",
    )
    assert decided[study.series_uid("dose_sr")][:2] == ("not processed", "not processed: X-Ray Radiation Dose SR")
    assert decided[study.series_uid("dose_screen")][:2] == ("not processed", "not processed: Secondary Capture Image")
    assert decided[study.series_uid("presentation_state")][:2] == (
        "not processed",
        "not processed: Grayscale Softcopy Presentation State",
    )
    assert [job.series_uid for job in node.store.list_jobs()] == [study.series_uid("lung")]
    audited = {e.series_uid: json.loads(e.detail) for e in node.store.audit_events() if e.kind == "series_decided"}
    assert {uid: (d["outcome"], d["reason"]) for uid, d in audited.items()} == {
        uid: decision[:2] for uid, decision in decided.items()
    }


def test_all_processes_every_eligible_reconstruction(stage, study):
    node = stage(per_study="all")
    node.receive(study.lung + study.soft + [study.dose_sr])
    node.sweep()
    assert sorted(job.series_uid for job in node.store.list_jobs()) == sorted(
        [study.series_uid("lung"), study.series_uid("soft")]
    )
    assert node.decisions()[study.series_uid("dose_sr")][0] == "not processed"


def test_the_study_waits_until_all_its_series_are_quiet(stage, study):
    node = stage(idle_seconds=1.0)
    node.receive(study.soft)
    time.sleep(0.8)
    node.receive(study.lung)
    time.sleep(0.4)
    node.completeness.sweep()  # the soft-tissue series is quiet, the study is not: no decision
    assert node.decisions() == {}
    time.sleep(0.7)
    node.completeness.sweep()
    assert [job.series_uid for job in node.store.list_jobs()] == [study.series_uid("lung")]


def test_a_better_late_series_is_processed_and_supersedes_a_worse_one_is_not(stage, study, tmp_path):
    """The scanner sends the soft-tissue reconstruction, the lung one comes minutes later: the
    radiologist gets the analysis of the better series, replacing the first (its SR lists the
    earlier SEG and SR); a later copy of the soft-tissue series changes nothing."""
    node = stage()
    node.receive(study.soft)
    node.sweep()
    [first] = node.store.list_jobs()
    node.finish(first.id, study.series_uid("soft"))
    node.receive(study.lung)
    node.sweep()
    outcome, reason, second_id = node.decisions()[study.series_uid("lung")]
    assert outcome == "queued" and reason.startswith("selected: lung kernel")
    second = node.store.get_job(second_id)
    assert second.replaces_job_id == first.id
    earlier = node.store.get_job(first.id).result()
    assert node.store.superseded_objects(second) == [earlier.seg, earlier.sr]
    node.finish(second.id, study.series_uid("lung"))
    assert node.store.get_job(first.id).superseded_by == second.id
    assert node.store.current_study_job(study.study_uid).id == second.id

    copy = []  # the soft-tissue series again, as a new series of the study
    series_uid = generate_uid()
    for path in study.soft:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copy.append(tmp_path / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(copy[-1])
    node.receive(copy)
    node.sweep()
    outcome, reason, _ = node.decisions()[series_uid]
    assert outcome == "not selected"
    assert f"processed earlier as job {second.id}), by lung kernel" in reason
    assert len(node.store.list_jobs()) == 2


def test_a_replaced_job_that_finishes_last_is_not_sent(stage, study):
    """Two workers: the better series' job finishes first; the replaced one then sends nothing."""
    node = stage()
    node.receive(study.soft)
    node.sweep()
    node.receive(study.lung)
    node.sweep()
    first, second = sorted(node.store.list_jobs(), key=lambda j: j.id)
    assert second.replaces_job_id == first.id
    for job, worker in ((first, "a"), (second, "b")):
        assert node.store.claim_job(worker, 60).id == job.id
    summary = result_summary(series_uid=study.series_uid("lung"))
    assert node.store.complete_job(second.id, "b", result_dir="/r2", summary=summary, destinations=["pacs"])
    assert node.store.complete_job(first.id, "a", result_dir="/r1", summary=summary, destinations=["pacs"])
    assert node.store.get_job(first.id).state == DONE and node.store.get_job(first.id).superseded_by == second.id
    assert node.store.dispatches_for(first.id) == [] and len(node.store.dispatches_for(second.id)) == 1


def test_a_study_waiting_for_selection_is_decided_after_a_restart(stage, study):
    node = stage()
    node.receive(study.soft + study.lung + [study.dose_sr])  # spooled; the node dies before the sweep
    restarted = Completeness(node.settings, node.store, node.spool)
    restarted.resume_undecided()
    time.sleep(0.06)
    restarted.sweep()
    decided = node.decisions()
    assert decided[study.series_uid("lung")][0] == "queued"
    assert decided[study.series_uid("soft")][0] == "not selected"
    assert decided[study.series_uid("dose_sr")][:2] == ("not processed", "not processed: X-Ray Radiation Dose SR")
    assert len(node.store.list_jobs()) == 1


def test_dropped_instances_leave_nothing_but_their_decision(stage, study):
    node = stage(not_processed="drop")
    node.receive([study.dose_sr, study.presentation_state], kept=False)
    node.sweep()
    decided = node.decisions()
    assert decided[study.series_uid("dose_sr")][:2] == (
        "not processed",
        "not processed: X-Ray Radiation Dose SR (1 dropped after acknowledgement)",
    )
    assert node.spool.series_dirs() == [] and node.store.list_jobs() == []


def test_a_lossy_series_is_refused_by_policy_with_the_reason(stage, study, tmp_path):
    lossy = []
    for path in study.lung:
        ds = pydicom.dcmread(path)
        ds.LossyImageCompression, ds.LossyImageCompressionMethod, ds.LossyImageCompressionRatio = "01", "ISO_10918_1", 8
        lossy.append(tmp_path / path.name)
        ds.save_as(lossy[-1])
    node = stage(lossy="refuse")
    node.receive(lossy)
    node.sweep()
    outcome, reason, _ = node.decisions()[study.series_uid("lung")]
    assert outcome == "ineligible"
    assert reason == (
        "lossy-compressed source (LossyImageCompression 01 (ISO_10918_1, ratio 8), 24 of 24 images)"
        ' and series.lossy = "refuse"'
    )
    flagged = stage()  # the default, "flag": processed
    flagged.receive(lossy)
    flagged.sweep()
    assert flagged.decisions()[study.series_uid("lung")][0] == "queued"


def test_decide_keeps_working_on_one_series(stage, study):
    """`Completeness.decide` (one series, as tests and tools call it) goes through the same path."""
    node = stage()
    spool_files(node.spool, study.lung)
    node.completeness.decide(study.study_uid, study.series_uid("lung"), "SCANNER")
    assert node.decisions()[study.series_uid("lung")][:2] == (
        "queued",
        f"selected: lung kernel {LUNG_KERNEL}, 6 mm, 24 slices; the study's only candidate",
    )
