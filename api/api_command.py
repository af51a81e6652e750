"""``saft api``: the API alone, for production (the worker runs elsewhere, one per GPU)."""

from __future__ import annotations

import argparse

from saft_core.cli import Subcommands
from saft_service.service_commands import settings_from_env


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = settings_from_env()
    if args.migrate:
        from saft_service import db

        db.upgrade(settings)
    if args.workers > 1:
        # One /metrics for all worker processes: each writes its metrics where any of them can sum them.
        from saft_service.metrics_dir import use_multiprocess_dir

        use_multiprocess_dir("api")
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


def register(sub: Subcommands) -> None:
    """Add ``api`` to the ``saft`` parser's sub-commands."""
    p = sub.add_parser("api", help="run the API alone (production)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--migrate", action="store_true", help="apply migrations before serving")
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1", help="proxies trusted for X-Forwarded-*")
    p.set_defaults(func=cmd_api)
