"""One series in, result files out: load -> segment -> quantify -> risk -> SEG + SR (+ key images).

Shared by the node's workers and the offline `ldct-node segment` command, so both give the
same numbers for the same files. No networking here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import structlog

from inference.engines import Engine
from inference.quantify import Quantification, quantify
from inference.volume import load_series
from reporting.risk import assess_for_series

log = structlog.get_logger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class AnalysisResult:
    quantification: Quantification
    outputs: list[Path]
    summary: dict = field(default_factory=dict)


@dataclass
class ReportOptions:
    key_images: bool = True
    omit_empty_seg_frames: bool = False
    risk_model_path: Path | None = None
    risk_missing_policy: str = "omit"


def analyse_series(files: Sequence[Path], out_dir: Path, *, engine: Engine,
                   options: ReportOptions | None = None, clinical: dict | None = None,
                   supersedes: Sequence[dict] = (), progress: Progress | None = None) -> AnalysisResult:
    """Segment one series and write SEG, SR and key images into `out_dir`.

    `clinical` holds imported covariates for the risk model (None: header only).
    `supersedes` are the summaries of earlier results for the same series that this replaces.
    """
    from reporting.seg import build_segmentation
    from reporting.validate import write_dataset

    options = options or ReportOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    volume = load_series(list(files))
    timings["load_s"] = time.perf_counter() - t0
    series_uid = volume.series_instance_uid
    log.info("series loaded", series_uid=series_uid, slices=volume.hu.shape[0],
             spacing_mm=[round(s, 3) for s in volume.spacing])

    t0 = time.perf_counter()
    labels = engine.segment(volume, progress=(lambda d, t: progress("segment", d, t)) if progress else None)
    timings["segment_s"] = time.perf_counter() - t0
    quant = quantify(labels, volume.voxel_volume_ml)

    t0 = time.perf_counter()
    risk = assess_risk_for(volume.datasets[0], quant, clinical, options)
    timings["risk_s"] = time.perf_counter() - t0

    # Key images are the last use of the HU volume: built first (written after the SR, as
    # before), so that the volume is freed before the SEG is encoded (peak memory).
    key_images, key_images_s = [], 0.0
    if options.key_images:
        from reporting.key_images import build_key_images

        t0 = time.perf_counter()
        key_images = build_key_images(volume.hu, labels, volume.datasets, quant, risk)
        key_images_s = time.perf_counter() - t0
    headers, slices = volume.datasets, int(volume.hu.shape[0])
    del volume

    t0 = time.perf_counter()
    seg = build_segmentation(headers, labels, algorithm_name=f"ldct-node {engine.name}",
                             algorithm_version=engine.version,
                             omit_empty_frames=options.omit_empty_seg_frames)
    del labels
    seg_path = out_dir / "seg.dcm"
    write_dataset(seg, seg_path)
    timings["seg_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    superseded_uids = superseded_objects(supersedes)
    sr_path = out_dir / "sr.dcm"
    engine_info = {"name": engine.name, "version": engine.version}
    sr = write_report(headers, seg, quant, engine_info, risk, superseded_uids, sr_path)
    timings["sr_s"] = time.perf_counter() - t0
    outputs = [seg_path, sr_path]

    if options.key_images:
        t0 = time.perf_counter()
        for index, image in enumerate(key_images):
            path = out_dir / f"key_image_{index + 1}.dcm"
            write_dataset(image, path)
            outputs.append(path)
        timings["key_images_s"] = key_images_s + time.perf_counter() - t0

    summary = {
        "series_uid": series_uid,
        "study_uid": str(headers[0].StudyInstanceUID),
        "slices": slices,
        "engine": engine_info,
        "quantification": {k: round(v, 3) for k, v in quant.as_dict().items()},
        "risk": risk_summary(risk),
        "seg": [str(seg.SOPClassUID), str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID)],
        "sr": [str(sr.SOPClassUID), str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID)],
        "supersedes": [list(u) for u in superseded_uids],
        "outputs": [p.name for p in outputs],
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return AnalysisResult(quantification=quant, outputs=outputs, summary=summary)


def superseded_objects(summaries: Sequence[dict]) -> list[tuple[str, str, str]]:
    """(SOP class, SOP instance, series) UIDs of the SEGs and SRs in earlier result summaries."""
    return [tuple(s[kind]) for s in summaries for kind in ("seg", "sr") if s.get(kind)]


def write_report(source_datasets, seg, quant: Quantification, engine: dict, risk,
                 supersedes: Sequence[tuple[str, str, str]], path: Path):
    """Build the TID 1500 SR for one analysis and write it to `path`.

    `engine` is the summary's {"name", "version"} of the segmentation engine.
    """
    from reporting.sr import build_measurement_report
    from reporting.validate import write_dataset

    sr = build_measurement_report(source_datasets, seg, quant, algorithm_name=f"ldct-node {engine['name']}",
                                  algorithm_version=engine["version"], risk=risk, supersedes=supersedes)
    write_dataset(sr, path)
    return sr


def assess_risk_for(header, quant: Quantification, clinical: dict | None, options: ReportOptions):
    """The prognostic risk for this patient (computed, or not computed with the reason)."""
    return assess_for_series(header, quant.lesion_pct, clinical, model_path=options.risk_model_path,
                             missing_policy=options.risk_missing_policy)


def risk_summary(risk) -> dict | None:
    if risk is None:
        return None
    return {"computed": risk.computed, "probability": risk.probability, "category": risk.category,
            "model": f"{risk.model_name} {risk.model_version}",
            "calibration_status": risk.calibration_status,
            "missing": list(risk.covariates_missing),
            "assumed_absent": list(risk.covariates_assumed_absent)}
