"""C-ECHO and C-STORE as a service user: the dispatcher's DIMSE sender, and `ldct-node send`, `echo`, `health`."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE, VerificationPresentationContexts
from pynetdicom.association import Association

from dicom_node.dispatch.sender import SendError, SendResult
from reporting.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

TLSArgs = tuple[ssl.SSLContext, str]  # (client context, server name to verify)
# C-STORE-RSP statuses that mean stored: success and the warnings of PS3.4 B.2.3 (coercion,
# elements discarded, data set does not match SOP class): the instance is in the peer's archive.
STORED_STATUSES = (0x0000, 0xB000, 0xB006, 0xB007)


def _ae(calling_ae: str, timeout: float) -> AE:
    """A requestor that announces the node's own implementation identity in its A-ASSOCIATE-RQ."""
    ae = AE(ae_title=calling_ae)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _associate(ae: AE, host: str, port: int, called_ae: str, tls: TLSArgs | None = None) -> Association:
    assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not reachable"
        if tls is not None and not assoc.is_rejected:
            why += " (TLS: check the peer's certificate, the CA bundle and the server name)"
        raise SendError(f"association with {called_ae}@{host}:{port} failed: {why}")
    return assoc


def echo(
    host: str, port: int, called_ae: str, calling_ae: str = "LDCTNODE", timeout: float = 10, tls: TLSArgs | None = None
) -> None:
    """C-ECHO (over TLS when `tls` is given); raises SendError when the peer does not answer success."""
    ae = _ae(calling_ae, timeout)
    ae.requested_contexts = VerificationPresentationContexts
    assoc = _associate(ae, host, port, called_ae, tls)
    try:
        status = assoc.send_c_echo()
        if not status or status.Status != 0:
            raise SendError(
                f"C-ECHO to {called_ae}@{host}:{port} answered {status.get('Status') if status else 'nothing'}"
            )
    finally:
        assoc.release()


def send_files(
    paths: Sequence[Path],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "LDCTNODE",
    timeout: float = 30,
    progress: Callable[[int, int], None] | None = None,
    tls: TLSArgs | None = None,
) -> SendResult:
    """C-STORE each file over one association, each in its own transfer syntax.

    `tls` = (client SSL context, server name) sends over DICOM TLS (see dicom_node.tls).

    Raises SendError when no association can be made; per-instance failures are listed in
    the result so the caller decides whether to retry.
    """
    headers = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        headers.append((Path(path), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    contexts = sorted({(c, t) for _, c, t in headers})
    if len(contexts) > 128:
        raise SendError("more than 128 presentation contexts needed; send in smaller groups")
    ae = _ae(calling_ae, timeout)
    ae.maximum_pdu_size = 0
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    result = SendResult()
    assoc = _associate(ae, host, port, called_ae, tls)
    try:
        for index, (path, _, _) in enumerate(headers):
            if not assoc.is_established:
                result.failed.append((path.name, "association lost"))
                continue
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            code = status.Status if status else None
            if code in STORED_STATUSES:
                result.sent += 1
            else:
                result.failed.append((path.name, f"status 0x{code:04X}" if code is not None else "no response"))
            if progress:
                progress(index + 1, len(headers))
    finally:
        if assoc.is_established:
            assoc.release()
    return result
