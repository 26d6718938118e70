"""Prometheus metrics: what the node received, decided, processed and sent.

Counters and histograms are updated where the events happen; queue depths are read from the
job store when Prometheus scrapes, so they are right even with several worker hosts.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Metric, start_http_server
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:  # beneath every stage: no stage module is imported to run
    from dicom_node.queue.jobstore import JobStore

INSTANCES_RECEIVED = Counter("ldct_instances_received_total", "Instances stored in the spool")
SERIES_DECIDED = Counter("ldct_series_decided_total", "Completeness decisions", ["outcome"])
JOBS_FINISHED = Counter("ldct_jobs_finished_total", "Jobs finished, by resulting state", ["state"])
RECEIVER_RESTARTS = Counter("ldct_receiver_restarts_total", "Receiver processes that died and were restarted")
RECEIVE_PROCESSES = Gauge("ldct_receive_processes", "Processes serving DICOM associations now, the node included")
DISPATCH_ATTEMPTS = Counter("ldct_dispatch_attempts_total", "C-STORE dispatch attempts", ["result"])
JOB_SECONDS = Histogram(
    "ldct_job_duration_seconds",
    "Wall time of one job (load to results written)",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
STAGE_SECONDS = Histogram(
    "ldct_stage_duration_seconds",
    "Wall time of each pipeline stage",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)


class QueueCollector:
    """Jobs and dispatches by state, and free disk, read at scrape time."""

    def __init__(self, store: JobStore, data_dir: Path) -> None:
        self.store = store
        self.data_dir = Path(data_dir)

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        jobs = GaugeMetricFamily("ldct_jobs", "Jobs in the job store by state", labels=["state"])
        for state, n in counts.jobs.items():
            jobs.add_metric([state], n)
        yield jobs
        dispatches = GaugeMetricFamily("ldct_dispatches", "Dispatch rows by state", labels=["state"])
        for state, n in counts.dispatches.items():
            dispatches.add_metric([state], n)
        yield dispatches
        yield GaugeMetricFamily(
            "ldct_free_disk_bytes", "Free space in the data directory", value=shutil.disk_usage(self.data_dir).free
        )


class MetricsEndpoint:
    """The /metrics HTTP endpoint of one node process."""

    def __init__(self, store: JobStore, data_dir: Path, address: str, port: int) -> None:
        self.collector = QueueCollector(store, data_dir)
        self.address, self.port = address, port
        self.server: WSGIServer | None = None

    def start(self) -> None:
        REGISTRY.register(self.collector)
        self.server, _ = start_http_server(self.port, addr=self.address)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self.collector)


def observe_job(timings: Mapping[str, float]) -> None:
    """A finished job's stage timings (`load_s`, `segment_s`, ...) and their total."""
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(stage.removesuffix("_s")).observe(seconds)
    JOB_SECONDS.observe(sum(timings.values()))
