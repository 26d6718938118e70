"""A job's results: the typed summary the work stage hands on, and where result files live.

The pipeline (a worker's job, or the offline `segment`) produces a `ResultSummary`; the job
store keeps it, the dispatcher sends its `outputs`, reissue and the admin commands read it.
It becomes JSON and comes back from JSON here only, so `summary.json`, the job store and
`ldct-node jobs --json` always agree. `ResultFolders` is the one place that knows the layout
of `<data_dir>/results`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict
from pydicom.dataset import Dataset

from config.settings import Settings
from inference.quantify import Quantification
from reporting.risk import RiskAssessment


class DicomRef(NamedTuple):
    """An object the node produced, by its SOP class, SOP instance and series UIDs."""

    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str

    @classmethod
    def of(cls, ds: Dataset) -> DicomRef:
        return cls(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))


class EngineInfo(BaseModel):
    """The segmentation engine that produced the labels."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    #: the algorithm name in the SEG and SR ("ldct-node cnn ldct-unet-open"); None in
    #: summaries written before engines had one: "ldct-node <name>" then
    algorithm: str | None = None

    @property
    def algorithm_name(self) -> str:
        return self.algorithm or f"ldct-node {self.name}"


class RiskSummary(BaseModel):
    """The prognostic risk as reported: computed, or not with what was missing."""

    model_config = ConfigDict(frozen=True)

    computed: bool
    probability: float | None
    category: str | None
    model: str
    calibration_status: str
    missing: list[str]
    assumed_absent: list[str]

    @classmethod
    def of(cls, risk: RiskAssessment) -> RiskSummary:
        return cls(
            computed=risk.computed,
            probability=risk.probability,
            category=risk.category,
            model=f"{risk.model_name} {risk.model_version}",
            calibration_status=risk.calibration_status,
            missing=list(risk.covariates_missing),
            assumed_absent=list(risk.covariates_assumed_absent),
        )


class ResultSummary(BaseModel):
    """What one analysis produced: measurements, risk, the objects written and their files.

    `outputs` are file names in the job's result folder, in the order they are sent;
    `supersedes` the SEGs and SRs of earlier results this one replaces; `reissue_of` the job
    whose report an amended SR replaces (None for a segmentation); `source_lossy` how the CT
    was lossy-compressed (None: it was not), which the SR says too.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    series_uid: str
    study_uid: str
    slices: int
    engine: EngineInfo
    quantification: Quantification
    risk: RiskSummary | None
    seg: DicomRef
    sr: DicomRef
    supersedes: list[DicomRef]
    outputs: list[str]
    timings: dict[str, float]
    reissue_of: int | None = None
    source_lossy: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (UID triples as lists); `reissue_of` only on an amended report."""
        return self.model_dump(mode="json", exclude={"reissue_of"} if self.reissue_of is None else None)

    def to_json(self, indent: int | None = None) -> str:
        return self.model_dump_json(indent=indent, exclude={"reissue_of"} if self.reissue_of is None else None)

    @classmethod
    def from_json(cls, text: str) -> ResultSummary:
        return cls.model_validate_json(text)


def rounded(quantification: Quantification, digits: int = 3) -> Quantification:
    """The measurements as reported (cm3 and % to `digits` decimals)."""
    return Quantification(**{k: round(float(v), digits) for k, v in quantification.as_dict().items()})


class ResultFolders:
    """Where results are written: `results/job-<id>` for a job's analysis, and a folder of its
    own for each amended report, so that purging one job never removes another's files."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "results"

    @classmethod
    def from_settings(cls, settings: Settings) -> ResultFolders:
        return cls(settings.node.data_dir)

    def for_job(self, job_id: int) -> Path:
        return self.root / f"job-{job_id}"

    def for_amended_report(self) -> Path:
        """A new, empty folder for one amended report."""
        folder = self.root / f"amended-{uuid.uuid4().hex[:16]}"
        folder.mkdir(parents=True, mode=0o700)
        return folder
