"""A real PostgreSQL server for tests: initdb in a temp dir, own port, unix socket only.

Debian's `postgresql` package (installed by .ci/run) provides the binaries in
/usr/lib/postgresql/<version>/bin. PostgreSQL refuses to run as root, so when the tests run
as root the server runs as the `postgres` user in a temp dir that user owns. Clients connect
over the unix socket in that dir with trust authentication; nothing listens on TCP.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from tests.integration.peers import REPO, free_port, wait_until

SUPERUSER = "ldct"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries, or no unprivileged user to run them as."""


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl (newest Debian version first, then PATH)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    raise PostgresUnavailable("PostgreSQL is not installed (no initdb/pg_ctl; apt-get install postgresql)")


class PostgresServer:
    """One throw-away cluster; `database_url()` creates a fresh database per caller."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server") from exc
            self.as_user = "postgres"
        self.root = Path(tempfile.mkdtemp(prefix="ldct-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.log = self.root / "server.log"
        self.port = free_port()
        self.started = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False)
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr[-2000:]}\n{log}")
        return result

    def start(self) -> PostgresServer:
        if self.as_user:
            user = pwd.getpwnam(self.as_user)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o755)  # the socket must be reachable by the (root) clients
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses='' -c fsync=off "
            f"-c max_connections=200 -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        self.started = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    def database_url(self, name: str | None = None) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = name or f"ldct_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            finally:
                self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


# ---- node processes sharing one database and spool ------------------------------------------
def database_section(url: str, lease_seconds: float = 300, heartbeat_seconds: float = 30) -> str:
    """TOML appended to a NodeProcess config: the shared database and the lease timing."""
    return (
        f'\n[database]\nurl = "{url}"\n'
        f"[jobs]\nlease_seconds = {lease_seconds}\nheartbeat_seconds = {heartbeat_seconds}\n"
    )


def start_cli_process(node, *args: str, log_name: str) -> subprocess.Popen:
    """Another `python -m dicom_node <args>` on `node`'s config and environment (same database and spool)."""
    with open(node.workdir / log_name, "ab") as log:  # the process keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_node", *args, "--config", str(node.config)],
            stdout=log,
            stderr=log,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1", **node.env},
        )


def start_receiver(node) -> None:
    """`ldct-node serve --no-workers` in place of NodeProcess.start(): receive and dispatch only."""

    node.process = start_cli_process(node, "serve", "--no-workers", log_name=node.log_path.name)
    wait_until(node._listening, 60, what="the receiving node to listen")
