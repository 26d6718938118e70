"""The DICOMweb sender against a small HTTP server that answers what each test tells it to.

The server stands for faulty or unusual peers (garbage, 5xx, partial failures, XML answers);
Orthanc's DICOMweb plugin, the real PACS, is in tests/integration/test_dicomweb.py.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
import tracemalloc

import pytest

from dicom_node.dispatch.dicomweb import Endpoint, query_check, read_secret, stow
from dicom_node.dispatch.dispatcher import Dispatcher
from dicom_node.dispatch.sender import SendError
from dicom_node.queue.jobstore import DEAD, PENDING, SENT, JobStore
from tests.dicomweb_peer import SC_STORAGE, ScriptedServer, store_response, write_instance
from tests.jobstore_fixtures import result_summary
from tests.node_fixtures import node_settings

TOKEN = "tok-3f9a1c7e5b"


@pytest.fixture
def serve():
    servers = []

    def start(answer) -> ScriptedServer:
        servers.append(ScriptedServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def parts_of(headers: dict[str, str], body: bytes) -> list[bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    )
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    parts = list(message.iter_parts())
    assert {p.get_content_type() for p in parts} == {"application/dicom"}
    return [p.get_payload(decode=True) for p in parts]


def test_stow_posts_every_file_byte_for_byte_in_one_multipart_request(serve, tmp_path):
    files = [write_instance(tmp_path / f"{n}.dcm") for n in range(3)]
    server = serve(lambda *_: (200, "application/dicom+json", store_response([uid for _, uid in files])))
    result = stow([p for p, _ in files], Endpoint(server.url, authorization=f"Bearer {TOKEN}"))
    assert result.sent == 3 and result.ok
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/dicom-web/studies")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/dicom+json"
    assert parts_of(request.headers, request.body) == [p.read_bytes() for p, _ in files]


def test_partial_failure_names_each_refused_instance_with_its_reason(serve, tmp_path):
    (a, uid_a), (b, uid_b) = write_instance(tmp_path / "a.dcm"), write_instance(tmp_path / "b.dcm")
    server = serve(lambda *_: (202, "application/dicom+json", store_response([uid_a], {uid_b: 0xA700})))
    result = stow([a, b], Endpoint(server.url))
    assert result.sent == 1
    assert result.failed == [("b.dcm", "HTTP 202 Accepted, failure reason 0xA700 (out of resources)")]


def test_orthanc_style_409_lists_failures_and_what_was_stored(serve, tmp_path):
    """Orthanc's plugin 1.7 answers 409 when any instance fails, listing the others as stored."""
    (a, uid_a), (b, uid_b) = write_instance(tmp_path / "a.dcm"), write_instance(tmp_path / "b.dcm")
    server = serve(lambda *_: (409, "application/dicom+json", store_response([uid_a], {uid_b: 0x0110})))
    result = stow([a, b], Endpoint(server.url))
    assert result.sent == 1 and result.failed == [
        ("b.dcm", "HTTP 409 Conflict, failure reason 0x0110 (processing failure)")
    ]


def test_an_instance_missing_from_a_200_answer_is_not_counted_as_stored(serve, tmp_path):
    (a, uid_a), (b, _) = write_instance(tmp_path / "a.dcm"), write_instance(tmp_path / "b.dcm")
    server = serve(lambda *_: (200, "application/dicom+json", store_response([uid_a])))
    result = stow([a, b], Endpoint(server.url))
    assert result.sent == 1 and result.failed == [("b.dcm", "HTTP 200 OK, not in the STOW-RS response")]


def test_a_dicom_xml_answer_is_read(serve, tmp_path):
    """The Native DICOM Model (PS3.19), as Orthanc writes it when asked for XML."""
    (a, uid_a), (b, uid_b) = write_instance(tmp_path / "a.dcm"), write_instance(tmp_path / "b.dcm")
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00080005" vr="CS" keyword="SpecificCharacterSet">
    <Value number="1">ISO_IR 100</Value>
  </DicomAttribute>
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081150" vr="UI"><Value number="1">{SC_STORAGE}</Value></DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">{uid_b}</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US"><Value number="1">49442</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081150" vr="UI"><Value number="1">{SC_STORAGE}</Value></DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">{uid_a}</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>""".encode()
    server = serve(lambda *_: (202, "application/dicom+xml", xml))
    result = stow([a, b], Endpoint(server.url))
    assert result.sent == 1
    assert result.failed == [
        ("b.dcm", "HTTP 202 Accepted, failure reason 0xC122 (referenced transfer syntax not supported)")
    ]


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (200, "text/html", b"<html><body>Welcome to nginx!</body></html>", "answered 200 OK, but not with a STOW-RS"),
        (200, "", b"", "answered 200 OK, but not with a STOW-RS"),
        (200, "application/json", b'{"status": "ok"}', "answered 200 OK, but not with a STOW-RS"),
        (200, "application/dicom+json", b"\x00\xff garbage \x1b[31m", "server said"),
        (500, "text/plain", b"Internal Server Error: database locked", "500 Internal Server Error"),
        (503, "", b"", "answered 503 Service Unavailable"),
        (401, "", b"", "401 Unauthorized: check the destination's auth, username and secret"),
        (302, "text/html", b"moved", "answered 302 Found"),
    ],
)
def test_answers_that_are_not_a_stow_response_are_failures_saying_what_came_back(
    serve, tmp_path, status, content_type, body, expected
):
    path, _ = write_instance(tmp_path / "a.dcm")
    server = serve(lambda *_: (status, content_type, body))
    with pytest.raises(SendError) as failure:
        stow([path], Endpoint(server.url))
    message = str(failure.value)
    assert message.startswith(f"STOW-RS to {server.url} answered {status}") and expected in message, message
    assert message.isprintable() and len(message) < 400


def test_a_secret_echoed_back_by_the_server_never_reaches_the_error(serve, tmp_path):
    path, _ = write_instance(tmp_path / "a.dcm")
    server = serve(lambda request: (500, "text/plain", f"bad header {request.headers['Authorization']}".encode()))
    with pytest.raises(SendError) as failure:
        stow([path], Endpoint(server.url, authorization=f"Bearer {TOKEN}", secret=TOKEN))
    assert TOKEN not in str(failure.value) and "***" in str(failure.value)


def test_a_large_file_is_streamed_not_loaded(serve, tmp_path):
    """64 MiB go out, with their Content-Length, in a few MiB of memory."""
    path, uid = write_instance(tmp_path / "big.dcm", extra_bytes=64 << 20)
    server = serve(lambda _: (200, "application/dicom+json", store_response([uid])))
    tracemalloc.start()
    try:
        result = stow([path], Endpoint(server.url))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.sent == 1
    [request] = server.requests
    assert request.length == int(request.headers["Content-Length"]) > path.stat().st_size
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB allocated while sending"


def test_unreachable_server_is_a_send_error(tmp_path):
    path, _ = write_instance(tmp_path / "a.dcm")
    with pytest.raises(SendError, match=r"http://127.0.0.1:9/dicom-web not reachable: .*refused"):
        stow([path], Endpoint("http://127.0.0.1:9/dicom-web", timeout=5))


def test_query_check_accepts_dicom_json_and_refuses_the_rest(serve):
    answers = iter(
        [(200, "application/dicom+json", b"[]"), (204, "", b""), (200, "text/html", b"<html/>"), (401, "", b"")]
    )
    server = serve(lambda *_: next(answers))
    endpoint = Endpoint(server.url)
    assert query_check(endpoint).endswith("200 OK")
    assert "204" in query_check(endpoint)
    with pytest.raises(SendError, match="answered 200, but not with DICOM JSON"):
        query_check(endpoint)
    with pytest.raises(SendError, match="answered 401 Unauthorized"):
        query_check(endpoint)
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/dicom-web/studies?limit=1")] * 4


def test_secret_from_file_or_environment_never_empty(tmp_path, monkeypatch):
    from config.settings import DicomWebDestination

    secret_file = tmp_path / "secret"
    secret_file.write_text(f"{TOKEN}\n")
    from_file = DicomWebDestination(
        type="dicomweb", name="w", url="https://h/dw", auth="bearer", secret_file=secret_file
    )
    assert read_secret(from_file) == TOKEN
    secret_file.write_text("\n")
    with pytest.raises(SendError, match=f"no secret in secret_file {secret_file}"):
        read_secret(from_file)
    from_env = DicomWebDestination(
        type="dicomweb", name="w", url="https://h/dw", auth="bearer", secret_env="LDCT_T_TOKEN"
    )
    monkeypatch.delenv("LDCT_T_TOKEN", raising=False)
    with pytest.raises(SendError, match="no secret in environment variable LDCT_T_TOKEN"):
        read_secret(from_env)
    monkeypatch.setenv("LDCT_T_TOKEN", TOKEN)
    assert read_secret(from_env) == TOKEN


def test_garbage_answers_keep_the_dispatch_retrying_then_dead_and_retry_delivers(serve, tmp_path, capsys, monkeypatch):
    """The dispatcher with a DICOMweb destination: a server answering garbage leaves the dispatch
    pending with the error kept and backing off, dead past the maximum age; `retry` revives it
    and it is delivered once the server answers properly. The token is in no log line or row."""
    results = tmp_path / "results"
    results.mkdir()
    (_, seg_uid), (_, sr_uid) = write_instance(results / "seg.dcm"), write_instance(results / "sr.dcm")
    behaving = threading.Event()

    def answer(_):
        if behaving.is_set():
            return 200, "application/dicom+json", store_response([seg_uid, sr_uid])
        return 200, "text/html", b"<h1>Proxy error</h1>"

    server = serve(answer)
    monkeypatch.setenv("LDCT_T_TOKEN", TOKEN)
    settings = node_settings(
        tmp_path / "data",
        destinations=[
            {"name": "web", "type": "dicomweb", "url": server.url, "auth": "bearer", "secret_env": "LDCT_T_TOKEN"}
        ],
        dispatch={"first_retry_seconds": 0.2, "max_retry_seconds": 0.4, "max_age_hours": 1.5 / 3600},
    )
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    try:
        job_id = store.enqueue_job(
            series_uid="1.2.3", study_uid="1.2", instance_uids=["1.1"], instance_set_hash="h", max_attempts=1
        )
        store.claim_job("w", 60)
        store.complete_job(job_id, "w", result_dir=str(results), summary=result_summary(), destinations=["web"])
        dispatcher = Dispatcher(settings, store)
        assert dispatcher.run_due() == 0
        [row] = store.dispatches_for(job_id)
        assert row.state == PENDING and row.attempts == 1
        assert "answered 200 OK, but not with a STOW-RS response" in row.last_error
        assert "Proxy error" in row.last_error
        assert dispatcher.run_due() == 0 and store.dispatches_for(job_id)[0].attempts == 1  # backing off
        deadline = time.monotonic() + 20
        while (row := store.dispatches_for(job_id)[0]).state != DEAD:
            assert time.monotonic() < deadline, "never dead"
            dispatcher.run_due()
            time.sleep(0.05)
        assert row.attempts >= 3 and "Proxy error" in row.last_error
        assert "dispatch to web re-queued" in store.retry_job(job_id)
        behaving.set()
        assert dispatcher.run_due() == 1
        [row] = store.dispatches_for(job_id)
        assert row.state == SENT and row.last_error is None
        [audit] = [e for e in store.audit_events() if e.kind == "dispatched"]
        assert json.loads(audit.detail)["url"] == server.url
        assert {r.headers["Authorization"] for r in server.requests} == {f"Bearer {TOKEN}"}
        captured = capsys.readouterr()
        assert "dispatch failed" in captured.out + captured.err
        assert TOKEN not in captured.out + captured.err
    finally:
        store.close()


def test_send_command_stores_by_stow_rs_to_a_dicomweb_destination(serve, tmp_path):
    from typer.testing import CliRunner

    from dicom_node.admin.cli import app

    folder = tmp_path / "files"
    folder.mkdir()
    uids = [write_instance(folder / f"{n}.dcm")[1] for n in range(2)]
    server = serve(lambda _: (200, "application/dicom+json", store_response(uids)))
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[[destinations]]\nname = "web"\ntype = "dicomweb"\nurl = "{server.url}"\n'
    )
    result = CliRunner().invoke(app, ["send", str(folder), "--to", "web", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "sent 2 of 2" in result.output
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/dicom-web/studies")]


def test_a_response_with_malformed_items_is_not_a_stow_response(serve, tmp_path):
    path, uid = write_instance(tmp_path / "a.dcm")
    malformed = {
        "00081198": {
            "vr": "SQ",
            "Value": [{"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [272, 273]}}],
        }
    }
    server = serve(lambda _: (409, "application/dicom+json", json.dumps(malformed).encode()))
    with pytest.raises(SendError, match="answered 409 Conflict: server said"):
        stow([path], Endpoint(server.url))
