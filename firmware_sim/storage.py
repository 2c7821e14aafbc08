"""The simulated charger's flash: named blobs in a directory, each replaced atomically, appended to (the agent's
journals) or read at an offset (the agent reads its journals and local list record by record), files 0600."""

from __future__ import annotations

import os
import re
from pathlib import Path

# Blob names are chosen by the agent; keep them to one safe path component.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# The agent keeps small things here (queue, config keys, local list); a blob this large is a bug, not data.
MAX_BLOB_BYTES = 4 * 1024 * 1024


class DirStorage:
    def __init__(self, directory: str | os.PathLike[str], fsync: bool = False) -> None:
        # fsync is off by default: a simulated reboot does not lose the page cache, and a fleet of agents
        # fsyncing every queue update would measure the disk rather than the protocol. temp + rename keeps
        # every blob whole either way.
        self.fsync = fsync
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.writes = 0
        self.appends = 0

    def _path(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".tmp"):
            raise ValueError(f"invalid storage blob name {name!r}")
        return self.dir / name

    def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def read_into(self, name: str, offset: int, buf: bytearray | memoryview) -> int:
        """Positional read into `buf` (the agent reads its journals and lists record by record): the number of
        bytes read, 0 past the end or when the blob is absent."""
        if offset < 0:
            raise ValueError(f"negative offset reading {name!r}")
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            view = memoryview(buf).cast("B")
            got = 0
            while got < len(view):
                data = os.pread(fd, len(view) - got, offset + got)
                if not data:
                    break
                view[got : got + len(data)] = data
                got += len(data)
            return got
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes) -> None:
        data = _as_bytes(name, data)
        if len(data) > MAX_BLOB_BYTES:
            raise ValueError(f"storage blob {name!r} is {len(data)} bytes, more than {MAX_BLOB_BYTES}")
        path = self._path(name)
        tmp = path.with_name(path.name + ".tmp")
        self._put(tmp, os.O_TRUNC, data)
        os.replace(tmp, path)
        self.writes += 1

    def append(self, name: str, data: bytes) -> None:
        """Append to the blob (created 0600 when absent). Earlier bytes are never touched; a crash mid-write
        leaves a prefix of `data`, which is what the agent's journal expects of flash."""
        data = _as_bytes(name, data)
        path = self._path(name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size + len(data) > MAX_BLOB_BYTES:
            raise ValueError(f"storage blob {name!r} would grow past {MAX_BLOB_BYTES} bytes")
        self._put(path, os.O_APPEND, data)
        self.appends += 1

    def _put(self, path: Path, mode: int, data: bytes) -> None:
        """Write `data` to the file (created 0600) opened with O_TRUNC or O_APPEND, fsync'd when asked."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o600)
        try:
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.is_file() and not p.name.endswith(".tmp"))


def _as_bytes(name: str, data: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"storage blob {name!r} must be bytes, got {type(data).__name__}")
    return bytes(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
