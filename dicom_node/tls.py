"""DICOM TLS (PS3.15 B.9 / BCP 195): SSL contexts for the Store SCP and for sending.

TLS 1.2 or newer, certificates verified against a configured CA bundle. The SCP asks for a
client certificate when a CA bundle is configured and insists on one when
`require_client_certificate` is set; the SCU always verifies the peer (no insecure mode)
and presents the node's own certificate when one is configured (mutual TLS).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from config.settings import DicomWebDestination, DimseDestination, Settings


class TLSError(RuntimeError):
    """Certificates or keys that cannot be loaded; the message names the file."""


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    try:
        context.load_cert_chain(certfile=str(certificate), keyfile=str(private_key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load certificate {certificate} with key {private_key}: {exc}") from exc


def _load_ca(context: ssl.SSLContext, ca_certificates: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca_certificates))
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load CA certificates {ca_certificates}: {exc}") from exc


def server_context(
    certificate: Path, private_key: Path, ca_certificates: Path | None = None, require_client_certificate: bool = False
) -> ssl.SSLContext:
    """Context for the Store SCP: our certificate, optional or required client certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, certificate, private_key)
    if ca_certificates is not None:
        _load_ca(context, ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    elif require_client_certificate:
        raise TLSError("require_client_certificate needs ca_certificates to verify clients with")
    return context


def client_context(
    ca_certificates: Path | None, certificate: Path | None = None, private_key: Path | None = None
) -> ssl.SSLContext:
    """Context for sending: the peer is verified (certificate and host name) against the CA
    bundle, or against the system's trust store when none is given (https destinations)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if ca_certificates is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, ca_certificates)
    if certificate is not None and private_key is not None:
        _load_chain(context, certificate, private_key)
    return context


def scp_context(settings: Settings) -> ssl.SSLContext | None:
    """The Store SCP's context from `[tls]`, or None when TLS is off."""
    tls = settings.tls
    identity = tls.identity()
    if not tls.enabled or identity is None:  # enabled implies an identity (checked when loaded)
        return None
    return server_context(*identity, tls.ca_certificates, tls.require_client_certificate)


def destination_tls(settings: Settings, destination: DimseDestination) -> tuple[ssl.SSLContext, str] | None:
    """(context, server name) for a TLS destination, None for plain TCP.

    The node presents its `[tls]` certificate as client certificate when one is configured.
    """
    if not destination.tls:
        return None
    ca = destination.ca_certificates or settings.tls.ca_certificates
    if ca is None:
        raise TLSError(f"destination {destination.name!r}: tls needs ca_certificates")
    context = client_context(ca, settings.tls.certificate, settings.tls.private_key)
    return context, destination.server_name or destination.host


def https_context(settings: Settings, destination: DicomWebDestination) -> ssl.SSLContext | None:
    """The context for an https DICOMweb destination, None for plain http.

    The server is verified against the destination's CA bundle, else `[tls] ca_certificates`,
    else the system's trust store; the node presents its `[tls]` certificate when one is set.
    """
    if not destination.url.startswith("https://"):
        return None
    ca = destination.ca_certificates or settings.tls.ca_certificates
    return client_context(ca, settings.tls.certificate, settings.tls.private_key)


def self_check_tls(settings: Settings) -> tuple[ssl.SSLContext, str] | None:
    """(context, name) for the node echoing its own TLS listener (`ldct-node health`).

    Only proves the listener completes a TLS handshake and answers C-ECHO: the node's own
    certificate is not verified here (it may come from another CA than the client bundle),
    but it is presented, so a listener that requires client certificates accepts the check
    when the node's certificate is signed by that CA.
    """
    tls = settings.tls
    identity = tls.identity()
    if not tls.enabled or identity is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _load_chain(context, *identity)
    return context, "localhost"


def named_destination_tls(settings: Settings, target: str) -> tuple[ssl.SSLContext, str] | None:
    """TLS arguments when `target` names a configured DIMSE TLS destination, else None (plain TCP)."""
    for destination in settings.destinations:
        if isinstance(destination, DimseDestination) and destination.name == target:
            return destination_tls(settings, destination)
    return None
