"""Security: DICOM TLS both ways against dcmtk, https to a DICOMweb destination, allow-lists
bound to addresses, no PHI in logs, owner-only data directory, and the audit trail.

Certificates are generated per session with `openssl`: a CA, a server certificate for
localhost/127.0.0.1, a client certificate, and a client certificate from a rogue CA.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from config.settings import Settings
from dicom_node.dispatch.dimse import echo, send_files
from dicom_node.dispatch.dispatcher import sender_for
from dicom_node.dispatch.sender import SendError
from dicom_node.receive.spool import Spool
from dicom_node.receive.store_scp import StoreSCP
from dicom_node.tls import TLSError, client_context, server_context
from inference.synthetic import generate_phantom, write_series
from tests.dicomweb_peer import ScriptedServer, store_response, write_instance
from tests.integration.peers import free_port, tool_env, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

SHAPE, SPACING = (24, 64, 64), (12.0, 5.3, 5.3)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(folder: Path, name: str, ca: str, subject: str, extensions: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=folder,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """ca.pem, server.{pem,key} (localhost, 127.0.0.1; server and client use, as the node needs),
    client.{pem,key}, rogue-client.{pem,key} (signed by rogue-ca.pem)."""
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=ldct-node test {ca}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            cwd=folder,
        )
    _issue(
        folder,
        "server",
        "ca",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )  # the node is both
    _issue(folder, "client", "ca", "/CN=SCANNER", "extendedKeyUsage=clientAuth\n")
    _issue(folder, "rogue-client", "rogue-ca", "/CN=INTRUDER", "extendedKeyUsage=clientAuth\n")
    return folder


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory) -> list[Path]:
    return write_series(generate_phantom(shape=SHAPE, spacing=SPACING, seed=11), tmp_path_factory.mktemp("ct"))


def tls_scp(tmp_path, pki, require_client_certificate: bool, **kwargs) -> tuple[StoreSCP, int]:
    context = server_context(pki / "server.pem", pki / "server.key", pki / "ca.pem", require_client_certificate)
    scp = StoreSCP(ae_title="LDCTNODE", spool=Spool(tmp_path / "spool"), ssl_context=context, **kwargs)
    port = free_port()
    scp.start("127.0.0.1", port)
    return scp, port


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool, *args], capture_output=True, text=True, env=tool_env(), timeout=120, check=False)


# ---- TLS, Store SCP side, driven by dcmtk -------------------------------------------------------
def test_tls_scp_with_required_client_certificate_against_dcmtk(tmp_path, pki, ct_files):
    scp, port = tls_scp(tmp_path, pki, require_client_certificate=True)
    try:
        mutual = ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem")]
        assert dcmtk("echoscu", *mutual, "-aec", "LDCTNODE", "127.0.0.1", str(port)).returncode == 0
        sent = dcmtk("storescu", *mutual, "-aec", "LDCTNODE", "127.0.0.1", str(port), *map(str, ct_files))
        assert sent.returncode == 0, sent.stderr[-1000:]
        assert len(list((tmp_path / "spool").rglob("*.dcm"))) == len(ct_files)
        # no client certificate, a certificate from another CA, or plain TCP: refused
        anonymous = dcmtk("echoscu", "+tla", "+cf", str(pki / "ca.pem"), "-aec", "LDCTNODE", "127.0.0.1", str(port))
        rogue = dcmtk(
            "echoscu",
            "+tls",
            str(pki / "rogue-client.key"),
            str(pki / "rogue-client.pem"),
            "+cf",
            str(pki / "ca.pem"),
            "-aec",
            "LDCTNODE",
            "127.0.0.1",
            str(port),
        )
        plain = dcmtk("echoscu", "-to", "5", "-ta", "5", "-aec", "LDCTNODE", "127.0.0.1", str(port))
        assert (anonymous.returncode, rogue.returncode, plain.returncode) != (0, 0, 0)
        assert anonymous.returncode != 0 and rogue.returncode != 0 and plain.returncode != 0
        # dcmtk refuses a server it cannot verify (its CA bundle lacks our CA)
        distrust = dcmtk(
            "echoscu",
            "+tls",
            str(pki / "client.key"),
            str(pki / "client.pem"),
            "+cf",
            str(pki / "rogue-ca.pem"),
            "-aec",
            "LDCTNODE",
            "127.0.0.1",
            str(port),
        )
        assert distrust.returncode != 0
    finally:
        scp.stop()


def test_tls_scp_with_optional_client_certificate_accepts_anonymous_tls(tmp_path, pki):
    scp, port = tls_scp(tmp_path, pki, require_client_certificate=False)
    try:
        anonymous = dcmtk("echoscu", "+tla", "+cf", str(pki / "ca.pem"), "-aec", "LDCTNODE", "127.0.0.1", str(port))
        assert anonymous.returncode == 0, anonymous.stderr[-800:]
        rogue = dcmtk(
            "echoscu",
            "+tls",
            str(pki / "rogue-client.key"),
            str(pki / "rogue-client.pem"),
            "+cf",
            str(pki / "ca.pem"),
            "-aec",
            "LDCTNODE",
            "127.0.0.1",
            str(port),
        )
        assert rogue.returncode != 0  # a certificate that is presented must verify
    finally:
        scp.stop()


# ---- TLS, SCU side, against dcmtk's storescp ---------------------------------------------------
@pytest.fixture
def tls_storescp(tmp_path, pki):
    """dcmtk storescp with TLS, requiring a client certificate from our CA."""
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(
        [
            "storescp",
            "+tls",
            str(pki / "server.key"),
            str(pki / "server.pem"),
            "+cf",
            str(pki / "ca.pem"),
            "-rc",
            "-od",
            str(out),
            "-aet",
            "TLSPACS",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=tool_env(),
    )

    def listening():
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 20, what="storescp to listen")
    yield port, out
    proc.terminate()
    proc.wait(10)


def test_scu_sends_over_tls_with_client_certificate_to_dcmtk(tls_storescp, pki, ct_files):
    port, out = tls_storescp
    context = client_context(pki / "ca.pem", pki / "client.pem", pki / "client.key")
    echo("127.0.0.1", port, "TLSPACS", tls=(context, "localhost"))
    result = send_files(ct_files[:3], "127.0.0.1", port, "TLSPACS", tls=(context, "localhost"))
    assert result.ok and result.sent == 3
    assert len(list(out.iterdir())) == 3
    # without a client certificate the peer refuses; a wrong server name is refused by us
    no_cert = client_context(pki / "ca.pem")
    with pytest.raises(SendError):
        send_files(ct_files[:1], "127.0.0.1", port, "TLSPACS", tls=(no_cert, "localhost"))
    with pytest.raises(SendError, match="TLS"):
        echo("127.0.0.1", port, "TLSPACS", tls=(context, "pacs.example.org"))
    with pytest.raises(TLSError):
        client_context(pki / "missing.pem")


# ---- the node as a process: TLS in, TLS out, allow-list, PHI, permissions, audit --------------
KNOWN_NAME, KNOWN_ID, KNOWN_BIRTH = "Zwicky^Fritzinella", "PID-7734911", "19370214"


@pytest.mark.slow
def test_node_over_tls_both_ways_no_phi_in_logs_audit_and_permissions(make_node, tls_storescp, pki, tmp_path):
    pacs_port, received = tls_storescp
    extra = (
        f'\n[tls]\nenabled = true\ncertificate = "{pki / "server.pem"}"\nprivate_key = "{pki / "server.key"}"\n'
        f'ca_certificates = "{pki / "ca.pem"}"\nrequire_client_certificate = true\n'
    )
    node = make_node(None, engine="threshold", idle_seconds=2, extra=extra)
    text = node.config.read_text().replace('level = "info"', 'level = "debug"')
    text = text.replace(
        "[inference]",
        '[[destinations]]\nname = "pacs"\nae_title = "TLSPACS"\nhost = "127.0.0.1"\n'
        f'port = {pacs_port}\ntls = true\nserver_name = "localhost"\n[inference]',
    )
    text = text.replace(
        "[series]",
        '[[node.allowed_peers]]\nae_title = "SCANNER"\naddresses = ["127.0.0.1"]\n'
        # the node's own AE from loopback only: `ldct-node health` echoes itself
        '[[node.allowed_peers]]\nae_title = "LDCTNODE"\naddresses = ["127.0.0.1"]\n[series]',
    )
    node.config.write_text(text)
    node.start()
    series = tmp_path / "phi"
    paths = write_series(
        generate_phantom(shape=SHAPE, spacing=SPACING, seed=12),
        series,
        patient_name=KNOWN_NAME,
        patient_id=KNOWN_ID,
        accession_number="ACC-99812",
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = KNOWN_BIRTH
        ds.save_as(path)
    mutual = ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem")]
    sent = dcmtk(
        "storescu", *mutual, "-aet", "SCANNER", "-aec", "LDCTNODE", "127.0.0.1", str(node.port), *map(str, paths)
    )
    assert sent.returncode == 0, sent.stderr[-1000:]
    # an unknown calling AE over valid TLS is refused at association and audited
    stranger = dcmtk("echoscu", *mutual, "-aet", "STRANGER", "-aec", "LDCTNODE", "127.0.0.1", str(node.port))
    assert stranger.returncode != 0
    wait_until(lambda: len(list(received.iterdir())) >= 2, 120, interval=1, what="SEG and SR at the TLS PACS")
    modalities = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in received.iterdir()}
    assert {"SEG", "SR"} <= modalities
    job = wait_until(
        lambda: (lambda js: js[0] if js and js[0]["dispatches"][0]["state"] == "sent" else None)(node.jobs()),
        60,
        what="dispatch recorded as sent",
    )
    # admin commands speak TLS too: health echoes the TLS listener, echo the TLS destination
    health = node.cli("health", "--destinations", check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    assert node.cli("echo", "pacs").returncode == 0
    # no patient name (any component), ID, birth date or accession number in any log line
    node.stop()
    logs = node.log_path.read_text(errors="replace")
    assert '"level": "debug"' in logs or "instance stored" in logs  # debug logging was really on
    forbidden = ["Zwicky", "Fritzinella", KNOWN_ID, KNOWN_BIRTH, "1937-02-14", "ACC-99812"]
    for line in logs.splitlines():
        assert not [f for f in forbidden if f in line], line[:300]
    # data directory owner-only
    assert stat.S_IMODE(os.stat(node.data_dir).st_mode) == 0o700
    # the audit trail: who sent what, what the job produced, where it went, who was refused
    audit = json.loads(node.cli("audit", "--json").stdout)
    kinds = {e["kind"]: e for e in audit}
    assert kinds["receiving"]["detail"]["calling_ae"] == "SCANNER"
    assert kinds["receiving"]["detail"]["peer"] == "127.0.0.1"
    assert kinds["receiving"]["series_uid"] == job["series_uid"]
    assert kinds["job_done"]["detail"]["seg"] == job["summary"]["seg"][1]
    assert kinds["job_done"]["detail"]["sr"] == job["summary"]["sr"][1]
    assert kinds["dispatched"]["detail"]["ae_title"] == "TLSPACS"
    assert kinds["association_rejected"]["detail"] == {"calling_ae": "STRANGER", "peer": "127.0.0.1"}
    assert not [f for f in forbidden if f in json.dumps(audit)]
    assert "SCANNER" in node.cli("audit").stdout


# ---- allow-list bound to source addresses (in-process, two loopback addresses) ------------------
def test_allow_list_binds_calling_ae_titles_to_source_addresses(tmp_path, ct_files):
    rejected = []
    scp = StoreSCP(
        ae_title="LDCTNODE",
        spool=Spool(tmp_path / "spool"),
        allowed_calling_ae_titles=["ANYWHERE"],
        allowed_peers={"SCANNER": ["127.0.0.2/32"]},
        on_rejected=lambda ae, peer: rejected.append((ae, peer)),
    )
    port = free_port()
    scp.start("0.0.0.0", port)

    def associates(calling: str, source: str) -> bool:
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate(source, port, ae_title="LDCTNODE", bind_address=(source, 0))
        ok = assoc.is_established
        if ok:
            assoc.release()
        return ok

    try:
        assert associates("SCANNER", "127.0.0.2")
        assert not associates("SCANNER", "127.0.0.1")  # right title, wrong address
        assert associates("ANYWHERE", "127.0.0.1")  # unbound title: from any address
        assert not associates("STRANGER", "127.0.0.2")
        assert rejected == [("SCANNER", "127.0.0.1"), ("STRANGER", "127.0.0.2")]
    finally:
        scp.stop()


# ---- https to a DICOMweb destination --------------------------------------------------------
@pytest.mark.parametrize(
    ("ca", "node_identity", "delivered"),
    [
        ("ca.pem", True, True),  # server verified, the node's certificate accepted
        ("rogue-ca.pem", True, False),  # a server certificate the CA bundle does not vouch for
        (None, True, False),  # no bundle: the system's CAs, which do not know the test CA
        ("ca.pem", False, False),  # the server requires a client certificate the node does not have
    ],
)
def test_dicomweb_over_https_verifies_the_server_and_presents_the_node_certificate(
    tmp_path, pki, ca, node_identity, delivered
):
    path, instance_uid = write_instance(tmp_path / "sr.dcm")
    tls = server_context(pki / "server.pem", pki / "server.key", pki / "ca.pem", require_client_certificate=True)
    server = ScriptedServer(lambda _: (200, "application/dicom+json", store_response([instance_uid])), tls=tls)
    try:
        identity = {"certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key")}
        settings = Settings.model_validate(
            {
                "tls": identity if node_identity else {},
                "destinations": [
                    {"name": "web", "type": "dicomweb", "url": server.url}
                    | ({"ca_certificates": str(pki / ca)} if ca else {})
                ],
            }
        )
        send = sender_for(settings, settings.destination("web"))
        if delivered:
            assert send([path]).sent == 1
            assert len(server.requests) == 1
        else:
            with pytest.raises(SendError, match="not reachable"):
                send([path])
            assert server.requests == []
    finally:
        server.close()
