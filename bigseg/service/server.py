"""Starting the service: checks (database, port, host), the admin token, the dispatcher, uvicorn."""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys

from bigseg.errors import ParameterError
from bigseg.service.auth import hash_token, new_token, write_token_file
from bigseg.service.config import ServiceConfig
from bigseg.service.db import Store
from bigseg.service.paths import parse_root

log = logging.getLogger(__name__)
ADMIN = "admin"


def open_store(config: ServiceConfig) -> Store:
    """The service's database, created or checked (one-line errors)."""
    os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    return Store(config.database_url).create()


def ensure_admin(store: Store, config: ServiceConfig) -> str | None:
    """On the first start: an admin token, its hash stored, the token written to DATA/token (0600). Returns the
    new token, or None when an admin exists."""
    if any(u["admin"] for u in store.users()):
        return None
    token = new_token()
    store.add_user(ADMIN, hash_token(token), admin=True)
    write_token_file(config.token_file, token)
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line error (port in use, address not on this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ParameterError(f"port {port} on {host} is in use (another bigseg serve?); stop it or pass "
                                 "--port N") from None
        raise ParameterError(f"cannot listen on {host}:{port}: {err.strerror}; pass --host 127.0.0.1") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def serve(config: ServiceConfig, out=sys.stdout) -> int:
    """Run the service until SIGINT/SIGTERM. Job runners keep running after it stops (the next start adopts
    them)."""
    import uvicorn

    from bigseg.service.app import create_app
    from bigseg.service.dispatcher import Dispatcher

    for root in config.roots:
        parse_root(root)  # a mistyped root fails here, not at the first job
    store = open_store(config)
    if not is_loopback(config.host):
        log.warning("listening on %s, beyond this machine: tokens are required, but the traffic (tokens included) "
                    "is not encrypted; put a TLS reverse proxy in front", config.host)
    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    token = ensure_admin(store, config)
    config.apply_profiles()
    dispatcher = Dispatcher(store, config)
    app = create_app(config, store, dispatcher)
    url = f"http://{'[' + config.host + ']' if ':' in config.host else config.host}:{port}/"
    print(f"bigseg serve: {url}", file=out)
    print(f"admin token {'created in' if token else 'in'} {config.token_file} (sign in with it; it is never "
          "printed or logged)", file=out, flush=True)
    dispatcher.start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3))
    try:
        server.run(sockets=[sock])
    finally:
        dispatcher.stop()
        store.dispose()
    return 0

