"""Structured logging (structlog), console or JSON, with no patient identifiers.

Log UIDs, never names, IDs or birth dates. As a second line of defence a processor drops
any event key that names a patient identifier, so a careless `log.info(..., patient_name=x)`
cannot leak it.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog
from structlog.typing import EventDict, WrappedLogger

PHI_KEYS = frozenset(
    {
        "patient_name",
        "patientname",
        "patient_id",
        "patientid",
        "patient_birth_date",
        "patientbirthdate",
        "birth_date",
        "name",
        "accession_number",
        "accessionnumber",
    }
)


def _drop_phi(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        if key.lower() in PHI_KEYS:
            event_dict[key] = "[removed]"
    return event_dict


class _CurrentStderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was configured: a
    command run inside a harness that swaps stderr (a test runner, an embedding application)
    must not leave the loggers holding a stream that is closed later."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(fmt: str = "console", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib loggers (pynetdicom, apscheduler) once; to `stream`,
    else to the current stderr."""
    stream = stream or cast(TextIO, _CurrentStderr())
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_phi,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # one write per line: the node and its receiver processes share stderr, and a line written
        # in two pieces (print writes the text, then the newline) can interleave with another's
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs whole datasets (with patient names) at debug level: keep it quiet.
    for noisy in ("pynetdicom", "apscheduler", "highdicom", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
