"""Claims on a store's runs, so that grid processes sharing one store (`make records` twice, or two machines on a
shared folder) compute each run once between them.

A process takes a run by creating `.claims/<record name>.claim` in the store with O_EXCL (atomic, on NFS too),
computes it, writes the record, then deletes the claim; a run that another process holds is skipped. The claim
names its holder (host, boot, pid and the process's start time) and a heartbeat thread refreshes its mtime while
the run is computed. A claim is stale, and taken over, when its holder is gone:

- on this host and boot: the process is no longer running (SIGKILL, a closed terminal); the start time tells a
  reused pid from the holder;
- on this host after a reboot: always (the boot id differs);
- on another host, whose processes cannot be seen from here: when its heartbeat is older than STALE.

Two processes that take over the same stale claim at the same instant may both compute that run: the records they
write are the same run's, written atomically, so the cost is the run's time, never a wrong record.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

FOLDER = ".claims"  # hidden, and not *.json: no reader of the store's records globs it (and .gitignore'd)
HEARTBEAT = 30.0    # seconds between refreshes of a held claim's mtime
STALE = 600.0       # seconds without a heartbeat after which another host's claim is stale (leaves room for clock skew)


def _read(file: str) -> str | None:
    try:
        return Path(file).read_text()
    except OSError:
        return None


def _boot() -> str | None:
    """This boot's id (Linux): a claim from an earlier boot of this host is stale whatever its pid."""
    return (_read("/proc/sys/kernel/random/boot_id") or "").strip() or None


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None once it has ended (a zombie too):
    with the pid, it names one process of one boot."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]


def holder() -> dict:
    """What a claim of this process says about it."""
    return {"host": socket.gethostname(), "boot": _boot(), "pid": os.getpid(), "started": _started(os.getpid())}


def stale(file: Path, now: float | None = None) -> bool:
    """Whether the claim in `file` belongs to a process that is gone (see the module's docstring)."""
    try:
        claim, beat = json.loads(file.read_text()), file.stat().st_mtime
    except FileNotFoundError:
        return True
    except (OSError, ValueError):  # half written by a holder killed between create and write: judge by its age
        claim, beat = {}, file.stat().st_mtime if file.exists() else 0.0
    me = holder()
    if claim.get("host") == me["host"] and me["boot"] and claim.get("boot") and claim.get("started"):
        return claim["boot"] != me["boot"] or _started(claim["pid"]) != claim["started"]
    return (now or time.time()) - beat > STALE


class Claims:
    """The claims this process holds on one store's runs; a context manager that releases what it still holds
    (a KeyboardInterrupt too) and stops the heartbeat."""

    def __init__(self, store: Path):
        self.folder = Path(store) / FOLDER
        self.held: set[Path] = set()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)

    def __enter__(self) -> Claims:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for file in list(self.held):
            self.release(file.stem)

    def take(self, name: str) -> bool:
        """Claim the run whose record is `name`.json: True when this process now holds it, False when a live
        process does. A stale claim is moved aside (rename is atomic: one process wins it) and taken."""
        file = self.folder / f"{name}.claim"
        for _ in range(2):
            try:
                fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not stale(file):
                    return False
                aside = file.with_name(f"{file.name}.{uuid.uuid4().hex}.stale")
                try:
                    os.rename(file, aside)
                    aside.unlink()
                except FileNotFoundError:
                    pass  # another process moved it first; try to create ours once more
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(holder(), f)
            self.held.add(file)
            return True
        return False

    def release(self, name: str) -> None:
        file = self.folder / f"{name}.claim"
        self.held.discard(file)
        file.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            for file in list(self.held):
                try:
                    os.utime(file)
                except FileNotFoundError:  # released meanwhile
                    pass
