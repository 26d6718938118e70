"""Job store test helpers: a finished job's summary without a real analysis, and a database
with a queue as releases before migrations made it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import create_engine, text

from dicom_node.queue.jobstore import INITIAL_REVISION, migrate
from dicom_node.results import DicomRef, EngineInfo, ResultSummary
from inference.quantify import Quantification

SEG_STORAGE, SR_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def result_summary(series_uid: str = "1.2.3", n: int = 1) -> ResultSummary:
    """A summary whose SEG and SR UIDs end in `n`, so that two of them can be told apart."""
    return ResultSummary(
        series_uid=series_uid,
        study_uid="1.2",
        slices=2,
        engine=EngineInfo(name="threshold", version="test"),
        quantification=Quantification(*(float(n),) * 8),
        risk=None,
        seg=DicomRef(SEG_STORAGE, f"1.9.1.{n}", f"1.9.2.{n}"),
        sr=DicomRef(SR_STORAGE, f"1.9.3.{n}", f"1.9.4.{n}"),
        supersedes=[],
        outputs=["seg.dcm", "sr.dcm"],
        timings={"load_s": 0.1},
    )


def create_legacy_schema(url: str) -> None:
    """The schema of the first release, without Alembic's bookkeeping: the tables as they
    were before migrations existed."""
    engine = create_engine(url)
    try:
        migrate(engine, INITIAL_REVISION)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
    finally:
        engine.dispose()


def enqueue_legacy_job(url: str, series_uid: str, instance_set_hash: str) -> int:
    """A queued job written as the first release wrote it (its columns only, UIDs sorted)."""
    engine = create_engine(url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as connection:
            insert = text(
                "INSERT INTO jobs (series_uid, study_uid, instance_set_hash, instance_uids,"
                " instance_count, state, attempts, not_before, created_at)"
                " VALUES (:series, '1.2', :digest, :uids, 2, 'queued', 0, :now, :now) RETURNING id"
            )
            values = {"series": series_uid, "digest": instance_set_hash, "uids": '["1.1", "1.2"]', "now": now}
            return int(connection.execute(insert, values).scalar_one())
    finally:
        engine.dispose()
