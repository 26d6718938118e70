"""What every way of sending results shares: the outcome of one send, and its failure.

The dispatcher picks a sender per destination (`dispatcher.sender_for`): C-STORE (`dimse.py`)
or DICOMweb STOW-RS (`dicomweb.py`); another kind would join as a module beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class SendError(RuntimeError):
    """The peer could not be reached or refused; the message says which and why."""


@dataclass
class SendResult:
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, status or reason)

    @property
    def ok(self) -> bool:
        return not self.failed


class Sender(Protocol):
    """Sends files to one destination; SendError when it cannot be reached at all."""

    def __call__(self, paths: Sequence[Path]) -> SendResult: ...
