"""Independent validators for the node's DICOM outputs: dciodvfy and PixelMed, run side by side.

- dciodvfy (Debian dicom3tools) checks an object against the IOD definitions
  (`dciodvfy_report`; the node's outputs must give no "Error" lines).
- PixelMed (Debian pixelmed-apps, `pixelmed.jar`): `DicomInstanceValidator` checks the IOD of
  the SOP classes it knows (in the 2022 jar: Segmentation, Enhanced CT/MR and a few more, not
  Secondary Capture nor SR); `DicomSRValidator` checks an SR's IOD, its content item
  constraints and its templates (TID 1500 and what it includes).

`validation_errors(paths)` runs every validator that applies to each file, two at a time (a
JVM start compiles PixelMed's XSLT rules: 5-10 s per file), and returns one line per error;
tests assert it is empty. Recent JREs refuse PixelMed's rules unless the three XPath limits
are lifted (`-Djdk.xml.xpath...=0`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import structlog
from pydicom.dataset import Dataset

from reporting.dicom_file import write_dataset

log = structlog.get_logger(__name__)

DCIODVFY = "dciodvfy"


class ValidatorMissingError(RuntimeError):
    """dciodvfy is not installed (Debian/Ubuntu: `apt-get install dicom3tools`)."""


def dciodvfy_report(path_or_dataset: str | Path | Dataset) -> tuple[list[str], list[str]]:
    """Run dciodvfy; return (error lines, warning lines)."""
    executable = shutil.which(DCIODVFY)
    if executable is None:
        raise ValidatorMissingError("dciodvfy not found on PATH: install dicom3tools (apt-get install dicom3tools)")
    with tempfile.TemporaryDirectory(prefix="ldct-dciodvfy-") as tmp:
        if isinstance(path_or_dataset, Dataset):
            path = write_dataset(path_or_dataset, Path(tmp) / "object.dcm")
        else:
            path = Path(path_or_dataset)
            if not path.is_file():
                raise FileNotFoundError(f"no such DICOM file: {path}")
        # -new: use the current standard's rules (not retired ones); output goes to stderr.
        completed = subprocess.run(
            [executable, "-new", str(path)], capture_output=True, text=True, errors="replace", timeout=300, check=False
        )
    lines = (completed.stdout + completed.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    log.debug("dciodvfy", errors=len(errors), warnings=len(warnings))
    return errors, warnings


def dciodvfy_errors(path_or_dataset: str | Path | Dataset) -> list[str]:
    """Lines of dciodvfy output that start with "Error" (empty list: the object is valid)."""
    return dciodvfy_report(path_or_dataset)[0]


PIXELMED_JARS = (Path("/usr/share/java/pixelmed.jar"),)
JAVA_OPTIONS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",  # halves the start-up spent compiling XSLT
)
INSTANCE_VALIDATOR = "com.pixelmed.validate.DicomInstanceValidator"
SR_VALIDATOR = "com.pixelmed.validate.DicomSRValidator"
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def pixelmed_jar() -> Path | None:
    """The jar that pixelmed-apps / libpixelmed-java installs, if it and a JRE are here."""
    if shutil.which("java") is None:
        return None
    return next((jar for jar in PIXELMED_JARS if jar.is_file()), None)


needs_validators = pytest.mark.skipif(
    shutil.which("dciodvfy") is None or pixelmed_jar() is None,
    reason="validators not installed: apt-get install dicom3tools pixelmed-apps (and a JRE)",
)


@dataclass
class Report:
    """What one validator said about one file."""

    validator: str
    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)  # PixelMed: "Found Segmentation IOD", ...

    def error_lines(self) -> list[str]:
        return [f"{self.path.name}: {self.validator}: {line}" for line in self.errors]


def pixelmed(path: Path, validator: str = INSTANCE_VALIDATOR) -> Report:
    """Run one PixelMed validator; an exception, an internal error or a crash counts as an error."""
    jar = pixelmed_jar()
    if jar is None:
        raise RuntimeError("PixelMed not installed: apt-get install pixelmed-apps (and a JRE)")
    completed = subprocess.run(
        ["java", *JAVA_OPTIONS, "-cp", str(jar), validator, str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=600,
        check=False,
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    name = validator.rsplit(".", 1)[-1]
    report = Report(name, Path(path))
    for line in lines:
        if line.startswith("Found "):
            report.found.append(line.strip())
        elif line.startswith("Error") or "Internal Error" in line or "Exception" in line:
            report.errors.append(line.strip())
        elif line.startswith("Warning"):
            report.warnings.append(line.strip())
    if completed.returncode != 0:
        report.errors.append(f"exit status {completed.returncode}")
    return report


def dciodvfy(path: Path) -> Report:
    errors, warnings = dciodvfy_report(path)
    return Report("dciodvfy", Path(path), errors, warnings)


def reports(paths: list[Path]) -> list[Report]:
    """Every validator that applies to each file (PixelMed's SR validator for SR documents)."""
    jobs = []
    for path in map(Path, paths):
        jobs.append((dciodvfy, path, None))
        jobs.append((pixelmed, path, INSTANCE_VALIDATOR))
        sop_class = str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)
        if sop_class.startswith(SR_CLASS_PREFIX):
            jobs.append((pixelmed, path, SR_VALIDATOR))
    with ThreadPoolExecutor(max_workers=2) as pool:  # the JVMs are CPU-bound
        futures = [
            pool.submit(run, path) if extra is None else pool.submit(run, path, extra) for run, path, extra in jobs
        ]
        return [future.result() for future in futures]


def validation_errors(paths: list[Path]) -> list[str]:
    """Error lines of all validators over `paths` (empty: every validator accepts every file)."""
    return [line for report in reports(paths) for line in report.error_lines()]
