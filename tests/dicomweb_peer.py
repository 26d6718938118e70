"""A scripted HTTP peer and DICOM helpers for testing the DICOMweb sender.

`ScriptedServer` answers each request as a test tells it to (garbage, 5xx, partial failures,
XML), optionally over TLS: a faulty or unusual peer, never a stand-in for the PACS (Orthanc's
DICOMweb plugin is the PACS in tests/integration/test_dicomweb.py).
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes  # empty above KEEP_BYTES: only its length is kept
    length: int


KEEP_BYTES = 4 << 20


class ScriptedServer:
    """An HTTP server on loopback; `answer(request) -> (status, content type, body)`.

    With `tls` (a server SSLContext) it speaks https, as `localhost`."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.requests: list[Request] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body, left = bytearray(), length
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
                    if length <= KEEP_BYTES:
                        body += chunk
                request = Request(self.command, self.path, dict(self.headers.items()), bytes(body), length - left)
                server.requests.append(request)
                status, content_type, payload = server.answer(request)
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{port}/dicom-web"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.url = f"https://localhost:{port}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_instance(path: Path, extra_bytes: int = 0) -> tuple[Path, str]:
    """A small Part 10 file (secondary capture header, `extra_bytes` of private data); (path, SOP Instance UID)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SC_STORAGE, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "OT"
    if extra_bytes:
        ds.add_new(0x00090010, "LO", "LDCT TEST")
        ds.add_new(0x00091010, "OB", b"\x5a" * extra_bytes)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SC_STORAGE, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def store_response(stored: list[str], failed: dict[str, int] | None = None) -> bytes:
    """A Store Instances Response in DICOM JSON, as PS3.18 10.5.3 (and Orthanc) write it."""
    response = Dataset()
    response.ReferencedSOPSequence = [_item(uid) for uid in stored]
    response.FailedSOPSequence = []
    for uid, reason in (failed or {}).items():
        item = _item(uid)
        item.FailureReason = reason
        response.FailedSOPSequence.append(item)
    return json.dumps(response.to_json_dict()).encode()


def _item(uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = SC_STORAGE, uid
    return item
