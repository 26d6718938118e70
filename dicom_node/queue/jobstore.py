"""The durable job store: series, jobs, dispatches, workers, clinical covariates, audit.

SQLAlchemy 2. SQLite (WAL) by default; PostgreSQL by URL. Claims are written to be safe on
both: a candidate is selected (`FOR UPDATE SKIP LOCKED` where the database supports it) and
then taken with a conditional UPDATE whose row count says who won, so two workers never run
the same job at once and a job whose lease expires goes back to the queue.

The schema is owned by Alembic migrations (`dicom_node/queue/migrations`): every process brings
the database to the newest revision when it opens the store (under a lock, so several
workers starting together do not race), and an upgrade keeps the queue.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, CursorResult, Engine, Result
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from dicom_node.receive.spool import pid_alive
from dicom_node.results import DicomRef, ResultSummary

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Job states
QUEUED, RUNNING, FAILED, DONE, DEAD = "queued", "running", "failed", "done", "dead"
JOB_STATES = (QUEUED, RUNNING, FAILED, DONE, DEAD)
# Dispatch states
PENDING, SENDING, SENT = "pending", "sending", "sent"
DISPATCH_STATES = (PENDING, SENDING, SENT, DEAD)
# Series outcomes
SERIES_QUEUED, SERIES_INELIGIBLE, SERIES_INCONSISTENT, SERIES_DUPLICATE = (
    "queued",
    "ineligible",
    "inconsistent",
    "identical re-send",
)
SERIES_NOT_PROCESSED = "not processed"  # a SOP class the node does not analyse, or a localizer
SERIES_NOT_SELECTED = "not selected"  # per-study selection preferred another series of the study


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes: read them back as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Base(DeclarativeBase):
    pass


class SeriesRecord(Base):
    """One evaluation of a received series (each completeness decision is kept)."""

    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(128), default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    instance_set_hash: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("series_uid", "instance_set_hash", name="uq_job_instance_set"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    instance_set_hash: Mapped[str] = mapped_column(String(64))
    instance_uids: Mapped[str] = mapped_column(Text)  # JSON list, in slice order when in_slice_order
    instance_count: Mapped[int] = mapped_column(Integer)
    in_slice_order: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    state: Mapped[str] = mapped_column(String(16), index=True, default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    superseded_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the job of another series of the study whose results this one's supersede (per-study selection)
    replaces_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)

    def result(self) -> ResultSummary | None:
        """What the job produced (None until it is done)."""
        return ResultSummary.from_json(self.summary) if self.summary else None

    def instance_uid_list(self) -> list[str]:
        """The SOP Instance UIDs to process: in slice order, as decided, when `in_slice_order`."""
        uids: list[str] = json.loads(self.instance_uids)
        return uids


class Dispatch(Base):
    __tablename__ = "dispatches"
    __table_args__ = (UniqueConstraint("job_id", "destination", name="uq_dispatch_job_destination"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True, default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Worker(Base):
    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    current_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ClinicalRecordRow(Base):
    """Clinical covariates imported by `ldct-node clinical import`, keyed as the CSV says."""

    __tablename__ = "clinical"
    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    data: Mapped[str] = mapped_column(Text)
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")  # JSON, UIDs and AE titles only


def worker_identity() -> str:
    """host:pid, so a restarted node can tell its own dead leases from live remote ones."""
    return f"{socket.gethostname()}:{os.getpid()}"


_OWNER_PID = re.compile(r":(\d+)(?:-[^:]*)?$")


def owner_pid(owner: str | None) -> int | None:
    """The process id in a lease owner `host:pid` or `host:pid-<thread>`; None if absent."""
    match = _OWNER_PID.search(owner or "")
    return int(match.group(1)) if match else None


# ---- schema migrations ---------------------------------------------------------------------
MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
INITIAL_REVISION = "0001"
_PG_MIGRATION_LOCK = 0x1DC7_0001  # pg_advisory_xact_lock key: one migrator at a time


class MigrationError(RuntimeError):
    """The database schema cannot be brought to the version this code needs."""


def _alembic_config(connection: Connection | None) -> AlembicConfig:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this code ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
    if head is None:
        raise MigrationError(f"no migrations in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: no schema or one made before migrations)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _migration_lock(engine: Engine, connection: Connection | None) -> Iterator[None]:
    """Serialise migrators: an advisory lock on PostgreSQL (taken in `connection`'s
    transaction), a lock file next to SQLite."""
    if engine.dialect.name == "postgresql" and connection is not None:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        yield
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the schema to `revision` (default: newest); returns (before, after).

    A database created by an older release without migration bookkeeping (tables present,
    no alembic_version) is stamped as the initial revision first, so its queue is kept.
    """
    from alembic.util.exc import CommandError

    try:
        if engine.dialect.name == "sqlite":
            # SQLite: the lock file must be held before the transaction starts.
            with _migration_lock(engine, None), engine.begin() as connection:
                return _upgrade(connection, revision)
        with engine.begin() as connection, _migration_lock(engine, connection):
            return _upgrade(connection, revision)
    except CommandError as exc:
        raise MigrationError(f"cannot migrate the job store to {revision!r}: {exc}") from exc


def _upgrade(connection: Connection, revision: str) -> tuple[str | None, str | None]:
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    before = MigrationContext.configure(connection).get_current_revision()
    config = _alembic_config(connection)
    if before is None and inspect(connection).has_table("jobs"):
        command.stamp(config, INITIAL_REVISION)
        before = INITIAL_REVISION
    command.upgrade(config, revision)
    after = MigrationContext.configure(connection).get_current_revision()
    return before, after


@dataclass
class QueueCounts:
    jobs: dict[str, int]
    dispatches: dict[str, int]


class JobStore:
    """All reads and writes of the node's durable state."""

    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        """Open the store; `upgrade` brings the schema to the newest migration first."""
        self.url = url
        self.engine: Engine = create_engine(url, future=True, **_engine_options(url))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade:
            migrate(self.engine)
        self.supports_skip_locked = self.engine.dialect.name == "postgresql"

    def schema_revision(self) -> str | None:
        return current_revision(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # ---- series and jobs -------------------------------------------------------------
    def record_series(
        self,
        *,
        series_uid: str,
        study_uid: str,
        calling_ae: str,
        description: str,
        instance_count: int,
        instance_set_hash: str,
        outcome: str,
        reason: str = "",
        job_id: int | None = None,
    ) -> int:
        with self.session() as s:
            row = SeriesRecord(
                series_uid=series_uid,
                study_uid=study_uid,
                calling_ae=calling_ae,
                description=description[:128],
                instance_count=instance_count,
                instance_set_hash=instance_set_hash,
                outcome=outcome,
                reason=reason,
                job_id=job_id,
            )
            s.add(row)
            s.flush()
            return row.id

    def known_instance_set(self, series_uid: str, instance_set_hash: str) -> bool:
        """True when this exact set of instances was already decided on (job or skip)."""
        with self.session() as s:
            found = s.scalar(
                select(func.count())
                .select_from(SeriesRecord)
                .where(
                    SeriesRecord.series_uid == series_uid,
                    SeriesRecord.instance_set_hash == instance_set_hash,
                    SeriesRecord.outcome != SERIES_DUPLICATE,
                )
            )
            return bool(found)

    def enqueue_job(
        self,
        *,
        series_uid: str,
        study_uid: str,
        instance_uids: list[str],
        instance_set_hash: str,
        max_attempts: int,
        replaces_job_id: int | None = None,
    ) -> int | None:
        """Queue a job for `instance_uids` in slice order (as the completeness decision sorted
        them); None when the same instance set already has one (identical re-send).
        `replaces_job_id`: the study's job of another series that this one supersedes."""
        with self.session() as s:
            exists = s.scalar(
                select(Job.id).where(Job.series_uid == series_uid, Job.instance_set_hash == instance_set_hash)
            )
            if exists is not None:
                return None
            job = Job(
                series_uid=series_uid,
                study_uid=study_uid,
                instance_uids=json.dumps(list(instance_uids)),
                in_slice_order=True,
                instance_count=len(instance_uids),
                instance_set_hash=instance_set_hash,
                state=QUEUED,
                replaces_job_id=replaces_job_id,
            )
            s.add(job)
            s.flush()
            return job.id

    def current_study_job(self, study_uid: str) -> Job | None:
        """The study's newest job that nothing supersedes and that is not dead: the series
        per-study selection chose last."""
        with self.session() as s:
            return s.scalar(
                select(Job)
                .where(Job.study_uid == study_uid, Job.superseded_by.is_(None), Job.state != DEAD)
                .order_by(Job.id.desc())
                .limit(1)
            )

    def claim_job(self, owner: str, lease_seconds: float) -> Job | None:
        """Take the oldest runnable job for `owner`, or None when the queue is empty."""
        now = utcnow()
        for _ in range(5):
            with self.session() as s:
                query = (
                    select(Job.id)
                    .where(Job.state.in_((QUEUED, FAILED)), Job.not_before <= now)
                    .order_by(Job.id)
                    .limit(1)
                )
                if self.supports_skip_locked:
                    query = query.with_for_update(skip_locked=True)
                job_id = s.scalar(query)
                if job_id is None:
                    return None
                taken = _changed(
                    s.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.state.in_((QUEUED, FAILED)))
                        .values(
                            state=RUNNING,
                            lease_owner=owner,
                            attempts=Job.attempts + 1,
                            lease_expires_at=now + timedelta(seconds=lease_seconds),
                            heartbeat_at=now,
                            started_at=now,
                        )
                    )
                )
                if taken:
                    return _row(s, Job, job_id)
        return None

    def heartbeat(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        """Extend a lease; False when the job is no longer ours (lease lost)."""
        now = utcnow()
        with self.session() as s:
            return bool(
                _changed(
                    s.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.state == RUNNING, Job.lease_owner == owner)
                        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
                    )
                )
            )

    def complete_job(
        self, job_id: int, owner: str, *, result_dir: str, summary: ResultSummary, destinations: list[str]
    ) -> bool:
        """Mark done and create one dispatch row per destination, in one transaction.

        Returns False (and changes nothing) when the lease was lost meanwhile: another worker
        owns the job now, and only one completion may count. The earlier results this job
        supersedes (same series, or the job it replaces) are marked so; a job superseded while
        it ran (its replacement finished first) is done without dispatches: a PACS gets only
        the newest results.
        """
        now = utcnow()
        with self.session() as s:
            done = _changed(
                s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == RUNNING, Job.lease_owner == owner)
                    .values(
                        state=DONE,
                        finished_at=now,
                        result_dir=result_dir,
                        error=None,
                        summary=summary.to_json(),
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                )
            )
            if not done:
                return False
            job = _row(s, Job, job_id)
            older = s.scalars(
                select(Job).where(
                    Job.series_uid == job.series_uid, Job.id < job_id, Job.state == DONE, Job.superseded_by.is_(None)
                )
            )
            for previous in older:
                previous.superseded_by = job_id
            replaced = s.get(Job, job.replaces_job_id) if job.replaces_job_id is not None else None
            if replaced is not None and replaced.superseded_by is None:
                replaced.superseded_by = job_id
            if job.superseded_by is None:
                for name in destinations:
                    s.add(Dispatch(job_id=job_id, destination=name, state=PENDING, next_try_at=now))
            return True

    def fail_job(
        self, job_id: int, owner: str, error: str, max_attempts: int, retry_delay_seconds: float = 30.0
    ) -> str | None:
        """Record a failure: back to the queue after a delay, or dead after max attempts."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.state != RUNNING or job.lease_owner != owner:
                return None
            job.error = error[:4000]
            job.lease_owner = None
            job.lease_expires_at = None
            job.finished_at = utcnow()
            if job.attempts >= max_attempts:
                job.state = DEAD
            else:
                job.state = FAILED
                job.not_before = utcnow() + timedelta(seconds=retry_delay_seconds * job.attempts)
            return job.state

    def requeue_expired_leases(self, max_attempts: int) -> list[int]:
        """Jobs whose worker vanished (lease expired) go back to the queue, or die."""
        now = utcnow()
        with self.session() as s:
            query = select(Job).where(Job.state == RUNNING, Job.lease_expires_at < now)
            if self.supports_skip_locked:  # another process may be releasing or heartbeating
                query = query.with_for_update(skip_locked=True)
            expired = s.scalars(query).all()
            return [self._release(job, "lease expired (worker stopped or crashed)", max_attempts) for job in expired]

    def requeue_own_dead_leases(self, max_attempts: int) -> list[int]:
        """At start: jobs leased by a dead process on this host are re-queued at once."""
        host = socket.gethostname()
        with self.session() as s:
            query = select(Job).where(Job.state == RUNNING, Job.lease_owner.like(f"{host}:%"))
            if self.supports_skip_locked:
                query = query.with_for_update(skip_locked=True)
            released = []
            for job in s.scalars(query).all():
                pid = owner_pid(job.lease_owner)
                if pid is not None and pid != os.getpid() and not pid_alive(pid):
                    released.append(self._release(job, "node restarted while running", max_attempts))
            return released

    @staticmethod
    def _release(job: Job, reason: str, max_attempts: int) -> int:
        job.error = reason
        job.lease_owner = None
        job.lease_expires_at = None
        job.state = DEAD if job.attempts >= max_attempts else QUEUED
        return job.id

    def retry_job(self, job_id: int) -> str:
        """`ldct-node retry`: re-queue a failed/dead job and revive its dead dispatches."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise KeyError(f"no job {job_id}")
            actions = []
            if job.state in (FAILED, DEAD):
                job.state, job.attempts, job.not_before = QUEUED, 0, utcnow()
                actions.append("job re-queued")
            for d in s.scalars(select(Dispatch).where(Dispatch.job_id == job_id, Dispatch.state.in_((DEAD, PENDING)))):
                d.state, d.next_try_at, d.created_at, d.attempts = PENDING, utcnow(), utcnow(), 0
                actions.append(f"dispatch to {d.destination} re-queued")
            return "; ".join(actions) or f"nothing to retry (job is {job.state})"

    def get_job(self, job_id: int) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[Job]:
        with self.session() as s:
            query = select(Job).order_by(Job.id.desc()).limit(limit)
            if state:
                query = query.where(Job.state == state)
            return list(s.scalars(query))

    def superseded_objects(self, job: Job) -> list[DicomRef]:
        """The SEGs and SRs of earlier finished jobs of the same series, and of the job of
        another series it replaces, which `job` supersedes."""
        with self.session() as s:
            same_series = (Job.series_uid == job.series_uid) & (Job.id < job.id)
            rows = s.scalars(
                select(Job).where(or_(same_series, Job.id == job.replaces_job_id), Job.state == DONE).order_by(Job.id)
            ).all()
            return [ref for row in rows if (result := row.result()) is not None for ref in (result.seg, result.sr)]

    # ---- amended reports (`ldct-node report JOB --reissue`) --------------------------------
    def reissuable_job(self, job_id: int) -> Job:
        """The job whose report may be amended now; ReissueRefused says why not."""
        with self.session() as s:
            return _reissuable(s.get(Job, job_id), job_id)

    def add_amended_report(
        self, job_id: int, *, summary: ResultSummary, result_dir: str, destinations: list[str]
    ) -> Job:
        """Record an amended report of `job_id` as a finished job of its own that supersedes
        it, with one dispatch per destination: all in one transaction, or nothing (ReissueRefused
        when the job was superseded, purged or changed meanwhile)."""
        now = utcnow()
        with self.session() as s:
            original = _reissuable(s.get(Job, job_id, with_for_update=True), job_id)
            amended_set = f"{original.instance_set_hash}:amended:{summary.sr.sop_instance_uid}"
            job = Job(
                series_uid=original.series_uid,
                study_uid=original.study_uid,
                instance_set_hash=hashlib.sha256(amended_set.encode()).hexdigest(),
                instance_uids=original.instance_uids,
                instance_count=original.instance_count,
                in_slice_order=original.in_slice_order,
                state=DONE,
                attempts=0,
                created_at=now,
                started_at=now,
                finished_at=now,
                result_dir=result_dir,
                summary=summary.to_json(),
            )
            s.add(job)
            s.flush()
            original.superseded_by = job.id
            for name in destinations:
                s.add(Dispatch(job_id=job.id, destination=name, state=PENDING, next_try_at=now))
            return job

    # ---- dispatch ----------------------------------------------------------------------
    def claim_dispatches(self, lease_seconds: float, limit: int = 10) -> list[Dispatch]:
        """Take due dispatches (pending and due, or sending with an expired lease)."""
        now = utcnow()
        claimed = []
        with self.session() as s:
            query = (
                select(Dispatch.id)
                .where(
                    or_(
                        (Dispatch.state == PENDING) & (Dispatch.next_try_at <= now),
                        (Dispatch.state == SENDING) & (Dispatch.lease_expires_at < now),
                    )
                )
                .order_by(Dispatch.id)
                .limit(limit)
            )
            if self.supports_skip_locked:
                query = query.with_for_update(skip_locked=True)
            for dispatch_id in s.scalars(query).all():
                taken = _changed(
                    s.execute(
                        update(Dispatch)
                        .where(
                            Dispatch.id == dispatch_id,
                            or_(
                                Dispatch.state == PENDING,
                                (Dispatch.state == SENDING) & (Dispatch.lease_expires_at < now),
                            ),
                        )
                        .values(state=SENDING, lease_expires_at=now + timedelta(seconds=lease_seconds))
                    )
                )
                if taken:
                    claimed.append(_row(s, Dispatch, dispatch_id))
        return claimed

    def dispatch_sent(self, dispatch_id: int) -> None:
        with self.session() as s:
            d = _row(s, Dispatch, dispatch_id)
            d.state, d.sent_at, d.last_error, d.attempts = SENT, utcnow(), None, d.attempts + 1

    def dispatch_failed(
        self, dispatch_id: int, error: str, *, first_retry: float, max_retry: float, max_age_hours: float
    ) -> str:
        """Exponential backoff; dead once the dispatch is older than the maximum age."""
        now = utcnow()
        with self.session() as s:
            d = _row(s, Dispatch, dispatch_id)
            d.attempts += 1
            d.last_error = error[:2000]
            if now - _aware(d.created_at) > timedelta(hours=max_age_hours):
                d.state = DEAD
            else:
                d.state = PENDING
                delay = min(first_retry * 2 ** (d.attempts - 1), max_retry)
                d.next_try_at = now + timedelta(seconds=delay)
            return d.state

    def dispatches_for(self, job_id: int) -> list[Dispatch]:
        with self.session() as s:
            return list(s.scalars(select(Dispatch).where(Dispatch.job_id == job_id).order_by(Dispatch.id)))

    # ---- workers, status, audit, clinical -----------------------------------------------
    def worker_heartbeat(self, name: str, current_job_id: int | None) -> None:
        with self.session() as s:
            row = s.get(Worker, name)
            if row is None:
                s.add(Worker(name=name, current_job_id=current_job_id))
            else:
                row.heartbeat_at, row.current_job_id = utcnow(), current_job_id

    def workers(self) -> list[Worker]:
        with self.session() as s:
            return list(s.scalars(select(Worker).order_by(Worker.heartbeat_at.desc())))

    def counts(self) -> QueueCounts:
        with self.session() as s:
            jobs = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            disp = dict(s.execute(select(Dispatch.state, func.count()).group_by(Dispatch.state)).all())
        return QueueCounts(
            jobs={k: jobs.get(k, 0) for k in JOB_STATES}, dispatches={k: disp.get(k, 0) for k in DISPATCH_STATES}
        )

    def recent_series(self, limit: int = 20) -> list[SeriesRecord]:
        with self.session() as s:
            return list(s.scalars(select(SeriesRecord).order_by(SeriesRecord.id.desc()).limit(limit)))

    def last_errors(self, limit: int = 5) -> list[tuple[str, int, str]]:
        with self.session() as s:
            jobs = s.execute(
                select(Job.id, Job.error).where(Job.error.is_not(None)).order_by(Job.id.desc()).limit(limit)
            ).all()
            disp = s.execute(
                select(Dispatch.job_id, Dispatch.last_error)
                .where(Dispatch.last_error.is_not(None))
                .order_by(Dispatch.id.desc())
                .limit(limit)
            ).all()
        return [("job", j, e or "") for j, e in jobs] + [("dispatch", j, e or "") for j, e in disp]

    def audit(self, kind: str, *, series_uid: str | None = None, job_id: int | None = None, **detail: Any) -> None:
        with self.session() as s:
            s.add(AuditEvent(kind=kind, series_uid=series_uid, job_id=job_id, detail=json.dumps(detail, default=str)))

    def audit_events(self, limit: int = 100, series_uid: str | None = None) -> list[AuditEvent]:
        with self.session() as s:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if series_uid:
                query = query.where(AuditEvent.series_uid == series_uid)
            return list(s.scalars(query))

    def put_clinical(self, key: str, data: dict[str, Any]) -> None:
        with self.session() as s:
            row = s.get(ClinicalRecordRow, key)
            if row is None:
                s.add(ClinicalRecordRow(key=key, data=json.dumps(data)))
            else:
                row.data, row.imported_at = json.dumps(data), utcnow()

    def get_clinical(self, key: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(ClinicalRecordRow, key)
            record: dict[str, Any] | None = json.loads(row.data) if row else None
            return record

    def purge_finished_before(self, cutoff: datetime) -> list[Job]:
        """Finished jobs older than the retention cutoff whose dispatches are all settled."""
        with self.session() as s:
            jobs = s.scalars(
                select(Job).where(Job.state.in_((DONE, DEAD)), Job.finished_at < cutoff, Job.result_dir.is_not(None))
            ).all()
            settled = []
            for job in jobs:
                open_dispatch = s.scalar(
                    select(func.count())
                    .select_from(Dispatch)
                    .where(Dispatch.job_id == job.id, Dispatch.state.in_((PENDING, SENDING)))
                )
                if not open_dispatch:
                    settled.append(job)
            return settled

    def mark_purged(self, job_id: int) -> None:
        with self.session() as s:
            _row(s, Job, job_id).result_dir = None

    def result_dir_in_use(self, result_dir: str, *, other_than: int) -> bool:
        """Whether another job that is not purged keeps its results in `result_dir` (amended
        reports of earlier releases wrote into the original job's folder)."""
        with self.session() as s:
            return bool(
                s.scalar(
                    select(func.count()).select_from(Job).where(Job.result_dir == result_dir, Job.id != other_than)
                )
            )

    def spooled_series_expired(self, series_uid: str, cutoff: datetime) -> bool:
        """Whether a series' spooled images may go: last decided on before `cutoff`, and no job
        of it still needs them (one not finished, or finished with its results kept: a reissue
        reads the images). A series never decided on is kept: it is waiting for its decision."""
        with self.session() as s:
            last = s.scalar(select(func.max(SeriesRecord.decided_at)).where(SeriesRecord.series_uid == series_uid))
            if last is None or _aware(last) >= cutoff:
                return False
            needed = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.series_uid == series_uid,
                    or_(Job.state.in_((QUEUED, RUNNING, FAILED)), Job.result_dir.is_not(None)),
                )
            )
            return not needed


class ReissueRefused(RuntimeError):
    """A job whose report cannot be amended; the message says why."""


def _reissuable(job: Job | None, job_id: int) -> Job:
    """`job` if its report may be amended now; ReissueRefused says why not."""
    if job is None:
        raise ReissueRefused(f"no job {job_id}")
    if job.state != DONE or not job.result_dir:
        raise ReissueRefused(
            f"job {job_id} is {job.state}{' (results purged)' if not job.result_dir else ''}:"
            " only a finished job with its results can be reissued"
        )
    if job.superseded_by:
        raise ReissueRefused(f"job {job_id} was superseded by job {job.superseded_by}: reissue that one")
    return job


def _changed(result: Result[Any]) -> int:
    """Rows an UPDATE changed: who won a conditional update."""
    return cast("CursorResult[Any]", result).rowcount


_Row = TypeVar("_Row", bound=Base)


def _row(session: Session, model: type[_Row], key: object) -> _Row:
    """A row that must exist (this transaction just read or wrote it)."""
    row = session.get(model, key)
    if row is None:
        raise LookupError(f"no {model.__tablename__} row {key}")
    return row


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {"pool_pre_ping": True}


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
