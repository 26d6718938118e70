"""Conformance against independent DICOM implementations, all real processes.

Inbound: senders from Debian packages (dcmtk in several modes, GDCM, CTN, PixelMed, Odil,
Orthanc forwarding) and pynetdicom each deliver their own small CT series (8 slices of 64 x 64,
fresh UIDs) to one node; for every SOP Instance UID the pixels the node stored, decoded by
pydicom, equal the pixels sent, and where the sender was told to use a transfer syntax on the
wire the node kept it (stored as received). Outbound: one job's SEG, SR and key images reach
Orthanc, dcmtk's storescp and a pynetdicom SCP, each with the node's own dataset bytes.
Bad input: what the node cannot store is refused at association or by C-STORE status, with a
log line naming it, and leaves nothing in the spool.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    XRayRadiationDoseSRStorage,
)

from inference.synthetic import LesionSpec, generate_phantom
from inference.synthetic import write_series as write_phantom
from reporting.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.integration.peers import NodeProcess, Orthanc, free_port, storescu, tool_env, wait_until
from tests.reporting_fixtures import make_ct_series, write_series
from tests.study_fixtures import write_mixed_study

NODE_AE = "LDCTNODE"
SLICES = 8
PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.7433.99.1"  # no storage class the node knows
PRIVATE_TRANSFER_SYNTAX = "1.3.46.670589.33.1.4.1"  # a vendor's private compression


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node for every sender; 8-slice series stay in the spool ("too few slices")."""
    process = NodeProcess(tmp_path_factory.mktemp("conformance") / "node", [], engine="threshold")
    process.start()
    yield process
    process.stop()


# ---- what was sent, what was stored ----------------------------------------------------------
def encoded(files: list[Path], folder: Path, command: list[str]) -> list[Path]:
    """Each file re-encoded by a dcmtk converter (`command` + input + output)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        subprocess.run([*command, str(path), str(folder / path.name)], check=True, capture_output=True)
    return sorted(folder.iterdir())


def stored_files(node: NodeProcess, sent: list[Path], timeout: float = 60) -> dict[str, Path]:
    """SOP Instance UID -> the node's spool file, once every sent instance is there."""
    wanted = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sent}
    spool = node.data_dir / "spool"

    def all_there():
        found = {p.stem: p for uid in wanted for p in spool.rglob(f"{uid}.dcm")}
        return found if set(found) == wanted else None

    return wait_until(all_there, timeout, interval=0.3, what=f"{len(wanted)} instances in the spool")


def assert_stored_as_sent(node: NodeProcess, sent: list[Path], wire_syntax: str | None) -> None:
    stored = stored_files(node, sent)
    for path in sent:
        original = pydicom.dcmread(path)
        kept = pydicom.dcmread(stored[str(original.SOPInstanceUID)])
        if "PixelData" in original:
            assert np.array_equal(kept.pixel_array, original.pixel_array), path.name
        else:  # an SR, a presentation state: every element as sent
            assert [(e.tag, e.value) for e in kept] == [(e.tag, e.value) for e in original], path.name
        assert kept.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID  # the node wrote the file
        if wire_syntax is not None:
            assert kept.file_meta.TransferSyntaxUID == wire_syntax, path.name


# ---- senders ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sender:
    """A sending implementation: the command that sends `files` to the node."""

    tool: str  # what must be installed
    command: Callable[[int, list[Path]], list[str]]
    encode: list[str] | None = None  # dcmtk converter applied to the series first
    wire_syntax: str | None = None  # the transfer syntax it is told to use on the wire
    must_exit_0: bool = True
    stdin_file_list: bool = False


def _storescu(*options: str) -> Callable[[int, list[Path]], list[str]]:
    return lambda port, files: [
        "storescu",
        *options,
        "-aet",
        "STORESCU",
        "-aec",
        NODE_AE,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]


SENDERS = {
    "storescu": Sender("storescu", _storescu()),
    "storescu small PDUs": Sender("storescu", _storescu("--max-send-pdu", "4096", "--max-pdu", "4096")),
    "storescu implicit VR only": Sender("storescu", _storescu("-xi"), wire_syntax=ImplicitVRLittleEndian),
    "storescu user identity": Sender("storescu", _storescu("--user", "radiographer", "--password", "secret")),
    "storescu JPEG-LS": Sender("storescu", _storescu("-xt"), encode=["dcmcjpls"], wire_syntax=JPEGLSLossless),
    "storescu JPEG lossless": Sender(
        "storescu", _storescu("-xs"), encode=["dcmcjpeg", "+e1"], wire_syntax=JPEGLosslessSV1
    ),
    "storescu deflated": Sender(
        "storescu", _storescu("-xd"), encode=["dcmconv", "+td"], wire_syntax=DeflatedExplicitVRLittleEndian
    ),
    "storescu big-endian file": Sender(
        "storescu", _storescu("-xb"), encode=["dcmconv", "+tb"], wire_syntax=ExplicitVRBigEndian
    ),
    "dcmsend": Sender(
        "dcmsend",
        lambda port, files: ["dcmsend", "-aet", "DCMSEND", "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)],
    ),
    "pynetdicom": Sender(
        sys.executable,
        lambda port, files: [
            sys.executable,
            "-m",
            "pynetdicom",
            "storescu",
            "-aet",
            "PYNETDICOM",
            "-aec",
            NODE_AE,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
    ),
    # gdcmscu 3.0.21 throws after its last C-STORE (against dcmtk's storescp too): judged by what
    # the node stored
    "gdcmscu": Sender(
        "gdcmscu",
        lambda port, files: [
            "gdcmscu",
            "--store",
            "--aetitle",
            "GDCMSCU",
            "--call",
            NODE_AE,
            "-i",
            str(files[0].parent),
            "-r",
            "127.0.0.1",
            str(port),
        ],
        must_exit_0=False,
    ),
    "CTN send_image": Sender(
        "send_image",
        lambda port, files: [
            "send_image",
            "-q",
            "-r",
            "-a",
            "CTNSEND",
            "-c",
            NODE_AE,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
    ),
    "PixelMed StorageSOPClassSCU": Sender(
        "java",
        lambda port, files: [
            "java",
            "-cp",
            str(PIXELMED_JAR),
            "com.pixelmed.network.StorageSOPClassSCU",
            "127.0.0.1",
            str(port),
            NODE_AE,
            "PIXELMED",
            "-",
        ],
        stdin_file_list=True,
    ),
    "odil store": Sender(
        "odil", lambda port, files: ["odil", "store", "127.0.0.1", str(port), "ODIL", NODE_AE, *map(str, files)]
    ),
}


@pytest.mark.parametrize("name", SENDERS)
def test_sender_delivers_a_series_the_node_stores_as_sent(node, tmp_path, name):
    sender = SENDERS[name]
    needed = [sender.tool, *(sender.encode or [])[:1]]
    if any(shutil.which(tool) is None for tool in needed) or (sender.tool == "java" and not PIXELMED_JAR.exists()):
        pytest.skip(f"{name}: not installed ({', '.join(needed)})")
    files = write_series(make_ct_series(SLICES, 64), tmp_path / "series")
    if sender.encode:
        files = encoded(files, tmp_path / "encoded", sender.encode)
    stdin = "".join(f"{f}\n" for f in files) if sender.stdin_file_list else None
    sent = subprocess.run(
        sender.command(node.port, files),
        input=stdin,
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=300,
        check=False,
    )
    if sender.must_exit_0:
        assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]
    assert_stored_as_sent(node, files, sender.wire_syntax)


def test_orthanc_forwarding_a_series_delivers_it_as_sent(node, tmp_path):
    """Orthanc as the PACS that routes: upload by REST, then POST /modalities/<node>/store."""
    files = write_series(make_ct_series(SLICES, 64), tmp_path / "series")
    pacs = Orthanc(tmp_path / "orthanc", modalities={"node": [NODE_AE, "127.0.0.1", node.port]}).start()
    try:
        ids = pacs.upload(files)
        job = pacs.post("/modalities/node/store", json.dumps({"Resources": ids, "Synchronous": True}).encode())
        assert job.get("FailedInstancesCount", 0) == 0, job
    finally:
        pacs.stop()
    assert_stored_as_sent(node, files, wire_syntax=None)


def test_dcmtk_sees_the_nodes_implementation_identity(node):
    """storescu -d prints what the node's A-ASSOCIATE-AC announced."""
    answer = subprocess.run(
        ["echoscu", "-d", "-aec", NODE_AE, "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    assert f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}" in answer.stderr
    assert f"Their Implementation Version Name: {IMPLEMENTATION_VERSION_NAME}" in answer.stderr


def test_user_identity_with_positive_response_requested_is_not_confirmed(node, tmp_path):
    """The node authenticates no one, so it sends no User Identity response (PS3.7 D.3.3.7
    lets an acceptor ignore the item); dcmtk then gives up by its own choice."""
    files = write_series(make_ct_series(1, 32), tmp_path / "one")
    sent = subprocess.run(
        _storescu("--user", "radiographer", "--password", "secret", "--pos-response")(node.port, files),
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=60,
        check=False,
    )
    assert sent.returncode != 0 and "Positive response requested but none received" in sent.stderr


# ---- bad input -------------------------------------------------------------------------------
def node_log(node: NodeProcess) -> list[dict]:
    return [json.loads(line) for line in node.log_path.read_text().splitlines() if line.startswith("{")]


def logged(node: NodeProcess, event: str, **fields: str) -> dict:
    """The node's first log line of `event` with these field values, once it is written."""
    return wait_until(
        lambda: next(
            (e for e in node_log(node) if e["event"] == event and all(e.get(k) == v for k, v in fields.items())),
            None,
        ),
        10,
        what=f"log line {event!r}",
    )


def spool_snapshot(node: NodeProcess) -> tuple[set[Path], list[Path]]:
    """Stored instances, and temporary files holding any byte (a half-written instance)."""
    spool = node.data_dir / "spool"
    stored = {p for p in spool.rglob("*.dcm") if ".incoming" not in p.parts}
    partial = [p for p in (spool / ".incoming").iterdir() if p.stat().st_size]
    return stored, partial


def test_only_unstorable_contexts_get_refused_by_name(node):
    """A private SOP class, and CT only in a private transfer syntax: both contexts refused
    (results 3 and 4), one warning names them, nothing reaches the spool."""
    before, _ = spool_snapshot(node)
    ae = AE(ae_title="ODDSENDER")
    ae.add_requested_context(PRIVATE_SOP_CLASS, [ExplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, [PRIVATE_TRANSFER_SYNTAX])
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert not assoc.is_established  # pynetdicom aborts an association without any context
    assert sorted((c.abstract_syntax, c.result) for c in assoc.rejected_contexts) == [
        (PRIVATE_SOP_CLASS, 0x03),
        (CTImageStorage, 0x04),
    ]
    line = logged(node, "presentation contexts refused", calling_ae="ODDSENDER")
    assert line["level"] == "warning" and line["accepted"] == 0
    assert f"CT Image Storage: transfer syntax not supported ({PRIVATE_TRANSFER_SYNTAX})" in line["refused"]
    assert f"{PRIVATE_SOP_CLASS}: SOP class not supported" in line["refused"]
    assert spool_snapshot(node) == (before, [])


def test_refused_c_store_says_why_and_leaves_nothing(node, tmp_path, routed_study):
    """Every storage class is negotiated now, so more reaches the per-instance checks: a cut
    dose SR (no pixel data to betray it) gets 0xC000 with a comment, a log line with the
    instance UID, and no file, whole or partial."""
    payload = routed_study.dose_sr.read_bytes()
    ds = pydicom.dcmread(routed_study.dose_sr)
    (tmp_path / "cut.dcm").write_bytes(payload[: len(payload) - 20])
    before, _ = spool_snapshot(node)
    ae = AE(ae_title="CUTTER")
    ae.add_requested_context(XRayRadiationDoseSRStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        status = assoc.send_c_store(tmp_path / "cut.dcm")  # the bytes as they are, not re-encoded
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    assert status.Status == 0xC000 and "Truncated dataset" in status.ErrorComment
    line = logged(node, "instance refused", sop_instance_uid=ds.SOPInstanceUID)
    assert line["calling_ae"] == "CUTTER" and line["status"] == "0xC000"
    assert spool_snapshot(node) == (before, [])


def test_enhanced_ct_is_stored_and_recorded_as_not_processed(node, tmp_path):
    """Refused per instance before, it made a forwarding PACS fail the whole study."""
    ds = pydicom.dcmread(write_series(make_ct_series(1, 32), tmp_path / "one")[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ae = AE(ae_title="ENHANCED")
    ae.add_requested_context(EnhancedCTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    decision = wait_decision(node, ds.SeriesInstanceUID)
    assert decision["outcome"] == "not processed"
    assert decision["reason"] == (
        "not processed: Enhanced CT Image (multi-frame; send CT Image Storage to have it analysed)"
    )


# ---- a whole study ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routed_study(tmp_path_factory):
    return write_mixed_study(tmp_path_factory.mktemp("study"), lung_slices=24, size=96)


def wait_decision(node: NodeProcess, series_uid: str, timeout: float = 60) -> dict:
    return wait_until(
        lambda: next((s for s in node.status()["recent_series"] if s["series_uid"] == series_uid), None),
        timeout,
        what=f"the decision on series {series_uid}",
    )


def test_storescu_scan_directory_of_a_whole_study_exits_0(node, routed_study):
    """`storescu +sd +r` proposes a context for every SOP class it finds: before the node
    accepted every storage class it failed on the dose SR; now all is stored, the lung series
    is processed and every other series recorded with its reason (status and audit)."""
    folder = routed_study.lung[0].parent.parent
    sent = subprocess.run(
        ["storescu", "+sd", "+r", "-aet", "MODALITY", "-aec", NODE_AE, "127.0.0.1", str(node.port), str(folder)],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=300,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert_stored_as_sent(node, routed_study.all_files, wire_syntax=None)
    expected = {
        "lung": "queued",
        "soft": "ineligible",  # 12 slices: fewer than min_slices
        "localizer": "not processed",
        "dose_sr": "not processed",
        "dose_screen": "not processed",
        "presentation_state": "not processed",
    }
    decided = {kind: wait_decision(node, routed_study.series_uid(kind)) for kind in expected}
    assert {kind: d["outcome"] for kind, d in decided.items()} == expected
    assert decided["dose_sr"]["reason"] == "not processed: X-Ray Radiation Dose SR"
    assert decided["dose_screen"]["reason"] == "not processed: Secondary Capture Image"
    audit = json.loads(node.cli("audit", "--series", routed_study.series_uid("dose_sr"), "--json").stdout)
    assert [(e["kind"], e["detail"].get("reason")) for e in audit] == [
        ("series_decided", "not processed: X-Ray Radiation Dose SR"),
        ("receiving", None),
    ]
    assert "not processed: X-Ray Radiation Dose SR" in node.cli("status", env={"COLUMNS": "300"}).stdout


def test_lossy_compressed_series_is_processed_and_flagged(node, tmp_path):
    """JPEG 2000 at ratio 10 on the wire: stored as received, processed (series.lossy = "flag",
    the default), and the SR and `show` say the source was lossy-compressed."""
    files = write_phantom(generate_phantom(shape=(24, 96, 96), spacing=(10.0, 3.6, 3.6), seed=9), tmp_path / "j2k")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000, ds.pixel_array, j2k_cr=[10], generate_instance_uid=False)
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_15444_1"
        ds.LossyImageCompressionRatio = 10
        ds.save_as(path)
    sent = subprocess.run(
        _storescu("-xw")(node.port, files), capture_output=True, text=True, env=tool_env(), check=False
    )
    assert sent.returncode == 0, sent.stderr[-2000:]  # -xw: propose JPEG 2000 (lossy)
    assert_stored_as_sent(node, files, wire_syntax=JPEG2000)
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    job = wait_until(
        lambda: next((j for j in node.jobs() if j["series_uid"] == series_uid and j["state"] == "done"), None),
        240,
        interval=1,
        what="the lossy series processed",
    )
    flagged = "LossyImageCompression 01 (ISO_15444_1, ratio 10), 24 of 24 images"
    assert job["summary"]["source_lossy"] == flagged
    shown = node.cli("show", str(job["id"]), env={"COLUMNS": "300"}).stdout
    assert f"source: lossy-compressed ({flagged}); said in the SR" in shown
    sr = pydicom.dcmread(Path(job["result_dir"]) / "sr.dcm")
    said = [
        item.TextValue
        for container in sr.ContentSequence
        for item in container.get("ContentSequence", [])
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Source images lossy compressed"
    ]
    assert len(said) == 1 and flagged in said[0]


# ---- outbound --------------------------------------------------------------------------------
def dataset_bytes(part10: bytes) -> bytes:
    """The dataset of a Part 10 file: everything after the File Meta group."""
    assert part10[128:132] == b"DICM"
    group_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL, Explicit VR LE
    return part10[144 + group_length :]


class PynetdicomStoreSCP:
    """pynetdicom's Storage SCP in this process: keeps each dataset's bytes as received."""

    def __init__(self) -> None:
        self.received: dict[str, bytes] = {}
        self.requestor_identity: tuple[str, str] | None = None
        self.ae = AE(ae_title="PYNETSCP")
        for sop_class in (SegmentationStorage, Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.port = free_port()
        self.server = None

    def on_store(self, event):
        requestor = event.assoc.requestor
        self.requestor_identity = (requestor.implementation_class_uid, requestor.implementation_version_name)
        self.received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    def __enter__(self):
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


@pytest.mark.slow
def test_results_reach_orthanc_storescp_and_pynetdicom_byte_for_byte(tmp_path):
    """One job, three destinations: each receives every SEG/SR/key image with the node's dataset bytes."""
    pacs = Orthanc(tmp_path / "orthanc").start()
    storescp_dir, storescp_port = tmp_path / "storescp", free_port()
    storescp_dir.mkdir()
    with open(tmp_path / "storescp.log", "w") as storescp_log:  # the process keeps its own descriptor
        storescp = subprocess.Popen(
            ["storescp", "-d", "+B", "-aet", "STORESCP", "-od", str(storescp_dir), str(storescp_port)],
            stdout=storescp_log,
            stderr=subprocess.STDOUT,
            env=tool_env(),
        )
    threading.Event().wait(0.5)
    node = None
    try:
        with PynetdicomStoreSCP() as scp:
            node = NodeProcess(
                tmp_path / "node",
                [
                    {"name": "orthanc", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port},
                    {"name": "storescp", "ae_title": "STORESCP", "host": "127.0.0.1", "port": storescp_port},
                    {"name": "pynetdicom", "ae_title": "PYNETSCP", "host": "127.0.0.1", "port": scp.port},
                ],
                engine="threshold",
            ).start()
            phantom = generate_phantom(
                shape=(24, 96, 96), spacing=(10.0, 3.6, 3.6), seed=7, lesions=[LesionSpec("ggo", volume_ml=80.0)]
            )
            assert storescu(node.port, write_phantom(phantom, tmp_path / "series")).returncode == 0
            job = wait_until(
                lambda: next(
                    (
                        j
                        for j in node.jobs()
                        if j["state"] == "done"
                        and len(j["dispatches"]) == 3
                        and all(d["state"] == "sent" for d in j["dispatches"])
                    ),
                    None,
                ),
                240,
                interval=1,
                what="the job sent to three destinations",
            )
            outputs = [Path(job["result_dir"]) / name for name in job["summary"]["outputs"]]
            assert len(outputs) >= 3  # SEG, SR and key images
            sent = {
                str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p.read_bytes())
                for p in outputs
            }
            assert scp.received == sent
            assert scp.requestor_identity == (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
        at_storescp = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p.read_bytes())
            for p in storescp_dir.iterdir()
        }
        assert at_storescp == sent
        storescp_saw = (tmp_path / "storescp.log").read_text()
        assert f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}" in storescp_saw
        in_orthanc = {}
        for instance in pacs.get("/instances"):
            data = pacs.get_bytes(f"/instances/{instance}/file")
            in_orthanc[
                str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True).SOPInstanceUID)
            ] = dataset_bytes(data)
        assert in_orthanc == sent
    finally:
        if node is not None:
            node.stop()
        storescp.terminate()
        storescp.wait(10)
        pacs.stop()
