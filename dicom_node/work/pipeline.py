"""One series in, result files out: load -> segment -> quantify -> risk -> SEG + SR (+ key images).

Shared by the node's workers and the offline `ldct-node segment` command, so both give the
same numbers for the same files. No networking here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydicom.dataset import Dataset

from config.settings import Settings
from dicom_node.results import DicomRef, EngineInfo, ResultSummary, RiskSummary, rounded
from inference.engines import Engine
from inference.quantify import Quantification, quantify
from inference.volume import load_series, lossy_compression
from reporting.risk import MissingPolicy, RiskAssessment, assess_for_series

log = structlog.get_logger(__name__)

Progress = Callable[[str, int, int], None]
ClinicalLookup = Callable[[Dataset], "dict[str, Any] | None"]  # a study's header -> imported covariates


@dataclass
class ReportOptions:
    key_images: bool = True
    omit_empty_seg_frames: bool = False
    risk_model_path: Path | None = None
    risk_missing_policy: MissingPolicy = "omit"

    @classmethod
    def from_settings(cls, settings: Settings) -> ReportOptions:
        return cls(
            key_images=settings.report.key_images,
            omit_empty_seg_frames=settings.report.omit_empty_seg_frames,
            risk_model_path=settings.risk.model,
            risk_missing_policy=settings.risk.missing,
        )


def analyse_series(
    files: Sequence[Path],
    out_dir: Path,
    *,
    engine: Engine,
    options: ReportOptions | None = None,
    in_slice_order: bool = False,
    clinical: ClinicalLookup | None = None,
    supersedes: Sequence[DicomRef] = (),
    progress: Progress | None = None,
) -> ResultSummary:
    """Segment one series and write SEG, SR, key images and `summary.json` into `out_dir`.

    `in_slice_order`: `files` are in slice order already (the completeness decision sorted
    and checked them), so each file is read once. `clinical` looks up imported covariates
    for the risk model from the study's header (None: header only). `supersedes` are the
    SEGs and SRs of earlier results for the same series that this one replaces.
    """
    from reporting.dicom_file import write_dataset
    from reporting.seg import build_segmentation

    options = options or ReportOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    volume = load_series(list(files), in_slice_order=in_slice_order)
    timings["load_s"] = time.perf_counter() - t0
    series_uid = volume.series_instance_uid
    source_lossy = lossy_compression(volume.datasets)
    log.info(
        "series loaded",
        series_uid=series_uid,
        slices=volume.hu.shape[0],
        spacing_mm=[round(s, 3) for s in volume.spacing],
        source_lossy=source_lossy,
    )

    t0 = time.perf_counter()
    labels = engine.segment(volume, progress=(lambda d, t: progress("segment", d, t)) if progress else None)
    timings["segment_s"] = time.perf_counter() - t0
    quant = quantify(labels, volume.voxel_volume_ml)

    t0 = time.perf_counter()
    first = volume.datasets[0]
    risk = assess_risk_for(first, quant, clinical(first) if clinical else None, options)
    timings["risk_s"] = time.perf_counter() - t0

    # Key images are the last use of the HU volume: built first (written after the SR, as
    # before), so that the volume is freed before the SEG is encoded (peak memory).
    key_images, key_images_s = [], 0.0
    if options.key_images:
        from reporting.key_images import build_key_images

        t0 = time.perf_counter()
        key_images = build_key_images(
            volume.hu, labels, volume.datasets, quant, risk, source_lossy=source_lossy is not None
        )
        key_images_s = time.perf_counter() - t0
    headers, slices = volume.datasets, int(volume.hu.shape[0])
    del volume

    t0 = time.perf_counter()
    engine_info = EngineInfo(name=engine.name, version=engine.version, algorithm=engine.algorithm_name)
    seg = build_segmentation(
        headers,
        labels,
        algorithm_name=engine_info.algorithm_name,
        algorithm_version=engine.version,
        omit_empty_frames=options.omit_empty_seg_frames,
    )
    del labels
    seg_path = out_dir / "seg.dcm"
    write_dataset(seg, seg_path)
    timings["seg_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sr_path = out_dir / "sr.dcm"
    sr = write_report(headers, seg, quant, engine_info, risk, supersedes, sr_path, source_lossy)
    timings["sr_s"] = time.perf_counter() - t0
    outputs = [seg_path, sr_path]

    if options.key_images:
        t0 = time.perf_counter()
        for index, image in enumerate(key_images):
            path = out_dir / f"key_image_{index + 1}.dcm"
            write_dataset(image, path)
            outputs.append(path)
        timings["key_images_s"] = key_images_s + time.perf_counter() - t0

    summary = ResultSummary(
        series_uid=series_uid,
        study_uid=str(headers[0].StudyInstanceUID),
        slices=slices,
        engine=engine_info,
        quantification=rounded(quant),
        risk=RiskSummary.of(risk),
        seg=DicomRef.of(seg),
        sr=DicomRef.of(sr),
        supersedes=list(supersedes),
        outputs=[p.name for p in outputs],
        timings={k: round(v, 3) for k, v in timings.items()},
        source_lossy=source_lossy,
    )
    (out_dir / "summary.json").write_text(summary.to_json(indent=2))
    return summary


def write_report(
    source_datasets: Sequence[Dataset],
    seg: Dataset,
    quant: Quantification,
    engine: EngineInfo,
    risk: RiskAssessment,
    supersedes: Sequence[DicomRef],
    path: Path,
    source_lossy: str | None = None,
) -> Dataset:
    """Build the TID 1500 SR for one analysis and write it to `path` (`source_lossy`: see
    `reporting.sr.build_measurement_report`)."""
    from reporting.dicom_file import write_dataset
    from reporting.sr import build_measurement_report

    sr = build_measurement_report(
        source_datasets,
        seg,
        quant,
        algorithm_name=engine.algorithm_name,
        algorithm_version=engine.version,
        risk=risk,
        supersedes=supersedes,
        source_lossy=source_lossy,
    )
    write_dataset(sr, path)
    return sr


def assess_risk_for(
    header: Dataset, quant: Quantification, clinical: dict[str, Any] | None, options: ReportOptions
) -> RiskAssessment:
    """The prognostic risk for this patient (computed, or not computed with the reason)."""
    return assess_for_series(
        header,
        quant.lesion_pct,
        clinical,
        model_path=options.risk_model_path,
        missing_policy=options.risk_missing_policy,
    )
