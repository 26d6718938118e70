"""Covariates that arrive after the report: `clinical import` then `report JOB --reissue`."""

from __future__ import annotations

from dicom_node.admin.demo import DEMO_ACCESSION, write_demo_series
from tests.integration.peers import storescu, wait_until
from tests.integration.test_node_e2e import results_in_pacs, wait_job_state


def risk_texts(sr) -> list[str]:
    found = []

    def walk(items):
        for item in items:
            if item.ValueType == "CODE":
                found.append(item.ConceptCodeSequence[0].CodeMeaning)
            if item.ValueType == "TEXT":
                found.append(item.TextValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return found


def test_reissue_sends_an_amended_sr_with_the_risk(orthanc, make_node, tmp_path):
    write_demo_series(tmp_path / "series")
    node = make_node(orthanc, engine="threshold").start()
    assert storescu(node.port, tmp_path / "series").returncode == 0
    _, [first_sr] = results_in_pacs(orthanc)
    job = wait_job_state(node, "done")[0]
    assert job["summary"]["risk"]["computed"] is False
    assert "hypertension" in job["summary"]["risk"]["missing"]

    csv = tmp_path / "clinical.csv"
    csv.write_text(
        "accession_number,hypertension,diabetes,cancer,respiratory_disease,cardiac_disease,obesity,days_since_onset\n"
        f"{DEMO_ACCESSION},1,0,0,0,1,0,4\n"
    )
    imported = node.cli("clinical", "import", str(csv))
    assert "1 record" in imported.stdout and DEMO_ACCESSION not in imported.stdout
    reissued = node.cli("report", str(job["id"]), "--reissue")
    assert "amended SR" in reissued.stdout

    wait_until(lambda: len(orthanc.instances_by_modality("SR")) == 2, 120, what="the amended SR in Orthanc")
    import io

    import pydicom

    srs = [
        pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{i}/file")))
        for i in orthanc.instances_by_modality("SR")
    ]
    amended = next(s for s in srs if s.SOPInstanceUID != first_sr.SOPInstanceUID)
    predecessors = [
        ref.ReferencedSOPInstanceUID
        for study in amended.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]
    assert predecessors == [first_sr.SOPInstanceUID]
    jobs = sorted(node.jobs(), key=lambda j: j["id"])
    assert jobs[0]["superseded_by"] == jobs[1]["id"]
    assert jobs[1]["summary"]["risk"]["computed"] is True
    assert len(orthanc.instances_by_modality("SEG")) == 1  # the segmentation is not sent again
    failed = node.cli("report", str(jobs[0]["id"]), "--reissue", check=False)
    assert failed.returncode == 1 and "superseded" in failed.stderr
