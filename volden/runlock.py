"""One writer per output: a lock file inside the folder a run writes (an apply's OUTPUT, a
training's model folder).

Two runs on one output (a SLURM job requeued while the old one still runs, a command started
twice) would remove each other's ledger pieces or declare an image complete while the other
still writes. The lock is a file created with ``O_EXCL`` (atomic on local disks and on the
shared filesystems of clusters), holding who holds it: host, pid, start time. The holder
renews the file's modification time every :data:`HEARTBEAT_S` seconds while it runs.

A lock whose holder is gone is taken over: on the holder's own host when its pid is no longer
that process (checked with the process's start time, so a reused pid does not count), on
another host when its heartbeat has not moved for :data:`LEASE_S` seconds (a requeued job on
another node waits that long for a killed job's lock; a live holder is seen within a few
heartbeats and refused at once). Takeovers go through a short-lived break file created with
``O_EXCL``, so two runs taking over one stale lock cannot both succeed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import VoldenError

LOCK_FILE = ".volden-lock"
HEARTBEAT_S = 2.0
LEASE_S = 30.0
POLL_S = 0.25


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or _process_start(pid) in (None, started)


def _read(path: Path) -> tuple[dict[str, Any] | None, int] | None:
    """The holder recorded in ``path`` and the file's mtime (ns); None when there is no file.

    Opening the file (not a bare stat) makes NFS clients fetch fresh attributes."""
    try:
        with open(path, "rb") as handle:
            data, mtime = handle.read(), os.fstat(handle.fileno()).st_mtime_ns
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(data)
    except ValueError:
        holder = None  # being written by its creator this instant, or damaged
    return (holder if isinstance(holder, dict) else None), mtime


def read_lock(folder: Path) -> dict[str, Any] | None:
    """The holder recorded in ``folder``'s lock, if there is one (alive or not)."""
    seen = _read(folder / LOCK_FILE)
    return seen[0] if seen else None


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another volden run"
    return (f"volden {holder.get('command', 'run')} on host {holder.get('host')} (pid {holder.get('pid')}, "
            f"started {holder.get('started')})")


class RunLock:
    """Hold ``folder``'s lock for a run of ``command`` (a context manager).

    ``folder`` is created when it does not exist; when the run ends and the folder holds
    nothing but the lock, it is removed again, so a refused or failed start leaves no output.
    """

    def __init__(self, folder: str | Path, command: str, lease_s: float = LEASE_S,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.folder, self.command = Path(folder), command
        self.path = self.folder / LOCK_FILE
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._created_folder = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _holder(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"command": self.command, "host": socket.gethostname(), "pid": pid,
                "process_start": _process_start(pid), "token": self.token,
                "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(json.dumps(self._holder()).encode())
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def acquire(self) -> None:
        """Take the lock, taking over one whose holder is gone; a VoldenError naming a live holder."""
        try:
            self.folder.mkdir(parents=True)
            self._created_folder = True
        except FileExistsError:
            if not self.folder.is_dir():
                raise VoldenError(f"{self.folder} exists and is not a folder") from None
        while not self._create():
            seen = _read(self.path)
            if seen is None:
                continue
            holder, mtime = seen
            if holder is None and time.time() - mtime / 1e9 < self.heartbeat_s:
                time.sleep(POLL_S)  # its creator is writing it this instant
                continue
            if self._alive(holder, mtime):
                self._forget_folder()
                raise VoldenError(f"{self.folder} is in use by {describe(holder)}; wait for it to end, "
                                  "or stop it and run again")
            self._break(holder, mtime)
        self._beat = threading.Thread(target=self._heartbeat, name="volden-lock", daemon=True)
        self._beat.start()

    def _alive(self, holder: dict[str, Any] | None, mtime: int) -> bool:
        """Whether the lock's holder still runs: its pid on this host, its heartbeat elsewhere."""
        if holder and holder.get("host") == socket.gethostname():
            return _pid_alive(int(holder["pid"]), holder.get("process_start"))
        deadline = time.monotonic() + self.lease_s
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            now = _read(self.path)
            if now is None or now[1] != mtime or now[0] != holder:
                return True  # renewed, replaced or released: someone is active; look again next time
        return False

    def _break(self, holder: dict[str, Any] | None, mtime: int) -> None:
        """Remove a stale lock, unless someone else is doing so or it changed meanwhile."""
        breaker = self.path.with_name(LOCK_FILE + ".break")
        try:
            fd = os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                if time.time() - breaker.stat().st_mtime > self.lease_s:
                    breaker.unlink(missing_ok=True)  # left by a run killed while breaking
            except FileNotFoundError:
                pass
            time.sleep(POLL_S)
            return
        os.close(fd)
        try:
            if _read(self.path) == (holder, mtime):
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def held(self) -> bool:
        """Whether the lock file still names this run (a run stalled past the lease may have lost it)."""
        seen = _read(self.path)
        return bool(seen and seen[0] and seen[0].get("token") == self.token)

    def check(self) -> None:
        """A VoldenError when this run no longer holds the lock: it must not finish the output."""
        if not self.held():
            seen = _read(self.path)
            raise VoldenError(f"{self.folder} was taken over by {describe(seen[0] if seen else None)} while this "
                              "run stalled; this run stopped without finishing it")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.held():
            self.path.unlink(missing_ok=True)
        self._forget_folder()

    def _forget_folder(self) -> None:
        """Remove the folder this run created if nothing but a lock was put in it."""
        if self._created_folder:
            try:
                self.folder.rmdir()
            except OSError:
                pass
            self._created_folder = False


def is_vacant(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but a lock (a run's output before its first write)."""
    return all(entry.name.startswith(LOCK_FILE) for entry in folder.iterdir())


def clear_folder(folder: Path) -> None:
    """Delete everything in ``folder`` but its lock (``--overwrite`` under a held lock)."""
    for entry in folder.iterdir():
        if entry.name.startswith(LOCK_FILE):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
