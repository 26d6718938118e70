"""The node's results in a real PACS viewer: OHIF v3 on Orthanc's DICOMweb, in headless Chromium.

The synthetic demo CT goes through `ldct-node segment`; CT, SEG, SR and key images are stored in
Orthanc; OHIF (served locally, no CDN) opens the study as a radiologist would, loads the SEG from
the study browser and shows a slice with GGO and consolidation. The screenshot is read back into
CT pixel space (segment = display-colour hue) and compared with the label map the engine
computes from the CT itself, so a SEG whose overlay lands flipped, shifted or on the wrong slice
fails. Deliberately misplaced SEGs (mask flipped left-right, slices in reverse order, mask
shifted 3 px, mask shifted one slice) show that the check does fail.

Needs scripts/setup-viewer.sh (chromium, orthanc-dicomweb, OHIF's dist, playwright); skipped
otherwise. Screenshots land in the test's tmp dir; with LDCT_UPDATE_DOCS_SCREENSHOT=1 the
overlay screenshot is also copied to docs/ohif-seg-overlay.png for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.integration.peers import REPO
from tests.integration.viewer import (
    ImageOnScreen,
    OhifBrowser,
    OhifServer,
    OrthancDicomWeb,
    compare_segment,
    missing_viewer_parts,
    ohif_dist,
    ohif_sr_reading,
    overlay_label_map,
    overlay_mismatches,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SEG_DESCRIPTION = "LDCT lung lesions SEG"
SR_DESCRIPTION = "LDCT lung lesions report"
KEY_IMAGES_DESCRIPTION = "LDCT lung lesions key images"
OMITTED_DESCRIPTION = "LDCT SEG empty frames omitted"  # same mask, highdicom omit_empty_frames=True
MISPLACED = {  # series description -> how the label map is misplaced before it is encoded
    "MISPLACED mask flipped left-right": lambda labels: labels[:, :, ::-1],
    "MISPLACED slices in reverse order": lambda labels: labels[::-1],
    "MISPLACED shifted 3 px right": lambda labels: np.roll(labels, 3, axis=2),
    "MISPLACED shifted one slice": lambda labels: np.roll(labels, 1, axis=0),
}
SEGMENTS = (1, 2, 3)  # normal lung, GGO, consolidation


@dataclass
class ViewerStudy:
    workdir: Path
    datasets: list  # CT headers in the loader's (label map's) slice order
    labels: np.ndarray  # engine label map (z, y, x), the expected overlay
    target_slice: int
    results: Path  # ldct-node segment output folder
    orthanc: OrthancDicomWeb
    server: OhifServer
    browser: OhifBrowser
    variant_segs: dict[str, Path]  # series description -> test-made SEG, stored when first used

    def store_variant(self, description: str) -> None:
        """Store a test-made SEG only when a test needs it: the node's own screenshot stays clean."""
        path = self.variant_segs.pop(description, None)
        if path is not None:
            self.orthanc.upload([path])

    @property
    def target(self):
        return self.datasets[self.target_slice]


def lesion_slice(labels: np.ndarray) -> int:
    """The slice with the most lesion that has both GGO and consolidation (else the most lesion)."""
    ggo, cons = (labels == 2).sum((1, 2)), (labels == 3).sum((1, 2))
    score = (ggo + cons) * np.where((ggo > 0) & (cons > 0), 2, 1)
    return int(np.argmax(score))


@pytest.fixture(scope="module")
def viewer_study(tmp_path_factory):
    missing = missing_viewer_parts()
    if missing:
        pytest.skip(f"viewer not installed: {', '.join(missing)} (run scripts/setup-viewer.sh)")
    from dicom_node.admin.demo import write_demo_series
    from inference.engines import get_engine
    from inference.volume import load_series
    from reporting.seg import build_segmentation

    workdir = tmp_path_factory.mktemp("viewer")
    ct_dir, results = workdir / "ct", workdir / "results"
    write_demo_series(ct_dir)
    subprocess.run(
        [sys.executable, "-m", "dicom_node", "segment", str(ct_dir), "--out", str(results), "--engine", "threshold"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )

    volume = load_series(ct_dir)
    labels = get_engine("threshold", "cpu").segment(volume)  # the node's own engine, recomputed here
    variant_segs = {}
    variants = {
        OMITTED_DESCRIPTION: (labels, True),
        **{description: (misplace(labels), False) for description, misplace in MISPLACED.items()},
    }
    for number, (description, (variant, omit_empty_frames)) in enumerate(variants.items(), start=990):
        seg = build_segmentation(
            volume.datasets,
            np.ascontiguousarray(variant),
            algorithm_name="viewer test",
            algorithm_version="0",
            series_number=number,
            series_description=description,
            omit_empty_frames=omit_empty_frames,
        )
        variant_segs[description] = workdir / f"seg_{number}.dcm"
        seg.save_as(variant_segs[description], enforce_file_format=True)

    orthanc = OrthancDicomWeb(workdir / "orthanc").start()
    server = browser = None
    try:
        orthanc.upload(sorted(ct_dir.glob("*.dcm")) + sorted(results.glob("*.dcm")))
        server = OhifServer(ohif_dist(), orthanc.http_port).start()
        browser = OhifBrowser(server.url, workdir)
        yield ViewerStudy(
            workdir,
            list(volume.datasets),
            labels,
            lesion_slice(labels),
            results,
            orthanc,
            server,
            browser,
            variant_segs,
        )
    finally:
        if browser:
            browser.close()
        if server:
            server.stop()
        orthanc.stop()


def overlay_on_target_slice(study: ViewerStudy, seg_description: str, name: str):
    """Open the study, load one SEG, show the lesion slice; return (agreements, screenshot path)."""
    browser, target = study.browser, study.target
    study.store_variant(seg_description)
    browser.open_study(target.StudyInstanceUID)
    browser.go_to_instance(target.SOPInstanceUID)
    placement = ImageOnScreen.from_browser(browser, target)
    before = browser.screenshot(study.workdir / f"{name}_ct.png")

    loaded = browser.load_seg(seg_description)
    assert [s["label"] for s in loaded["segments"]] == ["Normal lung", "Ground glass opacity", "Consolidation"]
    browser.go_to_instance(target.SOPInstanceUID)  # OHIF jumps to the SEG's first slice on load
    after_placement = ImageOnScreen.from_browser(browser, target)
    assert np.allclose(after_placement.matrix, placement.matrix) and np.allclose(
        after_placement.offset, placement.offset
    ), "OHIF moved or zoomed the CT while loading the SEG; the before/after screenshots no longer align"
    from reporting.seg import SEGMENT_COLOURS_RGB

    expected = study.labels[study.target_slice]
    shot_path = study.workdir / f"{name}_seg.png"
    shown = None
    for _ in range(6):  # a busy machine may still be drawing: read until two screenshots agree
        after = browser.screenshot(shot_path)
        reading = overlay_label_map(after, placement, expected.shape, SEGMENT_COLOURS_RGB, baseline=before)
        if shown is not None and reading.any() and np.array_equal(reading, shown):
            break
        shown = reading
        browser.settle(1)
    return [compare_segment(shown, expected, s) for s in SEGMENTS], shot_path


def update_docs_screenshot(screenshot: Path, name: str) -> None:
    """With LDCT_UPDATE_DOCS_SCREENSHOT=1, copy a screenshot to docs/ for the README."""
    if os.environ.get("LDCT_UPDATE_DOCS_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(screenshot, REPO / "docs" / name)


def test_sr_and_key_image_in_ohif(viewer_study):
    """OHIF reads the TID 1500 SR's measurement groups (no image coordinates) and shows the key image.

    Runs first (file order), before the test-made SEGs are stored, so its screenshots show only
    what the node sends.
    """
    study, browser = viewer_study, viewer_study.browser
    browser.open_study(study.target.StudyInstanceUID)

    browser.load_series_from_study_browser(SR_DESCRIPTION)
    browser.settle(3)
    browser.screenshot(study.workdir / "sr.png")
    reading = ohif_sr_reading(browser)
    (study.workdir / "ohif_sr_reading.json").write_text(json.dumps(reading, indent=2))
    assert len(reading) == 1 and reading[0]["imaging_measurement_report"], reading
    groups = {m["tracking_identifier"]: m for m in reading[0]["measurements"]}
    assert {"Normal lung", "Ground glass opacity", "Consolidation"} <= set(groups), groups
    quantification = json.loads((study.results / "summary.json").read_text())["quantification"]
    ggo_volume = next(
        label["value"] for label in groups["Ground glass opacity"]["labels"] if label["label"] == "Volume"
    )
    assert float(ggo_volume.split()[0]) == pytest.approx(quantification["ggo_cm3"], abs=0.05)  # the SR stores 0.1 cm3
    # Volumes are not drawn on any image: OHIF has nothing to hydrate onto the CT.
    assert all(m["coordinates"] == 0 for m in reading[0]["measurements"])

    browser.load_series_from_study_browser(KEY_IMAGES_DESCRIPTION)
    browser.settle(3)
    key_image = pydicom.dcmread(sorted(study.results.glob("key_image_*.dcm"))[0], stop_before_pixels=True)
    shown_uid = browser.current_image_id()
    shot = browser.screenshot(study.workdir / "key_image.png")
    assert key_image.SeriesInstanceUID in shown_uid, f"OHIF shows {shown_uid}, not the key image series"
    left, top, width, height = (int(v) for v in browser.canvas_box())
    canvas = shot[top : top + height, left : left + width].astype(int)
    burnt_in = canvas[(canvas[..., 0] - canvas[..., 2] > 80) & (canvas[..., 1] < 100)]  # red consolidation / legend
    assert burnt_in.shape[0] > 20, "the key image's burnt-in colour overlay is not on screen"
    update_docs_screenshot(study.workdir / "key_image.png", "ohif-key-image.png")


@pytest.mark.parametrize(
    "description", [SEG_DESCRIPTION, OMITTED_DESCRIPTION], ids=["node_seg", "empty_frames_omitted"]
)
def test_seg_overlay_lands_on_the_mask(viewer_study, description):
    """The node's SEG, shown by OHIF on the lesion slice, covers the engine's mask segment by segment.

    Also with empty frames omitted: OHIF 3.13 places such a SEG correctly too (older OHIF did
    not, highdicom#214), so keeping empty frames, the node's default, is a safety margin.
    """
    name = "node" if description == SEG_DESCRIPTION else "omitted"
    agreements, shot = overlay_on_target_slice(viewer_study, description, name)
    report = {a.segment: vars(a) for a in agreements}
    (viewer_study.workdir / f"{name}_overlay.json").write_text(json.dumps(report, indent=2))
    expected = viewer_study.labels[viewer_study.target_slice]
    assert (expected == 2).sum() >= 200, "the checked slice should hold a real GGO lesion"
    assert overlay_mismatches(agreements) == [], f"SEG overlay misplaced in OHIF (screenshot {shot}): {report}"
    if name == "node":
        update_docs_screenshot(shot, "ohif-seg-overlay.png")


@pytest.mark.parametrize("description", list(MISPLACED))
def test_misplaced_seg_fails_the_check(viewer_study, description):
    """The same check rejects a SEG flipped left-right, with slices reversed, shifted 3 px or one slice."""
    name = "_".join(description.lower().split()[1:]).replace("-", "_")
    agreements, shot = overlay_on_target_slice(viewer_study, description, name)
    problems = overlay_mismatches(agreements)
    (viewer_study.workdir / f"{name}_overlay.json").write_text(
        json.dumps({"agreements": [vars(a) for a in agreements], "problems": problems}, indent=2)
    )
    assert problems, f"a misplaced SEG passed the overlay check (screenshot {shot}): {[vars(a) for a in agreements]}"
