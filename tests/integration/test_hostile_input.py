"""Hostile and malformed input against the node as a real process (dcmtk / pynetdicom senders).

One node and one Orthanc serve the whole module; each test sends its own series and checks
the node's answer: a failure status at C-STORE, or a recorded decision with its reason, or
a processed series whose results reach Orthanc. At the end the node must still be serving
and no handler may have crashed.
"""

from __future__ import annotations

import io
import math
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_node.queue.jobstore import JobStore
from inference.synthetic import generate_phantom, write_series
from tests.integration.peers import NodeProcess, Orthanc, storescu, tool_env, wait_until

SLICES = 24
SHAPE = (SLICES, 64, 64)
SPACING = (12.0, 5.3, 5.3)


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    orthanc = Orthanc(root / "orthanc").start()
    node = NodeProcess(
        root / "node",
        [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        engine="threshold",
        idle_seconds=2,
        extra="[jobs]\nmax_attempts = 1\n",
    ).start()  # a failing job dies at once
    store = JobStore(f"sqlite:///{node.data_dir / 'jobs.sqlite3'}", upgrade=False)
    yield orthanc, node, store
    store.close()
    node.stop()
    orthanc.stop()


def series(folder: Path, seed: int = 0, **kwargs) -> list[Path]:
    return write_series(generate_phantom(shape=SHAPE, spacing=SPACING, seed=seed), folder, **kwargs)


def rewrite(paths: list[Path], change) -> None:
    """Apply `change(index, dataset)` to each file and save it back."""
    for index, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        change(index, ds)
        ds.save_as(path)


def decision(store: JobStore, series_uid: str, timeout: float = 60):
    """The node's (last) completeness decision on a series."""

    def found():
        rows = [s for s in store.recent_series(200) if s.series_uid == series_uid]
        return rows[0] if rows else None

    return wait_until(found, timeout, interval=0.3, what=f"a decision on series {series_uid[-12:]}")


def processed(node, store: JobStore, series_uid: str, timeout: float = 120) -> dict:
    """Wait until the series' job is done and its results sent; return the job (CLI JSON)."""
    decided = decision(store, series_uid)
    assert decided.outcome == "queued", (decided.outcome, decided.reason)

    def done():
        job = store.get_job(decided.job_id)
        if job.state == "dead":
            raise AssertionError(f"job died: {job.error}")
        sent = [d.state for d in store.dispatches_for(job.id)]
        return job if job.state == "done" and sent == ["sent"] else None

    job = wait_until(done, timeout, interval=0.5, what="the job done and sent")
    return {"id": job.id, "summary": job.result().as_dict(), "instances": job.instance_count}


def series_uid_of(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def storescu_verbose(port: int, paths: list[Path], *options: str) -> tuple[int, str]:
    """storescu -d (or the verbosity given) with extra options; (exit code, lower-cased output)."""
    verbosity = [] if "-q" in options else ["-d"]
    result = subprocess.run(
        [
            "storescu",
            *verbosity,
            *options,
            "-aet",
            "SCANNER",
            "-aec",
            "LDCTNODE",
            "127.0.0.1",
            str(port),
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).lower()


def send_raw_bytes(port: int, path: Path) -> int:
    """C-STORE a file's bytes exactly as they are (no parse, no re-encoding by the sender)."""
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="LDCTNODE")
    assert assoc.is_established
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return assoc.send_c_store(path).Status
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


def seg_for(orthanc: Orthanc, series_uid: str):
    """The SEG in Orthanc that references `series_uid` (None if not there)."""
    for instance_id in orthanc.instances_by_modality("SEG"):
        ds = pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{instance_id}/file")))
        if ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid:
            return ds
    return None


# ---- refused at C-STORE ------------------------------------------------------------------------
def test_truncated_file_is_refused_at_store(peers, tmp_path):
    _, node, _ = peers
    path = series(tmp_path / "s")[0]
    sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    whole = path.read_bytes()
    for cut in (len(whole) - 64, len(whole) - 4000, 600):
        path.write_bytes(whole[:cut])
        assert send_raw_bytes(node.port, path) in (0xC000, 0xA900), cut
    assert not list((node.data_dir / "spool").rglob(f"{sop_uid}*"))


def test_pixel_data_of_wrong_length_is_refused_with_a900(peers, tmp_path):
    _, node, _store = peers
    paths = series(tmp_path / "s")
    rewrite(paths[:1], lambda i, ds: setattr(ds, "PixelData", ds.PixelData[:-512]))
    _, output = storescu_verbose(node.port, paths[:1])
    assert "0xa900" in output, output[-1500:]
    assert not (node.data_dir / "spool" / str(pydicom.dcmread(paths[0]).StudyInstanceUID)).exists()


# ---- stored, then a decision with a reason ----------------------------------------------------
@pytest.mark.parametrize(
    ("attribute", "reason"),
    [("ImagePositionPatient", "missing ImagePositionPatient"), ("PixelSpacing", "missing PixelSpacing")],
)
def test_missing_geometry_is_inconsistent_with_the_reason(peers, tmp_path, attribute, reason):
    _, node, store = peers
    paths = series(tmp_path / "s", seed=1)
    rewrite(paths[5:6], lambda i, ds: delattr(ds, attribute))
    assert storescu(node.port, paths).returncode == 0
    decided = decision(store, series_uid_of(paths))
    assert (decided.outcome, reason in decided.reason) == ("inconsistent", True), decided.reason


def test_two_orientations_in_one_series_is_inconsistent(peers, tmp_path):
    _, node, store = peers
    paths = series(tmp_path / "s", seed=2)
    rewrite(paths[:3], lambda i, ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]))
    assert storescu(node.port, paths).returncode == 0
    decided = decision(store, series_uid_of(paths))
    assert decided.outcome == "inconsistent" and "orientations" in decided.reason


def test_two_acquisitions_at_the_same_positions_are_not_mixed(peers, tmp_path):
    """A second acquisition (new SOP UIDs, same positions) in the same series: one volume is
    processed, not a mix of both, or the series is refused with a reason."""
    _, node, store = peers
    first = series(tmp_path / "a", seed=3)
    uid = series_uid_of(first)
    study = str(pydicom.dcmread(first[0]).StudyInstanceUID)
    second = series(tmp_path / "b", seed=4, series_uid=uid, study_uid=study)
    rewrite(second, lambda i, ds: setattr(ds, "AcquisitionNumber", 2))
    assert storescu(node.port, first + second).returncode == 0
    decided = decision(store, uid)
    if decided.outcome == "queued":
        job = store.get_job(decided.job_id)
        used = set(job.instance_uid_list())
        acquisitions = {
            str(pydicom.dcmread(p, stop_before_pixels=True).AcquisitionNumber)
            for p in first + second
            if str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) in used
        }
        assert len(acquisitions) == 1 and len(used) == SLICES, (acquisitions, len(used))
    else:
        assert decided.outcome == "inconsistent" and decided.reason


def test_one_slice_series_is_ineligible(peers, tmp_path):
    _, node, store = peers
    paths = series(tmp_path / "s", seed=5)[:1]
    assert storescu(node.port, paths).returncode == 0
    decided = decision(store, series_uid_of(paths))
    assert decided.outcome == "ineligible" and "1 slices" in decided.reason


def _tilt(paths: list[Path], degrees: float) -> None:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))

    def change(_, ds):
        ds.GantryDetectorTilt = f"{degrees:g}"
        ds.ImageOrientationPatient = [1, 0, 0, 0, round(c, 6), round(-s, 6)]

    rewrite(paths, change)


def test_strong_gantry_tilt_is_ineligible_small_tilt_processed(peers, tmp_path):
    _orthanc, node, store = peers
    strong = series(tmp_path / "strong", seed=6)
    _tilt(strong, 25)
    assert storescu(node.port, strong).returncode == 0
    decided = decision(store, series_uid_of(strong))
    assert decided.outcome == "ineligible" and "axial" in decided.reason
    small = series(tmp_path / "small", seed=6)
    _tilt(small, 10)
    assert storescu(node.port, small).returncode == 0
    job = processed(node, store, series_uid_of(small))
    assert job["instances"] == SLICES


def test_same_sop_instance_uid_twice_with_different_content_last_wins(peers, tmp_path):
    _, node, store = peers
    paths = series(tmp_path / "s", seed=7)
    changed = tmp_path / "changed.dcm"
    ds = pydicom.dcmread(paths[10])
    ds.PixelData = bytes(len(ds.PixelData))  # same UID, other pixels
    ds.save_as(changed)
    assert storescu(node.port, [*paths, changed]).returncode == 0
    job = processed(node, store, series_uid_of(paths))
    assert job["instances"] == SLICES
    spooled = (
        node.data_dir / "spool" / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    )
    assert pydicom.dcmread(spooled).PixelData == ds.PixelData
    assert "instance re-sent with different content: replaced" in node.log_path.read_text()


# ---- processed ----------------------------------------------------------------------------------
def test_compressed_transfer_syntaxes_give_the_same_volumes(peers, tmp_path):
    """RLE, JPEG-LS and JPEG 2000 lossless copies of one phantom: same numbers as uncompressed."""
    _orthanc, node, store = peers
    lungs = {}
    # storescu proposes only uncompressed syntaxes unless told: -xr RLE, -xt JPEG-LS, -xv J2K
    for syntax, option in ((None, "-x="), (RLELossless, "-xr"), (JPEGLSLossless, "-xt"), (JPEG2000Lossless, "-xv")):
        name = syntax.name if syntax else "uncompressed"
        kwargs = {"transfer_syntax": syntax} if syntax else {}
        paths = series(tmp_path / name.replace(" ", "_"), seed=8, **kwargs)
        code, output = storescu_verbose(node.port, paths, option)
        assert code == 0, (name, output[-800:])
        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        spooled = (
            node.data_dir
            / "spool"
            / str(first.StudyInstanceUID)
            / str(first.SeriesInstanceUID)
            / f"{first.SOPInstanceUID}.dcm"
        )
        assert pydicom.dcmread(spooled, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
            syntax or first.file_meta.TransferSyntaxUID
        )  # stored as sent, not transcoded
        job = processed(node, store, series_uid_of(paths))
        lungs[name] = job["summary"]["quantification"]["lung_cm3"]
    assert len(set(lungs.values())) == 1 and lungs["uncompressed"] > 0, lungs


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 192", "Müller^Zoë=山田^太郎"),
        (["ISO 2022 IR 6", "ISO 2022 IR 100"], "Gérard^Françoise"),
        ("ISO 2022 IR 100", "Gérard^Françoise"),
    ],
)
def test_patient_names_in_other_character_sets_reach_the_seg(peers, tmp_path, charset, name):
    orthanc, node, store = peers
    paths = series(tmp_path / "s", seed=9)

    def change(_, ds):
        ds.SpecificCharacterSet = charset
        ds.PatientName = name

    rewrite(paths, change)
    assert storescu(node.port, paths).returncode == 0
    processed(node, store, series_uid_of(paths))
    seg = seg_for(orthanc, series_uid_of(paths))
    assert seg is not None and str(seg.PatientName) == name


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


@pytest.mark.slow
def test_2000_slice_series_is_processed_with_bounded_memory(peers, tmp_path):
    """2000 thin slices (64 x 64): received, decided, processed and sent; the node's peak
    resident memory stays far below what holding every slice as float64 twice would need."""
    _, node, store = peers
    paths = write_series(generate_phantom(shape=(2000, 64, 64), spacing=(0.5, 5.3, 5.3), seed=13), tmp_path / "s")
    code, output = storescu_verbose(node.port, paths, "-q")
    assert code == 0, output[-800:]
    job = processed(node, store, series_uid_of(paths), timeout=300)
    assert job["instances"] == 2000 and job["summary"]["slices"] == 2000
    peak = _peak_rss_mib(node.process.pid)
    print(f"\n2000-slice series: node peak RSS {peak:.0f} MiB")
    assert peak < 1500, peak


def test_node_still_serving_and_no_handler_crashed(peers):
    _, node, _ = peers
    assert node.process.poll() is None
    echo = subprocess.run(
        ["echoscu", "-aec", "LDCTNODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=tool_env(),
        check=False,
    )
    assert echo.returncode == 0
    log = node.log_path.read_text()
    assert "store handler failed" not in log
    # no traceback anywhere: every input above got a status, a reason or a result
    assert "Traceback" not in log
