"""Which paths a user of the service may read and write: their roots, and the admin's model folders.

Every path in a job (input, output, model file) and every folder browsed is resolved first and then compared
with the user's roots: local paths with ``os.path.realpath`` (symlinks followed, ``..`` collapsed; a path that
does not exist yet is resolved through its nearest existing parent), object-store URLs (``s3://``, ``gs://``)
by normalised scheme, bucket and key prefix. What counts is where a path leads, not how it is spelled: a
symlink inside a root that leads outside is refused, a symlink outside the roots that leads inside is allowed.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from bigseg.errors import BigsegError, ParameterError

Mode = Literal["ro", "rw"]
#: Object stores a root (and a job's URL) may name; gcs:// is gs://.
SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs"}
#: A pretrained model's name (cyto3, nuclei, 2D_versatile_fluo); anything else in method.model is a path.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHOWN_ROOTS = 5


class PathForbidden(BigsegError):
    """A path outside the user's roots (or a model outside the model folders): HTTP 403. ``field`` names the
    spec field (``input.url``) or parameter (``path``) that holds it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


@dataclass(frozen=True)
class Root:
    """A folder a user may read (``ro``) or read and write (``rw``): a real absolute local path, or an
    object-store prefix ``s3://bucket/prefix`` (no trailing slash)."""

    location: str
    mode: Mode

    def allows(self, mode: Literal["r", "w"]) -> bool:
        return mode == "r" or self.mode == "rw"

    def contains(self, location: str) -> bool:
        """``location`` (resolved like ``self.location``) is this root or lies inside it."""
        base = self.location if self.location.endswith("/") else self.location + "/"
        return location == self.location or location.startswith(base)

    def __str__(self) -> str:
        return f"{self.location} {self.mode}"


def parse_root(text: str) -> Root:
    """``/data/x:rw``, ``/data/x:ro``, ``/data/x`` (rw), ``s3://bucket/prefix:ro``; a relative path is made
    absolute (and real). Raises :class:`ParameterError` for an unknown mode or a URL that cannot be a root."""
    text = os.fspath(text).strip()
    location, mode = text, "rw"
    head, sep, tail = text.rpartition(":")
    if sep and "/" not in tail:
        location, mode = head, tail
        if mode not in ("ro", "rw"):
            raise ParameterError(f"root '{text}': unknown mode '{mode}'; end it with :rw (read and write) or :ro "
                                 "(read only)")
    if not location:
        raise ParameterError(f"root '{text}': no folder given; write e.g. /data/alice:rw or s3://bucket/prefix:ro")
    if "://" in location:
        try:
            return Root(_normal_url(location), mode)
        except _BadUrl as err:
            raise ParameterError(f"root '{_redacted(text)}': {err}") from None
    if "\0" in location:
        raise ParameterError(f"root {text!r}: contains a NUL character; give a folder path")
    return Root(os.path.realpath(os.path.expanduser(location)), mode)


class Access:
    """What one user may read and write: their ``roots``, and the admin's ``models`` folders (model files
    run code when loaded, so they come only from there)."""

    def __init__(self, roots: list[Root], models: list[str] = ()):
        self.roots = list(roots)
        self.models = [os.path.realpath(os.fspath(m)) for m in models]

    def check(self, path_or_url: str, mode: Literal["r", "w"], field: str) -> str:
        """The resolved location of ``path_or_url`` if a root allows ``mode`` (``r``: ro or rw, ``w``: rw)
        there; else raises :class:`PathForbidden` naming ``field``."""
        given = os.fspath(path_or_url)
        location = self._resolve(given, field)
        inside = [r for r in self.roots if r.contains(location)]
        if any(r.allows(mode) for r in inside):
            return location
        where = given if location == given else f"{given} (resolves to {location})"
        if inside:
            raise PathForbidden(f"{where} is in a read-only folder ({', '.join(map(str, inside))}); "
                                f"write under a folder you can write ({self._shown('w')})", field)
        raise PathForbidden(f"{where} is outside your folders ({self._shown('r')}); choose a path inside them, "
                            "or ask an admin to add the folder", field)

    def visible(self, path_or_url: str) -> bool:
        """Whether the user may read ``path_or_url`` (no error)."""
        try:
            self.check(path_or_url, "r", "path")
        except PathForbidden:
            return False
        return True

    def check_model(self, path: str, field: str = "method.model") -> str:
        """The resolved path of model file ``path`` if it lies under one of the admin's model folders (the
        user's roots are not enough: loading a model file runs code); else raises :class:`PathForbidden`."""
        given = os.fspath(path)
        why = "model files run code when loaded"
        if not self.models:
            raise PathForbidden(f"{given}: {why} and this server has no model folders; use a pretrained model "
                                "name, or ask an admin to configure a model folder and put the file there", field)
        location = self._resolve_local(given, field)
        if any(Root(m, "ro").contains(location) for m in self.models):
            return location
        where = given if location == given else f"{given} (resolves to {location})"
        raise PathForbidden(f"{where}: {why}; only files under the admin's model folders "
                            f"({', '.join(self.models)}) are allowed: ask an admin to put it there", field)

    def check_spec(self, spec) -> None:
        """Check every path of a :class:`~bigseg.spec.JobSpec`: the input is read; the output is written,
        and without ``output.url`` the labels go inside the image, so the image must be writable; a model
        given as a path must lie under the model folders."""
        image = self.check(spec.input.url, "r", "input.url")
        if spec.output.url:
            self.check(spec.output.url, "w", "output.url")
        else:
            labels = _join(image, "labels", spec.label_name)
            try:
                self.check(labels, "w", "output.url")
            except PathForbidden:
                raise PathForbidden(
                    f"not set, so the labels would be written inside the image ({labels}), which you may not "
                    f"write; set output.url to a path under a folder you can write ({self._shown('w')})",
                    "output.url") from None
        model = getattr(spec.method, "model", None)
        if isinstance(model, str) and model and _is_model_path(spec.method, model):
            self.check_model(model, "method.model")

    def _resolve(self, given: str, field: str) -> str:
        if "://" in given:
            scheme = given.split("://", 1)[0].lower()
            if scheme == "file":
                raise PathForbidden(f"{given}: give a plain path instead of a file:// URL", field)
            try:
                return _normal_url(given)
            except _BadUrl as err:
                raise PathForbidden(f"{_redacted(given)}: {err}", field) from None
        return self._resolve_local(given, field)

    @staticmethod
    def _resolve_local(given: str, field: str) -> str:
        if "://" in given:
            raise PathForbidden(f"{given}: give a plain local path, not a URL", field)
        if "\0" in given:
            raise PathForbidden(f"{given!r}: contains a NUL character; give a plain path", field)
        if not os.path.isabs(given):
            raise PathForbidden(f"{given}: not an absolute path; give the full path, starting with /", field)
        return os.path.realpath(given)  # non-strict: a missing tail is resolved through its nearest existing parent

    def _shown(self, mode: Literal["r", "w"]) -> str:
        roots = [r for r in self.roots if r.allows(mode)]
        if not roots:
            return "you have none; ask an admin to add one"
        more = f", and {len(roots) - _SHOWN_ROOTS} more" if len(roots) > _SHOWN_ROOTS else ""
        return ", ".join(map(str, roots[:_SHOWN_ROOTS])) + more


class _BadUrl(ValueError):
    """Why a URL cannot be used; becomes a ParameterError (roots) or a PathForbidden (jobs)."""


def _normal_url(url: str) -> str:
    """``scheme://bucket/key`` with the scheme lower-cased (gcs -> gs) and no trailing slash. Refuses other
    schemes, credentials, queries, fragments, empty, ``.`` and ``..`` segments (also %-encoded)."""
    scheme, _, rest = url.partition("://")
    normal = SCHEMES.get(scheme.lower())
    if normal is None:
        raise _BadUrl(f"{scheme}:// URLs are not allowed here; use a local path or an s3:// or gs:// URL")
    if "?" in rest or "#" in rest:
        raise _BadUrl("query strings and fragments are not allowed in URLs; give scheme://bucket/key")
    bucket, _, key = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        raise _BadUrl("credentials (or ports) in URLs are not allowed; the server's storage options hold them")
    if not bucket:
        raise _BadUrl("no bucket; write e.g. s3://bucket/prefix")
    key = key.rstrip("/")
    parts = key.split("/") if key else []
    if any(urllib.parse.unquote(p) in ("", ".", "..") for p in parts):
        raise _BadUrl("empty, '.' and '..' parts are not allowed in URLs; give the plain key, e.g. "
                      "s3://bucket/folder/image.zarr")
    return f"{normal}://{bucket}" + (f"/{key}" if key else "")


def _redacted(url: str) -> str:
    """``url`` with any credentials (``user:secret@``) replaced by ``***@``: messages are logged and stored."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}{sep}***@{netloc.rpartition('@')[2]}{slash}{path}" if "@" in netloc else url


def _join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts]) if "://" in location else os.path.join(location, *parts)


def _is_model_path(method, model: str) -> bool:
    """Whether ``method.model`` names a file (checked against the model folders) rather than a pretrained
    model. The method answers if it can; a value that is not a plain name, or that exists here, is a path."""
    is_path = getattr(method, "is_path", None)
    if callable(is_path) and is_path():
        return True
    if not hasattr(type(method), "is_path"):  # a method without pretrained names: its model is always a file
        return True
    return not MODEL_NAME.fullmatch(model) or os.path.exists(model)
