"""Real peers for integration tests: Orthanc as the PACS, the node as a real process, dcmtk tools.

Each peer runs in its own temp folder on free loopback ports and is stopped by the test.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
LIDC_0002 = SHARED_DATA / "lidc-idri" / "LIDC-IDRI-0002"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def tool_env() -> dict[str, str]:
    """dcmtk 3.6.7 leaves Nagle on unless told: ~50 ms per instance otherwise."""
    return {**os.environ, "TCP_NODELAY": "1"}


class Orthanc:
    """A real Orthanc server in a temp dir, checked over its REST API."""

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, list] | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        """`modalities`: Orthanc's DicomModalities, name -> [AE title, host, port], to send to.
        `users`: user name -> password; when given, Orthanc's HTTP side (REST and plugins)
        requires basic authentication, and this wrapper logs in as the first user."""
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = modalities or {}
        self.users = users or {}
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen | None = None

    def config(self) -> dict:
        """Orthanc's JSON configuration; subclasses add plugins and their settings."""
        return {
            "Name": "test-pacs",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomCheckCalledAet": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "StableAge": 1,
            "ConcurrentJobs": 1,
            "DicomModalities": self.modalities,
        }

    def start(self) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "orthanc.json").write_text(json.dumps(self.config()))
        with open(self.workdir / "orthanc.log", "ab") as log:  # the process keeps its own descriptor
            self.process = subprocess.Popen(
                [shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(self.workdir / "orthanc.json")],
                stdout=log,
                stderr=log,
            )
        wait_until(self._alive, 30, what="Orthanc to answer on its REST port")
        return self

    def _alive(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(self.workdir / 'orthanc.log').read_text()[-2000:]}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def _open(self, path: str, timeout: float, body: bytes | None = None, headers: dict[str, str] | None = None):
        headers = dict(headers or {})
        if self.users:
            user, password = next(iter(self.users.items()))
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method="POST" if body is not None else "GET"
        )
        for name, value in headers.items():
            request.add_header(name, value)
        return urllib.request.urlopen(request, timeout=timeout)

    def get(self, path: str, accept: str | None = None):
        with self._open(path, 10, headers={"Accept": accept} if accept else None) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: bytes, content_type: str = "application/json"):
        with self._open(path, 120, body, {"Content-Type": content_type}) as resp:
            return json.loads(resp.read())

    def upload(self, paths: list[Path]) -> list[str]:
        """POST each file to /instances; returns the Orthanc instance ids."""
        ids = []
        for path in paths:
            answer = self.post("/instances", Path(path).read_bytes(), "application/dicom")
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise RuntimeError(f"Orthanc refused {Path(path).name}: {answer}")
            ids.append(answer["ID"])
        return ids

    def get_bytes(self, path: str) -> bytes:
        with self._open(path, 30) as resp:
            return resp.read()

    def instances_by_modality(self, modality: str) -> list[str]:
        ids = self.get("/instances")
        found = []
        for instance_id in ids:
            tags = self.get(f"/instances/{instance_id}/simplified-tags")
            if tags.get("Modality") == modality:
                found.append(instance_id)
        return found

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


class NodeProcess:
    """`ldct-node serve` as a real subprocess with its own config, data dir and log file."""

    def __init__(
        self,
        workdir: Path,
        destinations: list[dict],
        *,
        engine: str = "threshold",
        idle_seconds: float = 2,
        extra: str = "",
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: extra environment, e.g. LDCT_<SECTION>__<KEY> settings."""
        self.workdir = Path(workdir)
        self.env = env or {}
        self.port = free_port()
        self.data_dir = self.workdir / "data"
        self.config = self.workdir / "node.toml"
        self.log_path = self.workdir / "node.log"
        lines = [
            "[node]",
            'ae_title = "LDCTNODE"',
            f"port = {self.port}",
            'bind_address = "127.0.0.1"',
            f'data_dir = "{self.data_dir}"',
            "min_free_disk_mb = 10",
            f"workers = {workers}",
            "[series]",
            f"idle_seconds = {idle_seconds}",
            "[inference]",
            f'engine = "{engine}"',
            'device = "cpu"',
            "[dispatch]",
            "first_retry_seconds = 1",
            "max_retry_seconds = 2",
            "[logging]",
            'format = "json"',
            'level = "info"',
        ]
        for d in destinations:
            lines += ["[[destinations]]", *(f"{k} = {json.dumps(v)}" for k, v in d.items())]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(lines) + "\n" + extra)
        self.process: subprocess.Popen | None = None

    def cli(
        self, *args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """An admin command on this node's configuration (`env`: more environment, e.g. COLUMNS)."""
        return subprocess.run(
            [sys.executable, "-m", "dicom_node", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            cwd=REPO,
            env={**os.environ, **self.env, **(env or {})},
        )  # the admin's environment is the node's

    def start(self) -> NodeProcess:
        with open(self.log_path, "ab") as log:  # the process keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dicom_node", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                cwd=REPO,
                env={**os.environ, "OMP_NUM_THREADS": "2", **self.env},
            )
        wait_until(self._listening, 60, what="the node to listen")
        return self

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"node exited: {self.log_path.read_text()[-3000:]}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def jobs(self) -> list[dict]:
        return json.loads(self.cli("jobs", "--json").stdout)

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def storescu(
    port: int, paths: list[Path] | Path, called_ae: str = "LDCTNODE", calling_ae: str = "SCANNER", check: bool = True
) -> subprocess.CompletedProcess:
    args = ["storescu", "-aet", calling_ae, "-aec", called_ae]
    if isinstance(paths, Path) and paths.is_dir():
        args += ["+sd", "+r", "127.0.0.1", str(port), str(paths)]
    else:
        args += ["127.0.0.1", str(port), *map(str, paths if isinstance(paths, list) else [paths])]
    return subprocess.run(args, capture_output=True, text=True, env=tool_env(), timeout=600, check=check)
