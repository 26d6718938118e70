"""DICOMweb as a client: STOW-RS (PS3.18 10.5) for the dispatcher, a QIDO-RS query for `echo` and `health`.

Built on the standard library's `http.client`: the multipart/related body is streamed from
the files, 1 MiB at a time, with its Content-Length computed up front (a SEG of a 1000-slice
series is ~100 MB: it is never held in memory), TLS comes from `dicom_node.tls`, and nothing
is added to the dependencies. The server's answer is read as PS3.18 says: every instance
sent must be listed as stored (Referenced SOP Sequence) and none as failed (Failed SOP
Sequence, with its Failure Reason), whatever the HTTP status (200, 202, 409, 4xx, 5xx);
a body that is neither DICOM JSON nor DICOM XML is a failure that says what came back. The
secret (password or token) is read when a request is made, sent only in the Authorization
header, and removed from any text the server sends back before it reaches an error message.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import structlog
from pydicom.dataset import Dataset

from config.settings import DicomWebDestination, Settings
from dicom_node.dispatch.sender import SendError, SendResult
from dicom_node.tls import https_context
from reporting.identity import IMPLEMENTATION_VERSION_NAME

log = structlog.get_logger(__name__)

CHUNK_BYTES = 1 << 20
MAX_RESPONSE_BYTES = 16 << 20  # a STOW-RS or QIDO-RS answer is small; more is not read
DICOM_JSON, DICOM_XML = "application/dicom+json", "application/dicom+xml"
USER_AGENT = f"ldct-node ({IMPLEMENTATION_VERSION_NAME})"
NATIVE_DICOM_NAMESPACE = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
# Failure Reason (0008,1197) values that PS3.18 Table I.2-1 and PS3.4 name; others by family below.
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0112: "no such object instance",
    0x0117: "invalid object instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported",
}
HTTP_HINTS = {
    401: "check the destination's auth, username and secret",
    403: "the account may not store here",
    404: "is url the DICOMweb root?",
    413: "the server refuses a request this large",
    415: "the server does not take application/dicom",
}


@dataclass(frozen=True)
class Endpoint:
    """A DICOMweb server as one destination reaches it: root URL, credentials, TLS and timeout."""

    url: str
    authorization: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    timeout: float = 30.0

    @classmethod
    def of(cls, settings: Settings, destination: DicomWebDestination) -> Endpoint:
        """The endpoint of `destination`, with its secret read now (SendError when it cannot be)."""
        authorization = secret = None
        if destination.auth != "none":
            secret = read_secret(destination)
            if destination.auth == "basic":
                token = base64.b64encode(f"{destination.username}:{secret}".encode()).decode("ascii")
                authorization = f"Basic {token}"
            else:
                authorization = f"Bearer {secret}"
        return cls(
            url=destination.url,
            authorization=authorization,
            secret=secret,
            ssl_context=https_context(settings, destination),
            timeout=destination.timeout_seconds or settings.dispatch.timeout_seconds,
        )

    def connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if self.ssl_context is not None:
            return http.client.HTTPSConnection(host, parts.port, timeout=self.timeout, context=self.ssl_context)
        return http.client.HTTPConnection(host, parts.port, timeout=self.timeout)

    def path(self, resource: str) -> str:
        return (urlsplit(self.url).path.rstrip("/") or "") + resource

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, **extra}
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        return headers

    def redact(self, text: str) -> str:
        """`text` without the secret or the Authorization value, should a server echo them."""
        credentials = (self.authorization or "").partition(" ")[2]  # the token, or base64 of user:password
        hidden = [value for value in (self.authorization, credentials, self.secret) if value]
        for value in sorted(hidden, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


def read_secret(destination: DicomWebDestination) -> str:
    """The password or token: the first line of `secret_file`, or the variable `secret_env`."""
    if destination.secret_file is not None:
        try:
            lines = Path(destination.secret_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SendError(f"cannot read secret_file {destination.secret_file}: {type(exc).__name__}") from None
        secret = lines[0].strip() if lines else ""
        where = f"secret_file {destination.secret_file}"
    else:
        secret = os.environ.get(destination.secret_env or "", "").strip()
        where = f"environment variable {destination.secret_env}"
    if not secret:
        raise SendError(f"no secret in {where}")
    return secret


# ---- STOW-RS ---------------------------------------------------------------------------------
def stow(paths: Sequence[Path], endpoint: Endpoint) -> SendResult:
    """Store `paths` (Part 10 files) with one STOW-RS request to {url}/studies.

    Returns what the server stored and what it did not, with its reasons; raises SendError
    when the server cannot be reached or its answer says nothing per instance.
    """
    instances = [(Path(p), _sop_instance_uid(Path(p))) for p in paths]
    boundary = f"ldct-{uuid.uuid4().hex}"
    part_head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
    closing = f"--{boundary}--\r\n".encode("ascii")
    length = sum(len(part_head) + path.stat().st_size + 2 for path, _ in instances) + len(closing)
    headers = endpoint.headers(
        **{
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
            "Accept": DICOM_JSON,
        }
    )
    status, reason, content_type, body = _exchange(
        endpoint, "POST", endpoint.path("/studies"), headers, _multipart(instances, part_head, closing)
    )
    where = f"STOW-RS to {endpoint.url}"
    answer = _store_response(content_type, body)
    if answer is None:
        problem = f"answered {status} {reason}"
        if 200 <= status < 300:
            problem += ", but not with a STOW-RS response (DICOM JSON or XML)"
        raise SendError(endpoint.redact(f"{where} {problem}{_detail(status, body)}"))
    result = SendResult()
    for path, uid in instances:
        if uid in answer.failed:
            why = f"HTTP {status} {reason}, failure reason {_failure_reason(answer.failed[uid])}"
            result.failed.append((path.name, why))
        elif uid in answer.stored:
            result.sent += 1
            if answer.warnings.get(uid) is not None:
                log.warning("stored with a warning", sop_instance_uid=uid, warning=f"0x{answer.warnings[uid]:04X}")
        else:
            result.failed.append((path.name, f"HTTP {status} {reason}, not in the STOW-RS response"))
    if result.ok and not 200 <= status < 300:
        raise SendError(endpoint.redact(f"{where} answered {status} {reason}{_detail(status, body)}"))
    return result


def _sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _multipart(instances: list[tuple[Path, str]], part_head: bytes, closing: bytes) -> Iterator[bytes]:
    """The multipart/related body, read from the files as it is sent."""
    for path, _ in instances:
        yield part_head
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk
        yield b"\r\n"
    yield closing


@dataclass
class StoreResponse:
    """A Store Instances Response (PS3.18 10.5.3) by SOP Instance UID: stored (with the
    Warning Reason, if any) and failed (with the Failure Reason, if given)."""

    warnings: dict[str, int | None]
    failed: dict[str, int | None]

    @property
    def stored(self) -> set[str]:
        return set(self.warnings)


def _store_response(content_type: str, body: bytes) -> StoreResponse | None:
    """The response module in `body` (DICOM JSON or XML), None when it is not one."""
    dataset = _dicom_dataset(content_type, body)
    if dataset is None or not any(
        keyword in dataset for keyword in ("ReferencedSOPSequence", "FailedSOPSequence", "RetrieveURL")
    ):
        return None

    def by_instance(sequence: str, reason: str) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for item in dataset.get(sequence) or []:
            code = item.get(reason)
            found[str(item.get("ReferencedSOPInstanceUID", ""))] = int(code) if code is not None else None
        return found

    try:
        return StoreResponse(
            warnings=by_instance("ReferencedSOPSequence", "WarningReason"),
            failed=by_instance("FailedSOPSequence", "FailureReason"),
        )
    except (ValueError, TypeError, AttributeError):  # items that are not datasets, reasons that are not numbers
        return None


def _dicom_dataset(content_type: str, body: bytes) -> Dataset | None:
    """`body` as a dataset, from DICOM JSON (an object, or an array of one) or the Native DICOM Model XML."""
    text = body.decode("utf-8", "replace").strip()
    try:
        if "xml" in content_type or text.startswith("<"):
            return Dataset.from_json(_native_xml_as_json(ET.fromstring(text)))
        value = json.loads(text)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, dict):
            return None
        return Dataset.from_json(value)
    except (ValueError, TypeError, KeyError, AttributeError, ET.ParseError):  # not DICOM JSON/XML
        return None


def _native_xml_as_json(element: ET.Element) -> dict[str, Any]:
    """A NativeDicomModel element (PS3.19 A.1) in DICOM JSON's shape (PS3.18 F.2), for pydicom to read."""
    dataset: dict[str, Any] = {}
    for attribute in element.findall(f"{NATIVE_DICOM_NAMESPACE}DicomAttribute") or element.findall("DicomAttribute"):
        vr = attribute.attrib["vr"]
        entry: dict[str, Any] = {"vr": vr}
        items = [child for child in attribute if child.tag.endswith("Item")]
        values = [child.text or "" for child in attribute if child.tag.endswith("Value")]
        if vr == "SQ":
            entry["Value"] = [_native_xml_as_json(item) for item in items]
        elif values:
            entry["Value"] = [int(v) if vr in ("US", "UL", "SS", "SL", "IS") else v for v in values]
        dataset[attribute.attrib["tag"].upper()] = entry
    return dataset


def _failure_reason(code: int | None) -> str:
    if code is None:
        return "not given"
    meaning = FAILURE_REASONS.get(code) or {0xA7: "out of resources", 0xA9: "data set does not match SOP class"}.get(
        code >> 8, "cannot understand" if code >> 12 == 0xC else "unknown"
    )
    return f"0x{code:04X} ({meaning})"


def _detail(status: int, body: bytes) -> str:
    """A hint for the status and the start of what the server said, printable and short."""
    hint = HTTP_HINTS.get(status)
    said = " ".join(body[:4096].decode("utf-8", "replace").split())
    said = "".join(ch if ch.isprintable() else "?" for ch in said)[:200]
    return "".join(f": {part}" for part in (hint, f"server said {said!r}" if said else None) if part)


# ---- QIDO-RS (echo, health) ------------------------------------------------------------------
def query_check(endpoint: Endpoint) -> str:
    """Query {url}/studies?limit=1 (QIDO-RS): reachable, credentials accepted, DICOM JSON back.

    Returns what answered; raises SendError otherwise.
    """
    status, reason, _, body = _exchange(
        endpoint, "GET", endpoint.path("/studies?limit=1"), endpoint.headers(Accept=DICOM_JSON)
    )
    where = f"QIDO-RS to {endpoint.url}"
    if status == 204:
        return f"{where}: 204 No Content (no studies)"
    if status != 200:
        raise SendError(endpoint.redact(f"{where} answered {status} {reason}{_detail(status, body)}"))
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, list):
        raise SendError(endpoint.redact(f"{where} answered 200, but not with DICOM JSON{_detail(status, body)}"))
    return f"{where}: 200 OK"


# ---- HTTP ------------------------------------------------------------------------------------
def _exchange(
    endpoint: Endpoint, method: str, path: str, headers: dict[str, str], body: Iterator[bytes] | None = None
) -> tuple[int, str, str, bytes]:
    """One request; (status, reason, content type, body up to MAX_RESPONSE_BYTES).

    A server that answers before it has read the whole body (a 401 or 413, say) and closes the
    connection is still heard: its answer is read after the failed write.
    """
    connection = endpoint.connection()
    try:
        try:
            connection.request(method, path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError) as exc:
            sending_error: OSError | None = exc
        else:
            sending_error = None
        try:
            response = connection.getresponse()
            answer = response.read(MAX_RESPONSE_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            raise SendError(_unreachable(endpoint, sending_error or exc)) from None
        return response.status, response.reason, response.getheader("Content-Type", ""), answer
    except (OSError, http.client.HTTPException) as exc:  # refused, unresolvable, TLS, timed out
        raise SendError(_unreachable(endpoint, exc)) from None
    finally:
        connection.close()


def _unreachable(endpoint: Endpoint, exc: BaseException) -> str:
    why = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        why += " (TLS: check the server's certificate, the CA bundle, and the node's [tls] certificate if asked)"
    return endpoint.redact(f"{endpoint.url} not reachable: {why}")
