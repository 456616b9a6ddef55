"""Bearer tokens: made random, stored only as a SHA-256 hash, compared in constant time, written 0600."""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets


#: Prefix of every token: it never starts with '-' (a command line would read it as a flag), and secret
#: scanners can recognise a leaked one.
TOKEN_PREFIX = "bigseg_"


def new_token() -> str:
    """``bigseg_`` and 32 random bytes, url-safe base64 (50 characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest stored in place of ``token``."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(token: str, token_hash: str) -> bool:
    """Whether ``token`` hashes to ``token_hash``, in constant time; False for anything that is not a string."""
    if not isinstance(token, str) or not isinstance(token_hash, str) or not token_hash.isascii():
        return False
    return hmac.compare_digest(hash_token(token), token_hash)


def write_token_file(path: str | os.PathLike, token: str) -> None:
    """Write ``token`` (no trailing newline) to ``path`` with mode 0600, atomically: the file is created 0600
    beside ``path`` and renamed into place, so it is never readable by others, not even while written.
    A missing parent folder is created with mode 0700."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # whatever the umask
            f.write(token)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
