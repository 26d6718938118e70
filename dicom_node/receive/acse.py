"""Association negotiation for the acceptor: A-ASSOCIATE-RQ in, A-ASSOCIATE-AC out.

PS3.8 9.3.2-9.3.3 (the PDUs and their items) and PS3.7 annex D.3.3 (user information).
pynetdicom's PDU classes validate every UID through pydicom while they build their objects:
milliseconds for the 128 presentation contexts dcmtk's `storescu` proposes, on every
association (a sender that opens one association per image pays it per image), several times
what dcmtk needs. This module reads the items directly and answers as pynetdicom's
`negotiate_as_acceptor` does for contexts without configured SCP/SCU roles, which is how the
node's contexts are built; tests compare its A-ASSOCIATE-AC byte for byte with pynetdicom's.

It is more forgiving than pynetdicom in two respects: a presentation context whose UIDs are
not well formed is refused on its own (it cannot match a supported one) instead of the
whole association being aborted; and AE titles are read as senders write them: trailing NUL
or space padding (and leading spaces) is stripped, and other odd bytes (control characters,
backslash, non-ASCII, an empty field) do not abort the association: each such byte becomes
"?" in the title, which therefore matches no configured allow-list title, and the request
says what was odd (`ae_title_problems`) for the acceptor to log.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

# Item types (PS3.8 9.3.2.1-9.3.2.3, PS3.7 D.3.3)
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ_ITEM, PRESENTATION_CONTEXT_AC_ITEM = 0x20, 0x21
ABSTRACT_SYNTAX_ITEM, TRANSFER_SYNTAX_ITEM = 0x30, 0x40
USER_INFORMATION_ITEM = 0x50
MAXIMUM_LENGTH_ITEM, IMPLEMENTATION_CLASS_ITEM, ASYNCHRONOUS_WINDOW_ITEM = 0x51, 0x52, 0x53
IMPLEMENTATION_VERSION_ITEM = 0x55

# Presentation context results (PS3.8 9.3.3.2)
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x00, 0x03, 0x04

FIXED_FIELDS = struct.Struct(">HH16s16s32s")  # protocol version, reserved, called, calling, reserved
_ITEM_HEADER = struct.Struct(">BBH")


class MalformedPDU(ValueError):
    """The A-ASSOCIATE-RQ does not follow PS3.8; the association is aborted."""


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]  # in the requestor's order, without repeats


@dataclass(frozen=True)
class AssociateRequest:
    """What the acceptor needs from an A-ASSOCIATE-RQ."""

    protocol_version: int
    called_ae_field: bytes  # the 16-byte fields, echoed in the A-ASSOCIATE-AC
    calling_ae_field: bytes
    calling_ae_title: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    asynchronous_window_requested: bool
    ae_title_problems: tuple[str, ...] = ()  # odd bytes in the AE fields, for the log


@dataclass(frozen=True)
class ContextResult:
    context_id: int
    result: int
    abstract_syntax: str
    transfer_syntax: str


def decode_associate_rq(body: bytes) -> AssociateRequest:
    """Parse an A-ASSOCIATE-RQ's body (the bytes after its 6-byte PDU header)."""
    if len(body) < FIXED_FIELDS.size:
        raise MalformedPDU(f"A-ASSOCIATE-RQ of {len(body)} bytes is shorter than its fixed fields")
    version, _, called, calling, _ = FIXED_FIELDS.unpack_from(body)
    calling_title, calling_problem = _ae_title(calling, "calling")
    _, called_problem = _ae_title(called, "called")
    application_context, contexts, window_requested = None, [], False
    for item_type, value in _items(body, FIXED_FIELDS.size):
        if item_type == APPLICATION_CONTEXT_ITEM:
            application_context = _uid(value)
        elif item_type == PRESENTATION_CONTEXT_RQ_ITEM:
            contexts.append(_proposed_context(value))
        elif item_type == USER_INFORMATION_ITEM:
            window_requested = any(sub_type == ASYNCHRONOUS_WINDOW_ITEM for sub_type, _ in _items(value, 0))
    if application_context is None:
        raise MalformedPDU("A-ASSOCIATE-RQ without an Application Context item")
    problems = tuple(p for p in (calling_problem, called_problem) if p)
    return AssociateRequest(
        version, called, calling, calling_title, application_context, tuple(contexts), window_requested, problems
    )


def negotiate(proposed: tuple[ProposedContext, ...], supported: dict[str, tuple[str, ...]]) -> list[ContextResult]:
    """One result per proposed context, in context ID order.

    `supported` maps each abstract syntax the acceptor serves to its transfer syntaxes in order
    of preference; an accepted context gets the first of them the requestor proposed.
    """
    results: dict[tuple[int, str], ContextResult] = {}
    for context in proposed:
        offered = supported.get(context.abstract_syntax)
        if offered is None:
            result, syntax = ABSTRACT_SYNTAX_NOT_SUPPORTED, context.transfer_syntaxes[0]
        else:
            chosen = next((ts for ts in offered if ts in context.transfer_syntaxes), None)
            result = ACCEPTANCE if chosen is not None else TRANSFER_SYNTAXES_NOT_SUPPORTED
            syntax = chosen or context.transfer_syntaxes[0]
        results.setdefault(
            (context.context_id, context.abstract_syntax),
            ContextResult(context.context_id, result, context.abstract_syntax, syntax),
        )
    return sorted(results.values(), key=lambda r: r.context_id)


def encode_associate_ac(
    request: AssociateRequest,
    results: list[ContextResult],
    *,
    application_context: str,
    max_pdu_size: int,
    implementation_class_uid: str,
    implementation_version: str,
) -> bytes:
    """The A-ASSOCIATE-AC answering `request` with `results` (PS3.8 9.3.3).

    An Asynchronous Operations Window request is answered with 1/1: this acceptor performs and
    invokes one operation at a time. Role selection, extended negotiation and user identity
    proposals get no reply item, which leaves the default roles (the requestor is the SCU).
    """
    items = [_item(APPLICATION_CONTEXT_ITEM, application_context.encode("ascii"))]
    for result in results:
        syntax = _item(TRANSFER_SYNTAX_ITEM, result.transfer_syntax.encode("ascii", "replace"))
        items.append(
            _item(PRESENTATION_CONTEXT_AC_ITEM, struct.pack(">BBBB", result.context_id, 0, result.result, 0) + syntax)
        )
    user = [
        _item(MAXIMUM_LENGTH_ITEM, struct.pack(">I", max_pdu_size)),
        _item(IMPLEMENTATION_CLASS_ITEM, implementation_class_uid.encode("ascii")),
    ]
    user.append(_item(IMPLEMENTATION_VERSION_ITEM, implementation_version.encode("ascii")))
    if request.asynchronous_window_requested:
        user.append(_item(ASYNCHRONOUS_WINDOW_ITEM, struct.pack(">HH", 1, 1)))
    items.append(_item(USER_INFORMATION_ITEM, b"".join(user)))
    body = FIXED_FIELDS.pack(1, 0, request.called_ae_field, request.calling_ae_field, b"\0" * 32) + b"".join(items)
    return struct.pack(">BBI", 0x02, 0, len(body)) + body


def _items(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each item from `offset` to the end of `data`."""
    end = len(data)
    while offset < end:
        if offset + 4 > end:
            raise MalformedPDU("item header cut short")
        item_type, _, length = _ITEM_HEADER.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise MalformedPDU(f"item 0x{item_type:02X} of {length} bytes runs past its container")
        yield item_type, data[offset : offset + length]
        offset += length


def _proposed_context(value: bytes) -> ProposedContext:
    if len(value) < 4:
        raise MalformedPDU("presentation context item cut short")
    context_id = value[0]
    if context_id % 2 == 0:
        raise MalformedPDU(f"presentation context ID {context_id} is not odd")
    abstract, syntaxes = None, []
    for item_type, sub_value in _items(value, 4):
        if item_type == ABSTRACT_SYNTAX_ITEM:
            abstract = _uid(sub_value)
        elif item_type == TRANSFER_SYNTAX_ITEM:
            syntax = _uid(sub_value)
            if syntax and syntax not in syntaxes:
                syntaxes.append(syntax)
    if abstract is None or not syntaxes:
        raise MalformedPDU(f"presentation context {context_id} without abstract or transfer syntax")
    return ProposedContext(context_id, abstract, tuple(syntaxes))


def _uid(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ")


def _ae_title(field: bytes, which: str) -> tuple[str, str | None]:
    """The title in a 16-byte AE field, and what is odd about its bytes (None: nothing).

    PS3.8 pads with spaces and leading spaces are not significant; some senders pad with NULs.
    Bytes outside the default repertoire without backslash (PS3.5 6.2) become "?".
    """
    stripped = field.rstrip(b"\x00 ").lstrip(b" ")
    title = "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x5C else "?" for b in stripped)
    if not stripped:
        return title, f"{which} AE title is empty"
    if title != stripped.decode("latin-1"):
        return title, f"{which} AE title {field!r} holds bytes outside the AE repertoire"
    return title, None


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(item_type, 0, len(value)) + value
