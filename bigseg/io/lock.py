"""One job per output: a lock file inside the label group that a crashed holder cannot keep forever.

The holder rewrites the lock's heartbeat every :data:`HEARTBEAT_S` seconds. A lock is stale (and is
taken over) when its holder is a process of this machine that no longer exists, or when its heartbeat
is older than :data:`STALE_S` (a holder on another machine that stopped).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid

from bigseg.errors import OutputError
from bigseg.io import store

log = logging.getLogger(__name__)
HEARTBEAT_S = 10.0
STALE_S = 120.0
LOCK_NAME = ".bigseg-lock"


class JobLock:
    """``with JobLock(label_url):`` holds the output for one job, or raises :class:`OutputError`."""

    def __init__(self, label_url: str):
        self.label_url = label_url
        self.url = store.join(label_url, LOCK_NAME)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _content(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "heartbeat": time.time()}).encode()

    def acquire(self) -> "JobLock":
        for _ in range(2):
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="bigseg-lock", daemon=True)
                self._thread.start()
                return self
            check_free(self.label_url)
            store.remove(self.url)  # a crashed holder's lock: take it over
        raise OutputError(f"cannot take the lock {self.url}; another job is starting on the same output")

    def _create(self) -> bool:
        fs, path = store.filesystem(self.url)
        if store.is_object_store(fs):
            return self._create_object(fs, path)
        try:
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot write to {os.path.dirname(self.url)}: {err.strerror or err}") from None
        if getattr(fs, "local_file", False) or fs.protocol in ("file", ("file", "local")):
            try:  # atomic on local and network file systems
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._content())
            return True
        if fs.exists(path):  # other file systems: create, then check that we won
            return False
        store.save_bytes(self.url, self._content())
        return (read(self.url) or {}).get("token") == self.token

    def _create_object(self, fs, path: str) -> bool:
        """Object stores: a conditional put (``If-None-Match: *``, refused when the lock exists), where the
        store and its fsspec driver support one; then check that we won."""
        try:
            fs.pipe_file(path, self._content(), mode="create")
        except FileExistsError:
            return False
        except TypeError:  # the driver has no exclusive create: check, then write
            if fs.exists(path):
                return False
            store.save_bytes(self.url, self._content())
        except OSError as err:
            if err.errno == errno.EINVAL and "condition" in str(err).lower():  # 412 Precondition Failed
                return False
            raise
        return (read(self.url) or {}).get("token") == self.token

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if (read(self.url) or {}).get("token") == self.token:
                    store.save_bytes(self.url, self._content())
            except Exception as err:  # noqa: BLE001 - a store's transient failure (OSError, botocore's own): retry
                log.warning("could not renew the lock %s (%s); retrying in %.0f s", self.url, type(err).__name__,
                            HEARTBEAT_S)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (read(self.url) or {}).get("token") == self.token:
            store.remove(self.url)

    def __enter__(self) -> "JobLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_free(label_url: str) -> None:
    """Raise :class:`OutputError` if a live job holds ``label_url`` (stale locks do not count)."""
    holder = read(store.join(label_url, LOCK_NAME))
    if holder is not None and not is_stale(holder):
        raise OutputError(f"{label_url} is being written by another bigseg job (pid {holder.get('pid')} on "
                          f"{holder.get('host')}); wait for it to finish, or use another --name / --output")


def read(url: str) -> dict | None:
    """The lock's content (``None`` if there is no lock); a lock still being written counts as fresh."""
    try:
        return json.loads(store.load_bytes(url))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:  # empty or half written: as old as the file (a crash while creating it goes stale)
        fs, path = store.filesystem(url)
        try:
            return {"heartbeat": fs.modified(path).timestamp()}
        except FileNotFoundError:
            return {"heartbeat": time.time()}
        except (OSError, NotImplementedError):
            return None


def is_stale(holder: dict) -> bool:
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            pass
    return time.time() - float(holder.get("heartbeat", 0)) > STALE_S
