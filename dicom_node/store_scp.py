"""The Store SCP: Verification and CT storage over DICOM, answering only once bytes are durable.

The write path never decodes the dataset beyond the four header elements needed to place the
file; the bytes written are exactly those received (`event.encoded_dataset()`), whatever the
transfer syntax. Any exception in a handler becomes a failure status and a log line.
"""

from __future__ import annotations

from io import BytesIO
from typing import Callable

import pydicom
import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    Verification,
)

from dicom_node.series import SeriesTracker
from dicom_node.spool import InvalidUID, Spool

log = structlog.get_logger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


class StoreSCP:
    """Receives instances into the spool and tells the tracker which series moved."""

    def __init__(self, *, ae_title: str, spool: Spool, tracker: SeriesTracker,
                 allowed_calling_ae_titles: list[str] | None = None, max_pdu_size: int = 0,
                 on_stored: Callable[[str, str, str], None] | None = None) -> None:
        self.spool = spool
        self.tracker = tracker
        self.allowed = {a.strip() for a in (allowed_calling_ae_titles or [])}
        self.on_stored = on_stored
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_pdu_size = max_pdu_size
        self.ae.network_timeout = 60
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 60
        self.ae.maximum_associations = 16
        self.ae.require_calling_aet = sorted(self.allowed)
        self.ae.add_supported_context(Verification)
        for sop_class in (CTImageStorage, EnhancedCTImageStorage):
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.server = None

    def start(self, address: str, port: int) -> None:
        handlers = [
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
        ]
        self.server = self.ae.start_server((address, port), block=False, evt_handlers=handlers)
        log.info("store scp listening", ae_title=self.ae.ae_title, address=address, port=port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    @staticmethod
    def _handle_echo(event) -> int:
        return STATUS_SUCCESS

    @staticmethod
    def _calling_ae(event) -> str:
        return event.assoc.requestor.ae_title.strip()

    def _handle_accepted(self, event) -> None:
        log.info("association accepted", calling_ae=self._calling_ae(event),
                 peer=event.assoc.requestor.address)

    def _handle_rejected(self, event) -> None:
        log.warning("association rejected", calling_ae=self._calling_ae(event),
                    peer=event.assoc.requestor.address)

    def _handle_store(self, event) -> int | Dataset:
        calling_ae = self._calling_ae(event)
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        try:
            if str(event.request.AffectedSOPClassUID) == EnhancedCTImageStorage:
                log.warning("enhanced ct refused", sop_instance_uid=sop_uid, calling_ae=calling_ae)
                return _failure(STATUS_CANNOT_UNDERSTAND,
                                "Enhanced CT (multi-frame) unsupported; send CT Image")
            data = event.encoded_dataset(include_meta=True)
            if not self.spool.has_room(len(data)):
                log.error("disk space below threshold: refusing instance", sop_instance_uid=sop_uid,
                          free_bytes=self.spool.free_bytes())
                return _failure(STATUS_OUT_OF_RESOURCES, "Out of resources: disk space low")
            header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            sop_class = str(header.get("SOPClassUID", ""))
            if sop_class != str(event.request.AffectedSOPClassUID) or \
                    str(header.get("SOPInstanceUID", "")) != sop_uid:
                log.warning("dataset does not match the request", sop_instance_uid=sop_uid)
                return _failure(STATUS_DATASET_MISMATCH, "Dataset does not match SOP class/instance")
            study_uid = str(header.get("StudyInstanceUID", ""))
            series_uid = str(header.get("SeriesInstanceUID", ""))
            path = self.spool.store(study_uid, series_uid, sop_uid, data)
        except InvalidUID as exc:
            log.warning("instance refused", sop_instance_uid=sop_uid[:64], reason=str(exc))
            return _failure(STATUS_CANNOT_UNDERSTAND, str(exc))
        except OSError as exc:
            log.error("spool write failed", sop_instance_uid=sop_uid, error=str(exc))
            return _failure(STATUS_OUT_OF_RESOURCES, f"Write failed: {exc.strerror or exc}")
        except Exception as exc:  # noqa: BLE001 - a handler must never take the server down
            log.exception("store handler failed", sop_instance_uid=sop_uid[:64])
            return _failure(STATUS_CANNOT_UNDERSTAND, f"Cannot store: {type(exc).__name__}")
        self.tracker.touch(study_uid, series_uid, calling_ae)
        if self.on_stored is not None:
            self.on_stored(calling_ae, series_uid, sop_uid)
        log.debug("instance stored", sop_instance_uid=sop_uid, series_uid=series_uid, path=str(path))
        return STATUS_SUCCESS
