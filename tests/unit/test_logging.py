"""Log lines: one write each (the node and its receiver processes share stderr), JSON, no PHI."""

from __future__ import annotations

import json
import logging

import structlog

from dicom_node.logging import configure_logging


class RecordingStream:
    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_each_event_is_one_whole_line_in_one_write():
    stream = RecordingStream()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("json", "info", stream=stream)
    try:
        structlog.get_logger("test").info("instance stored", series_uid="1.2.3", patient_name="Doe^Jane")
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
    [line] = stream.writes
    assert line.endswith("\n") and line.count("\n") == 1
    event = json.loads(line)
    assert event["event"] == "instance stored" and event["patient_name"] == "[removed]"
