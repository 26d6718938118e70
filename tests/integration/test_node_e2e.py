"""The node end to end against real peers: dcmtk as the scanner, Orthanc as the PACS."""

from __future__ import annotations

import io
import json
import subprocess

import pydicom
import pytest

from dicom_node.admin.demo import write_demo_series
from inference.quantify import quantify
from inference.synthetic import LesionSpec, generate_phantom, write_series
from tests.integration.peers import LIDC_0002, storescu, tool_env, wait_until
from tests.validators import needs_validators, validation_errors

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SECONDARY_CAPTURE_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def results_in_pacs(orthanc, timeout: float = 300):
    """Wait until Orthanc holds a SEG and an SR; return them as pydicom datasets."""

    def found():
        segs, srs = orthanc.instances_by_modality("SEG"), orthanc.instances_by_modality("SR")
        return (segs, srs) if segs and srs else None

    segs, srs = wait_until(found, timeout, interval=1, what="SEG and SR in Orthanc")
    return (
        [pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{i}/file"))) for i in segs],
        [pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{i}/file"))) for i in srs],
    )


def sr_measurements(sr) -> dict[str, float]:
    """Volumes and extents by ROI/measurement name, read generically from the SR content tree."""
    values: dict[str, float] = {}

    def walk(items, context):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "TEXT" and name == "Tracking Identifier":
                context = item.TextValue
            if item.ValueType == "NUM":
                unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
                values[f"{context}|{name}|{unit}"] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence, context)

    walk(sr.ContentSequence, "")
    return values


def wait_job_state(node, state: str, timeout: float = 300, count: int = 1):
    return wait_until(
        lambda: (lambda js: js if sum(j["state"] == state for j in js) >= count else None)(node.jobs()),
        timeout,
        interval=1,
        what=f"{count} job(s) {state}",
    )


def test_echoscu_verifies_the_node(make_node):
    node = make_node(None).start()
    result = subprocess.run(
        ["echoscu", "-aec", "LDCTNODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=tool_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@needs_validators
@pytest.mark.skipif(not LIDC_0002.exists(), reason="LIDC-IDRI-0002 not present in ../shared/data")
def test_lidc_series_to_orthanc_seg_and_sr(orthanc, make_node, tmp_path):
    """storescu sends LIDC-IDRI-0002 (261 slices); SEG + SR + key images arrive in Orthanc, consistent,
    and dciodvfy and PixelMed accept each of them as stored there.

    Runs the default engine (the CNN with its shipped weights), as a department would.
    """
    node = make_node(orthanc, engine="cnn").start()
    sent = storescu(node.port, LIDC_0002)
    assert sent.returncode == 0, sent.stderr
    segs, srs = results_in_pacs(orthanc, timeout=900)
    assert len(segs) == 1 and len(srs) == 1
    seg, sr = segs[0], srs[0]
    source_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in LIDC_0002.iterdir()}
    referenced = {
        ref.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for ref in series.ReferencedInstanceSequence
    }
    assert referenced == source_uids and len(source_uids) == 261
    key_images = wait_until(
        lambda: [
            i
            for i in orthanc.get("/instances")
            if orthanc.get(f"/instances/{i}/simplified-tags").get("SOPClassUID") == SECONDARY_CAPTURE_CLASS
        ],
        60,
        what="key images in Orthanc",
    )
    stored = [tmp_path / "seg.dcm", tmp_path / "sr.dcm"]
    seg.save_as(stored[0])
    sr.save_as(stored[1])
    for number, instance in enumerate(key_images):
        stored.append(tmp_path / f"key_image_{number}.dcm")
        stored[-1].write_bytes(orthanc.get_bytes(f"/instances/{instance}/file"))
    assert validation_errors(stored) == []
    # the same folder analysed offline gives the same volumes
    offline = node.cli("segment", str(LIDC_0002), "--out", str(tmp_path / "offline"), "--json")
    expected = json.loads(offline.stdout)["quantification"]
    measured = sr_measurements(sr)
    volumes = {k: v for k, v in measured.items() if k.endswith("|cm3")}
    assert volumes, measured
    for name, key in (("ground", "ggo_cm3"), ("consolidation", "consolidation_cm3")):
        value = next(v for k, v in volumes.items() if name in k.lower())
        assert value == pytest.approx(expected[key], abs=0.05)
    job = node.jobs()[0]
    assert job["state"] == "done" and job["dispatches"][0]["state"] == "sent"


def test_synthetic_lesion_volumes_within_tolerance(orthanc, make_node, tmp_path):
    """A synthetic series with known lesions: the SR's volumes are near the truth.

    Tolerance: lung within 10 %, lesion (GGO + consolidation) within 30 % of the truth; the
    threshold engine measures density bands, so partial-volume borders move voxels between
    GGO and consolidation, which is why the lesion total is the tighter check.
    """
    phantom = generate_phantom(
        shape=(48, 192, 192),
        spacing=(5.0, 1.8, 1.8),
        seed=3,
        lesions=[LesionSpec("ggo", volume_ml=150.0), LesionSpec("consolidation", volume_ml=60.0)],
    )
    write_series(phantom, tmp_path / "series")
    truth = quantify(phantom.labels, phantom.voxel_volume_ml)
    node = make_node(orthanc, engine="threshold").start()
    assert storescu(node.port, tmp_path / "series").returncode == 0
    _, srs = results_in_pacs(orthanc)
    summary = node.jobs()[0]["summary"]["quantification"]
    assert summary["lung_cm3"] == pytest.approx(truth.lung_cm3, rel=0.10)
    assert summary["lesion_cm3"] == pytest.approx(truth.lesion_cm3, rel=0.30)
    assert any("cm3" in k for k in sr_measurements(srs[0]))


def test_restart_between_receipt_and_processing_sends_once(orthanc, make_node, tmp_path):
    """Killed (SIGKILL) after the images are stored and before the series is complete."""
    write_demo_series(tmp_path / "series")
    node = make_node(orthanc, engine="threshold", idle_seconds=8).start()
    assert storescu(node.port, tmp_path / "series").returncode == 0
    node.kill()
    assert node.jobs() == []  # nothing was decided yet: the series was still "receiving"
    node.start()
    segs, srs = results_in_pacs(orthanc, timeout=300)
    wait_job_state(node, "done")
    wait_until(lambda: node.jobs()[0]["dispatches"][0]["state"] == "sent", 60, what="dispatch sent")
    assert len(segs) == 1 and len(srs) == 1
    node.stop()
    node.start()  # a second restart must not process or send again
    import time

    time.sleep(5)
    assert len(node.jobs()) == 1
    assert len(orthanc.instances_by_modality("SEG")) == 1


def test_pacs_down_then_up_results_arrive_after_retry(orthanc, make_node, tmp_path):
    write_demo_series(tmp_path / "series")
    orthanc.stop()
    node = make_node(orthanc, engine="threshold").start()
    assert storescu(node.port, tmp_path / "series").returncode == 0
    wait_job_state(node, "done")
    wait_until(lambda: node.jobs()[0]["dispatches"][0]["attempts"] >= 2, 60, what="failed dispatch attempts")
    assert node.jobs()[0]["dispatches"][0]["state"] in ("pending", "sending")
    assert node.jobs()[0]["dispatches"][0]["last_error"]
    orthanc.start()
    segs, srs = results_in_pacs(orthanc, timeout=120)
    assert len(segs) == 1 and len(srs) == 1


def test_bad_inputs_get_clear_reasons_and_node_keeps_serving(orthanc, make_node, tmp_path):
    node = make_node(orthanc, engine="threshold").start()
    # 1. a non-CT instance: stored, acknowledged, recorded as not processed; an instance of a
    #    SOP class the node does not know: refused at association (no presentation context)
    write_demo_series(tmp_path / "ct")
    mr = pydicom.dcmread(sorted((tmp_path / "ct").iterdir())[0])
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR
    mr.Modality = "MR"
    mr.SeriesInstanceUID = pydicom.uid.generate_uid()
    mr.save_as(tmp_path / "mr.dcm")
    assert storescu(node.port, [tmp_path / "mr.dcm"]).returncode == 0
    decision = wait_until(
        lambda: next((s for s in node.status()["recent_series"] if s["series_uid"] == mr.SeriesInstanceUID), None),
        60,
        what="MR series decision",
    )
    assert (decision["outcome"], decision["reason"]) == ("not processed", "not processed: MR Image")
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.7433.99.2"  # private
    mr.save_as(tmp_path / "private.dcm")
    refused = storescu(node.port, [tmp_path / "private.dcm"], check=False)
    assert refused.returncode != 0
    assert "no presentation context" in (refused.stderr + refused.stdout).lower()
    # 2. a corrupt file: storescu cannot even parse it; a truncated dataset sent raw by the
    #    node's own SCU is refused with a failure status
    (tmp_path / "corrupt.dcm").write_bytes(b"DICM" + b"\x00" * 100)
    corrupt = storescu(node.port, [tmp_path / "corrupt.dcm"], check=False)
    assert corrupt.returncode != 0
    # 3. a series with a missing slice: stored, then recorded as inconsistent with the reason
    files = sorted((tmp_path / "ct").iterdir())
    del files[len(files) // 2]
    assert storescu(node.port, files).returncode == 0
    decision = wait_until(
        lambda: next((s for s in node.status()["recent_series"] if s["outcome"] != "not processed"), None),
        60,
        what="series decision",
    )
    assert decision["outcome"] == "inconsistent"
    assert "spacing" in decision["reason"] and "missing" in decision["reason"]
    # the node still serves: the complete series is processed
    write_demo_series(tmp_path / "good")
    assert storescu(node.port, tmp_path / "good").returncode == 0
    wait_job_state(node, "done")
    results_in_pacs(orthanc)


def test_identical_resend_ignored_and_late_images_supersede(orthanc, make_node, tmp_path):
    write_demo_series(tmp_path / "series")
    files = sorted((tmp_path / "series").iterdir())
    node = make_node(orthanc, engine="threshold").start()
    assert storescu(node.port, files[:-2]).returncode == 0
    wait_job_state(node, "done")
    assert storescu(node.port, files[:-2]).returncode == 0  # identical re-send
    wait_until(
        lambda: any(s["outcome"] == "identical re-send" for s in node.status()["recent_series"]),
        60,
        what="re-send decision",
    )
    assert len(node.jobs()) == 1
    assert storescu(node.port, files[-2:]).returncode == 0  # late images
    wait_job_state(node, "done", count=2)
    jobs = sorted(node.jobs(), key=lambda j: j["id"])
    assert jobs[0]["superseded_by"] == jobs[1]["id"]
    superseded = [uids[1] for uids in jobs[1]["summary"]["supersedes"]]
    assert jobs[0]["summary"]["sr"][1] in superseded and jobs[0]["summary"]["seg"][1] in superseded
    wait_until(lambda: len(orthanc.instances_by_modality("SR")) == 2, 120, what="second SR in Orthanc")
