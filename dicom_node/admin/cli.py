"""`ldct-node`: the node, its workers and the admin commands.

Every command takes `--config FILE` (or LDCT_CONFIG) and prints readable tables; `--json`
gives machine-readable output. Errors are one clear line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.settings import ConfigError, DicomWebDestination, DimseDestination, Settings, load_settings
from dicom_node.logging import configure_logging
from inference.commands import evaluate_command, train_command
from reporting.commands import risk_app

if TYPE_CHECKING:  # the commands import what they need when they run: a fast start
    from config.settings import Destination
    from dicom_node.queue.jobstore import Job, JobStore
    from dicom_node.results import ResultSummary
    from inference.quantify import Quantification

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ldct-node: COVID-19 lung lesion quantification on low-dose chest CT, as a DICOM node.",
)
config_app = typer.Typer(no_args_is_help=True, help="Check configuration files.")
clinical_app = typer.Typer(no_args_is_help=True, help="Clinical covariates for the risk model.")
app.add_typer(config_app, name="config")
app.add_typer(clinical_app, name="clinical")
db_app = typer.Typer(no_args_is_help=True, help="Job store schema (Alembic migrations).")
app.add_typer(db_app, name="db")
console = Console()
err_console = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", envvar="LDCT_CONFIG", help="TOML configuration file.")
JsonOption = typer.Option(False, "--json", help="Machine-readable JSON output.")


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with one line on stderr and a non-zero exit."""
    raise failure(message, code)


def failure(message: str, code: int = 1) -> typer.Exit:
    """`fail`'s exit, to raise from the exception that caused it."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def settings_from(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc), 2)
    configure_logging(settings.logging.format, settings.logging.level)
    return settings


def open_store(settings: Settings) -> JobStore:
    from dicom_node.node import prepare_data_dir
    from dicom_node.queue.jobstore import JobStore

    prepare_data_dir(settings.node.data_dir)
    return JobStore(settings.database_url)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _wait_for_signal(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


# ---- running ------------------------------------------------------------------------------
@app.command()
def serve(
    config: Path | None = ConfigOption,
    no_workers: bool = typer.Option(False, "--no-workers", help="No workers here: they run elsewhere."),
) -> None:
    """Run the node: Store SCP, completeness sweeps, workers and (by default) dispatch to PACS."""
    from dicom_node.node import Node

    settings = settings_from(config)
    try:
        node = Node(settings, workers=0 if no_workers else None)
        node.start()
    except OSError as exc:
        fail(f"cannot start the node: {exc}")
    stop = threading.Event()
    try:
        _wait_for_signal(stop)
    finally:
        node.stop()


@app.command()
def worker(
    config: Path | None = ConfigOption, count: int = typer.Option(1, help="Worker threads in this process.")
) -> None:
    """Run workers only (a GPU host), against the shared job store and spool; they also send
    results when dispatch.run_by is "worker"."""
    from dicom_node.node import Node

    settings = settings_from(config)
    node = Node(settings, workers=count, receive=False)
    node.start()
    stop = threading.Event()
    try:
        _wait_for_signal(stop)
    finally:
        node.stop()


@db_app.command("upgrade")
def db_upgrade(
    config: Path | None = ConfigOption,
    revision: str = typer.Option("head", help="Target revision (default: the newest)."),
) -> None:
    """Bring the job store schema to the newest revision; the queue is kept."""
    from dicom_node.queue.jobstore import JobStore, MigrationError, migrate

    settings = settings_from(config)
    from dicom_node.node import prepare_data_dir

    prepare_data_dir(settings.node.data_dir)
    store = JobStore(settings.database_url, upgrade=False)
    try:
        before, after = migrate(store.engine, revision)
    except MigrationError as exc:
        fail(str(exc))
    finally:
        store.close()
    console.print(f"job store schema: {before or 'empty'} -> {after}", highlight=False)


@db_app.command("current")
def db_current(config: Path | None = ConfigOption) -> None:
    """Show the schema revision of the job store and the newest one this release ships."""
    from dicom_node.queue.jobstore import JobStore, head_revision

    settings = settings_from(config)
    from dicom_node.node import prepare_data_dir

    prepare_data_dir(settings.node.data_dir)
    store = JobStore(settings.database_url, upgrade=False)
    try:
        console.print(f"database: {store.schema_revision() or 'none'}; newest: {head_revision()}", highlight=False)
    finally:
        store.close()


# ---- queue inspection ----------------------------------------------------------------------
@app.command()
def status(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Queue counts by state, workers and their heartbeats, recent series, last errors, free disk."""
    from dicom_node.queue.jobstore import DISPATCH_STATES

    settings = settings_from(config)
    store = open_store(settings)
    counts = store.counts()
    workers = store.workers()
    series = store.recent_series(20)
    errors = store.last_errors()
    free = shutil.disk_usage(settings.node.data_dir).free
    if as_json:
        print(
            json.dumps(
                {
                    "jobs": counts.jobs,
                    "dispatches": counts.dispatches,
                    "free_disk_bytes": free,
                    "workers": [
                        {"name": w.name, "heartbeat_at": _when(w.heartbeat_at), "current_job": w.current_job_id}
                        for w in workers
                    ],
                    "recent_series": [
                        {
                            "series_uid": s.series_uid,
                            "study_uid": s.study_uid,
                            "description": s.description,
                            "decided_at": _when(s.decided_at),
                            "outcome": s.outcome,
                            "reason": s.reason,
                            "instances": s.instance_count,
                            "job_id": s.job_id,
                        }
                        for s in series
                    ],
                    "last_errors": [{"kind": k, "job_id": j, "error": e} for k, j, e in errors],
                },
                indent=2,
            )
        )
        return
    table = Table(title="Queue")
    for name in ("what", *counts.jobs.keys()):
        table.add_column(name)
    table.add_row("jobs", *(str(v) for v in counts.jobs.values()))
    console.print(table)
    console.print("dispatches: " + ", ".join(f"{k} {counts.dispatches.get(k, 0)}" for k in DISPATCH_STATES))
    console.print(f"free disk in data dir: {free / 2**30:.1f} GiB")
    wt = Table(title="Workers")
    for col in ("name", "last heartbeat (UTC)", "current job"):
        wt.add_column(col)
    for w in workers:
        wt.add_row(w.name, _when(w.heartbeat_at), str(w.current_job_id or "-"))
    console.print(wt)
    st = Table(title="Recent series decisions")
    for col in ("series UID", "description", "instances", "outcome", "reason", "job"):
        st.add_column(col)
    for s in series:
        st.add_row(
            s.series_uid, s.description or "-", str(s.instance_count), s.outcome, s.reason or "-", str(s.job_id or "-")
        )
    console.print(st)
    for kind, job_id, error in errors:
        console.print(f"[yellow]last error[/yellow] {kind} of job {job_id}: {error}", highlight=False)


@app.command()
def health(
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
    stale_seconds: float = typer.Option(120, help="A worker heartbeat older than this is stale."),
    destinations: bool = typer.Option(
        False, "--destinations", help="Also check every destination (C-ECHO, or a QIDO-RS query for DICOMweb)."
    ),
) -> None:
    """Health check for monitoring: exit 0 when healthy, 1 otherwise (one line per check)."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_node.dispatch.dimse import echo as c_echo
    from dicom_node.dispatch.dispatcher import check_destination
    from dicom_node.dispatch.sender import SendError
    from dicom_node.queue.jobstore import MigrationError, utcnow
    from dicom_node.tls import TLSError, self_check_tls

    settings = settings_from(config)
    checks: list[tuple[str, bool, str]] = []
    try:
        store = open_store(settings)
        counts = store.counts()
        checks.append(
            (
                "job store",
                True,
                (
                    f"{settings.database_url.split('://')[0]}, {counts.jobs['queued']} queued, "
                    f"{counts.jobs['dead']} dead jobs, {counts.dispatches['dead']} dead dispatches"
                ),
            )
        )
        fresh = [
            w
            for w in store.workers()
            if (utcnow() - w.heartbeat_at.replace(tzinfo=w.heartbeat_at.tzinfo or UTC)).total_seconds() < stale_seconds
        ]
        checks.append(
            (
                "workers",
                bool(fresh) or counts.jobs["queued"] == 0,
                f"{len(fresh)} with a heartbeat in the last {stale_seconds:.0f} s",
            )
        )
    except (SQLAlchemyError, MigrationError, OSError) as exc:  # the database is down, refuses or is too new
        checks.append(("job store", False, f"{type(exc).__name__}: {exc}"))
    free_mb = shutil.disk_usage(settings.node.data_dir).free / 2**20 if Path(settings.node.data_dir).exists() else 0
    checks.append(
        (
            "disk",
            free_mb >= settings.node.min_free_disk_mb,
            f"{free_mb:.0f} MB free, threshold {settings.node.min_free_disk_mb} MB",
        )
    )
    host = "127.0.0.1" if settings.node.bind_address in ("0.0.0.0", "") else settings.node.bind_address
    try:
        c_echo(
            host,
            settings.node.port,
            settings.node.ae_title,
            calling_ae=settings.node.ae_title,
            timeout=5,
            tls=self_check_tls(settings),
        )
        checks.append(("store scp", True, f"C-ECHO {settings.node.ae_title}@{host}:{settings.node.port} answered"))
    except SendError as exc:
        checks.append(("store scp", False, str(exc)))
    if settings.metrics.port:
        checks.append(_receivers_check(settings))
    if destinations:
        for d in settings.destinations:
            try:
                checks.append((f"destination {d.name}", True, check_destination(settings, d, timeout=5)))
            except (SendError, TLSError) as exc:
                checks.append((f"destination {d.name}", False, str(exc)))
    healthy = all(ok for _, ok, _ in checks)
    if as_json:
        print(
            json.dumps(
                {"healthy": healthy, "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in checks]}, indent=2
            )
        )
    else:
        for name, ok, detail in checks:
            console.print(f"{'[green]ok[/green]' if ok else '[red]FAIL[/red]'}  {name}: {detail}", highlight=False)
    if not healthy:
        raise typer.Exit(1)


def _receivers_check(settings: Settings) -> tuple[str, bool, str]:
    """Receiving processes up and restarts so far, read from the node's metrics endpoint."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from dicom_node.receive.receivers import receive_process_count

    host = "127.0.0.1" if settings.metrics.bind_address in ("0.0.0.0", "") else settings.metrics.bind_address
    url = f"http://{host}:{settings.metrics.port}/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError as exc:
        return "receiving processes", False, f"metrics endpoint {url} not answering: {exc}"
    values = {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}
    expected = receive_process_count(settings.node.receive_processes)
    up, restarts = int(values.get("ldct_receive_processes", 0)), int(values.get("ldct_receiver_restarts_total", 0))
    return (
        "receiving processes",
        up == expected,
        f"{up} of {expected} up, {restarts} restarted since the node started",
    )


@app.command()
def jobs(
    config: Path | None = ConfigOption,
    state: str | None = typer.Option(None, help="queued, running, failed, done or dead."),
    limit: int = 50,
    as_json: bool = JsonOption,
) -> None:
    """List jobs, newest first."""
    from dicom_node.queue.jobstore import JOB_STATES

    if state and state not in JOB_STATES:
        fail(f"unknown state {state!r}; choose one of {', '.join(JOB_STATES)}", 2)
    store = open_store(settings_from(config))
    rows = store.list_jobs(state, limit)
    if as_json:
        print(json.dumps([_job_dict(store, j) for j in rows], indent=2))
        return
    table = Table(title="Jobs")
    for col in ("id", "state", "attempts", "series UID", "instances", "created (UTC)", "lesion %", "error"):
        table.add_column(col)
    for j in rows:
        result = j.result()
        table.add_row(
            str(j.id),
            j.state + (" (superseded)" if j.superseded_by else ""),
            str(j.attempts),
            j.series_uid,
            str(j.instance_count),
            _when(j.created_at),
            f"{result.quantification.lesion_pct:.1f}" if result else "-",
            (j.error or "")[:60],
        )
    console.print(table)


def _job_dict(store: JobStore, job: Job) -> dict[str, Any]:
    result = job.result()
    return {
        "id": job.id,
        "state": job.state,
        "attempts": job.attempts,
        "series_uid": job.series_uid,
        "study_uid": job.study_uid,
        "instances": job.instance_count,
        "created_at": _when(job.created_at),
        "finished_at": _when(job.finished_at),
        "error": job.error,
        "superseded_by": job.superseded_by,
        "replaces_job": job.replaces_job_id,
        "lease_owner": job.lease_owner,
        "result_dir": job.result_dir,
        "summary": result.as_dict() if result else {},
        "dispatches": [
            {
                "destination": d.destination,
                "state": d.state,
                "attempts": d.attempts,
                "next_try_at": _when(d.next_try_at),
                "sent_at": _when(d.sent_at),
                "last_error": d.last_error,
            }
            for d in store.dispatches_for(job.id)
        ],
    }


@app.command()
def show(job_id: int, config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Everything about one job: state, results, dispatches."""
    store = open_store(settings_from(config))
    job = store.get_job(job_id)
    if job is None:
        fail(f"no job {job_id}")
    info = _job_dict(store, job)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for key in (
        "id",
        "state",
        "attempts",
        "series_uid",
        "study_uid",
        "instances",
        "created_at",
        "finished_at",
        "error",
        "superseded_by",
        "replaces_job",
        "result_dir",
    ):
        console.print(f"{key:>14}: {info[key]}", highlight=False)
    summary = job.result()
    if summary is not None:
        q = summary.quantification
        console.print(f"{'lung':>14}: {q.lung_cm3:.1f} cm3")
        for name, volume, extent in (
            ("ggo", q.ggo_cm3, q.ggo_pct),
            ("consolidation", q.consolidation_cm3, q.consolidation_pct),
            ("lesion", q.lesion_cm3, q.lesion_pct),
        ):
            console.print(f"{name:>14}: {volume:.1f} cm3, {extent:.2f} % of lung")
        if summary.risk:
            console.print(f"{'risk':>14}: {summary.risk.model_dump()}", highlight=False)
        if summary.source_lossy:
            console.print(
                f"{'source':>14}: [yellow]lossy-compressed[/yellow] ({summary.source_lossy}); said in the SR",
                highlight=False,
            )
        console.print(f"{'timings':>14}: {summary.timings}", highlight=False)
    for d in info["dispatches"]:
        console.print(
            f"{'dispatch':>14}: {d['destination']} {d['state']} attempts={d['attempts']} "
            f"next={d['next_try_at']} sent={d['sent_at']} error={d['last_error']}",
            highlight=False,
        )


@app.command()
def report(
    job_id: int,
    reissue: bool = typer.Option(
        False, "--reissue", help="Send an amended SR (risk recomputed with the covariates known now)."
    ),
    config: Path | None = ConfigOption,
) -> None:
    """Reissue a job's report after clinical covariates arrived (amended SR supersedes the old one)."""
    from dicom_node.admin.reissue import reissue_report
    from dicom_node.queue.jobstore import ReissueRefused
    from dicom_node.work.pipeline import ReportOptions

    if not reissue:
        fail("nothing to do: use --reissue to send an amended SR", 2)
    settings = settings_from(config)
    store = open_store(settings)
    try:
        new_job = reissue_report(settings, store, job_id, ReportOptions.from_settings(settings))
    except ReissueRefused as exc:
        fail(str(exc))
    result = new_job.result()
    risk = result.risk if result else None
    state = (
        f"{100 * risk.probability:.1f} % ({risk.category})"
        if risk and risk.computed and risk.probability is not None
        else "not computed"
    )
    console.print(
        f"amended SR written as job {new_job.id} (supersedes job {job_id}); risk {state}; "
        f"queued for {len(settings.destinations)} destination(s): the running node sends it",
        highlight=False,
    )


@app.command()
def retry(job_id: int, config: Path | None = ConfigOption) -> None:
    """Re-queue a failed or dead job and revive its dead dispatches."""
    store = open_store(settings_from(config))
    try:
        console.print(store.retry_job(job_id))
    except KeyError:
        fail(f"no job {job_id}")


@app.command()
def audit(
    config: Path | None = ConfigOption,
    series: str | None = typer.Option(None, help="Only this series UID."),
    limit: int = 100,
    as_json: bool = JsonOption,
) -> None:
    """Audit trail: who sent which series when, which job produced what, where it went."""
    store = open_store(settings_from(config))
    events = store.audit_events(limit, series)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "at": _when(e.at),
                        "kind": e.kind,
                        "series_uid": e.series_uid,
                        "job_id": e.job_id,
                        "detail": json.loads(e.detail),
                    }
                    for e in events
                ],
                indent=2,
            )
        )
        return
    table = Table(title="Audit")
    for col in ("at (UTC)", "event", "series UID", "job", "detail"):
        table.add_column(col)
    for e in events:
        table.add_row(_when(e.at), e.kind, e.series_uid or "-", str(e.job_id or "-"), e.detail)
    console.print(table)


# ---- network tools --------------------------------------------------------------------------
def _configured(settings: Settings, target: str) -> Destination | None:
    return next((d for d in settings.destinations if d.name == target), None)


def _resolve_peer(settings: Settings, target: str) -> tuple[str, int, str]:
    """A configured DIMSE destination's name, or host:port[:AE]."""
    configured = _configured(settings, target)
    if isinstance(configured, DimseDestination):
        return configured.host, configured.port, configured.ae_title
    parts = target.split(":")
    if configured is None and len(parts) in (2, 3) and parts[1].isdigit():
        return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "ANY-SCP"
    fail(f"{target!r} is neither a configured DIMSE destination nor host:port[:AE_TITLE]", 2)


@app.command()
def echo(
    destination: str = typer.Argument(..., help="Destination name or host:port[:AE_TITLE]."),
    config: Path | None = ConfigOption,
) -> None:
    """Check a destination answers: C-ECHO, or for a DICOMweb destination a QIDO-RS query."""
    from dicom_node.dispatch.dimse import echo as c_echo
    from dicom_node.dispatch.dispatcher import check_destination
    from dicom_node.dispatch.sender import SendError
    from dicom_node.tls import TLSError

    settings = settings_from(config)
    configured = _configured(settings, destination)
    try:
        if configured is not None:
            console.print(check_destination(settings, configured), highlight=False)
            return
        host, port, ae_title = _resolve_peer(settings, destination)
        c_echo(host, port, ae_title, calling_ae=settings.node.ae_title)
    except (SendError, TLSError) as exc:
        fail(str(exc))
    console.print(f"C-ECHO {ae_title}@{host}:{port}: success")


@app.command()
def send(
    path: Path = typer.Argument(..., exists=True, help="A DICOM file or a folder (searched recursively)."),
    to: str = typer.Option(..., "--to", help="Destination name or host:port[:AE_TITLE]."),
    config: Path | None = ConfigOption,
) -> None:
    """Push DICOM files to a peer: C-STORE, or STOW-RS to a DICOMweb destination."""
    from dicom_node.dispatch.dimse import send_files
    from dicom_node.dispatch.dispatcher import sender_for
    from dicom_node.dispatch.sender import SendError
    from dicom_node.tls import TLSError, named_destination_tls

    settings = settings_from(config)
    configured = _configured(settings, to)
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    )
    if not files:
        fail(f"no files in {path}")
    with _progress() as progress:
        try:
            if isinstance(configured, DicomWebDestination):
                task = progress.add_task(f"STOW-RS to {configured.url}", total=len(files))
                result = sender_for(settings, configured)(files)
                progress.update(task, completed=len(files))
            else:
                host, port, ae_title = _resolve_peer(settings, to)
                task = progress.add_task(f"C-STORE to {ae_title}@{host}:{port}", total=len(files))
                result = send_files(
                    files,
                    host,
                    port,
                    ae_title,
                    calling_ae=settings.node.ae_title,
                    progress=lambda done, total: progress.update(task, completed=done),
                    tls=named_destination_tls(settings, to),
                )
        except (SendError, TLSError) as exc:
            fail(str(exc))
        except Exception as exc:  # an unreadable file, or anything else: one line, no traceback
            raise failure(f"cannot send: {exc}") from exc
    console.print(f"sent {result.sent} of {len(files)}")
    for name, why in result.failed[:20]:
        console.print(f"  failed {name}: {why}", highlight=False)
    if result.failed:
        raise typer.Exit(1)


# ---- offline analysis -----------------------------------------------------------------------
@app.command()
def segment(
    path: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of one CT series."),
    out: Path = typer.Option(..., "--out", help="Folder for SEG, SR, key images and summary.json."),
    config: Path | None = ConfigOption,
    engine: str | None = typer.Option(None, help="cnn or threshold (default: from config)."),
    as_json: bool = JsonOption,
) -> None:
    """Analyse a series folder offline: SEG + SR files and a summary, no network."""
    from dicom_node.work.pipeline import ReportOptions, analyse_series
    from inference.engines import UnknownEngineError, get_engine
    from inference.volume import SeriesError

    settings = settings_from(config)
    try:
        seg_engine = get_engine(
            engine or settings.inference.engine, settings.inference.device, weights=settings.inference.weights
        )
    except (UnknownEngineError, RuntimeError) as exc:
        fail(str(exc), 2)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    with _progress() as progress:
        task = progress.add_task("segmenting slices", total=None)
        try:
            summary = analyse_series(
                files,
                out,
                engine=seg_engine,
                options=ReportOptions.from_settings(settings),
                progress=lambda stage, done, total: progress.update(task, completed=done, total=total),
            )
        except SeriesError as exc:
            fail(f"not a usable series: {exc}")
    if as_json:
        print(json.dumps(summary.as_dict(), indent=2))
        return
    print_summary(summary)


def print_summary(summary: ResultSummary, truth: Quantification | None = None) -> None:
    """The measurements (next to the true volumes, for the demo's synthetic series), risk and files."""
    table = Table(title=f"{summary.slices} slices, engine {summary.engine.name} {summary.engine.version}")
    for col in ("", "volume (cm3)", "extent (% of lung)", *(("true volume (cm3)",) if truth else ())):
        table.add_column(col)
    rows = [
        ("lung", "lung_cm3", None),
        ("normal lung", "normal_lung_cm3", None),
        ("ggo", "ggo_cm3", "ggo_pct"),
        ("consolidation", "consolidation_cm3", "consolidation_pct"),
        ("lesion", "lesion_cm3", "lesion_pct"),
    ]
    measured = summary.quantification.as_dict()
    for name, volume_key, pct_key in rows:
        table.add_row(
            name,
            f"{measured[volume_key]:.1f}",
            f"{measured[pct_key]:.2f}" if pct_key else "-",
            *((f"{truth.as_dict()[volume_key]:.1f}",) if truth else ()),
        )
    console.print(table)
    risk = summary.risk
    if risk:
        if risk.computed and risk.probability is not None:
            console.print(
                f"risk of severe course: {100 * risk.probability:.1f} % ({risk.category}), "
                f"{risk.model}, {risk.calibration_status}",
                highlight=False,
            )
        else:
            console.print(f"risk not computed; missing: {', '.join(risk.missing)}", highlight=False)
    console.print(f"series {summary.series_uid}", highlight=False)
    console.print(f"outputs: {', '.join(summary.outputs)}", highlight=False)
    console.print("timings (s): " + ", ".join(f"{k[:-2]} {v:.2f}" for k, v in summary.timings.items()), highlight=False)


@app.command()
def demo(
    workdir: Path = typer.Option(Path("ldct-demo"), help="Folder for the demo's data, PACS inbox and config."),
    port: int = typer.Option(0, help="Node port (0: a free one)."),
    engine: str | None = typer.Option(None, help="cnn or threshold (default: cnn)."),
    weights: str | None = typer.Option(None, help="CNN weight set: open or noncommercial (default: the default set)."),
) -> None:
    """Push a synthetic low-dose chest CT through a node it starts, end to end, and print the result."""
    from dicom_node.admin.demo import run_demo

    configure_logging("console", "warning")
    try:
        summary, truth = run_demo(workdir, port=port, engine=engine, weights=weights, console=err_console)
    except Exception as exc:  # whatever failed: one line, no traceback
        raise failure(f"demo failed: {exc}") from exc
    print_summary(summary, truth)


# ---- configuration and clinical data --------------------------------------------------------
@config_app.command("check")
def config_check(path: Path = typer.Argument(..., help="TOML configuration file.")) -> None:
    """Validate a configuration file (and environment overrides) and print the result."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        fail(str(exc), 2)
    console.print(f"{path}: valid", highlight=False)
    console.print(
        f"  node {settings.node.ae_title} on port {settings.node.port}, data in {settings.node.data_dir}",
        highlight=False,
    )
    console.print(
        f"  engine {settings.inference.engine} on {settings.inference.device}; database {settings.database_url.split('://')[0]}",
        highlight=False,
    )
    for d in settings.destinations:
        console.print(f"  destination {d.name}: {_describe_destination(d)}", highlight=False, markup=False)
    if not settings.destinations:
        console.print("  [yellow]no destinations: results stay in the data directory[/yellow]")


def _describe_destination(destination: Destination) -> str:
    """How a destination is reached, for `config check`: never the secret, only where it is kept."""
    if isinstance(destination, DimseDestination):
        return f"C-STORE to {destination.address()}" + (" over TLS" if destination.tls else "")
    text = f"STOW-RS to {destination.url}"
    if destination.auth != "none":
        source = (
            f"file {destination.secret_file}"
            if destination.secret_file is not None
            else f"environment variable {destination.secret_env}"
            + ("" if os.environ.get(destination.secret_env or "") else " (not set in this environment)")
        )
        text += f", {destination.auth} authentication, secret from {source}"
        if destination.url.startswith("http://"):
            text += " (warning: sent unencrypted over http)"
    return text


@clinical_app.command("import")
def clinical_import(
    path: Path = typer.Argument(..., help="CSV keyed by accession_number or patient_id + study_date."),
    config: Path | None = ConfigOption,
) -> None:
    """Import clinical covariates (comorbidities, symptom onset) for the risk model."""
    from reporting.commands import clinical_import_parse, clinical_import_summary

    settings = settings_from(config)
    records = clinical_import_parse(path)
    store = open_store(settings)
    for record in records:
        store.put_clinical(record.key(), record.to_dict())
    store.audit("clinical_import", records=len(records))
    console.print(f"imported {clinical_import_summary(records)}", highlight=False)


# Commands owned by inference/ and reporting/, mounted here so `ldct-node` is the one entry point.
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.add_typer(risk_app, name="risk")
