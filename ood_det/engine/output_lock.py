"""``OutputDirLock``: one writer per output folder.

A run (training, evaluation, scoring) takes ``<folder>/.ood_det.lock`` before writing anything
there: the file is created atomically (``O_CREAT | O_EXCL``) and holds ``{pid, host, started,
command, what}``. A second writer is refused with a message naming the holder. A lock left by a
process that no longer runs on this host (killed with ``kill -9``, a crash) is stale: it is
replaced, with a warning. The lock is released on exit, on exceptions and at interpreter exit.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from typing import Optional

__all__ = ["OutputDirLock", "OutputDirLockedError", "LOCK_NAME"]

LOCK_NAME = ".ood_det.lock"
logger = logging.getLogger(__name__)


class OutputDirLockedError(RuntimeError):
    """Another live process writes to the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputDirLock:
    """Context manager holding ``<path>/.ood_det.lock``.

    Args:
        path: the output folder (created if needed).
        what: the kind of run, for the message a second writer gets (``"training"``, ``"scoring"``).
    """

    def __init__(self, path: str, what: str = "a run"):
        self.path = os.path.abspath(path)
        self.file = os.path.join(self.path, LOCK_NAME)
        self.what = what
        self._held = False

    def _info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}

    def _read(self) -> Optional[dict]:
        try:
            with open(self.file, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self) -> "OutputDirLock":
        if self._held:
            return self
        os.makedirs(self.path, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if other is None:  # being written right now, or unreadable: look again shortly
                    time.sleep(0.1)
                    other = self._read()
                same_host = other is not None and other.get("host") == socket.gethostname()
                if other is not None and same_host and not _alive(int(other.get("pid", -1))):
                    logger.warning("%s: removing the stale lock of process %s (%s, started %s), which no "
                                   "longer runs", self.path, other.get("pid"), other.get("what"), other.get("started"))
                    try:
                        os.remove(self.file)
                    except FileNotFoundError:
                        pass
                    continue
                if other is None:
                    raise OutputDirLockedError(
                        f"{self.path} is locked by {self.file}, which cannot be read: if no other ood_det run "
                        "writes there, delete that file") from None
                raise OutputDirLockedError(
                    f"{self.path} is in use by another ood_det {other.get('what', 'run')}: process "
                    f"{other.get('pid')} on {other.get('host')}, started {other.get('started')} "
                    f"({other.get('command', '?')}). Wait for it to finish, stop it, or choose another "
                    f"output folder; if that process no longer exists, delete {self.file}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._info(), f)
            self._held = True
            atexit.register(self.release)
            return self
        raise OutputDirLockedError(f"could not take {self.file}")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        info = self._read()
        if info is not None and info.get("pid") == os.getpid():
            try:
                os.remove(self.file)
            except FileNotFoundError:
                pass
        try:
            atexit.unregister(self.release)
        except Exception:  # pragma: no cover
            pass

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
