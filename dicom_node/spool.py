"""The spool: received instances as raw files, written atomically.

Layout: `<data_dir>/spool/<study uid>/<series uid>/<sop instance uid>.dcm`. Bytes are written
to a temporary file in the same filesystem, fsynced and renamed into place, so a reader never
sees half a file and a crash leaves at most a stray temporary file (cleaned at start).

Durability (`durable=True`, the default): the file and then its folder (and any folder
created for it) are fsynced before `store` returns, so an acknowledged instance survives a
power cut, not only a process crash. `durable=False` returns once the kernel has the bytes,
as dcmtk's storescp and Orthanc do: several times faster on slow-to-sync disks, but
instances acknowledged in the last seconds before a power cut or kernel crash can be lost.

The spool may be shared (a receiving host and GPU worker hosts mount the same path), so a
temporary file is named after its host and process and only the files of dead processes on
this host, or abandoned ones older than a day, are cleaned: a worker starting elsewhere
never removes a file that a live receiver is writing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TMP_DIR_NAME = ".incoming"
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

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return self.root / study_uid / series_uid

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.series_dir(study_uid, series_uid) / f"{sop_uid}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_room(self, incoming: int = 0) -> bool:
        return self.free_bytes() - incoming >= self.min_free_bytes

    def differs(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> bool:
        """True when this instance is already stored with different bytes (a changed re-send)."""
        try:
            path = self.instance_path(check_uid(study_uid, "StudyInstanceUID"),
                                      check_uid(series_uid, "SeriesInstanceUID"),
                                      check_uid(sop_uid, "SOPInstanceUID"))
            return path.stat().st_size != len(data) or path.read_bytes() != data
        except FileNotFoundError:
            return False

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one instance durably; returns its final path."""
        study_uid = check_uid(study_uid, "StudyInstanceUID")
        series_uid = check_uid(series_uid, "SeriesInstanceUID")
        sop_uid = check_uid(sop_uid, "SOPInstanceUID")
        target_dir = self.series_dir(study_uid, series_uid)
        if not target_dir.is_dir():
            self._make_dirs(target_dir)
        tmp_path = self.tmp / f"{sop_uid}~{_HOST}~{os.getpid()}~{uuid.uuid4().hex[:12]}.part"
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp_path.unlink(missing_ok=True)
            raise
        os.close(fd)
        final = target_dir / f"{sop_uid}.dcm"
        os.replace(tmp_path, final)
        if self.durable:
            _fsync_dir(target_dir)
        return final

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

    @staticmethod
    def instance_files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("*.dcm") if p.is_file())


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_PART_NAME = re.compile(r"^[0-9.]+~([A-Za-z0-9_-]+)~(\d+)~[0-9a-f]+\.part$")


def _part_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a temporary file's writer, None for a name this version did not write."""
    match = _PART_NAME.match(name)
    return (match.group(1), int(match.group(2))) if match else None


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
