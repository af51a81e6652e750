"""The ``saft`` console script: the core's subcommands plus the service's.

    saft serve [--port P]          API + one worker (embedded default unless SAFT_DATABASE_URL/SAFT_BROKER_URL)
    saft api [--port P]            the API alone (production)
    saft worker                    one worker (production; one per GPU)
    saft migrate                   apply database migrations
    saft keys create --tenant T    print a new API key (last line)
    saft keys list | revoke KEY    list keys; revoke one
    saft datasets ... / jobs ...   drive a running service through saft_client (see remote_cli.py)

Service modules are imported inside the commands, so the core's commands stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

from saft_core.cli import build_parser, run, subparsers

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("saft_service.cli")

DEFAULT_TENANT = "default"


def _settings() -> Settings:
    """The settings from the environment, with logging set up at their level."""
    from .logs import setup_logging
    from .settings import get_settings

    settings = get_settings()
    setup_logging(settings.log_level)
    return settings


def cmd_migrate(args: argparse.Namespace) -> int:
    from . import db

    settings = _settings()
    db.upgrade(settings)
    print(f"database is at the newest migration ({_safe_url(settings.sqlalchemy_url)})")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from . import db, keys

    settings = _settings()
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        row, key = keys.create_key(session, tenant_name=args.tenant)
        key_id = row.id
    print(f"new API key {key_id} for tenant {args.tenant!r} (shown once; store it safely):", file=sys.stderr)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from . import db, keys

    settings = _settings()
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        rows = [
            {
                "id": k.id,
                "tenant": k.tenant.name,
                "prefix": k.prefix,
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in keys.list_keys(session, tenant_name=args.tenant)
        ]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        print(f"{r['id']}  {r['prefix']}...  tenant={r['tenant']}  created {r['created_at']}  {state}")
    if not rows:
        print("no keys" + (f" for tenant {args.tenant!r}" if args.tenant else ""), file=sys.stderr)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from saft_core.errors import SaftError

    from . import db, keys

    settings = _settings()
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        try:
            row, revoked = keys.revoke_key(session, args.key)
        except LookupError as e:
            raise SaftError(str(e), code="key_not_found") from e
        line = f"{row.id} ({row.prefix}..., tenant {row.tenant.name!r})"
    print(f"revoked {line}; requests with it now answer 401" if revoked else f"{line} was already revoked")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    if args.migrate:
        from . import db

        db.upgrade(settings)
    uvicorn.run(
        "api.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    return 0


def _worker_argv(settings: Settings, *, pool: str) -> list[str]:
    argv = [
        "worker",
        f"--loglevel={settings.log_level}",
        "--concurrency=1",
        f"--pool={pool}",
        f"--queues={settings.queue_name}",
        "--hostname=saft@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if settings.embedded_broker:
        argv.append("--without-heartbeat")
    return argv


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    from worker.app import app

    app.worker_main(_worker_argv(settings, pool=args.pool))
    return 0


def _safe_url(url: str) -> str:
    """The URL without a password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _print_banner(settings: Settings, host: str, port: int, key: str | None) -> None:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}"
    where = (
        f"embedded default (SQLite for the store and the queue, under {settings.resolved_data_dir})"
        if settings.embedded_database and settings.embedded_broker
        else f"database {_safe_url(settings.sqlalchemy_url)}, broker {_safe_url(settings.celery_broker_url)}"
    )
    print(f"SAFT service on the {where}", flush=True)
    print(f"Console: {url}/console", flush=True)
    print(f"OpenAPI docs: {url}/docs", flush=True)
    if key is None:
        print(
            f"Tenant '{DEFAULT_TENANT}' already has a key (keys are shown once); "
            f"make another with: saft keys create --tenant {DEFAULT_TENANT}",
            flush=True,
        )
    else:
        print(f"API key (tenant '{DEFAULT_TENANT}', shown once): {key}", flush=True)
    print(f"URL: {url}", flush=True)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop the worker: TERM to its main process (Celery's warm shutdown lets a running job finish), then,
    after ``grace`` seconds, KILL its whole process group. A job cut off that way goes back to the queue at
    the next ``saft serve`` and resumes from its last snapshot (see ``jobs.recover_after_restart``)."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("worker did not stop within %.0f s; killing it", grace)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import db, jobs, keys
    from .submission import send

    settings = _settings()
    # 1. Schema, a key for the default tenant, and jobs a previous run left behind.
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        key = None
        if args.new_key or not keys.tenant_has_keys(session, DEFAULT_TENANT):
            _, key = keys.create_key(session, tenant_name=DEFAULT_TENANT)
        queued = jobs.recover_after_restart(session, max_attempts=settings.max_attempts)
    # 2. One worker process (its own process group, so stopping it also stops its pool child).
    worker = subprocess.Popen(
        [sys.executable, "-m", "saft_service.cli", "worker", "--pool", args.pool],
        start_new_session=True,
        stdout=sys.stderr,  # keep stdout for the banner (URL and key)
    )
    for job_id in queued:
        with db.session_scope(settings) as session:
            send(session, settings, job_id)
    # 3. The API in this process; if the worker dies, the service stops rather than queueing forever.
    from api.main import create_app

    config = uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_config=None)
    server = uvicorn.Server(config)

    def watch() -> None:
        code = worker.wait()
        if not server.should_exit:
            log.error("the worker exited (code %s); stopping the service", code)
            server.should_exit = True

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so `finally` still stops
    # the worker (SIGINT already arrives as KeyboardInterrupt).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _print_banner(settings, args.host, args.port, key)
    try:
        server.run()
    finally:
        server.should_exit = True
        _stop(worker, grace=args.stop_grace)
    return 0 if worker.returncode in (0, -signal.SIGTERM, None) else 1


def add_service_commands(parser: argparse.ArgumentParser) -> None:
    """Add serve, api, worker, migrate and keys to the core's parser."""
    sub = subparsers(parser)

    p = sub.add_parser(
        "serve", help="run the web service: the API and one worker (embedded default: no servers)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--new-key", action="store_true", help="print a new key for tenant 'default' even if one exists"
    )
    p.add_argument(
        "--pool",
        choices=["prefork", "solo"],
        default="prefork",
        help="worker pool: prefork runs each job in a child process (default)",
    )
    p.add_argument("--stop-grace", type=float, default=30.0, help="seconds the worker gets to stop on exit")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="run the API alone (production)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--migrate", action="store_true", help="apply migrations before serving")
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1", help="proxies trusted for X-Forwarded-*")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run one job worker (production: one per GPU)")
    p.add_argument(
        "--pool",
        choices=["prefork", "solo"],
        default="prefork",
        help="prefork runs each job in a child process, which is the first to touch CUDA",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="apply the database migrations (alembic upgrade head)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("keys", help="manage API keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys_sub.add_parser("create", help="create a key for a tenant (created if new); prints it last")
    k.add_argument("--tenant", required=True, help="tenant name")
    k.set_defaults(func=cmd_keys_create)
    k = keys_sub.add_parser("list", help="list keys (id, prefix, tenant, created, revoked); never the keys")
    k.add_argument("--tenant", help="only this tenant's keys")
    k.add_argument("--json", action="store_true", help="one JSON list")
    k.set_defaults(func=cmd_keys_list)
    k = keys_sub.add_parser("revoke", help="revoke a key at once (requests with it answer 401)")
    k.add_argument("key", help="the key id (key_...), the whole key, or its prefix as listed")
    k.set_defaults(func=cmd_keys_revoke)


def main(argv: list[str] | None = None) -> int:
    from .remote_cli import add_remote_commands

    parser = build_parser()
    add_service_commands(parser)
    add_remote_commands(parser)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
