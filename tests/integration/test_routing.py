"""A whole study routed to the node by a PACS, the way sites run it: Orthanc 1.10 as the PACS.

The study holds what scanners send (tests/study_fixtures.py): CT in two reconstructions, a
localizer, an X-Ray Radiation Dose SR, a dose screen and a presentation state. Orthanc forwards
it as a whole, by a REST store job and by a Lua script on OnStableStudy (`LuaScripts`,
`StableAge`); the node takes every instance, processes the lung-kernel series (per-study
selection, the default), records why it left each other series alone, and its SEG and SR come
back into the same Orthanc study.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.peers import NodeProcess, Orthanc, storescu, wait_until
from tests.study_fixtures import MixedStudy, write_mixed_study

NODE_AE = "LDCTNODE"

# What a site puts in Orthanc's LuaScripts: every stable study goes to the node, except what the
# node itself sent (its results come back into the study and make it stable again) and what was
# routed already.
AUTOROUTING_LUA = """
routed = {}
function OnStableStudy(studyId, tags, metadata)
  local resources = {}
  for _, instance in pairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))) do
    local origin = ParseJson(RestApiGet('/instances/' .. instance['ID'] .. '/metadata?expand'))['RemoteAET']
    if origin ~= '%(node_ae)s' and not routed[instance['ID']] then
      table.insert(resources, instance['ID'])
      routed[instance['ID']] = true
    end
  end
  if #resources > 0 then
    print('routing ' .. #resources .. ' instances of study ' .. studyId .. ' to the ldct-node')
    RestApiPost('/modalities/ldct/store', DumpJson({ Resources = resources, Synchronous = false }))
  end
end
"""

EXPECTED = {  # what the node decides about each series of the study
    "lung": ("queued", "selected: lung kernel B60f, 6 mm, 40 slices; preferred to 1 other series of the study"),
    "soft": ("not selected", None),
    "localizer": ("not processed", "not processed: localizer (ImageType LOCALIZER)"),
    "dose_sr": ("not processed", "not processed: X-Ray Radiation Dose SR"),
    "dose_screen": ("not processed", "not processed: Secondary Capture Image"),
    "presentation_state": ("not processed", "not processed: Grayscale Softcopy Presentation State"),
}


class LuaOrthanc(Orthanc):
    """Orthanc with an auto-routing Lua script in its configuration."""

    def config(self) -> dict:
        script = self.workdir / "autorouting.lua"
        script.write_text(AUTOROUTING_LUA % {"node_ae": NODE_AE})
        return {**super().config(), "LuaScripts": [str(script)], "StableAge": 2}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> MixedStudy:
    return write_mixed_study(tmp_path_factory.mktemp("study"), lung_slices=40, size=96)


def pacs_and_node(tmp_path, pacs_class=Orthanc) -> tuple[Orthanc, NodeProcess]:
    """Orthanc knowing the node as modality "ldct", the node sending its results to Orthanc."""
    pacs = pacs_class(tmp_path / "orthanc")
    node = NodeProcess(
        tmp_path / "node",
        [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
        engine="threshold",
    )
    pacs.modalities = {"ldct": [NODE_AE, "127.0.0.1", node.port]}
    return pacs.start(), node.start()


def results_in_study(pacs: Orthanc, orthanc_study: str) -> dict[str, list[str]]:
    """The node's SEG, SR and key-image series in the Orthanc study, once the SEG and SR are there."""

    def found():
        series = {
            s["MainDicomTags"].get("SeriesDescription", ""): s["Instances"]
            for s in pacs.get(f"/studies/{orthanc_study}/series")
            if s["MainDicomTags"].get("SeriesNumber") in ("901", "902", "903")
        }
        return series if len(series) >= 2 else None

    return wait_until(found, 240, interval=1, what="the node's SEG and SR in the Orthanc study")


def assert_decided(node: NodeProcess, study: MixedStudy) -> None:
    """One decision per series of the study, with its reason; one job, on the lung series."""
    uids = {study.series_uid(kind): kind for kind in EXPECTED}
    decided = {
        uids[s["series_uid"]]: (s["outcome"], s["reason"])
        for s in node.status()["recent_series"]
        if s["series_uid"] in uids
    }
    assert decided.keys() == EXPECTED.keys()
    for kind, (outcome, reason) in EXPECTED.items():
        assert decided[kind][0] == outcome, kind
        assert reason is None or decided[kind][1] == reason, kind
    assert decided["soft"][1].startswith(f"not selected: series {study.series_uid('lung')} preferred")
    assert [job["series_uid"] for job in node.jobs()] == [study.series_uid("lung")]


def test_orthanc_store_job_of_a_whole_study(tmp_path, study):
    """POST /modalities/ldct/store of the study: the job succeeds for every instance (it failed
    as a whole while the node refused the dose SR's presentation context)."""
    pacs, node = pacs_and_node(tmp_path)
    try:
        ids = pacs.upload(study.all_files)
        orthanc_study = pacs.get(f"/instances/{ids[0]}/study")["ID"]
        store_job = {"Resources": [orthanc_study], "Synchronous": True}
        answer = pacs.post("/modalities/ldct/store", json.dumps(store_job).encode())
        assert (answer["InstancesCount"], answer["FailedInstancesCount"]) == (len(study.all_files), 0), answer
        results = results_in_study(pacs, orthanc_study)
        assert {"LDCT lung lesions report"} <= results.keys() and len(results) >= 2
        assert_decided(node, study)
    finally:
        node.stop()
        pacs.stop()


def test_orthanc_lua_autorouting_on_stable_study(tmp_path, study):
    """The scanner stores the study into Orthanc; its Lua OnStableStudy script routes it to the
    node; the results come back into the study, which becomes stable again without routing
    anything twice (the node decides each series once)."""
    pacs, node = pacs_and_node(tmp_path, LuaOrthanc)
    try:
        folder = study.lung[0].parent.parent
        assert storescu(pacs.dicom_port, folder, called_ae=pacs.aet, calling_ae="CT_SCANNER").returncode == 0
        orthanc_study = pacs.post("/tools/lookup", study.study_uid.encode())[0]["ID"]
        results = results_in_study(pacs, orthanc_study)
        assert "LDCT lung lesions report" in results
        wait_until(lambda: node.jobs()[0]["dispatches"][0]["state"] == "sent", 60, what="the results recorded as sent")
        wait_until(lambda: pacs.get(f"/studies/{orthanc_study}")["IsStable"], 30, what="the study stable again")
        time.sleep(4)  # a second routing, if any, would reach the node and be decided by now
        assert_decided(node, study)
        assert len([s for s in node.status()["recent_series"] if s["study_uid"] == study.study_uid]) == len(EXPECTED)
        routed = [line for line in (pacs.workdir / "orthanc.log").read_text().splitlines() if "routing " in line]
        assert len(routed) == 1 and f"routing {len(study.all_files)} instances" in routed[0]
    finally:
        node.stop()
        pacs.stop()
