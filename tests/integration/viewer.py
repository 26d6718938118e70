"""A real PACS viewer for integration tests: OHIF v3 against Orthanc's DICOMweb, in headless Chromium.

- `OrthancDicomWeb`: the test Orthanc (see peers.Orthanc) with the DICOMweb plugin loaded.
- `OhifServer`: serves OHIF's prebuilt `dist` folder and proxies `/dicom-web/` to Orthanc from the
  same origin (Orthanc sends no CORS headers), with a generated `app-config.js`.
- `OhifBrowser`: drives Debian's chromium through playwright (executable_path, no downloaded
  browser): open a study, load a SEG, go to a slice, take screenshots.
- `overlay_pixels` / `image_to_screen`: turn a screenshot into "where does the overlay sit on the
  CT", so a test can compare it with the mask.

Everything is local: no CDN, no network beyond loopback.
"""

from __future__ import annotations

import http.client
import http.server
import importlib.util
import mimetypes
import os
import string
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.integration.peers import Orthanc, free_port

CHROMIUM = Path(os.environ.get("LDCT_CHROMIUM", "/usr/bin/chromium"))
OHIF_CACHE = Path(os.environ.get("LDCT_OHIF_CACHE", Path.home() / ".cache" / "ldct-node" / "ohif"))
DICOMWEB_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    *sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")),
)
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


OHIF_VERSION = os.environ.get("LDCT_OHIF_VERSION", "3.13.2")  # keep in step with scripts/setup-viewer.sh


def ohif_dist() -> Path | None:
    """The OHIF dist folder that scripts/setup-viewer.sh unpacked (pinned version, else the newest)."""
    pinned = OHIF_CACHE / OHIF_VERSION / "package" / "dist"
    if (pinned / "index.html").is_file():
        return pinned
    dists = sorted(OHIF_CACHE.glob("*/package/dist/index.html"), key=lambda p: p.stat().st_mtime)
    return dists[-1].parent if dists else None


def dicomweb_plugin() -> Path | None:
    return next((p for p in DICOMWEB_PLUGIN_CANDIDATES if p.exists()), None)


def missing_viewer_parts() -> list[str]:
    """What is not installed for the viewer test (empty when it can run); setup-viewer.sh installs it."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"chromium ({CHROMIUM})")
    if dicomweb_plugin() is None:
        missing.append("orthanc-dicomweb plugin")
    if ohif_dist() is None:
        missing.append(f"OHIF dist (under {OHIF_CACHE})")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (PyPI)")
    return missing


class OrthancDicomWeb(Orthanc):
    """Orthanc with the DICOMweb plugin on `/dicom-web/`."""

    def config(self) -> dict:
        return {
            **super().config(),
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }


def app_config_js(data_source_name: str = "orthanc") -> str:
    """OHIF's runtime config: one DICOMweb data source at this origin's /dicom-web (the proxy)."""
    return string.Template("""window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumberOfWebWorkers: 2,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: '${name}',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: '${name}',
    configuration: {
      friendlyName: 'ldct-node test Orthanc',
      name: '${name}',
      wadoUriRoot: window.location.origin + '/wado',
      qidoRoot: window.location.origin + '/dicom-web',
      wadoRoot: window.location.origin + '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
""").substitute(name=data_source_name)


class _OhifHandler(http.server.BaseHTTPRequestHandler):
    """Static OHIF files (SPA fallback to index.html) + a reverse proxy for /dicom-web and /wado."""

    dist: Path
    orthanc_port: int
    config_js: bytes
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the test keeps its own log
        pass

    def _proxy(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.orthanc_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "accept-encoding")}
        connection.request("GET", self.path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self._isolation_headers()
        self.end_headers()
        self.wfile.write(body)
        connection.close()

    def _isolation_headers(self) -> None:
        # Cross-origin isolation lets cornerstone use SharedArrayBuffer; everything is same-origin.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")

    def do_GET(self) -> None:  # http.server's name
        path = self.path.split("?", 1)[0]
        if path.startswith(("/dicom-web/", "/wado")):
            self._proxy()
            return
        if path == "/app-config.js":
            body, ctype = self.config_js, "application/javascript"
        else:
            file = (self.dist / path.lstrip("/")).resolve()
            if not file.is_relative_to(self.dist) or not file.is_file():
                file = self.dist / "index.html"
            body = file.read_bytes()
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if file.suffix == ".wasm":
                ctype = "application/wasm"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._isolation_headers()
        self.end_headers()
        self.wfile.write(body)


class OhifServer:
    """OHIF's dist folder and the DICOMweb proxy on one loopback origin, in a thread."""

    def __init__(self, dist: Path, orthanc_port: int) -> None:
        handler = type(
            "Handler",
            (_OhifHandler,),
            {"dist": Path(dist).resolve(), "orthanc_port": orthanc_port, "config_js": app_config_js().encode()},
        )
        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OhifServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- driving OHIF in Chromium -------------------------------------------------------------------

_VIEWPORT_JS = """() => {
  const cs = window.cornerstone;
  const engines = cs && cs.getRenderingEngines ? cs.getRenderingEngines() : [];
  for (const engine of engines || []) {
    for (const vp of engine.getViewports()) {
      if (vp.getImageIds && vp.getImageIds().length > 1) return vp;
    }
  }
  return null;
}"""


class ViewerError(RuntimeError):
    """OHIF did not do what the test asked (with what it showed instead)."""


class OhifBrowser:
    """Headless Debian chromium on an OHIF page, driven through playwright's sync API."""

    def __init__(self, base_url: str, workdir: Path, width: int = 1280, height: int = 800) -> None:
        from playwright.sync_api import sync_playwright

        self.base_url = base_url
        self.workdir = Path(workdir)
        self.console: list[str] = []
        self._playwright = sync_playwright().start()
        self._context = self._playwright.chromium.launch_persistent_context(
            str(self.workdir / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
            device_scale_factor=1,
        )
        self.page = self._context.pages[0] if self._context.pages else self._context.new_page()
        self.page.on(
            "console",
            lambda m: self.console.append(f"{m.type}: {m.text[:300]}") if m.type in ("error", "warning") else None,
        )

    def close(self) -> None:
        self._context.close()
        self._playwright.stop()

    def _viewport_call(self, body: str, arg=None):
        """Evaluate `body` (a JS expression using `vp`, the stack viewport, and `arg`)."""
        return self.page.evaluate(
            f"([arg]) => {{ const vp = ({_VIEWPORT_JS})(); if (!vp) return null; return {body}; }}", [arg]
        )

    def open_study(self, study_uid: str, timeout_s: float = 90) -> None:
        """The basic viewer mode with the study's CT in the viewport, onboarding tour dismissed."""
        self.page.goto(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}")
        try:
            self.page.wait_for_function(
                f"() => {{ const vp = ({_VIEWPORT_JS})();"
                " return vp && vp.getCurrentImageId && !!vp.getCurrentImageId(); }",
                timeout=timeout_s * 1000,
                polling=500,
            )
        except Exception as error:  # playwright's TimeoutError: say what the page showed
            self.page.screenshot(path=str(self.workdir / "open_study_failed.png"))
            raise ViewerError(
                f"OHIF showed no image of study {study_uid} within {timeout_s:.0f} s; console: {self.console[-5:]}"
            ) from error
        skip = self.page.get_by_text("Skip all")
        if skip.count():
            skip.first.click()
        self.settle()

    def settle(self, seconds: float = 1.5) -> None:
        """Let OHIF finish rendering (cornerstone renders on the next animation frames)."""
        self.page.wait_for_timeout(seconds * 1000)

    def load_series_from_study_browser(self, series_description: str) -> None:
        """Double-click a series in OHIF's study browser (as a radiologist would)."""
        item = self.page.get_by_text(series_description, exact=True)
        if not item.count():
            raise ViewerError(f"no series {series_description!r} in OHIF's study browser")
        item.first.dblclick()
        self.settle()

    def load_seg(self, series_description: str, timeout_s: float = 60) -> dict:
        """Open a SEG from the study browser and answer Yes to 'open this Segmentation?'.

        Returns what OHIF's segmentation service holds afterwards (label, segment labels).
        """
        self.load_series_from_study_browser(series_description)
        yes = self.page.get_by_role("button", name="Yes")
        yes.first.wait_for(timeout=timeout_s * 1000)
        yes.first.click()
        try:
            self.page.wait_for_function(
                """(label) => { const s = window.services && window.services.segmentationService;
                   if (!s) return false;
                   const seg = s.getSegmentations().find(x => x.label === label);
                   return seg && s.getViewportIdsWithSegmentation(seg.segmentationId).length > 0; }""",
                arg=series_description,
                timeout=timeout_s * 1000,
                polling=500,
            )
        except Exception as error:
            self.page.screenshot(path=str(self.workdir / "load_seg_failed.png"))
            raise ViewerError(f"OHIF did not show SEG {series_description!r}; console: {self.console[-5:]}") from error
        self.settle()
        return self.page.evaluate(
            """(label) => {
               const seg = window.services.segmentationService.getSegmentations().find(x => x.label === label);
               const segments = Object.values(seg.segments).map(s => ({index: s.segmentIndex, label: s.label}));
               return {label: seg.label, segments}; }""",
            series_description,
        )

    def go_to_instance(self, sop_instance_uid: str) -> int:
        """Show the CT image with this SOP Instance UID; returns its index in OHIF's stack."""
        index = self._viewport_call("vp.getImageIds().findIndex(id => id.includes(arg))", sop_instance_uid)
        if index is None or index < 0:
            raise ViewerError(f"CT instance {sop_instance_uid} is not in OHIF's viewport stack")
        self._viewport_call("vp.setImageIdIndex(arg)", index)
        self.page.wait_for_function(
            f"(uid) => {{ const vp = ({_VIEWPORT_JS})(); return vp && vp.getCurrentImageId().includes(uid); }}",
            arg=sop_instance_uid,
            timeout=30_000,
        )
        self.settle()
        return index

    def current_image_id(self) -> str:
        """The cornerstone imageId (a WADO-RS URL with study, series and instance UIDs) shown now."""
        return self._viewport_call("vp.getCurrentImageId()") or ""

    def canvas_box(self) -> tuple[float, float, float, float]:
        """(left, top, width, height) of the viewport's canvas in page pixels."""
        box = self._viewport_call(
            "(() => { const r = vp.canvas.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()"
        )
        if box is None:
            raise ViewerError("no cornerstone viewport on the page")
        return tuple(box)

    def world_to_page(self, world_points: list[list[float]]) -> np.ndarray:
        """Patient coordinates (mm) -> page pixel coordinates, through the viewport's camera."""
        canvas = self._viewport_call("arg.map(p => vp.worldToCanvas(p))", world_points)
        left, top, _, _ = self.canvas_box()
        return np.asarray(canvas, dtype=float) + np.array([left, top])

    def screenshot(self, path: Path) -> np.ndarray:
        """Full-page PNG at `path`; returns it as an RGB array (y, x, 3)."""
        from PIL import Image

        self.page.screenshot(path=str(path))
        return np.asarray(Image.open(path).convert("RGB"))


# --- reading the screenshot back into image space -----------------------------------------------


def pixel_centres_to_world(dataset, rows_cols: np.ndarray) -> np.ndarray:
    """(row, col) pixel indices of one CT image -> patient coordinates (mm) of their centres."""
    origin = np.asarray(dataset.ImagePositionPatient, dtype=float)
    orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
    along_row, along_col = orientation[:3], orientation[3:]  # direction of increasing column, row
    row_spacing, col_spacing = (float(s) for s in dataset.PixelSpacing)
    rows_cols = np.asarray(rows_cols, dtype=float)
    return origin + rows_cols[:, 1:2] * col_spacing * along_row + rows_cols[:, 0:1] * row_spacing * along_col


@dataclass(frozen=True)
class ImageOnScreen:
    """Where the viewer draws a CT image: page (x, y) = matrix @ (col, row) + offset."""

    matrix: np.ndarray
    offset: np.ndarray

    @classmethod
    def from_browser(cls, browser: OhifBrowser, dataset) -> ImageOnScreen:
        rows, cols = int(dataset.Rows), int(dataset.Columns)
        corners = np.array([[0, 0], [0, cols - 1], [rows - 1, 0]], dtype=float)  # (row, col)
        page = browser.world_to_page(pixel_centres_to_world(dataset, corners).tolist())
        matrix = np.column_stack([(page[1] - page[0]) / (cols - 1), (page[2] - page[0]) / (rows - 1)])
        return cls(matrix=matrix, offset=page[0])

    def page_xy(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = self.matrix @ np.vstack([cols, rows]) + self.offset[:, None]
        return xy[0], xy[1]


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """Hue (0-360) of RGB values (..., 3); grey has no meaningful hue (check saturation first)."""
    rgb = np.asarray(rgb, dtype=float)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    chroma = np.maximum(mx - mn, 1e-6)
    hue = np.where(mx == r, ((g - b) / chroma) % 6, np.where(mx == g, (b - r) / chroma + 2, (r - g) / chroma + 4))
    return hue * 60.0


def overlay_label_map(
    screenshot: np.ndarray,
    placement: ImageOnScreen,
    shape: tuple[int, int],
    segment_colours: dict[int, tuple[int, int, int]],
    *,
    baseline: np.ndarray | None = None,
    min_chroma: float = 30,
    max_hue_error: float = 25,
    min_change: float = 30,
) -> np.ndarray:
    """Read the segment shown at each CT pixel back from a screenshot.

    Samples the screenshot at the page position of each image pixel's centre; a grey pixel is
    the bare CT (0), a coloured one is the segment whose display colour has the nearest hue
    (within `max_hue_error` degrees; blending with grey CT changes saturation, not hue).
    `baseline` is the same view before the SEG was loaded: a pixel that did not change by at
    least `min_change` (sum of |dRGB|) is viewer chrome drawn over the image (blue icons), not overlay.
    """
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    x, y = placement.page_xy(rows.ravel(), cols.ravel())
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (xi >= 0) & (yi >= 0) & (xi < screenshot.shape[1]) & (yi < screenshot.shape[0])
    sampled = np.zeros((rows.size, 3))
    sampled[inside] = screenshot[yi[inside], xi[inside]]
    chroma = sampled.max(1) - sampled.min(1)
    if baseline is not None:
        before = np.zeros_like(sampled)
        before[inside] = baseline[yi[inside], xi[inside]]
        inside &= np.abs(sampled - before).sum(1) >= min_change
    hue = hue_degrees(sampled)
    labels = np.zeros(rows.size, dtype=np.uint8)
    best_error = np.full(rows.size, np.inf)
    for number, colour in segment_colours.items():
        error = np.abs((hue - hue_degrees(np.array(colour)) + 180) % 360 - 180)
        better = (error < best_error) & (error <= max_hue_error) & (chroma >= min_chroma) & inside
        labels[better], best_error[better] = number, error[better]
    return labels.reshape(shape)


@dataclass(frozen=True)
class SegmentAgreement:
    """How a segment seen on screen compares with the expected mask on one slice (image pixels)."""

    segment: int
    expected_pixels: int
    shown_pixels: int
    dice: float
    centroid_shift_px: float  # distance between centroids, in image pixels (inf if one is empty)


def compare_segment(shown: np.ndarray, expected: np.ndarray, segment: int) -> SegmentAgreement:
    a, b = shown == segment, expected == segment
    total = a.sum() + b.sum()
    dice = float(2 * (a & b).sum() / total) if total else 1.0
    if a.any() and b.any():
        shift = float(np.linalg.norm(np.argwhere(a).mean(0) - np.argwhere(b).mean(0)))
    else:
        shift = float("inf") if a.any() != b.any() else 0.0
    return SegmentAgreement(segment, int(b.sum()), int(a.sum()), dice, shift)


#: A segment must match this well on the slice checked (measured on a correct SEG: Dice 1.0, shift 0).
MIN_DICE = 0.90
MAX_CENTROID_SHIFT_PX = 2.0  # 2 image pixels = 2.8 mm on the demo CT: any larger shift fails
MIN_PIXELS_FOR_DICE = 50  # smaller expected regions (a few pixels of consolidation) use MIN_DICE_SMALL
MIN_DICE_SMALL = 0.5
MAX_STRAY_PIXELS = 20  # pixels of a segment shown where the mask has none of it


def overlay_mismatches(agreements: list[SegmentAgreement]) -> list[str]:
    """Reasons the overlay is misplaced (empty when every segment sits where the mask is)."""
    problems = []
    for a in agreements:
        if a.expected_pixels == 0:
            if a.shown_pixels > MAX_STRAY_PIXELS:
                problems.append(f"segment {a.segment}: {a.shown_pixels} px shown where the mask has none")
        elif a.expected_pixels >= MIN_PIXELS_FOR_DICE:
            if a.dice < MIN_DICE or a.centroid_shift_px > MAX_CENTROID_SHIFT_PX:
                problems.append(
                    f"segment {a.segment}: Dice {a.dice:.2f} (min {MIN_DICE}), centroid shifted "
                    f"{a.centroid_shift_px:.1f} px (max {MAX_CENTROID_SHIFT_PX})"
                )
        elif a.dice < MIN_DICE_SMALL:
            problems.append(
                f"segment {a.segment} (small, {a.expected_pixels} px): Dice {a.dice:.2f} (min {MIN_DICE_SMALL})"
            )
    return problems


def ohif_sr_reading(browser: OhifBrowser) -> list[dict]:
    """What OHIF made of the SR display sets: report flag, referenced images and measurement groups."""
    return browser.page.evaluate(
        """() => window.services.displaySetService.getActiveDisplaySets().filter(d => d.Modality === 'SR').map(d => ({
             series_description: d.SeriesDescription, imaging_measurement_report: !!d.isImagingMeasurementReport,
             rehydratable: !!d.isRehydratable, referenced_images: (d.referencedImages || []).length,
             measurements: (d.measurements || []).map(m => ({tracking_identifier: m.TrackingIdentifier,
                            labels: m.labels || [], coordinates: (m.coords || []).length}))}))"""
    )
