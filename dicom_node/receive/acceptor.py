"""A DICOM upper-layer acceptor for Verification and Storage, built for receive speed.

pynetdicom's association reactor polls its queues with millisecond sleeps and copies every
PDV several times: milliseconds per CT instance before any of our code runs, more than
dcmtk's `storescp` spends on the whole instance. This acceptor negotiates with `acse` (checked byte for byte
against pynetdicom's negotiation in the tests) and runs the data phase itself: one blocking
thread per association reads P-DATA-TF PDUs into one reused buffer, reassembles command sets
and streams each C-STORE's dataset (File Meta prepended, nothing decoded) to a sink the
handler opened for it, fragment by fragment as it arrives, so the sink's writing overlaps the
sender's sending; the C-STORE-RSP goes out when the sink has finished.

Protocol references: PS3.8 section 9 (upper-layer PDUs), PS3.7 section 9.3 and annex E (DIMSE
command sets, always Implicit VR Little Endian).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ParamSpec, Protocol, TypeVar

import structlog
from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext

from dicom_node.receive.acse import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    AssociateRequest,
    ContextResult,
    MalformedPDU,
    decode_associate_rq,
    encode_associate_ac,
    negotiate,
)
from reporting.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = structlog.get_logger(__name__)
_P = ParamSpec("_P")
_R = TypeVar("_R")

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

# PDU types (PS3.8 9.3)
A_ASSOCIATE_RQ_TYPE, A_ASSOCIATE_AC_TYPE, A_ASSOCIATE_RJ_TYPE = 0x01, 0x02, 0x03
P_DATA_TF_TYPE, A_RELEASE_RQ_TYPE, A_RELEASE_RP_TYPE, A_ABORT_TYPE = 0x04, 0x05, 0x06, 0x07

# A-ASSOCIATE-RJ (result, source, reason) (PS3.8 9.3.4)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)

# A-ABORT provider reasons (PS3.8 9.3.8)
ABORT_NOT_SPECIFIED, ABORT_UNRECOGNISED_PDU, ABORT_UNEXPECTED_PDU = 0x00, 0x01, 0x02
ABORT_INVALID_PARAMETER = 0x06

# DIMSE (PS3.7 9.3, E.1)
C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ = 0x0001, 0x0030, 0x0FFF
NO_DATASET = 0x0101
STATUS_SUCCESS = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_UNRECOGNISED_OPERATION = 0x0211
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

TAG_AFFECTED_SOP_CLASS = 0x00000002
TAG_COMMAND_FIELD = 0x00000100
TAG_MESSAGE_ID = 0x00000110
TAG_MESSAGE_ID_RESPONDED = 0x00000120
TAG_DATASET_TYPE = 0x00000800
TAG_STATUS = 0x00000900
TAG_ERROR_COMMENT = 0x00000902
TAG_AFFECTED_SOP_INSTANCE = 0x00001000

MAX_ASSOCIATE_RQ_BYTES = 1 << 20  # an A-ASSOCIATE-RQ is a few KB; refuse absurd lengths
READ_CHUNK = 4 << 20  # largest single read buffer when a PDV is bigger than this
READ_AHEAD = 1 << 16  # a PDU header read takes up to this much of what follows


class ProtocolError(Exception):
    """The peer broke the upper-layer protocol; the association is aborted with `reason`."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class PeerClosed(Exception):
    """The peer closed the connection."""


@dataclass(frozen=True)
class Peer:
    ae_title: str
    address: str
    port: int


@dataclass(frozen=True)
class StoreRequest:
    """A C-STORE-RQ as the handler sees it: who sent what, in which transfer syntax."""

    peer: Peer
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    message_id: int


Response = tuple[int, str | None]  # status, error comment


class StoreSink(Protocol):
    """Where one C-STORE's Part 10 bytes go while they arrive (see `Acceptor`)."""

    def write(self, data: memoryview) -> None:
        """The next bytes; `data` is only valid during the call (the buffer is reused)."""

    def finish(self) -> Response:
        """Every byte has arrived: (status, error comment) for the C-STORE-RSP."""

    def discard(self) -> None:
        """The dataset will not be completed (association ended, too large): drop it."""


StoreHandler = Callable[[StoreRequest], "StoreSink | Response"]


class Acceptor:
    """Listens for associations and serves Verification and the given Storage contexts.

    `on_store(request)` is called when a C-STORE's command set has arrived and returns either
    a (status, error comment) refusing it at once (its dataset is read and dropped) or a
    `StoreSink` that then receives the Part 10 bytes (preamble, File Meta, dataset as received)
    and answers when they are complete. Sinks must not raise; if one does, the peer gets
    "cannot understand" and the server goes on. `calling_ae_allowed(title, address)`
    decides who may associate; refused callers get A-ASSOCIATE-RJ "calling AE title not
    recognised" and `on_rejected(peer)` is told. `max_pdu_size` 0 announces no limit.
    `hand_off(conn)` may pass a newly accepted connection to another process (returning True);
    `on_closed()` is told whenever a connection served here has ended.
    """

    def __init__(
        self,
        *,
        contexts: Iterable[PresentationContext],
        on_store: StoreHandler,
        calling_ae_allowed: Callable[[str, str], bool] = lambda title, address: True,
        on_accepted: Callable[[Peer], None] | None = None,
        on_rejected: Callable[[Peer], None] | None = None,
        hand_off: Callable[[socket.socket], bool] | None = None,
        on_closed: Callable[[], None] | None = None,
        max_pdu_size: int = 0,
        max_associations: int = 16,
        network_timeout: float = 60,
        acse_timeout: float = 30,
        max_dataset_bytes: int = 4 << 30,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.supported = _supported_syntaxes(contexts)
        self.on_store = on_store
        self.calling_ae_allowed = calling_ae_allowed
        self.on_accepted = on_accepted
        self.on_rejected = on_rejected
        self.max_pdu_size = max_pdu_size
        self.max_associations = max_associations
        self.network_timeout = network_timeout
        self.acse_timeout = acse_timeout
        self.max_dataset_bytes = max_dataset_bytes
        self.ssl_context = ssl_context
        self.hand_off = hand_off
        self.on_closed = on_closed
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[int, tuple[socket.socket, threading.Thread]] = {}

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, address: str, port: int) -> int:
        """Bind and start accepting in a background thread; returns the bound port."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            self._listener = socket.create_server((address, port), family=family, backlog=64)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {address} port {port}: {exc.strerror or exc}") from exc
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-acceptor", daemon=True)
        self._thread.start()
        bound: int = self._listener.getsockname()[1]
        return bound

    def stop(self, timeout: float = 10) -> None:
        """Stop accepting, close every open association and wait for their threads."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            active = list(self._active.values())
        for conn, _ in active:
            _shutdown(conn)
        for _, thread in active:
            thread.join(timeout)

    @property
    def active_associations(self) -> int:
        with self._lock:
            return len(self._active)

    def _accept_loop(self) -> None:
        listener = self._listener
        if listener is None:
            return
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not selector.select(timeout=0.2):
                    continue
                try:
                    conn, address = listener.accept()
                except OSError:
                    continue
                if self.hand_off is not None and self.hand_off(conn):
                    conn.close()  # another process serves it now
                    continue
                self.serve(conn, address)

    def serve(self, conn: socket.socket, address: tuple[str, int]) -> None:
        """Serve one accepted connection in its own thread (also one handed over by another process)."""
        thread = threading.Thread(
            target=self._serve, args=(conn, address), name=f"dicom-assoc-{address[0]}:{address[1]}", daemon=True
        )
        with self._lock:
            self._active[id(conn)] = (conn, thread)
        thread.start()

    def _serve(self, raw: socket.socket, address: tuple[str, int]) -> None:
        peer_address, peer_port = address[0], address[1]
        conn = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(self.acse_timeout)
            if self.ssl_context is not None:
                try:
                    conn = self.ssl_context.wrap_socket(raw, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.warning("tls handshake failed", peer=peer_address, error=str(exc)[:200])
                    return
            _Association(self, conn, peer_address, peer_port).run()
        except Exception:  # one association's failure never stops the server
            log.exception("association failed", peer=peer_address)
        finally:
            with self._lock:
                self._active.pop(id(raw), None)
            _shutdown(raw)
            conn.close()
            raw.close()
            if self.on_closed is not None:
                self.on_closed()


class _Stream:
    """Reads a connected socket: small reads through a buffer, large ones straight into the
    caller's memory.

    On a plain TCP socket the timeouts are the kernel's (SO_RCVTIMEO/SO_SNDTIMEO on a blocking
    socket), so that a large read is one recv(MSG_WAITALL) instead of a poll and a recv per
    64 KiB: fewer system calls, and fewer hand-offs of the interpreter lock between concurrent
    associations. TLS sockets keep Python's timeouts and plain reads.
    """

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.plain = not isinstance(conn, ssl.SSLSocket)
        self.buffer = bytearray(READ_AHEAD)  # bytes received but not yet consumed: [start, end)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0

    def set_timeout(self, seconds: float) -> None:
        if not self.plain:
            self.conn.settimeout(seconds)
            return
        self.conn.settimeout(None)
        interval = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)

    def read_exact(self, size: int) -> bytes:
        """Exactly `size` bytes."""
        if self.end - self.start < size:
            if size > len(self.buffer):  # an association request or a long command: rare
                whole = bytearray(size)
                self.read_into(memoryview(whole))
                return bytes(whole)
            if self.start:
                self.buffer[: self.end - self.start] = self.buffer[self.start : self.end]
                self.end -= self.start
                self.start = 0
            while self.end < size:
                count = self._call(self.conn.recv_into, self.view[self.end :])
                if not count:
                    raise PeerClosed()
                self.end += count
        data = bytes(self.view[self.start : self.start + size])
        self.start += size
        return data

    def read_into(self, view: memoryview) -> None:
        """Fill `view` exactly: what is buffered first, then straight from the socket."""
        buffered = min(self.end - self.start, len(view))
        view[:buffered] = self.view[self.start : self.start + buffered]
        self.start += buffered
        filled = buffered
        while filled < len(view):
            rest = view[filled:]
            count = (
                self._call(self.conn.recv_into, rest, len(rest), socket.MSG_WAITALL)
                if self.plain
                else self._call(self.conn.recv_into, rest)
            )
            if not count:
                raise PeerClosed()
            filled += count

    def send(self, data: bytes) -> None:
        self._call(self.conn.sendall, data)

    @staticmethod
    def _call(method: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except BlockingIOError as exc:  # SO_RCVTIMEO / SO_SNDTIMEO expired
            raise TimeoutError("network timeout") from exc


class _Association:
    """One association, from A-ASSOCIATE-RQ to release or abort (the acceptor's state machine)."""

    def __init__(self, acceptor: Acceptor, conn: socket.socket, address: str, port: int) -> None:
        self.acceptor = acceptor
        self.conn = conn
        self.stream = _Stream(conn)
        self.stream.set_timeout(acceptor.acse_timeout)
        self.peer = Peer("", address, port)
        self.contexts: dict[int, tuple[str, str]] = {}  # accepted: id -> (abstract, transfer syntax)
        self.buffer = bytearray()

    # ---- reading -------------------------------------------------------------------------
    def read_exact(self, size: int) -> bytes:
        return self.stream.read_exact(size)

    def read_into_buffer(self, size: int) -> memoryview:
        """Exactly `size` bytes into the association's reused buffer (valid until the next call)."""
        if len(self.buffer) < size:
            self.buffer = bytearray(size)
        view = memoryview(self.buffer)[:size]
        self.stream.read_into(view)
        return view

    def read_pdu_header(self) -> tuple[int, int]:
        header = self.read_exact(6)
        return header[0], struct.unpack_from(">I", header, 2)[0]

    # ---- writing -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.stream.send(data)

    def abort(self, reason: int) -> None:
        """A-ABORT from the service provider (source 2) with `reason`."""
        with contextlib.suppress(OSError):
            self.send(struct.pack(">BBIBBBB", A_ABORT_TYPE, 0, 4, 0, 0, 0x02, reason))

    def reject(self, result_source_reason: tuple[int, int, int]) -> None:
        result, source, reason = result_source_reason
        self.send(struct.pack(">BBIBBBB", A_ASSOCIATE_RJ_TYPE, 0, 4, 0, result, source, reason))

    def send_command(self, context_id: int, elements: dict[int, bytes]) -> None:
        """One command set in one P-DATA-TF PDU: a response (~200 bytes) is far below any
        peer's maximum PDU length, so the peer's announced maximum is not consulted."""
        command = encode_command(elements)
        pdv_length = len(command) + 2
        self.send(struct.pack(">BBIIBB", P_DATA_TF_TYPE, 0, pdv_length + 4, pdv_length, context_id, 0x03) + command)

    # ---- phases --------------------------------------------------------------------------
    def run(self) -> None:
        try:
            if not self.negotiate():
                return
            self.stream.set_timeout(self.acceptor.network_timeout)
            self.data_phase()
        except ProtocolError as exc:
            log.warning(
                "association aborted: protocol error",
                peer=self.peer.address,
                calling_ae=self.peer.ae_title,
                error=str(exc),
            )
            self.abort(exc.reason)
        except PeerClosed:
            log.info(
                "association closed by peer without release", peer=self.peer.address, calling_ae=self.peer.ae_title
            )
        except TimeoutError:
            log.warning("association aborted: network timeout", peer=self.peer.address, calling_ae=self.peer.ae_title)
            self.abort(ABORT_NOT_SPECIFIED)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            if not self.acceptor._stopping.is_set():
                log.info(
                    "association connection lost",
                    peer=self.peer.address,
                    calling_ae=self.peer.ae_title,
                    error=str(exc)[:200],
                )

    def negotiate(self) -> bool:
        """Answer the A-ASSOCIATE-RQ; True when the association is established."""
        pdu_type, length = self.read_pdu_header()
        if pdu_type != A_ASSOCIATE_RQ_TYPE:
            raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}", ABORT_UNEXPECTED_PDU)
        if length > MAX_ASSOCIATE_RQ_BYTES:
            raise ProtocolError(f"A-ASSOCIATE-RQ of {length} bytes")
        try:
            request = decode_associate_rq(self.read_exact(length))
        except MalformedPDU as exc:
            raise ProtocolError(f"malformed A-ASSOCIATE-RQ: {exc}") from exc
        calling_ae = request.calling_ae_title
        self.peer = Peer(calling_ae, self.peer.address, self.peer.port)
        for problem in request.ae_title_problems:  # not refused for it: an allow-list may refuse
            log.warning("odd AE title bytes", peer=self.peer.address, calling_ae=calling_ae, problem=problem)

        refusal = None
        if not (request.protocol_version & 0x01):
            refusal = REJECT_PROTOCOL_VERSION
        elif request.application_context != APPLICATION_CONTEXT_NAME:
            refusal = REJECT_APPLICATION_CONTEXT
        elif not self.acceptor.calling_ae_allowed(calling_ae, self.peer.address):
            refusal = REJECT_CALLING_AE
        elif self.acceptor.active_associations > self.acceptor.max_associations:
            refusal = REJECT_LOCAL_LIMIT
        if refusal is not None:
            if self.acceptor.on_rejected is not None:  # recorded before the caller hears of it
                try:
                    self.acceptor.on_rejected(self.peer)
                except Exception:  # an audit hiccup must not break the server
                    log.exception("recording the rejection failed", calling_ae=calling_ae)
            self.reject(refusal)
            self.await_close()
            return False

        results = negotiate(request.contexts, self.acceptor.supported)
        self.contexts = {
            cx.context_id: (cx.abstract_syntax, cx.transfer_syntax) for cx in results if cx.result == ACCEPTANCE
        }
        self.log_refused_contexts(request, results)
        self.send(
            encode_associate_ac(
                request,
                results,
                application_context=APPLICATION_CONTEXT_NAME,
                max_pdu_size=self.acceptor.max_pdu_size,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version=IMPLEMENTATION_VERSION_NAME,
            )
        )
        if self.acceptor.on_accepted is not None:
            self.acceptor.on_accepted(self.peer)
        return True

    def log_refused_contexts(self, request: AssociateRequest, results: list[ContextResult]) -> None:
        """Name what was refused: a warning when nothing but Verification is left to the peer
        (it can store nothing here), otherwise a debug line (senders propose every class)."""
        refused = sorted({_context_refusal(request, cx) for cx in results if cx.result != ACCEPTANCE})
        if not refused:
            return
        nothing_to_store = all(abstract == VERIFICATION for abstract, _ in self.contexts.values())
        (log.warning if nothing_to_store else log.debug)(
            "presentation contexts refused",
            peer=self.peer.address,
            calling_ae=self.peer.ae_title,
            accepted=len(self.contexts),
            refused=refused[:20],
            refused_count=len(refused),
        )

    def await_close(self) -> None:
        """After a rejection, give the peer a moment to read it and close (PS3.8 Sta13)."""
        try:
            self.stream.set_timeout(2)
            while self.conn.recv(1 << 16):
                pass
        except (OSError, ValueError):
            pass

    def data_phase(self) -> None:
        messages = _MessageAssembler(self)
        try:
            self.serve_messages(messages)
        finally:
            messages.drop_unfinished()

    def serve_messages(self, messages: _MessageAssembler) -> None:
        while True:
            pdu_type, length = self.read_pdu_header()
            if pdu_type == P_DATA_TF_TYPE:
                self.read_p_data(length, messages)
            elif pdu_type == A_RELEASE_RQ_TYPE:
                self.read_exact(length)
                if messages.pending:
                    log.warning(
                        "release requested with an unfinished message: discarded",
                        peer=self.peer.address,
                        calling_ae=self.peer.ae_title,
                    )
                self.send(struct.pack(">BBII", A_RELEASE_RP_TYPE, 0, 4, 0))
                self.await_close()
                return
            elif pdu_type == A_ABORT_TYPE:
                self.read_exact(min(length, 4))
                log.info("association aborted by peer", peer=self.peer.address, calling_ae=self.peer.ae_title)
                return
            elif pdu_type in (A_ASSOCIATE_RQ_TYPE, A_ASSOCIATE_AC_TYPE, A_ASSOCIATE_RJ_TYPE, A_RELEASE_RP_TYPE):
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", ABORT_UNEXPECTED_PDU)
            else:
                raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNISED_PDU)

    def read_p_data(self, length: int, messages: _MessageAssembler) -> None:
        """Read one P-DATA-TF PDU item by item, never buffering more than a PDV at a time."""
        limit = self.acceptor.max_pdu_size
        if limit and length > limit:
            raise ProtocolError(f"P-DATA-TF of {length} bytes exceeds the announced maximum {limit}")
        remaining = length
        while remaining:
            if remaining < 6:
                raise ProtocolError("P-DATA-TF ends inside a PDV item header")
            header = self.read_exact(6)
            item_length, context_id, control = struct.unpack(">IBB", header)
            if item_length < 2 or item_length + 4 > remaining:
                raise ProtocolError(f"PDV item length {item_length} outside its PDU")
            remaining -= item_length + 4
            size = item_length - 2
            is_command = bool(control & 0x01)
            while True:
                part = min(size, READ_CHUNK)
                data = self.read_exact(part) if is_command else self.read_into_buffer(part)
                messages.fragment(context_id, control, data, last_piece=part == size)
                size -= part
                if not size:
                    break


class _MessageAssembler:
    """Reassembles DIMSE messages from PDV fragments and answers them (one at a time).

    A C-STORE's dataset streams to the sink its handler opened when the command arrived; a
    refusal decided then (or a dataset over `max_dataset_bytes`) is answered after the dataset
    has been read and dropped, which keeps the association in step.
    """

    def __init__(self, association: _Association) -> None:
        self.association = association
        self.command = bytearray()
        self.command_context: int | None = None
        self.request: dict[int, bytes] | None = None
        self.sink: StoreSink | None = None
        self.answer: Response | None = None  # decided before the dataset ended
        self.dataset_bytes = 0

    @property
    def pending(self) -> bool:
        return bool(self.command) or self.request is not None

    def fragment(self, context_id: int, control: int, data: bytes | memoryview, last_piece: bool) -> None:
        if context_id not in self.association.contexts:
            raise ProtocolError(f"PDV on presentation context {context_id}, which was not accepted")
        is_command, is_last = bool(control & 0x01), bool(control & 0x02) and last_piece
        if is_command:
            if self.request is not None:
                raise ProtocolError("command fragment while a dataset was expected")
            if self.command_context not in (None, context_id):
                raise ProtocolError("command fragments on two presentation contexts")
            self.command_context = context_id
            self.command += data
            if len(self.command) > 1 << 16:
                raise ProtocolError("command set longer than 64 KiB")
            if is_last:
                request = self.request = decode_command(bytes(self.command))
                self.command.clear()
                if _us(request, TAG_DATASET_TYPE, NO_DATASET) == NO_DATASET:
                    self.dispatch(request, context_id, has_dataset=False)
                else:
                    self.begin_dataset(request, context_id)
            return
        awaiting = self.request
        if awaiting is None or context_id != self.command_context:
            raise ProtocolError("dataset fragment without its command")
        self.dataset_bytes += len(data)
        if self.sink is not None:
            if self.dataset_bytes <= self.association.acceptor.max_dataset_bytes:
                self.sink_call(lambda sink: sink.write(memoryview(data)))
            else:  # keep reading to stay in step, answer "out of resources"
                self.drop_unfinished()
                self.answer = STATUS_OUT_OF_RESOURCES, "Instance larger than this node accepts"
        if is_last:
            self.dispatch(awaiting, context_id, has_dataset=True)

    def begin_dataset(self, request: dict[int, bytes], context_id: int) -> None:
        """A C-STORE's dataset follows: open its sink, or decide the refusal now."""
        abstract_syntax, transfer_syntax = self.association.contexts[context_id]
        if _us(request, TAG_COMMAND_FIELD, 0) != C_STORE_RQ:
            return
        if abstract_syntax == VERIFICATION:
            self.answer = STATUS_SOP_CLASS_NOT_SUPPORTED, "C-STORE on the Verification context"
            return
        peer = self.association.peer
        sop_class, sop_instance = _ui(request, TAG_AFFECTED_SOP_CLASS), _ui(request, TAG_AFFECTED_SOP_INSTANCE)
        store_request = StoreRequest(peer, sop_class, sop_instance, transfer_syntax, _us(request, TAG_MESSAGE_ID, 0))
        try:
            opened = self.association.acceptor.on_store(store_request)
        except Exception as exc:  # the peer gets a failure status, the server goes on
            log.exception("store handler failed", sop_instance_uid=sop_instance[:64])
            self.answer = STATUS_CANNOT_UNDERSTAND, f"Cannot store: {type(exc).__name__}"
            return
        if isinstance(opened, tuple):
            self.answer = opened
            return
        self.sink = opened
        meta = memoryview(file_meta(sop_class, sop_instance, transfer_syntax, peer.ae_title))
        self.sink_call(lambda sink: sink.write(meta))

    def sink_call(self, call: Callable[[StoreSink], _R], *, discarding: bool = False) -> _R | None:
        """`call(sink)`; a sink that raises is dropped (discarded, unless that was the call)
        and the C-STORE fails."""
        sink = self.sink
        if sink is None:
            return None
        try:
            return call(sink)
        except Exception as exc:  # the peer gets a failure status, the server goes on
            log.exception("store handler failed")
            self.sink = None
            if not discarding:
                try:
                    sink.discard()
                except Exception:  # already failing: logged, the first error is the answer
                    log.exception("discarding the failed instance failed too")
            self.answer = STATUS_CANNOT_UNDERSTAND, f"Cannot store: {type(exc).__name__}"
            return None

    def drop_unfinished(self) -> None:
        """Discard a dataset that will not be completed (association ended, or oversized)."""
        if self.sink is not None:
            self.sink_call(lambda sink: sink.discard(), discarding=True)
            self.sink = None

    def dispatch(self, request: dict[int, bytes], context_id: int, *, has_dataset: bool) -> None:
        command_field = _us(request, TAG_COMMAND_FIELD, 0)
        reply = {
            TAG_COMMAND_FIELD: _pack_us(command_field | 0x8000),
            TAG_MESSAGE_ID_RESPONDED: _pack_us(_us(request, TAG_MESSAGE_ID, 0)),
            TAG_DATASET_TYPE: _pack_us(NO_DATASET),
        }
        for tag in (TAG_AFFECTED_SOP_CLASS, TAG_AFFECTED_SOP_INSTANCE):
            if tag in request:
                reply[tag] = request[tag]
        sink, answer = self.sink, self.answer
        self.request, self.command_context, self.sink, self.answer, self.dataset_bytes = None, None, None, None, 0
        if command_field == C_CANCEL_RQ:
            return
        if command_field == C_ECHO_RQ:
            status, comment = STATUS_SUCCESS, None
        elif command_field != C_STORE_RQ:
            status, comment = STATUS_UNRECOGNISED_OPERATION, None
        elif answer is not None:
            status, comment = answer
        elif not has_dataset or sink is None:
            status, comment = STATUS_CANNOT_UNDERSTAND, "C-STORE without a dataset"
        else:
            self.sink = sink
            result = self.sink_call(lambda sink: sink.finish())
            status, comment = result or self.answer or (STATUS_CANNOT_UNDERSTAND, None)
            self.sink, self.answer = None, None
        reply[TAG_STATUS] = _pack_us(status)
        if comment:
            reply[TAG_ERROR_COMMENT] = _pad(comment[:64].encode("ascii", "replace"), b" ")
        self.association.send_command(context_id, reply)


def _context_refusal(request: AssociateRequest, result: ContextResult) -> str:
    """What was refused, by name: "MR Image Storage: SOP class not supported", or the
    transfer syntaxes proposed for a SOP class when none of them is."""
    name = UID(result.abstract_syntax).name
    if result.result == ABSTRACT_SYNTAX_NOT_SUPPORTED:
        return f"{name}: SOP class not supported"
    proposed = next((cx.transfer_syntaxes for cx in request.contexts if cx.context_id == result.context_id), ())
    return f"{name}: transfer syntax not supported ({', '.join(UID(ts).name for ts in proposed)})"


def _supported_syntaxes(contexts: Iterable[PresentationContext]) -> dict[str, tuple[str, ...]]:
    """Abstract syntax -> transfer syntaxes in order of preference; roles are not negotiated here."""
    supported = {}
    for context in contexts:
        if context.scu_role is not None or context.scp_role is not None:
            raise ValueError(f"{context.abstract_syntax}: SCP/SCU role selection is not supported")
        supported[str(context.abstract_syntax)] = tuple(str(ts) for ts in context.transfer_syntax)
    return supported


# ---- command sets and File Meta (PS3.7 E.1, PS3.10 7.1) -------------------------------------
def decode_command(data: bytes) -> dict[int, bytes]:
    """Group 0000 elements of an Implicit VR Little Endian command set: tag -> raw value."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            raise ProtocolError("command set ends inside an element header")
        group, element, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            raise ProtocolError(f"malformed command set element ({group:04X},{element:04X})")
        elements[element] = data[offset : offset + length]
        offset += length
    if TAG_COMMAND_FIELD not in elements:
        raise ProtocolError("command set without CommandField")
    return elements


def encode_command(elements: dict[int, bytes]) -> bytes:
    """An Implicit VR Little Endian command set with its group length first."""
    body = b"".join(
        struct.pack("<HHI", 0, tag, len(value)) + value for tag, value in sorted(elements.items()) if tag != 0
    )
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, 'DICM' and the File Meta group (Explicit VR Little Endian) for a received instance.

    The node wrote the file, so the Implementation Class UID and Version Name are the node's
    (PS3.10 7.1); the sender is recorded as Source Application Entity Title.
    """
    elements = [
        (0x0001, b"OB", b"\x00\x01"),
        (0x0002, b"UI", _pad(sop_class.encode("ascii"), b"\x00")),
        (0x0003, b"UI", _pad(sop_instance.encode("ascii"), b"\x00")),
        (0x0010, b"UI", _pad(transfer_syntax.encode("ascii"), b"\x00")),
        (0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00")),
        (0x0013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" ")),
    ]
    if source_ae:
        elements.append((0x0016, b"AE", _pad(source_ae.encode("ascii", "replace"), b" ")))
    body = b"".join(
        struct.pack("<HH2sHI", 2, element, vr, 0, len(value)) + value
        if vr == b"OB"
        else struct.pack("<HH2sH", 2, element, vr, len(value)) + value
        for element, vr, value in elements
    )
    return b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body


def _pad(value: bytes, padding: bytes) -> bytes:
    return value + padding if len(value) % 2 else value


def _pack_us(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


def _us(elements: dict[int, bytes], tag: int, default: int) -> int:
    value = elements.get(tag)
    return struct.unpack_from("<H", value)[0] if value is not None and len(value) >= 2 else default


def _ui(elements: dict[int, bytes], tag: int) -> str:
    return elements.get(tag, b"").decode("ascii", "replace").rstrip("\x00 ")


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
