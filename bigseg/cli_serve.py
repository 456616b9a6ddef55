"""``bigseg serve`` (the job service) and ``bigseg serve user add|list|revoke`` (its users and their folders)."""
from __future__ import annotations

import argparse
import json
import sys


def add_serve_command(sub) -> None:
    serve = sub.add_parser("serve", help="run the job service (HTTP API and web page); 'serve user' manages users",
                           description="Run the bigseg job service. Settings: defaults < --config < flags.")
    _service_flags(serve)
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8642; 0 = any free port)")
    serve.add_argument("--root", action="append", default=[], metavar="PATH[:rw|ro]",
                       help="a folder (or s3://bucket/prefix) the admin may use; repeat for more")
    serve.add_argument("--models", action="append", default=[], metavar="FOLDER",
                       help="a folder model files may be loaded from (loading a model runs its code)")
    serve.add_argument("--runners", type=int, default=None, help="jobs run at once (default 2)")
    users = serve.add_subparsers(dest="serve_command", metavar="user")
    user = users.add_parser("user", help="add, list or revoke users")
    verbs = user.add_subparsers(dest="user_command", required=True)
    add = verbs.add_parser("add", help="add a user; prints their token once")
    add.add_argument("name")
    add.add_argument("--root", action="append", default=[], metavar="PATH[:rw|ro]", required=True,
                     help="a folder (or s3://bucket/prefix) the user may read (ro) or read and write (rw)")
    add.add_argument("--admin", action="store_true", help="sees and cancels every user's jobs")
    add.add_argument("--max-running", type=int, default=None, help="jobs of this user that run at once")
    add.add_argument("--max-queued", type=int, default=None, help="jobs this user may have waiting")
    verbs.add_parser("list", help="the users, their folders and limits")
    revoke = verbs.add_parser("revoke", help="revoke a user's token (their jobs are kept)")
    revoke.add_argument("name")
    for p in (add, verbs.choices["list"], revoke):
        _service_flags(p)


def _service_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="service settings (YAML): host, port, roots, models, limits, ...")
    p.add_argument("--data-dir", default=None, help="where the database, token and job logs live "
                   "(default $BIGSEG_DATA_DIR or ~/.local/share/bigseg)")
    p.add_argument("--database", default=None, help="sqlite:///PATH (default DATA/service.db) or "
                   "postgresql://USER:PASSWORD@HOST/DB")


def run_serve(args) -> int:
    from bigseg.service import config as service_config
    config = service_config.load(args.config, data_dir=args.data_dir, database=args.database,
                                 **({} if args.serve_command else {
                                     "host": args.host, "port": args.port, "roots": args.root or None,
                                     "models": args.models or None, "runners": args.runners}))
    if args.serve_command == "user":
        return _user(args, config)
    from bigseg.service.server import serve
    return serve(config)


def _user(args, config) -> int:
    from bigseg.service.auth import hash_token, new_token
    from bigseg.service.paths import parse_root
    from bigseg.service.server import open_store
    store = open_store(config)
    try:
        if args.user_command == "add":
            roots = [f"{r.location}:{r.mode}" for r in map(parse_root, args.root)]
            limits = {k: v for k, v in (("max_running", args.max_running), ("max_queued", args.max_queued))
                      if v is not None}
            token = new_token()
            store.add_user(args.name, hash_token(token), admin=args.admin, roots=roots, limits=limits)
            print(f"user {args.name} added; their token (shown only now, give it to them): {token}")
        elif args.user_command == "list":
            for u in store.users():
                state = "revoked" if u["disabled"] else ("admin" if u["admin"] else "user")
                print(f"{u['name']}\t{state}\t{', '.join(u['roots']) or '-'}\t{json.dumps(u['limits'] or {})}")
        elif args.user_command == "revoke":
            if not store.update_user(args.name, disabled=True):
                print(f"bigseg: error: no user '{args.name}' (bigseg serve user list shows them)", file=sys.stderr)
                return 2
            print(f"user {args.name} revoked")
    finally:
        store.dispose()
    return 0
