"""Checking that a remote input can be read and a remote output written, before a job starts.

Object-store failures (refused credentials, a missing bucket, an unreachable endpoint) become one-line
:class:`~bigseg.errors.BigsegError` messages that say what to fix; they never contain credentials.
Local paths are checked elsewhere (:mod:`bigseg.io.ome`, :mod:`bigseg.io.labels`).
"""
from __future__ import annotations

import contextlib
import os
import uuid

import fsspec.config

from bigseg.errors import BigsegError, InputError, OutputError
from bigseg.io import store

#: Where credentials can come from, for the messages.
CREDENTIALS_HINT = ("check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the profile's "
                    "storage_options)")
ENDPOINT_HINT = "check the endpoint (AWS_ENDPOINT_URL, or the profile's storage_options endpoint_url) and the network"


def check_input(url: str, cause: BaseException | None = None) -> None:
    """Raise :class:`InputError` saying why ``url`` (an fsspec URL) cannot be read: refused credentials, an
    unreachable store, a missing bucket, nothing there. Returns if none of these is the reason. ``cause``:
    the error that opening it raised (checked first, so that a refusal costs no further request)."""
    fs, path = store.filesystem(url)
    with _translated(url, InputError, "read"):
        if cause is not None and _is_refusal(cause):
            raise cause
        _check_bucket(fs, path, url, InputError, "check the URL of the image")
        if not fs.exists(path):
            raise InputError(f"{url}: nothing there; give the URL of an OME-Zarr image")


def check_output(url: str, hint: str = "") -> None:
    """Raise :class:`OutputError` unless files can be written under ``url`` (an fsspec URL): its bucket
    exists and the credentials may write. The check writes one empty file and deletes it. ``hint`` ends
    the message of a refusal (e.g. where else to write)."""
    fs, path = store.filesystem(url)
    probe = store.join(path, f".bigseg-write-check-{uuid.uuid4().hex}")
    with _translated(url, OutputError, "write to", hint):
        _check_bucket(fs, path, url, OutputError, "create the bucket first, or choose another --output")
        if not store.is_object_store(fs):
            fs.makedirs(path, exist_ok=True)
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
            return
        new = _missing_prefixes(fs, path)
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
        for prefix in new:  # stores backed by a file system (SeaweedFS) keep the folders a put created
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(prefix + "/")


def _missing_prefixes(fs, path: str) -> list[str]:
    """``path`` and its parents inside the bucket that hold nothing yet, deepest first."""
    out = []
    path = fs._strip_protocol(path).rstrip("/")
    while "/" in path and not fs.exists(path):
        out.append(path)
        path = path.rsplit("/", 1)[0]
    return out


def _check_bucket(fs, path: str, url: str, error: type[BigsegError], fix: str) -> None:
    if not store.is_object_store(fs):
        return
    bucket = fs._strip_protocol(path).split("/", 1)[0]
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise error(f"{url}: bucket '{bucket}' does not exist; {fix}") from None


@contextlib.contextmanager
def _translated(url: str, error: type[BigsegError], verb: str, hint: str = ""):
    """Turn the object store's refusals into one-line user errors; anything else is a bug and propagates."""
    try:
        yield
    except BigsegError:
        raise
    except PermissionError as err:
        raise error(f"cannot {verb} {url}: access denied ({redact(_reason(err))}); {CREDENTIALS_HINT} and the "
                    f"bucket's permissions{hint}") from None
    except Exception as err:  # noqa: BLE001 - sorted below, re-raised when not a user's mistake
        kind = _botocore_kind(err)
        if kind == "credentials":
            raise error(f"cannot {verb} {url}: no credentials found; set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY, or the profile's storage_options") from None
        if kind == "connection" or isinstance(err, ConnectionError):
            endpoint = getattr(err, "kwargs", {}).get("endpoint_url") or _endpoint()
            where = f" at {endpoint}" if endpoint else ""
            raise error(f"cannot {verb} {url}: the object store{where} cannot be reached; {ENDPOINT_HINT}") from None
        raise


def _is_refusal(err: BaseException) -> bool:
    return isinstance(err, (PermissionError, ConnectionError)) or _botocore_kind(err) is not None


def _reason(err: BaseException) -> str:
    text = str(err.args[-1] if err.args else err) or type(err).__name__
    return text.splitlines()[0].rstrip(".")


def _botocore_kind(err: BaseException) -> str | None:
    try:
        from botocore import exceptions as bx
    except ImportError:
        return None
    if isinstance(err, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return "credentials"
    if isinstance(err, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError)):
        return "connection"
    return None


def _endpoint() -> str | None:
    return fsspec.config.conf.get("s3", {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")


def redact(text: str) -> str:
    """``text`` with any configured secret replaced by ``***`` (a last guard for messages)."""
    secrets = [os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
    for options in fsspec.config.conf.values():
        if isinstance(options, dict):
            secrets += [v for k, v in options.items() if k in ("secret", "token", "password", "account_key")]
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
