"""The service's commands of ``saft``: database migrations, API keys, tenants' shares.

    saft migrate                   apply database migrations
    saft keys create --tenant T    print a new API key (last line)
    saft keys list | revoke KEY    list keys; revoke one
    saft tenants share T [SHARE]   show or set a tenant's share of the workers (saft_service/dispatch.py)

``register(sub)`` adds them to the ``saft`` parser (composed in ``saft_cli``). Service modules are imported
inside the commands, so the core's commands stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from saft_core.cli import Subcommands

if TYPE_CHECKING:
    from .settings import Settings


def settings_from_env() -> Settings:
    """The settings from the environment, with logging set up at their level (for every service command)."""
    from .logs import setup_logging
    from .settings import get_settings

    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format)
    return settings


def cmd_migrate(args: argparse.Namespace) -> int:
    from . import db

    settings = settings_from_env()
    db.upgrade(settings)
    print(f"database is at the newest migration ({safe_url(settings.sqlalchemy_url)})")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from . import db, keys

    settings = settings_from_env()
    db.upgrade(settings, quiet=True)
    with db.session_scope(settings) as session:
        row, key = keys.create_key(session, tenant_name=args.tenant)
        key_id = row.id
    print(f"new API key {key_id} for tenant {args.tenant!r} (shown once; store it safely):", file=sys.stderr)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from . import db, keys

    settings = settings_from_env()
    db.upgrade(settings, quiet=True)
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

    settings = settings_from_env()
    db.upgrade(settings, quiet=True)
    with db.session_scope(settings) as session:
        try:
            row, revoked = keys.revoke_key(session, args.key)
        except LookupError as e:
            raise SaftError(str(e), code="key_not_found") from e
        line = f"{row.id} ({row.prefix}..., tenant {row.tenant.name!r})"
    print(f"revoked {line}; requests with it now answer 401" if revoked else f"{line} was already revoked")
    return 0


def cmd_tenants_share(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from saft_core.errors import SaftError

    from . import db
    from .tables import Tenant

    settings = settings_from_env()
    db.upgrade(settings, quiet=True)
    with db.session_scope(settings) as session:
        tenant = session.scalars(select(Tenant).where(Tenant.name == args.tenant)).one_or_none()
        if tenant is None:
            raise SaftError(f"no tenant {args.tenant!r} (tenants are made by `saft keys create`)",
                            code="tenant_not_found")
        if args.share is not None:
            tenant.share = args.share
        share = tenant.share
    print(f"tenant {args.tenant!r}: share {share:g} (turns in dispatch relative to share-1 tenants)")
    return 0


def _share(text: str) -> float:
    value = float(text)
    if not 0.01 <= value <= 100:
        raise argparse.ArgumentTypeError(f"a share is between 0.01 and 100, not {text}")
    return value


def safe_url(url: str) -> str:
    """The URL without a password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def register(sub: Subcommands) -> None:
    """Add migrate and keys to the ``saft`` parser's sub-commands."""
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

    p = sub.add_parser("tenants", help="tenants' settings")
    tenants_sub = p.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    t = tenants_sub.add_parser(
        "share", help="show or set a tenant's share: its turns in dispatch relative to others (default 1)"
    )
    t.add_argument("tenant", help="tenant name")
    t.add_argument("share", nargs="?", type=_share, default=None, help="new share, 0.01 to 100 (2: twice the turns)")
    t.set_defaults(func=cmd_tenants_share)

