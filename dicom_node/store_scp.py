"""The Store SCP: Verification and CT storage over DICOM, answering only once bytes are durable.

The bytes written are exactly those received (`event.encoded_dataset()`), whatever the
transfer syntax. Before writing, the dataset is parsed (not decoded) and refused with a
failure status and a reason when it cannot be a whole image: unreadable, truncated (no pixel
data, or fewer pixel bytes than Rows x Columns x samples x bits say), or not the SOP class
and instance the request named. A re-sent instance with different content replaces the
stored one (the last version wins) and says so in the log. Any other exception in a handler
becomes a failure status and a log line; the server keeps serving.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
import warnings
from io import BytesIO
from typing import Callable, Mapping, Sequence

import pydicom
import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
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



class InstanceRejected(ValueError):
    """A received dataset that is refused; `status` is the C-STORE failure status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


def check_instance(data: bytes, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """Parse received bytes (meta included) and refuse what cannot be a whole image.

    Returns the parsed dataset; raises InstanceRejected with the status and reason otherwise.
    Pixel data is measured, never decoded, so the check costs a parse, not a decompression.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on truncation; we decide below
        try:
            ds = pydicom.dcmread(BytesIO(data))
            sop_class = str(ds.get("SOPClassUID", ""))
            sop_uid = str(ds.get("SOPInstanceUID", ""))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a refusal
            raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, f"Unreadable dataset: {type(exc).__name__}") from exc
    if sop_class != sop_class_uid or sop_uid != sop_instance_uid:
        raise InstanceRejected(STATUS_DATASET_MISMATCH, "Dataset does not match SOP class/instance")
    if "PixelData" not in ds:
        raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, "No pixel data (truncated dataset?)")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    except Exception as exc:  # noqa: BLE001 - missing/garbled image pixel attributes
        raise InstanceRejected(STATUS_DATASET_MISMATCH,
                               f"Image pixel module incomplete: {type(exc).__name__}") from exc
    if min(rows, columns, samples, bits, frames) <= 0:
        raise InstanceRejected(STATUS_DATASET_MISMATCH, "Rows/Columns/BitsAllocated not positive")
    if not encapsulated:
        expected = rows * columns * samples * frames * bits // 8
        actual = len(ds.PixelData)
        if not expected <= actual <= expected + 1:  # one byte of padding to even length
            raise InstanceRejected(STATUS_DATASET_MISMATCH, f"PixelData {actual} bytes, expected {expected}")
    elif not ds.PixelData:
        raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, "Empty encapsulated pixel data")
    return ds


_REFUSE_EVERY_TITLE = "\\"  # a backslash is never part of an AE title: nobody matches


class CallerPolicy:
    """Which calling AE titles may associate, optionally only from given source addresses.

    `any_address`: titles accepted from anywhere. `bound`: title -> IP addresses/networks it
    may call from (refused from elsewhere). Both empty: every caller is accepted.
    """

    def __init__(self, any_address: Sequence[str] = (), bound: Mapping[str, Sequence[str]] | None = None) -> None:
        self.any_address = {title.strip() for title in any_address}
        self.bound: dict[str, list] = {}
        for title, addresses in (bound or {}).items():
            self.bound.setdefault(title.strip(), []).extend(
                ipaddress.ip_network(a, strict=False) for a in addresses)

    @property
    def is_open(self) -> bool:
        return not self.any_address and not self.bound

    @staticmethod
    def _ip(address: str):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip

    def allows(self, ae_title: str, address: str) -> bool:
        return self.is_open or ae_title.strip() in self.titles_for(address)

    def titles_for(self, address: str) -> list[str]:
        """The calling AE titles acceptable from `address` (empty list: no restriction)."""
        if self.is_open:
            return []
        ip = self._ip(address)
        titles = set(self.any_address)
        titles.update(title for title, networks in self.bound.items()
                      if ip is not None and any(ip.version == n.version and ip in n for n in networks))
        return sorted(titles) or [_REFUSE_EVERY_TITLE]


class _PolicyAE(AE):
    """An AE whose calling-AE allow-list depends on the requesting peer's address.

    pynetdicom checks `require_calling_aet` while negotiating, in the association's own
    thread (an Association is a Thread), so the list is computed for that thread's peer.
    """

    def __init__(self, ae_title: str, policy: CallerPolicy) -> None:
        super().__init__(ae_title=ae_title)
        self.policy = policy

    @property
    def require_calling_aet(self) -> list[str]:
        assoc = threading.current_thread()
        if isinstance(assoc, Association) and assoc.is_acceptor:
            try:
                return self.policy.titles_for(assoc.requestor.address)
            except ValueError:  # no address known: refuse unless the policy is open
                return [] if self.policy.is_open else [_REFUSE_EVERY_TITLE]
        return sorted(self.policy.any_address | set(self.policy.bound))

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        self.policy = CallerPolicy(ae_titles, self.policy.bound if hasattr(self, "policy") else None)


class StoreSCP:
    """Receives instances into the spool and tells the tracker which series moved."""

    def __init__(self, *, ae_title: str, spool: Spool, tracker: SeriesTracker,
                 allowed_calling_ae_titles: list[str] | None = None, max_pdu_size: int = 0,
                 on_stored: Callable[[str, str, str], None] | None = None,
                 allowed_peers: Mapping[str, Sequence[str]] | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 on_rejected: Callable[[str, str], None] | None = None) -> None:
        """`allowed_peers`: calling AE title -> source addresses/networks it may call from.
        `ssl_context`: serve DICOM TLS only (see dicom_node.tls.server_context).
        `on_rejected(calling_ae, peer_address)`: told about every refused association."""
        self.spool = spool
        self.tracker = tracker
        self.policy = CallerPolicy(allowed_calling_ae_titles or [], allowed_peers)
        self.allowed = set(self.policy.any_address)
        self.on_stored = on_stored
        self.on_rejected = on_rejected
        self.ssl_context = ssl_context
        self.ae = _PolicyAE(ae_title, self.policy)
        self.ae.maximum_pdu_size = max_pdu_size
        self.ae.network_timeout = 60
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 60
        self.ae.maximum_associations = 16
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
        self.server = self.ae.start_server((address, port), block=False, evt_handlers=handlers,
                                           ssl_context=self.ssl_context)
        log.info("store scp listening", ae_title=self.ae.ae_title, address=address, port=port,
                 tls=self.ssl_context is not None,
                 client_certificates=_client_cert_mode(self.ssl_context))

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
        calling_ae, peer = self._calling_ae(event), event.assoc.requestor.address
        log.warning("association rejected", calling_ae=calling_ae, peer=peer)
        if self.on_rejected is not None:
            try:
                self.on_rejected(calling_ae, peer)
            except Exception:  # noqa: BLE001 - an audit hiccup must not break the server
                log.exception("recording the rejection failed", calling_ae=calling_ae)

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
            header = check_instance(data, str(event.request.AffectedSOPClassUID), sop_uid)
            study_uid = str(header.get("StudyInstanceUID", ""))
            series_uid = str(header.get("SeriesInstanceUID", ""))
            replaced = self.spool.differs(study_uid, series_uid, sop_uid, data)
            path = self.spool.store(study_uid, series_uid, sop_uid, data)
            if replaced:
                log.warning("instance re-sent with different content: replaced", sop_instance_uid=sop_uid,
                            series_uid=series_uid, calling_ae=calling_ae)
        except InstanceRejected as exc:
            log.warning("instance refused", sop_instance_uid=sop_uid[:64], calling_ae=calling_ae,
                        status=f"0x{exc.status:04X}", reason=str(exc))
            return _failure(exc.status, str(exc))
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


def _client_cert_mode(context: ssl.SSLContext | None) -> str:
    if context is None:
        return "-"
    return {ssl.CERT_NONE: "not asked", ssl.CERT_OPTIONAL: "optional",
            ssl.CERT_REQUIRED: "required"}[context.verify_mode]
