"""``actq keys create NAME [--admin]``, ``actq keys list``, ``actq keys revoke NAME_OR_ID``.

These talk to the database directly (``ACTQ_DATABASE_URL``, as ``actq db upgrade`` does), not to a
running API: making the first key is how an open service gets closed. ``create`` prints the new key
on stdout once; only its sha256 is stored (``models.store.keys``), so a lost key is revoked and replaced,
never recovered. A replacement made under the same name keeps the name's jobs. The embedded
mode's SQLite database is migrated first, so keys can be made before ``actq up`` ever ran.
"""

from __future__ import annotations

import argparse
import sys

from models.errors import ActqError
from models.settings import Settings


def _sessions():
    import migrations
    from models.store.db import make_engine, make_sessionmaker

    url = Settings().database()
    if url.startswith("sqlite"):
        migrations.upgrade(url)
    engine = make_engine(url)
    return engine, make_sessionmaker(engine)


def cmd_create(args: argparse.Namespace) -> int:
    from models.store.keys import create_key

    engine, sessions = _sessions()
    try:
        with sessions.begin() as session:
            key, token = create_key(session, args.name, args.admin, args.rate_per_minute)
            kind = "admin key" if key.admin else "key"
            print(
                f"actq: {kind} {key.name} (id {key.id}) created; it is shown once:", file=sys.stderr
            )
        print(token)
    except ActqError as error:
        print(f"actq: {error.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def cmd_list(_args: argparse.Namespace) -> int:
    from models.store.keys import list_keys

    engine, sessions = _sessions()
    try:
        with sessions() as session:
            keys = list_keys(session)
    finally:
        engine.dispose()
    print(f"{'ID':16}  {'NAME':24}  {'ADMIN':5}  {'RATE/MIN':8}  {'CREATED':19}  REVOKED")
    for key in keys:
        rate = "default" if key.rate_per_minute is None else f"{key.rate_per_minute:g}"
        revoked = key.revoked_at.isoformat()[:19] if key.revoked_at else "-"
        print(
            f"{key.id:16}  {key.name[:24]:24}  {'yes' if key.admin else 'no':5}  {rate:8}  "
            f"{key.created_at.isoformat()[:19]:19}  {revoked}"
        )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from models.store.keys import any_active_key, revoke_key

    engine, sessions = _sessions()
    try:
        with sessions.begin() as session:
            revoked = revoke_key(session, args.key)
            left = any_active_key(session)
    finally:
        engine.dispose()
    if not revoked:
        print(f"actq: no active key named or with id {args.key!r}", file=sys.stderr)
        return 1
    for key in revoked:
        print(f"actq: revoked {key.name} (id {key.id})", file=sys.stderr)
    if not left:
        print(
            "actq: no active key is left: the API is open again (loopback only after a restart)",
            file=sys.stderr,
        )
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("keys", help="API keys: create, list, revoke (ACTQ_DATABASE_URL)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="make a key and print it once")
    create.add_argument("name", help="the key's name: the owner of the jobs it submits")
    create.add_argument("--admin", action="store_true", help="sees every owner's jobs")
    create.add_argument(
        "--rate-per-minute",
        type=float,
        help="this key's rate limit (default: ACTQ_RATE_PER_MINUTE)",
    )
    create.set_defaults(func=cmd_create)
    keys.add_parser("list", help="every key, active and revoked").set_defaults(func=cmd_list)
    revoke = keys.add_parser("revoke", help="revoke a key by id, or every key of a name")
    revoke.add_argument("key", help="a key id or name")
    revoke.set_defaults(func=cmd_revoke)
