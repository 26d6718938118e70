"""The spool: received instances as raw files, written atomically.

Layout: `<data_dir>/spool/<study uid>/<series uid>/<sop instance uid>.dcm`. Bytes are written
to a temporary file in the same filesystem as they arrive (`Spool.receive`), then fsynced and
renamed into place once the instance is complete and checked, so a reader never sees half a
file and a crash leaves at most a stray temporary file (cleaned at start).

Durability (`durable=True`, the default): the file and then its folder (and any folder
created for it) are fsynced before `IncomingFile.commit` returns, so an acknowledged instance survives a
power cut, not only a process crash. `durable=False` returns once the kernel has the bytes,
as dcmtk's storescp does (Orthanc syncs each file by default, `SyncStorageArea`): faster, but
instances acknowledged in the last seconds before a power cut or kernel crash can be lost.

The spool may be shared (a receiving host and GPU worker hosts mount the same path), so a
temporary file is named after its host and process and only the files of dead processes on
this host, or abandoned ones older than a day, are cleaned: a worker starting elsewhere
never removes a file that a live receiver is writing.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from config.settings import Settings

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TMP_DIR_NAME = ".incoming"
HEAD_BYTES = 64 * 1024  # kept in memory while receiving: enough for a CT header
PREPARED_FILES = 8  # empty temporary files kept ready for the next instances
PREPARED_MAX_AGE_SECONDS = 3600  # older ones are replaced (shared spools clean day-old files)
ABANDONED_PART_SECONDS = 24 * 3600


class InvalidUID(ValueError):
    pass


def check_uid(uid: str, what: str) -> str:
    """UIDs become path components: accept only the UID grammar (digits and dots, 64 max)."""
    uid = (uid or "").strip().rstrip("\x00")
    if len(uid) > 64 or not UID_PATTERN.match(uid):
        raise InvalidUID(f"{what} {uid[:70]!r} is not a valid UID")
    return uid


class Spool:
    def __init__(self, root: Path, min_free_bytes: int = 0, durable: bool = True) -> None:
        self.root = Path(root)
        self.tmp = self.root / TMP_DIR_NAME
        self.min_free_bytes = min_free_bytes
        self.durable = durable
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.prepared = _PreparedFiles(self.tmp, PREPARED_FILES)

    @classmethod
    def from_settings(cls, settings: Settings) -> Spool:
        """The spool under `node.data_dir`, as the node and its receiver processes share it."""
        return cls(
            Path(settings.node.data_dir) / "spool",
            settings.node.min_free_disk_mb * 1024 * 1024,
            durable=settings.node.acknowledge_after == "disk",
        )

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return self.root / study_uid / series_uid

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where an instance is kept; raises InvalidUID for anything but UIDs (they become paths)."""
        return (
            self.series_dir(check_uid(study_uid, "StudyInstanceUID"), check_uid(series_uid, "SeriesInstanceUID"))
            / f"{check_uid(sop_uid, 'SOPInstanceUID')}.dcm"
        )

    def instances_of(self, study_uid: str, series_uid: str, sop_uids: list[str]) -> list[Path]:
        """The spooled files of these instances, in the order given; FileNotFoundError names
        one that is gone."""
        files = [self.instance_path(study_uid, series_uid, uid) for uid in sop_uids]
        missing = [p.name for p in files if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} spooled instance(s) missing, e.g. {missing[0]}")
        return files

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_room(self) -> bool:
        return self.free_bytes() >= self.min_free_bytes

    def receive(self) -> IncomingFile:
        """A temporary file for an instance whose bytes are still arriving."""
        return IncomingFile(self, *self.prepared.take())

    def close(self) -> None:
        """Remove the temporary files prepared ahead and stop preparing them."""
        self.prepared.close()

    def _make_dirs(self, target_dir: Path) -> None:
        """Create a series folder; when durable, sync each new folder's parent so it persists."""
        missing = [d for d in (target_dir.parent, target_dir) if not d.is_dir()]
        target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.durable:
            for folder in missing:
                _fsync_dir(folder.parent)

    def clean_temporary(self) -> int:
        """Remove partial files left by a crash; they were never acknowledged.

        Only files of dead processes on this host, or older than a day (any host), go: the
        spool may be shared with live receivers elsewhere.
        """
        removed = 0
        now = time.time()
        for part in self.tmp.glob("*.part"):
            owner = _part_owner(part.name)
            try:
                age = now - part.stat().st_mtime
            except FileNotFoundError:
                continue
            mine_and_dead = owner is not None and owner[0] == _HOST and not pid_alive(owner[1])
            if mine_and_dead or owner is None or age > ABANDONED_PART_SECONDS:
                part.unlink(missing_ok=True)
                removed += 1
        return removed

    def series_dirs(self) -> list[tuple[str, str, Path]]:
        """(study uid, series uid, folder) for every series in the spool."""
        found = []
        for study in self.root.iterdir():
            if study.name == TMP_DIR_NAME or not study.is_dir():
                continue
            for series in study.iterdir():
                if series.is_dir():
                    found.append((study.name, series.name, series))
        return found

    def remove_series(self, study_uid: str, series_uid: str) -> None:
        """Remove a series' folder, and its study's folder when that was the study's last series."""
        folder = self.series_dir(study_uid, series_uid)
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: other series of the study are spooled
            folder.parent.rmdir()

    @staticmethod
    def instance_files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("*.dcm") if p.is_file())


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_PART_NAME = re.compile(r"^(?:[0-9.]+~)?([A-Za-z0-9_-]+)~(\d+)~[0-9a-f]+\.part$")


def _part_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a temporary file's writer, None for a name this version did not write."""
    match = _PART_NAME.match(name)
    return (match.group(1), int(match.group(2))) if match else None


class IncomingFile:
    """One instance being received: bytes go to a temporary file as they arrive.

    `head` keeps the first HEAD_BYTES in memory for the header check; `commit` moves the
    file into the series folder (after fsync when the spool is durable), `discard` drops it.
    """

    def __init__(self, spool: Spool, path: Path, fd: int) -> None:
        self.spool, self.path = spool, path
        self.fd: int | None = fd
        self.head = bytearray()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        fd = self._open_fd()
        view = memoryview(data)
        if len(self.head) < HEAD_BYTES:
            self.head += view[: HEAD_BYTES - len(self.head)]
        self.size += len(view)
        while view:
            view = view[os.write(fd, view) :]

    def _open_fd(self) -> int:
        if self.fd is None:
            raise ValueError(f"{self.path.name} was already committed or discarded")
        return self.fd

    def read_all(self) -> bytes:
        """Everything written so far (for checks the head alone cannot answer)."""
        return self.path.read_bytes()

    def replaces_different(self, final: Path) -> bool:
        """True when `final` already holds other bytes than these (a changed re-send)."""
        try:
            return final.stat().st_size != self.size or not filecmp.cmp(final, self.path, shallow=False)
        except FileNotFoundError:
            return False

    def commit(self, final: Path) -> None:
        """Move into place at `final` (see `Spool.instance_path`), replacing an earlier copy."""
        final_dir = final.parent
        try:
            if not final_dir.is_dir():
                self.spool._make_dirs(final_dir)
            fd = self._open_fd()
            if self.spool.durable:
                os.fsync(fd)
            os.close(fd)
            self.fd = None
            os.replace(self.path, final)
        except BaseException:
            self.discard()
            raise
        if self.spool.durable:
            _fsync_dir(final_dir)

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.path.unlink(missing_ok=True)


def _create_part(tmp: Path) -> tuple[Path, int, float]:
    """A new empty temporary file named after this host and process: (path, fd, created)."""
    path = tmp / f"{_HOST}~{os.getpid()}~{uuid.uuid4().hex[:12]}.part"
    return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), time.monotonic()


class _PreparedFiles:
    """Empty temporary files created ahead of need by a background thread.

    Creating a file (a change to the folder) is a sizeable part of the time spent receiving
    a CT instance; made while the network is busy, it is off the path between the last byte
    and the acknowledgement. The thread is woken when half the files are
    used and refills them all (one wake-up per `count // 2` instances, not one per instance).
    When none is ready the caller creates one.
    """

    def __init__(self, tmp: Path, count: int) -> None:
        self.tmp, self.count = tmp, count
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ready: deque[tuple[Path, int, float]] = deque()
        self._refill = False
        self._thread: threading.Thread | None = None
        self._closing = False

    def take(self) -> tuple[Path, int]:
        with self._lock:
            if self._thread is None:
                self._start()
            prepared = self._ready.popleft() if self._ready else None
            if len(self._ready) <= self.count // 2 and not self._refill:
                self._refill = True
                self._wake.notify()
        if prepared is not None and time.monotonic() - prepared[2] > PREPARED_MAX_AGE_SECONDS:
            _remove(prepared)  # a shared spool's clean-up may take day-old files: never use stale ones
            prepared = None
        path, fd, _ = prepared or _create_part(self.tmp)
        return path, fd

    def _start(self) -> None:
        self._closing, self._refill = False, True
        self._thread = threading.Thread(target=self._fill, name="spool-prepare", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while True:
            with self._lock:
                while not (self._refill or self._closing):
                    self._wake.wait()
                if self._closing:
                    return
                missing = self.count - len(self._ready)
            prepared = []
            try:
                for _ in range(missing):
                    prepared.append(_create_part(self.tmp))
            except OSError:
                time.sleep(1)  # disk full or unwritable: take() creates inline and reports it
            with self._lock:
                if self._closing:
                    for item in prepared:
                        _remove(item)
                    return
                self._ready.extend(prepared)
                self._refill = not prepared or len(self._ready) <= self.count // 2  # used meanwhile

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._closing = True
            ready, self._ready = list(self._ready), deque()
            self._wake.notify()
        if thread is not None:
            thread.join(5)
        for prepared in ready:
            _remove(prepared)


def _remove(prepared: tuple[Path, int, float]) -> None:
    path, fd, _ = prepared
    os.close(fd)
    path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host (also when it is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
