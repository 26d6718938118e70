"""The Store SCP: Verification and every storage SOP class, answering once the bytes are stored.

The network side is `dicom_node.receive.acceptor` (our upper layer; `dicom_node.receive.acse` negotiates).
What is accepted, and what of it is analysed, is `dicom_node.receive.sop_classes`.
The bytes written are exactly those received, File Meta prepended, whatever the transfer
syntax, streamed to a temporary spool file as they arrive; "stored" means fsynced by default
(see `Spool`). Before the file is moved into its series folder, the header is read (never
the pixels) and the instance refused with a failure status and a reason when it cannot be
whole: unreadable, truncated (bytes ending inside an element; an analysed image without pixel
data; fewer pixel bytes than Rows x Columns x samples x bits say), or not the SOP class and
instance the request named; a refused instance leaves nothing behind. An instance the node does
not analyse is kept the same way, or with `series.not_processed = "drop"` checked, acknowledged
and dropped. A re-sent instance with different content replaces the stored one
(the last version wins) and says so in the log. Any other exception in a handler becomes a
failure status and a log line; the server keeps serving.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import struct
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.uid import UID

from config.settings import Settings
from dicom_node.receive.acceptor import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    Acceptor,
    Peer,
    Response,
    StoreRequest,
    StoreSink,
)
from dicom_node.receive.header_scan import LONG_LENGTH_VRS, UNDEFINED, DatasetTruncated, ScannedHeader, scan_header
from dicom_node.receive.sop_classes import is_analysed, presentation_contexts
from dicom_node.receive.spool import HEAD_BYTES, IncomingFile, InvalidUID, Spool
from dicom_node.tls import scp_context

log = structlog.get_logger(__name__)


class InstanceRejected(ValueError):
    """A received dataset that is refused; `status` is the C-STORE failure status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class InstanceHeader:
    """What the receive path knows about an instance it accepted; `kept` is False for one
    acknowledged and dropped (`series.not_processed = "drop"`)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    kept: bool = True


def check_received(
    head: bytes | bytearray,
    size: int,
    read_all: Callable[[], bytes],
    sop_class_uid: str,
    sop_instance_uid: str,
    scanned: ScannedHeader | None = None,
) -> InstanceHeader:
    """Parse a received instance of `size` bytes (meta included) of which `head` are the first,
    and refuse what cannot be a whole image.

    Returns the instance's UIDs; raises InstanceRejected with the status and reason otherwise.
    Only the header is read (by `header_scan`, or pydicom for syntaxes it leaves alone); the
    Pixel Data length comes from its element header, compared with the bytes that follow:
    the check never copies or decompresses pixels. Pixel data is required of the analysed SOP
    classes only: a dose SR or a presentation state has none. `scanned`: the head's scan, made
    while the rest was arriving; it usually answers from the head alone, otherwise
    `read_all()` supplies the whole instance.
    """
    data: bytes | bytearray = head
    truncated: DatasetTruncated | None = None
    try:
        if scanned is None:
            scanned = scan_header(head, complete=len(head) >= size)
        if scanned is None and len(head) < size:
            data = read_all()
            scanned = scan_header(data)
    except DatasetTruncated as exc:  # `data` is whole here; pydicom reads it without complaint
        truncated, scanned = exc, None
    if scanned is not None:
        header = InstanceHeader(
            scanned.text("sop_class_uid"),
            scanned.text("sop_instance_uid"),
            scanned.text("study_uid"),
            scanned.text("series_uid"),
        )

        def pixel_module() -> tuple[int, int, int, int, int]:
            frames = scanned.text("number_of_frames")
            return (
                _present(scanned.us("rows")),
                _present(scanned.us("columns")),
                _present(scanned.us("samples_per_pixel", 1)),
                _present(scanned.us("bits_allocated")),
                int(frames) if frames else 1,
            )

        encapsulated = False
        pixel_length: int | None = scanned.pixel_length
        available: int | None = scanned.pixel_available(size)
    else:
        ds, header, pixel_length, available = _read_with_pydicom(data)  # data is whole here

        def pixel_module() -> tuple[int, int, int, int, int]:
            return (
                int(ds.Rows),
                int(ds.Columns),
                int(ds.get("SamplesPerPixel", 1)),
                int(ds.BitsAllocated),
                int(ds.get("NumberOfFrames", 1) or 1),
            )

        encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    if header.sop_class_uid != sop_class_uid or header.sop_instance_uid != sop_instance_uid:
        raise InstanceRejected(STATUS_DATASET_MISMATCH, "Dataset does not match SOP class/instance")
    if pixel_length is None and is_analysed(sop_class_uid):
        raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, "No pixel data (truncated dataset?)")
    if truncated is not None:
        raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, f"Truncated dataset: {truncated}")
    if pixel_length is None:
        return header  # an object without pixels (SR, presentation state), whole as scanned
    try:
        rows, columns, samples, bits, frames = pixel_module()
    except Exception as exc:  # missing/garbled image pixel attributes
        raise InstanceRejected(STATUS_DATASET_MISMATCH, f"Image pixel module incomplete: {type(exc).__name__}") from exc
    if min(rows, columns, samples, bits, frames) <= 0:
        raise InstanceRejected(STATUS_DATASET_MISMATCH, "Rows/Columns/BitsAllocated not positive")
    if pixel_length == UNDEFINED:  # encapsulated: at least one item after the offset table
        if not available or available <= 16:
            raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, "Empty encapsulated pixel data")
        return header
    if encapsulated:
        raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, "Compressed pixel data without encapsulation")
    actual = pixel_length if available is None else min(pixel_length, available)
    expected = -(-rows * columns * samples * frames * bits // 8)  # bits rounded up (1-bit SEG frames)
    if not expected <= actual <= expected + 1:  # one byte of padding to even length
        raise InstanceRejected(STATUS_DATASET_MISMATCH, f"PixelData {actual} bytes, expected {expected}")
    return header


def _present(value: int | None) -> int:
    """A pixel module attribute the scan found; TypeError (as int(None) gives) when absent."""
    if value is None:
        raise TypeError("attribute absent")
    return value


def _read_with_pydicom(data: bytes | bytearray) -> tuple[Dataset, InstanceHeader, int | None, int | None]:
    """The header, its UIDs, the declared Pixel Data length and the bytes after it (None: unknown)."""
    fp = BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on truncation; the caller decides
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            sop_class, sop_instance, study, series = (
                str(ds.get(keyword, ""))
                for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
            )
            header = InstanceHeader(sop_class, sop_instance, study, series)
            transfer_syntax = ds.file_meta.TransferSyntaxUID
            if transfer_syntax.is_deflated:  # positions refer to the inflated stream: read it whole
                full = pydicom.dcmread(BytesIO(data))
                return ds, header, (len(full.PixelData) if "PixelData" in full else None), None
            return (ds, header, *_pixel_data_extent(data, fp.tell(), transfer_syntax))
        except Exception as exc:  # any parse failure is a refusal
            raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, f"Unreadable dataset: {type(exc).__name__}") from exc


def _pixel_data_extent(data: bytes | bytearray, offset: int, transfer_syntax: UID) -> tuple[int | None, int]:
    """(declared Pixel Data length, bytes present after its element header) at `offset`.

    None when the element there is not (7FE0,0010): the dataset has no pixel data.
    """
    order = "<" if transfer_syntax.is_little_endian else ">"
    if offset + 8 > len(data) or struct.unpack_from(order + "HH", data, offset) != (0x7FE0, 0x0010):
        return None, 0
    if transfer_syntax.is_implicit_VR:
        length, start = struct.unpack_from(order + "I", data, offset + 4)[0], offset + 8
    elif bytes(data[offset + 4 : offset + 6]) in LONG_LENGTH_VRS:
        if offset + 12 > len(data):
            return None, 0
        length, start = struct.unpack_from(order + "I", data, offset + 8)[0], offset + 12
    else:
        length, start = struct.unpack_from(order + "H", data, offset + 6)[0], offset + 8
    return length, len(data) - start


_REFUSE_EVERY_TITLE = "\\"  # a backslash is never part of an AE title: nobody matches


class CallerPolicy:
    """Which calling AE titles may associate, optionally only from given source addresses.

    `any_address`: titles accepted from anywhere. `bound`: title -> IP addresses/networks it
    may call from (refused from elsewhere). Both empty: every caller is accepted.
    """

    def __init__(self, any_address: Sequence[str] = (), bound: Mapping[str, Sequence[str]] | None = None) -> None:
        self.any_address = {title.strip() for title in any_address}
        self.bound: dict[str, list[IPv4Network | IPv6Network]] = {}
        for title, addresses in (bound or {}).items():
            self.bound.setdefault(title.strip(), []).extend(ipaddress.ip_network(a, strict=False) for a in addresses)

    @property
    def is_open(self) -> bool:
        return not self.any_address and not self.bound

    @staticmethod
    def _ip(address: str) -> IPv4Address | IPv6Address | None:
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
        titles.update(
            title
            for title, networks in self.bound.items()
            if ip is not None and any(ip.version == n.version and ip in n for n in networks)
        )
        return sorted(titles) or [_REFUSE_EVERY_TITLE]


def allowed_peers(settings: Settings) -> dict[str, list[str]]:
    """[[node.allowed_peers]] as calling AE title -> addresses (entries for one title merged)."""
    peers: dict[str, list[str]] = {}
    for peer in settings.node.allowed_peers:
        peers.setdefault(peer.ae_title, []).extend(peer.addresses)
    return peers


class StoreSCP:
    """Receives instances into the spool and tells `on_stored` about each one."""

    def __init__(
        self,
        *,
        ae_title: str,
        spool: Spool,
        allowed_calling_ae_titles: list[str] | None = None,
        max_pdu_size: int = 0,
        on_stored: Callable[[Peer, InstanceHeader], None] | None = None,
        allowed_peers: Mapping[str, Sequence[str]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        on_rejected: Callable[[str, str], None] | None = None,
        hand_off: Callable[[socket.socket], bool] | None = None,
        on_closed: Callable[[], None] | None = None,
        keep_not_processed: bool = True,
    ) -> None:
        """`on_stored(peer, header)`: told about every instance stored (the node's completeness
        stage, or a receiver process's report to the node), and every one dropped.
        `keep_not_processed`: False drops instances of SOP classes the node does not analyse
        once they are checked and acknowledged (their series is still recorded).
        `allowed_peers`: calling AE title -> source addresses/networks it may call from.
        `ssl_context`: serve DICOM TLS only (see dicom_node.tls.server_context).
        `on_rejected(calling_ae, peer_address)`: told about every refused association.
        `hand_off`, `on_closed`: see `Acceptor` (used by the node's receiver processes)."""
        self.spool = spool
        self.policy = CallerPolicy(allowed_calling_ae_titles or [], allowed_peers)
        self.on_stored = on_stored
        self.on_rejected = on_rejected
        self.ssl_context = ssl_context
        self.ae_title = ae_title
        self.keep_not_processed = keep_not_processed
        self.acceptor = Acceptor(
            contexts=presentation_contexts(),
            on_store=self._handle_store,
            calling_ae_allowed=self.policy.allows,
            on_accepted=self._handle_accepted,
            on_rejected=self._handle_rejected,
            hand_off=hand_off,
            on_closed=on_closed,
            max_pdu_size=max_pdu_size,
            max_associations=16,
            network_timeout=60,
            acse_timeout=30,
            ssl_context=ssl_context,
        )
        self.port: int | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        spool: Spool,
        *,
        on_stored: Callable[[Peer, InstanceHeader], None],
        on_rejected: Callable[[str, str], None],
        hand_off: Callable[[socket.socket], bool] | None = None,
        on_closed: Callable[[], None] | None = None,
    ) -> StoreSCP:
        """The Store SCP as `[node]` and `[tls]` configure it: the node process and every
        receiver process build theirs here."""
        node = settings.node
        return cls(
            ae_title=node.ae_title,
            spool=spool,
            allowed_calling_ae_titles=node.allowed_calling_ae_titles,
            max_pdu_size=node.max_pdu_size,
            on_stored=on_stored,
            allowed_peers=allowed_peers(settings),
            ssl_context=scp_context(settings),
            on_rejected=on_rejected,
            hand_off=hand_off,
            on_closed=on_closed,
            keep_not_processed=settings.series.not_processed == "keep",
        )

    def start(self, address: str, port: int) -> None:
        self.port = self.acceptor.start(address, port)
        log.info(
            "store scp listening",
            ae_title=self.ae_title,
            address=address,
            port=self.port,
            tls=self.ssl_context is not None,
            client_certificates=_client_cert_mode(self.ssl_context),
        )

    def stop(self) -> None:
        """Stop listening (if it was) and close every association served here."""
        self.acceptor.stop()
        self.port = None
        self.spool.close()

    @staticmethod
    def _handle_accepted(peer: Peer) -> None:
        log.info("association accepted", calling_ae=peer.ae_title, peer=peer.address, pid=os.getpid())

    def _handle_rejected(self, peer: Peer) -> None:
        log.warning("association rejected", calling_ae=peer.ae_title, peer=peer.address)
        if self.on_rejected is not None:
            self.on_rejected(peer.ae_title, peer.address)

    def _handle_store(self, request: StoreRequest) -> StoreSink | Response:
        """Refuse at once what needs no bytes to refuse; otherwise spool the incoming instance."""
        if not self.spool.has_room():
            log.error(
                "disk space below threshold: refusing instance",
                sop_instance_uid=request.sop_instance_uid[:64],
                free_bytes=self.spool.free_bytes(),
            )
            return STATUS_OUT_OF_RESOURCES, "Out of resources: disk space low"
        try:
            return _InstanceWriter(self, request, self.spool.receive())
        except OSError as exc:
            log.error("spool write failed", sop_instance_uid=request.sop_instance_uid[:64], error=str(exc))
            return STATUS_OUT_OF_RESOURCES, f"Write failed: {exc.strerror or exc}"

    def _stored(self, request: StoreRequest, header: InstanceHeader) -> None:
        if self.on_stored is not None:
            self.on_stored(request.peer, header)


class _InstanceWriter:
    """The StoreSink of one C-STORE: bytes to the spool as they arrive, checked at the end.

    The instance is moved into its series folder only when whole and plausible (see
    `check_received`); a refused or failed one leaves nothing behind. A re-sent instance with
    different content replaces the stored one (the last version wins) and says so in the log.
    """

    def __init__(self, scp: StoreSCP, request: StoreRequest, incoming: IncomingFile) -> None:
        self.scp, self.request, self.incoming = scp, request, incoming
        self.write_error: OSError | None = None
        self.scanned: ScannedHeader | None = None  # the header, read as soon as the head is in

    def write(self, data: memoryview) -> None:
        if self.write_error is not None:
            return
        had_head = len(self.incoming.head) >= HEAD_BYTES
        try:
            self.incoming.write(data)
        except OSError as exc:
            self.write_error = exc
            self.incoming.discard()
            return
        if not had_head and len(self.incoming.head) >= HEAD_BYTES:  # scanned while the rest arrives
            self.scanned = scan_header(self.incoming.head, complete=False)

    def discard(self) -> None:
        self.incoming.discard()

    def finish(self) -> Response:
        request, incoming = self.request, self.incoming
        calling_ae, sop_uid = request.peer.ae_title, request.sop_instance_uid
        try:
            if self.write_error is not None:
                raise self.write_error
            header = check_received(
                incoming.head, incoming.size, incoming.read_all, request.sop_class_uid, sop_uid, self.scanned
            )
            final = self.scp.spool.instance_path(header.study_uid, header.series_uid, sop_uid)  # UIDs checked
            if not (self.scp.keep_not_processed or is_analysed(header.sop_class_uid)):
                incoming.discard()
                self.scp._stored(request, replace(header, kept=False))
                log.debug("instance acknowledged and dropped", sop_instance_uid=sop_uid, series_uid=header.series_uid)
                return STATUS_SUCCESS, None
            replaced = incoming.replaces_different(final)
            incoming.commit(final)
            if replaced:
                log.warning(
                    "instance re-sent with different content: replaced",
                    sop_instance_uid=sop_uid,
                    series_uid=header.series_uid,
                    calling_ae=calling_ae,
                )
        except InstanceRejected as exc:
            incoming.discard()
            log.warning(
                "instance refused",
                sop_instance_uid=sop_uid[:64],
                calling_ae=calling_ae,
                status=f"0x{exc.status:04X}",
                reason=str(exc),
            )
            return exc.status, str(exc)
        except InvalidUID as exc:
            incoming.discard()
            log.warning("instance refused", sop_instance_uid=sop_uid[:64], reason=str(exc))
            return STATUS_CANNOT_UNDERSTAND, str(exc)
        except OSError as exc:
            incoming.discard()
            log.error("spool write failed", sop_instance_uid=sop_uid[:64], error=str(exc))
            return STATUS_OUT_OF_RESOURCES, f"Write failed: {exc.strerror or exc}"
        except Exception as exc:  # a handler must never take the server down
            incoming.discard()
            log.exception("store handler failed", sop_instance_uid=sop_uid[:64])
            return STATUS_CANNOT_UNDERSTAND, f"Cannot store: {type(exc).__name__}"
        self.scp._stored(request, header)
        log.debug("instance stored", sop_instance_uid=sop_uid, series_uid=header.series_uid, path=str(final))
        return STATUS_SUCCESS, None


def _client_cert_mode(context: ssl.SSLContext | None) -> str:
    if context is None:
        return "-"
    return {ssl.CERT_NONE: "not asked", ssl.CERT_OPTIONAL: "optional", ssl.CERT_REQUIRED: "required"}[
        context.verify_mode
    ]
