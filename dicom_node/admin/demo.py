"""`ldct-node demo`: a synthetic series through a real node and back to a stand-in PACS.

Everything runs locally: a node on a free port with its embedded defaults (SQLite, bundled
weights), a small receiving AE playing the PACS, and the same C-STORE path a scanner uses.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer
from rich.console import Console

from config.settings import Settings
from dicom_node.dispatch.dimse import send_files
from dicom_node.node import Node
from dicom_node.queue.jobstore import DEAD, DONE, SENT
from dicom_node.results import ResultSummary
from inference.quantify import Quantification


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_inbox_pacs(inbox: Path, port: int) -> ThreadedAssociationServer:
    """A minimal storage SCP standing in for the PACS in the demo (not used by tests)."""
    inbox.mkdir(parents=True, exist_ok=True)

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(inbox / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000

    ae = AE(ae_title="DEMOPACS")
    ae.supported_contexts = AllStoragePresentationContexts + VerificationPresentationContexts
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if server is None:  # only a blocking server returns nothing
        raise RuntimeError("the demo PACS did not start")
    return server


DEMO_ACCESSION = "DEMO0001"
#: Clinical covariates of the synthetic demo patient, as `ldct-node clinical import` stores them.
DEMO_CLINICAL = {
    "accession_number": DEMO_ACCESSION,
    "hypertension": 1,
    "diabetes": 0,
    "cancer": 0,
    "respiratory_disease": 0,
    "cardiac_disease": 0,
    "obesity": 0,
    "days_since_onset": 5,
}


def write_demo_series(folder: Path) -> tuple[list[Path], Quantification]:
    """A synthetic low-dose chest CT with GGO and consolidation of known volume.

    Returns the files and the truth (volumes from the generator's own label map), so the demo
    can show measured against true volumes.
    """
    from inference.quantify import quantify
    from inference.synthetic import LesionSpec, generate_phantom, write_series

    phantom = generate_phantom(
        shape=(60, 256, 256),
        spacing=(5.0, 1.4, 1.4),
        seed=7,
        lesions=[
            LesionSpec("ggo", volume_ml=120.0),
            LesionSpec("ggo", volume_ml=60.0),
            LesionSpec("consolidation", volume_ml=40.0),
        ],
    )
    files = write_series(
        phantom,
        folder,
        series_description="LOW DOSE CHEST (synthetic demo)",
        accession_number=DEMO_ACCESSION,
        patient_age="067Y",
        patient_sex="M",
    )
    return files, quantify(phantom.labels, phantom.voxel_volume_ml)


DEMO_MARKER = ".ldct-demo"  # marks a folder the demo made: only such a folder is reset


def prepare_workdir(workdir: Path) -> None:
    """Start each run from an empty job store and PACS inbox (the sample series is kept).

    Otherwise a rerun re-sends the same instances, the node rightly ignores them as an identical
    re-send, and the demo would show the previous run's result (another engine's, even). Refuses
    a non-empty folder the demo did not make, so that it never deletes a real node's data.
    """
    made_by_demo = (workdir / DEMO_MARKER).exists() or (workdir / "sample-series-truth.json").exists()
    if workdir.exists() and any(workdir.iterdir()) and not made_by_demo:
        raise RuntimeError(f"{workdir} is not empty and was not made by the demo; choose another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / DEMO_MARKER).touch()
    for folder in ("data", "pacs-inbox"):
        shutil.rmtree(workdir / folder, ignore_errors=True)


def run_demo(
    workdir: Path,
    *,
    port: int = 0,
    engine: str | None = None,
    weights: str | None = None,
    console: Console | None = None,
    timeout: float = 600,
) -> tuple[ResultSummary, Quantification]:
    """Run the demo; returns what the node reported and the true volumes of the series.
    `weights`: the CNN weight set (`[inference] weights`), default the shipped default."""
    workdir = Path(workdir).resolve()
    prepare_workdir(workdir)
    series_dir = workdir / "sample-series"
    truth_file = workdir / "sample-series-truth.json"
    if not truth_file.exists():
        _say(console, "generating a synthetic low-dose chest CT series with known lesions ...")
        shutil.rmtree(series_dir, ignore_errors=True)
        _, truth = write_demo_series(series_dir)
        truth_file.write_text(json.dumps(truth.as_dict(), indent=2))
    pacs_port = free_port()
    node_port = port or free_port()
    settings = Settings.model_validate(
        {
            "node": {
                "ae_title": "LDCTNODE",
                "port": node_port,
                "bind_address": "127.0.0.1",
                "data_dir": str(workdir / "data"),
                "min_free_disk_mb": 50,
            },
            "series": {"idle_seconds": 2},
            "destinations": [{"name": "demo-pacs", "ae_title": "DEMOPACS", "host": "127.0.0.1", "port": pacs_port}],
            "inference": {"engine": engine or "cnn", "device": "auto", "weights": weights},
            "dispatch": {"first_retry_seconds": 2},
        }
    )
    pacs = start_inbox_pacs(workdir / "pacs-inbox", pacs_port)
    node = Node(settings)
    from reporting.clinical_records import ClinicalRecord

    record = ClinicalRecord.from_dict(DEMO_CLINICAL)
    node.store.put_clinical(record.key(), record.to_dict())
    node.start()
    try:
        files = sorted(series_dir.glob("*.dcm"))
        _say(
            console, f"sending {len(files)} instances to the node ({settings.node.ae_title}@127.0.0.1:{node_port}) ..."
        )
        result = send_files(files, "127.0.0.1", node_port, "LDCTNODE", calling_ae="DEMOSCANNER")
        if not result.ok:
            raise RuntimeError(f"the node refused {len(result.failed)} instance(s): {result.failed[0]}")
        _say(console, "waiting for completeness, segmentation and dispatch to the demo PACS ...")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = node.store.list_jobs(limit=5)
            job = next((j for j in jobs), None)
            if job is not None and job.state == DEAD:
                raise RuntimeError(f"job {job.id} failed: {job.error}")
            if job is not None and job.state == DONE:
                dispatches = node.store.dispatches_for(job.id)
                summary = job.result()
                if summary is not None and dispatches and all(d.state == SENT for d in dispatches):
                    truth = Quantification(**json.loads(truth_file.read_text()))
                    _say(console, f"results in {job.result_dir}; received by the demo PACS in {workdir / 'pacs-inbox'}")
                    return summary, truth
                if any(d.state == DEAD for d in dispatches):
                    raise RuntimeError(f"dispatch failed: {dispatches[0].last_error}")
            time.sleep(0.5)
        raise TimeoutError(f"no result within {timeout:.0f} s; see `ldct-node status`")
    finally:
        node.stop()
        pacs.shutdown()


def _say(console: Console | None, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False)
